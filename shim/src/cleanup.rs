//! The `delete` action: containerd's cleanup after a shim that died. Best effort, from the
//! records on disk ([`crate::persist`]): if the sandbox's shim is gone, its VM processes are
//! killed, the shared directory unmounted and removed, the VM directory removed; then the
//! records. containerd gets a DeleteResponse with exit status 137 (SIGKILL), as from runc's
//! shim.

use std::path::Path;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::shim::shim::DeleteResponse;
use isola_sandbox::shim_metrics::ShimMetrics;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use protobuf::well_known_types::timestamp::Timestamp;

use crate::mounts::SharedDir;
use crate::persist::{self, BundleRecord, ProcId, SandboxRecord};

/// The exit status reported for a container whose shim died.
pub const DEAD_SHIM_STATUS: u32 = 137;

/// Cleans up after container `id` of `bundle` and returns the response for containerd.
pub fn delete(bundle: &Path, id: &str) -> DeleteResponse {
    match BundleRecord::load(bundle) {
        Ok(record) => cleanup(&record),
        Err(e) => {
            tracing::info!(container_id = id, error = %e, "no isola record in the bundle: nothing to clean up")
        }
    }
    remove_dead_socket(bundle);
    DeleteResponse {
        pid: 0,
        exit_status: DEAD_SHIM_STATUS,
        exited_at: Some(Timestamp::from(SystemTime::now())).into(),
        ..Default::default()
    }
}

fn cleanup(record: &BundleRecord) {
    let cid = record.container_id.as_str();
    let sandbox = match SandboxRecord::load(&record.sandbox_record) {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(container_id = cid, error = %e, "the sandbox was already cleaned up");
            persist::remove_file_quietly(&record.sandbox_record.with_extension("json"));
            remove_metrics_snapshot(&record.sandbox_record);
            return;
        }
    };
    let shared = SharedDir::new(&sandbox.shared_dir);
    let me = std::process::id();
    if sandbox.shim.is_some_and(|p| p.pid != me && p.alive()) {
        // The sandbox's shim still runs: only this container's files.
        tracing::warn!(container_id = cid, sandbox_id = %sandbox.sandbox_id, "the sandbox's shim is alive; removing only this container's shared files");
        if let Err(e) = shared.unshare_container(cid) {
            tracing::warn!(container_id = cid, error = %e, "removing the container's shared files");
        }
        return;
    }
    tracing::info!(sandbox_id = %sandbox.sandbox_id, "cleaning up after a dead shim");
    kill_vm_processes(&sandbox);
    if let Err(e) = shared.teardown() {
        tracing::warn!(dir = %sandbox.shared_dir.display(), error = %e, "removing the shared directory");
    }
    remove_vm_dir(&sandbox.vm_dir);
    remove_metrics_snapshot(&record.sandbox_record);
    persist::remove_file_quietly(&record.sandbox_record);
}

/// Removes the metrics snapshot that goes with the sandbox record `record`.
fn remove_metrics_snapshot(record: &Path) {
    if let Some(snapshot) = ShimMetrics::path_for_record(record) {
        ShimMetrics::remove(&snapshot);
    }
}

/// Removes the socket of the shim named by `<bundle>/address` if nothing answers on it any more
/// (a shim that was killed cannot remove it itself).
fn remove_dead_socket(bundle: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let address = address.trim();
    let path = Path::new(address.strip_prefix("unix://").unwrap_or(address));
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket && !crate::start::answers(address) {
        tracing::info!(socket = %path.display(), "removing the socket of a dead shim");
        persist::remove_file_quietly(path);
    }
}

/// SIGKILLs the recorded VM processes still alive (same pid and start time), and any process
/// whose command line names the VM directory (helpers forked by recorded ones).
fn kill_vm_processes(sandbox: &SandboxRecord) {
    let needle = sandbox.vm_dir.to_string_lossy().into_owned();
    let mut victims: Vec<ProcId> = sandbox
        .processes
        .iter()
        .copied()
        .filter(ProcId::alive)
        .collect();
    if !needle.is_empty() {
        victims.extend(processes_mentioning(&needle));
    }
    victims.sort_by_key(|p| p.pid);
    victims.dedup();
    for p in &victims {
        tracing::info!(pid = p.pid, "killing a leftover VM process");
        let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while victims.iter().any(ProcId::alive) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes (other than this one) whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<ProcId> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    String::from_utf8_lossy(&raw)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .filter_map(ProcId::of)
        .collect()
}

/// Removes the VM directory: its files (sockets, logs) one level deep, then the directory.
fn remove_vm_dir(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let r = if is_dir {
            std::fs::remove_dir(entry.path())
        } else {
            std::fs::remove_file(entry.path())
        };
        if let Err(e) = r {
            tracing::warn!(path = %entry.path().display(), error = %e, "left behind");
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "left behind");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_shims_socket_is_removed_a_live_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::fs::write(
            dir.path().join("address"),
            format!("unix://{}", sock.display()),
        )
        .unwrap();
        delete(dir.path(), "c1");
        assert!(sock.exists(), "a live shim's socket stays");
        drop(listener);
        // Another test of this process forking a child at this very moment holds a copy of
        // the listener until the child execs (close-on-exec), and it would still answer: give
        // that window a moment to pass.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while sock.exists() && std::time::Instant::now() < deadline {
            delete(dir.path(), "c1");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!sock.exists(), "a dead shim's socket goes");
    }

    #[test]
    fn without_a_record_the_response_is_still_137() {
        let dir = tempfile::tempdir().unwrap();
        let resp = delete(dir.path(), "c1");
        assert_eq!(resp.exit_status, 137);
        assert!(resp.exited_at.is_some());
    }

    #[test]
    fn a_dead_shims_sandbox_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let vm_dir = tmp.path().join("vm/sb");
        std::fs::create_dir_all(&vm_dir).unwrap();
        std::fs::write(vm_dir.join("console.log"), "boot").unwrap();
        let shared = tmp.path().join("shared/sb");
        std::fs::create_dir_all(shared.join("c1/rootfs")).unwrap();
        // A process "of the VM": its command line names the VM directory.
        let mut child = std::process::Command::new("tail")
            .arg("-f")
            .arg(vm_dir.join("console.log"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let record_path = SandboxRecord::path(tmp.path(), "sb");
        SandboxRecord {
            sandbox_id: "sb".into(),
            // A shim that no longer exists.
            shim: Some(ProcId {
                pid: u32::MAX - 1,
                start_time: 1,
            }),
            processes: vec![],
            vm_dir: vm_dir.clone(),
            shared_dir: shared.clone(),
            ..Default::default()
        }
        .save(&record_path)
        .unwrap();
        let snapshot = ShimMetrics::path(tmp.path(), "sb");
        ShimMetrics::default().save(&snapshot).unwrap();
        let bundle = tmp.path().join("bundle");
        BundleRecord {
            container_id: "c1".into(),
            sandbox_id: "sb".into(),
            sandbox_record: record_path.clone(),
        }
        .save(&bundle)
        .unwrap();
        let resp = delete(&bundle, "c1");
        assert_eq!(resp.exit_status, 137);
        let status = child.wait().unwrap();
        assert!(!status.success(), "the VM process was killed");
        assert!(!vm_dir.exists());
        assert!(!shared.exists());
        assert!(!record_path.exists());
        assert!(
            !snapshot.exists(),
            "the metrics snapshot goes with the record"
        );
    }
}
