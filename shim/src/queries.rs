//! The task service's smaller calls: State, Wait, Pids, ResizePty, CloseIO, Connect.

use containerd_shim_protos::shim::shim::StateResponse;
use containerd_shim_protos::types::task::{ProcessInfo, Status as TaskStatus};
use ttrpc::Code;

use protobuf::well_known_types::any::Any;

use crate::error::{Result, ShimError};
use crate::service::Service;
use crate::state::{ExitInfo, Status};

impl Service {
    /// State of a process.
    pub fn state(&self, id: &str, exec_id: &str) -> Result<StateResponse> {
        let containers = self.containers.lock().unwrap();
        let c = containers.get(id)?;
        let p = c.process(exec_id)?;
        let status = match p.status {
            Status::Created => TaskStatus::CREATED,
            // A paused container's running processes are all frozen.
            Status::Running if c.paused => TaskStatus::PAUSED,
            Status::Running => TaskStatus::RUNNING,
            Status::Stopped => TaskStatus::STOPPED,
        };
        let exit = p.exit();
        Ok(StateResponse {
            id: id.to_string(),
            bundle: c.bundle.display().to_string(),
            pid: c.pid,
            status: status.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: exit
                .map(|e| protobuf::well_known_types::timestamp::Timestamp::from(e.at))
                .into(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        })
    }

    /// Waits until a process has exited (and its output has been copied).
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        let mut rx = {
            let containers = self.containers.lock().unwrap();
            containers.get(id)?.process(exec_id)?.subscribe()
        };
        let exit = rx.wait_for(Option::is_some).await.map_err(|_| {
            ShimError::NotFound(format!("process {id}/{exec_id}: deleted while waiting"))
        })?;
        Ok(exit.expect("waited for Some"))
    }

    /// The container's processes: as the agent lists them, or just the task's pid when the
    /// agent cannot list. The pids are the guest's (see the README), an exec's `info` names
    /// its exec id as runc's shim does (`containerd.runc.v1.ProcessDetails`).
    pub async fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        let pid = self.containers.lock().unwrap().get(id)?.pid;
        let basic = vec![ProcessInfo {
            pid,
            ..Default::default()
        }];
        let Some(sandbox) = self.pod.ready() else {
            return Ok(basic);
        };
        match sandbox.agent.list_processes(id).await {
            Ok(list) => Ok(list
                .into_iter()
                .map(|p| ProcessInfo {
                    pid: p.pid,
                    info: (!p.exec_id.is_empty())
                        .then(|| process_details(&p.exec_id))
                        .into(),
                    ..Default::default()
                })
                .collect()),
            Err(ShimError::Agent {
                code: Code::UNIMPLEMENTED,
                ..
            }) => Ok(basic),
            Err(e) => Err(e),
        }
    }

    /// Resizes a process's terminal.
    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        {
            let containers = self.containers.lock().unwrap();
            let p = containers.get(id)?.process(exec_id)?;
            if !p.stdio.terminal {
                return Err(ShimError::FailedPrecondition(format!(
                    "process {id}/{exec_id} has no terminal to resize"
                )));
            }
            if p.status == Status::Stopped {
                return Err(ShimError::NotFound(format!(
                    "process {id}/{exec_id}: it has exited"
                )));
            }
        }
        let sandbox = self
            .pod
            .ready()
            .ok_or_else(|| ShimError::FailedPrecondition("the sandbox VM is not running".into()))?;
        sandbox.agent.resize_pty(id, exec_id, height, width).await
    }

    /// Closes a process's stdin once the client's writer is closed too.
    pub fn close_io(&self, id: &str, exec_id: &str, stdin: bool) -> Result<()> {
        let mut containers = self.containers.lock().unwrap();
        let p = containers.get_mut(id)?.process_mut(exec_id)?;
        if stdin {
            p.stdin_closed = true;
            if let Some(io) = &p.io {
                io.close_stdin();
            }
        }
        Ok(())
    }

    /// The task pid for Connect: the VMM's, 0 before a VM runs.
    pub fn task_pid(&self, id: &str) -> Result<u32> {
        Ok(self.containers.lock().unwrap().get(id)?.pid)
    }
}

/// containerd's type URL for the per-process details runc's shim returns from Pids (`ctr task
/// ps` decodes it; the message is in every containerd build).
pub const PROCESS_DETAILS_TYPE_URL: &str = "containerd.runc.v1.ProcessDetails";

/// `containerd.runc.v1.ProcessDetails { string exec_id = 1; }`, encoded by hand (one field).
pub fn process_details(exec_id: &str) -> Any {
    let mut value = vec![0x0a];
    let mut len = exec_id.len();
    while len >= 0x80 {
        value.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    value.push(len as u8);
    value.extend_from_slice(exec_id.as_bytes());
    Any {
        type_url: PROCESS_DETAILS_TYPE_URL.to_string(),
        value,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    #[test]
    fn process_details_is_a_string_field_one() {
        let any = process_details("e1");
        assert_eq!(any.value, [0x0a, 2, b'e', b'1']);
        // Same bytes as any one-string-field message, e.g. an Any whose type_url is the id.
        let long = "x".repeat(200);
        let parsed = Any::parse_from_bytes(&process_details(&long).value).unwrap();
        assert_eq!(parsed.type_url, long);
    }
}
