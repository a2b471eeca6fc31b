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

pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
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
        assert_eq!(count_cpu_list(""), 0);
    }
}
