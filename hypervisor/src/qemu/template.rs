//! The store of VM templates: where each lives, what it was built from, whether it still fits.
//!
//! A template is a VM booted once and saved at the point where its agent serves, so that a pod
//! starts by restoring it instead of booting (see [`super::clone`] for building and restoring,
//! and docs/fast-start.md). Each one is a directory `<root>/<key>/` holding:
//! - `ram`: the guest's RAM, a sparse file (only what the guest touched is allocated);
//! - `state`: QEMU's migration stream of everything else (devices, CPU), ~130 KiB;
//! - `inputs.json`: what it was built from ([`TemplateInputs`]).
//!
//! The key is a hash of the inputs: the template's QEMU arguments (kernel, initrd, parameters,
//! VM shape, machine) and the identity (size, mtime, inode) of the QEMU binary, the kernel, the
//! initrd and the firmware. A change of any gives another key, so a template is never used
//! across a change of QEMU or kernel. A directory appears whole (built under a temporary name,
//! then renamed); a build holds `<root>/<key>.lock` (flock, released by the kernel if the
//! builder dies); removing a template removes its lock file too, under the lock.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The largest migration stream accepted (an idle guest's is ~130 KiB without its RAM).
pub const MAX_STATE_BYTES: u64 = 64 << 20;

/// Template failures. A pod never fails for one of them: it boots cold (see [`super::clone`]).
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file of the store could not be read or written.
    #[error("template store: {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The template on disk does not match what it says it is, or is damaged.
    #[error("template {key} is unusable: {why} (it is removed; the next pod rebuilds it)")]
    Corrupt {
        /// The template's key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// Another process is building this template.
    #[error("template {0} is being built by another process")]
    Busy(String),
    /// Building the template VM failed.
    #[error("building template {key}: {why}")]
    Build {
        /// The template's key.
        key: String,
        /// What failed.
        why: String,
    },
    /// Restoring a clone failed.
    #[error("restoring from template {key}: {why}")]
    Restore {
        /// The template's key.
        key: String,
        /// What failed.
        why: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError {
    let path = path.to_owned();
    move |source| TemplateError::Io {
        action,
        path,
        source,
    }
}

/// The identity of an input file: a rebuilt kernel or an upgraded QEMU differs in one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// The path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Inode number.
    pub ino: u64,
}

impl FileId {
    /// Reads `path`'s identity (following symlinks).
    pub fn of(path: &Path) -> Result<Self, TemplateError> {
        let m = std::fs::metadata(path).map_err(io("reading the metadata of", path))?;
        Ok(Self {
            path: path.to_owned(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ino: m.ino(),
        })
    }
}

/// What a template is built from; its hash is the template's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateInputs {
    /// The template's QEMU arguments, with the store's own paths replaced by fixed names.
    pub args: Vec<String>,
    /// The QEMU binary, kernel, initrd and firmware.
    pub files: Vec<FileId>,
}

impl TemplateInputs {
    /// The key: the first 16 bytes of the SHA-256 of the inputs, in hex.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        for a in &self.args {
            h.update(a.as_bytes());
            h.update([0]);
        }
        for f in &self.files {
            h.update(f.path.as_os_str().as_encoded_bytes());
            h.update([0]);
            h.update(f.size.to_le_bytes());
            h.update(f.mtime_ns.to_le_bytes());
            h.update(f.ino.to_le_bytes());
        }
        h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether every input file is still what it was.
    pub fn files_unchanged(&self) -> bool {
        self.files
            .iter()
            .all(|f| FileId::of(&f.path).is_ok_and(|now| now == *f))
    }
}

/// The files of one template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplatePaths {
    /// The key.
    pub key: String,
    /// `<root>/<key>`.
    pub dir: PathBuf,
    /// The RAM file.
    pub ram: PathBuf,
    /// The migration stream.
    pub state: PathBuf,
    /// `inputs.json`.
    pub inputs: PathBuf,
}

impl TemplatePaths {
    fn new(root: &Path, key: &str) -> Self {
        let dir = root.join(key);
        Self {
            key: key.to_owned(),
            ram: dir.join("ram"),
            state: dir.join("state"),
            inputs: dir.join("inputs.json"),
            dir,
        }
    }
}

/// A template found in the store, for `isola template ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateInfo {
    /// Its files.
    pub paths: TemplatePaths,
    /// What it was built from; None when `inputs.json` is unreadable.
    pub inputs: Option<TemplateInputs>,
    /// Host memory its RAM file holds (allocated blocks), bytes.
    pub ram_allocated: u64,
    /// Whether its input files are still what they were (a stale template is never used).
    pub current: bool,
    /// When a pod last started from it (or it was built): its directory's mtime.
    pub last_used: Option<std::time::SystemTime>,
}

/// The template directory.
#[derive(Debug, Clone)]
pub struct TemplateStore {
    root: PathBuf,
}

impl TemplateStore {
    /// The store at `root` (created on first build).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The files template `key` has (or will have).
    pub fn paths(&self, key: &str) -> TemplatePaths {
        TemplatePaths::new(&self.root, key)
    }

    /// The template built from `inputs`, checked: None when there is none. A damaged one
    /// (unreadable or different inputs, RAM file of the wrong size, stream missing or too
    /// large) is an error; [`TemplateStore::remove`] it.
    pub fn find(
        &self,
        inputs: &TemplateInputs,
        ram_bytes: u64,
    ) -> Result<Option<TemplatePaths>, TemplateError> {
        let p = self.paths(&inputs.key());
        let recorded = match std::fs::read(&p.inputs) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", &p.inputs)(e)),
        };
        let corrupt = |why: String| TemplateError::Corrupt {
            key: p.key.clone(),
            why,
        };
        let recorded: TemplateInputs = serde_json::from_slice(&recorded)
            .map_err(|e| corrupt(format!("inputs.json does not parse: {e}")))?;
        if recorded != *inputs {
            return Err(corrupt("inputs.json records other inputs".into()));
        }
        let ram = std::fs::metadata(&p.ram).map_err(|e| corrupt(format!("RAM file: {e}")))?;
        if ram.len() != ram_bytes {
            return Err(corrupt(format!(
                "RAM file is {} bytes, the VM has {ram_bytes}",
                ram.len()
            )));
        }
        let state = std::fs::metadata(&p.state).map_err(|e| corrupt(format!("state file: {e}")))?;
        if state.len() == 0 || state.len() > MAX_STATE_BYTES {
            return Err(corrupt(format!(
                "state file is {} bytes (expected 1..={MAX_STATE_BYTES})",
                state.len()
            )));
        }
        Ok(Some(p))
    }

    /// Takes the build lock of `key` without waiting: [`TemplateError::Busy`] when another
    /// process holds it. The lock goes with the returned guard (or the process), or with
    /// [`TemplateStore::remove_locked`], which also removes the lock file.
    pub fn lock(&self, key: &str) -> Result<Flock<File>, TemplateError> {
        std::fs::create_dir_all(&self.root).map_err(io("creating", &self.root))?;
        let path = self.lock_path(key);
        // A holder may remove the lock file (remove_locked) after this process opened it: a
        // lock on that unlinked file is no lock, so take it again on the file now there.
        for _ in 0..8 {
            let file = File::create(&path).map_err(io("creating", &path))?;
            let locked =
                Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                    if errno == nix::errno::Errno::EWOULDBLOCK {
                        TemplateError::Busy(key.to_owned())
                    } else {
                        io("locking", &path)(errno.into())
                    }
                })?;
            let held = locked
                .metadata()
                .map_err(io("reading the metadata of", &path))?;
            match std::fs::metadata(&path) {
                Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => return Ok(locked),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io("reading the metadata of", &path)(e)),
            }
        }
        // Removed under this process's feet again and again: someone else is at work.
        Err(TemplateError::Busy(key.to_owned()))
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}.lock"))
    }

    /// Removes template `key` and its lock file, then releases `lock` (from
    /// [`TemplateStore::lock`]): nothing of the template is left.
    pub fn remove_locked(&self, key: &str, lock: Flock<File>) -> Result<(), TemplateError> {
        self.remove(key)?;
        let path = self.lock_path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &path)(e)),
        }
        drop(lock);
        Ok(())
    }

    /// The directory a build of `key` writes into before it is renamed into place (emptied
    /// first: a build that died leaves it behind). Call with the lock held.
    pub fn build_dir(&self, key: &str) -> Result<PathBuf, TemplateError> {
        let dir = self.root.join(format!("{key}.build"));
        remove_dir_if_exists(&dir)?;
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        Ok(dir)
    }

    /// Writes `inputs.json` into the build directory and renames it to the template's place.
    pub fn publish(&self, build_dir: &Path, inputs: &TemplateInputs) -> Result<(), TemplateError> {
        let p = self.paths(&inputs.key());
        let json = serde_json::to_vec_pretty(inputs).expect("template inputs serialise");
        let file = build_dir.join("inputs.json");
        std::fs::write(&file, json).map_err(io("writing", &file))?;
        remove_dir_if_exists(&p.dir)?;
        std::fs::rename(build_dir, &p.dir).map_err(io("renaming into place", &p.dir))
    }

    /// Removes template `key` (no error if it is not there).
    pub fn remove(&self, key: &str) -> Result<(), TemplateError> {
        remove_dir_if_exists(&self.paths(key).dir)
    }

    /// Removes template `key` and its lock file under its lock; [`TemplateError::Busy`]
    /// while a build holds it (the build replaces it anyway).
    pub fn discard(&self, key: &str) -> Result<(), TemplateError> {
        let lock = self.lock(key)?;
        self.remove_locked(key, lock)
    }

    /// Every template in the store, sorted by key.
    pub fn list(&self) -> Result<Vec<TemplateInfo>, TemplateError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing", &self.root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.path().is_dir() || name.contains('.') {
                continue;
            }
            let paths = self.paths(&name);
            let inputs: Option<TemplateInputs> = std::fs::read(&paths.inputs)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let ram_allocated = std::fs::metadata(&paths.ram).map_or(0, |m| m.blocks() * 512);
            let current = inputs.as_ref().is_some_and(|i| i.files_unchanged());
            let last_used = std::fs::metadata(&paths.dir)
                .and_then(|m| m.modified())
                .ok();
            out.push(TemplateInfo {
                paths,
                inputs,
                ram_allocated,
                current,
                last_used,
            });
        }
        out.sort_by(|a, b| a.paths.key.cmp(&b.paths.key));
        Ok(out)
    }

    /// Records that a pod starts from template `key` now (its directory's mtime), for
    /// [`TemplateStore::evict`]. Best effort: a template that cannot be touched only looks
    /// older.
    pub fn touch(&self, key: &str) {
        let dir = self.paths(key).dir;
        let now = nix::sys::time::TimeSpec::UTIME_NOW;
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &dir,
            &now,
            &now,
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        );
    }

    /// Removes templates, stale ones first, then the least recently used, until at most
    /// `max` are left, never `keep` (the one just built) and skipping those a build holds;
    /// returns the keys removed.
    pub fn evict(&self, max: usize, keep: &str) -> Result<Vec<String>, TemplateError> {
        let mut list = self.list()?;
        if list.len() <= max {
            return Ok(Vec::new());
        }
        list.sort_by_key(|t| (t.current, t.last_used));
        let excess = list.len() - max;
        let mut removed = Vec::new();
        for t in list.into_iter().filter(|t| t.paths.key != keep) {
            if removed.len() == excess {
                break;
            }
            match self.discard(&t.paths.key) {
                Ok(()) => removed.push(t.paths.key),
                Err(TemplateError::Busy(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// Removes every template whose input files changed (a new kernel or QEMU makes the old
    /// ones dead weight), with its lock file; returns their keys.
    pub fn prune_stale(&self) -> Result<Vec<String>, TemplateError> {
        let mut removed = Vec::new();
        for t in self.list()?.into_iter().filter(|t| !t.current) {
            self.discard(&t.paths.key)?;
            removed.push(t.paths.key);
        }
        Ok(removed)
    }
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), TemplateError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", dir)(e)),
    }
}

/// Copies `src` into `to` (empty, e.g. a fresh memfd), keeping its holes: only the data
/// extents (`SEEK_DATA`/`SEEK_HOLE`) are copied, so a 512 MiB RAM file of which the guest
/// touched 60 MiB costs 60 MiB. Returns the bytes copied. Plain reads and writes: the source
/// (a file in the state directory) and a memfd are on different filesystems, which
/// `copy_file_range` refuses. Blocking: run it off the async executor.
pub fn copy_sparse(src: &Path, to: &File) -> Result<u64, TemplateError> {
    use std::os::unix::fs::FileExt;

    let dst = Path::new("the clone's RAM");
    let from = File::open(src).map_err(io("opening", src))?;
    let len = from
        .metadata()
        .map_err(io("reading the metadata of", src))?
        .len();
    to.set_len(len).map_err(io("sizing", dst))?;
    let mut copied = 0u64;
    for_each_chunk(&from, src, len, |off, chunk| {
        to.write_all_at(chunk, off).map_err(io("writing", dst))?;
        copied += chunk.len() as u64;
        Ok(())
    })?;
    Ok(copied)
}

/// The size of a page of guest RAM, the unit [`punch_zero_pages`] frees.
const PAGE: usize = 4096;

/// Frees the pages of the RAM file `path` that hold only zeros (`fallocate` punching holes, the
/// size kept): a clone reads a hole as zeros, so it gets the same RAM, and neither the
/// template nor any clone's copy ([`copy_sparse`]) holds those pages until the guest writes
/// them. Returns the bytes freed; 0 on a filesystem that cannot punch holes. Blocking.
pub fn punch_zero_pages(path: &Path) -> Result<u64, TemplateError> {
    use nix::fcntl::{fallocate, FallocateFlags};

    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("opening", path))?;
    let len = file
        .metadata()
        .map_err(io("reading the metadata of", path))?
        .len();
    let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let mut freed = 0u64;
    let mut unsupported = false;
    // Frees [start, end); after a filesystem refused once, nothing more is tried.
    let mut punch = |start: u64, end: u64| -> Result<(), TemplateError> {
        if unsupported {
            return Ok(());
        }
        let (o, l) = (i64::try_from(start), i64::try_from(end - start));
        match fallocate(&file, mode, o.unwrap_or(0), l.unwrap_or(0)) {
            Ok(()) => freed += end - start,
            Err(nix::errno::Errno::EOPNOTSUPP) => unsupported = true,
            Err(e) => return Err(io("punching a hole in", path)(e.into())),
        }
        Ok(())
    };
    for_each_chunk(&file, path, len, |off, chunk| {
        let mut run: Option<u64> = None; // where the current run of zero pages starts
        for (i, page) in chunk.chunks(PAGE).enumerate() {
            let at = off + (i * PAGE) as u64;
            if page.len() == PAGE && page.iter().all(|b| *b == 0) {
                run.get_or_insert(at);
            } else if let Some(start) = run.take() {
                punch(start, at)?;
            }
        }
        match run {
            Some(start) => punch(start, off + chunk.len() as u64),
            None => Ok(()),
        }
    })?;
    Ok(freed)
}

/// Calls `f(offset, bytes)` for the data of `file` (`len` bytes, named `path`) in chunks of at
/// most 1 MiB, holes skipped (`SEEK_DATA`/`SEEK_HOLE`).
fn for_each_chunk(
    file: &File,
    path: &Path,
    len: u64,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), TemplateError>,
) -> Result<(), TemplateError> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    let mut buf = vec![0u8; 1 << 20];
    let mut pos: i64 = 0;
    let end = i64::try_from(len).unwrap_or(i64::MAX);
    while pos < end {
        let data = match lseek(file.as_fd(), pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break, // no data after pos
            Err(e) => return Err(io("seeking data in", path)(e.into())),
        };
        let hole = lseek(file.as_fd(), data, Whence::SeekHole)
            .map_err(|e| io("seeking a hole in", path)(e.into()))?;
        let mut off = u64::try_from(data).unwrap_or(0);
        let stop = u64::try_from(hole).unwrap_or(0);
        while off < stop {
            let want = usize::try_from(stop - off).map_or(buf.len(), |n| n.min(buf.len()));
            let n = file
                .read_at(&mut buf[..want], off)
                .map_err(io("reading", path))?;
            if n == 0 {
                return Err(io("reading", path)(ErrorKind::UnexpectedEof.into()));
            }
            f(off, &buf[..n])?;
            off += n as u64;
        }
        pos = hole;
    }
    Ok(())
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
