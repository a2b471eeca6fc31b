use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;

use super::*;

fn inputs(dir: &Path, kernel_bytes: &[u8]) -> TemplateInputs {
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, kernel_bytes).unwrap();
    TemplateInputs {
        args: vec!["-m".into(), "512M".into()],
        files: vec![FileId::of(&kernel).unwrap()],
    }
}

/// Builds a template for `inputs` in `store` the way a build does: lock, build dir, files,
/// publish.
fn put(store: &TemplateStore, inputs: &TemplateInputs, ram_bytes: u64, state: &[u8]) {
    let key = inputs.key();
    let _lock = store.lock(&key).unwrap();
    let dir = store.build_dir(&key).unwrap();
    File::create(dir.join("ram"))
        .unwrap()
        .set_len(ram_bytes)
        .unwrap();
    std::fs::write(dir.join("state"), state).unwrap();
    store.publish(&dir, inputs).unwrap();
}

#[test]
fn the_key_follows_every_input() {
    let tmp = tempfile::tempdir().unwrap();
    let a = inputs(tmp.path(), b"kernel one");
    assert_eq!(a.key().len(), 32);
    assert_eq!(a.key(), a.clone().key());
    let mut other_args = a.clone();
    other_args.args[1] = "1024M".into();
    assert_ne!(other_args.key(), a.key());
    // A rebuilt kernel (another size) is another template.
    let b = inputs(tmp.path(), b"kernel two, longer");
    assert_ne!(b.key(), a.key());
    assert!(!a.files_unchanged());
    assert!(b.files_unchanged());
}

#[test]
fn a_published_template_is_found_and_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = TemplateStore::new(tmp.path().join("templates"));
    let i = inputs(tmp.path(), b"k");
    assert_eq!(store.find(&i, 4096).unwrap(), None);
    put(&store, &i, 4096, b"stream");
    let p = store.find(&i, 4096).unwrap().expect("found");
    assert_eq!(p.key, i.key());
    assert_eq!(std::fs::read(&p.state).unwrap(), b"stream");
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1, "the lock file is not a template");
    assert!(listed[0].current);
    assert_eq!(listed[0].inputs.as_ref(), Some(&i));
    assert!(!tmp
        .path()
        .join("templates")
        .join(format!("{}.build", i.key()))
        .exists());
}

#[test]
fn a_damaged_template_is_reported_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    let store = TemplateStore::new(tmp.path());
    let i = inputs(tmp.path(), b"k");
    put(&store, &i, 4096, b"stream");
    // The VM's RAM size differs from the file's.
    let e = store.find(&i, 8192).unwrap_err();
    assert!(matches!(e, TemplateError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("4096 bytes"), "{e}");
    // An empty stream.
    let p = store.paths(&i.key());
    std::fs::write(&p.state, b"").unwrap();
    assert!(store
        .find(&i, 4096)
        .unwrap_err()
        .to_string()
        .contains("state file is 0 bytes"));
    // inputs.json that records other inputs.
    std::fs::write(&p.state, b"s").unwrap();
    let mut other = i.clone();
    other.args.push("x".into());
    std::fs::write(&p.inputs, serde_json::to_vec(&other).unwrap()).unwrap();
    assert!(store
        .find(&i, 4096)
        .unwrap_err()
        .to_string()
        .contains("other inputs"));
    std::fs::write(&p.inputs, b"{").unwrap();
    assert!(store
        .find(&i, 4096)
        .unwrap_err()
        .to_string()
        .contains("does not parse"));
    store.remove(&i.key()).unwrap();
    assert_eq!(store.find(&i, 4096).unwrap(), None);
    store.remove(&i.key()).unwrap();
}

#[test]
fn one_builder_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let store = TemplateStore::new(tmp.path());
    let held = store.lock("k").unwrap();
    assert!(matches!(store.lock("k"), Err(TemplateError::Busy(k)) if k == "k"));
    assert!(store.lock("other").is_ok());
    drop(held);
    assert!(store.lock("k").is_ok());
}

#[test]
fn removing_a_template_takes_its_lock_file_and_an_unlinked_lock_is_no_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("templates");
    let store = TemplateStore::new(&root);
    let i = inputs(tmp.path(), b"kernel");
    put(&store, &i, 4096, b"s");
    let lock_file = root.join(format!("{}.lock", i.key()));
    assert!(lock_file.exists());
    store.discard(&i.key()).unwrap();
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "nothing left");
    // A process that locked the file just before its holder removed it holds a dead inode:
    // the store's lock is the file now at the path.
    let stale = Flock::lock(File::create(&lock_file).unwrap(), FlockArg::LockExclusive).unwrap();
    std::fs::remove_file(&lock_file).unwrap();
    let held = store.lock(&i.key()).unwrap();
    assert!(matches!(store.lock(&i.key()), Err(TemplateError::Busy(_))));
    drop((stale, held));
}

#[test]
fn stale_templates_are_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let store = TemplateStore::new(tmp.path().join("t"));
    let old = inputs(tmp.path(), b"old kernel");
    put(&store, &old, 4096, b"s");
    let new = inputs(tmp.path(), b"new kernel!");
    put(&store, &new, 4096, b"s");
    let listed = store.list().unwrap();
    assert_eq!(listed.iter().filter(|t| t.current).count(), 1);
    assert_eq!(store.prune_stale().unwrap(), vec![old.key()]);
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(store.find(&new, 4096).unwrap().is_some());
}

#[test]
fn a_sparse_copy_keeps_the_holes_and_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("ram");
    let mut f = File::create(&src).unwrap();
    f.set_len(64 << 20).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    f.seek(SeekFrom::Start(8 << 20)).unwrap();
    f.write_all(&chunk).unwrap();
    f.seek(SeekFrom::Start(40 << 20)).unwrap();
    f.write_all(&chunk).unwrap();
    drop(f);
    let dst = tmp.path().join("copy");
    let copied = copy_sparse(&src, &File::create(&dst).unwrap()).unwrap();
    assert!((2 << 20..8 << 20).contains(&copied), "copied {copied}");
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
    let m = std::fs::metadata(&dst).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() * 512 < 16 << 20,
        "holes kept: {} bytes allocated",
        m.blocks() * 512
    );
}

#[test]
fn zero_pages_become_holes_and_the_rest_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let ram = tmp.path().join("ram");
    let f = File::create(&ram).unwrap();
    f.set_len(16 << 20).unwrap();
    // 2 MiB written: a page of data, 3 pages of zeros, a page of data, then zeros to the end.
    let mut bytes = vec![0u8; 2 << 20];
    bytes[..4096].fill(7);
    bytes[4 * 4096..5 * 4096].fill(9);
    bytes[(1 << 20) + 100] = 1; // one byte in the second MiB keeps its page
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes, 4 << 20).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let allocated = |p: &std::path::Path| {
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(p).unwrap()) * 512
    };
    assert!(allocated(&ram) >= 2 << 20);
    let freed = punch_zero_pages(&ram).unwrap();
    assert_eq!(freed, (2 << 20) - 3 * 4096, "all but three pages");
    assert!(allocated(&ram) <= 3 * 4096 * 4, "{}", allocated(&ram));
    let back = std::fs::read(&ram).unwrap();
    assert_eq!(back.len(), 16 << 20, "the size is kept");
    assert_eq!(
        &back[4 << 20..(4 << 20) + (2 << 20)],
        &bytes[..],
        "the same bytes"
    );
    assert!(back[..4 << 20].iter().all(|b| *b == 0));
    // A copy carries only the pages left.
    let copy = tmp.path().join("copy");
    assert_eq!(
        copy_sparse(&ram, &File::create(&copy).unwrap()).unwrap(),
        3 * 4096
    );
    assert_eq!(std::fs::read(&copy).unwrap(), back);
}

#[test]
fn the_store_keeps_the_most_recently_used_and_never_the_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("templates");
    let store = TemplateStore::new(&root);
    // Four current templates (each its own kernel file), used oldest first 3, 0, 2, 1.
    let keys: Vec<String> = (0..4u8)
        .map(|n| {
            let dir = tmp.path().join(n.to_string());
            std::fs::create_dir(&dir).unwrap();
            let i = inputs(&dir, b"kernel");
            put(&store, &i, 4096, b"s");
            i.key()
        })
        .collect();
    for (key, secs) in [
        (&keys[3], 10),
        (&keys[0], 20),
        (&keys[2], 30),
        (&keys[1], 40),
    ] {
        let t = nix::sys::time::TimeSpec::new(secs, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &store.paths(key).dir,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )
        .unwrap();
    }
    assert!(store.list().unwrap().iter().all(|t| t.current));
    assert!(
        store.evict(4, &keys[3]).unwrap().is_empty(),
        "within the cap"
    );
    // The oldest (3) is the one just built: kept; 0 and 2 go.
    assert_eq!(
        store.evict(2, &keys[3]).unwrap(),
        vec![keys[0].clone(), keys[2].clone()]
    );
    let left: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|t| t.paths.key)
        .collect();
    let mut want = vec![keys[1].clone(), keys[3].clone()];
    want.sort();
    assert_eq!(left, want);
    // A use makes a template the newest: 1 (used at 40 s) goes, not 3.
    store.touch(&keys[3]);
    assert_eq!(store.evict(1, "none").unwrap(), vec![keys[1].clone()]);
    // A stale template goes before any current one, however recently used.
    std::fs::write(tmp.path().join("3/vmlinux"), b"a new kernel").unwrap();
    let i = inputs(&tmp.path().join("0"), b"kernel");
    put(&store, &i, 4096, b"s");
    assert_eq!(store.evict(1, "none").unwrap(), vec![keys[3].clone()]);
    let lock_files = std::fs::read_dir(&root)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".lock")
        })
        .count();
    assert_eq!(lock_files, 1, "only the kept template's lock file is left");
    assert_eq!(store.list().unwrap()[0].paths.key, i.key());
}
