//! Reading the mount table (`/proc/self/mountinfo`) to find what is mounted under a directory.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Undoes the octal escapes (`\040` for a space, ...) the kernel writes into mount points.
pub fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Mount points listed in `mountinfo` text that are `dir` itself or below it, deepest first
/// (and, for the same depth, the most recent mount first), so they can be unmounted in order.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(usize, usize, PathBuf)> = mountinfo
        .lines()
        .enumerate()
        .filter_map(|(line_no, line)| {
            let mount_point = unescape(line.split(' ').nth(4)?);
            mount_point
                .starts_with(dir)
                .then(|| (mount_point.components().count(), line_no, mount_point))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    found.into_iter().map(|(_, _, p)| p).collect()
}

/// [`mounts_under`] for the calling process's mount table.
pub fn current_mounts_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mounts_under(&text, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
42 27 254:0 /run/isola/shared/sb /run/isola/shared/sb rw,relatime shared:1 - ext4 /dev/vda rw
47 42 0:40 / /run/isola/shared/sb/c1/rootfs rw,relatime shared:2 - overlay overlay rw
48 42 0:41 / /run/isola/shared/sb/c1/mounts/0 rw,relatime shared:3 - tmpfs tmpfs rw
49 47 0:42 / /run/isola/shared/sb/c1/rootfs/proc rw - proc proc rw
50 42 0:43 / /run/isola/shared/sb/c\\0402/rootfs rw - tmpfs tmpfs rw
51 27 0:44 / /run/isola/shared/sb2 rw - tmpfs tmpfs rw
";

    #[test]
    fn escapes_are_decoded() {
        assert_eq!(unescape("/a\\040b\\011c\\134d"), Path::new("/a b\tc\\d"));
        assert_eq!(unescape("/plain"), Path::new("/plain"));
        assert_eq!(unescape("/trailing\\04"), Path::new("/trailing\\04"));
        assert_eq!(unescape("/bad\\999"), Path::new("/bad\\999"));
    }

    #[test]
    fn deepest_first_and_only_below_the_directory() {
        let got = mounts_under(SAMPLE, Path::new("/run/isola/shared/sb"));
        assert_eq!(
            got,
            [
                Path::new("/run/isola/shared/sb/c1/rootfs/proc"),
                Path::new("/run/isola/shared/sb/c1/mounts/0"),
                Path::new("/run/isola/shared/sb/c 2/rootfs"),
                Path::new("/run/isola/shared/sb/c1/rootfs"),
                Path::new("/run/isola/shared/sb"),
            ]
        );
        // A sibling whose name merely starts with the same characters is not below.
        assert!(!got.contains(&PathBuf::from("/run/isola/shared/sb2")));
        let one = mounts_under(SAMPLE, Path::new("/run/isola/shared/sb/c1"));
        assert_eq!(one.len(), 3);
    }

    #[test]
    fn stacked_mounts_come_out_most_recent_first() {
        let text = "1 0 0:1 / /x rw - tmpfs a rw\n2 1 0:2 / /x rw - tmpfs b rw\n";
        // Same path twice: both are listed, so the caller unmounts twice.
        assert_eq!(mounts_under(text, Path::new("/x")).len(), 2);
    }

    #[test]
    fn the_live_table_parses() {
        let got = current_mounts_under(Path::new("/")).unwrap();
        assert!(got.iter().any(|p| p == Path::new("/")));
    }
}
