//! What makes a VM restored from a template its own: the host's clock and fresh randomness.
//!
//! Every clone of a template wakes with the template's wall clock and the template's kernel RNG
//! state. CreateSandbox (the host's first request to every pod, booted or restored) carries the
//! host's time and 64 random bytes: the clock is set, the bytes are credited to the kernel's
//! input pool (`RNDADDENTROPY`) and the kernel's RNG is reseeded from it at once
//! (`RNDRESEEDCRNG`), before any container runs. The guest kernel has no vmgenid driver, so this
//! is the only reseed.

use std::os::fd::AsRawFd;

use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};

use crate::error::{AgentError, Result};

/// The most bytes taken from the host (the kernel's pool is 256 bits; more adds nothing).
pub const MAX_ENTROPY: usize = 512;

/// `_IOW('R', 0x03, int[2])`: add bytes to the input pool and credit their entropy.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the kernel's RNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Sets the wall clock to the host's (`sec` = 0: leave it).
pub fn set_clock(sec: i64, nsec: u32) -> Result<()> {
    if sec == 0 {
        return Ok(());
    }
    if sec < 0 || nsec >= 1_000_000_000 {
        return Err(AgentError::InvalidArgument(format!(
            "host time {sec}.{nsec:09} is not a valid time (sec > 0, nsec < 1e9)"
        )));
    }
    if !crate::boot::is_guest_init() {
        return Ok(());
    }
    clock_settime(ClockId::CLOCK_REALTIME, TimeSpec::new(sec, i64::from(nsec)))
        .map_err(|e| AgentError::sys("setting the clock to the host's", e))
}

/// The `rand_pool_info` of `bytes`: entropy credited in bits, length, then the bytes.
fn pool_info(bytes: &[u8]) -> Vec<u8> {
    let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    let mut buf = Vec::with_capacity(8 + bytes.len());
    buf.extend_from_slice(&len.saturating_mul(8).to_ne_bytes());
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(bytes);
    buf
}

/// Mixes `bytes` (at most [`MAX_ENTROPY`]) into the kernel's pool and reseeds its RNG. No
/// bytes: nothing to do.
pub fn add_entropy(bytes: &[u8]) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    if bytes.len() > MAX_ENTROPY {
        return Err(AgentError::InvalidArgument(format!(
            "{} bytes of entropy (at most {MAX_ENTROPY})",
            bytes.len()
        )));
    }
    if !crate::boot::is_guest_init() {
        return Ok(());
    }
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| AgentError::io("opening /dev/urandom", e))?;
    let info = pool_info(bytes);
    // SAFETY: `info` is a valid rand_pool_info (two ints, then buf_size bytes) that outlives
    // the call; the kernel only reads it.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if rc != 0 {
        return Err(AgentError::sys(
            "adding the host's entropy (RNDADDENTROPY)",
            nix::errno::Errno::last(),
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) };
    if rc != 0 {
        return Err(AgentError::sys(
            "reseeding the kernel RNG (RNDRESEEDCRNG)",
            nix::errno::Errno::last(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_info_credits_eight_bits_per_byte() {
        let info = pool_info(&[7; 64]);
        assert_eq!(info.len(), 8 + 64);
        assert_eq!(i32::from_ne_bytes(info[0..4].try_into().unwrap()), 512);
        assert_eq!(i32::from_ne_bytes(info[4..8].try_into().unwrap()), 64);
        assert_eq!(info[8..], [7; 64]);
    }

    #[test]
    fn bad_input_is_refused_before_any_syscall() {
        assert!(matches!(
            add_entropy(&[0; MAX_ENTROPY + 1]),
            Err(AgentError::InvalidArgument(_))
        ));
        assert!(add_entropy(&[]).is_ok());
        assert!(matches!(
            set_clock(-1, 0),
            Err(AgentError::InvalidArgument(_))
        ));
        assert!(matches!(
            set_clock(1, 1_000_000_000),
            Err(AgentError::InvalidArgument(_))
        ));
        assert!(set_clock(0, 0).is_ok(), "0 leaves the clock");
    }
}
