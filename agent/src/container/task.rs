//! The Task queries and controls on an existing container: ListProcesses, PauseContainer,
//! ResumeContainer, StatsContainer, UpdateContainer, GetContainerState. All of them work on the
//! container's cgroup (see [`crate::cgroups`]).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isola_agent_proto::agent::{ProcessInfo, StatsContainerResponse};

use super::{Container, Containers, Phase};
use crate::cgroups::{self, freezer, stats, update};
use crate::error::{AgentError, Result};
use crate::process::ExitInfo;

/// How long the kernel may take to freeze or thaw a container.
const FREEZE_WAIT: Duration = Duration::from_secs(10);
/// The longest command line ListProcesses reports (bytes).
pub const MAX_COMMAND: usize = 4096;

/// A container's state as GetContainerState reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Still being created.
    Creating,
    Created,
    Running,
    Paused,
    Stopped(ExitInfo),
}

/// The command line of `pid` from `<proc>/<pid>/cmdline` (arguments joined by spaces, at most
/// [`MAX_COMMAND`] bytes), or its name from `comm` when it has none (a zombie, a kernel
/// thread); empty when the process is gone.
pub fn command(proc: &Path, pid: i32) -> String {
    let dir = proc.join(pid.to_string());
    let mut raw = Vec::new();
    if let Ok(f) = std::fs::File::open(dir.join("cmdline")) {
        let _ = f.take(MAX_COMMAND as u64).read_to_end(&mut raw);
    }
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if args.is_empty() {
        return std::fs::read_to_string(dir.join("comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
    }
    let mut line = args.join(" ");
    if line.len() > MAX_COMMAND {
        let mut end = MAX_COMMAND;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

impl Container {
    /// The container's cgroup directory.
    fn cgroup(&self) -> Result<&Path> {
        self.cgroup_dir.as_deref().ok_or_else(|| {
            AgentError::FailedPrecondition(format!("container {:?} has no cgroup", self.id))
        })
    }

    /// The exec ids of the container's live processes, by pid.
    fn exec_ids_by_pid(&self) -> HashMap<i32, String> {
        let mut known = HashMap::new();
        if let Some(pid) = self.init.pid().filter(|_| self.init.exit().is_none()) {
            known.insert(pid.as_raw(), self.init_exec_id.clone());
        }
        for (id, p) in &self.lock().execs {
            if let Some(pid) = p.pid().filter(|_| p.exit().is_none()) {
                known.insert(pid.as_raw(), id.clone());
            }
        }
        known
    }

    /// The status, from the phase, the init's exit and the freezer.
    pub fn status(&self) -> ContainerStatus {
        let (phase, paused) = {
            let st = self.lock();
            (st.phase, st.paused)
        };
        if let Some(exit) = self.init.exit() {
            return ContainerStatus::Stopped(exit);
        }
        match phase {
            Phase::Creating | Phase::Removed => ContainerStatus::Creating,
            Phase::Created => ContainerStatus::Created,
            Phase::Running if paused => ContainerStatus::Paused,
            Phase::Running => ContainerStatus::Running,
        }
    }

    /// Refuses a container that is not (or no longer) there for a request.
    fn exists(&self) -> Result<()> {
        match self.phase() {
            Phase::Removed => Err(AgentError::ContainerNotFound(self.id.clone())),
            Phase::Creating => Err(AgentError::FailedPrecondition(format!(
                "container {:?} is still being created",
                self.id
            ))),
            _ => Ok(()),
        }
    }
}

impl Containers {
    /// ListProcesses: every process in the container's cgroup, with the exec ids the host gave
    /// the ones it started.
    pub fn list_processes(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        let c = self.get(id)?;
        c.exists()?;
        let dir = c.cgroup()?;
        let pids = match cgroups::all_pids(dir) {
            Ok(pids) => pids,
            // Gone with its last process (nothing left to list).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(AgentError::io(
                    format!("listing the processes of {}", dir.display()),
                    e,
                ))
            }
        };
        let known = c.exec_ids_by_pid();
        let proc = Path::new("/proc");
        Ok(pids
            .into_iter()
            .map(|pid| ProcessInfo {
                pid: pid.as_raw() as u32,
                exec_id: known.get(&pid.as_raw()).cloned().unwrap_or_default(),
                command: command(proc, pid.as_raw()),
                ..Default::default()
            })
            .collect())
    }

    /// PauseContainer: freezes a running container.
    pub async fn pause(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        match c.status() {
            ContainerStatus::Running => {}
            ContainerStatus::Paused => {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {id:?} is already paused"
                )))
            }
            other => {
                c.exists()?;
                return Err(AgentError::FailedPrecondition(format!(
                    "container {id:?} is not running ({})",
                    describe(other)
                )));
            }
        }
        let dir = c.cgroup()?;
        if let Err(e) = freezer::set_frozen(dir, true, FREEZE_WAIT).await {
            // Leave nothing half-frozen.
            let _ = freezer::set_frozen(dir, false, FREEZE_WAIT).await;
            return Err(freeze_error(e));
        }
        c.lock().paused = true;
        tracing::info!(container_id = id, "container paused");
        Ok(())
    }

    /// ResumeContainer: thaws a paused container (also one whose init died meanwhile).
    pub async fn resume(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        c.exists()?;
        if !c.lock().paused {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} is not paused"
            )));
        }
        freezer::set_frozen(c.cgroup()?, false, FREEZE_WAIT)
            .await
            .map_err(freeze_error)?;
        c.lock().paused = false;
        tracing::info!(container_id = id, "container resumed");
        Ok(())
    }

    /// StatsContainer.
    pub fn stats(&self, id: &str) -> Result<StatsContainerResponse> {
        let c = self.get(id)?;
        c.exists()?;
        let dir = c.cgroup()?;
        stats::read(dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => AgentError::NotFound(format!(
                "the cgroup of container {id:?} ({}) is gone",
                dir.display()
            )),
            _ => AgentError::io(format!("reading the statistics of {}", dir.display()), e),
        })
    }

    /// UpdateContainer: applies OCI LinuxResources to a created, running or paused container.
    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let c = self.get(id)?;
        let resources = update::parse(resources_json)?;
        let _op = c.op.lock().await;
        c.exists()?;
        if let ContainerStatus::Stopped(exit) = c.status() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} has stopped (status {})",
                exit.code
            )));
        }
        let root = Path::new(cgroups::CGROUP_ROOT);
        let dir = c.cgroup()?;
        let relative = dir.strip_prefix(root).map_err(|_| {
            AgentError::FailedPrecondition(format!(
                "the cgroup of container {id:?} ({}) is outside {}",
                dir.display(),
                root.display()
            ))
        })?;
        update::apply(root, relative, &resources)?;
        tracing::info!(container_id = id, "container resources updated");
        Ok(())
    }

    /// GetContainerState.
    pub fn state(&self, id: &str) -> Result<(ContainerStatus, Option<i32>)> {
        let c: Arc<Container> = self.get(id)?;
        if c.phase() == Phase::Removed {
            return Err(AgentError::ContainerNotFound(id.to_string()));
        }
        Ok((c.status(), c.init.pid().map(|p| p.as_raw())))
    }
}

fn describe(status: ContainerStatus) -> String {
    match status {
        ContainerStatus::Creating => "being created".into(),
        ContainerStatus::Created => "created, not started".into(),
        ContainerStatus::Running => "running".into(),
        ContainerStatus::Paused => "paused".into(),
        ContainerStatus::Stopped(exit) => format!(
            "stopped with status {}{}",
            exit.code,
            exit.at
                .elapsed()
                .map(|d| format!(" {}s ago", d.as_secs()))
                .unwrap_or_default()
        ),
    }
}

fn freeze_error(e: freezer::FreezeError) -> AgentError {
    match e {
        freezer::FreezeError::Write { path, source } => {
            AgentError::io(format!("writing {path}"), source)
        }
        timeout @ freezer::FreezeError::Timeout { .. } => {
            AgentError::DeadlineExceeded(timeout.to_string())
        }
    }
}

/// The Unix time of an exit, in nanoseconds (0 before the epoch).
pub fn unix_nanos(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libct::Runtime;
    use crate::reaper::Reaper;
    use ttrpc::Code;

    #[test]
    fn command_lines_are_joined_bounded_or_the_name() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("7");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("cmdline"), b"sleep\x00100\x00").unwrap();
        std::fs::write(p.join("comm"), "sleep\n").unwrap();
        assert_eq!(command(d.path(), 7), "sleep 100");
        // A zombie has an empty cmdline.
        std::fs::write(p.join("cmdline"), b"").unwrap();
        assert_eq!(command(d.path(), 7), "sleep");
        let long = "x".repeat(MAX_COMMAND * 2);
        std::fs::write(p.join("cmdline"), format!("{long}\0")).unwrap();
        assert_eq!(command(d.path(), 7).len(), MAX_COMMAND);
        assert_eq!(command(d.path(), 8), "");
        // The real thing.
        let me = std::process::id() as i32;
        assert!(!command(Path::new("/proc"), me).is_empty());
    }

    #[tokio::test]
    async fn unknown_containers_are_not_found_and_bad_json_is_invalid() {
        let reaper = Reaper::default();
        let runtime = Runtime::new(reaper.clone(), "/nonexistent/libcontainer", "info");
        let cs = Containers::new(runtime, reaper, "/nonexistent/containers");
        assert_eq!(cs.list_processes("x").unwrap_err().code(), Code::NOT_FOUND);
        assert_eq!(cs.pause("x").await.unwrap_err().code(), Code::NOT_FOUND);
        assert_eq!(cs.resume("x").await.unwrap_err().code(), Code::NOT_FOUND);
        assert_eq!(cs.stats("x").unwrap_err().code(), Code::NOT_FOUND);
        assert_eq!(
            cs.update("x", b"{}").await.unwrap_err().code(),
            Code::NOT_FOUND
        );
        assert_eq!(cs.state("x").unwrap_err().code(), Code::NOT_FOUND);
    }

    #[test]
    fn statuses_are_described() {
        assert_eq!(describe(ContainerStatus::Created), "created, not started");
        let exit = ExitInfo {
            code: 137,
            at: SystemTime::now(),
        };
        assert!(describe(ContainerStatus::Stopped(exit)).starts_with("stopped with status 137"));
        assert_eq!(
            unix_nanos(SystemTime::UNIX_EPOCH + Duration::from_secs(2)),
            2_000_000_000
        );
    }
}
