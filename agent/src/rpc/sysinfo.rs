//! Facts about the guest read from /proc and /sys.

use std::path::Path;

/// `uname -r`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Parses `MemTotal:   123 kB` from /proc/meminfo into bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Parses `MemAvailable:   123 kB` from /proc/meminfo into bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The busy CPU time in /proc/stat's first (`cpu`) line, seconds, with `clk_tck` ticks a
/// second: user + nice + system + irq + softirq (fields 1, 2, 3, 6, 7); idle, iowait and
/// steal are time the guest did not run, and guest/guest_nice are already in user/nice.
pub fn parse_cpu_seconds(stat: &str, clk_tck: u64) -> Option<f64> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" || clk_tck == 0 {
        return None;
    }
    let ticks: Vec<u64> = fields
        .take(7)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if ticks.len() < 7 {
        return None;
    }
    let busy = [0, 1, 2, 5, 6].iter().map(|&i| ticks[i]).sum::<u64>();
    Some(busy as f64 / clk_tck as f64)
}

/// The guest's clock ticks per second (`getconf CLK_TCK`), 100 when unknown.
pub fn clk_tck() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// Parses /sys/devices/system/memory/block_size_bytes (hex, no 0x).
pub fn parse_block_size(text: &str) -> Option<u64> {
    u64::from_str_radix(text.trim(), 16).ok()
}

/// Counts CPUs in a list such as `0-3,5` (/sys/devices/system/cpu/online).
pub fn count_cpu_list(text: &str) -> u32 {
    text.trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|range| match range.split_once('-') {
            Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => u32::from(range.parse::<u32>().is_ok()),
        })
        .sum()
}

/// The first `limit` bytes of a file as text (lossy), empty when it cannot be read.
pub fn read_head(path: impl AsRef<Path>, limit: u64) -> String {
    use std::io::Read;
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut bytes));
    match read {
        Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    }
}

/// A small /proc or /sys file as text (at most 64 KiB of it), empty when it cannot be read.
pub fn read(path: impl AsRef<Path>) -> String {
    read_head(path, 64 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_block_size_and_cpus() {
        assert_eq!(
            parse_mem_total("MemTotal:        2000 kB\nMemFree: 1 kB\n"),
            Some(2_048_000)
        );
        assert_eq!(parse_mem_total("nothing"), None);
        assert_eq!(parse_block_size("8000000\n"), Some(0x800_0000));
        assert_eq!(count_cpu_list("0-3,5\n"), 5);
        assert_eq!(count_cpu_list("0"), 1);
        assert_eq!(
            parse_mem_available("MemTotal: 2000 kB\nMemFree: 1 kB\nMemAvailable:    1500 kB\n"),
            Some(1_536_000)
        );
        assert_eq!(parse_mem_available("MemTotal: 2000 kB\n"), None);
        assert_eq!(count_cpu_list(""), 0);
    }

    #[test]
    fn parses_the_busy_cpu_time_of_proc_stat() {
        let stat =
            "cpu  100 20 30 5000 40 6 4 7 50 0\ncpu0 50 10 15 2500 20 3 2 3 25 0\nintr 1 2 3\n";
        // user + nice + system + irq + softirq = 160 ticks.
        assert_eq!(parse_cpu_seconds(stat, 100), Some(1.6));
        assert_eq!(parse_cpu_seconds(stat, 0), None);
        // An old kernel's shorter line, another first line, garbage.
        assert_eq!(parse_cpu_seconds("cpu  1 2 3 4\n", 100), None);
        assert_eq!(parse_cpu_seconds("cpu0 1 2 3 4 5 6 7\n", 100), None);
        assert_eq!(parse_cpu_seconds("cpu  a b c d e f g\n", 100), None);
        assert_eq!(parse_cpu_seconds("", 100), None);
        assert!(clk_tck() > 0);
    }

    #[test]
    fn read_head_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "abcdef").unwrap();
        assert_eq!(read_head(&path, 3), "abc");
        assert_eq!(read(&path), "abcdef");
        assert_eq!(read(dir.path().join("none")), "");
    }
}
