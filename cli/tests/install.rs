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
