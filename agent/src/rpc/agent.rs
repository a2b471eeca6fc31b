//! `Agent`: the sandbox, container and guest-management RPCs.
//!
//! Implemented now: guest details and guest time. Every other RPC answers UNIMPLEMENTED with a
//! message naming it (ttrpc's generated default would say NOT_FOUND, which misleads callers into
//! thinking an object is missing); later work replaces them one by one.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use isola_agent_proto::agent::*;
use isola_agent_proto::agent_ttrpc;
use isola_agent_proto::types::{Empty, Interface};
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};
use ttrpc::r#async::TtrpcContext;
use ttrpc::Code;

use super::guard::{guarded, rpc_error, unimplemented};
use super::sysinfo;

/// The Agent service.
pub struct AgentService;

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
            Ok(GuestDetailsResponse {
                mem_block_size_bytes: sysinfo::parse_block_size(&block).unwrap_or(0),
                mem_hotplug_probe: std::path::Path::new("/sys/devices/system/memory/probe")
                    .exists(),
                online_cpus: sysinfo::count_cpu_list(&sysinfo::read(
                    "/sys/devices/system/cpu/online",
                )),
                memory_total_bytes: sysinfo::parse_mem_total(&sysinfo::read("/proc/meminfo"))
                    .unwrap_or(0),
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

    not_yet! {
        create_sandbox(CreateSandboxRequest) -> Empty = "CreateSandbox";
        destroy_sandbox(DestroySandboxRequest) -> Empty = "DestroySandbox";
        create_container(CreateContainerRequest) -> Empty = "CreateContainer";
        start_container(StartContainerRequest) -> Empty = "StartContainer";
        remove_container(RemoveContainerRequest) -> Empty = "RemoveContainer";
        exec_process(ExecProcessRequest) -> Empty = "ExecProcess";
        signal_process(SignalProcessRequest) -> Empty = "SignalProcess";
        wait_process(WaitProcessRequest) -> WaitProcessResponse = "WaitProcess";
        tty_win_resize(TtyWinResizeRequest) -> Empty = "TtyWinResize";
        close_stdin(CloseStdinRequest) -> Empty = "CloseStdin";
        stats_container(ContainerRequest) -> StatsContainerResponse = "StatsContainer";
        pause_container(ContainerRequest) -> Empty = "PauseContainer";
        resume_container(ContainerRequest) -> Empty = "ResumeContainer";
        update_container(UpdateContainerRequest) -> Empty = "UpdateContainer";
        list_processes(ListProcessesRequest) -> ListProcessesResponse = "ListProcesses";
        update_interface(UpdateInterfaceRequest) -> Interface = "UpdateInterface";
        list_interfaces(Empty) -> Interfaces = "ListInterfaces";
        update_routes(UpdateRoutesRequest) -> Routes = "UpdateRoutes";
        list_routes(Empty) -> Routes = "ListRoutes";
        add_arp_neighbors(AddARPNeighborsRequest) -> Empty = "AddARPNeighbors";
        online_cpu_mem(OnlineCPUMemRequest) -> Empty = "OnlineCPUMem";
        get_oom_event(Empty) -> OOMEvent = "GetOOMEvent";
        copy_file(CopyFileRequest) -> Empty = "CopyFile";
    }
}
