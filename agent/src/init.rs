//! Early PID 1 setup: leaving the initramfs root, the pseudo filesystems and the console.
//!
//! Runs before logging is up (it is what makes the console usable), so it reports problems by
//! returning them; `main` logs them once tracing is ready.
//!
//! **Why the root is re-mounted.** The kernel starts PID 1 in the initramfs, whose root is the
//! initial `rootfs` mount. That mount has no parent, and `pivot_root(2)` refuses (EINVAL) to
//! move a root without one, so no container could `pivot_root` into its rootfs. (The usual
//! workaround, `chroot` without `pivot_root`, keeps the guest's whole mount tree under every
//! container, one chroot escape away.) So before anything else PID 1 bind-mounts `/` onto
//! itself, moves that mount over `/` and chroots into it: the same files, now on a mount with a
//! parent. No copying; it costs three system calls.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
use nix::unistd::{chdir, chroot, dup2_stderr, dup2_stdin, dup2_stdout, mkdir};

/// One pseudo filesystem PID 1 mounts.
struct PseudoFs {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In mount order: a later entry may live inside an earlier one.
const MOUNTS: &[PseudoFs] = &[
    PseudoFs {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    PseudoFs {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    PseudoFs {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    PseudoFs {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    PseudoFs {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
    },
    PseudoFs {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    PseudoFs {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
    },
];

/// Mounts the pseudo filesystems and points stdin/stdout/stderr at /dev/console.
///
/// Returns a list of problems (each already phrased for the log); an empty list is success.
/// Already-mounted targets are not a problem.
pub fn setup() -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = leave_initramfs() {
        problems.push(format!(
            "re-mounting the initramfs root failed ({e}); containers cannot pivot_root"
        ));
    }
    for m in MOUNTS {
        match mkdir(m.target, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => problems.push(format!("creating {} failed: {e}", m.target)),
        }
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => problems.push(format!("mounting {} on {} failed: {e}", m.fstype, m.target)),
        }
    }
    if let Err(e) = attach_console() {
        problems.push(format!("attaching /dev/console failed: {e}"));
    }
    problems
}

/// Puts the root on a bind mount of itself when it is the initial ramfs/tmpfs (see the module
/// docs). A root that is already a real mount is left alone.
fn leave_initramfs() -> Result<(), Errno> {
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    let fs = statfs("/")?;
    if fs.filesystem_type() != RAMFS_MAGIC && fs.filesystem_type() != TMPFS_MAGIC {
        return Ok(());
    }
    const NEW_ROOT: &str = "/.root";
    match mkdir(NEW_ROOT, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    mount(
        Some("/"),
        NEW_ROOT,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    chdir(NEW_ROOT)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    chroot(".")?;
    chdir("/")?;
    // The mount point was a directory of the same filesystem: it is visible (empty) here too.
    let _ = std::fs::remove_dir(NEW_ROOT);
    Ok(())
}

fn attach_console() -> std::io::Result<()> {
    let console = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")?;
    dup2_stdin(&console)?;
    dup2_stdout(&console)?;
    dup2_stderr(&console)?;
    if console.as_raw_fd() <= 2 {
        // The fd is itself a standard stream: dropping it would close that stream.
        std::mem::forget(console);
    }
    Ok(())
}
