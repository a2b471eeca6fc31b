//! `isola deploy should-uninstall`: the DaemonSet pod's question on SIGTERM, "is my DaemonSet
//! gone or being deleted?". A pod is terminated by a rolling update (an upgrade), a node drain
//! or a restart too, and uninstalling there would take isola from under running pods for
//! nothing; only the DaemonSet's own deletion means "uninstall".
//!
//! Yes (exit 0) when the API server has no such DaemonSet (`kubectl delete` with the default
//! background propagation removes it at once, its pods after) or it has a deletionTimestamp
//! (foreground deletion: pods first). No (exit 1) when it exists as usual. An error (the API
//! server unreachable, RBAC) also exits 1 with the reason: when in doubt isola stays installed
//! and the node labelled, which breaks nothing; the cleanup mode uninstalls for certain.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::{Api, Client};

use super::kube_api;

#[derive(Args)]
pub struct ShouldUninstallArgs {
    /// The DaemonSet this pod belongs to
    #[arg(long, env = "ISOLA_DEPLOY_DAEMONSET")]
    daemonset: String,
    /// Its namespace; default: the pod's own (its service account's namespace file), or the
    /// kubeconfig context's
    #[arg(long, env = "ISOLA_DEPLOY_NAMESPACE")]
    namespace: Option<String>,
    /// A kubeconfig for reaching the API server by hand (with its cluster's
    /// certificate-authority: the image has no system CA roots); default: the pod's service
    /// account
    #[arg(long, env = "ISOLA_DEPLOY_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

/// The answer, with why.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Gone,
    Deleting(String),
    Exists,
}

impl Answer {
    pub fn uninstall(&self) -> bool {
        !matches!(self, Answer::Exists)
    }
}

/// Asks the API server about the DaemonSet `name` in `namespace` (the client's default
/// namespace when `None`).
pub async fn ask(
    client: Client,
    namespace: Option<&str>,
    name: &str,
    retry_delay: Duration,
) -> anyhow::Result<Answer> {
    let ns = namespace.unwrap_or(client.default_namespace()).to_string();
    let api: Api<DaemonSet> = Api::namespaced(client, &ns);
    let what = format!("the DaemonSet {ns}/{name}");
    let got = kube_api::with_retries(&what, retry_delay, || api.get_metadata_opt(name))
        .await
        .map_err(|e| {
            kube_api::explain(e, &what, "`get` on `daemonsets` (apps) in its namespace")
        })?;
    Ok(match got {
        None => Answer::Gone,
        Some(m) => match m.metadata.deletion_timestamp {
            Some(t) => Answer::Deleting(t.0.to_rfc3339()),
            None => Answer::Exists,
        },
    })
}

/// The command: prints the answer, and returns it as the exit status (true: uninstall).
pub fn run(a: ShouldUninstallArgs) -> anyhow::Result<bool> {
    let answer = kube_api::block_on(async {
        let client = kube_api::connect(a.kubeconfig.as_deref(), "pass --kubeconfig").await?;
        ask(
            client,
            a.namespace.as_deref(),
            &a.daemonset,
            Duration::from_secs(1),
        )
        .await
    })
    .map_err(|e| e.context("cannot tell whether to uninstall: keeping isola installed"))?;
    let name = &a.daemonset;
    match &answer {
        Answer::Gone => println!("yes: the DaemonSet {name} is gone: uninstall"),
        Answer::Deleting(t) => {
            println!("yes: the DaemonSet {name} is being deleted (since {t}): uninstall")
        }
        Answer::Exists => println!(
            "no: the DaemonSet {name} is still there (an update, drain or restart): keep isola"
        ),
    }
    Ok(answer.uninstall())
}
