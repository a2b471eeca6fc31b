//! Public-API tests of isola-config: defaults, the shipped file, parse and
//! validation errors, and loading through `$ISOLA_CONFIG`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use isola_config::{
    Accelerator, Config, ConfigError, HypervisorKind, LogLevel, MachineType, SharedFs,
    VirtiofsdCache, VirtiofsdSandbox, Vsock, DEFAULT_CONFIG_TOML, PREFIX,
};

const ORIGIN: &str = "/etc/isola/configuration.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new(ORIGIN))
}

fn parse_err(text: &str) -> (ConfigError, String) {
    let err = parse(text).expect_err("expected an error");
    let msg = err.to_string();
    assert!(
        msg.contains(ORIGIN),
        "message does not name the file: {msg}"
    );
    (err, msg)
}

/// Asserts `msg` contains every needle.
fn assert_mentions(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "{n:?} missing from: {msg}");
    }
}

#[test]
fn defaults() {
    let c = Config::default();
    let h = &c.hypervisor;
    assert_eq!(h.kind, HypervisorKind::Qemu);
    assert_eq!(h.path, Path::new("/usr/bin/qemu-system-x86_64"));
    assert_eq!(
        h.cloud_hypervisor_path,
        Path::new("/usr/local/bin/cloud-hypervisor")
    );
    assert_eq!(h.kernel, Path::new(PREFIX).join("share/isola/vmlinux"));
    assert_eq!(h.initrd, Path::new(PREFIX).join("share/isola/initrd.img"));
    assert_eq!(h.kernel_params, "");
    assert_eq!(h.machine_type, MachineType::Q35);
    assert_eq!(h.firmware, Path::new("/usr/share/qemu/qboot.rom"));
    assert_eq!(
        h.firmware_path(),
        Some(Path::new("/usr/share/qemu/qboot.rom"))
    );
    assert_eq!(h.accelerator, Accelerator::Auto);
    assert_eq!((h.vcpus, h.memory_mib), (1, 512));
    assert_eq!(h.shared_fs, SharedFs::VirtioFs);
    assert_eq!(h.virtiofsd_path, Path::new("/usr/local/bin/virtiofsd"));
    assert_eq!(h.virtiofsd_cache, VirtiofsdCache::Auto);
    assert_eq!(h.virtiofsd_sandbox, VirtiofsdSandbox::Namespace);
    assert_eq!(h.vsock, Vsock::Auto);
    assert_eq!(
        h.vhost_user_vsock_path,
        Path::new("/usr/local/bin/vhost-device-vsock")
    );
    assert_eq!(c.agent.dial_timeout_ms, 30_000);
    assert_eq!(c.agent.dial_timeout(), std::time::Duration::from_secs(30));
    assert_eq!(c.agent.log_level, LogLevel::Info);
    assert_eq!(c.agent.kernel_param(), "agent.log=info");
    assert!(
        !c.agent.debug_console,
        "the debug console is off by default"
    );
    assert_eq!(c.agent.debug_busybox_path, Path::new("/bin/busybox"));
    assert!(!c.runtime.debug);
    assert_eq!(c.runtime.state_dir, Path::new("/run/isola"));
    c.validate(Path::new("<defaults>")).unwrap();
}

#[test]
fn empty_file_and_empty_sections_give_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
    assert_eq!(
        parse("[hypervisor]\n[agent]\n[runtime]\n").unwrap(),
        Config::default()
    );
}

#[test]
fn shipped_file_documents_the_defaults() {
    // The shipped file spells the default prefix; adjust for this build's.
    let text = DEFAULT_CONFIG_TOML.replace(
        "\"/usr/local/share/isola/",
        &format!("\"{PREFIX}/share/isola/"),
    );
    let shipped = parse(&text).unwrap();
    assert_eq!(shipped, Config::default());

    // Every key must be present (set to its default), not merely omitted.
    let shipped_table: toml::Table = toml::from_str(&text).unwrap();
    let default_table = toml::Table::try_from(Config::default()).unwrap();
    assert_eq!(shipped_table, default_table);
}

#[test]
fn shipped_file_is_on_disk_too() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configuration.toml");
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert_eq!(on_disk, DEFAULT_CONFIG_TOML);
    if PREFIX == "/usr/local" {
        assert_eq!(Config::load_from(&path).unwrap(), Config::default());
    }
}

#[test]
fn full_valid_file() {
    let text = r#"
[hypervisor]
path = "/opt/qemu/bin/qemu-system-x86_64"
kernel = "/opt/isola/vmlinuz"
initrd = "/opt/isola/initrd.img"
kernel_params = "quiet console=hvc0"
machine_type = "microvm"
firmware = ""
accelerator = "kvm"
vcpus = 4
memory_mib = 2048
shared_fs = "none"
virtiofsd_path = "/usr/libexec/virtiofsd"
virtiofsd_cache = "never"
virtiofsd_sandbox = "chroot"
vsock = "vhost-user"
vhost_user_vsock_path = "/usr/bin/vhost-device-vsock"

[agent]
dial_timeout_ms = 5000
log_level = "trace"

[runtime]
debug = true
state_dir = "/var/run/isola"
"#;
    let c = parse(text).unwrap();
    let h = &c.hypervisor;
    assert_eq!(h.path, Path::new("/opt/qemu/bin/qemu-system-x86_64"));
    assert_eq!(h.kernel, Path::new("/opt/isola/vmlinuz"));
    assert_eq!(h.initrd, Path::new("/opt/isola/initrd.img"));
    assert_eq!(h.kernel_params, "quiet console=hvc0");
    assert_eq!(h.machine_type, MachineType::Microvm);
    assert_eq!(h.firmware_path(), None);
    assert_eq!(h.accelerator, Accelerator::Kvm);
    assert_eq!((h.vcpus, h.memory_mib), (4, 2048));
    assert_eq!(h.shared_fs, SharedFs::None);
    assert_eq!(h.virtiofsd_path, Path::new("/usr/libexec/virtiofsd"));
    assert_eq!(h.virtiofsd_cache, VirtiofsdCache::Never);
    assert_eq!(h.virtiofsd_sandbox, VirtiofsdSandbox::Chroot);
    assert_eq!(h.vsock, Vsock::VhostUser);
    assert_eq!(
        h.vhost_user_vsock_path,
        Path::new("/usr/bin/vhost-device-vsock")
    );
    assert_eq!(c.agent.dial_timeout_ms, 5000);
    assert_eq!(c.agent.kernel_param(), "agent.log=trace");
    assert!(c.runtime.debug);
    assert_eq!(c.runtime.state_dir, Path::new("/var/run/isola"));

    // What `isola check` prints parses back to the same configuration.
    let printed = c.to_toml_string().unwrap();
    assert_eq!(parse(&printed).unwrap(), c);
}

#[test]
fn dotted_keys_and_inline_tables_work() {
    let c = parse("hypervisor.vcpus = 2\nagent = { log_level = \"debug\" }\n").unwrap();
    assert_eq!(c.hypervisor.vcpus, 2);
    assert_eq!(c.agent.log_level, LogLevel::Debug);
}

#[test]
fn unknown_top_level_key() {
    let (err, msg) = parse_err("# comment\nverbose = true\n");
    assert_eq!(err.key(), Some("verbose"));
    assert_mentions(&msg, &[":2:1:", "`verbose`", "hypervisor", "remove it"]);

    let (err, msg) = parse_err("[hypervisor]\nvcpus = 2\n\n[runtimes]\ndebug = true\n");
    assert_eq!(err.key(), Some("runtimes"));
    assert_mentions(&msg, &[":4:2:", "`runtimes`", "runtime"]);
}

#[test]
fn unknown_key_inside_a_section() {
    let (err, msg) = parse_err("[hypervisor]\nvcpus = 2\nmemory = 1024\n");
    assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
    assert_eq!(err.key(), Some("hypervisor.memory"));
    let loc = err.location().unwrap();
    assert_eq!(loc.file, Path::new(ORIGIN));
    assert_eq!(loc.line_col, Some((3, 1)));
    assert_mentions(
        &msg,
        &[
            "/etc/isola/configuration.toml:3:1:",
            "hypervisor.memory",
            "memory_mib",
            "[hypervisor]",
        ],
    );

    let (err, _) = parse_err("[agent]\nlog_level = \"info\"\n[runtime]\nstate = \"/x\"\n");
    assert_eq!(err.key(), Some("runtime.state"));

    let (err, _) = parse_err("agent.timeout = 5\n");
    assert_eq!(err.key(), Some("agent.timeout"));

    let (err, _) = parse_err("[hypervisor.extra]\nx = 1\n");
    assert_eq!(err.key(), Some("hypervisor.extra"));
}

#[test]
fn wrong_type_names_the_key() {
    let (err, msg) = parse_err("[hypervisor]\nvcpus = \"two\"\n");
    assert!(matches!(err, ConfigError::WrongValue { .. }), "{err:?}");
    assert_eq!(err.key(), Some("hypervisor.vcpus"));
    assert_mentions(
        &msg,
        &[
            ":2:9:",
            "hypervisor.vcpus",
            "invalid type",
            "non-negative integer",
            "change",
        ],
    );

    let (err, _) = parse_err("[runtime]\ndebug = \"yes\"\n");
    assert_eq!(err.key(), Some("runtime.debug"));

    let (err, _) = parse_err("[agent]\ndial_timeout_ms = -1\n");
    assert_eq!(err.key(), Some("agent.dial_timeout_ms"));

    let (err, msg) = parse_err("hypervisor = 3\n");
    assert_eq!(err.key(), Some("hypervisor"));
    assert_mentions(&msg, &["expected a table"]);

    let (err, msg) = parse_err("[hypervisor]\nkernel = [\"/a\"]\n");
    assert_eq!(err.key(), Some("hypervisor.kernel"));
    assert_mentions(&msg, &[":2:10:"]);

    // A datetime is a special map inside the TOML deserializer; the error
    // must still be located.
    let (err, msg) = parse_err("[hypervisor]\nvcpus = 1979-05-27\n");
    assert!(matches!(err, ConfigError::WrongValue { .. }), "{err:?}");
    assert_eq!(err.key(), Some("hypervisor.vcpus"));
    assert_mentions(&msg, &[":2:9:"]);
}

#[test]
fn bad_enum_value() {
    let (err, msg) = parse_err("[hypervisor]\nmachine_type = \"virt\"\n");
    assert_eq!(err.key(), Some("hypervisor.machine_type"));
    assert_mentions(
        &msg,
        &[":2:16:", "`virt`", "q35", "pc", "microvm", "one of"],
    );

    for (key, section) in [
        ("kind", "hypervisor"),
        ("accelerator", "hypervisor"),
        ("shared_fs", "hypervisor"),
        ("virtiofsd_cache", "hypervisor"),
        ("virtiofsd_sandbox", "hypervisor"),
        ("vsock", "hypervisor"),
        ("log_level", "agent"),
    ] {
        let (err, _) = parse_err(&format!("[{section}]\n{key} = \"bogus\"\n"));
        assert_eq!(err.key(), Some(&*format!("{section}.{key}")));
    }
    // Values are case-sensitive, as written in the shipped file.
    let (err, _) = parse_err("[agent]\nlog_level = \"INFO\"\n");
    assert_eq!(err.key(), Some("agent.log_level"));
}

#[test]
fn hypervisor_kind_selects_the_vmm_and_its_binary() {
    let c = parse(
        "[hypervisor]\nkind = \"cloud-hypervisor\"\ncloud_hypervisor_path = \"/opt/clh/bin/cloud-hypervisor\"\n",
    )
    .unwrap();
    assert_eq!(c.hypervisor.kind, HypervisorKind::CloudHypervisor);
    assert_eq!(
        c.hypervisor.cloud_hypervisor_path,
        Path::new("/opt/clh/bin/cloud-hypervisor")
    );
    // QEMU's keys are accepted and ignored; vhost-user means Cloud Hypervisor's hybrid vsock.
    let c = parse(
        "[hypervisor]\nkind = \"cloud-hypervisor\"\nmachine_type = \"microvm\"\nfirmware = \"\"\n\
         accelerator = \"kvm\"\nvsock = \"vhost-user\"\n",
    )
    .unwrap();
    assert_eq!(c.hypervisor.machine_type, MachineType::Microvm);
    assert_eq!(parse(&c.to_toml_string().unwrap()).unwrap(), c);

    let (err, msg) = parse_err("[hypervisor]\nkind = \"firecracker\"\n");
    assert!(matches!(err, ConfigError::WrongValue { .. }), "{err:?}");
    assert_eq!(err.key(), Some("hypervisor.kind"));
    assert_mentions(
        &msg,
        &[
            ":2:8:",
            "`firecracker`",
            "`qemu`",
            "`cloud-hypervisor`",
            "one of",
        ],
    );

    let (err, _) = parse_err("[hypervisor]\ncloud_hypervisor_path = \"cloud-hypervisor\"\n");
    assert_eq!(err.key(), Some("hypervisor.cloud_hypervisor_path"));
}

#[test]
fn cloud_hypervisor_with_tcg_or_kernel_vsock_is_refused_saying_why() {
    let (err, msg) =
        parse_err("[hypervisor]\nkind = \"cloud-hypervisor\"\naccelerator = \"tcg\"\n");
    assert!(matches!(err, ConfigError::Invalid { .. }), "{err:?}");
    assert_eq!(err.key(), Some("hypervisor.accelerator"));
    assert_mentions(
        &msg,
        &[
            ":3:1:",
            "hypervisor.accelerator = \"tcg\"",
            "kind = \"cloud-hypervisor\"",
            "no software emulation",
            "kind = \"qemu\"",
        ],
    );

    let (err, msg) = parse_err("[hypervisor]\nvsock = \"vhost\"\nkind = \"cloud-hypervisor\"\n");
    assert_eq!(err.key(), Some("hypervisor.vsock"));
    assert_mentions(&msg, &[":2:1:", "hybrid", "vsock = \"auto\""]);

    // The same keys are fine with QEMU.
    parse("[hypervisor]\nkind = \"qemu\"\naccelerator = \"tcg\"\nvsock = \"vhost\"\n").unwrap();
}

#[test]
fn out_of_range_vcpus_and_memory() {
    let (err, msg) = parse_err("[hypervisor]\nmemory_mib = 64\n");
    assert!(matches!(err, ConfigError::Invalid { .. }), "{err:?}");
    assert_eq!(
        msg,
        "/etc/isola/configuration.toml:2:1: hypervisor.memory_mib = 64 is too small: at least \
         128 MiB is needed; set it to a number from 128 to 1048576"
    );

    let (_, msg) = parse_err("[hypervisor]\nmemory_mib = 1048577\n");
    assert_mentions(&msg, &["hypervisor.memory_mib = 1048577", "too large"]);

    let (err, msg) = parse_err("[hypervisor]\nvcpus = 0\n");
    assert_eq!(err.key(), Some("hypervisor.vcpus"));
    assert_mentions(
        &msg,
        &[":2:1:", "hypervisor.vcpus = 0", "too small", "1 to 255"],
    );

    let (_, msg) = parse_err("[hypervisor]\nvcpus = 256\n");
    assert_mentions(&msg, &["hypervisor.vcpus = 256", "too large"]);

    // Beyond u32: rejected by the deserializer, still naming the key.
    let (err, _) = parse_err("[hypervisor]\nvcpus = 99999999999\n");
    assert_eq!(err.key(), Some("hypervisor.vcpus"));

    let (_, msg) = parse_err("[agent]\ndial_timeout_ms = 0\n");
    assert_mentions(&msg, &["agent.dial_timeout_ms = 0", "positive"]);

    let ok = parse("[hypervisor]\nvcpus = 255\nmemory_mib = 128\n").unwrap();
    assert_eq!((ok.hypervisor.vcpus, ok.hypervisor.memory_mib), (255, 128));
}

#[test]
fn relative_path() {
    let (err, msg) = parse_err("[hypervisor]\nkernel = \"vmlinuz\"\n");
    assert_eq!(err.key(), Some("hypervisor.kernel"));
    assert_mentions(
        &msg,
        &[
            ":2:1:",
            "hypervisor.kernel = \"vmlinuz\"",
            "relative",
            "absolute",
        ],
    );

    let (err, _) = parse_err("[runtime]\nstate_dir = \"run/isola\"\n");
    assert_eq!(err.key(), Some("runtime.state_dir"));

    let (err, msg) = parse_err("[hypervisor]\npath = \"\"\n");
    assert_eq!(err.key(), Some("hypervisor.path"));
    assert_mentions(&msg, &["empty"]);
}

#[test]
fn syntax_error_has_file_and_line() {
    let (err, msg) = parse_err("[hypervisor]\nvcpus = = 2\n");
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    assert_eq!(err.location().unwrap().line_col.map(|(l, _)| l), Some(2));
    assert!(!msg.contains('\n'), "{msg}");

    let (err, _) = parse_err("[agent]\nlog_level = \"info\"\nlog_level = \"debug\"\n");
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
}

#[test]
fn validate_built_config() {
    let mut c = Config::default();
    c.hypervisor.vcpus = 300;
    let err = c.validate(Path::new("<built>")).unwrap_err();
    assert_eq!(err.key(), Some("hypervisor.vcpus"));
    assert!(err
        .to_string()
        .starts_with("<built>: hypervisor.vcpus = 300"));
}

#[test]
fn load_from_missing_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let err = Config::load_from(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.toml"));
}

/// Serializes the tests that touch the process-global environment.
static ENV_LOCK: Mutex<()> = Mutex::new(());

/// Sets or removes `ISOLA_CONFIG` for the duration of `f`, under [`ENV_LOCK`].
fn with_env<R>(value: Option<&Path>, f: impl FnOnce() -> R) -> R {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let saved = std::env::var_os("ISOLA_CONFIG");
    match value {
        Some(v) => std::env::set_var("ISOLA_CONFIG", v),
        None => std::env::remove_var("ISOLA_CONFIG"),
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    match saved {
        Some(v) => std::env::set_var("ISOLA_CONFIG", v),
        None => std::env::remove_var("ISOLA_CONFIG"),
    }
    result.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

#[test]
fn isola_config_env_selects_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("my.toml");
    std::fs::write(&path, "[hypervisor]\nvcpus = 7\n").unwrap();
    with_env(Some(&path), || {
        assert_eq!(Config::search_paths(), vec![path.clone()]);
        let (config, from) = Config::load().unwrap();
        assert_eq!(from, path);
        assert_eq!(config.hypervisor.vcpus, 7);
    });

    std::fs::write(&path, "[hypervisor]\nvcpus = 700\n").unwrap();
    with_env(Some(&path), || {
        let err = Config::load().unwrap_err();
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    });

    let missing = dir.path().join("missing.toml");
    with_env(Some(&missing), || {
        let err = Config::load().unwrap_err();
        assert!(matches!(err, ConfigError::EnvFileMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.toml"), "{err}");
    });
}

#[test]
fn search_paths_without_env() {
    with_env(None, || {
        assert_eq!(
            Config::search_paths(),
            vec![
                PathBuf::from("/etc/isola/configuration.toml"),
                Path::new(PREFIX).join("share/isola/configuration.toml"),
            ]
        );
        // Whatever this host has installed, a NotFound error lists both.
        if let Err(ConfigError::NotFound { tried }) = Config::load() {
            assert_eq!(tried, Config::search_paths());
        }
    });
}

#[test]
fn pod_section_is_validated_with_file_and_key() {
    let (err, msg) = parse_err(
        "[pod]\noverhead_vcpus = 0\nenable_annotations = [\"hypervisor.vcpus\", \"hypervisor.path\"]\n",
    );
    assert_eq!(err.key(), Some("pod.enable_annotations"));
    assert!(
        msg.contains("hypervisor.path") && msg.contains(ORIGIN),
        "{msg}"
    );
    let ok = parse(
        "[pod]\noverhead_memory_mib = 64\nenable_annotations = [\"hypervisor.kernel_params\"]\n",
    )
    .unwrap();
    assert_eq!(ok.pod.overhead_memory_mib, 64);
    let kind = parse("[pod]\nenable_annotations = [\"hypervisor.kind\"]\n").unwrap();
    assert_eq!(kind.pod.enable_annotations, ["hypervisor.kind"]);
}

#[test]
fn debug_console_keys_parse() {
    let c = parse("[agent]\ndebug_console = true\ndebug_busybox_path = \"/opt/bb\"\n").unwrap();
    assert!(c.agent.debug_console);
    assert_eq!(c.agent.debug_busybox_path, Path::new("/opt/bb"));
    let (err, _) = parse_err("[agent]\ndebug_console = \"yes\"\n");
    assert_eq!(err.key(), Some("agent.debug_console"));
}

#[test]
fn the_container_factory_is_on_unless_turned_off() {
    let on = parse("").unwrap();
    assert!(on.agent.container_factory);
    assert!(!on.agent.kernel_param().contains("agent.factory"));
    let off = parse("[agent]\ncontainer_factory = false\n").unwrap();
    assert_eq!(off.agent.kernel_param(), "agent.log=info agent.factory=off");
}

#[test]
fn no_pod_annotation_can_enable_the_debug_console() {
    assert!(!isola_config::OVERRIDABLE
        .iter()
        .any(|k| k.contains("debug")));
}
