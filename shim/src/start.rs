//! The `start` action: find or spawn the shim serving this container's sandbox, print its
//! address.
//!
//! Grouping: a container whose annotations name a sandbox (CRI's
//! `io.kubernetes.cri.sandbox-id`, CRI-O's `io.kubernetes.cri-o.SandboxID`) gets the socket of
//! that sandbox's shim, so one pod = one shim = one VM; the socket address is derived from the
//! sandbox id the way containerd's shims do it.
//!
//! Reply format: containerd 2.3+ sends `BootstrapParams` on stdin and reads a
//! `BootstrapResult`; older versions read the address as text. A bare address is what
//! containerd 1.6 understands, and 1.7-2.2 take it for a task-v2 shim, which this shim also is
//! (it serves both task API names).

use std::io::{IsTerminal, Read};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use containerd_shim::bootstrap::{BootstrapParams, BootstrapResult};
use containerd_shim::{Flags, StartOpts};
use oci_spec::runtime::Spec;
use protobuf::Message;

use crate::error::{Result, ShimError};
use crate::options;

/// Task API version announced in a BootstrapResult.
const TASK_API_VERSION: i32 = 3;
/// How long the spawned server gets to start listening.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How containerd talked to us.
#[derive(Debug, Clone, PartialEq)]
pub enum Protocol {
    /// containerd 2.3+: `BootstrapParams` in, `BootstrapResult` out.
    Bootstrap(Box<BootstrapParams>),
    /// Older: flags and environment in, the address as text out.
    Legacy,
}

/// Tells the two protocols apart from what containerd wrote on stdin.
pub fn detect_protocol(stdin: &[u8], id: &str, namespace: &str) -> Protocol {
    if stdin.is_empty() {
        return Protocol::Legacy;
    }
    match BootstrapParams::parse_from_bytes(stdin) {
        // Legacy runtime options (an Any) also parse; only a match on both ids is real.
        Ok(p) if p.instance_id == id && p.namespace == namespace => {
            Protocol::Bootstrap(Box::new(p))
        }
        _ => Protocol::Legacy,
    }
}

/// The reply containerd reads from stdout.
pub fn reply(protocol: &Protocol, address: &str) -> Vec<u8> {
    match protocol {
        Protocol::Legacy => address.as_bytes().to_vec(),
        Protocol::Bootstrap(_) => BootstrapResult {
            version: TASK_API_VERSION,
            address: address.to_string(),
            protocol: "ttrpc".to_string(),
            ..Default::default()
        }
        .write_to_bytes()
        .expect("serializing strings cannot fail"),
    }
}

/// The start options (addresses, namespace, socket directory) for either protocol.
pub fn start_opts(flags: &Flags, protocol: &Protocol) -> StartOpts {
    match protocol {
        Protocol::Bootstrap(p) => StartOpts::from((**p).clone()),
        Protocol::Legacy => StartOpts {
            id: flags.id.clone(),
            namespace: flags.namespace.clone(),
            address: if flags.address.is_empty() {
                std::env::var("GRPC_ADDRESS").unwrap_or_default()
            } else {
                flags.address.clone()
            },
            ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
            publish_binary: flags.publish_binary.clone(),
            debug: flags.debug,
            ..Default::default()
        },
    }
}

/// The grouping key: the sandbox named by the spec's annotations, else the container.
pub fn grouping(id: &str, bundle: &Path) -> Result<String> {
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|e| {
        ShimError::InvalidArgument(format!("reading the OCI spec {}: {e}", path.display()))
    })?;
    let group = options::sandbox_id(id, spec.annotations().as_ref());
    options::validate_id("sandbox id", &group)?;
    Ok(group)
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Whether a shim answers on `address`.
pub fn answers(address: &str) -> bool {
    UnixStream::connect(socket_path(address)).is_ok()
}

/// Runs the action; returns the bytes for stdout.
pub fn start(flags: &Flags) -> Result<Vec<u8>> {
    let stdin = read_stdin()?;
    let protocol = detect_protocol(&stdin, &flags.id, &flags.namespace);
    let opts = start_opts(flags, &protocol);
    let bundle = std::env::current_dir().map_err(|e| ShimError::io("finding the bundle", e))?;
    let group = grouping(&opts.id, &bundle)?;
    let address = opts.socket_address(&group);
    if answers(&address) {
        tracing::info!(container_id = %opts.id, sandbox_id = %group, %address, "joining the sandbox's shim");
    } else {
        let path = socket_path(&address);
        if Path::new(path).exists() {
            tracing::warn!(%address, "removing the socket of a dead shim");
            let _ = std::fs::remove_file(path);
        }
        spawn_server(&opts, &address)?;
    }
    std::fs::write(bundle.join("address"), &address)
        .map_err(|e| ShimError::io("writing the address file", e))?;
    Ok(reply(&protocol, &address))
}

fn read_stdin() -> Result<Vec<u8>> {
    let stdin = std::io::stdin();
    let mut input = Vec::new();
    if !stdin.is_terminal() {
        stdin
            .lock()
            .take(10 << 20)
            .read_to_end(&mut input)
            .map_err(|e| ShimError::io("reading containerd's bootstrap parameters", e))?;
    }
    Ok(input)
}

/// Starts the serving shim and waits until it listens: it closes its stdout when ready.
fn spawn_server(opts: &StartOpts, address: &str) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| ShimError::io("finding the shim binary", e))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "-namespace",
        &opts.namespace,
        "-id",
        &opts.id,
        "-address",
        &opts.address,
    ])
    .args(["-publish-binary", &opts.publish_binary, "-socket", address])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    // Its own process group: signals for containerd's group do not reach the shim.
    .process_group(0);
    if opts.debug {
        cmd.arg("-debug");
    }
    if !opts.ttrpc_address.is_empty() {
        cmd.env("TTRPC_ADDRESS", &opts.ttrpc_address);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ShimError::io("spawning the shim server", e))?;
    let mut out = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let text = rx.recv_timeout(SERVER_READY_TIMEOUT).map_err(|_| {
        let _ = child.kill();
        ShimError::Internal(format!(
            "the shim server did not start listening within {SERVER_READY_TIMEOUT:?}"
        ))
    })?;
    if let Ok(Some(status)) = child.try_wait() {
        if !status.success() {
            return Err(ShimError::Internal(format!(
                "the shim server exited with {status}: {}",
                text.trim()
            )));
        }
    }
    if !answers(address) {
        return Err(ShimError::Internal(format!(
            "the shim server started but does not answer on {address}: {}",
            text.trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags {
            id: "c1".into(),
            namespace: "k8s.io".into(),
            address: "/run/containerd/containerd.sock".into(),
            ..Default::default()
        }
    }

    #[test]
    fn legacy_protocol_gets_a_bare_address() {
        assert_eq!(detect_protocol(&[], "c1", "default"), Protocol::Legacy);
        assert_eq!(
            reply(&Protocol::Legacy, "unix:///run/containerd/s/ab"),
            b"unix:///run/containerd/s/ab"
        );
    }

    #[test]
    fn bootstrap_params_get_a_bootstrap_result() {
        let params = BootstrapParams {
            instance_id: "c1".into(),
            namespace: "k8s.io".into(),
            containerd_grpc_address: "/run/containerd/containerd.sock".into(),
            containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            ..Default::default()
        };
        let bytes = params.write_to_bytes().unwrap();
        let p = detect_protocol(&bytes, "c1", "k8s.io");
        assert!(matches!(p, Protocol::Bootstrap(_)));
        let opts = start_opts(&flags(), &p);
        assert_eq!(opts.ttrpc_address, "/run/containerd/containerd.sock.ttrpc");
        let r = BootstrapResult::parse_from_bytes(&reply(&p, "unix:///x")).unwrap();
        assert_eq!(
            (r.version, r.address.as_str(), r.protocol.as_str()),
            (3, "unix:///x", "ttrpc")
        );
        // Params for another shim, or runtime options, are not bootstrap params.
        assert_eq!(detect_protocol(&bytes, "c2", "k8s.io"), Protocol::Legacy);
    }

    #[test]
    fn containers_of_a_pod_share_one_address() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, annotations: &str| {
            let b = dir.path().join(name);
            std::fs::create_dir(&b).unwrap();
            std::fs::write(
                b.join("config.json"),
                format!(r#"{{"ociVersion":"1.0.2","annotations":{annotations}}}"#),
            )
            .unwrap();
            b
        };
        let sandbox = write(
            "pod1",
            r#"{"io.kubernetes.cri.sandbox-id":"pod1","io.kubernetes.cri.container-type":"sandbox"}"#,
        );
        let app = write("app", r#"{"io.kubernetes.cri.sandbox-id":"pod1"}"#);
        let lone = write("lone", "{}");
        assert_eq!(grouping("pod1", &sandbox).unwrap(), "pod1");
        assert_eq!(grouping("app", &app).unwrap(), "pod1");
        assert_eq!(grouping("lone", &lone).unwrap(), "lone");
        let opts = start_opts(&flags(), &Protocol::Legacy);
        assert_eq!(
            opts.socket_address("pod1"),
            opts.socket_address(&grouping("app", &app).unwrap())
        );
        assert_ne!(opts.socket_address("pod1"), opts.socket_address("lone"));
        assert!(grouping("x", &dir.path().join("missing")).is_err());
    }
}
