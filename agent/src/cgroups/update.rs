//! UpdateContainer: OCI `LinuxResources` applied to a container's cgroup v2.
//!
//! The writing is libcgroups' (the library libcontainer uses when it creates the cgroup), so an
//! update means what the same resources mean at creation and under runc: CPU shares become
//! `cpu.weight` by runc's mapping, quota/period `cpu.max`, `cpuset.cpus`/`cpuset.mems`, the
//! memory limit `memory.max`, the reservation `memory.low`, swap (OCI: memory+swap) becomes
//! `memory.swap.max` = swap - limit, the pids limit `pids.max`; io, hugetlb and `unified`
//! entries too. Only the fields present are written. Requests libcgroups would refuse are
//! caught first by [`check`], so that they answer INVALID_ARGUMENT rather than INTERNAL.

use std::path::Path;

use libcgroups::common::{CgroupManager, ControllerOpt};
use oci_spec::runtime::LinuxResources;

use crate::error::{AgentError, Result};

/// Parses `resources_json` (OCI LinuxResources).
pub fn parse(json: &[u8]) -> Result<LinuxResources> {
    serde_json::from_slice(json).map_err(|e| {
        AgentError::InvalidArgument(format!(
            "resources_json is not a valid OCI LinuxResources: {e}"
        ))
    })
}

/// The requests that cannot be applied to a cgroup v2, whatever the cgroup's state.
pub fn check(r: &LinuxResources) -> Result<()> {
    let invalid = |m: String| Err(AgentError::InvalidArgument(m));
    if let Some(m) = r.memory() {
        for (name, value) in [
            ("limit", m.limit()),
            ("reservation", m.reservation()),
            ("swap", m.swap()),
        ] {
            if let Some(v) = value.filter(|v| *v < -1) {
                return invalid(format!(
                    "memory.{name} {v} is not valid (a byte count, or -1 for no limit)"
                ));
            }
        }
        match (m.limit(), m.swap()) {
            (None, Some(_)) => {
                return invalid("memory.swap cannot be set without memory.limit".into())
            }
            (Some(limit), Some(swap)) if limit != -1 && swap != -1 && swap < limit => {
                return invalid(format!(
                    "memory.swap {swap} is smaller than memory.limit {limit} (swap counts memory plus swap)"
                ))
            }
            _ => {}
        }
    }
    if let Some(cpu) = r.cpu() {
        if cpu.realtime_runtime().is_some_and(|v| v > 0)
            || cpu.realtime_period().is_some_and(|v| v > 0)
        {
            return invalid(
                "cpu.realtimeRuntime/realtimePeriod are not supported on cgroup v2".into(),
            );
        }
    }
    if r.block_io()
        .as_ref()
        .is_some_and(|b| b.leaf_weight().is_some())
    {
        return invalid("blockIO.leafWeight is not supported on cgroup v2".into());
    }
    Ok(())
}

/// Applies `resources` to the cgroup `cgroup_path` (relative to the cgroup v2 mount `root`).
pub fn apply(root: &Path, cgroup_path: &Path, resources: &LinuxResources) -> Result<()> {
    check(resources)?;
    let dir = root.join(cgroup_path.strip_prefix("/").unwrap_or(cgroup_path));
    if !dir.is_dir() {
        return Err(AgentError::NotFound(format!(
            "cgroup {} does not exist",
            dir.display()
        )));
    }
    let manager =
        libcgroups::v2::manager::Manager::new(root.to_path_buf(), cgroup_path.to_path_buf())
            .map_err(|e| {
                AgentError::InvalidArgument(format!("cgroup path {}: {e}", cgroup_path.display()))
            })?;
    manager
        .apply(&ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| AgentError::Runtime(format!("updating cgroup {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttrpc::Code;

    fn resources(json: &str) -> LinuxResources {
        parse(json.as_bytes()).unwrap()
    }

    /// A fake cgroup v2 tree: the root's controllers and the files of one cgroup.
    fn fake_cgroup() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let c = d.path().join("isola/c1");
        std::fs::create_dir_all(&c).unwrap();
        // Empty files: unlike cgroupfs, a regular file keeps what a shorter write leaves.
        for f in [
            "cpu.weight",
            "cpu.max",
            "cpuset.cpus",
            "cpuset.mems",
            "memory.max",
            "memory.low",
            "memory.swap.max",
            "pids.max",
        ] {
            std::fs::write(c.join(f), "").unwrap();
        }
        d
    }

    fn file(d: &tempfile::TempDir, name: &str) -> String {
        std::fs::read_to_string(d.path().join("isola/c1").join(name)).unwrap()
    }

    #[test]
    fn writes_what_is_asked_with_runc_conversions() {
        let d = fake_cgroup();
        let r = resources(
            r#"{"cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
                "memory": {"limit": 67108864, "reservation": 33554432, "swap": 100663296},
                "pids": {"limit": 50}}"#,
        );
        apply(d.path(), Path::new("/isola/c1"), &r).unwrap();
        // runc's mapping keeps the defaults: 1024 shares are weight 100.
        assert_eq!(file(&d, "cpu.weight"), "100");
        assert_eq!(file(&d, "cpu.max"), "50000 100000");
        assert_eq!(file(&d, "cpuset.cpus"), "0");
        assert_eq!(file(&d, "cpuset.mems"), "0");
        assert_eq!(file(&d, "memory.max"), "67108864");
        assert_eq!(file(&d, "memory.low"), "33554432");
        // OCI swap is memory+swap; cgroup v2 limits swap alone.
        assert_eq!(file(&d, "memory.swap.max"), "33554432");
        assert_eq!(file(&d, "pids.max"), "50");

        // Only what is present is written; -1 is "no limit".
        let d = fake_cgroup();
        apply(
            d.path(),
            Path::new("isola/c1"),
            &resources(r#"{"memory": {"limit": -1}, "cpu": {"shares": 2}}"#),
        )
        .unwrap();
        assert_eq!(file(&d, "memory.max"), "max");
        assert_eq!(file(&d, "memory.swap.max"), "max");
        assert_eq!(file(&d, "cpu.weight"), "1");
        assert_eq!(file(&d, "pids.max"), "");
        assert_eq!(file(&d, "cpu.max"), "");
    }

    #[test]
    fn bad_requests_are_invalid_arguments() {
        let e = parse(b"{not json").unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        assert!(e.to_string().contains("LinuxResources"), "{e}");
        let d = fake_cgroup();
        for json in [
            r#"{"memory": {"limit": 100, "swap": 50}}"#,
            r#"{"memory": {"swap": 50}}"#,
            r#"{"memory": {"limit": -5}}"#,
            r#"{"cpu": {"realtimeRuntime": 10}}"#,
            r#"{"blockIO": {"leafWeight": 10}}"#,
        ] {
            let e = apply(d.path(), Path::new("isola/c1"), &resources(json)).unwrap_err();
            assert_eq!(e.code(), Code::INVALID_ARGUMENT, "{json}: {e}");
        }
        // Nothing was written.
        assert_eq!(file(&d, "memory.max"), "");
        let e = apply(d.path(), Path::new("isola/gone"), &resources("{}")).unwrap_err();
        assert_eq!(e.code(), Code::NOT_FOUND, "{e}");
    }
}
