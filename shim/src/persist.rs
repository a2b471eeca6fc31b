//! Small state files that let `containerd-shim-isola-v2 delete` clean up after a shim that died:
//!
//! - `<state_dir>/shim/<sandbox>.json` ([`SandboxRecord`]): the shim's and the VM's processes
//!   and the sandbox's directories;
//! - `<bundle>/isola.json` ([`BundleRecord`]): which sandbox a container belongs to and where
//!   that sandbox's record is (the `delete` action gets no runtime options, so it cannot find
//!   the state directory otherwise).
//!
//! Processes are recorded as pid + start time, so a pid reused by an unrelated process after a
//! reboot or a long time is never mistaken for ours.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, ShimError};

/// The file in a container's bundle naming its sandbox.
pub const BUNDLE_RECORD: &str = "isola.json";

/// A process identified by pid and start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcId {
    /// The identity of a running process, or None when it does not exist.
    pub fn of(pid: u32) -> Option<ProcId> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(ProcId {
            pid,
            start_time: start_time_from_stat(&stat)?,
        })
    }

    /// This process.
    pub fn current() -> Option<ProcId> {
        ProcId::of(std::process::id())
    }

    /// Whether the very process recorded still runs (same pid, same start time).
    pub fn alive(&self) -> bool {
        ProcId::of(self.pid).is_some_and(|now| now == *self)
    }
}

/// Field 22 of /proc/<pid>/stat. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the last ')'.
pub fn start_time_from_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // A zombie (or dying) process is as good as gone.
    if matches!(rest.split_whitespace().next(), Some("Z" | "X" | "x")) {
        return None;
    }
    // After ')' comes field 3 (state); field 22 is the 20th from there.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// What a sandbox's shim leaves on disk while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub sandbox_id: String,
    /// The shim serving the sandbox.
    pub shim: Option<ProcId>,
    /// The VMM and its helper daemons.
    pub processes: Vec<ProcId>,
    /// The hypervisor's per-VM directory (sockets, logs).
    pub vm_dir: PathBuf,
    /// The directory shared with the guest.
    pub shared_dir: PathBuf,
}

impl SandboxRecord {
    /// Where the record of sandbox `id` lives under the runtime state directory.
    pub fn path(state_dir: &Path, id: &str) -> PathBuf {
        state_dir.join("shim").join(format!("{id}.json"))
    }

    /// Writes the record atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_json_atomic(path, self)
    }

    /// Reads a record.
    pub fn load(path: &Path) -> Result<SandboxRecord> {
        read_json(path)
    }
}

/// The link from a container's bundle to its sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    pub container_id: String,
    pub sandbox_id: String,
    /// The [`SandboxRecord`] file.
    pub sandbox_record: PathBuf,
}

impl BundleRecord {
    /// Writes the record into `bundle`.
    pub fn save(&self, bundle: &Path) -> Result<()> {
        write_json_atomic(&bundle.join(BUNDLE_RECORD), self)
    }

    /// Reads the record of `bundle`.
    pub fn load(bundle: &Path) -> Result<BundleRecord> {
        read_json(&bundle.join(BUNDLE_RECORD))
    }
}

fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| ShimError::Internal(format!("{} has no parent", path.display())))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| ShimError::io(format!("creating {}", dir.display()), e))?;
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| ShimError::Internal(format!("serializing {}: {e}", path.display())))?;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| ShimError::io(format!("writing {}", path.display()), e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes =
        std::fs::read(path).map_err(|e| ShimError::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ShimError::Internal(format!("parsing {}: {e}", path.display())))
}

/// Removes a file, ignoring that it is already gone.
pub fn remove_file_quietly(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a state file")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat =
            "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time_from_stat(stat), Some(987654));
        assert_eq!(start_time_from_stat("garbage"), None);
        assert_eq!(start_time_from_stat("1 (x) S 1 2"), None);
        let zombie = stat.replace(") S ", ") Z ");
        assert_eq!(start_time_from_stat(&zombie), None);
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcId::current().expect("/proc is mounted");
        assert!(me.alive());
        let other = ProcId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.alive());
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let rec = SandboxRecord {
            sandbox_id: "sb".into(),
            shim: ProcId::current(),
            processes: vec![ProcId {
                pid: 1,
                start_time: 2,
            }],
            vm_dir: "/run/isola/vm/sb".into(),
            shared_dir: "/run/isola/shared/sb".into(),
        };
        let path = SandboxRecord::path(dir.path(), "sb");
        rec.save(&path).unwrap();
        assert_eq!(SandboxRecord::load(&path).unwrap(), rec);
        let b = BundleRecord {
            container_id: "c".into(),
            sandbox_id: "sb".into(),
            sandbox_record: path,
        };
        b.save(dir.path()).unwrap();
        assert_eq!(BundleRecord::load(dir.path()).unwrap(), b);
        assert!(BundleRecord::load(&dir.path().join("none")).is_err());
    }
}
