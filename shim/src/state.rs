//! The task service's bookkeeping: containers, their processes and each process's lifecycle
//! (Created -> Running -> Stopped), with exit notification for any number of waiters.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::error::{Result, ShimError};
use crate::stdio::{ProcessIo, StdioPaths};

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

/// How and when a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code; 128+N for signal N; 255 when the VM died under it.
    pub status: u32,
    pub at: SystemTime,
}

/// A container's init or exec process.
pub struct Process {
    pub exec_id: String,
    pub stdio: StdioPaths,
    pub status: Status,
    /// A Start is in flight (rejects a second one).
    pub starting: bool,
    /// The exec's OCI Process as JSON (empty for init).
    pub spec_json: Vec<u8>,
    pub io: Option<Arc<ProcessIo>>,
    /// CloseIO(stdin) arrived (applied when the stdio attaches, if it has not yet).
    pub stdin_closed: bool,
    /// A task waits for this process's exit in the guest.
    pub watching: bool,
    exit: watch::Sender<Option<ExitInfo>>,
}

impl Process {
    /// A process that has not started.
    pub fn new(exec_id: &str, stdio: StdioPaths, spec_json: Vec<u8>) -> Process {
        Process {
            exec_id: exec_id.to_string(),
            stdio,
            status: Status::Created,
            starting: false,
            spec_json,
            io: None,
            stdin_closed: false,
            watching: false,
            exit: watch::channel(None).0,
        }
    }

    /// The exit, once stopped.
    pub fn exit(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// A receiver that sees the exit.
    pub fn subscribe(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exit.subscribe()
    }

    /// Records the exit. Returns false (and changes nothing) when it was already recorded.
    pub fn set_exited(&mut self, status: u32) -> bool {
        if self.status == Status::Stopped {
            return false;
        }
        self.status = Status::Stopped;
        self.starting = false;
        if let Some(io) = self.io.take() {
            io.abort();
        }
        self.exit.send_replace(Some(ExitInfo {
            status,
            at: SystemTime::now(),
        }));
        true
    }

    /// What Delete reports: the exit, or status 0 now for a process that never ran.
    pub fn delete_info(&self) -> ExitInfo {
        self.exit().unwrap_or(ExitInfo {
            status: 0,
            at: SystemTime::now(),
        })
    }

    fn describe(&self, cid: &str) -> String {
        if self.exec_id.is_empty() {
            format!("container {cid}")
        } else {
            format!("exec {} of container {cid}", self.exec_id)
        }
    }
}

/// One container of the sandbox.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    /// The pid given to containerd (the VMM's).
    pub pid: u32,
    /// Create has not finished yet (or Delete has begun): invisible to other calls.
    pub busy: bool,
    /// Frozen by Pause (until Resume, or until its init process exits).
    pub paused: bool,
    pub init: Process,
    pub execs: HashMap<String, Process>,
}

impl Container {
    /// The process named by `exec_id` (empty = init).
    pub fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} of container {}", self.id)))
    }

    /// [`process`](Self::process), mutably.
    pub fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let id = self.id.clone();
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} of container {id}")))
    }
}

/// All containers of the shim.
#[derive(Default)]
pub struct Containers {
    map: HashMap<String, Container>,
}

impl Containers {
    /// Reserves `id` for a Create in progress.
    pub fn reserve(&mut self, id: &str, bundle: PathBuf, init: Process) -> Result<()> {
        if self.map.contains_key(id) {
            return Err(ShimError::AlreadyExists(format!("container {id}")));
        }
        self.map.insert(
            id.to_string(),
            Container {
                id: id.to_string(),
                bundle,
                pid: 0,
                busy: true,
                paused: false,
                init,
                execs: HashMap::new(),
            },
        );
        Ok(())
    }

    /// A container that finished creating.
    pub fn get(&self, id: &str) -> Result<&Container> {
        self.map
            .get(id)
            .filter(|c| !c.busy)
            .ok_or_else(|| ShimError::NotFound(format!("container {id}")))
    }

    /// [`get`](Self::get), mutably.
    pub fn get_mut(&mut self, id: &str) -> Result<&mut Container> {
        self.map
            .get_mut(id)
            .filter(|c| !c.busy)
            .ok_or_else(|| ShimError::NotFound(format!("container {id}")))
    }

    /// A container whatever its state (for Create and Delete themselves).
    pub fn get_any_mut(&mut self, id: &str) -> Option<&mut Container> {
        self.map.get_mut(id)
    }

    /// Forgets a container.
    pub fn remove(&mut self, id: &str) -> Option<Container> {
        self.map.remove(id)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Every container, for marking them all exited.
    pub fn all_mut(&mut self) -> impl Iterator<Item = &mut Container> {
        self.map.values_mut()
    }

    /// Whether the pod has ended: its sandbox container `sandbox_id` is here and has exited,
    /// and so has every container's init; no container is being created or deleted and no
    /// process is starting or running. Nothing can run in the VM any more.
    pub fn pod_ended(&self, sandbox_id: &str) -> bool {
        // The sandbox container is one of them: the pass below sees its init too.
        let over = |p: &Process| p.status != Status::Running && !p.starting;
        self.map.contains_key(sandbox_id)
            && self
                .map
                .values()
                .all(|c| !c.busy && c.init.status == Status::Stopped && c.execs.values().all(over))
    }

    /// Marks `Start` in flight for a process, checking it may start.
    pub fn begin_start(&mut self, id: &str, exec_id: &str) -> Result<()> {
        let container = self.get_mut(id)?;
        let init_running = container.init.status == Status::Running;
        let p = container.process_mut(exec_id)?;
        let what = p.describe(id);
        match p.status {
            Status::Created if p.starting => Err(ShimError::FailedPrecondition(format!(
                "{what} is already being started"
            ))),
            Status::Created if !exec_id.is_empty() && !init_running => {
                Err(ShimError::FailedPrecondition(format!(
                    "{what} cannot start: the container's init process is not running"
                )))
            }
            Status::Created => {
                p.starting = true;
                Ok(())
            }
            Status::Running => Err(ShimError::FailedPrecondition(format!(
                "{what} is already running"
            ))),
            Status::Stopped => Err(ShimError::FailedPrecondition(format!(
                "{what} has already exited: delete it and create a new one"
            ))),
        }
    }
}
