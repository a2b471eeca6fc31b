//! containerd's Task API (ttrpc) on top of [`Service`], served under both service names
//! containerd uses: `containerd.task.v2.Task` (containerd 1.6/1.7) and `containerd.task.v3.Task`
//! (2.x). The two are the same messages under a new name.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::shim::shim::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::shim_async::{create_task, Task};
use protobuf::well_known_types::empty::Empty;
use protobuf::well_known_types::timestamp::Timestamp;
use ttrpc::r#async::TtrpcContext;

use crate::error::{to_ttrpc, ShimError};
use crate::service::Service;
use crate::stdio::StdioPaths;

/// The service names the Task API is registered under.
pub const TASK_SERVICE_NAMES: [&str; 2] = ["containerd.task.v2.Task", "containerd.task.v3.Task"];

/// The ttrpc face of the task service.
pub struct TaskService {
    service: Arc<Service>,
}

impl TaskService {
    /// Wraps the service.
    pub fn new(service: Arc<Service>) -> TaskService {
        TaskService { service }
    }
}

/// The ttrpc services to register: the task service under every name in
/// [`TASK_SERVICE_NAMES`].
pub fn services(task: Arc<TaskService>) -> HashMap<String, ttrpc::r#async::Service> {
    let mut out = HashMap::new();
    for name in TASK_SERVICE_NAMES {
        let generated = create_task(task.clone());
        for (_, service) in generated {
            out.insert(name.to_string(), service);
        }
    }
    out
}

type TtResult<T> = ttrpc::Result<T>;

/// What Checkpoint (and Create from a checkpoint) answer.
pub const CHECKPOINT_UNSUPPORTED: &str = "checkpoint/restore is not supported by isola: a container's processes live in its pod's VM, which isola does not snapshot";

impl TaskService {
    /// Runs one request in a span carrying the sandbox, container and exec ids (Create
    /// records the sandbox id itself once it has read the spec), logging failures.
    async fn call<T>(
        &self,
        call: &'static str,
        id: &str,
        exec_id: &str,
        fut: impl std::future::Future<Output = Result<T, ShimError>>,
    ) -> TtResult<T> {
        let sandbox = self.service.sandbox_name();
        let span = if sandbox.is_empty() || call == "Create" {
            tracing::info_span!("task", call, sandbox_id = tracing::field::Empty, container_id = %id, exec_id = %exec_id)
        } else {
            tracing::info_span!("task", call, sandbox_id = %sandbox, container_id = %id, exec_id = %exec_id)
        };
        tracing::Instrument::instrument(
            async move {
                fut.await.map_err(|e| {
                    tracing::info!(code = ?e.code(), error = %e, "request failed");
                    to_ttrpc(e)
                })
            },
            span,
        )
        .await
    }
}

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtResult<StateResponse> {
        self.call("State", &req.id, &req.exec_id, async {
            self.service.state(&req.id, &req.exec_id)
        })
        .await
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtResult<CreateTaskResponse> {
        let id = req.id.clone();
        let pid = self
            .call("Create", &id, "", self.service.create(req))
            .await?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtResult<StartResponse> {
        let pid = self
            .call(
                "Start",
                &req.id,
                &req.exec_id,
                self.service.start(&req.id, &req.exec_id),
            )
            .await?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtResult<DeleteResponse> {
        let (pid, exit) = self
            .call(
                "Delete",
                &req.id,
                &req.exec_id,
                self.service.delete(&req.id, &req.exec_id),
            )
            .await?;
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(Timestamp::from(exit.at)).into(),
            ..Default::default()
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtResult<PidsResponse> {
        let processes = self
            .call("Pids", &req.id, "", self.service.pids(&req.id))
            .await?;
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtResult<Empty> {
        self.call("Pause", &req.id, "", self.service.pause(&req.id))
            .await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtResult<Empty> {
        self.call("Resume", &req.id, "", self.service.resume(&req.id))
            .await?;
        Ok(Empty::new())
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, req: CheckpointTaskRequest) -> TtResult<Empty> {
        self.call("Checkpoint", &req.id, "", async {
            Err::<(), _>(ShimError::Unimplemented(CHECKPOINT_UNSUPPORTED.into()))
        })
        .await
        .map(|_| Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtResult<Empty> {
        self.call(
            "Kill",
            &req.id,
            &req.exec_id,
            self.service
                .kill(&req.id, &req.exec_id, req.signal, req.all),
        )
        .await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtResult<Empty> {
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        self.call("Exec", &req.id, &req.exec_id, async {
            self.service.exec(&req.id, &req.exec_id, stdio, spec)
        })
        .await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtResult<Empty> {
        self.call(
            "ResizePty",
            &req.id,
            &req.exec_id,
            self.service
                .resize_pty(&req.id, &req.exec_id, req.width, req.height),
        )
        .await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtResult<Empty> {
        self.call("CloseIO", &req.id, &req.exec_id, async {
            self.service.close_io(&req.id, &req.exec_id, req.stdin)
        })
        .await?;
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtResult<Empty> {
        self.call(
            "Update",
            &req.id,
            "",
            self.service.update(&req.id, req.resources.as_ref()),
        )
        .await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtResult<WaitResponse> {
        let exit = self
            .call(
                "Wait",
                &req.id,
                &req.exec_id,
                self.service.wait(&req.id, &req.exec_id),
            )
            .await?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(Timestamp::from(exit.at)).into(),
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtResult<StatsResponse> {
        let stats = self
            .call("Stats", &req.id, "", self.service.stats(&req.id))
            .await?;
        Ok(StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtResult<ConnectResponse> {
        let task_pid = self.service.task_pid(&req.id).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: format!("isola {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TtResult<Empty> {
        self.call("Shutdown", &req.id, "", self.service.shutdown(req.now))
            .await?;
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::Env;
    use containerd_shim_protos::shim_async::TaskClient;
    use protobuf::Message;
    use ttrpc::r#async::transport::Listener;
    use ttrpc::r#async::{Client, Server};
    use ttrpc::Code;

    async fn serve(env: &Env) -> (Server, Client) {
        let path = env.tmp.path().join("shim.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut server = Server::new()
            .add_listener(Listener::try_from(listener).unwrap())
            .register_service(services(Arc::new(TaskService::new(env.service.clone()))));
        server.start().await.unwrap();
        let client = Client::connect(&format!("unix://{}", path.display()))
            .await
            .unwrap();
        (server, client)
    }

    fn status_code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Code {
        match r.expect_err("expected an error") {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[tokio::test]
    async fn both_task_api_names_are_served() {
        let env = Env::new();
        let (mut server, client) = serve(&env).await;
        let ctx = || ttrpc::context::with_timeout(5_000_000_000);
        // task v3 through the generated client.
        let task = TaskClient::new(client.clone());
        let req = env.request("c1", "{}");
        let created = task.create(ctx(), &req).await.unwrap();
        assert_eq!(created.pid, 4242);
        let st = task
            .state(
                ctx(),
                &StateRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(st.bundle, req.bundle);
        let missing = task
            .state(
                ctx(),
                &StateRequest {
                    id: "nope".into(),
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(status_code(missing), Code::NOT_FOUND);
        let paused = task
            .pause(
                ctx(),
                &PauseRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await;
        // Created, not running.
        assert_eq!(status_code(paused), Code::FAILED_PRECONDITION);
        let ckpt = task
            .checkpoint(ctx(), &CheckpointTaskRequest::default())
            .await;
        match ckpt.expect_err("checkpoint must fail") {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::UNIMPLEMENTED);
                assert!(
                    s.message
                        .contains("checkpoint/restore is not supported by isola"),
                    "{}",
                    s.message
                );
            }
            other => panic!("not a status: {other:?}"),
        }

        // task v2 (containerd 1.6/1.7): the same messages under the old name.
        let payload = StateRequest {
            id: "c1".into(),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap();
        let resp = client
            .request(ttrpc::Request {
                service: "containerd.task.v2.Task".into(),
                method: "State".into(),
                payload,
                timeout_nano: 5_000_000_000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            resp.status.as_ref().map(|s| s.code()).unwrap_or(Code::OK),
            Code::OK
        );
        let st = StateResponse::parse_from_bytes(&resp.payload).unwrap();
        assert_eq!(st.id, "c1");

        let connected = task
            .connect(
                ctx(),
                &ConnectRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            (connected.shim_pid, connected.task_pid),
            (std::process::id(), 4242)
        );
        server.shutdown().await.unwrap();
    }
}
