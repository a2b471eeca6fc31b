//! The host's TSC frequency, for TCG guests.
//!
//! Under TCG a guest's `rdtsc` reads the host's TSC, so it runs at the host's rate; but the
//! guest kernel measures that rate at boot against the emulated PIT and ACPI PM timer. On a
//! busy host (measured: 20 pods booting at once on 2 cores) the vCPU thread loses the CPU in
//! the middle of that measurement, and one guest in a few took its TSC for ten times slower
//! than it is: its clock then ran ten times fast, and a 120 s RPC timeout fired after 12 s.
//! Telling the guest the rate (`tsc_early_khz=`) skips that measurement; the kernel's later
//! refinement accepts at most a 1% correction. KVM guests use kvmclock and need none of this.

use std::time::Duration;

/// How long the measurement spans (its error is the pairing error over this, well under 0.1%).
const WINDOW: Duration = Duration::from_millis(10);

/// The host's TSC rate in kHz, when the host has a constant, non-stop TSC (else a guest's TSC
/// would not have a rate to tell); measured once per process. Blocks for [`WINDOW`] the first
/// time: call it off the async executor.
pub fn host_tsc_khz() -> Option<u32> {
    static KHZ: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        if !stable_tsc(&cpuinfo) {
            return None;
        }
        measure()
    })
}

/// Whether `/proc/cpuinfo` lists both `constant_tsc` and `nonstop_tsc`.
fn stable_tsc(cpuinfo: &str) -> bool {
    let Some(flags) = cpuinfo.lines().find(|l| l.starts_with("flags")) else {
        return false;
    };
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    has("constant_tsc") && has("nonstop_tsc")
}

/// The rate from two (tsc, ns) samples, when it is a plausible one (100 MHz to 10 GHz).
fn khz_between(a: (u64, u64), b: (u64, u64)) -> Option<u32> {
    let cycles = b.0.checked_sub(a.0)?;
    let ns = b.1.checked_sub(a.1)?;
    if ns == 0 {
        return None;
    }
    let khz = u128::from(cycles) * 1_000_000 / u128::from(ns);
    (100_000..=10_000_000)
        .contains(&khz)
        .then(|| u32::try_from(khz).ok())
        .flatten()
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u32> {
    let a = sample();
    std::thread::sleep(WINDOW);
    let b = sample();
    khz_between(a, b)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u32> {
    None
}

/// A (tsc, CLOCK_MONOTONIC_RAW ns) pair: of five tries, the one whose clock reads were the
/// closest together (the least disturbed by preemption).
#[cfg(target_arch = "x86_64")]
fn sample() -> (u64, u64) {
    let now = || {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_RAW)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0)
    };
    (0..5)
        .map(|_| {
            let t0 = now();
            // SAFETY: `rdtsc` reads the time-stamp counter; it has no side effects and every
            // x86_64 CPU has it.
            #[allow(unused_unsafe)]
            let tsc = unsafe { core::arch::x86_64::_rdtsc() };
            let t1 = now();
            (t1.saturating_sub(t0), tsc, t0 / 2 + t1 / 2)
        })
        .min()
        .map(|(_, tsc, ns)| (tsc, ns))
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_constant_nonstop_tsc_counts() {
        let both = "processor\t: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc rdtscp\n";
        assert!(stable_tsc(both));
        assert!(!stable_tsc("flags\t\t: fpu tsc constant_tsc rdtscp\n"));
        assert!(!stable_tsc(
            "flags\t\t: fpu tsc nonstop_tsc_x constant_tsc\n"
        ));
        assert!(!stable_tsc("processor\t: 0\n"));
    }

    #[test]
    fn rate_is_cycles_per_millisecond() {
        // 2.2e9 cycles in one second: 2 200 000 kHz.
        assert_eq!(
            khz_between((1_000, 5), (2_200_001_000, 1_000_000_005)),
            Some(2_200_000)
        );
        // Backwards, no time, or implausible rates: nothing.
        assert_eq!(khz_between((10, 10), (5, 20)), None);
        assert_eq!(khz_between((10, 10), (20, 10)), None);
        assert_eq!(khz_between((0, 0), (1_000, 1_000_000)), None);
        assert_eq!(khz_between((0, 0), (u64::MAX / 2, 1_000)), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn this_hosts_rate_is_measured_consistently() {
        let (Some(a), Some(b)) = (measure(), measure()) else {
            panic!("no plausible TSC rate measured on an x86_64 host");
        };
        let diff = a.abs_diff(b);
        assert!(
            diff * 100 < a,
            "two measurements differ by over 1%: {a} vs {b} kHz"
        );
    }
}
