//! Each node's install, computed without I/O from what the API server shows: the installer
//! DaemonSet, its pods and the nodes.
//!
//! A node is ready when its installer pod runs the spec's image and is Ready (the entrypoint's
//! readiness file: install, or cleanup, done) and the node's label says so: present after an
//! install (`isola.io/runtime=ready`, set by the pod itself), absent after a cleanup. Why one
//! fails comes from the pod's installer container: waiting (CrashLoopBackOff, an image pull)
//! with the last run's exit code and termination message (the manifest's
//! FallbackToLogsOnError turns a failed install's last log lines into that message), or
//! terminated with its message; or the pod's unschedulable reason.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Node, Pod};

use super::crd::NodeStatus;
use super::desired::{Mode, CONTAINER};
use crate::deploy::node::{LABEL, READY, VERSION};

/// Where the DaemonSet's rolling update stands (its status against its spec).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rollout {
    pub generation: i64,
    pub observed_generation: i64,
    pub desired: i32,
    pub updated: i32,
    pub ready: i32,
}

impl Rollout {
    pub fn of(ds: &DaemonSet) -> Rollout {
        let s = ds.status.clone().unwrap_or_default();
        Rollout {
            generation: ds.metadata.generation.unwrap_or(0),
            observed_generation: s.observed_generation.unwrap_or(-1),
            desired: s.desired_number_scheduled,
            updated: s.updated_number_scheduled.unwrap_or(0),
            ready: s.number_ready,
        }
    }

    /// Every pod the DaemonSet wants is of its current spec and Ready, as the DaemonSet
    /// controller last counted for that spec.
    pub fn complete(&self) -> bool {
        self.observed_generation == self.generation
            && self.updated == self.desired
            && self.ready == self.desired
    }
}

/// The nodes the installer runs or should run on (selected by `selector`, or with a pod of
/// `ds`), by name, with their state for `mode`.
pub fn nodes(
    image: &str,
    mode: Mode,
    selector: &BTreeMap<String, String>,
    ds: Option<&DaemonSet>,
    pods: &[Pod],
    nodes: &[Node],
) -> Vec<NodeStatus> {
    let uid = ds.and_then(|d| d.metadata.uid.as_deref());
    let ours: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            uid.is_some()
                && p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| Some(o.uid.as_str()) == uid)
        })
        .collect();
    let on = |node: &str| -> Option<&Pod> {
        // The newest pod there that is not terminating (an old one during an update).
        ours.iter()
            .copied()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .max_by_key(|p| {
                (
                    p.metadata.deletion_timestamp.is_none(),
                    p.metadata.creation_timestamp.clone().map(|t| t.0),
                )
            })
    };
    let mut out: Vec<NodeStatus> = nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let labels = n.metadata.labels.clone().unwrap_or_default();
            let selected = selector.iter().all(|(k, v)| labels.get(k) == Some(v));
            let pod = on(&name);
            if !selected && pod.is_none() {
                return None;
            }
            let labelled = labels.get(LABEL).map(String::as_str) == Some(READY);
            let image_there = pod.and_then(pod_image);
            let ready = pod.is_some_and(pod_ready)
                && image_there.as_deref() == Some(image)
                && labelled == (mode == Mode::Install);
            let version = n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(VERSION).cloned());
            Some(NodeStatus {
                name,
                ready,
                version,
                image: image_there,
                last_error: pod.and_then(last_error),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn pod_image(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == CONTAINER)?
        .image
        .clone()
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why the installer on this pod is failing; `None` while it runs (installing, or done).
fn last_error(p: &Pod) -> Option<String> {
    let status = p.status.as_ref()?;
    let unschedulable = || {
        let c = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
        Some(format!(
            "not scheduled ({}): {}",
            c.reason.as_deref().unwrap_or("Unschedulable"),
            c.message.as_deref().unwrap_or("")
        ))
    };
    let Some(cs) = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER)
    else {
        return unschedulable();
    };
    let state = cs.state.as_ref()?;
    if let Some(w) = &state.waiting {
        let reason = w.reason.as_deref().unwrap_or("Waiting");
        // A container's first start waits too; that is no error.
        if reason == "ContainerCreating" || reason == "PodInitializing" {
            return None;
        }
        let mut msg = reason.to_string();
        if let Some(m) = w.message.as_deref().filter(|m| !m.is_empty()) {
            msg.push_str(&format!(": {m}"));
        }
        if let Some(t) = cs.last_state.as_ref().and_then(|l| l.terminated.as_ref()) {
            msg.push_str(&format!("; the last run {}", terminated(t)));
        }
        return Some(msg);
    }
    match &state.terminated {
        Some(t) if t.exit_code != 0 => Some(format!("the installer {}", terminated(t))),
        _ => None,
    }
}

fn terminated(t: &ContainerStateTerminated) -> String {
    let mut s = format!("exited {}", t.exit_code);
    if let Some(r) = &t.reason {
        s.push_str(&format!(" ({r})"));
    }
    if let Some(m) = t
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        s.push_str(&format!(": {m}"));
    }
    s
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
