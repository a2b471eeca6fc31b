//! The guest's cgroup v2 hierarchy: controllers for containers, a container's processes and
//! signalling them; its statistics ([`stats`]), freezer ([`freezer`]) and resource updates
//! ([`update`]).

pub mod freezer;
pub mod stats;
pub mod update;

use std::path::{Component, Path, PathBuf};

use nix::unistd::Pid;

use crate::process::send_signal;

/// Where PID 1 mounts cgroup2.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Controllers containers need, enabled in the root's `cgroup.subtree_control` when the
/// kernel has them.
pub const WANTED_CONTROLLERS: &[&str] = &["cpuset", "cpu", "io", "memory", "pids", "hugetlb"];

/// The wanted controllers among those `cgroup.controllers` lists, in [`WANTED_CONTROLLERS`]
/// order.
pub fn wanted_controllers(available: &str) -> Vec<&'static str> {
    let available: Vec<&str> = available.split_whitespace().collect();
    WANTED_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| available.contains(c))
        .collect()
}

/// Enables the wanted controllers for the root's children. Returns the enabled ones; a
/// controller the kernel refuses is logged and skipped.
pub fn enable_controllers(root: &Path) -> std::io::Result<Vec<&'static str>> {
    let available = std::fs::read_to_string(root.join("cgroup.controllers"))?;
    let mut enabled = Vec::new();
    for c in wanted_controllers(&available) {
        match std::fs::write(root.join("cgroup.subtree_control"), format!("+{c}")) {
            Ok(()) => enabled.push(c),
            Err(e) => tracing::warn!(controller = c, error = %e, "cannot enable cgroup controller"),
        }
    }
    Ok(enabled)
}

/// The directory of cgroup `path` (as in an OCI `cgroupsPath`) under `root`, or `None` for a
/// path that would leave the hierarchy.
pub fn dir(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut dir = root.to_path_buf();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => dir.push(part),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(dir)
}

/// Parses `cgroup.procs`.
pub fn parse_procs(text: &str) -> Vec<Pid> {
    text.lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
        .map(Pid::from_raw)
        .collect()
}

/// Sends `signal` to every process in the cgroup at `dir` (and below). SIGKILL uses
/// `cgroup.kill` where the kernel has it (atomic, no pid races); other signals go to each pid
/// of `cgroup.procs` in the subtree. Returns how many processes were signalled (0 for
/// cgroup.kill, which does not say).
pub fn signal_all(dir: &Path, signal: i32) -> std::io::Result<usize> {
    if signal == libc::SIGKILL {
        let kill = dir.join("cgroup.kill");
        if kill.exists() {
            std::fs::write(kill, "1")?;
            return Ok(0);
        }
    }
    Ok(all_pids(dir)?
        .into_iter()
        .filter(|pid| send_signal(*pid, signal).is_ok())
        .count())
}

/// Every process in the cgroup at `dir` and below (`cgroup.procs` of each), parents first.
pub fn all_pids(dir: &Path) -> std::io::Result<Vec<Pid>> {
    let mut pids = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        pids.extend(parse_procs(&std::fs::read_to_string(
            d.join("cgroup.procs"),
        )?));
        for entry in std::fs::read_dir(&d)?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
    }
    Ok(pids)
}

/// Whether any process is left in the cgroup at `dir` (a missing cgroup has none).
pub fn is_populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_available_controllers_in_order() {
        assert_eq!(
            wanted_controllers("memory pids rdma cpu misc\n"),
            ["cpu", "memory", "pids"]
        );
        assert!(wanted_controllers("").is_empty());
    }

    #[test]
    fn cgroup_dirs_stay_inside_the_hierarchy() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(
            dir(root, Path::new("/isola/c1")).unwrap(),
            Path::new("/sys/fs/cgroup/isola/c1")
        );
        assert_eq!(
            dir(root, Path::new("kubepods/./c1")).unwrap(),
            Path::new("/sys/fs/cgroup/kubepods/c1")
        );
        assert!(dir(root, Path::new("/isola/../../etc")).is_none());
    }

    #[test]
    fn procs_and_events() {
        assert_eq!(
            parse_procs("12\n\n345\nbogus\n0\n"),
            [Pid::from_raw(12), Pid::from_raw(345)]
        );
        let d = tempfile::tempdir().unwrap();
        assert!(!is_populated(d.path()));
        std::fs::write(d.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert!(is_populated(d.path()));
        std::fs::write(d.path().join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        assert!(!is_populated(d.path()));
    }

    #[test]
    fn signal_all_walks_the_subtree() {
        // A fake hierarchy holding only pids that cannot exist: nothing is signalled, no error.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.procs"), "").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/cgroup.procs"), "2147483646\n").unwrap();
        assert_eq!(signal_all(d.path(), 0).unwrap(), 0);
        assert_eq!(all_pids(d.path()).unwrap(), [Pid::from_raw(2147483646)]);
        assert!(all_pids(&d.path().join("gone")).is_err());
    }
}
