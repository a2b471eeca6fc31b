//! The loopback interface of a network namespace a container gets of its own.
//!
//! runc brings `lo` up in every network namespace it creates, so `127.0.0.1` works in a
//! container started with a new one (`ctr run` without `--net-host`, a spec asking for a fresh
//! namespace); youki's libcontainer leaves it down. Pod containers share the guest's own
//! namespace, where the agent configures `lo` at boot; this is for the other kind. The agent
//! brings it up once the container's init exists, before it runs its program.

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{AgentError, Result};

/// Whether `spec` asks for a network namespace of its own (an entry without a path).
pub fn wants_new_netns(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none())
        })
}

/// Brings `lo` up in the network namespace of `pid`.
pub async fn up_in_netns_of(pid: Pid, id: &str) -> Result<()> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = File::open(&path).map_err(|e| AgentError::io(format!("opening {path}"), e))?;
    let id = id.to_string();
    // setns changes the calling thread's namespace: a thread of its own, which then ends,
    // never one of the runtime's (pooled) threads.
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || up_here(&ns, &id))
            .join()
            .unwrap_or_else(|_| Err(AgentError::Runtime("bringing lo up panicked".into())))
    })
    .await
    .map_err(|e| AgentError::Runtime(format!("bringing lo up: {e}")))?
}

fn up_here(ns: &File, id: &str) -> Result<()> {
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| {
        AgentError::sys(format!("container {id}: entering its network namespace"), e)
    })?;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| AgentError::sys("opening a socket in the container's network namespace", e))?;
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the interface named in `req` and writes its flags into `req`,
    // a valid, writable ifreq that outlives the call; `sock` is an open socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(AgentError::io(
            format!("container {id}: reading lo's flags"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the flags member of the union is the one SIOCGIFFLAGS just set.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads `req` (name and flags), valid for the call; `sock` is open.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(AgentError::io(
            format!("container {id}: bringing lo up"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, SpecBuilder};

    fn spec(ns: Vec<oci_spec::runtime::LinuxNamespace>) -> Spec {
        SpecBuilder::default()
            .linux(LinuxBuilder::default().namespaces(ns).build().unwrap())
            .build()
            .unwrap()
    }

    fn ns(typ: LinuxNamespaceType, path: Option<&str>) -> oci_spec::runtime::LinuxNamespace {
        let mut b = LinuxNamespaceBuilder::default().typ(typ);
        if let Some(p) = path {
            b = b.path(p);
        }
        b.build().unwrap()
    }

    #[test]
    fn only_a_new_network_namespace_gets_its_loopback_up() {
        assert!(wants_new_netns(&spec(vec![
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::Network, None),
        ])));
        // Joining one (a pod container joining its sandbox's): its lo is the owner's business.
        assert!(!wants_new_netns(&spec(vec![ns(
            LinuxNamespaceType::Network,
            Some("/proc/7/ns/net")
        )])));
        // The guest's own namespace (pod containers): configured at boot.
        assert!(!wants_new_netns(&spec(vec![ns(
            LinuxNamespaceType::Pid,
            None
        )])));
        // The default spec (`runc spec`'s, and ctr's without --net-host) asks for one.
        assert!(wants_new_netns(&SpecBuilder::default().build().unwrap()));
    }
}
