//! Small state files that let `containerd-shim-isola-v2 delete` clean up after a shim that died:
//!
//! - `<state_dir>/shim/<sandbox>.json` ([`SandboxRecord`], defined in `isola_sandbox::record`
//!   so the CLI reads it too): the shim's and the VM's processes, the sandbox's directories,
//!   and what the VM booted with;
//! - `<bundle>/isola.json` ([`BundleRecord`]): which sandbox a container belongs to and where
//!   that sandbox's record is (the `delete` action gets no runtime options, so it cannot find
//!   the state directory otherwise).
//!
//! Processes are recorded as pid + start time, so a pid reused by an unrelated process after a
//! reboot or a long time is never mistaken for ours.

use std::path::{Path, PathBuf};

use isola_sandbox::record::{read_json, write_json_atomic, RecordError};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ShimError};

pub use isola_sandbox::record::{start_time_from_stat, ProcId, SandboxRecord};

/// The file in a container's bundle naming its sandbox.
pub const BUNDLE_RECORD: &str = "isola.json";

impl From<RecordError> for ShimError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Io { context, source } => ShimError::io(context, source),
            other => ShimError::Internal(other.to_string()),
        }
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
        Ok(write_json_atomic(&bundle.join(BUNDLE_RECORD), self)?)
    }

    /// Reads the record of `bundle`.
    pub fn load(bundle: &Path) -> Result<BundleRecord> {
        Ok(read_json(&bundle.join(BUNDLE_RECORD))?)
    }
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
            ..Default::default()
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
