use super::*;

const CFG: &str = "/usr/local/share/isola/configuration.toml";

fn install_ok(text: &str) -> String {
    let e = install(text, RUNTIME_NAME, Path::new(CFG)).expect("install");
    assert!(e.changed);
    e.text
}

#[test]
fn a_fresh_file_gets_version_2_and_the_runtime() {
    let out = install_ok("");
    assert_eq!(
        out,
        format!(
            r#"version = 2

{RUNC_MARKER}[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.isola]
runtime_type = "io.containerd.isola.v2"
pod_annotations = ["io.isola.config.*"]
privileged_without_host_devices = true

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.isola.options]
ConfigPath = "/usr/local/share/isola/configuration.toml"
"#
        )
    );
    let v: toml::Value = toml::from_str(&out).unwrap();
    let runtimes = &v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    // containerd's built-in runc stays (the CRI plugin's default runtime).
    assert_eq!(
        runtimes["runc"]["runtime_type"].as_str(),
        Some("io.containerd.runc.v2")
    );
    let isola = &runtimes["isola"];
    assert_eq!(isola["runtime_type"].as_str(), Some(RUNTIME_TYPE));
    assert_eq!(isola["options"]["ConfigPath"].as_str(), Some(CFG));
    assert_eq!(
        installed_config_path(&out, RUNTIME_NAME).as_deref(),
        Some(CFG)
    );
}

#[test]
fn a_comment_only_file_is_a_fresh_file_and_keeps_its_comments() {
    let text = "# containerd configuration, managed by hand\n";
    let out = install_ok(text);
    assert!(
        out.starts_with("# containerd configuration, managed by hand\nversion = 2\n"),
        "{out}"
    );
    assert_eq!(
        installed_config_path(&out, RUNTIME_NAME).as_deref(),
        Some(CFG)
    );
}

/// A configuration like Debian's, with comments, another runtime, and other plugins.
const EXISTING: &str = r#"# /etc/containerd/config.toml: hand-edited, keep the comments!
version = 2
root = "/var/lib/containerd"   # where images live

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      # runc stays the default runtime
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"

# trailing comment
"#;

#[test]
fn an_existing_config_keeps_comments_and_other_runtimes() {
    let out = install_ok(EXISTING);
    // Everything that was there is still there, in order, byte for byte.
    let mut rest = out.as_str();
    for line in EXISTING.lines() {
        let at = rest
            .find(line)
            .unwrap_or_else(|| panic!("line {line:?} is missing or out of order in:\n{out}"));
        rest = &rest[at + line.len()..];
    }
    let v: toml::Value = toml::from_str(&out).unwrap();
    let runtimes = &v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    assert_eq!(
        runtimes["runc"]["runtime_type"].as_str(),
        Some("io.containerd.runc.v2")
    );
    assert_eq!(
        runtimes["isola"]["runtime_type"].as_str(),
        Some(RUNTIME_TYPE)
    );
    assert_eq!(
        runtimes["isola"]["options"]["ConfigPath"].as_str(),
        Some(CFG)
    );
    assert_eq!(
        v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["default_runtime_name"].as_str(),
        Some("runc")
    );
    // The new tables come right after the other runtime's.
    let runc = out.find("runtimes.runc.options]").unwrap();
    let isola = out.find("runtimes.isola]").unwrap();
    let opt = out.find("io.containerd.internal.v1.opt").unwrap();
    assert!(runc < isola && isola < opt, "{out}");
}

#[test]
fn without_other_runtimes_the_entry_goes_at_the_end() {
    let debian = r#"version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"#;
    let out = install_ok(debian);
    assert_eq!(
        out,
        format!(
            "{debian}
{RUNC_MARKER}[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]
runtime_type = \"io.containerd.runc.v2\"

[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.isola]
runtime_type = \"io.containerd.isola.v2\"
pod_annotations = [\"io.isola.config.*\"]
privileged_without_host_devices = true

[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.isola.options]
ConfigPath = \"{CFG}\"
"
        )
    );
    assert_eq!(uninstall(&out, RUNTIME_NAME).unwrap().text, debian);
}

#[test]
fn a_second_install_changes_nothing() {
    for text in ["", EXISTING] {
        let once = install_ok(text);
        let twice = install(&once, RUNTIME_NAME, Path::new(CFG)).unwrap();
        assert!(!twice.changed);
        assert_eq!(twice.text, once);
    }
}

#[test]
fn install_with_another_isola_config_updates_the_path_only() {
    let once = install_ok(EXISTING);
    let other = install(
        &once,
        RUNTIME_NAME,
        Path::new("/etc/isola/configuration.toml"),
    )
    .unwrap();
    assert!(other.changed);
    assert_eq!(
        installed_config_path(&other.text, RUNTIME_NAME).as_deref(),
        Some("/etc/isola/configuration.toml")
    );
    assert_eq!(
        other.text.replace("/etc/isola/configuration.toml", CFG),
        once
    );
}

#[test]
fn uninstall_gives_back_the_original_text() {
    for text in [EXISTING, "version = 2\n", "version = 2\n# only a comment\n"] {
        let installed = install_ok(text);
        let removed = uninstall(&installed, RUNTIME_NAME).unwrap();
        assert!(removed.changed);
        assert_eq!(removed.text, text, "after install + uninstall");
    }
    // A file isola created keeps only its version line.
    let removed = uninstall(&install_ok(""), RUNTIME_NAME).unwrap();
    assert_eq!(removed.text, "version = 2\n");
}

#[test]
fn uninstall_without_the_runtime_changes_nothing() {
    for text in [EXISTING, "", "version = 2\n"] {
        let e = uninstall(text, RUNTIME_NAME).unwrap();
        assert!(!e.changed);
        assert_eq!(e.text, text);
    }
}

#[test]
fn uninstall_removes_a_hand_written_entry_with_extra_keys() {
    let text = r#"version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.isola]
  runtime_type = "io.containerd.isola.v2"
  pod_annotations = ["io.isola.*"]
  privileged_without_host_devices = true
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.isola.options]
  ConfigPath = "/etc/isola/configuration.toml"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
  runtime_type = "io.containerd.kata.v2"
"#;
    let e = uninstall(text, RUNTIME_NAME).unwrap();
    assert!(e.changed);
    assert!(!e.text.contains("isola"), "{}", e.text);
    assert!(e.text.contains("runtimes.kata]"));
    // Installing over a hand-written entry keeps its extra keys and formatting.
    let again = install(
        text,
        RUNTIME_NAME,
        Path::new("/etc/isola/configuration.toml"),
    )
    .unwrap();
    assert!(!again.changed, "{}", again.text);
}

#[test]
fn dotted_keys_are_understood() {
    let text = r#"version = 2
[plugins."io.containerd.grpc.v1.cri"]
containerd.default_runtime_name = "runc"
containerd.runtimes.runc.runtime_type = "io.containerd.runc.v2"
"#;
    let out = install_ok(text);
    let v: toml::Value = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
    let runtimes = &v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    assert_eq!(
        runtimes["isola"]["runtime_type"].as_str(),
        Some(RUNTIME_TYPE)
    );
    assert_eq!(
        runtimes["runc"]["runtime_type"].as_str(),
        Some("io.containerd.runc.v2")
    );
    assert_eq!(uninstall(&out, RUNTIME_NAME).unwrap().text, text);
}

#[test]
fn version_3_uses_the_containerd_2_plugin() {
    let out = install_ok("version = 3\n");
    let v: toml::Value = toml::from_str(&out).unwrap();
    assert_eq!(
        v["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["isola"]
            ["runtime_type"]
            .as_str(),
        Some(RUNTIME_TYPE)
    );
    assert_eq!(uninstall(&out, RUNTIME_NAME).unwrap().text, "version = 3\n");
}

#[test]
fn version_1_is_refused_with_a_clear_message() {
    let v1 = "version = 1\n[plugins.cri]\n  sandbox_image = \"pause\"\n";
    let e = install(v1, RUNTIME_NAME, Path::new(CFG)).unwrap_err();
    assert_eq!(e, Error::Version1 { explicit: true });
    let msg = e.to_string();
    assert!(msg.contains("version 1"), "{msg}");
    assert!(msg.contains("version 2"), "{msg}");
    assert!(
        msg.contains("plugins.cri.containerd.runtimes.isola"),
        "{msg}"
    );
    assert_eq!(
        uninstall(v1, RUNTIME_NAME).unwrap_err(),
        Error::Version1 { explicit: true }
    );
    // No version key in a non-empty file is version 1 to containerd.
    let implicit = "[plugins.cri]\n  sandbox_image = \"pause\"\n";
    let e = install(implicit, RUNTIME_NAME, Path::new(CFG)).unwrap_err();
    assert_eq!(e, Error::Version1 { explicit: false });
    assert!(e.to_string().contains("no `version` key"), "{e}");
}

#[test]
fn odd_files_are_errors_not_damage() {
    assert!(matches!(
        install("version = 2\n[plugins\n", RUNTIME_NAME, Path::new(CFG)),
        Err(Error::Parse(_))
    ));
    assert_eq!(
        install("version = 7\n", RUNTIME_NAME, Path::new(CFG)).unwrap_err(),
        Error::UnknownVersion("7".into())
    );
    assert!(matches!(
        install("version = \"2\"\n", RUNTIME_NAME, Path::new(CFG)),
        Err(Error::UnknownVersion(_))
    ));
    let inline = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = { runc = { runtime_type = \"io.containerd.runc.v2\" } }\n";
    let e = install(inline, RUNTIME_NAME, Path::new(CFG)).unwrap_err();
    assert_eq!(
        e,
        Error::NotATable {
            key: "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes".into(),
            found: "an inline table"
        }
    );
    assert!(e.to_string().contains("edit the file by hand"));
    let scalar =
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes]\nisola = \"x\"\n";
    assert!(matches!(
        install(scalar, RUNTIME_NAME, Path::new(CFG)),
        Err(Error::NotATable {
            found: "a value",
            ..
        })
    ));
}

const CLH_CFG: &str = "/etc/isola/configuration-clh.toml";

fn install_clh(text: &str) -> String {
    let e = install(text, "isola-clh", Path::new(CLH_CFG)).expect("install isola-clh");
    assert!(e.changed);
    e.text
}

#[test]
fn a_second_handler_gets_its_own_entry_and_config_path() {
    let both = install_clh(&install_ok(""));
    assert_eq!(
        both,
        format!(
            r#"version = 2

{RUNC_MARKER}[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.isola]
runtime_type = "io.containerd.isola.v2"
pod_annotations = ["io.isola.config.*"]
privileged_without_host_devices = true

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.isola.options]
ConfigPath = "/usr/local/share/isola/configuration.toml"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.isola-clh]
runtime_type = "io.containerd.isola.v2"
pod_annotations = ["io.isola.config.*"]
privileged_without_host_devices = true

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.isola-clh.options]
ConfigPath = "/etc/isola/configuration-clh.toml"
"#
        )
    );
    assert_eq!(
        installed_config_path(&both, RUNTIME_NAME).as_deref(),
        Some(CFG)
    );
    assert_eq!(
        installed_config_path(&both, "isola-clh").as_deref(),
        Some(CLH_CFG)
    );
    // Idempotent per handler.
    for (handler, cfg) in [(RUNTIME_NAME, CFG), ("isola-clh", CLH_CFG)] {
        let again = install(&both, handler, Path::new(cfg)).unwrap();
        assert!(!again.changed, "{handler}: {}", again.text);
    }
}

#[test]
fn two_handlers_uninstall_back_to_the_original_in_either_order() {
    for text in ["", "version = 2\n", EXISTING, "version = 3\n"] {
        let one = install_ok(text);
        let both = install_clh(&one);
        // The second handler alone goes, the first and its runc stay.
        let back = uninstall(&both, "isola-clh").unwrap();
        assert!(back.changed);
        assert_eq!(back.text, one, "uninstalling isola-clh from:\n{both}");
        // The other order: runc stays while isola-clh needs it, and goes with it.
        let clh_only = uninstall(&both, RUNTIME_NAME).unwrap().text;
        assert_eq!(installed_config_path(&clh_only, RUNTIME_NAME), None);
        assert_eq!(
            installed_config_path(&clh_only, "isola-clh").as_deref(),
            Some(CLH_CFG)
        );
        let v: toml::Value = toml::from_str(&clh_only).unwrap();
        let has_runc = v.get("plugins").is_some_and(|p| {
            p.as_table()
                .unwrap()
                .values()
                .any(|plugin| plugin["containerd"]["runtimes"].get("runc").is_some())
        });
        assert!(has_runc, "runc stays for isola-clh:\n{clh_only}");
        let nothing = uninstall(&clh_only, "isola-clh").unwrap().text;
        let original = uninstall(&install_ok(text), RUNTIME_NAME).unwrap().text;
        assert_eq!(nothing, original, "from:\n{clh_only}");
        if !text.is_empty() {
            assert_eq!(nothing, text);
        }
    }
}

#[test]
fn a_second_handler_alone_brings_runc_along_too() {
    let clh = install_clh("");
    assert!(clh.contains(RUNC_MARKER), "{clh}");
    assert_eq!(installed_config_path(&clh, RUNTIME_NAME), None);
    assert_eq!(uninstall(&clh, "isola-clh").unwrap().text, "version = 2\n");
    // Uninstalling a handler that is not there changes nothing.
    let e = uninstall(&clh, RUNTIME_NAME).unwrap();
    assert!(!e.changed);
}
