//! Every request the operator sends, one method each (deploy/isola-operator.yaml's RBAC grants
//! exactly these; its test lists them): the installer DaemonSet and its pods in the operator's
//! namespace, the RuntimeClasses, the nodes' metadata, the IsolaConfig's finalizers and status,
//! and events.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::crd::{IsolaConfig, IsolaConfigStatus};
use super::desired::{CONFIG_LABEL, DAEMONSET, POD_LABEL};
use super::error::Error;

/// The field manager of the operator's writes.
pub const FIELD_MANAGER: &str = "isola-operator";

/// The API server, as the operator uses it.
pub struct Cluster {
    client: Client,
    /// Where the installer DaemonSet goes.
    namespace: String,
    recorder: Recorder,
}

impl Cluster {
    pub fn new(client: Client, namespace: String) -> Cluster {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Cluster {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            namespace,
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn daemonsets(&self) -> Api<DaemonSet> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn configs(&self) -> Api<IsolaConfig> {
        Api::all(self.client.clone())
    }

    /// Server-side apply, forced: the operator owns every field it applies.
    fn apply() -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }

    pub async fn get_daemonset(&self) -> Result<Option<DaemonSet>, Error> {
        self.daemonsets()
            .get_opt(DAEMONSET)
            .await
            .map_err(Error::kube("reading the installer DaemonSet"))
    }

    /// Applies `want`; the answer carries the DaemonSet's current status.
    pub async fn apply_daemonset(&self, want: &DaemonSet) -> Result<DaemonSet, Error> {
        self.daemonsets()
            .patch(DAEMONSET, &Self::apply(), &Patch::Apply(want))
            .await
            .map_err(Error::kube("applying the installer DaemonSet"))
    }

    pub async fn delete_daemonset(&self) -> Result<(), Error> {
        match self
            .daemonsets()
            .delete(DAEMONSET, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(Error::kube("deleting the installer DaemonSet")(e)),
        }
    }

    pub async fn apply_runtime_classes(&self, want: &[RuntimeClass]) -> Result<(), Error> {
        let api: Api<RuntimeClass> = Api::all(self.client.clone());
        for rc in want {
            let name = rc.name_any();
            api.patch(&name, &Self::apply(), &Patch::Apply(rc))
                .await
                .map_err(Error::kube(format!("applying the RuntimeClass {name}")))?;
        }
        Ok(())
    }

    /// Deletes the RuntimeClasses of the IsolaConfig `config` that are not in `keep`.
    pub async fn prune_runtime_classes(&self, config: &str, keep: &[String]) -> Result<(), Error> {
        let api: Api<RuntimeClass> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!("{CONFIG_LABEL}={config}"));
        let have = api
            .list_metadata(&lp)
            .await
            .map_err(Error::kube("listing the operator's RuntimeClasses"))?;
        for rc in have.items {
            let name = rc.name_any();
            if keep.contains(&name) {
                continue;
            }
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(runtimeclass = %name, "RuntimeClass deleted"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(Error::kube(format!("deleting the RuntimeClass {name}"))(e)),
            }
        }
        Ok(())
    }

    /// The installer pods (the DaemonSet's selector label).
    pub async fn list_pods(&self) -> Result<Vec<Pod>, Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let lp = ListParams::default().labels(&format!("{}={}", POD_LABEL.0, POD_LABEL.1));
        Ok(api
            .list(&lp)
            .await
            .map_err(Error::kube("listing the installer pods"))?
            .items)
    }

    /// The nodes' metadata (labels, annotations) only: not their status and image lists.
    pub async fn list_nodes(&self) -> Result<Vec<Node>, Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let list = api
            .list_metadata(&ListParams::default())
            .await
            .map_err(Error::kube("listing the nodes"))?;
        Ok(list
            .items
            .into_iter()
            .map(|m| Node {
                metadata: m.metadata,
                ..Node::default()
            })
            .collect())
    }

    /// Sets `metadata.finalizers` by a JSON merge patch carrying the resourceVersion seen: the
    /// API server refuses it (409, retried) if the object changed since, so a finalizer
    /// someone else added meanwhile is never overwritten.
    pub async fn patch_finalizers(
        &self,
        cfg: &IsolaConfig,
        finalizers: Vec<String>,
    ) -> Result<(), Error> {
        let rv = cfg
            .resource_version()
            .ok_or(Error::Incomplete("resourceVersion"))?;
        let patch = json!({"metadata": {"resourceVersion": rv, "finalizers": finalizers}});
        self.configs()
            .patch(
                &cfg.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(Error::kube("updating the IsolaConfig's finalizers"))?;
        Ok(())
    }

    /// Replaces the status (a merge patch of the status subresource: its lists are replaced
    /// whole).
    pub async fn patch_status(
        &self,
        cfg: &IsolaConfig,
        status: &IsolaConfigStatus,
    ) -> Result<(), Error> {
        let body = serde_json::to_value(status).map_err(|source| Error::Json {
            what: "the status",
            source,
        })?;
        self.configs()
            .patch_status(
                &cfg.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": body})),
            )
            .await
            .map_err(Error::kube("updating the IsolaConfig's status"))?;
        Ok(())
    }

    /// An event on the IsolaConfig (`kubectl describe isolacfg`). A courtesy: its failure is
    /// logged, never the reconcile's.
    pub async fn event(&self, cfg: &IsolaConfig, warning: bool, reason: &str, note: &str) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            // The Events API's limit is 1 kB.
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &cfg.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an event");
        }
    }
}
