//! Tests of the shared-directory mounts. The ones that mount need root and fail without it,
//! saying so (`make test` runs as root); the pure ones run anywhere.

use super::*;

/// Fails the test without root: a test that cannot mount must not pass.
fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts and needs root (make test runs as root)"
    );
}

fn mounted(path: &Path) -> bool {
    mountinfo::current_mounts_under(path)
        .unwrap()
        .iter()
        .any(|p| p == path)
}

fn tmpfs_rootfs() -> RootfsMount {
    RootfsMount {
        fstype: "tmpfs".into(),
        source: "tmpfs".into(),
        options: vec!["size=1m".into(), "nosuid".into()],
    }
}

#[test]
fn options_split_into_flags_and_data() {
    let opts: Vec<String> = [
        "ro",
        "nosuid",
        "rbind",
        "rprivate",
        "lowerdir=/a:/b",
        "index=off",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (flags, data) = parse_options(&opts);
    assert_eq!(
        flags,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC
    );
    assert_eq!(data, "lowerdir=/a:/b,index=off");
    let (flags, _) = parse_options(&["ro".to_string(), "rw".to_string()]);
    assert!(!flags.contains(MsFlags::MS_RDONLY));
}

#[test]
fn common_prefix_of_layer_dirs() {
    let dirs = ["/var/lib/s/snapshots/12/fs", "/var/lib/s/snapshots/3/fs"];
    assert_eq!(
        common_dir_prefix(&dirs).as_deref(),
        Some("/var/lib/s/snapshots/")
    );
    assert_eq!(common_dir_prefix(&["/a/x", "/b/y"]), None);
    assert_eq!(common_dir_prefix(&["/a/b/c"]).as_deref(), Some("/a/b/"));
}

#[test]
fn sources_are_classified() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, "x").unwrap();
    assert_eq!(SourceKind::of(dir.path()), SourceKind::Dir);
    assert_eq!(SourceKind::of(&file), SourceKind::File);
    assert_eq!(SourceKind::of(Path::new("/dev/null")), SourceKind::Device);
    assert_eq!(
        SourceKind::of(&dir.path().join("none")),
        SourceKind::Missing
    );
}

#[test]
fn open_beneath_refuses_symlinks_and_escapes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.path().join("evil")).unwrap();
    let root = nix::fcntl::open(
        dir.path(),
        OFlag::O_PATH | OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    assert!(open_dir_beneath(&root, Path::new("d")).is_ok());
    assert!(open_dir_beneath(&root, Path::new("evil")).is_err());
    assert!(open_dir_beneath(&root, Path::new("evil/ssl")).is_err());
    assert!(open_dir_beneath(&root, Path::new("../")).is_err());
    assert!(open_dir_beneath(&root, Path::new("/etc")).is_err());
}

#[test]
fn share_and_unshare_a_container() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let shared = SharedDir::new(tmp.path().join("shared"));
    shared.prepare().unwrap();
    assert!(mounted(shared.root()));

    let src_dir = tmp.path().join("vol");
    std::fs::create_dir(&src_dir).unwrap();
    std::fs::write(src_dir.join("data"), "volume").unwrap();
    let src_file = tmp.path().join("hosts");
    std::fs::write(&src_file, "127.0.0.1 localhost\n").unwrap();
    let binds = [
        HostBind {
            index: 0,
            source: src_dir.clone(),
            kind: SourceKind::Dir,
            recursive: true,
            readonly: true,
        },
        HostBind {
            index: 1,
            source: src_file.clone(),
            kind: SourceKind::File,
            recursive: false,
            readonly: false,
        },
    ];
    shared
        .share_container("c1", &[tmpfs_rootfs()], Path::new("/nonexistent"), &binds)
        .unwrap();
    let cdir = shared.container_dir("c1");
    assert!(mounted(&cdir.join("rootfs")));
    std::fs::write(cdir.join("rootfs/hello"), "hi").unwrap();
    assert_eq!(
        std::fs::read_to_string(cdir.join("mounts/0/data")).unwrap(),
        "volume"
    );
    let ro = std::fs::write(cdir.join("mounts/0/new"), "x").unwrap_err();
    assert_eq!(ro.raw_os_error(), Some(libc::EROFS), "{ro}");
    assert_eq!(
        std::fs::read_to_string(cdir.join("mounts/1")).unwrap(),
        "127.0.0.1 localhost\n"
    );

    shared.unshare_container("c1").unwrap();
    assert!(!cdir.exists());
    // The sources are untouched.
    assert_eq!(
        std::fs::read_to_string(src_dir.join("data")).unwrap(),
        "volume"
    );
    assert!(src_file.exists());

    shared.teardown().unwrap();
    assert!(!shared.root().exists());
    assert!(mountinfo::current_mounts_under(tmp.path())
        .unwrap()
        .is_empty());
}

#[test]
fn an_empty_rootfs_list_binds_the_bundle_rootfs() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let bundle_rootfs = tmp.path().join("bundle/rootfs");
    std::fs::create_dir_all(bundle_rootfs.join("bin")).unwrap();
    let shared = SharedDir::new(tmp.path().join("shared"));
    shared.prepare().unwrap();
    shared
        .share_container("c", &[], &bundle_rootfs, &[])
        .unwrap();
    assert!(shared.container_dir("c").join("rootfs/bin").is_dir());
    shared.teardown().unwrap();
    assert!(
        bundle_rootfs.join("bin").is_dir(),
        "teardown must not delete through the bind"
    );
    assert!(!shared.root().exists());
}

#[test]
fn a_failed_share_leaves_nothing() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let shared = SharedDir::new(tmp.path().join("shared"));
    shared.prepare().unwrap();
    let bad = RootfsMount {
        fstype: "no-such-fs".into(),
        source: "x".into(),
        options: vec![],
    };
    let err = shared
        .share_container("c", &[tmpfs_rootfs(), bad], Path::new("/"), &[])
        .unwrap_err();
    assert!(err.to_string().contains("mounting the rootfs"), "{err}");
    assert!(!shared.container_dir("c").exists());
    shared.teardown().unwrap();
}

#[test]
fn a_guest_symlink_cannot_redirect_mounts_or_removal() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep"), "keep").unwrap();
    let shared = SharedDir::new(tmp.path().join("shared"));
    shared.prepare().unwrap();
    // What a guest could do through virtio-fs: make the container directory a symlink.
    std::os::unix::fs::symlink(&victim, shared.container_dir("c")).unwrap();
    let err = shared
        .share_container("c", &[tmpfs_rootfs()], Path::new("/"), &[])
        .unwrap_err();
    assert!(err.to_string().contains("creating"), "{err}");
    assert!(!mounted(&victim.join("rootfs")));
    assert!(!victim.join("rootfs").exists());
    shared.unshare_container("c").unwrap();
    assert!(victim.join("keep").exists());
    std::fs::remove_file(shared.container_dir("c")).unwrap();
    shared.teardown().unwrap();
}

#[test]
fn busy_mounts_are_detached_lazily() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let shared = SharedDir::new(tmp.path().join("shared"));
    shared.prepare().unwrap();
    shared
        .share_container("c", &[tmpfs_rootfs()], Path::new("/"), &[])
        .unwrap();
    let busy = std::fs::File::create(shared.container_dir("c").join("rootfs/open")).unwrap();
    shared.unshare_container("c").unwrap();
    assert!(!shared.container_dir("c").exists());
    drop(busy);
    shared.teardown().unwrap();
    assert!(mountinfo::current_mounts_under(tmp.path())
        .unwrap()
        .is_empty());
}

#[test]
fn teardown_removes_the_debug_console_shell() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("busybox");
    std::fs::write(&src, b"shell").unwrap();
    let shared = SharedDir::new(tmp.path().join("shared"));
    shared.prepare().unwrap();
    let at = isola_sandbox::debug_console::install(shared.root(), &src).unwrap();
    assert!(at.is_file());
    shared.teardown().unwrap();
    assert!(!shared.root().exists(), "nothing is left of the shared dir");
    assert!(src.is_file(), "the source is untouched");
}
