//! The `IsolaConfig` custom resource (`isola.io/v1alpha1`, cluster-scoped): what the operator
//! installs on which nodes, and the status it reports back. One per cluster, named `isola`
//! ([`NAME`]), like OpenShift's KataConfig: the nodes' runtime configuration is a single
//! cluster-wide fact, and two configs would fight over the same DaemonSet.
//!
//! The spec mirrors the installer's environment (`ISOLA_DEPLOY_*` in deploy/isola-deploy.yaml)
//! field for field, so what it means on a node is documented once, there. Values are plain
//! strings checked by the reconciler (`validate`), which reports a bad one in the status with
//! what to write instead, rather than an opaque schema rejection.

use std::collections::BTreeMap;

use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The only IsolaConfig the operator acts on.
pub const NAME: &str = "isola";

/// The installer image deploy/isola-deploy.yaml runs (built locally by `make deploy-image`).
pub const DEFAULT_IMAGE: &str = "localhost/isola/isola-deploy:latest";

/// The spec: the installer image, the nodes, how their runtime is set up, the RuntimeClasses.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "isola.io",
    version = "v1alpha1",
    kind = "IsolaConfig",
    shortname = "isolacfg",
    status = "IsolaConfigStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Image","type":"string","priority":1,"jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IsolaConfigSpec {
    /// The installer image (the isola-deploy image: the payload and the installer).
    #[serde(default = "default_image")]
    pub image: String,
    /// Always, IfNotPresent (default) or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// The nodes to install isola on (the installer pods' nodeSelector); empty: every node.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// The nodes' container runtime and how it takes up a new configuration.
    pub node: NodeRuntime,
    /// The RuntimeClasses to create, each also a runtime handler of the same name on the nodes.
    #[serde(default = "default_runtime_classes")]
    pub runtime_classes: Vec<RuntimeClassSpec>,
    /// VM templates: pods' VMs restored from a VM saved once instead of booted
    /// (docs/fast-start.md). Written as `[factory] template` into every handler's isola
    /// configuration on the nodes; unset keeps the payload's configuration, where they are on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_templates: Option<bool>,
    /// How the installer container runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installer: Option<Installer>,
}

/// The node's runtime, as `ISOLA_DEPLOY_RUNTIME`, `_RUNTIME_CONFIG`, `_RESTART`,
/// `_RUNTIME_SOCKET` and `_PREFIX` take it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRuntime {
    /// containerd or crio.
    pub runtime: String,
    /// containerd's config.toml, or CRI-O's drop-in directory (an absolute host path).
    pub runtime_config: String,
    /// systemd:<unit>, signal:<pidfile>:<SIG>, command:<argv...> or none.
    pub restart: String,
    /// The runtime's socket on the host; default: the runtime's usual one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_socket: Option<String>,
    /// The install directory on the host; default /opt/isola.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The host process whose namespaces the installer enters (`ISOLA_DEPLOY_HOST_PID`);
    /// default 1, the node's init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_pid: Option<u32>,
    /// containerd: a directory on its PATH for each handler's shim link
    /// (`ISOLA_DEPLOY_SHIM_DIR`); default /usr/local/bin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim_dir: Option<String>,
}

/// One RuntimeClass and the runtime handler of the same name.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeClassSpec {
    /// The RuntimeClass's and the handler's name (a DNS label).
    pub name: String,
    /// qemu or cloud-hypervisor; default: the payload configuration's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<String>,
    /// What one pod costs the node beyond its containers (the RuntimeClass's overhead.podFixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Option<Overhead>,
}

/// A pod's fixed overhead, as Kubernetes quantities.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Overhead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

/// The installer container's privileges.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Installer {
    /// Run unprivileged with exactly these capabilities added (e.g. SYS_ADMIN, SYS_PTRACE,
    /// KILL), for hosts whose runtime cannot give a privileged container every capability;
    /// unset: privileged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// Mount only these host directories (absolute paths, each at /host<path>) instead of the
    /// node's whole / at /host: least privilege, and for nodes whose / is a private mount
    /// (CRI-O refuses to mount such a / into a container). They must hold everything the
    /// installer touches: the prefix, the runtime's configuration, its socket and pidfile, the
    /// shim directory and /proc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_paths: Option<Vec<String>>,
}

/// What the operator saw and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IsolaConfigStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Every node the installer runs, or should run, on.
    #[serde(default)]
    pub nodes: Vec<NodeStatus>,
    /// The RuntimeClasses the operator created.
    #[serde(default)]
    pub runtime_classes: Vec<String>,
}

/// A Kubernetes-style condition.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// When status last changed (RFC 3339).
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One node's install.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    /// Installed with the spec's image, its installer pod Ready, the node labelled.
    pub ready: bool,
    /// The node's isola.io/version annotation: the installed version id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The image of the installer pod on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Why the installer there fails, from its container's state and termination message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_string()
}

/// deploy/runtimeclass.yaml's `isola` with its measured overhead.
fn default_runtime_classes() -> Vec<RuntimeClassSpec> {
    vec![RuntimeClassSpec {
        name: "isola".to_string(),
        hypervisor: None,
        overhead: Some(Overhead {
            memory: Some("200Mi".to_string()),
            cpu: Some("250m".to_string()),
        }),
    }]
}

/// The CRD as YAML (`isola operator crd`, deploy/isola-operator-crd.yaml).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&IsolaConfig::crd())
}
