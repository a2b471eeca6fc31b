//! `isola install|uninstall crio` end to end on a scratch drop-in directory.

use std::path::Path;
use std::process::Command;

fn isola(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_isola"))
        .args(args)
        .output()
        .expect("running isola");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn crio_drop_in_is_written_once_and_removed_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/configuration.toml");
    let cfg = cfg.to_str().unwrap();
    let install = [
        "install",
        "crio",
        "--dir",
        d,
        "--shim",
        "/bin/true",
        "--isola-config",
        cfg,
    ];
    let (ok, out) = isola(&install);
    assert!(ok, "{out}");
    let file = dir.path().join("50-isola.conf");
    let text = std::fs::read_to_string(&file).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let handler = &doc["crio"]["runtime"]["runtimes"]["isola"];
    assert_eq!(handler["runtime_type"].as_str(), Some("vm"));
    assert_eq!(handler["runtime_path"].as_str(), Some("/bin/true"));

    let (ok, out) = isola(&install);
    assert!(ok && out.contains("already there"), "{out}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    let (ok, out) = isola(&["uninstall", "crio", "--dir", d]);
    assert!(ok, "{out}");
    assert!(!file.exists());

    // A file isola did not write is neither overwritten nor removed.
    std::fs::write(&file, "[crio.runtime]\n").unwrap();
    let (ok, out) = isola(&install);
    assert!(!ok && out.contains("not written by isola"), "{out}");
    let (ok, out) = isola(&["uninstall", "crio", "--dir", d]);
    assert!(!ok && out.contains("not written by isola"), "{out}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "[crio.runtime]\n");
}

#[test]
fn a_second_handler_and_its_configuration_come_and_go_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/configuration.toml");
    let base = base.to_str().unwrap();
    let containerd = dir.path().join("config.toml");
    let original = "# mine\nversion = 2\n\n[plugins]\n";
    std::fs::write(&containerd, original).unwrap();
    let c = containerd.to_str().unwrap();
    let clh_cfg = dir.path().join("configuration-clh.toml");
    let clh = clh_cfg.to_str().unwrap();

    let (ok, out) = isola(&[
        "install",
        "containerd",
        "--config",
        c,
        "--isola-config",
        base,
    ]);
    assert!(ok, "{out}");
    let with_isola = std::fs::read_to_string(&containerd).unwrap();

    let install_clh = [
        "install",
        "containerd",
        "--config",
        c,
        "--handler",
        "isola-clh",
        "--hypervisor",
        "cloud-hypervisor",
        "--isola-config",
        clh,
        "--from",
        base,
    ];
    // A dry run writes nothing.
    let mut dry = install_clh.to_vec();
    dry.push("--dry-run");
    let (ok, out) = isola(&dry);
    assert!(ok && out.contains("would write"), "{out}");
    assert!(!clh_cfg.exists());
    assert_eq!(std::fs::read_to_string(&containerd).unwrap(), with_isola);

    let (ok, out) = isola(&install_clh);
    assert!(ok, "{out}");
    let generated = std::fs::read_to_string(&clh_cfg).unwrap();
    let config = isola_config::Config::load_from(&clh_cfg).unwrap();
    assert_eq!(
        config.hypervisor.kind,
        isola_config::HypervisorKind::CloudHypervisor
    );
    let both = std::fs::read_to_string(&containerd).unwrap();
    let doc: toml::Table = toml::from_str(&both).unwrap();
    let runtimes = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    assert_eq!(
        runtimes["isola"]["options"]["ConfigPath"].as_str(),
        Some(base)
    );
    assert_eq!(
        runtimes["isola-clh"]["options"]["ConfigPath"].as_str(),
        Some(clh)
    );

    // Again: nothing changes.
    let (ok, out) = isola(&install_clh);
    assert!(ok && out.contains("already"), "{out}");
    assert_eq!(std::fs::read_to_string(&clh_cfg).unwrap(), generated);
    assert_eq!(std::fs::read_to_string(&containerd).unwrap(), both);

    // CRI-O's drop-in for the same handler, using the configuration already there.
    let crio = dir.path().join("crio.conf.d");
    let d = crio.to_str().unwrap();
    let crio_args = [
        "install",
        "crio",
        "--dir",
        d,
        "--shim",
        "/bin/true",
        "--handler",
        "isola-clh",
        "--isola-config",
        clh,
    ];
    let (ok, out) = isola(&crio_args);
    assert!(ok, "{out}");
    let drop_in = std::fs::read_to_string(crio.join("50-isola-clh.conf")).unwrap();
    assert!(
        drop_in.contains("[crio.runtime.runtimes.isola-clh]"),
        "{drop_in}"
    );
    assert!(!crio.join("50-isola.conf").exists());

    let (ok, out) = isola(&[
        "uninstall",
        "containerd",
        "--config",
        c,
        "--handler",
        "isola-clh",
    ]);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read_to_string(&containerd).unwrap(), with_isola);
    assert!(
        !clh_cfg.exists(),
        "the generated configuration goes too: {out}"
    );
    let (ok, out) = isola(&["uninstall", "crio", "--dir", d, "--handler", "isola-clh"]);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read_dir(&crio).unwrap().count(), 0);
    let (ok, out) = isola(&["uninstall", "containerd", "--config", c]);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read_to_string(&containerd).unwrap(), original);
    assert!(
        Path::new(base).is_file(),
        "the first handler's configuration stays"
    );
}

#[test]
fn a_configuration_isola_did_not_write_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let containerd = dir.path().join("config.toml");
    let c = containerd.to_str().unwrap();
    let mine = dir.path().join("mine.toml");
    std::fs::write(&mine, "[hypervisor]\nvcpus = 2\n").unwrap();
    let args = [
        "install",
        "containerd",
        "--config",
        c,
        "--handler",
        "isola-clh",
        "--hypervisor",
        "cloud-hypervisor",
        "--isola-config",
        mine.to_str().unwrap(),
        "--from",
        mine.to_str().unwrap(),
    ];
    let (ok, out) = isola(&args);
    assert!(
        !ok && out.contains("both the configuration to start from"),
        "{out}"
    );
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/configuration.toml");
    let mut args = args.to_vec();
    let last = args.len() - 1;
    args[last] = base.to_str().unwrap();
    let (ok, out) = isola(&args);
    assert!(!ok && out.contains("not written by isola"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&mine).unwrap(),
        "[hypervisor]\nvcpus = 2\n"
    );
    assert!(!containerd.exists(), "nothing written");
    let (ok, out) = isola(&[
        "install",
        "containerd",
        "--config",
        c,
        "--handler",
        "Isola_CLH",
    ]);
    assert!(!ok && out.contains("DNS label"), "{out}");
}
