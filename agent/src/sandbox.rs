//! The sandbox: what CreateSandbox sets up for all containers of the pod, and DestroySandbox
//! takes down.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use isola_agent_proto::agent::CreateSandboxRequest;

use crate::container::Containers;
use crate::error::{AgentError, Result};
use crate::modules::{self, ModuleError};
use crate::storage;

/// Where DNS servers from CreateSandbox are written.
const RESOLV_CONF: &str = "/etc/resolv.conf";

#[derive(Default)]
struct State {
    id: Option<String>,
    /// Sandbox storages, in mount order.
    mounts: Vec<PathBuf>,
}

/// The sandbox state.
#[derive(Default)]
pub struct Sandbox {
    state: Mutex<State>,
}

/// `/etc/resolv.conf` for CreateSandbox's `dns` entries: full lines (`nameserver 10.0.0.1`,
/// `search example.org`) are kept, bare addresses become `nameserver` lines.
pub fn resolv_conf(dns: &[String]) -> String {
    const KEYWORDS: [&str; 5] = ["nameserver", "search", "domain", "options", "sortlist"];
    let mut text = String::new();
    for entry in dns.iter().map(|d| d.trim()).filter(|d| !d.is_empty()) {
        let keyword = entry.split_whitespace().next().unwrap_or_default();
        if !KEYWORDS.contains(&keyword) {
            text.push_str("nameserver ");
        }
        text.push_str(entry);
        text.push('\n');
    }
    text
}

impl Sandbox {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sandbox id, once created.
    #[cfg(test)]
    pub fn id(&self) -> Option<String> {
        self.lock().id.clone()
    }

    /// CreateSandbox: kernel modules, hostname, DNS, storages; remembers the id.
    pub fn create(&self, req: &CreateSandboxRequest) -> Result<()> {
        let mut st = self.lock();
        if let Some(id) = &st.id {
            return Err(AgentError::AlreadyExists(format!(
                "sandbox {id:?} is already created"
            )));
        }
        if req.sandbox_id.is_empty() {
            return Err(AgentError::InvalidArgument("sandbox_id is empty".into()));
        }
        if req.sandbox_pidns {
            tracing::info!(sandbox = %req.sandbox_id, "sandbox_pidns is not used: containers share the sandbox container's PID namespace when their specs join it (shareProcessNamespace)");
        }
        modules::load_named(Path::new(modules::MODULE_DIR), &req.kernel_modules).map_err(|e| {
            match e {
                ModuleError::BadName { .. } => AgentError::InvalidArgument(e.to_string()),
                ModuleError::Open { .. } => AgentError::NotFound(e.to_string()),
                _ => AgentError::Runtime(e.to_string()),
            }
        })?;
        if !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname).map_err(|e| match e {
                nix::errno::Errno::EINVAL => AgentError::InvalidArgument(format!(
                    "hostname {:?} is not valid (at most 64 bytes)",
                    req.hostname
                )),
                e => AgentError::sys("setting the hostname", e),
            })?;
        }
        if !req.dns.is_empty() {
            std::fs::write(RESOLV_CONF, resolv_conf(&req.dns))
                .map_err(|e| AgentError::io(format!("writing {RESOLV_CONF}"), e))?;
        }
        let mut mounts = Vec::new();
        for s in &req.storages {
            match storage::mount_storage(s) {
                Ok(m) => mounts.push(m),
                Err(e) => {
                    for m in mounts.iter().rev() {
                        storage::unmount(m);
                    }
                    return Err(e);
                }
            }
        }
        st.id = Some(req.sandbox_id.clone());
        crate::logging::set_sandbox_id(&req.sandbox_id);
        st.mounts = mounts;
        tracing::info!(sandbox = %req.sandbox_id, hostname = %req.hostname, storages = st.mounts.len(), "sandbox created");
        Ok(())
    }

    /// DestroySandbox: removes every container (killing them), unmounts the sandbox storages
    /// and forgets the id. Idempotent.
    pub async fn destroy(&self, containers: &Containers) -> Result<()> {
        let mut errors = containers.remove_all().await;
        let (id, mounts) = {
            let mut st = self.lock();
            (st.id.take(), std::mem::take(&mut st.mounts))
        };
        for m in mounts.iter().rev() {
            storage::unmount(m);
        }
        tracing::info!(sandbox = ?id, "sandbox destroyed");
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            n => {
                let first = errors.remove(0);
                let rest: Vec<String> = errors.iter().map(ToString::to_string).collect();
                tracing::warn!(failures = n, others = ?rest, "DestroySandbox: several containers could not be removed");
                Err(first)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lines() {
        let dns = [
            "10.0.0.1".to_string(),
            "nameserver 10.0.0.2".into(),
            "search svc.cluster.local".into(),
            " ".into(),
            "options ndots:5".into(),
        ];
        assert_eq!(
            resolv_conf(&dns),
            "nameserver 10.0.0.1\nnameserver 10.0.0.2\nsearch svc.cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn create_checks_before_touching_the_guest() {
        let sb = Sandbox::default();
        let req = CreateSandboxRequest::default();
        assert_eq!(
            sb.create(&req).unwrap_err().code(),
            ttrpc::Code::INVALID_ARGUMENT
        );
        let req = CreateSandboxRequest {
            sandbox_id: "s".into(),
            kernel_modules: vec!["../x".into()],
            ..Default::default()
        };
        assert_eq!(
            sb.create(&req).unwrap_err().code(),
            ttrpc::Code::INVALID_ARGUMENT
        );
        assert!(sb.id().is_none());
    }
}
