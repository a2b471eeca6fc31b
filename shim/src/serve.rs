//! The serving shim: the Task API on the socket `start` chose, until Shutdown or SIGTERM.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use containerd_shim::{ExitSignal, Flags};
use tokio::signal::unix::{signal, SignalKind};
use ttrpc::r#async::transport::Listener;
use ttrpc::r#async::Server;

use crate::error::{Result, ShimError};
use crate::events::{EventSink, NoEvents, RemoteEvents};
use crate::options::RuntimeOptions;
use crate::sandbox::VmFactory;
use crate::service::Service;
use crate::start::answers;
use crate::task::{self, TaskService};

/// Serves until told to exit.
pub async fn serve(flags: &Flags) -> Result<()> {
    if flags.socket.is_empty() {
        return Err(ShimError::InvalidArgument(
            "no -socket given: the shim serves only when started by `start`".into(),
        ));
    }
    let path = flags
        .socket
        .strip_prefix("unix://")
        .unwrap_or(&flags.socket);
    let Some(listener) = bind(path, &flags.socket)? else {
        // Another shim of the same sandbox won a race and serves already.
        signal_ready();
        return Ok(());
    };
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
    let events: Arc<dyn EventSink> = match event_service(&flags.address, &ttrpc_address) {
        Some(address) => Arc::new(RemoteEvents::new(address, flags.namespace.clone())),
        None => {
            tracing::info!("no event service (started by CRI-O): events are not published");
            Arc::new(NoEvents)
        }
    };
    let exit = Arc::new(ExitSignal::default());
    let service = Service::new(
        &flags.namespace,
        Arc::new(VmFactory::real()),
        events,
        Arc::new(|o: &RuntimeOptions| o.load_config()),
        exit.clone(),
    );
    let listener = Listener::try_from(listener).map_err(|e| ShimError::io("listening", e))?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(task::services(Arc::new(TaskService::new(service.clone()))));
    server
        .start()
        .await
        .map_err(|e| ShimError::Internal(format!("starting the ttrpc server: {e}")))?;
    tracing::info!(socket = %flags.socket, namespace = %flags.namespace, "shim serving");
    signal_ready();

    let mut term =
        signal(SignalKind::terminate()).map_err(|e| ShimError::io("handling SIGTERM", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| ShimError::io("handling SIGINT", e))?;
    tokio::select! {
        _ = exit.wait() => {}
        _ = term.recv() => {
            tracing::info!("SIGTERM: stopping the sandbox");
            let _ = service.shutdown(true).await;
        }
        _ = int.recv() => {
            tracing::info!("SIGINT: stopping the sandbox");
            let _ = service.shutdown(true).await;
        }
    }
    // The socket goes first: whatever kills this process during the grace period below (a
    // runtime that does not wait, a test harness) leaves no socket behind. Connections already
    // made keep working.
    let _ = std::fs::remove_file(path);
    // Let the event publisher hand the last events over before the process goes.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let _ = server.shutdown().await;
    tracing::info!("shim exiting");
    Ok(())
}

/// Where to publish task events: containerd's `TTRPC_ADDRESS`. CRI-O starts the shim with
/// neither a containerd address (`-address ""`) nor a `TTRPC_ADDRESS`: no event service.
fn event_service<'a>(containerd_address: &str, ttrpc_address: &'a str) -> Option<&'a str> {
    if ttrpc_address.is_empty() {
        if !containerd_address.is_empty() {
            tracing::warn!(
                containerd_address,
                "TTRPC_ADDRESS is empty: events are not published"
            );
        }
        return None;
    }
    Some(ttrpc_address)
}

/// Binds the socket; None when a live shim already has it.
fn bind(path: &str, address: &str) -> Result<Option<UnixListener>> {
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ShimError::io(format!("creating {}", dir.display()), e))?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if answers(address) {
                return Ok(None);
            }
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path)
                .map(Some)
                .map_err(|e| ShimError::io(format!("listening on {path}"), e))
        }
        Err(e) => Err(ShimError::io(format!("listening on {path}"), e)),
    }
}

/// Closes stdout (the pipe `start` reads): the signal that the shim is listening.
fn signal_ready() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 1 with a valid open fd; fd 1 is only ever used as stdout and
        // nothing holds a Rust handle that assumes its previous identity.
        unsafe {
            libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_go_to_containerd_when_it_says_where() {
        assert_eq!(
            event_service(
                "/run/containerd/containerd.sock",
                "/run/containerd/containerd.sock.ttrpc"
            ),
            Some("/run/containerd/containerd.sock.ttrpc")
        );
        // CRI-O: `-address ""` and an empty TTRPC_ADDRESS.
        assert_eq!(event_service("", ""), None);
        assert_eq!(event_service("/run/containerd/containerd.sock", ""), None);
    }
}
