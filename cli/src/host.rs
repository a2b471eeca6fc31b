//! Host facts for `isola check`: tool versions, files, cgroups.

use std::path::Path;

use tokio::process::Command;

/// First line of `<bin> --version`, or an error message.
pub async fn version_of(bin: &Path) -> Result<String, String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed ({})",
            bin.display(),
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// Parses "QEMU emulator version 7.2.19 (Debian ...)" into (major, minor).
pub fn qemu_version(line: &str) -> Option<(u32, u32)> {
    let rest = line.split("version ").nth(1)?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Oldest QEMU known to work (vhost-user-vsock-pci, memory-backend-memfd, qboot).
pub const MIN_QEMU: (u32, u32) = (7, 2);

/// A regular file that exists: its size, or why not.
pub fn file_size(path: &Path) -> Result<u64, String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(m.len()),
        Ok(_) => Err(format!("{} is not a regular file", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// How the host's cgroups are mounted, from /proc/self/mountinfo-style fstype facts.
#[derive(Debug, PartialEq, Eq)]
pub enum CgroupMode {
    /// cgroup2 at /sys/fs/cgroup.
    Unified,
    /// cgroup v1 controllers, cgroup2 at /sys/fs/cgroup/unified.
    Hybrid,
    /// cgroup v1 only.
    Legacy,
}

/// Decides the cgroup mode from `/proc/mounts` text.
pub fn cgroup_mode(mounts: &str) -> CgroupMode {
    let mut v2_root = false;
    let mut v2_unified = false;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (_, target, fstype) = (f.next(), f.next(), f.next());
        if fstype == Some("cgroup2") {
            match target {
                Some("/sys/fs/cgroup") => v2_root = true,
                Some("/sys/fs/cgroup/unified") => v2_unified = true,
                _ => {}
            }
        }
    }
    if v2_root {
        CgroupMode::Unified
    } else if v2_unified {
        CgroupMode::Hybrid
    } else {
        CgroupMode::Legacy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_versions() {
        assert_eq!(
            qemu_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)"),
            Some((7, 2))
        );
        assert_eq!(qemu_version("QEMU emulator version 10.0.2"), Some((10, 0)));
        assert_eq!(qemu_version("something else"), None);
    }

    #[test]
    fn detects_cgroup_modes() {
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        let legacy = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n";
        assert_eq!(cgroup_mode(unified), CgroupMode::Unified);
        assert_eq!(cgroup_mode(hybrid), CgroupMode::Hybrid);
        assert_eq!(cgroup_mode(legacy), CgroupMode::Legacy);
    }
}
