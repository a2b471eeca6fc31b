use super::*;

/// A minimal payload under `dir`.
pub(crate) fn payload(dir: &Path, shim: &str) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join(SHARE)).unwrap();
    fs::write(dir.join("bin/isola"), "isola").unwrap();
    fs::write(dir.join("bin").join(SHIM), shim).unwrap();
    fs::set_permissions(
        dir.join("bin").join(SHIM),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::write(
        dir.join(SHARE).join("configuration.toml"),
        isola_config::DEFAULT_CONFIG_TOML,
    )
    .unwrap();
    fs::write(dir.join(SHARE).join("vmlinux"), "kernel").unwrap();
    fs::write(dir.join(SHARE).join("initrd.img"), "initrd").unwrap();
}

#[test]
fn the_hash_follows_content_and_modes_not_location() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    payload(a.path(), "shim 1");
    payload(b.path(), "shim 1");
    let ha = payload_hash(a.path()).unwrap();
    assert_eq!(ha.len(), 64);
    assert_eq!(ha, payload_hash(b.path()).unwrap());
    fs::write(b.path().join("bin").join(SHIM), "shim 2").unwrap();
    let hb = payload_hash(b.path()).unwrap();
    assert_ne!(ha, hb);
    fs::set_permissions(
        b.path().join("bin/isola"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    assert_ne!(hb, payload_hash(b.path()).unwrap());
}

#[test]
fn version_ids_name_the_version_and_cover_prefix_and_handlers() {
    let hs = [Handler::parse("isola").unwrap()];
    let id = version_id("0.1.0", "aa", Path::new("/opt/isola"), &hs, None);
    assert!(
        id.starts_with("0.1.0-") && id.len() == "0.1.0-".len() + 12,
        "{id}"
    );
    assert_eq!(
        id,
        version_id("0.1.0", "aa", Path::new("/opt/isola"), &hs, None)
    );
    assert_ne!(
        id,
        version_id("0.1.0", "ab", Path::new("/opt/isola"), &hs, None)
    );
    let off = version_id("0.1.0", "aa", Path::new("/opt/isola"), &hs, Some(false));
    assert_ne!(id, off, "a VM template setting makes another version");
    assert_ne!(
        off,
        version_id("0.1.0", "aa", Path::new("/opt/isola"), &hs, Some(true))
    );
    assert_ne!(
        id,
        version_id("0.1.0", "aa", Path::new("/opt/x"), &hs, None)
    );
    let more = [
        hs[0].clone(),
        Handler::parse("isola-clh:cloud-hypervisor").unwrap(),
    ];
    assert_ne!(
        id,
        version_id("0.1.0", "aa", Path::new("/opt/isola"), &more, None)
    );
}

#[test]
fn a_payload_missing_a_file_is_refused_saying_what() {
    let d = tempfile::tempdir().unwrap();
    payload(d.path(), "s");
    check_payload(d.path()).unwrap();
    fs::remove_file(d.path().join("share/isola/initrd.img")).unwrap();
    let e = check_payload(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("share/isola/initrd.img") && e.contains("build-deploy-payload"),
        "{e}"
    );
}

#[test]
fn staging_is_complete_or_absent_and_current_switches() {
    let host = tempfile::tempdir().unwrap();
    let p = tempfile::tempdir().unwrap();
    payload(p.path(), "s");
    let l = Layout::new(host.path(), Path::new("/opt/isola")).unwrap();
    let hs = [Handler::parse("isola-clh:qemu").unwrap()];
    assert!(stage(&l, p.path(), "v1", &hs, None).unwrap());
    assert!(
        !stage(&l, p.path(), "v1", &hs, None).unwrap(),
        "already there"
    );
    let dir = host.path().join("opt/isola/versions/v1");
    let shim = dir.join("bin").join(SHIM);
    assert_eq!(fs::read_to_string(&shim).unwrap(), "s");
    assert_eq!(
        fs::metadata(&shim).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let cfg = fs::read_to_string(dir.join("share/isola/configuration.toml")).unwrap();
    assert!(
        cfg.contains("kernel = \"/opt/isola/versions/v1/share/isola/vmlinux\""),
        "{cfg}"
    );
    assert!(dir
        .join("share/isola/configuration-isola-clh.toml")
        .is_file());
    // No staging leftovers.
    let names: Vec<_> = fs::read_dir(host.path().join("opt/isola/versions"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["v1"]);

    assert_eq!(current(&l), None);
    assert!(switch_current(&l, "v1").unwrap());
    assert!(!switch_current(&l, "v1").unwrap());
    assert_eq!(current(&l).as_deref(), Some("v1"));
    let link = host.path().join("opt/isola/current");
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("versions/v1"));
    assert_eq!(
        fs::read_to_string(link.join("bin").join(SHIM)).unwrap(),
        "s"
    );

    // A payload whose configuration is broken leaves no version behind.
    fs::write(
        p.path().join("share/isola/configuration.toml"),
        "[hypervisor]\nvcpus = 0\n",
    )
    .unwrap();
    assert!(stage(&l, p.path(), "v2", &[], None).is_err());
    assert!(!host.path().join("opt/isola/versions/v2").exists());
    let left = fs::read_dir(host.path().join("opt/isola/versions"))
        .unwrap()
        .count();
    assert_eq!(left, 1);
}
