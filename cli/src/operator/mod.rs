//! `isola operator`: installs isola on a cluster's nodes from one cluster-scoped `IsolaConfig`
//! (named `isola`), a kube-rs controller around the same isola-deploy DaemonSet that
//! deploy/isola-deploy.yaml runs by hand.
//!
//! - `isola operator run`: the controller (deploy/isola-operator.yaml runs it in a Deployment);
//! - `isola operator crd`: the CustomResourceDefinition as YAML
//!   (deploy/isola-operator-crd.yaml is its output, checked by a test).
//!
//! What it does and why, one concern per file: the resource (`crd`), the spec's checks
//! (`validate`), the objects applied (`desired`), each node's state (`status`), the phase
//! (`phase`) and the conditions it shows (`conditions`), all pure; the I/O (`controller`).

mod conditions;
mod controller;
mod crd;
mod desired;
mod error;
mod phase;
mod requests;
mod status;
mod validate;

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum Operator {
    /// Run the controller: reconcile the IsolaConfig `isola` until SIGTERM
    Run {
        /// The namespace of the installer DaemonSet (with deploy/isola-deploy-rbac.yaml's
        /// service account there)
        #[arg(long, env = "ISOLA_OPERATOR_NAMESPACE", default_value = "kube-system")]
        namespace: String,
        /// A kubeconfig (default: the pod's service account, in-cluster)
        #[arg(long, env = "ISOLA_OPERATOR_KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
    },
    /// Print the IsolaConfig CustomResourceDefinition (YAML)
    Crd,
}

pub async fn run(what: Operator) -> anyhow::Result<bool> {
    match what {
        Operator::Crd => {
            print!("{}", crd::crd_yaml()?);
            Ok(true)
        }
        Operator::Run {
            namespace,
            kubeconfig,
        } => {
            let client =
                crate::deploy::kube_api::connect(kubeconfig.as_deref(), "pass --kubeconfig")
                    .await?;
            controller::run(client, namespace).await?;
            Ok(true)
        }
    }
}

#[cfg(test)]
mod manifest_tests;
