//! The node's label for isola pods: `isola.io/runtime=ready` (which the deploy RuntimeClasses'
//! `scheduling.nodeSelector` asks for) with annotations saying what is installed, set once the
//! node is ready and removed before anything is uninstalled.
//!
//! How: a JSON merge patch (RFC 7386) of the Node's metadata alone, under the field manager
//! `isola-deploy`, rather than a server-side apply:
//! - removal is explicit and certain: `null` deletes the key whoever set it. With apply, a key
//!   goes only when no other manager owns it too, so a label an administrator also set (or one
//!   an earlier run wrote under another manager) would stay and keep attracting pods to a node
//!   without isola: the one failure this label exists to prevent;
//! - a merge patch names only our keys: every other label and annotation is left as it is, and
//!   there is no whole object to read, hold or conflict on (no `get`, no resourceVersion), so
//!   the service account needs `patch` on nodes and nothing else;
//! - label and annotations change in one request: atomically, never a ready label with another
//!   version's annotations.
//!
//! The patches go to the metadata endpoint form (`Accept: ...PartialObjectMetadata`), so the
//! API server answers with the metadata, not the whole Node with its status and image list.
//! Before installing anything, a dry run of the ready patch (`dryRun=All`) finds a wrong node
//! name or a missing permission while the node is still untouched.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

use super::kube_api::{self, FIELD_MANAGER};
use super::layout::Handler;
use super::{Installed, NodeHook};

/// The label the deploy RuntimeClasses select nodes by.
pub const LABEL: &str = "isola.io/runtime";
/// Its value on a node ready for isola pods.
pub const READY: &str = "ready";
/// The installed version id (`<prefix>/versions/<id>`).
pub const VERSION: &str = "isola.io/version";
/// The runtime handlers registered, comma-separated.
pub const HANDLERS: &str = "isola.io/handlers";

#[derive(Args, Clone, Default)]
pub struct NodeArgs {
    /// This node's name in the cluster (the DaemonSet passes spec.nodeName): install then
    /// labels it isola.io/runtime=ready once ready and uninstall removes that first; without
    /// it nothing is labelled
    #[arg(long, env = "ISOLA_DEPLOY_NODE_NAME")]
    pub node_name: Option<String>,
    /// A kubeconfig for reaching the API server by hand (with its cluster's
    /// certificate-authority: the image has no system CA roots); default: the pod's service
    /// account
    #[arg(long, env = "ISOLA_DEPLOY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

/// Labels and unlabels one node through the API server.
pub struct KubeHook {
    api: Api<Node>,
    node: String,
    /// The first pause between attempts (see `kube_api::with_retries`).
    pub retry_delay: Duration,
}

impl KubeHook {
    pub fn new(client: Client, node: &str) -> Self {
        KubeHook {
            api: Api::all(client),
            node: node.to_string(),
            retry_delay: Duration::from_secs(1),
        }
    }

    /// The hook `args` ask for: the API server's for a node name, none without one. Connects
    /// (reads the credentials) but sends nothing.
    pub async fn from_args(args: &NodeArgs) -> anyhow::Result<Option<Self>> {
        let Some(node) = &args.node_name else {
            return Ok(None);
        };
        if node.is_empty() {
            anyhow::bail!(
                "--node-name (ISOLA_DEPLOY_NODE_NAME) is empty: the DaemonSet sets it from \
                 spec.nodeName; leave it unset to label nothing"
            );
        }
        let client = kube_api::connect(
            args.kubeconfig.as_deref(),
            "pass --kubeconfig, or leave out --node-name to label nothing",
        )
        .await?;
        Ok(Some(Self::new(client, node)))
    }

    /// The ready patch as a dry run: the node exists and may be patched by us. Changes nothing.
    pub async fn preflight(&self) -> anyhow::Result<()> {
        let patch = ready_patch(&[], "preflight");
        self.patch(
            &patch,
            true,
            "checking that this pod may label it (dry run)",
        )
        .await
    }

    pub async fn label(&self, i: &Installed) -> anyhow::Result<()> {
        let names: Vec<String> = i
            .handlers
            .iter()
            .map(|h| {
                Handler::parse(h)
                    .map(|h| h.name)
                    .unwrap_or_else(|_| h.clone())
            })
            .collect();
        self.patch(
            &ready_patch(&names, &i.version),
            false,
            "labelling it ready",
        )
        .await?;
        println!(
            "node {}: labelled {LABEL}={READY} ({VERSION}={}, {HANDLERS}={})",
            self.node,
            i.version,
            names.join(",")
        );
        Ok(())
    }

    pub async fn unlabel(&self) -> anyhow::Result<()> {
        self.patch(&unready_patch(), false, "removing its label")
            .await?;
        println!(
            "node {}: {LABEL} removed: no new isola pods are scheduled here",
            self.node
        );
        Ok(())
    }

    async fn patch(&self, body: &Value, dry_run: bool, doing: &str) -> anyhow::Result<()> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            dry_run,
            ..PatchParams::default()
        };
        let what = format!("node {}: {doing}", self.node);
        let patch = Patch::Merge(body);
        let sent = kube_api::with_retries(&what, self.retry_delay, || {
            self.api.patch_metadata(&self.node, &params, &patch)
        })
        .await;
        match sent {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(r)) if r.code == 404 => Err(anyhow::anyhow!(
                "{what}: the API server has no node `{}` ({}): --node-name \
                 (ISOLA_DEPLOY_NODE_NAME) must be this node's name as `kubectl get nodes` \
                 shows it (the DaemonSet passes spec.nodeName)",
                self.node,
                r.message
            )),
            Err(e) => Err(kube_api::explain(e, &what, "`patch` on `nodes`")),
        }
    }
}

/// The merge patch that marks the node ready for isola pods of `handlers`.
pub fn ready_patch(handlers: &[String], version: &str) -> Value {
    json!({
        "metadata": {
            "labels": { LABEL: READY },
            "annotations": { VERSION: version, HANDLERS: handlers.join(",") },
        }
    })
}

/// The merge patch that takes all of that away (`null` deletes a key; an absent one stays
/// absent).
pub fn unready_patch() -> Value {
    json!({
        "metadata": {
            "labels": { LABEL: null },
            "annotations": { VERSION: null, HANDLERS: null },
        }
    })
}

impl NodeHook for KubeHook {
    fn ready(&self, installed: &Installed) -> anyhow::Result<()> {
        kube_api::block_on(self.label(installed))
    }

    fn unready(&self) -> anyhow::Result<()> {
        kube_api::block_on(self.unlabel())
    }
}
