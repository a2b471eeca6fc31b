//! Host mounts in a sandbox's shared directory (exported to the guest by virtiofsd).
//!
//! Layout: `<shared>/<cid>/rootfs` (containerd's rootfs mounts) and `<shared>/<cid>/mounts/<n>`
//! (the spec's bind mounts), seen by the guest under `/run/isola/shared/`.
//!
//! The guest can write into the shared directory, so every path below it is resolved with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and mounts go through the resulting file
//! descriptors (`/proc/self/fd/N`): a symlink planted by the guest can never redirect a host
//! mount or unmount outside the shared directory.
//!
//! Propagation: virtiofsd's namespace sandbox copies the mount table when it starts, as a
//! *slave* of the host's. A mount made under the shared directory later reaches virtiofsd (and
//! so the guest) only if the mount it lands on is *shared* in the host namespace. Hosts where
//! `/` is private (containers, some distributions) would hide every rootfs from the guest, so
//! [`SharedDir::prepare`] makes the shared directory a bind mount of its own with shared
//! propagation before virtiofsd starts (Kata does the same with its mounts->shared bind).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::error::{Result, ShimError};
use crate::mountinfo;

/// A filesystem containerd prepared for a container's root (`CreateTaskRequest.rootfs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

/// What a bind source on the host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Dir,
    /// A regular file, socket, fifo: shared as a file.
    File,
    /// A device node: never shared (its numbers mean something else in the guest).
    Device,
    Missing,
}

impl SourceKind {
    /// Classifies a host path, following symlinks (bind sources come from containerd).
    pub fn of(path: &Path) -> SourceKind {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => SourceKind::Dir,
            Ok(m) if m.file_type().is_block_device() || m.file_type().is_char_device() => {
                SourceKind::Device
            }
            Ok(_) => SourceKind::File,
            Err(_) => SourceKind::Missing,
        }
    }
}

/// A host path exposed to the guest at `<cid>/mounts/<index>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    pub index: usize,
    pub source: PathBuf,
    pub kind: SourceKind,
    pub recursive: bool,
    pub readonly: bool,
}

/// The host side of one sandbox's shared directory.
#[derive(Debug, Clone)]
pub struct SharedDir {
    root: PathBuf,
}

fn mount_err(op: &'static str, path: &Path) -> impl FnOnce(Errno) -> ShimError {
    let path = path.to_path_buf();
    move |source| ShimError::Mount { op, path, source }
}

fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens `rel` below `dir` without following any symlink and without leaving `dir`.
pub fn open_beneath(dir: &impl AsFd, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    openat2(dir.as_fd(), rel, how)
}

fn open_dir_beneath(dir: &impl AsFd, rel: &Path) -> nix::Result<OwnedFd> {
    open_beneath(dir, rel, OFlag::O_PATH | OFlag::O_DIRECTORY)
}

/// Creates directory `name` in `dir` (fine if it exists) and opens it.
fn mkdir_open(dir: &OwnedFd, name: &str) -> nix::Result<OwnedFd> {
    match mkdirat(dir, name, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    open_dir_beneath(dir, Path::new(name))
}

/// Creates an empty file `name` in `dir` (fine if it exists) and opens it as O_PATH.
fn touch_open(dir: &OwnedFd, name: &str) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(Mode::from_bits_truncate(0o644))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    drop(openat2(dir.as_fd(), name, how)?);
    open_beneath(dir, Path::new(name), OFlag::O_PATH)
}

/// Mount flags and filesystem data from containerd-style options ("ro", "nosuid", ...).
/// Propagation options are dropped: shares never propagate anywhere but to the guest.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" | "defaults" => continue,
            other => {
                data.push(other);
                continue;
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, data.join(","))
}

const PAGE: usize = 4096;

/// Mounts one rootfs filesystem onto the directory `target` (an O_PATH fd).
fn mount_rootfs_onto(
    m: &RootfsMount,
    target: &OwnedFd,
    parent: &OwnedFd,
    name: &str,
) -> Result<()> {
    let (flags, data) = parse_options(&m.options);
    let path = fd_path(target);
    if flags.contains(MsFlags::MS_BIND) || m.fstype == "bind" {
        let flags = flags | MsFlags::MS_BIND;
        mount(
            Some(m.source.as_str()),
            &path,
            None::<&str>,
            flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
            None::<&str>,
        )
        .map_err(mount_err("bind-mounting the rootfs onto", &path))?;
        if flags.contains(MsFlags::MS_RDONLY) {
            remount_ro(parent, name, flags)?;
        }
        return Ok(());
    }
    if data.len() >= PAGE - 512 {
        return mount_long_overlay(m, flags, &data, &path);
    }
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(
        Some(m.source.as_str()),
        &path,
        Some(m.fstype.as_str()),
        flags,
        data,
    )
    .map_err(mount_err("mounting the rootfs onto", &path))
}

/// Overlay options longer than a page (many layers): mount from a thread whose working
/// directory is the layers' common parent, with relative lowerdirs (as containerd does).
fn mount_long_overlay(m: &RootfsMount, flags: MsFlags, data: &str, target: &Path) -> Result<()> {
    let too_long = || {
        ShimError::InvalidArgument(format!(
            "{} mount options are {} bytes, more than the kernel accepts",
            m.fstype,
            data.len()
        ))
    };
    let lower = data
        .split(',')
        .find_map(|o| o.strip_prefix("lowerdir="))
        .ok_or_else(too_long)?;
    let dirs: Vec<&str> = lower.split(':').collect();
    let prefix = common_dir_prefix(&dirs).ok_or_else(too_long)?;
    let relative: Vec<&str> = dirs.iter().map(|d| &d[prefix.len()..]).collect();
    let data = data.replace(lower, &relative.join(":"));
    if data.len() >= PAGE {
        return Err(too_long());
    }
    let (source, fstype, target) = (m.source.clone(), m.fstype.clone(), target.to_path_buf());
    // A thread of its own: unshare(CLONE_FS) gives it a private working directory, and it
    // ends right after, so no other code ever runs with that directory.
    std::thread::spawn(move || -> Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
            .map_err(mount_err("unsharing the working directory for", &target))?;
        std::env::set_current_dir(&prefix)
            .map_err(|e| ShimError::io(format!("entering {prefix}"), e))?;
        mount(
            Some(source.as_str()),
            &target,
            Some(fstype.as_str()),
            flags,
            Some(data.as_str()),
        )
        .map_err(mount_err("mounting the rootfs onto", &target))
    })
    .join()
    .map_err(|_| ShimError::Internal("the overlay mount thread panicked".into()))?
}

/// The longest common prefix of `dirs` ending with '/', if it is more than "/".
fn common_dir_prefix(dirs: &[&str]) -> Option<String> {
    let first = dirs.first()?;
    let mut len = first.len();
    for d in &dirs[1..] {
        len = first
            .bytes()
            .zip(d.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    let cut = first[..len].rfind('/')? + 1;
    (cut > 1).then(|| first[..cut].to_string())
}

/// Makes the bind mount now on top of `parent/name` read-only.
fn remount_ro(parent: &OwnedFd, name: &str, flags: MsFlags) -> Result<()> {
    // Reopen: the fd taken before mounting points below the new mount, not at it.
    let top = open_beneath(parent, Path::new(name), OFlag::O_PATH)
        .map_err(mount_err("reopening", Path::new(name)))?;
    let path = fd_path(&top);
    let keep = flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    mount(
        None::<&str>,
        &path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | keep,
        None::<&str>,
    )
    .map_err(mount_err("remounting read-only", &path))
}

impl SharedDir {
    /// The shared directory at `root` (nothing is done until [`prepare`](Self::prepare)).
    pub fn new(root: impl Into<PathBuf>) -> SharedDir {
        SharedDir { root: root.into() }
    }

    /// The host path of the shared directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host directory of container `cid`.
    pub fn container_dir(&self, cid: &str) -> PathBuf {
        self.root.join(cid)
    }

    /// Creates the shared directory as a bind mount of itself with shared propagation (in a
    /// peer group of its own). Call before virtiofsd starts; see the module docs.
    pub fn prepare(&self) -> Result<()> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| ShimError::io(format!("creating {}", self.root.display()), e))?;
        let root = self.root.as_path();
        mount(
            Some(root),
            root,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(mount_err("bind-mounting onto itself", root))?;
        for (flag, op) in [
            (MsFlags::MS_PRIVATE, "making private"),
            (MsFlags::MS_SHARED, "making shared"),
        ] {
            if let Err(e) = mount(None::<&str>, root, None::<&str>, flag, None::<&str>) {
                let _ = umount2(root, MntFlags::MNT_DETACH);
                return Err(mount_err(op, root)(e));
            }
        }
        Ok(())
    }

    fn open_root(&self) -> Result<OwnedFd> {
        nix::fcntl::open(
            &self.root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(mount_err("opening", &self.root))
    }

    /// Mounts container `cid`'s rootfs at `<cid>/rootfs` (containerd's `rootfs` mounts, or a
    /// bind of `bundle_rootfs` when there are none) and its binds at `<cid>/mounts/<n>`.
    /// On failure whatever was mounted is undone.
    pub fn share_container(
        &self,
        cid: &str,
        rootfs: &[RootfsMount],
        bundle_rootfs: &Path,
        binds: &[HostBind],
    ) -> Result<()> {
        let result = self.try_share(cid, rootfs, bundle_rootfs, binds);
        if result.is_err() {
            if let Err(e) = self.unshare_container(cid) {
                tracing::warn!(container_id = cid, error = %e, "undoing a partial share");
            }
        }
        result
    }

    fn try_share(
        &self,
        cid: &str,
        rootfs: &[RootfsMount],
        bundle_rootfs: &Path,
        binds: &[HostBind],
    ) -> Result<()> {
        let root = self.open_root()?;
        let cdir =
            mkdir_open(&root, cid).map_err(mount_err("creating", &self.container_dir(cid)))?;
        let target = mkdir_open(&cdir, "rootfs").map_err(mount_err(
            "creating",
            &self.container_dir(cid).join("rootfs"),
        ))?;
        if rootfs.is_empty() {
            let m = RootfsMount {
                fstype: "bind".into(),
                source: bundle_rootfs.to_string_lossy().into_owned(),
                options: vec!["rbind".into()],
            };
            mount_rootfs_onto(&m, &target, &cdir, "rootfs")?;
        }
        for m in rootfs {
            mount_rootfs_onto(m, &target, &cdir, "rootfs")?;
        }
        if binds.is_empty() {
            return Ok(());
        }
        let mdir = mkdir_open(&cdir, "mounts").map_err(mount_err(
            "creating",
            &self.container_dir(cid).join("mounts"),
        ))?;
        for b in binds {
            let name = b.index.to_string();
            let created = match b.kind {
                SourceKind::Dir => mkdir_open(&mdir, &name),
                _ => touch_open(&mdir, &name),
            };
            let target = created.map_err(mount_err("creating a bind target for", &b.source))?;
            let mut flags = MsFlags::MS_BIND;
            if b.recursive {
                flags |= MsFlags::MS_REC;
            }
            mount(
                Some(b.source.as_path()),
                &fd_path(&target),
                None::<&str>,
                flags,
                None::<&str>,
            )
            .map_err(mount_err("bind-mounting", &b.source))?;
            if b.readonly {
                remount_ro(&mdir, &name, flags)?;
            }
        }
        Ok(())
    }

    /// Unmounts everything under `<cid>` (lazily when busy) and removes its directories,
    /// one by one, never recursively.
    pub fn unshare_container(&self, cid: &str) -> Result<()> {
        let dir = self.container_dir(cid);
        if !dir.exists() {
            return Ok(());
        }
        self.unmount_below(&dir)?;
        let root = self.open_root()?;
        let Ok(cdir) = open_dir_beneath(&root, Path::new(cid)) else {
            return Ok(());
        };
        if let Ok(mdir) = open_dir_beneath(&cdir, Path::new("mounts")) {
            remove_entries(&mdir, &dir.join("mounts"));
            remove_at(&cdir, "mounts", &dir);
        }
        remove_at(&cdir, "rootfs", &dir);
        drop(cdir);
        remove_at(&root, cid, &self.root);
        Ok(())
    }

    /// Unmounts every mount below the shared directory (not the directory's own bind).
    fn unmount_below(&self, dir: &Path) -> Result<()> {
        let mounts = mountinfo::current_mounts_under(dir)
            .map_err(|e| ShimError::io("reading /proc/self/mountinfo", e))?;
        let root = self.open_root()?;
        for mount_point in mounts {
            let Ok(rel) = mount_point.strip_prefix(&self.root) else {
                continue;
            };
            if rel.as_os_str().is_empty() {
                continue;
            }
            unmount_beneath(&root, rel, &mount_point)?;
        }
        Ok(())
    }

    /// Unmounts everything in the shared directory, then the directory's own bind, then
    /// removes the container directories and the shared directory (non-recursively).
    pub fn teardown(&self) -> Result<()> {
        if !self.root.exists() {
            return Ok(());
        }
        self.unmount_below(&self.root)?;
        // The debug console's shell (isola_sandbox::debug_console): its directory's files
        // first, so that the loop below can remove the directory.
        if let Ok(root) = self.open_root() {
            if let Ok(debug) = open_dir_beneath(&root, Path::new(isola_agent_proto::DEBUG_DIR)) {
                remove_entries(&debug, &self.root.join(isola_agent_proto::DEBUG_DIR));
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                if let Some(cid) = entry.file_name().to_str() {
                    self.unshare_container(cid)?;
                }
            }
        }
        // Whatever else the guest left at the top (files, symlinks, empty directories).
        if let Ok(root) = self.open_root() {
            remove_entries(&root, &self.root);
        }
        // The self-bind, possibly stacked if prepare ran twice.
        loop {
            match umount2(&self.root, MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) => continue,
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
                Err(Errno::EBUSY) => {
                    umount2(&self.root, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
                        .map_err(mount_err("lazily unmounting", &self.root))?;
                }
                Err(e) => return Err(mount_err("unmounting", &self.root)(e)),
            }
        }
        match std::fs::remove_dir(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ShimError::io(
                format!("removing {}", self.root.display()),
                e,
            )),
        }
    }
}

/// Unmounts `root/rel` (lazily when busy): the parent is opened without symlinks and the last
/// component is looked up in it without following, so the guest cannot redirect the unmount.
fn unmount_beneath(root: &OwnedFd, rel: &Path, shown: &Path) -> Result<()> {
    let (parent, name) = match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => return Ok(()),
    };
    let pfd = if parent.as_os_str().is_empty() {
        nix::unistd::dup(root).map_err(mount_err("duplicating the fd of", shown))?
    } else {
        match open_dir_beneath(root, parent) {
            Ok(fd) => fd,
            // Renamed away or replaced by a symlink: nothing we may touch.
            Err(e) => {
                tracing::warn!(path = %shown.display(), error = %e, "not unmounting: the path changed under us");
                return Ok(());
            }
        }
    };
    let target = fd_path(&pfd).join(name);
    // One unmount per mountinfo entry: stacked mounts are listed once each.
    match umount2(&target, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) => {
            tracing::info!(path = %shown.display(), "mount busy; detaching it lazily");
            umount2(&target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
                .map_err(mount_err("lazily unmounting", shown))
        }
        Err(e) => Err(mount_err("unmounting", shown)(e)),
    }
}

/// Removes the entries of `dir` one level deep: files are unlinked, empty directories removed;
/// anything else (a non-empty directory, a mount point) is left and reported.
fn remove_entries(dir: &OwnedFd, shown: &Path) {
    // Listing through the fd's magic link reads exactly the directory that was opened safely.
    let Ok(listing) = std::fs::read_dir(fd_path(dir)) else {
        return;
    };
    let names: Vec<String> = listing
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    for name in names {
        remove_at(dir, &name, shown);
    }
}

/// Removes `name` in `dir`: as a directory (must be empty), else as a file.
fn remove_at(dir: &OwnedFd, name: &str, shown: &Path) {
    let result = match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Err(Errno::ENOTDIR) => unlinkat(dir, name, UnlinkatFlags::NoRemoveDir),
        other => other,
    };
    match result {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => {
            tracing::warn!(path = %shown.join(name).display(), error = %e, "left behind in the shared directory")
        }
    }
}

#[cfg(test)]
#[path = "mounts_tests.rs"]
mod tests;
