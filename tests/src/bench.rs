//! What the bench binaries share: medians and lists of seconds, and the host memory of
//! process trees (PSS from /proc, MemAvailable).

use std::collections::HashMap;

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `v` as seconds with `digits` decimals, space-separated.
pub fn list(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|s| format!("{s:.digits$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The value of a `Name:  <n> kB` line (smaps_rollup, meminfo, status), in KiB.
pub fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The proportional set size of process `pid` (`Pss:` of /proc/<pid>/smaps_rollup), KiB;
/// None when it is gone or unreadable.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&text, "Pss:")
}

/// Memory that `pids` hold in memfds which none of them maps, KiB
/// ([`isola_sandbox::memfd::host_unmapped_kib`]): a template clone's RAM copy its guest has
/// not touched. `pids` must be every process that maps those memfds (a pod's shim and all its
/// descendants).
pub fn unmapped_memfd_kib(pids: &[u32]) -> u64 {
    isola_sandbox::memfd::host_unmapped_kib(pids)
}

/// The host's `MemAvailable` (/proc/meminfo), KiB.
pub fn mem_available_kib() -> Option<u64> {
    kib_field(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable:",
    )
}

/// The children of every process on the host, from one scan of /proc (the `PPid` of each
/// process: this kernel may lack /proc/<pid>/task/<tid>/children).
pub fn children_map() -> HashMap<u32, Vec<u32>> {
    let mut map: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return map;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let ppid = crate::parent_pid(pid);
        if ppid != 0 {
            map.entry(ppid).or_default().push(pid);
        }
    }
    map
}

/// `root` and all its descendants in `children` (see [`children_map`]), root first.
pub fn with_descendants(children: &HashMap<u32, Vec<u32>>, root: u32) -> Vec<u32> {
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        for &c in children
            .get(&found[i])
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if !found.contains(&c) {
                found.push(c);
            }
        }
        i += 1;
    }
    found
}

/// The name of process `pid`: the file name of its argv[0] (whole, where `comm` is cut at 15
/// bytes: "vhost-device-vsock"), else its `comm`.
pub fn process_name(pid: u32) -> String {
    let argv0 = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|raw| {
            let first = raw.split(|&b| b == 0).next()?;
            let s = String::from_utf8_lossy(first);
            let base = s.rsplit('/').next()?.to_string();
            (!base.is_empty()).then_some(base)
        });
    argv0.unwrap_or_else(|| crate::comm(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_lists() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
        assert_eq!(list(&[1.0, 0.25], 2), "1.00 0.25");
    }

    #[test]
    fn kib_fields_and_process_trees() {
        let rollup = "00400000-7ffd [rollup]\nRss:  2048 kB\nPss:   1024 kB\n";
        assert_eq!(kib_field(rollup, "Pss:"), Some(1024));
        assert_eq!(kib_field(rollup, "Swap:"), None);
        assert!(mem_available_kib().is_some_and(|k| k > 0));
        assert!(pss_kib(std::process::id()).is_some_and(|k| k > 0));
        let children = HashMap::from([(1, vec![2, 3]), (3, vec![4]), (9, vec![10])]);
        assert_eq!(with_descendants(&children, 1), vec![1, 2, 3, 4]);
        assert_eq!(with_descendants(&children, 4), vec![4]);
        assert!(with_descendants(&children_map(), 1).contains(&std::process::id()));
    }

    #[test]
    fn memfd_pages_no_process_maps_are_counted() {
        use std::io::Write;
        let me = std::process::id();
        let before = unmapped_memfd_kib(&[me]);
        let fd = nix::sys::memfd::memfd_create(c"bench-test", nix::sys::memfd::MFdFlags::empty())
            .unwrap();
        let mut file = std::fs::File::from(fd);
        file.write_all(&vec![1u8; 1024 * 1024]).unwrap();
        assert_eq!(
            unmapped_memfd_kib(&[me]) - before,
            1024,
            "written, not mapped"
        );
    }
}
