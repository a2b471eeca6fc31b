//! The controller: kube-rs's `Controller` on IsolaConfigs, woken by changes to them and to the
//! objects they own (the installer DaemonSet, the RuntimeClasses), and every 10 s while not
//! Ready (node labels and pods are not watched). What to do is decided by pure code
//! (`validate`, `desired`, `status`, `phase`, `conditions`); this file sequences the requests
//! (`requests`).
//!
//! The finalizer `isola.io/uninstall` is handled here, not with `kube::runtime::finalizer`:
//! that helper removes the finalizer as soon as its cleanup returns Ok, and the cleanup here
//! must wait, over many reconciles, for every node's cleanup pod. Making it wait would mean
//! returning errors for a normal state (error lines, error backoff); instead the finalizer is
//! added and removed here (`Cluster::patch_finalizers`, guarded by the resourceVersion).
//!
//! Deletion: (a) the config's RuntimeClasses deleted (no new isola pods), (b) the DaemonSet
//! applied in cleanup mode, without its owner reference (`desired::daemonset`), (c) status Ready=False Uninstalling until its rollout is complete
//! (every node's cleanup pod Ready), (d) the DaemonSet deleted, (e) the finalizer removed.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::chrono::{SecondsFormat, Utc};
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Client, Resource, ResourceExt};
use tracing::Instrument;

use super::conditions::{conditions, Inputs};
use super::crd::{IsolaConfig, IsolaConfigStatus, NodeStatus, NAME};
use super::desired::{self, Mode, MANAGED_BY};
use super::error::Error;
use super::phase::{decide, Facts, Installer, Phase};
use super::requests::Cluster;
use super::{status, validate};

/// Held on the IsolaConfig until every node is uninstalled.
pub const FINALIZER: &str = "isola.io/uninstall";
/// How long after a failed reconcile it is tried again.
const RETRY: Duration = Duration::from_secs(15);

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(client: Client, namespace: String) -> Result<(), Error> {
    let configs: Api<IsolaConfig> = Api::all(client.clone());
    // Fails at once, with what to do, rather than as watch errors forever.
    configs
        .list(&ListParams::default().limit(1))
        .await
        .map_err(Error::kube(
            "listing IsolaConfigs (is deploy/isola-operator-crd.yaml applied, and \
             deploy/isola-operator.yaml's RBAC?)",
        ))?;
    let managed = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    tracing::info!(namespace = %namespace, "isola operator started");
    let daemonsets = Api::<DaemonSet>::namespaced(client.clone(), &namespace);
    let runtime_classes = Api::<RuntimeClass>::all(client.clone());
    Controller::new(configs, watcher::Config::default())
        .owns(daemonsets, managed.clone())
        .owns(runtime_classes, managed)
        .shutdown_on_signal()
        .run(
            reconcile,
            error_policy,
            Arc::new(Cluster::new(client, namespace)),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller");
            }
        })
        .await;
    tracing::info!("isola operator stopped");
    Ok(())
}

fn error_policy(cfg: Arc<IsolaConfig>, e: &Error, _: Arc<Cluster>) -> Action {
    tracing::error!(isolaconfig = %cfg.name_any(), error = %e, "reconcile failed; again in {RETRY:?}");
    Action::requeue(RETRY)
}

async fn reconcile(cfg: Arc<IsolaConfig>, cluster: Arc<Cluster>) -> Result<Action, Error> {
    let span = tracing::info_span!("reconcile", isolaconfig = %cfg.name_any());
    reconcile_one(&cfg, &cluster).instrument(span).await
}

async fn reconcile_one(cfg: &IsolaConfig, cluster: &Cluster) -> Result<Action, Error> {
    let name = cfg.name_any();
    let deleting = cfg.meta().deletion_timestamp.is_some();
    let held = cfg.finalizers().iter().any(|f| f == FINALIZER);
    if name != NAME {
        if !deleting {
            let facts = Facts {
                singleton: false,
                deleting,
                problems: &[],
                installer: None,
                nodes: &[],
            };
            write_status(cluster, cfg, &decide(&facts), &[], &[], Vec::new()).await?;
        }
        return Ok(Action::await_change());
    }
    if deleting && !held {
        return Ok(Action::await_change());
    }
    if !held {
        let mut finalizers = cfg.finalizers().to_vec();
        finalizers.push(FINALIZER.to_string());
        cluster.patch_finalizers(cfg, finalizers).await?;
        tracing::info!("finalizer {FINALIZER} added");
    }
    let problems = validate::problems(&cfg.spec);
    // Blocking: a foreground deletion of the IsolaConfig waits for its objects too.
    let mut owner = cfg
        .controller_owner_ref(&())
        .ok_or(Error::Incomplete("uid"))?;
    owner.block_owner_deletion = Some(true);
    let spec_classes: Vec<String> = cfg
        .spec
        .runtime_classes
        .iter()
        .map(|r| r.name.clone())
        .collect();
    let ns = cluster.namespace();
    let (ds, classes) = if deleting {
        // (a), then (b) unless the spec cannot say how (Phase::Invalid).
        cluster.prune_runtime_classes(&name, &[]).await?;
        // Also when the DaemonSet is gone but nodes were reported installed: a foreground
        // deletion's garbage collector deletes it at once (its pods then uninstall nothing).
        let existing = cluster.get_daemonset().await?;
        let installed = cfg.status.as_ref().is_some_and(|s| {
            s.nodes
                .iter()
                .any(|n| n.image.is_some() || n.version.is_some())
        });
        let ds = if (existing.is_some() || installed) && problems.is_empty() {
            let want = desired::daemonset(&cfg.spec, ns, None, Mode::Cleanup)?;
            Some(cluster.apply_daemonset(&want).await?)
        } else {
            existing
        };
        (ds, Vec::new())
    } else if problems.is_empty() {
        let want = desired::daemonset(&cfg.spec, ns, Some(owner.clone()), Mode::Install)?;
        let ds = cluster.apply_daemonset(&want).await?;
        let rcs = desired::runtime_classes(&cfg.spec, &name, &owner);
        cluster.apply_runtime_classes(&rcs).await?;
        cluster.prune_runtime_classes(&name, &spec_classes).await?;
        (Some(ds), spec_classes)
    } else {
        // Nothing applied; report on what runs.
        let previous = cfg.status.as_ref().map(|s| s.runtime_classes.clone());
        (cluster.get_daemonset().await?, previous.unwrap_or_default())
    };

    let pods = match &ds {
        Some(_) => cluster.list_pods().await?,
        None => Vec::new(),
    };
    let nodes = status::nodes(
        &cfg.spec.image,
        ds.as_ref()
            .and_then(desired::mode_of)
            .unwrap_or(Mode::Install),
        &cfg.spec.node_selector,
        ds.as_ref(),
        &pods,
        &cluster.list_nodes().await?,
    );
    let facts = Facts {
        singleton: true,
        deleting,
        problems: &problems,
        installer: ds.as_ref().map(|d| Installer {
            mode: desired::mode_of(d),
            rollout: status::Rollout::of(d),
        }),
        nodes: &nodes,
    };
    let phase = decide(&facts);
    tracing::debug!(phase = ?phase, nodes = nodes.len(), "reconciled");
    if phase == Phase::Uninstalled {
        // (d), (e).
        if ds.is_some() {
            cluster.delete_daemonset().await?;
        }
        let rest: Vec<String> = cfg
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        cluster.patch_finalizers(cfg, rest).await?;
        tracing::info!("every node uninstalled; finalizer {FINALIZER} removed");
        return Ok(Action::await_change());
    }
    write_status(cluster, cfg, &phase, &problems, &nodes, classes).await?;
    Ok(Action::requeue(Duration::from_secs(
        phase.requeue_seconds(),
    )))
}

/// Writes the status for `phase` when it differs from the current one (an unchanged status is
/// not written: each write would wake the controller again), and an event and a log line when
/// the Ready reason changes.
async fn write_status(
    cluster: &Cluster,
    cfg: &IsolaConfig,
    phase: &Phase,
    problems: &[String],
    nodes: &[NodeStatus],
    runtime_classes: Vec<String>,
) -> Result<(), Error> {
    let previous = cfg.status.clone().unwrap_or_default();
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let status = next_status(cfg, phase, problems, nodes, runtime_classes, &now);
    if status == previous {
        return Ok(());
    }
    cluster.patch_status(cfg, &status).await?;
    let ready = |s: &IsolaConfigStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((reason, message)) = ready(&status) {
        if ready(&previous).map(|p| p.0) != Some(reason.clone()) {
            tracing::info!(reason = %reason, "{message}");
            let warning = matches!(phase, Phase::Invalid | Phase::Degraded | Phase::NoNodes);
            cluster.event(cfg, warning, &reason, &message).await;
        }
    }
    Ok(())
}

/// The status for `phase`, transition times carried over from the current one.
fn next_status(
    cfg: &IsolaConfig,
    phase: &Phase,
    problems: &[String],
    nodes: &[NodeStatus],
    runtime_classes: Vec<String>,
    now: &str,
) -> IsolaConfigStatus {
    let previous = cfg
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    let inputs = Inputs {
        phase,
        problems,
        nodes,
        image: &cfg.spec.image,
        generation: cfg.meta().generation,
    };
    IsolaConfigStatus {
        observed_generation: cfg.meta().generation,
        conditions: conditions(&inputs, previous, now),
        nodes: nodes.to_vec(),
        runtime_classes,
    }
}

#[cfg(test)]
#[path = "deletion_tests.rs"]
mod deletion_tests;
#[cfg(test)]
#[path = "mock_api.rs"]
mod mock_api;
#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
