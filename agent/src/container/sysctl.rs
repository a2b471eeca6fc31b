//! The pod's network sysctls, set by the agent.
//!
//! A pod's network namespace in the guest is the guest's root namespace (the shim drops the CNI
//! netns path: the pod's interfaces are configured there). libcontainer, like runc, refuses a
//! `net.*` sysctl for a container without a network namespace of its own ("not allowed in host
//! network namespace"), which on a node protects the host's network. In a pod VM that namespace
//! is the pod's and nobody else's, so the agent writes the `net.*` sysctls of such a container
//! itself, then hands libcontainer the rest (the IPC ones, which it sets in the container's IPC
//! namespace). Keys are checked (only `net.` keys, no `..`, no empty or odd components) before
//! anything is written below `/proc/sys`.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{AgentError, Result};

/// The longest value written.
const MAX_VALUE: usize = 4096;

/// Takes the `net.*` sysctls out of `spec` when the container uses the guest's network
/// namespace (no network namespace entry); checks each key and value.
pub fn take_net(spec: &mut Spec, id: &str) -> Result<Vec<(String, String)>> {
    let Some(linux) = spec.linux_mut() else {
        return Ok(Vec::new());
    };
    let own_netns = linux
        .namespaces()
        .as_ref()
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
    let Some(sysctls) = linux.sysctl().clone() else {
        return Ok(Vec::new());
    };
    if own_netns {
        return Ok(Vec::new());
    }
    let (net, rest): (Vec<_>, Vec<_>) = sysctls
        .into_iter()
        .partition(|(k, _)| k.starts_with("net.") || k.starts_with("net/"));
    let mut out = Vec::with_capacity(net.len());
    for (key, value) in net {
        path_of(&key).ok_or_else(|| {
            AgentError::InvalidArgument(format!("container {id}: sysctl key {key:?} is not valid"))
        })?;
        if value.len() > MAX_VALUE || value.contains(['\0', '\n']) {
            return Err(AgentError::InvalidArgument(format!(
                "container {id}: the value of sysctl {key} is not valid"
            )));
        }
        out.push((key, value));
    }
    out.sort();
    linux.set_sysctl((!rest.is_empty()).then(|| rest.into_iter().collect()));
    Ok(out)
}

/// The path of sysctl `key` below `/proc/sys`: `net.ipv4.ip_forward` is
/// `net/ipv4/ip_forward`; a key written with slashes keeps its dots (`net/ipv4/conf/eth0.1/...`,
/// Kubernetes' form for names with dots). None for anything that is not a plain relative path
/// of simple components.
pub fn path_of(key: &str) -> Option<PathBuf> {
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    let parts: Vec<&str> = rel.split('/').collect();
    let simple = parts.len() >= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        });
    simple.then(|| parts.iter().collect())
}

/// Writes each sysctl below `proc_sys` (`/proc/sys`).
pub fn apply(sysctls: &[(String, String)], proc_sys: &Path, id: &str) -> Result<()> {
    for (key, value) in sysctls {
        let path = proc_sys.join(path_of(key).ok_or_else(|| {
            AgentError::InvalidArgument(format!("container {id}: sysctl key {key:?} is not valid"))
        })?);
        // Never create: a sysctl the kernel lacks is an error, not a new file.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, value.as_bytes()));
        written.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => AgentError::InvalidArgument(format!(
                "container {id}: sysctl {key} does not exist in the guest kernel"
            )),
            _ => AgentError::io(format!("container {id}: setting sysctl {key}"), e),
        })?;
        tracing::info!(container_id = id, key = %key, value = %value, "pod sysctl set");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: &str, sysctls: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion": "1.0.2", "linux": {{"namespaces": {namespaces}, "sysctl": {sysctls}}}}}"#
        ))
        .unwrap()
    }

    const SYSCTLS: &str = r#"{"net.core.somaxconn": "1024", "kernel.shm_rmid_forced": "1", "net/ipv4/conf/eth0.1/rp_filter": "2"}"#;

    #[test]
    fn net_sysctls_of_the_guests_netns_are_taken_the_rest_stays() {
        let mut s = spec(r#"[{"type": "ipc"}, {"type": "uts"}]"#, SYSCTLS);
        let net = take_net(&mut s, "c1").unwrap();
        assert_eq!(
            net,
            [
                ("net.core.somaxconn".to_string(), "1024".to_string()),
                (
                    "net/ipv4/conf/eth0.1/rp_filter".to_string(),
                    "2".to_string()
                )
            ]
        );
        let rest = s.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest["kernel.shm_rmid_forced"], "1");
    }

    #[test]
    fn a_container_with_its_own_netns_keeps_them_for_libcontainer() {
        let mut s = spec(r#"[{"type": "network"}]"#, SYSCTLS);
        assert!(take_net(&mut s, "c1").unwrap().is_empty());
        assert_eq!(
            s.linux().as_ref().unwrap().sysctl().as_ref().unwrap().len(),
            3
        );
    }

    #[test]
    fn keys_and_values_are_checked() {
        assert_eq!(
            path_of("net.ipv4.ip_forward").unwrap(),
            Path::new("net/ipv4/ip_forward")
        );
        assert_eq!(
            path_of("net/ipv4/conf/eth0.1/rp_filter").unwrap(),
            Path::new("net/ipv4/conf/eth0.1/rp_filter")
        );
        for bad in [
            "net/../../etc/passwd",
            "/net/x",
            "net..x",
            "net",
            "net/a b",
            "net/./x",
        ] {
            assert_eq!(path_of(bad), None, "{bad}");
        }
        let mut s = spec("[]", r#"{"net/../../x": "1"}"#);
        assert!(take_net(&mut s, "c1")
            .unwrap_err()
            .to_string()
            .contains("not valid"));
        let mut s = spec("[]", r#"{"net.core.somaxconn": "1\n2"}"#);
        assert!(take_net(&mut s, "c1").is_err());
    }

    #[test]
    fn values_are_written_below_proc_sys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net/core")).unwrap();
        std::fs::write(dir.path().join("net/core/somaxconn"), "128").unwrap();
        apply(
            &[("net.core.somaxconn".into(), "1024".into())],
            dir.path(),
            "c1",
        )
        .unwrap();
        let got = std::fs::read_to_string(dir.path().join("net/core/somaxconn")).unwrap();
        assert_eq!(got, "1024");
        let e = apply(&[("net.core.nope".into(), "1".into())], dir.path(), "c1").unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
