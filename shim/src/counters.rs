//! The shim's own counters for `isola monitor`, kept in memory per pod VM ([`Counters`]):
//! calls to the guest agent by RPC (errors by status code, a latency histogram), hotplug events
//! and failed watchdog checks, plus the guest-wide memory and CPU figures the agent reports.
//!
//! Every agent call goes through [`CountingAgent`], which wraps the VM's agent. While the VM is
//! the running one, its heartbeat ([`crate::watchdog`]) asks the agent for the guest's figures
//! and writes a [`ShimMetrics`] snapshot next to the sandbox record at once and then every
//! `SNAPSHOT_PERIOD`; the teardown removes it with the record
//! ([`PodVm::close_metrics`](crate::podvm::PodVm::close_metrics)). No socket, no server: the
//! monitor reads files, as it reads the records.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use isola_agent_proto::agent::{
    CreateContainerRequest, CreateSandboxRequest, ExecProcessRequest, GuestDetailsResponse,
    StatsContainerResponse,
};
use isola_agent_proto::types::{ARPNeighbor, Interface, Route};
use isola_sandbox::shim_metrics::{
    DurationHistogram, GuestFigures, HotplugCount, RpcFigures, ShimMetrics,
};

use crate::agent::{AgentApi, BoxStream, GuestProcess, ProcessExit, StdioKind};
use crate::error::Result;

/// A resource the VM grows by hotplug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Resource {
    Vcpus,
    Memory,
}

/// How a hotplug went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    /// The VM grew.
    Grown,
    /// The hypervisor cannot grow the VM: the limit is applied inside it as it is.
    Unsupported,
    /// A concurrent Update grew it first: already large enough.
    AlreadyGrown,
    /// The hotplug failed (the Update fails).
    Failed,
}

impl Resource {
    fn label(self) -> &'static str {
        match self {
            Resource::Vcpus => "vcpus",
            Resource::Memory => "memory",
        }
    }
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Grown => "grown",
            Outcome::Unsupported => "unsupported",
            Outcome::AlreadyGrown => "already_grown",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Default)]
struct Inner {
    rpcs: BTreeMap<&'static str, RpcFigures>,
    hotplug: BTreeMap<(Resource, Outcome), u64>,
    watchdog_failed_checks: u64,
    guest: GuestFigures,
}

/// A pod VM's counters; see the module documentation.
#[derive(Default)]
pub(crate) struct Counters {
    inner: Mutex<Inner>,
}

impl Counters {
    /// Counts a call of `rpc` that ended with `error` (None: it succeeded), taking `took`
    /// (None for long polls, whose duration says nothing of the agent's speed).
    pub fn rpc(&self, rpc: &'static str, took: Option<Duration>, error: Option<ttrpc::Code>) {
        let mut inner = self.inner.lock().unwrap();
        let figures = inner.rpcs.entry(rpc).or_default();
        figures.calls += 1;
        if let Some(code) = error {
            *figures.errors.entry(format!("{code:?}")).or_default() += 1;
        }
        if let Some(took) = took {
            figures
                .duration
                .get_or_insert_with(DurationHistogram::new)
                .observe(took.as_secs_f64());
        }
    }

    /// Counts a hotplug event.
    pub fn hotplug(&self, resource: Resource, outcome: Outcome) {
        *self
            .inner
            .lock()
            .unwrap()
            .hotplug
            .entry((resource, outcome))
            .or_default() += 1;
    }

    /// Counts a watchdog health check that got no answer.
    pub fn watchdog_failed(&self) {
        self.inner.lock().unwrap().watchdog_failed_checks += 1;
    }

    /// Keeps the guest's figures from a GetGuestDetails answer; 0 (an older agent's answer
    /// for a field it does not know) is unknown.
    pub fn guest(&self, details: &GuestDetailsResponse) {
        let known = |v: u64| (v > 0).then_some(v);
        self.inner.lock().unwrap().guest = GuestFigures {
            memory_total_bytes: known(details.memory_total_bytes),
            memory_available_bytes: known(details.memory_available_bytes),
            cpu_seconds: (details.cpu_seconds.is_finite() && details.cpu_seconds > 0.0)
                .then_some(details.cpu_seconds),
        };
    }

    /// Forgets the guest's figures (the agent did not answer: they would go stale).
    pub fn guest_unknown(&self) {
        self.inner.lock().unwrap().guest = GuestFigures::default();
    }

    /// The counters as a snapshot of sandbox `sandbox_id` written at `now_unix`.
    pub fn snapshot(&self, sandbox_id: &str, now_unix: u64) -> ShimMetrics {
        let inner = self.inner.lock().unwrap();
        ShimMetrics {
            sandbox_id: sandbox_id.to_string(),
            written_unix: now_unix,
            guest: inner.guest.clone(),
            rpcs: inner
                .rpcs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            hotplug: inner
                .hotplug
                .iter()
                .map(|((r, o), n)| HotplugCount {
                    resource: r.label().into(),
                    outcome: o.label().into(),
                    count: *n,
                })
                .collect(),
            watchdog_failed_checks: inner.watchdog_failed_checks,
            vm: None,
        }
    }
}

/// The VM's agent, counting every call in [`Counters`]. Opening a stdio stream is no RPC and
/// is not counted.
pub(crate) struct CountingAgent {
    inner: Arc<dyn AgentApi>,
    counters: Arc<Counters>,
}

impl CountingAgent {
    pub fn new(inner: Arc<dyn AgentApi>, counters: Arc<Counters>) -> CountingAgent {
        CountingAgent { inner, counters }
    }

    /// Awaits `fut`, counting it as `rpc` with its duration.
    async fn timed<T>(&self, rpc: &'static str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let start = Instant::now();
        let r = fut.await;
        let error = r.as_ref().err().map(|e| e.code());
        self.counters.rpc(rpc, Some(start.elapsed()), error);
        r
    }

    /// Awaits the long poll `fut`, counting it as `rpc` without a duration.
    async fn polled<T>(
        &self,
        rpc: &'static str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let r = fut.await;
        let error = r.as_ref().err().map(|e| e.code());
        self.counters.rpc(rpc, None, error);
        r
    }
}

#[async_trait]
impl AgentApi for CountingAgent {
    async fn check(&self, timeout: Duration) -> Result<()> {
        self.timed("Check", self.inner.check(timeout)).await
    }
    async fn create_sandbox(&self, req: CreateSandboxRequest) -> Result<()> {
        self.timed("CreateSandbox", self.inner.create_sandbox(req))
            .await
    }
    async fn destroy_sandbox(&self) -> Result<()> {
        self.timed("DestroySandbox", self.inner.destroy_sandbox())
            .await
    }
    async fn create_container(&self, req: CreateContainerRequest) -> Result<()> {
        self.timed("CreateContainer", self.inner.create_container(req))
            .await
    }
    async fn start_container(&self, container_id: &str) -> Result<()> {
        self.timed("StartContainer", self.inner.start_container(container_id))
            .await
    }
    async fn exec_process(&self, req: ExecProcessRequest) -> Result<()> {
        self.timed("ExecProcess", self.inner.exec_process(req))
            .await
    }
    async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let call = self
            .inner
            .signal_process(container_id, exec_id, signal, all);
        self.timed("SignalProcess", call).await
    }
    async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<ProcessExit> {
        let call = self.inner.wait_process(container_id, exec_id);
        self.polled("WaitProcess", call).await
    }
    async fn remove_container(&self, container_id: &str, timeout_secs: u32) -> Result<()> {
        let call = self.inner.remove_container(container_id, timeout_secs);
        self.timed("RemoveContainer", call).await
    }
    async fn list_processes(&self, container_id: &str) -> Result<Vec<GuestProcess>> {
        self.timed("ListProcesses", self.inner.list_processes(container_id))
            .await
    }
    async fn resize_pty(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<()> {
        let call = self.inner.resize_pty(container_id, exec_id, rows, cols);
        self.timed("TtyWinResize", call).await
    }
    async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        self.timed("CloseStdin", self.inner.close_stdin(container_id, exec_id))
            .await
    }
    async fn open_stdio(
        &self,
        container_id: &str,
        exec_id: &str,
        kind: StdioKind,
    ) -> Result<BoxStream> {
        self.inner.open_stdio(container_id, exec_id, kind).await
    }
    async fn pause_container(&self, container_id: &str) -> Result<()> {
        self.timed("PauseContainer", self.inner.pause_container(container_id))
            .await
    }
    async fn resume_container(&self, container_id: &str) -> Result<()> {
        self.timed("ResumeContainer", self.inner.resume_container(container_id))
            .await
    }
    async fn stats_container(&self, container_id: &str) -> Result<StatsContainerResponse> {
        self.timed("StatsContainer", self.inner.stats_container(container_id))
            .await
    }
    async fn update_container(&self, container_id: &str, resources_json: Vec<u8>) -> Result<()> {
        let call = self.inner.update_container(container_id, resources_json);
        self.timed("UpdateContainer", call).await
    }
    async fn online_cpu_mem(&self, nb_cpus: u32, memory_mib: u32) -> Result<()> {
        let call = self.inner.online_cpu_mem(nb_cpus, memory_mib);
        self.timed("OnlineCPUMem", call).await
    }
    async fn get_oom_event(&self) -> Result<String> {
        self.polled("GetOOMEvent", self.inner.get_oom_event()).await
    }
    async fn update_interface(&self, iface: Interface) -> Result<()> {
        self.timed("UpdateInterface", self.inner.update_interface(iface))
            .await
    }
    async fn update_routes(&self, routes: Vec<Route>) -> Result<()> {
        self.timed("UpdateRoutes", self.inner.update_routes(routes))
            .await
    }
    async fn add_arp_neighbors(&self, neighbors: Vec<ARPNeighbor>) -> Result<()> {
        self.timed("AddARPNeighbors", self.inner.add_arp_neighbors(neighbors))
            .await
    }
    async fn guest_details(&self, timeout: Duration) -> Result<GuestDetailsResponse> {
        self.timed("GetGuestDetails", self.inner.guest_details(timeout))
            .await
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_calls_errors_durations_and_events() {
        let c = Counters::default();
        c.rpc("Check", Some(Duration::from_millis(2)), None);
        c.rpc(
            "Check",
            Some(Duration::from_secs(90)),
            Some(ttrpc::Code::DEADLINE_EXCEEDED),
        );
        c.rpc("WaitProcess", None, None);
        c.hotplug(Resource::Memory, Outcome::Grown);
        c.hotplug(Resource::Memory, Outcome::Grown);
        c.hotplug(Resource::Vcpus, Outcome::Unsupported);
        c.watchdog_failed();
        c.guest(&GuestDetailsResponse {
            memory_total_bytes: 1024,
            memory_available_bytes: 0,
            cpu_seconds: 2.5,
            ..Default::default()
        });
        let s = c.snapshot("pod", 77);
        assert_eq!((s.sandbox_id.as_str(), s.written_unix), ("pod", 77));
        let check = &s.rpcs["Check"];
        assert_eq!(check.calls, 2);
        assert_eq!(check.errors["DEADLINE_EXCEEDED"], 1);
        let h = check.duration.as_ref().unwrap();
        assert!(h.is_valid());
        assert_eq!((h.counts[1], h.counts[h.bounds.len()]), (1, 1));
        assert_eq!(s.rpcs["WaitProcess"].duration, None);
        let events: Vec<_> = s
            .hotplug
            .iter()
            .map(|h| (h.resource.as_str(), h.outcome.as_str(), h.count))
            .collect();
        assert_eq!(
            events,
            [("vcpus", "unsupported", 1), ("memory", "grown", 2)]
        );
        assert_eq!(s.watchdog_failed_checks, 1);
        // An older agent's 0 is unknown.
        assert_eq!(
            s.guest,
            GuestFigures {
                memory_total_bytes: Some(1024),
                memory_available_bytes: None,
                cpu_seconds: Some(2.5),
            }
        );
        c.guest_unknown();
        assert_eq!(c.snapshot("pod", 78).guest, GuestFigures::default());
    }
}
