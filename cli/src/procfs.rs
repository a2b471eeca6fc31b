//! What `isola monitor` reads of a host process from /proc: its name, CPU time, RSS and PSS.
//!
//! The files are read through [`ProcSource`] so the parsing is tested on fixed text, and every
//! read is bounded ([`MAX_PROC_FILE`]): odd content yields no figure, never a panic.

use std::collections::HashMap;
use std::io::Read;

use isola_sandbox::record::{start_time_from_stat, ProcId};

/// Most bytes read of one /proc file (stat, statm, comm and smaps_rollup are far smaller).
pub const MAX_PROC_FILE: u64 = 64 * 1024;
/// Most bytes read of a `smaps` (a VMM's has a few hundred mappings, ~200 KiB).
pub const MAX_SMAPS: u64 = 8 * 1024 * 1024;

/// Reads `/proc/<pid>/<file>`.
pub trait ProcSource {
    /// The file's text (at most [`MAX_PROC_FILE`] bytes, [`MAX_SMAPS`] for `smaps`), or None
    /// when it cannot be read.
    fn read(&self, pid: u32, file: &str) -> Option<String>;
    /// The memfds `pid` has open, as inode → allocated KiB.
    fn memfds(&self, pid: u32) -> HashMap<u64, u64>;
}

/// The host's /proc.
pub struct HostProc;

impl ProcSource for HostProc {
    fn read(&self, pid: u32, file: &str) -> Option<String> {
        let f = std::fs::File::open(format!("/proc/{pid}/{file}")).ok()?;
        let mut bytes = Vec::new();
        let most = if file == "smaps" {
            MAX_SMAPS
        } else {
            MAX_PROC_FILE
        };
        f.take(most).read_to_end(&mut bytes).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn memfds(&self, pid: u32) -> HashMap<u64, u64> {
        isola_sandbox::memfd::host_memfds(pid)
    }
}

/// Bytes that `pids` (every process of one pod) hold in memfds which none of them maps: a VM
/// template clone's RAM copy its guest has not touched (see [`isola_sandbox::memfd`]).
pub fn unmapped_memfd_bytes(src: &dyn ProcSource, pids: &[u32]) -> u64 {
    isola_sandbox::memfd::unmapped_kib_of(pids, |pid| src.memfds(pid), |pid| src.read(pid, "smaps"))
        .saturating_mul(1024)
}

/// The host's clock ticks per second and page size, which /proc figures are counted in.
#[derive(Debug, Clone, Copy)]
pub struct Units {
    /// `sysconf(_SC_CLK_TCK)`.
    pub clk_tck: u64,
    /// `sysconf(_SC_PAGESIZE)`, bytes.
    pub page_size: u64,
}

impl Units {
    /// This host's units (the usual 100 Hz and 4 KiB when sysconf does not say).
    pub fn host() -> Units {
        use nix::unistd::{sysconf, SysconfVar};
        let get = |var, default: u64| {
            sysconf(var)
                .ok()
                .flatten()
                .and_then(|v| u64::try_from(v).ok())
                .filter(|&v| v > 0)
                .unwrap_or(default)
        };
        Units {
            clk_tck: get(SysconfVar::CLK_TCK, 100),
            page_size: get(SysconfVar::PAGE_SIZE, 4096),
        }
    }
}

/// What is known of one process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes; None when statm could not be read.
    pub rss_bytes: Option<u64>,
    /// Proportional set size, bytes; None when smaps_rollup could not be read.
    pub pss_bytes: Option<u64>,
}

/// The figures of `proc`, or None when it no longer runs (or its pid now names another
/// process, or it is a zombie).
pub fn stats(src: &dyn ProcSource, proc: ProcId, units: Units) -> Option<ProcStats> {
    let stat = src.read(proc.pid, "stat")?;
    if start_time_from_stat(&stat)? != proc.start_time {
        return None;
    }
    let ticks = cpu_ticks_from_stat(&stat)?;
    Some(ProcStats {
        cpu_seconds: ticks as f64 / units.clk_tck.max(1) as f64,
        rss_bytes: src
            .read(proc.pid, "statm")
            .and_then(|s| rss_pages_from_statm(&s))
            .map(|pages| pages.saturating_mul(units.page_size)),
        pss_bytes: src
            .read(proc.pid, "smaps_rollup")
            .and_then(|s| kib_field(&s, "Pss:"))
            .map(|kib| kib.saturating_mul(1024)),
    })
}

/// The process's name: the file name of its argv[0] (whole, where `comm` is cut at 15
/// bytes: "vhost-device-vsock"), else its `comm`; None when neither is readable.
pub fn name(src: &dyn ProcSource, pid: u32) -> Option<String> {
    let from_cmdline = src.read(pid, "cmdline").and_then(|c| {
        let argv0 = c.split('\0').next()?;
        let base = argv0.rsplit('/').next()?;
        (!base.is_empty()).then(|| base.to_string())
    });
    from_cmdline
        .or_else(|| src.read(pid, "comm").map(|c| c.trim_end().to_string()))
        .filter(|n| !n.is_empty())
        .map(|n| n.chars().take(64).collect())
}

/// utime + stime (fields 14 and 15 of /proc/<pid>/stat), clock ticks. Fields are counted from
/// the last ')' since the command name may contain anything.
pub fn cpu_ticks_from_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' comes field 3 (state): field 14 is the 12th from there.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// The resident pages (second field) of /proc/<pid>/statm.
pub fn rss_pages_from_statm(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// The value of a `Name:  <n> kB` line (smaps_rollup, status), in KiB.
pub fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(HashMap<&'static str, &'static str>);

    impl ProcSource for Fixed {
        fn read(&self, _pid: u32, file: &str) -> Option<String> {
            self.0.get(file).map(|s| s.to_string())
        }

        fn memfds(&self, _pid: u32) -> HashMap<u64, u64> {
            self.0.get("memfds").map_or_else(HashMap::new, |t| {
                t.lines()
                    .filter_map(|l| l.split_once(' '))
                    .filter_map(|(i, k)| Some((i.parse().ok()?, k.parse().ok()?)))
                    .collect()
            })
        }
    }

    #[test]
    fn guest_ram_no_process_maps() {
        let smaps =
            "7f00-7f10 rw-s 00000000 00:01 42 /memfd:isola-clone-ram (deleted)\nPss: 300 kB\n";
        let src = Fixed(HashMap::from([("memfds", "42 1000\n"), ("smaps", smaps)]));
        // Two processes map it (the same fake smaps for both): 600 KiB of its 1000 are mapped.
        assert_eq!(unmapped_memfd_bytes(&src, &[1, 2]), 400 * 1024);
        let none = Fixed(HashMap::from([("smaps", smaps)]));
        assert_eq!(unmapped_memfd_bytes(&none, &[1]), 0, "no memfd open");
    }

    const STAT: &str =
        "77 (a b) c)) S 1 77 77 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 987654 1000 10";

    #[test]
    fn parses_the_figures_and_bounds_odd_content() {
        assert_eq!(cpu_ticks_from_stat(STAT), Some(300));
        assert_eq!(cpu_ticks_from_stat("1 (x) S 1 2"), None);
        assert_eq!(cpu_ticks_from_stat("no paren"), None);
        assert_eq!(rss_pages_from_statm("100 25 3 1 0 9 0\n"), Some(25));
        assert_eq!(rss_pages_from_statm("x"), None);
        let rollup = "55d0-7ffe ---p 0 00:00 0 [rollup]\nRss: 900 kB\nPss:  \t 420 kB\n";
        assert_eq!(kib_field(rollup, "Pss:"), Some(420));
        assert_eq!(kib_field("Pss: lots kB", "Pss:"), None);
    }

    #[test]
    fn stats_of_a_process_and_of_a_reused_pid() {
        let src = Fixed(HashMap::from([
            ("stat", STAT),
            ("statm", "100 25 3 1 0 9 0"),
            ("smaps_rollup", "Pss: 80 kB\n"),
            ("cmdline", "/usr/libexec/vhost-device-vsock\0--vm\0x\0"),
            ("comm", "vhost-device-vs\n"),
        ]));
        let units = Units {
            clk_tck: 100,
            page_size: 4096,
        };
        let me = ProcId {
            pid: 77,
            start_time: 987654,
        };
        let s = stats(&src, me, units).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.rss_bytes, Some(25 * 4096));
        assert_eq!(s.pss_bytes, Some(80 * 1024));
        let reused = ProcId {
            start_time: 1,
            ..me
        };
        assert_eq!(stats(&src, reused, units), None);
        assert_eq!(name(&src, 77).as_deref(), Some("vhost-device-vsock"));
        let comm_only = Fixed(HashMap::from([("comm", "virtiofsd\n")]));
        assert_eq!(name(&comm_only, 77).as_deref(), Some("virtiofsd"));
        assert_eq!(name(&Fixed(HashMap::new()), 77), None);
    }
}
