//! `isola-floor-init`: the "bare floor" PID 1.
//!
//! Packed alone into `build/guest/floor-initrd.img` by `guest/build.sh`. It prints one line
//! and powers the VM off, so timing `qemu-system-x86_64 ... -no-reboot` from spawn to exit
//! measures how long the kernel itself takes to reach a trivial `/init`: the floor under
//! which no agent optimisation can go.

use std::ffi::CStr;

const MSG: &[u8] = b"isola-floor: init reached\n";

/// Writes all of `buf` to `fd`; false on any error (including a missing fd).
fn write_all(fd: libc::c_int, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: `buf` is a live slice; write(2) reads at most `buf.len()` bytes from it.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        buf = &buf[n as usize..];
    }
    true
}

/// Fallback when the kernel could not hand us a console on fds 0-2 (no `/dev/console` in
/// the rootfs): mount devtmpfs on /dev and open the console ourselves.
fn write_via_devtmpfs() -> bool {
    const DEV: &CStr = c"/dev";
    const CONSOLE: &CStr = c"/dev/console";
    // SAFETY: all pointers are NUL-terminated static strings; a null data pointer is allowed.
    // Failures (already exists / already mounted) are fine: the open below decides.
    unsafe {
        libc::mkdir(DEV.as_ptr(), 0o755);
        libc::mount(
            c"devtmpfs".as_ptr(),
            DEV.as_ptr(),
            c"devtmpfs".as_ptr(),
            0,
            std::ptr::null(),
        );
    }
    // SAFETY: `CONSOLE` is a NUL-terminated static string.
    let fd = unsafe {
        libc::open(
            CONSOLE.as_ptr(),
            libc::O_WRONLY | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    fd >= 0 && write_all(fd, MSG)
}

fn main() {
    if !write_all(1, MSG) && !write_all(2, MSG) {
        write_via_devtmpfs();
    }

    // SAFETY: getpid(2) has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        // Never power off a machine we were not booted as init of (e.g. run by hand on a host).
        eprintln!("isola-floor-init: not PID 1, not powering off");
        std::process::exit(1);
    }

    // Nothing to sync: the only filesystem is the initramfs.
    // SAFETY: reboot(2) with POWER_OFF only affects the VM we are PID 1 of; that is the point.
    unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF) };

    // Only reached if reboot(2) failed. PID 1 exiting makes the kernel panic; with
    // `panic=-1` it then reboots, which `-no-reboot` turns into a QEMU exit as well.
    std::process::exit(1);
}
