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

/// Memory that `pids` hold in memfds which none of them maps, KiB: allocated pages of every
/// memfd one of them has open, less the PSS of every mapping of it in any of them.
///
/// PSS counts mapped pages only. A VM template's clone gets its guest RAM as a memfd filled
/// with write(2) (hypervisor/src/qemu/clone.rs, `copy_ram`), so the pages its guest has not
/// touched since the restore are allocated for the pod but in no process's PSS. `pids` must be
/// every process that maps those memfds (a pod's shim and all its descendants): the PSS of a
/// page mapped by several of them adds up to the page once.
pub fn unmapped_memfd_kib(pids: &[u32]) -> u64 {
    let mut allocated: HashMap<u64, u64> = HashMap::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let is_memfd = std::fs::read_link(fd.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:"));
            if !is_memfd {
                continue;
            }
            if let Ok(meta) = std::fs::metadata(fd.path()) {
                use std::os::unix::fs::MetadataExt;
                allocated.insert(meta.ino(), meta.blocks() * 512 / 1024);
            }
        }
    }
    let mut mapped: HashMap<u64, u64> = HashMap::new();
    for pid in pids {
        if let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) {
            for (ino, kib) in memfd_pss(&smaps, &allocated) {
                *mapped.entry(ino).or_default() += kib;
            }
        }
    }
    allocated
        .iter()
        .map(|(ino, kib)| kib.saturating_sub(mapped.get(ino).copied().unwrap_or(0)))
        .sum()
}

/// The `Pss:` of each mapping in `smaps` whose inode is a key of `files`, as (inode, KiB).
fn memfd_pss(smaps: &str, files: &HashMap<u64, u64>) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    let mut current = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if !first.ends_with(':') {
            // A mapping's header: range, perms, offset, device, inode, path.
            current = words
                .nth(3)
                .and_then(|i| i.parse::<u64>().ok())
                .filter(|i| files.contains_key(i));
        } else if first == "Pss:" {
            if let (Some(ino), Some(kib)) = (current, words.next().and_then(|k| k.parse().ok())) {
                found.push((ino, kib));
            }
        }
    }
    found
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
        use std::os::fd::AsRawFd;
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
        // SAFETY: a fresh shared mapping of 256 KiB of the memfd, unmapped below; nothing
        // else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                256 * 1024,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let unmapped = unmapped_memfd_kib(&[me]) - before;
        // SAFETY: `p` is the 256 KiB mapping made above.
        unsafe { libc::munmap(p, 256 * 1024) };
        assert_eq!(
            unmapped, 768,
            "a quarter is mapped (and in this process's PSS)"
        );
    }

    #[test]
    fn memfd_mappings_are_found_in_smaps() {
        let smaps = "7f00-7f10 rw-s 00000000 00:01 42    /memfd:x (deleted)\nSize: 64 kB\nPss:  16 kB\nVmFlags: rd wr sh\n\
                     7f10-7f20 rw-p 00000000 00:00 0 \nPss:  99 kB\n\
                     7f20-7f30 rw-s 00000000 00:01 42    /memfd:x (deleted)\nPss:  8 kB\n";
        let files = HashMap::from([(42, 100)]);
        assert_eq!(memfd_pss(smaps, &files), vec![(42, 16), (42, 8)]);
    }
}
