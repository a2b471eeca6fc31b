//! Starting a pod's VM and reaching its agent, with the cold-boot fallback of a clone: a VM
//! restored from a template whose agent does not answer is stopped, its template removed, and
//! the pod's VM booted instead on the same taps. A template never fails a pod.

use std::sync::Arc;
use std::time::{Duration, Instant};

use isola_agent_client::dial::wait_ready;
use isola_agent_client::{AgentClient, ClientError};
use isola_agent_proto::READY_PORT;
use isola_hypervisor::{AgentEndpoint, Hypervisor, VmConfig, VmExit};

use crate::{console, NewVm, SandboxError};

/// A VM whose agent answered.
pub(crate) struct Up {
    pub vm: Arc<dyn Hypervisor>,
    pub agent: AgentClient,
    /// From `started` until the VMM ran (of the VM that answered).
    pub vmm_ready: Duration,
}

/// Why an agent was not reached.
enum NoAnswer {
    Client(ClientError),
    Exited(VmExit),
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoAnswer::Client(e) => write!(f, "{e}"),
            NoAnswer::Exited(exit) => write!(f, "its VMM exited ({exit})"),
        }
    }
}

/// Starts the VM `vm_cfg` describes and connects to its agent within `dial_timeout` of the
/// VMM running. A clone (the VM says it was restored from a template) gets half of that: then
/// it is stopped, its template forgotten, and the VM booted, with a whole `dial_timeout` again.
/// `vm_cfg`'s taps stay open here until an agent answered, so that the boot gets them too.
/// On error nothing started is left running.
pub(crate) async fn start(
    id: &str,
    vm_cfg: VmConfig,
    hybrid: bool,
    dial_timeout: Duration,
    new_vm: &NewVm,
    started: Instant,
) -> Result<Up, SandboxError> {
    let templates = vm_cfg.templates.clone();
    let fallback = templates.is_some().then(|| VmConfig {
        templates: None,
        ..vm_cfg.clone()
    });
    let vm = new_vm(vm_cfg);
    vm.start().await.map_err(SandboxError::Start)?;
    let vmm_ready = started.elapsed();
    let (root, key, fallback) = match (templates, vm.template(), fallback) {
        (Some(root), Some(key), Some(fallback)) => (root, key, fallback),
        _ => {
            return match connect(vm.as_ref(), hybrid, dial_timeout).await {
                Ok(agent) => Ok(Up {
                    vm,
                    agent,
                    vmm_ready,
                }),
                Err(e) => Err(give_up(id, vm.as_ref(), e).await),
            };
        }
    };
    match connect(vm.as_ref(), hybrid, dial_timeout / 2).await {
        Ok(agent) => {
            return Ok(Up {
                vm,
                agent,
                vmm_ready,
            })
        }
        Err(e) => {
            tracing::warn!(sandbox = id, template = %key, error = %e, "the VM restored from its template did not answer: booting it instead");
        }
    }
    if let Err(e) = vm.stop().await {
        tracing::warn!(sandbox = id, error = %e, "stopping a clone whose agent never answered");
    }
    isola_hypervisor::forget_template(&root, &key).await;
    let vm = new_vm(fallback);
    vm.start().await.map_err(SandboxError::Start)?;
    let vmm_ready = started.elapsed();
    match connect(vm.as_ref(), hybrid, dial_timeout).await {
        Ok(agent) => Ok(Up {
            vm,
            agent,
            vmm_ready,
        }),
        Err(e) => Err(give_up(id, vm.as_ref(), e).await),
    }
}

/// Stops a VM whose agent was not reached; its error, with the end of its console.
async fn give_up(id: &str, vm: &dyn Hypervisor, why: NoAnswer) -> SandboxError {
    let console = vm.console_log();
    let tail = console::tail(&console, 4096);
    if let Err(e) = vm.stop().await {
        tracing::warn!(sandbox = id, error = %e, "stopping a VM whose agent never answered");
    }
    match why {
        NoAnswer::Client(source) => SandboxError::Agent {
            source,
            console,
            tail,
        },
        NoAnswer::Exited(exit) => SandboxError::Exited {
            exit,
            console,
            tail,
        },
    }
}

/// Connects to `vm`'s agent within `timeout` (over hybrid vsock, once it announced it is
/// ready); gives up at once if the VMM exits.
async fn connect(
    vm: &dyn Hypervisor,
    hybrid: bool,
    timeout: Duration,
) -> Result<AgentClient, NoAnswer> {
    let endpoint = vm.agent_endpoint();
    let deadline = tokio::time::Instant::now() + timeout;
    let dial = async {
        if let (true, AgentEndpoint::HybridVsock { path, .. }) = (hybrid, &endpoint) {
            wait_ready(path, READY_PORT, deadline).await?;
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        AgentClient::connect(&endpoint, remaining).await
    };
    let exited = async {
        match vm.wait().await {
            Ok(exit) => exit,
            // A backend that cannot tell: only the deadline ends the wait.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        connected = dial => connected.map_err(NoAnswer::Client),
        exit = exited => Err(NoAnswer::Exited(exit)),
    }
}
