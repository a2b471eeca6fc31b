//! Guest RAM that a pod holds in memfds but no process maps, which PSS does not show.
//!
//! PSS counts mapped pages only. A VM template's clone gets its guest RAM as a memfd filled
//! with write(2) (isola-hypervisor's `copy_ram`), so the pages its guest has not touched since
//! the restore are allocated for the pod but in no process's PSS. The pod's host footprint is
//! the PSS of its processes plus [`unmapped_kib_of`] them: the PSS of a page mapped by several
//! of the pod's processes adds up to the page once, so what is allocated less what they map
//! is what none of them maps.

use std::collections::HashMap;

/// Most descriptors of one process looked at.
const MAX_FDS: usize = 4096;

/// The memfds process `pid` has open, as inode → allocated KiB (empty when /proc/<pid>/fd
/// cannot be read).
pub fn host_memfds(pid: u32) -> HashMap<u64, u64> {
    use std::os::unix::fs::MetadataExt;
    let mut found = HashMap::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return found;
    };
    for fd in fds.flatten().take(MAX_FDS) {
        let is_memfd =
            std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:"));
        if !is_memfd {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(fd.path()) {
            found.insert(meta.ino(), meta.blocks() * 512 / 1024);
        }
    }
    found
}

/// KiB that processes `pids` (every process that maps them: a pod's VMM, helpers and shim)
/// hold in memfds none of them maps. `memfds` gives the memfds a process has open (inode →
/// allocated KiB, as [`host_memfds`]) and `smaps` its /proc/<pid>/smaps text.
pub fn unmapped_kib_of(
    pids: &[u32],
    memfds: impl Fn(u32) -> HashMap<u64, u64>,
    smaps: impl Fn(u32) -> Option<String>,
) -> u64 {
    let mut allocated = HashMap::new();
    for &pid in pids {
        allocated.extend(memfds(pid));
    }
    if allocated.is_empty() {
        return 0;
    }
    let mut mapped: HashMap<u64, u64> = HashMap::new();
    for &pid in pids {
        let Some(text) = smaps(pid) else { continue };
        for (ino, kib) in pss_by_inode(&text, &allocated) {
            *mapped.entry(ino).or_default() += kib;
        }
    }
    unmapped_kib(&allocated, &mapped)
}

/// [`unmapped_kib_of`] `pids` on this host's /proc.
pub fn host_unmapped_kib(pids: &[u32]) -> u64 {
    unmapped_kib_of(pids, host_memfds, |pid| {
        std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()
    })
}

/// The `Pss:` KiB of the mappings in `smaps` (a /proc/<pid>/smaps text) of each file whose
/// inode is a key of `files`, added up per inode.
fn pss_by_inode(smaps: &str, files: &HashMap<u64, u64>) -> HashMap<u64, u64> {
    let mut found: HashMap<u64, u64> = HashMap::new();
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
            if let (Some(ino), Some(kib)) =
                (current, words.next().and_then(|k| k.parse::<u64>().ok()))
            {
                *found.entry(ino).or_default() += kib;
            }
        }
    }
    found
}

/// KiB of `allocated` (inode → KiB) that `mapped` (inode → PSS KiB over every process that
/// maps it) does not cover.
fn unmapped_kib(allocated: &HashMap<u64, u64>, mapped: &HashMap<u64, u64>) -> u64 {
    allocated
        .iter()
        .map(|(ino, kib)| kib.saturating_sub(mapped.get(ino).copied().unwrap_or(0)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_of_the_files_are_added_up_per_inode() {
        let smaps = "7f00-7f10 rw-s 00000000 00:01 42    /memfd:x (deleted)\nSize: 64 kB\nPss:  16 kB\nVmFlags: rd wr sh\n\
                     7f10-7f20 rw-p 00000000 00:00 0 \nPss:  99 kB\n\
                     7f20-7f30 rw-s 00000000 00:01 42    /memfd:x (deleted)\nPss:  8 kB\n\
                     7f30-7f40 r--p 00000000 08:01 77    /usr/lib/libc.so.6\nPss:  5 kB\n";
        let files = HashMap::from([(42, 100)]);
        let mapped = pss_by_inode(smaps, &files);
        assert_eq!(mapped, HashMap::from([(42, 24)]));
        assert_eq!(unmapped_kib(&files, &mapped), 76);
        let more = HashMap::from([(42, 10), (43, 7)]);
        assert_eq!(unmapped_kib(&more, &mapped), 7, "never below zero");
        assert_eq!(pss_by_inode("garbage\nPss: x kB\n", &files), HashMap::new());
    }

    #[test]
    fn a_memfd_written_and_partly_mapped() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let me = std::process::id();
        let fd = nix::sys::memfd::memfd_create(c"memfd-test", nix::sys::memfd::MFdFlags::empty())
            .unwrap();
        let mut file = std::fs::File::from(fd);
        file.write_all(&vec![1u8; 1024 * 1024]).unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap());
        let open = host_memfds(me);
        assert_eq!(open.get(&ino), Some(&1024), "{open:?}");
        // SAFETY: a fresh shared read-only mapping of 256 KiB of the memfd, unmapped below;
        // nothing else refers to it.
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
        let smaps = std::fs::read_to_string(format!("/proc/{me}/smaps")).unwrap();
        // SAFETY: `p` is the 256 KiB mapping made above.
        unsafe { libc::munmap(p, 256 * 1024) };
        let only = HashMap::from([(ino, 1024)]);
        let mapped = pss_by_inode(&smaps, &only);
        assert_eq!(mapped.get(&ino), Some(&256));
        assert_eq!(unmapped_kib(&only, &mapped), 768);
        // The same through the whole walk: written, not mapped any more.
        let now = unmapped_kib_of(&[me], |_| only.clone(), |_| Some(smaps.clone()));
        assert_eq!(now, 768);
        assert!(
            host_unmapped_kib(&[me]) >= 1024,
            "no mapping left after munmap"
        );
    }
}
