//! The API server, for `isola deploy`'s node label (`node`) and DaemonSet question
//! (`daemonset`): a kube-rs client from the pod's service account (in-cluster) or from
//! `--kubeconfig` (by hand on a node), a few retries of what a moment may cure, and API errors
//! turned into what to do about them.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The field manager isola's writes are recorded under (the object's `managedFields`).
pub const FIELD_MANAGER: &str = "isola-deploy";

/// How many times a request is sent before its error is final, for errors a moment may cure
/// (the API server unreachable, 429, 5xx); any other answer is final at once.
pub const ATTEMPTS: u32 = 4;

/// Runs a future to its end from the synchronous installer, which runs inside the CLI's
/// multi-threaded runtime (as do the tests that drive it).
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// A client for the API server: `kubeconfig`'s current context, or the pod's service account
/// (`KUBERNETES_SERVICE_HOST`/`_PORT` and /var/run/secrets/kubernetes.io/serviceaccount/).
/// Nothing is sent yet. `outside` says what to do outside a pod (the command's own flags).
pub async fn connect(kubeconfig: Option<&Path>, outside: &str) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p)
                .map_err(|e| anyhow::anyhow!("reading the kubeconfig {}: {e}", p.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("the kubeconfig {}: {e}", p.display()))?
        }
        None => Config::incluster().map_err(|e| {
            anyhow::anyhow!(
                "no in-cluster configuration ({e}): in a pod, its service account's token must \
                 be mounted (automountServiceAccountToken); outside a pod, {outside}"
            )
        })?,
    };
    Client::try_from(config).map_err(|e| anyhow::anyhow!("creating the API client: {e}"))
}

/// Whether `e` may go away by itself: the API server unreachable or overloaded.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(r) => r.code == 429 || r.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// `send` until it succeeds, fails for good, or has been tried [`ATTEMPTS`] times, `delay`
/// apart (doubling).
pub async fn with_retries<T, F, Fut>(what: &str, delay: Duration, send: F) -> kube::Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = kube::Result<T>>,
{
    let mut delay = delay;
    let mut attempt = 1;
    loop {
        match send().await {
            Err(e) if attempt < ATTEMPTS && transient(&e) => {
                eprintln!("{what}: {e}; trying again in {delay:?} ({attempt}/{ATTEMPTS})");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// `e` as a message that says what failed and what to do: `needs` names the RBAC rule the
/// request needs (for a 403).
pub fn explain(e: kube::Error, what: &str, needs: &str) -> anyhow::Error {
    match e {
        kube::Error::Api(r) if r.code == 403 => anyhow::anyhow!(
            "{what}: forbidden ({}): the service account needs {needs} (the ClusterRole and \
             Role `isola-deploy` in deploy/isola-deploy-rbac.yaml)",
            r.message
        ),
        kube::Error::Api(r) if r.code == 401 => anyhow::anyhow!(
            "{what}: unauthorized ({}): the API server refused the credentials (the pod's \
             service account token, or --kubeconfig's user); a service account deleted with the \
             DaemonSet? keep deploy/isola-deploy-rbac.yaml until its pods are gone",
            r.message
        ),
        kube::Error::Api(r) => anyhow::anyhow!(
            "{what}: the API server answered {} {}: {}",
            r.code,
            r.reason,
            r.message
        ),
        e if transient(&e) => anyhow::anyhow!(
            "{what}: the API server did not answer after {ATTEMPTS} attempts ({e}); check that \
             this node reaches it (in a pod: KUBERNETES_SERVICE_HOST, the kubernetes Service)"
        ),
        e => anyhow::anyhow!("{what}: {e}"),
    }
}
