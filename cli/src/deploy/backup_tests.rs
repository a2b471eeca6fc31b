use super::*;

fn layout(host: &Path) -> Layout {
    Layout::new(host, Path::new("/opt/isola")).unwrap()
}

#[test]
fn the_original_bytes_and_mode_are_kept_once() {
    let host = tempfile::tempdir().unwrap();
    let l = layout(host.path());
    let cfg = host.path().join("etc/containerd/config.toml");
    fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    let original = b"version = 2\n# odd \xff bytes stay\n";
    fs::write(&cfg, original).unwrap();
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o640)).unwrap();
    let host_path = Path::new("/etc/containerd/config.toml");
    let mut m = Manifest::default();
    m.record(&l, host_path).unwrap();
    fs::write(&cfg, "changed").unwrap();
    m.record(&l, host_path).unwrap(); // a second install keeps the first original
    m.wrote(host_path, b"changed");
    let loaded = Manifest::load(&l).unwrap().unwrap();
    assert_eq!(loaded.files.len(), 1);
    let e = m.entry(host_path).unwrap().clone();
    assert_eq!(e.mode, 0o640);
    assert_eq!(m.original(&l, &e).unwrap().as_deref(), Some(&original[..]));
    assert!(m.dirs.is_empty());
    assert_eq!(
        decide(&e, Some(original), Some(b"changed")),
        Restore::Original
    );
}

#[test]
fn a_missing_file_and_its_directories_are_remembered_as_missing() {
    let host = tempfile::tempdir().unwrap();
    let l = layout(host.path());
    fs::create_dir_all(host.path().join("etc")).unwrap();
    let p = Path::new("/etc/crio/crio.conf.d/50-isola.conf");
    let mut m = Manifest::default();
    m.record(&l, p).unwrap();
    let e = m.entry(p).unwrap().clone();
    assert_eq!(e.original, None);
    assert_eq!(m.original(&l, &e).unwrap(), None);
    assert_eq!(
        m.dirs,
        [
            PathBuf::from("/etc/crio"),
            PathBuf::from("/etc/crio/crio.conf.d")
        ]
    );
    assert_eq!(decide(&e, None, Some(b"x")), Restore::ChangedSince);
    m.wrote(p, b"x");
    let e = m.entry(p).unwrap();
    assert_eq!(decide(e, None, Some(b"x")), Restore::Remove);
    assert_eq!(decide(e, None, None), Restore::Unchanged);
}

#[test]
fn a_file_changed_by_someone_else_is_not_clobbered() {
    let e = Entry {
        path: "/etc/containerd/config.toml".into(),
        original: Some("0".into()),
        mode: 0o644,
        written: Some(sha256(b"ours")),
    };
    assert_eq!(decide(&e, Some(b"orig"), Some(b"ours")), Restore::Original);
    assert_eq!(
        decide(&e, Some(b"orig"), Some(b"ours + admin")),
        Restore::ChangedSince
    );
    assert_eq!(decide(&e, Some(b"orig"), Some(b"orig")), Restore::Unchanged);
    // Deleted since: put the original back.
    assert_eq!(decide(&e, Some(b"orig"), None), Restore::Original);
}

#[test]
fn no_manifest_means_not_installed_and_a_foreign_one_is_an_error() {
    let host = tempfile::tempdir().unwrap();
    let l = layout(host.path());
    assert_eq!(Manifest::load(&l).unwrap(), None);
    let p = host.path().join("opt/isola/backup/manifest.json");
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, "{").unwrap();
    let e = Manifest::load(&l).unwrap_err().to_string();
    assert!(e.contains("not a manifest"), "{e}");
}

#[test]
fn backups_of_several_files_never_overwrite_each_other() {
    let host = tempfile::tempdir().unwrap();
    let l = layout(host.path());
    let dir = host.path().join("etc/crio/crio.conf.d");
    fs::create_dir_all(&dir).unwrap();
    for f in ["a", "b", "c"] {
        fs::write(dir.join(f), format!("{f} bytes")).unwrap();
    }
    let p = |f: &str| PathBuf::from("/etc/crio/crio.conf.d").join(f);
    let mut m = Manifest::default();
    m.record(&l, &p("a")).unwrap();
    m.record(&l, &p("b")).unwrap();
    // An entry leaves (a handler no longer wanted), another comes.
    m.files.retain(|e| e.path != p("a"));
    m.record(&l, &p("c")).unwrap();
    for f in ["b", "c"] {
        let e = m.entry(&p(f)).unwrap().clone();
        let bytes = m.original(&l, &e).unwrap().unwrap();
        assert_eq!(bytes, format!("{f} bytes").as_bytes(), "{f}");
    }
}
