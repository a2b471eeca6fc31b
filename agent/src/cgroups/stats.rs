//! StatsContainer: a container's statistics from its cgroup v2 files.
//!
//! The parsing is pure ([`cpu_stats`], [`memory_stats`], [`pids_stats`], [`io_stats`]); [`read`]
//! only gathers the files. A file that is missing (a controller not enabled, no swap
//! accounting) or unreadable counts as empty: its fields are 0. A limit of `max` is
//! [`UNLIMITED`] (`u64::MAX`), as containerd's own cgroup v2 metrics report it.

use std::collections::HashMap;
use std::path::Path;

use isola_agent_proto::agent::{CpuStats, IoEntry, MemoryStats, PidsStats, StatsContainerResponse};

/// What a limit of `max` (no limit) is reported as.
pub const UNLIMITED: u64 = u64::MAX;

/// A flat-keyed file (`cpu.stat`, `memory.stat`, `memory.events`): `key value` per line.
/// Lines that do not parse are skipped.
pub fn flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let key = parts.next()?;
            let value = parts.next()?.parse().ok()?;
            Some((key, value))
        })
        .collect()
}

/// A single-value file: a number, or `max` ([`UNLIMITED`]); 0 when empty or garbled.
pub fn single_value(text: &str) -> u64 {
    match text.trim() {
        "max" => UNLIMITED,
        v => v.parse().unwrap_or(0),
    }
}

/// `cpu.stat`.
pub fn cpu_stats(cpu_stat: &str) -> CpuStats {
    let t = flat_keyed(cpu_stat);
    let get = |k: &str| t.get(k).copied().unwrap_or(0);
    CpuStats {
        usage_usec: get("usage_usec"),
        user_usec: get("user_usec"),
        system_usec: get("system_usec"),
        nr_periods: get("nr_periods"),
        nr_throttled: get("nr_throttled"),
        throttled_usec: get("throttled_usec"),
        ..Default::default()
    }
}

/// The texts of the memory controller's files (empty for a missing file).
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryFiles<'a> {
    pub current: &'a str,
    pub max: &'a str,
    pub stat: &'a str,
    pub events: &'a str,
    pub swap_current: &'a str,
    pub swap_max: &'a str,
}

/// The memory controller's files.
pub fn memory_stats(f: MemoryFiles<'_>) -> MemoryStats {
    let stat = flat_keyed(f.stat);
    let events = flat_keyed(f.events);
    let s = |k: &str| stat.get(k).copied().unwrap_or(0);
    let e = |k: &str| events.get(k).copied().unwrap_or(0);
    MemoryStats {
        usage: single_value(f.current),
        usage_limit: single_value(f.max),
        swap_usage: single_value(f.swap_current),
        swap_limit: single_value(f.swap_max),
        anon: s("anon"),
        file: s("file"),
        kernel_stack: s("kernel_stack"),
        slab: s("slab"),
        sock: s("sock"),
        shmem: s("shmem"),
        file_mapped: s("file_mapped"),
        pgfault: s("pgfault"),
        pgmajfault: s("pgmajfault"),
        oom_events: e("oom"),
        oom_kill_events: e("oom_kill"),
        ..Default::default()
    }
}

/// `pids.current` and `pids.max`.
pub fn pids_stats(current: &str, max: &str) -> PidsStats {
    PidsStats {
        current: single_value(current),
        limit: single_value(max),
        ..Default::default()
    }
}

/// `io.stat`: one line per device, `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N`.
/// Lines without a device number are skipped; unknown keys are ignored.
pub fn io_stats(io_stat: &str) -> Vec<IoEntry> {
    io_stat
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (major, minor) = parts.next()?.split_once(':')?;
            let mut entry = IoEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..Default::default()
            };
            for kv in parts {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => entry.rbytes = v,
                    "wbytes" => entry.wbytes = v,
                    "rios" => entry.rios = v,
                    "wios" => entry.wios = v,
                    _ => {}
                }
            }
            Some(entry)
        })
        .collect()
}

/// Reads the statistics of the cgroup at `dir`. Fails only if the cgroup itself is missing.
pub fn read(dir: &Path) -> std::io::Result<StatsContainerResponse> {
    std::fs::metadata(dir)?;
    let file = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let (current, max, stat, events, swap_current, swap_max) = (
        file("memory.current"),
        file("memory.max"),
        file("memory.stat"),
        file("memory.events"),
        file("memory.swap.current"),
        file("memory.swap.max"),
    );
    let memory = memory_stats(MemoryFiles {
        current: &current,
        max: &max,
        stat: &stat,
        events: &events,
        swap_current: &swap_current,
        swap_max: &swap_max,
    });
    Ok(StatsContainerResponse {
        cpu: Some(cpu_stats(&file("cpu.stat"))).into(),
        memory: Some(memory).into(),
        pids: Some(pids_stats(&file("pids.current"), &file("pids.max"))).into(),
        io: io_stats(&file("io.stat")),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stat_fields() {
        let text =
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\ncore_sched.force_idle_usec 0\n\
                    nr_periods 7\nnr_throttled 2\nthrottled_usec 300\nnr_bursts 0\n";
        let s = cpu_stats(text);
        assert_eq!(
            (s.usage_usec, s.user_usec, s.system_usec),
            (1500, 1000, 500)
        );
        assert_eq!(
            (s.nr_periods, s.nr_throttled, s.throttled_usec),
            (7, 2, 300)
        );
        // Without the cpu controller only the usage lines exist.
        let s = cpu_stats("usage_usec 9\nuser_usec 4\nsystem_usec 5\n");
        assert_eq!((s.usage_usec, s.nr_periods), (9, 0));
        assert_eq!(cpu_stats(""), CpuStats::default());
    }

    #[test]
    fn memory_files_and_unlimited() {
        let stat = "anon 4096\nfile 8192\nkernel_stack 16384\npagetables 0\nsock 1\nshmem 2\n\
                    file_mapped 3\nslab 100\npgfault 55\npgmajfault 5\n";
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        let m = memory_stats(MemoryFiles {
            current: "123456\n",
            max: "33554432\n",
            stat,
            events,
            swap_current: "0\n",
            swap_max: "max\n",
        });
        assert_eq!((m.usage, m.usage_limit), (123456, 32 << 20));
        assert_eq!((m.swap_usage, m.swap_limit), (0, UNLIMITED));
        assert_eq!(
            (m.anon, m.file, m.kernel_stack, m.slab),
            (4096, 8192, 16384, 100)
        );
        assert_eq!((m.sock, m.shmem, m.file_mapped), (1, 2, 3));
        assert_eq!((m.pgfault, m.pgmajfault), (55, 5));
        assert_eq!((m.oom_events, m.oom_kill_events), (3, 2));
        let none = memory_stats(MemoryFiles {
            max: "max",
            ..Default::default()
        });
        assert_eq!(
            (none.usage, none.usage_limit, none.swap_limit),
            (0, UNLIMITED, 0)
        );
    }

    #[test]
    fn pids_and_single_values() {
        let p = pids_stats("3\n", "max\n");
        assert_eq!((p.current, p.limit), (3, UNLIMITED));
        assert_eq!(pids_stats("1", "50").limit, 50);
        assert_eq!(single_value(""), 0);
        assert_eq!(single_value("garbage"), 0);
    }

    #[test]
    fn io_stat_lines() {
        let text = "253:0 rbytes=1024 wbytes=2048 rios=3 wios=4 dbytes=0 dios=0\n\
                    8:16 rbytes=1 wbytes=2 rios=5 wios=6\nnonsense\n7:x rbytes=1\n";
        let io = io_stats(text);
        assert_eq!(io.len(), 2);
        assert_eq!(
            (
                io[0].major,
                io[0].minor,
                io[0].rbytes,
                io[0].wbytes,
                io[0].rios,
                io[0].wios
            ),
            (253, 0, 1024, 2048, 3, 4)
        );
        assert_eq!((io[1].major, io[1].minor, io[1].wios), (8, 16, 6));
        assert!(io_stats("").is_empty());
    }

    #[test]
    fn read_gathers_a_cgroup_and_tolerates_missing_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("memory.current"), "4096\n").unwrap();
        std::fs::write(d.path().join("memory.max"), "max\n").unwrap();
        std::fs::write(d.path().join("pids.current"), "2\n").unwrap();
        std::fs::write(d.path().join("pids.max"), "10\n").unwrap();
        std::fs::write(d.path().join("cpu.stat"), "usage_usec 77\n").unwrap();
        let s = read(d.path()).unwrap();
        assert_eq!(s.memory.usage, 4096);
        assert_eq!(s.memory.usage_limit, UNLIMITED);
        assert_eq!(s.memory.swap_usage, 0);
        assert_eq!((s.pids.current, s.pids.limit), (2, 10));
        assert_eq!(s.cpu.usage_usec, 77);
        assert!(s.io.is_empty());
        assert!(read(&d.path().join("gone")).is_err());
    }
}
