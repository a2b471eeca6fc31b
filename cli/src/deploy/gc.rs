//! Collecting old versions. A version is in use while a process of the host runs from it (its
//! `/proc/<pid>/exe` is under the version's directory: a shim exec'd through `current` shows the
//! resolved `versions/<id>/…` path, and keeps it after an upgrade) or names it on its command
//! line (the VMM's `-kernel`/`-initrd`, a shipped virtiofsd). Such a version stays; the others,
//! except the current one, go.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::layout::Layout;

/// A process of the host, as far as collecting versions cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// The `/proc/<pid>/exe` link's text (may end in " (deleted)").
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
}

/// The host's processes.
pub trait Processes {
    fn list(&self) -> Vec<Process>;
}

/// The host's `/proc`, reached under the host root (the DaemonSet's pod has hostPID, so its
/// own `/proc` would do too; `<host-root>/proc` also works on the node itself).
pub struct ProcFs {
    pub root: PathBuf,
}

impl Processes for ProcFs {
    fn list(&self) -> Vec<Process> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let dir = e.path();
                let exe = fs::read_link(dir.join("exe"))
                    .ok()
                    .map(|p| p.to_string_lossy().to_string());
                let cmdline = fs::read(dir.join("cmdline"))
                    .map(|b| {
                        b.split(|c| *c == 0)
                            .filter(|a| !a.is_empty())
                            .map(|a| String::from_utf8_lossy(a).to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                Some(Process { pid, exe, cmdline })
            })
            .collect()
    }
}

/// The pids of `procs` that use the directory `dir` (a host path).
pub fn users(procs: &[Process], dir: &Path) -> Vec<u32> {
    let under = format!("{}/", dir.display());
    let mut pids: Vec<u32> = procs
        .iter()
        .filter(|p| {
            p.exe.as_deref().is_some_and(|e| e.starts_with(&under))
                || p.cmdline.iter().any(|a| a.contains(&under))
        })
        .map(|p| p.pid)
        .collect();
    pids.sort_unstable();
    pids
}

/// What collecting decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub removed: Vec<String>,
    /// Versions kept because processes use them, with those pids.
    pub in_use: Vec<(String, Vec<u32>)>,
}

/// The installed versions (directory names under `versions/`, staging leftovers excluded).
pub fn installed(layout: &Layout) -> anyhow::Result<Vec<String>> {
    let dir = layout.local(&layout.versions());
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect();
    out.sort();
    Ok(out)
}

/// Pure: which of `versions` to remove and which to keep for their users.
pub fn plan(
    layout: &Layout,
    versions: &[String],
    current: Option<&str>,
    procs: &[Process],
) -> Collected {
    let mut c = Collected::default();
    for v in versions.iter().filter(|v| Some(v.as_str()) != current) {
        let pids = users(procs, &layout.version(v));
        if pids.is_empty() {
            c.removed.push(v.clone());
        } else {
            c.in_use.push((v.clone(), pids));
        }
    }
    c
}

/// Removes the versions no process uses, except `current`: each renamed aside first (so it
/// disappears at once), then deleted. Staging leftovers of dead installers go too.
pub fn collect(
    layout: &Layout,
    current: Option<&str>,
    procs: &dyn Processes,
) -> anyhow::Result<Collected> {
    let c = plan(layout, &installed(layout)?, current, &procs.list());
    let versions = layout.local(&layout.versions());
    for v in &c.removed {
        let dir = versions.join(v);
        let aside = versions.join(format!(".removing-{v}"));
        fs::rename(&dir, &aside).with_context(|| format!("moving {} aside", dir.display()))?;
        fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))?;
    }
    if let Ok(entries) = fs::read_dir(&versions) {
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().to_string();
            let ours = format!(".staging-{}", std::process::id());
            if name.starts_with(".removing-")
                || (name.starts_with(".staging-") && !name.contains(&ours))
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, exe: &str, cmdline: &[&str]) -> Process {
        Process {
            pid,
            exe: Some(exe.to_string()),
            cmdline: cmdline.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_version_is_used_by_its_shims_and_its_vmms() {
        let dir = Path::new("/opt/isola/versions/v1");
        let procs = [
            p(
                10,
                "/opt/isola/versions/v1/bin/containerd-shim-isola-v2 (deleted)",
                &[],
            ),
            p(
                11,
                "/usr/bin/qemu-system-x86_64",
                &[
                    "qemu",
                    "-kernel",
                    "/opt/isola/versions/v1/share/isola/vmlinux",
                ],
            ),
            p(
                12,
                "/opt/isola/versions/v10/bin/containerd-shim-isola-v2",
                &[],
            ),
            p(13, "/usr/bin/containerd", &["containerd"]),
        ];
        assert_eq!(users(&procs, dir), [10, 11]);
        assert!(users(&procs, Path::new("/opt/isola/versions/v2")).is_empty());
    }

    #[test]
    fn the_plan_keeps_current_and_used_versions() {
        let l = Layout::new(Path::new("/host"), Path::new("/opt/isola")).unwrap();
        let vs = ["v1".to_string(), "v2".to_string(), "v3".to_string()];
        let procs = [p(
            7,
            "/opt/isola/versions/v1/bin/containerd-shim-isola-v2",
            &[],
        )];
        let c = plan(&l, &vs, Some("v3"), &procs);
        assert_eq!(c.removed, ["v2"]);
        assert_eq!(c.in_use, [("v1".to_string(), vec![7])]);
    }

    #[test]
    fn collecting_reads_a_proc_tree_and_removes_what_is_unused() {
        let host = tempfile::tempdir().unwrap();
        let l = Layout::new(host.path(), Path::new("/opt/isola")).unwrap();
        for v in ["v1", "v2", "v3", ".staging-v9-1"] {
            fs::create_dir_all(host.path().join("opt/isola/versions").join(v).join("bin")).unwrap();
        }
        let proc_dir = host.path().join("proc/42");
        fs::create_dir_all(&proc_dir).unwrap();
        std::os::unix::fs::symlink(
            "/opt/isola/versions/v1/bin/containerd-shim-isola-v2",
            proc_dir.join("exe"),
        )
        .unwrap();
        fs::write(
            proc_dir.join("cmdline"),
            b"containerd-shim-isola-v2\0-id\0x\0",
        )
        .unwrap();
        let procs = ProcFs {
            root: host.path().join("proc"),
        };
        assert_eq!(
            procs.list()[0].cmdline,
            ["containerd-shim-isola-v2", "-id", "x"]
        );
        let c = collect(&l, Some("v3"), &procs).unwrap();
        assert_eq!(c.removed, ["v2"]);
        assert_eq!(installed(&l).unwrap(), ["v1", "v3"]);
        let left: Vec<_> = fs::read_dir(host.path().join("opt/isola/versions"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(!left.iter().any(|n| n.starts_with('.')), "{left:?}");
    }
}
