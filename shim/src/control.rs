//! The task service's resource calls: Pause, Resume, Update (with VM growth), Stats, and the
//! OOM watcher that turns the agent's GetOOMEvent into containerd's `/tasks/oom`.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::events::task::{TaskOOM, TaskPaused, TaskResumed};
use containerd_shim_protos::topics;
use oci_spec::runtime::LinuxResources;
use protobuf::well_known_types::any::Any;
use ttrpc::Code;

use crate::counters::{Outcome, Resource};
use crate::error::{Result, ShimError};
use crate::metrics;
use crate::podvm::PodVm;
use crate::service::Service;
use crate::state::Status;

/// What the VM has: as booted (the configuration's `vcpus`, `memory_mib`), then as grown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// How containerd names the JSON OCI `LinuxResources` it sends in UpdateTaskRequest
/// (`typeurl.MarshalAny(&specs.LinuxResources{..})`).
pub const LINUX_RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// Delay before asking the agent again after GetOOMEvent failed.
const OOM_RETRY: Duration = Duration::from_secs(1);

/// The VM's size when a hotplug was refused as a shrink: it already has `current` (a
/// concurrent Update grew it past what this one read), which is at least what was asked.
fn already_has(e: &ShimError) -> Option<u64> {
    match e {
        ShimError::Hypervisor { source, .. } => match source.as_ref() {
            isola_hypervisor::HypervisorError::ShrinkUnsupported { current, .. } => Some(*current),
            _ => None,
        },
        _ => None,
    }
}

/// How a hotplug went, for the counters (see [`Outcome`]).
fn hotplug_outcome<T>(result: &Result<T>) -> Outcome {
    match result {
        Ok(_) => Outcome::Grown,
        Err(e) if e.code() == Code::UNIMPLEMENTED => Outcome::Unsupported,
        Err(e) if already_has(e).is_some() => Outcome::AlreadyGrown,
        Err(_) => Outcome::Failed,
    }
}

/// Records that the VM already has `now` of a resource (see [`already_has`]).
fn grown_meanwhile<T: TryFrom<u64> + Ord + Copy>(have: &mut T, now: u64) {
    if let Ok(now) = T::try_from(now) {
        tracing::info!("the VM was grown meanwhile: already large enough");
        *have = (*have).max(now);
    }
}

/// What `resources` needs of the VM: vCPUs (from the CFS quota/period) and MiB of memory
/// (from the memory limit); None where it sets no limit.
pub fn needed(resources: &LinuxResources) -> (Option<u32>, Option<u64>) {
    let cpus = resources.cpu().as_ref().and_then(|c| {
        let period = i64::try_from(c.period()?).ok()?;
        isola_config::vcpus_for_quota(c.quota()?, period)
    });
    let mem = resources
        .memory()
        .as_ref()
        .and_then(|m| m.limit())
        .and_then(isola_config::mib_for_bytes);
    (cpus, mem)
}

impl Service {
    /// Freezes a running container (every process of it) in the guest.
    pub async fn pause(&self, id: &str) -> Result<()> {
        {
            let containers = self.containers.lock().unwrap();
            let c = containers.get(id)?;
            if c.init.status != Status::Running {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} is not running: only a running container can be paused"
                )));
            }
            if c.paused {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} is already paused"
                )));
            }
        }
        let sandbox = self.pod.live()?;
        sandbox.agent.pause_container(id).await?;
        if let Ok(c) = self.containers.lock().unwrap().get_mut(id) {
            c.paused = c.init.status == Status::Running;
        }
        self.events.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: id.to_string(),
                ..Default::default()
            }),
        );
        tracing::info!("container paused");
        Ok(())
    }

    /// Thaws a container frozen by [`pause`](Self::pause).
    pub async fn resume(&self, id: &str) -> Result<()> {
        {
            let containers = self.containers.lock().unwrap();
            let c = containers.get(id)?;
            if !c.paused || c.init.status != Status::Running {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} is not paused"
                )));
            }
        }
        let sandbox = self.pod.live()?;
        sandbox.agent.resume_container(id).await?;
        if let Ok(c) = self.containers.lock().unwrap().get_mut(id) {
            c.paused = false;
        }
        self.events.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: id.to_string(),
                ..Default::default()
            }),
        );
        tracing::info!("container resumed");
        Ok(())
    }

    /// Applies new resource limits to a container. Limits beyond what the VM has first grow
    /// the VM (hotplug, then OnlineCPUMem in the guest); where the hypervisor cannot grow it,
    /// the limit is applied inside the VM anyway (see the shim README).
    pub async fn update(&self, id: &str, resources: Option<&Any>) -> Result<()> {
        let any = resources.ok_or_else(|| {
            ShimError::InvalidArgument(format!("update of container {id} carries no resources"))
        })?;
        if !any.type_url.is_empty() && !any.type_url.ends_with("/LinuxResources") {
            return Err(ShimError::InvalidArgument(format!(
                "update of container {id}: resources of type {:?}; isola takes OCI LinuxResources ({LINUX_RESOURCES_TYPE_URL})",
                any.type_url
            )));
        }
        let parsed: LinuxResources = serde_json::from_slice(&any.value).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "update of container {id}: the resources are not OCI LinuxResources JSON: {e}"
            ))
        })?;
        {
            let containers = self.containers.lock().unwrap();
            let c = containers.get(id)?;
            if c.init.status == Status::Stopped {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} has exited: there is nothing to update"
                )));
            }
        }
        let sandbox = self.pod.live()?;
        self.grow_vm(&sandbox, &parsed).await?;
        sandbox
            .agent
            .update_container(id, any.value.to_vec())
            .await?;
        tracing::info!(resources = %String::from_utf8_lossy(&any.value), "container resources updated");
        Ok(())
    }

    /// Grows the VM to fit `resources` where it has less than they allow.
    async fn grow_vm(&self, sandbox: &PodVm, resources: &LinuxResources) -> Result<()> {
        let (want_cpus, want_mib) = needed(resources);
        let have = *sandbox.size.lock().unwrap();
        let mut added_cpus = 0;
        // The VM's memory after a hot-plug, for the agent to wait for (0: none).
        let mut grown_mib = 0;
        if let Some(want) = want_cpus.filter(|w| *w > have.vcpus) {
            let grown = sandbox.vm.hotplug_vcpus(want).await;
            sandbox
                .counters
                .hotplug(Resource::Vcpus, hotplug_outcome(&grown));
            match grown {
                Ok(now) => {
                    tracing::info!(from = have.vcpus, to = now, "VM grown: vCPUs");
                    added_cpus = now.saturating_sub(have.vcpus);
                    sandbox.size.lock().unwrap().vcpus = now;
                }
                Err(why) if why.code() == Code::UNIMPLEMENTED => tracing::warn!(
                    "the CPU limit allows {want} CPUs but the VM has {} and cannot grow yet ({why}): \
                     applying the limit inside the VM anyway, the container gets at most {} CPUs",
                    have.vcpus,
                    have.vcpus
                ),
                Err(e) => match already_has(&e) {
                    Some(now) => grown_meanwhile(&mut sandbox.size.lock().unwrap().vcpus, now),
                    None => return Err(e),
                },
            }
        }
        if let Some(want) = want_mib.filter(|w| *w > have.memory_mib) {
            let target = u32::try_from(want).map_err(|_| {
                ShimError::InvalidArgument(format!("a memory limit of {want} MiB is too large"))
            })?;
            let grown = sandbox.vm.hotplug_memory(target).await;
            sandbox
                .counters
                .hotplug(Resource::Memory, hotplug_outcome(&grown));
            match grown {
                Ok(now) => {
                    tracing::info!(from = have.memory_mib, to = now, "VM grown: memory (MiB)");
                    grown_mib = now;
                    sandbox.size.lock().unwrap().memory_mib = now.into();
                }
                Err(why) if why.code() == Code::UNIMPLEMENTED => tracing::warn!(
                    "the memory limit allows {want} MiB but the VM has {} MiB and cannot grow yet ({why}): \
                     applying the limit inside the VM anyway, the container gets at most what the VM has",
                    have.memory_mib
                ),
                Err(e) => match already_has(&e) {
                    Some(now) => grown_meanwhile(&mut sandbox.size.lock().unwrap().memory_mib, now),
                    None => return Err(e),
                },
            }
        }
        if added_cpus > 0 || grown_mib > 0 {
            sandbox.agent.online_cpu_mem(added_cpus, grown_mib).await?;
            // `isola ps` and the monitor show the new size at once, not at the next period.
            sandbox.write_metrics(crate::counters::now_unix());
        }
        Ok(())
    }

    /// The container's statistics as containerd's cgroup v2 metrics.
    pub async fn stats(&self, id: &str) -> Result<Any> {
        self.containers.lock().unwrap().get(id)?;
        let sandbox = self.pod.live()?;
        let stats = sandbox.agent.stats_container(id).await?;
        metrics::to_any(&stats)
    }

    /// Long-polls the agent for OOM kills while the sandbox lives, publishing `/tasks/oom`.
    pub(crate) fn watch_oom(self: &Arc<Self>, state: Arc<PodVm>) {
        let this = Arc::downgrade(self);
        let span = tracing::info_span!(parent: None, "oom", sandbox_id = %state.id);
        let task = async move {
            // The VM is dead or stopping (or the service gone): no more OOM kills to report.
            let gone = || !this.upgrade().is_some_and(|s| s.pod.is_current(&state));
            while !gone() {
                match state.agent.get_oom_event().await {
                    Ok(cid) => {
                        let Some(this) = this.upgrade() else { return };
                        this.publish_oom(&cid);
                    }
                    Err(ShimError::Agent {
                        code: Code::UNIMPLEMENTED,
                        ..
                    }) => {
                        tracing::warn!("the guest agent does not report OOM kills: no /tasks/oom events for this sandbox");
                        return;
                    }
                    Err(_) if gone() => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "waiting for OOM events failed; retrying");
                        tokio::time::sleep(OOM_RETRY).await;
                    }
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
    }

    fn publish_oom(&self, cid: &str) {
        if self.containers.lock().unwrap().get_any_mut(cid).is_none() {
            tracing::info!(
                container_id = cid,
                "OOM kill in a container the shim does not know; ignored"
            );
            return;
        }
        tracing::warn!(container_id = cid, "container OOM-killed in the guest");
        self.events.publish(
            topics::TASK_OOM_EVENT_TOPIC,
            Box::new(TaskOOM {
                container_id: cid.to_string(),
                ..Default::default()
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_reads_quota_and_limit() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"cpu":{"quota":150000,"period":100000},"memory":{"limit":67108865}}"#,
        )
        .unwrap();
        assert_eq!(needed(&r), (Some(2), Some(65)));
        let r: LinuxResources = serde_json::from_str(r#"{"memory":{"limit":-1}}"#).unwrap();
        assert_eq!(needed(&r), (None, None));
    }

    #[test]
    fn a_shrink_refusal_means_large_enough() {
        use isola_hypervisor::HypervisorError as H;
        let shrink = ShimError::hypervisor(
            "CPU hotplug",
            H::ShrinkUnsupported {
                vm: "pod".into(),
                resource: "vCPUs",
                current: 4,
                requested: 3,
            },
        );
        assert_eq!(already_has(&shrink), Some(4));
        let mut vcpus = 2u32;
        grown_meanwhile(&mut vcpus, 4);
        assert_eq!(vcpus, 4);
        let limit = ShimError::hypervisor(
            "CPU hotplug",
            H::HotplugLimit {
                vm: "pod".into(),
                resource: "vCPUs",
                requested: 8,
                limit: 4,
                hint: "restart the pod",
            },
        );
        assert_eq!(already_has(&limit), None, "a ceiling fails the Update");
        assert_eq!(already_has(&ShimError::Internal("x".into())), None);
    }
}
