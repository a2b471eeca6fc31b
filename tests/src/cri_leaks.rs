//! What one pod can leave on the host, for [`crate::cri::CriEnv::assert_pod_gone`].
//!
//! After RemovePodSandbox nothing may be left of the pod: no process mentioning its id (the
//! shim, QEMU, virtiofsd, vhost-device-vsock: their command lines name the pod's state
//! directories), no entry named after it under isola's state directory (`vm/<id>`,
//! `shared/<id>`, records), no mount under the private containerd directory naming it, no mount
//! under isola's state directory at all once no pod runs, and no tap device in the host's
//! network namespace that was not there when the test started.
//!
//! Dropping a [`CriEnv`] stops and removes, through CRI, every pod a test left (a failed
//! assertion, an early return), so that CNI releases their network namespaces, veths and
//! addresses before the private containerd goes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{ListPodSandboxRequest, RemovePodSandboxRequest, StopPodSandboxRequest};

use crate::cri::{connect, CriEnv, CNI_SUBNET};

use crate::mounts::mounts_under;
use crate::processes_mentioning;

/// Processes (other than this one) whose command line mentions the pod `pod_id` (the shim's
/// `-id`, the state directories of its VM, whose name may be the id shortened): (pid, command
/// line).
pub fn pod_processes(pod_id: &str) -> Vec<(u32, String)> {
    let mut found = processes_mentioning(pod_id);
    let short = isola_sandbox::vm_dir_name(pod_id);
    if short != pod_id {
        for p in processes_mentioning(&short) {
            if !found.iter().any(|(pid, _)| *pid == p.0) {
                found.push(p);
            }
        }
    }
    found
}

/// Entries at most two levels below `state` whose name contains `pod_id` (or the shortened
/// name of its VM directory).
pub fn state_entries(state: &Path, pod_id: &str) -> Vec<String> {
    let short = isola_sandbox::vm_dir_name(pod_id);
    let names_pod = |name: &str| name.contains(pod_id) || name.contains(short.as_str());
    let mut found = Vec::new();
    let Ok(top) = std::fs::read_dir(state) else {
        return found;
    };
    for e in top.flatten() {
        let p = e.path();
        if names_pod(&e.file_name().to_string_lossy()) {
            found.push(p.display().to_string());
            continue;
        }
        if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        if let Ok(inner) = std::fs::read_dir(&p) {
            found.extend(
                inner
                    .flatten()
                    .filter(|i| names_pod(&i.file_name().to_string_lossy()))
                    .map(|i| i.path().display().to_string()),
            );
        }
    }
    found
}

/// Network interfaces of the host's (this process's) network namespace.
pub fn host_interfaces() -> BTreeSet<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Everything pod `pod_id` left behind, one line each (empty: nothing). `dir` is the private
/// containerd directory, `state` isola's state directory in it, `containerd` its pid, and
/// `interfaces_before` the host's interfaces before the test ran its pods.
pub fn pod_leftovers(
    dir: &Path,
    state: &Path,
    pod_id: &str,
    containerd: Option<u32>,
    interfaces_before: &BTreeSet<String>,
) -> Vec<String> {
    let mut left = Vec::new();
    for (pid, cmd) in pod_processes(pod_id) {
        if Some(pid) != containerd {
            left.push(format!("process {pid} ({}): {cmd}", crate::comm(pid)));
        }
    }
    for entry in state_entries(state, pod_id) {
        left.push(format!("state: {entry}"));
    }
    for m in mounts_under(dir) {
        if m.contains(pod_id) {
            left.push(format!("mount: {m}"));
        }
    }
    for iface in host_interfaces().difference(interfaces_before) {
        if iface.starts_with("tap") {
            left.push(format!("host interface {iface}"));
        }
    }
    left
}

impl Drop for CriEnv {
    /// Stops and removes every pod still there through CRI (so that CNI releases their network
    /// namespaces, veths and addresses), before the private containerd goes.
    fn drop(&mut self) {
        remove_all_pods_blocking(self.engine.socket());
    }
}

/// [`remove_all_pods`] from any context (also inside a test's runtime), reporting failures.
pub(crate) fn remove_all_pods_blocking(socket: PathBuf) {
    {
        // A thread of its own: this may run inside the test's runtime, which cannot block_on.
        let done = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("a runtime for the cleanup")?
                .block_on(remove_all_pods(socket))
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("removing the pods left at the end of the test: {e:#}"),
            Err(_) => eprintln!("removing the pods left at the end of the test panicked"),
        }
    }
}

/// StopPodSandbox + RemovePodSandbox for every pod (best effort, one minute each).
async fn remove_all_pods(socket: PathBuf) -> Result<()> {
    let mut client = RuntimeServiceClient::new(connect(socket).await?);
    let pods = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    for pod in pods {
        let id = pod.id;
        let each = async {
            client
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await?;
            client
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
        };
        match tokio::time::timeout(Duration::from_secs(60), each).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("removing pod {id}: {e}"),
            Err(_) => eprintln!("removing pod {id}: no answer within a minute"),
        }
    }
    Ok(())
}

/// Deletes the pod network namespaces of CRI tests that died without removing their pods: a
/// `/var/run/netns/cni-*` older than a minute whose `eth0` has an address in [`CNI_SUBNET`]
/// (only these tests use it) and that the metadata of no live private containerd names. Their
/// stale addresses would otherwise answer ARP for the next pods' on the shared bridge.
pub fn reap_stale_netns() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let live_dbs = live_metadata_dbs();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("cni-") {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(60))
            .unwrap_or(false);
        if !old || !in_test_subnet(&name) {
            continue;
        }
        let named = live_dbs.iter().any(|db| {
            std::fs::read(db)
                .map(|b| b.windows(name.len()).any(|w| w == name.as_bytes()))
                .unwrap_or(true)
        });
        if named {
            continue;
        }
        eprintln!("reaping the network namespace {name} (its test is gone)");
        let _ = Command::new("ip")
            .args(["netns", "delete", &name])
            .stdin(Stdio::null())
            .status();
    }
}

const NETNS_DIR: &str = "/var/run/netns";

/// The metadata databases of the private containerds that still exist.
fn live_metadata_dbs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ic."))
        .map(|e| e.path().join("root/io.containerd.metadata.v1.bolt/meta.db"))
        .filter(|p| p.exists())
        .collect()
}

/// Whether `eth0` in network namespace `name` has an address in the tests' subnet.
fn in_test_subnet(name: &str) -> bool {
    let prefix = CNI_SUBNET.trim_end_matches("0/24");
    Command::new("ip")
        .args(["-n", name, "-4", "-o", "addr", "show", "dev", "eth0"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("inet {prefix}")))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_entries_name_the_pods_directories_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("vm/abc123")).unwrap();
        std::fs::create_dir_all(d.path().join("shared/other")).unwrap();
        std::fs::write(d.path().join("abc123.json"), "{}").unwrap();
        let mut found = state_entries(d.path(), "abc123");
        found.sort();
        assert_eq!(
            found,
            vec![
                d.path().join("abc123.json").display().to_string(),
                d.path().join("vm/abc123").display().to_string(),
            ]
        );
        assert!(state_entries(d.path(), "zzz").is_empty());
        // A CRI-length id's VM directory is named short: still found.
        let long = "f".repeat(64);
        let short = isola_sandbox::vm_dir_name(&long);
        std::fs::create_dir_all(d.path().join("vm").join(&short)).unwrap();
        assert_eq!(
            state_entries(d.path(), &long),
            vec![d.path().join("vm").join(&short).display().to_string()]
        );
    }

    #[test]
    fn the_host_has_a_loopback_interface() {
        assert!(host_interfaces().contains("lo"));
    }
}
