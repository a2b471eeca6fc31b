//! The metrics snapshot a sandbox's shim writes next to its record while the pod runs
//! ([`ShimMetrics`], at `<state_dir>/shim/metrics/<sandbox>.json`): the shim's counters of its
//! calls to the guest agent, hotplug events and failed watchdog checks, and the guest-wide
//! memory and CPU figures the agent last reported. `isola monitor` reads it on each scrape
//! ([`ShimMetrics::read`]); nothing talks to the shim.
//!
//! The snapshots live in a directory of their own under the records' one, so
//! [`crate::record::list`] never takes one for a record and no sandbox id can name a record
//! that collides with a snapshot.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::record::{write_json_atomic, RecordError, SandboxRecord};

/// How often a running pod's shim rewrites its snapshot (and asks the agent for the guest's
/// figures); it also writes one as soon as the VM is up.
pub const SNAPSHOT_PERIOD: Duration = Duration::from_secs(10);

/// Upper bounds (seconds) of the agent RPC latency histogram's buckets; a last bucket
/// (+Inf) takes the rest.
pub const RPC_DURATION_BOUNDS: [f64; 10] =
    [0.001, 0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0, 60.0];

/// Largest snapshot [`ShimMetrics::read`] accepts; a real one is a few kilobytes (the RPC
/// names, error codes and hotplug outcomes are fixed sets).
pub const MAX_SNAPSHOT_BYTES: u64 = 256 * 1024;

/// What a shim knows of its pod beyond the host's /proc. Figures the shim does not know are
/// None (an older agent reports no available memory or CPU time).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShimMetrics {
    /// The sandbox (pod) id.
    pub sandbox_id: String,
    /// When the shim wrote it, seconds since the Unix epoch.
    pub written_unix: u64,
    /// The guest's own view, from the agent's GetGuestDetails.
    #[serde(default)]
    pub guest: GuestFigures,
    /// Agent RPCs by name (`CreateContainer`, `Check`, ...).
    #[serde(default)]
    pub rpcs: BTreeMap<String, RpcFigures>,
    /// Hotplug events by resource and outcome.
    #[serde(default)]
    pub hotplug: Vec<HotplugCount>,
    /// Health checks of the agent watchdog that got no answer.
    #[serde(default)]
    pub watchdog_failed_checks: u64,
    /// The VM's size now, hotplugged vCPUs and memory included (None from older shims).
    #[serde(default)]
    pub vm: Option<VmFigures>,
}

/// The VM's current size as its shim knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmFigures {
    /// vCPUs plugged.
    pub vcpus: u32,
    /// Memory plugged, MiB.
    pub memory_mib: u64,
}

/// Guest-wide figures as the agent last reported them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestFigures {
    /// MemTotal of the guest's /proc/meminfo, bytes (grows with memory hotplug).
    #[serde(default)]
    pub memory_total_bytes: Option<u64>,
    /// MemAvailable of the guest's /proc/meminfo, bytes.
    #[serde(default)]
    pub memory_available_bytes: Option<u64>,
    /// CPU time the guest's vCPUs spent busy since the guest booted, seconds, all vCPUs.
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
}

/// One agent RPC's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RpcFigures {
    /// Calls made (answered or not).
    pub calls: u64,
    /// Failed calls by status code name (`NOT_FOUND`, `DEADLINE_EXCEEDED`, ...).
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// How long the calls took; None for the long polls (WaitProcess, GetOOMEvent), whose
    /// duration is how long the guest had nothing to say.
    #[serde(default)]
    pub duration: Option<DurationHistogram>,
}

/// A latency histogram: `counts[i]` calls took at most `bounds[i]` seconds (and more than
/// `bounds[i-1]`); the last count, one more than there are bounds, took longer than them all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DurationHistogram {
    /// Buckets' upper bounds, seconds, increasing.
    pub bounds: Vec<f64>,
    /// Calls per bucket (not cumulative); `bounds.len() + 1` of them.
    pub counts: Vec<u64>,
    /// Total time of the calls, seconds.
    pub sum_seconds: f64,
}

impl DurationHistogram {
    /// An empty histogram with [`RPC_DURATION_BOUNDS`].
    pub fn new() -> DurationHistogram {
        DurationHistogram {
            bounds: RPC_DURATION_BOUNDS.to_vec(),
            counts: vec![0; RPC_DURATION_BOUNDS.len() + 1],
            sum_seconds: 0.0,
        }
    }

    /// Counts a call that took `seconds`.
    pub fn observe(&mut self, seconds: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum_seconds += seconds;
    }

    /// Whether it is well formed: finite increasing bounds, one count more than bounds.
    pub fn is_valid(&self) -> bool {
        self.counts.len() == self.bounds.len() + 1
            && self.bounds.iter().all(|b| b.is_finite())
            && self.bounds.windows(2).all(|w| w[0] < w[1])
            && self.sum_seconds.is_finite()
    }

    /// The calls counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// How many hotplug events of one kind happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotplugCount {
    /// `vcpus` or `memory`.
    pub resource: String,
    /// `grown`; `unsupported` (the hypervisor cannot grow the VM: the limit is applied inside
    /// it); `already_grown` (a concurrent Update grew it first); `failed`.
    pub outcome: String,
    /// Events.
    pub count: u64,
}

impl ShimMetrics {
    /// The directory of the snapshots under the runtime state directory.
    pub fn dir(state_dir: &Path) -> PathBuf {
        SandboxRecord::dir(state_dir).join("metrics")
    }

    /// Where the snapshot of sandbox `id` lives under the runtime state directory.
    pub fn path(state_dir: &Path, id: &str) -> PathBuf {
        ShimMetrics::dir(state_dir).join(format!("{id}.json"))
    }

    /// The snapshot that goes with the sandbox record at `record` (see [`SandboxRecord::path`]).
    pub fn path_for_record(record: &Path) -> Option<PathBuf> {
        Some(record.parent()?.join("metrics").join(record.file_name()?))
    }

    /// Removes the snapshot at `path`, and its directory once no other shim's snapshot is in it
    /// (a pod's deletion leaves nothing behind). Quiet: a snapshot already gone is fine, and a
    /// directory another shim is writing into stays.
    pub fn remove(path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "removing a metrics snapshot")
            }
        }
        if let Some(dir) = path.parent() {
            // ENOTEMPTY while other pods run: expected.
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Writes the snapshot atomically.
    pub fn save(&self, path: &Path) -> Result<(), RecordError> {
        write_json_atomic(path, self)
    }

    /// Reads a snapshot: None when it is absent, larger than [`MAX_SNAPSHOT_BYTES`] or not a
    /// snapshot (a debug log says why).
    pub fn read(path: &Path) -> Option<ShimMetrics> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "reading a metrics snapshot");
                return None;
            }
        };
        let mut bytes = Vec::new();
        if let Err(e) = file.take(MAX_SNAPSHOT_BYTES + 1).read_to_end(&mut bytes) {
            tracing::debug!(path = %path.display(), error = %e, "reading a metrics snapshot");
            return None;
        }
        if bytes.len() as u64 > MAX_SNAPSHOT_BYTES {
            tracing::debug!(path = %path.display(), "skipping an oversized metrics snapshot");
            return None;
        }
        match serde_json::from_slice(&bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "skipping a garbled metrics snapshot");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips_and_is_no_record() {
        let dir = tempfile::tempdir().unwrap();
        SandboxRecord {
            sandbox_id: "a".into(),
            ..Default::default()
        }
        .save(&SandboxRecord::path(dir.path(), "a"))
        .unwrap();
        let mut duration = DurationHistogram::new();
        duration.observe(0.002);
        duration.observe(100.0);
        let snap = ShimMetrics {
            sandbox_id: "a".into(),
            written_unix: 5,
            guest: GuestFigures {
                memory_total_bytes: Some(1 << 30),
                memory_available_bytes: None,
                cpu_seconds: Some(1.5),
            },
            rpcs: BTreeMap::from([(
                "Check".to_string(),
                RpcFigures {
                    calls: 2,
                    errors: BTreeMap::from([("UNAVAILABLE".to_string(), 1)]),
                    duration: Some(duration),
                },
            )]),
            hotplug: vec![HotplugCount {
                resource: "vcpus".into(),
                outcome: "grown".into(),
                count: 1,
            }],
            watchdog_failed_checks: 1,
            vm: Some(VmFigures {
                vcpus: 2,
                memory_mib: 768,
            }),
        };
        let path = ShimMetrics::path(dir.path(), "a");
        assert_eq!(
            ShimMetrics::path_for_record(&SandboxRecord::path(dir.path(), "a")),
            Some(path.clone())
        );
        snap.save(&path).unwrap();
        assert_eq!(ShimMetrics::read(&path), Some(snap.clone()));
        let ids: Vec<_> = crate::record::list(dir.path())
            .unwrap()
            .into_iter()
            .map(|r| r.sandbox_id)
            .collect();
        assert_eq!(ids, ["a"], "the snapshot is no record");
        // Removing the last snapshot removes its directory too; another pod's keeps it.
        let other = ShimMetrics::path(dir.path(), "b");
        snap.save(&other).unwrap();
        ShimMetrics::remove(&path);
        assert!(!path.exists() && other.exists());
        ShimMetrics::remove(&other);
        assert!(!ShimMetrics::dir(dir.path()).exists());
        ShimMetrics::remove(&other);
    }

    #[test]
    fn absent_garbled_or_oversized_snapshots_read_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = ShimMetrics::path(dir.path(), "x");
        assert_eq!(ShimMetrics::read(&path), None);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(ShimMetrics::read(&path), None);
        let big = format!(
            r#"{{"sandbox_id":"{}","written_unix":1}}"#,
            "x".repeat(MAX_SNAPSHOT_BYTES as usize)
        );
        std::fs::write(&path, big).unwrap();
        assert_eq!(ShimMetrics::read(&path), None);
        // An older or newer writer: unknown fields ignored, missing ones empty.
        std::fs::write(&path, r#"{"sandbox_id":"x","written_unix":1,"later":true}"#).unwrap();
        let s = ShimMetrics::read(&path).unwrap();
        assert_eq!((s.sandbox_id.as_str(), s.rpcs.len()), ("x", 0));
    }

    #[test]
    fn the_histogram_buckets_by_upper_bound() {
        let mut h = DurationHistogram::new();
        assert!(h.is_valid());
        for s in [0.0005, 0.001, 0.0011, 61.0] {
            h.observe(s);
        }
        assert_eq!(&h.counts[..3], &[2, 1, 0]);
        assert_eq!(h.counts[RPC_DURATION_BOUNDS.len()], 1);
        assert_eq!(h.count(), 4);
        assert!((h.sum_seconds - 61.0026).abs() < 1e-9);
        h.counts.pop();
        assert!(!h.is_valid());
    }
}
