//! The record a sandbox's shim leaves at `<state_dir>/shim/<sandbox>.json` while it runs
//! ([`SandboxRecord`]), and the small JSON helpers it is read and written with.
//!
//! The shim writes it when the pod VM is up; `containerd-shim-isola-v2 delete` cleans up after
//! a dead shim from it, and `isola ps` / `isola monitor` discover the node's sandboxes through
//! it ([`list`]). It lives here rather than in the shim so the CLI can read it without
//! depending on the shim.
//!
//! Processes are recorded as pid + start time ([`ProcId`]), so a pid reused by an unrelated
//! process after a reboot or a long time is never mistaken for ours.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Failure to read or write a record file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A file system operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The record could not be (de)serialized; `context` says which file.
    #[error("{context}: {source}")]
    Json {
        context: String,
        source: serde_json::Error,
    },
    /// The record's path has no parent directory.
    #[error("{0} has no parent")]
    NoParent(PathBuf),
}

/// A process identified by pid and start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    /// The process id.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: when it started, in clock ticks since boot.
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
///
/// Fields added after the first version carry `#[serde(default)]`, so records written by an
/// older shim still load (with those fields empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// The sandbox (pod) id.
    pub sandbox_id: String,
    /// The shim serving the sandbox.
    pub shim: Option<ProcId>,
    /// The VMM first, then its helper daemons.
    pub processes: Vec<ProcId>,
    /// The hypervisor's per-VM directory (sockets, logs).
    pub vm_dir: PathBuf,
    /// The directory shared with the guest.
    pub shared_dir: PathBuf,
    /// The VMM kind the VM runs on ("qemu", "cloud-hypervisor"); empty in older records.
    #[serde(default)]
    pub hypervisor: String,
    /// vCPUs the VM booted with (before any hotplug); 0 in older records.
    #[serde(default)]
    pub vcpus: u32,
    /// Memory the VM booted with, MiB (before any hotplug); 0 in older records.
    #[serde(default)]
    pub memory_mib: u64,
    /// Milliseconds from spawning the VMM to it running with its helpers.
    #[serde(default)]
    pub vmm_ready_ms: Option<u64>,
    /// Milliseconds from spawning the VMM to the agent answering.
    #[serde(default)]
    pub agent_ready_ms: Option<u64>,
    /// When the sandbox was created, seconds since the Unix epoch; 0 in older records.
    #[serde(default)]
    pub created_unix: u64,
    /// Whether the VM booted with the debug console (`[agent] debug_console = true`); false in
    /// older records.
    #[serde(default)]
    pub debug_console: bool,
    /// The hybrid vsock Unix socket of the VM (vhost-user vsock, Cloud Hypervisor); None with
    /// kernel vsock and in older records.
    #[serde(default)]
    pub vsock_socket: Option<PathBuf>,
    /// The guest's vsock context id with kernel vsock; None with hybrid vsock and in older
    /// records.
    #[serde(default)]
    pub vsock_cid: Option<u32>,
}

impl SandboxRecord {
    /// The directory of the records under the runtime state directory.
    pub fn dir(state_dir: &Path) -> PathBuf {
        state_dir.join("shim")
    }

    /// Where the record of sandbox `id` lives under the runtime state directory.
    pub fn path(state_dir: &Path, id: &str) -> PathBuf {
        SandboxRecord::dir(state_dir).join(format!("{id}.json"))
    }

    /// Writes the record atomically.
    pub fn save(&self, path: &Path) -> Result<(), RecordError> {
        write_json_atomic(path, self)
    }

    /// Reads a record.
    pub fn load(path: &Path) -> Result<SandboxRecord, RecordError> {
        read_json(path)
    }

    /// The VMM process (the first recorded one), if any.
    pub fn vmm(&self) -> Option<ProcId> {
        self.processes.first().copied()
    }
}

/// Largest record file [`list`] reads; a real one is well under a kilobyte.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// Every sandbox record under `state_dir`, sorted by sandbox id. A missing directory is no
/// sandbox; files that are not records (the `.tmp` of a write in progress, unreadable or
/// oversized ones) are skipped with a debug log.
pub fn list(state_dir: &Path) -> Result<Vec<SandboxRecord>, RecordError> {
    let dir = SandboxRecord::dir(state_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RecordError::Io {
                context: format!("listing {}", dir.display()),
                source,
            })
        }
    };
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension() != Some(std::ffi::OsStr::new("json")) {
            continue;
        }
        let small = entry
            .metadata()
            .is_ok_and(|m| m.is_file() && m.len() <= MAX_RECORD_BYTES);
        if !small {
            tracing::debug!(path = %path.display(), "skipping a record that is no small file");
            continue;
        }
        match SandboxRecord::load(&path) {
            Ok(r) => records.push(r),
            Err(e) => tracing::debug!(error = %e, "skipping an unreadable sandbox record"),
        }
    }
    records.sort_by(|a, b| a.sandbox_id.cmp(&b.sandbox_id));
    Ok(records)
}

/// Writes `value` as pretty JSON to `path` atomically (a temporary file renamed over it),
/// creating the parent directory.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), RecordError> {
    let dir = path
        .parent()
        .ok_or_else(|| RecordError::NoParent(path.to_path_buf()))?;
    std::fs::create_dir_all(dir).map_err(|source| RecordError::Io {
        context: format!("creating {}", dir.display()),
        source,
    })?;
    let json = serde_json::to_vec_pretty(value).map_err(|source| RecordError::Json {
        context: format!("serializing {}", path.display()),
        source,
    })?;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| RecordError::Io {
        context: format!("writing {}", path.display()),
        source,
    })
}

/// Reads the JSON file `path` as a `T`.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, RecordError> {
    let bytes = std::fs::read(path).map_err(|source| RecordError::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| RecordError::Json {
        context: format!("parsing {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_record_loads_with_the_new_fields_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = SandboxRecord::path(dir.path(), "old");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            r#"{"sandbox_id":"old","shim":null,"processes":[{"pid":7,"start_time":9}],
                "vm_dir":"/v","shared_dir":"/s"}"#,
        )
        .unwrap();
        let rec = SandboxRecord::load(&path).unwrap();
        assert_eq!(
            rec.vmm(),
            Some(ProcId {
                pid: 7,
                start_time: 9
            })
        );
        assert_eq!(rec.hypervisor, "");
        assert_eq!((rec.vcpus, rec.memory_mib, rec.created_unix), (0, 0, 0));
        assert_eq!((rec.vmm_ready_ms, rec.agent_ready_ms), (None, None));
        assert!(!rec.debug_console);
        assert_eq!((rec.vsock_socket, rec.vsock_cid), (None, None));
    }

    #[test]
    fn the_debug_console_flag_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = SandboxRecord::path(dir.path(), "d");
        let rec = SandboxRecord {
            sandbox_id: "d".into(),
            debug_console: true,
            vsock_cid: Some(42),
            ..Default::default()
        };
        rec.save(&path).unwrap();
        assert_eq!(SandboxRecord::load(&path).unwrap(), rec);
    }

    #[test]
    fn list_reads_the_records_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list(dir.path()).unwrap().is_empty());
        for id in ["b", "a"] {
            let rec = SandboxRecord {
                sandbox_id: id.into(),
                hypervisor: "qemu".into(),
                vcpus: 2,
                ..Default::default()
            };
            rec.save(&SandboxRecord::path(dir.path(), id)).unwrap();
        }
        let shim_dir = SandboxRecord::dir(dir.path());
        std::fs::write(shim_dir.join("c.tmp"), "{").unwrap();
        std::fs::write(shim_dir.join("d.json"), "not json").unwrap();
        std::fs::create_dir(shim_dir.join("e.json")).unwrap();
        let ids: Vec<_> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|r| r.sandbox_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }
}
