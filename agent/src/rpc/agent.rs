//! `Agent`: the sandbox, container and guest-management RPCs.
//!
//! Implemented: the sandbox (CreateSandbox, DestroySandbox), containers and processes
//! (create, start, exec, signal, wait, remove, tty resize, close stdin), the Task queries and
//! controls (ListProcesses, Pause/ResumeContainer, StatsContainer, UpdateContainer,
//! GetContainerState), GetOOMEvent, OnlineCPUMem, guest details and guest time, pod networking
//! (UpdateInterface, UpdateRoutes, AddARPNeighbors, ListInterfaces, ListRoutes). Every other RPC
//! answers UNIMPLEMENTED with a message naming it (ttrpc's generated default would say
//! NOT_FOUND, which misleads callers into thinking an object is missing).
//! Handlers only translate between protobuf and [`crate::container`] / [`crate::sandbox`];
//! errors become status codes in one place ([`crate::error`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use isola_agent_proto::agent::*;
use isola_agent_proto::agent_ttrpc;
use isola_agent_proto::types::{Empty, Interface};
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};
use protobuf::MessageField;
use tracing::Instrument;
use ttrpc::r#async::TtrpcContext;
use ttrpc::Code;

use super::guard::{guarded, rpc_error, unimplemented};
use super::sysinfo;
use crate::boot;
use crate::container::{ContainerStatus, Containers, CreateRequest};
use crate::error::AgentError;
use crate::hotplug;
use crate::network;
use crate::sandbox::Sandbox;
use crate::stdio::StdioWanted;

/// The Agent service.
pub struct AgentService {
    pub sandbox: Sandbox,
    pub containers: Arc<Containers>,
}

impl AgentService {
    pub fn new(containers: Arc<Containers>) -> AgentService {
        AgentService {
            sandbox: Sandbox::default(),
            containers,
        }
    }
}

/// How long GetOOMEvent may wait for a call with ttrpc timeout `timeout_nano` (0: none): a
/// little less than the timeout (a tenth, at most a second), so that it answers
/// DEADLINE_EXCEEDED, taking no event, before the caller gives up on it.
fn oom_wait(timeout_nano: i64) -> Option<Duration> {
    let timeout = Duration::from_nanos(u64::try_from(timeout_nano).ok().filter(|t| *t > 0)?);
    Some(timeout - (timeout / 10).min(Duration::from_secs(1)))
}

fn wanted(stdio: &MessageField<StdioConfig>) -> StdioWanted {
    stdio
        .as_ref()
        .map(|s| StdioWanted {
            stdin: s.stdin,
            stdout: s.stdout,
            stderr: s.stderr,
            terminal: s.terminal,
        })
        .unwrap_or_default()
}

/// Answers the listed RPCs with UNIMPLEMENTED. `#[async_trait]` runs before this macro expands,
/// so the methods are written in the form it would have produced.
macro_rules! not_yet {
    ($($method:ident($req:ty) -> $resp:ty = $name:literal;)*) => {
        $(
            fn $method<'life0, 'life1, 'async_trait>(
                &'life0 self,
                _ctx: &'life1 TtrpcContext,
                _req: $req,
            ) -> Pin<Box<dyn Future<Output = ttrpc::Result<$resp>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async { Err(unimplemented($name)) })
            }
        )*
    };
}

#[async_trait]
impl agent_ttrpc::Agent for AgentService {
    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        _req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        guarded("GetGuestDetails", async {
            let block = sysinfo::read("/sys/devices/system/memory/block_size_bytes");
            let meminfo = sysinfo::read("/proc/meminfo");
            // The `cpu` line comes first; the rest (per-CPU lines, interrupts) can be long.
            let stat = sysinfo::read_head("/proc/stat", 4096);
            Ok(GuestDetailsResponse {
                mem_block_size_bytes: sysinfo::parse_block_size(&block).unwrap_or(0),
                mem_hotplug_probe: std::path::Path::new("/sys/devices/system/memory/probe")
                    .exists(),
                online_cpus: sysinfo::count_cpu_list(&sysinfo::read(
                    "/sys/devices/system/cpu/online",
                )),
                memory_total_bytes: sysinfo::parse_mem_total(&meminfo).unwrap_or(0),
                memory_available_bytes: sysinfo::parse_mem_available(&meminfo).unwrap_or(0),
                cpu_seconds: sysinfo::parse_cpu_seconds(&stat, sysinfo::clk_tck()).unwrap_or(0.0),
                kernel_release: sysinfo::kernel_release(),
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                ..Default::default()
            })
        })
        .await
    }

    async fn set_guest_date_time(
        &self,
        _ctx: &TtrpcContext,
        req: SetGuestDateTimeRequest,
    ) -> ttrpc::Result<Empty> {
        guarded("SetGuestDateTime", async {
            if req.sec < 0 || !(0..1_000_000).contains(&req.usec) {
                return Err(rpc_error(
                    Code::INVALID_ARGUMENT,
                    format!(
                        "SetGuestDateTime: sec={} usec={} is not a valid time (sec >= 0, 0 <= usec < 1000000)",
                        req.sec, req.usec
                    ),
                ));
            }
            let ts = TimeSpec::new(req.sec, req.usec * 1000);
            clock_settime(ClockId::CLOCK_REALTIME, ts).map_err(|e| {
                rpc_error(Code::INTERNAL, format!("SetGuestDateTime: clock_settime failed: {e}"))
            })?;
            Ok(Empty::default())
        })
        .await
    }

    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let span = tracing::info_span!("CreateSandbox", sandbox = %req.sandbox_id);
        guarded("CreateSandbox", async {
            // Before anything else: the clock and RNG of a clone are its template's.
            crate::reseed::set_clock(req.host_time_sec, req.host_time_nsec)?;
            crate::reseed::add_entropy(&req.entropy)?;
            crate::boot::settled().await;
            crate::storage::wait_for_virtiofs(&req.storages).await?;
            self.sandbox.create(&req)?;
            Ok(Empty::default())
        })
        .instrument(span)
        .await
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        guarded("DestroySandbox", async {
            self.sandbox.destroy(&self.containers).await?;
            Ok(Empty::default())
        })
        .await
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let span = tracing::info_span!("CreateContainer", container_id = %req.container_id);
        guarded("CreateContainer", async {
            crate::boot::settled().await;
            let stdio = wanted(&req.stdio);
            self.containers
                .create(CreateRequest {
                    id: req.container_id,
                    init_exec_id: req.exec_id,
                    spec_json: req.oci_spec_json,
                    storages: req.storages,
                    stdio,
                })
                .await?;
            Ok(Empty::default())
        })
        .instrument(span)
        .await
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let span = tracing::info_span!("StartContainer", container_id = %req.container_id);
        guarded("StartContainer", async {
            self.containers.start(&req.container_id).await?;
            Ok(Empty::default())
        })
        .instrument(span)
        .await
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let span = tracing::info_span!("RemoveContainer", container_id = %req.container_id);
        guarded("RemoveContainer", async {
            self.containers
                .remove(&req.container_id, req.timeout)
                .await?;
            Ok(Empty::default())
        })
        .instrument(span)
        .await
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let span = tracing::info_span!("ExecProcess", container_id = %req.container_id, exec_id = %req.exec_id);
        guarded("ExecProcess", async {
            self.containers
                .exec(
                    &req.container_id,
                    &req.exec_id,
                    &req.process_json,
                    wanted(&req.stdio),
                )
                .await?;
            Ok(Empty::default())
        })
        .instrument(span)
        .await
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let span = tracing::info_span!("SignalProcess", container_id = %req.container_id, exec_id = %req.exec_id);
        guarded("SignalProcess", async {
            self.containers
                .signal(&req.container_id, &req.exec_id, req.signal, req.all)?;
            Ok(Empty::default())
        })
        .instrument(span)
        .await
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let span = tracing::info_span!("WaitProcess", container_id = %req.container_id, exec_id = %req.exec_id);
        guarded("WaitProcess", async {
            let exit = self
                .containers
                .wait(&req.container_id, &req.exec_id)
                .await?;
            Ok(WaitProcessResponse {
                status: exit.code,
                exited_at_unix_nanos: crate::container::unix_nanos(exit.at),
                ..Default::default()
            })
        })
        .instrument(span)
        .await
    }

    async fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        let span = tracing::info_span!("TtyWinResize", container_id = %req.container_id, exec_id = %req.exec_id);
        guarded("TtyWinResize", async {
            self.containers
                .resize(&req.container_id, &req.exec_id, req.row, req.column)?;
            Ok(Empty::default())
        })
        .instrument(span)
        .await
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
        let span = tracing::info_span!("CloseStdin", container_id = %req.container_id, exec_id = %req.exec_id);
        guarded("CloseStdin", async {
            self.containers
                .close_stdin(&req.container_id, &req.exec_id)?;
            Ok(Empty::default())
        })
        .instrument(span)
        .await
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        guarded("ListProcesses", async {
            Ok(ListProcessesResponse {
                processes: self.containers.list_processes(&req.container_id)?,
                ..Default::default()
            })
        })
        .await
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let span = tracing::info_span!("PauseContainer", container_id = %req.container_id);
        guarded("PauseContainer", async {
            self.containers.pause(&req.container_id).await?;
            Ok(Empty::default())
        })
        .instrument(span)
        .await
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let span = tracing::info_span!("ResumeContainer", container_id = %req.container_id);
        guarded("ResumeContainer", async {
            self.containers.resume(&req.container_id).await?;
            Ok(Empty::default())
        })
        .instrument(span)
        .await
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        guarded("StatsContainer", async {
            Ok(self.containers.stats(&req.container_id)?)
        })
        .await
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let span = tracing::info_span!("UpdateContainer", container_id = %req.container_id);
        guarded("UpdateContainer", async {
            self.containers
                .update(&req.container_id, &req.resources_json)
                .await?;
            Ok(Empty::default())
        })
        .instrument(span)
        .await
    }

    async fn get_container_state(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<ContainerStateResponse> {
        use container_state_response::Status;
        guarded("GetContainerState", async {
            let (status, pid) = self.containers.state(&req.container_id)?;
            let mut resp = ContainerStateResponse {
                pid: pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                ..Default::default()
            };
            resp.status = match status {
                ContainerStatus::Creating => Status::UNKNOWN,
                ContainerStatus::Created => Status::CREATED,
                ContainerStatus::Running => Status::RUNNING,
                ContainerStatus::Paused => Status::PAUSED,
                ContainerStatus::Stopped(exit) => {
                    resp.exit_status = exit.code;
                    resp.exited_at_unix_nanos = crate::container::unix_nanos(exit.at);
                    Status::STOPPED
                }
            }
            .into();
            Ok(resp)
        })
        .await
    }

    async fn get_oom_event(&self, ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<OOMEvent> {
        guarded("GetOOMEvent", async {
            let next = self.containers.oom().next();
            let container_id = match oom_wait(ctx.timeout_nano) {
                None => next.await,
                Some(wait) => tokio::time::timeout(wait, next).await.map_err(|_| {
                    rpc_error(
                        Code::DEADLINE_EXCEEDED,
                        format!("GetOOMEvent: no container was OOM-killed within {wait:?}"),
                    )
                })?,
            };
            Ok(OOMEvent {
                container_id,
                ..Default::default()
            })
        })
        .await
    }

    async fn online_cpu_mem(
        &self,
        _ctx: &TtrpcContext,
        req: OnlineCPUMemRequest,
    ) -> ttrpc::Result<Empty> {
        guarded("OnlineCPUMem", async {
            let want = hotplug::Wanted {
                nb_cpus: req.nb_cpus,
                cpu_only: req.cpu_only,
                memory_mib: req.memory_mib,
            };
            hotplug::online(
                std::path::Path::new(hotplug::SYSFS),
                want,
                hotplug::HOTPLUG_WAIT,
            )
            .await?;
            Ok(Empty::default())
        })
        .await
    }

    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> ttrpc::Result<Interface> {
        guarded("UpdateInterface", async {
            let Some(iface) = req.interface.as_ref() else {
                return Err(AgentError::InvalidArgument(
                    "UpdateInterface without an interface".into(),
                )
                .into());
            };
            let spec = network::parse_interface(iface)?;
            // The virtio-net driver loads in the background boot work.
            boot::settled().await;
            Ok(network::ops::update_interface(spec).await?)
        })
        .await
    }

    async fn list_interfaces(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Interfaces> {
        guarded("ListInterfaces", async {
            Ok(Interfaces {
                interfaces: network::ops::list_interfaces().await?,
                ..Default::default()
            })
        })
        .await
    }

    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateRoutesRequest,
    ) -> ttrpc::Result<Routes> {
        guarded("UpdateRoutes", async {
            let routes = req
                .routes
                .as_ref()
                .map(|r| r.routes.as_slice())
                .unwrap_or_default();
            let specs = network::parse_all(routes, "routes", network::parse_route)?;
            boot::settled().await;
            Ok(Routes {
                routes: network::ops::update_routes(specs).await?,
                ..Default::default()
            })
        })
        .await
    }

    async fn list_routes(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Routes> {
        guarded("ListRoutes", async {
            Ok(Routes {
                routes: network::ops::list_routes().await?,
                ..Default::default()
            })
        })
        .await
    }

    async fn add_arp_neighbors(
        &self,
        _ctx: &TtrpcContext,
        req: AddARPNeighborsRequest,
    ) -> ttrpc::Result<Empty> {
        guarded("AddARPNeighbors", async {
            let specs = network::parse_all(&req.neighbors, "neighbours", network::parse_neighbor)?;
            boot::settled().await;
            network::ops::add_neighbors(specs).await?;
            Ok(Empty::default())
        })
        .await
    }

    not_yet! {
        copy_file(CopyFileRequest) -> Empty = "CopyFile";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_waits_answer_before_the_callers_timeout() {
        assert_eq!(oom_wait(0), None);
        assert_eq!(oom_wait(-5), None);
        assert_eq!(oom_wait(10_000_000_000), Some(Duration::from_secs(9)));
        assert_eq!(oom_wait(60_000_000_000), Some(Duration::from_secs(59)));
        assert_eq!(oom_wait(500_000_000), Some(Duration::from_millis(450)));
    }
}
