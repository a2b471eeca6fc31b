//! Announcing readiness to the host: once the agent serves, it connects to the host (vsock CID 2)
//! on the port the host named with `agent.ready_port=` and writes [`READY_LINE`].
//!
//! Over hybrid vsock the host waits for this connection before it dials the agent, so it never
//! connects while the guest's vsock driver is still initialising the device (a vhost-user vsock
//! backend can stall for good in that window). Retried with backoff in case the host's listener
//! is not there yet; abandoned after [`GIVE_UP`] (the host then reports the agent unreachable).

use std::time::{Duration, Instant};

use isola_agent_proto::READY_LINE;
use tokio::io::AsyncWriteExt;
use tokio_vsock::{VsockAddr, VsockStream, VMADDR_CID_HOST};

/// How long to keep trying.
const GIVE_UP: Duration = Duration::from_secs(120);

/// The longest pause between two tries. Short: in a VM template the vsock device does not
/// exist yet, and a clone's announcement goes out at the first try after its device is
/// plugged (a failed try costs one system call).
const MAX_DELAY: Duration = Duration::from_millis(20);

/// Starts announcing on a background task.
pub fn announce(port: u32) {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut delay = Duration::from_millis(5);
        loop {
            match send(port).await {
                Ok(()) => {
                    tracing::debug!(
                        port,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "readiness announced to the host"
                    );
                    return;
                }
                Err(e) if started.elapsed() > GIVE_UP => {
                    tracing::error!(port, error = %e, "the host never accepted the readiness announcement");
                    return;
                }
                Err(e) => {
                    tracing::trace!(port, error = %e, "readiness announcement not accepted yet")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_DELAY);
        }
    });
}

async fn send(port: u32) -> std::io::Result<()> {
    let mut stream = VsockStream::connect(VsockAddr::new(VMADDR_CID_HOST, port)).await?;
    stream.write_all(READY_LINE).await?;
    stream.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}
