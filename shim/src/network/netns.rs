//! Running netlink work inside a network namespace without touching the shim's threads.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling *thread*. [`run_in`] therefore
//! spawns a dedicated thread, enters the namespace there, and drives the given future on a
//! current-thread tokio runtime of its own: netlink sockets and tap devices it opens belong to
//! that namespace, and the thread (with its namespace) ends when the future is done.

use std::future::Future;
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use tokio::sync::oneshot;

use super::NetError;

/// Runs `f()` on a fresh thread inside the network namespace `netns` (a bind-mounted nsfs
/// file such as `/var/run/netns/cni-...`) and returns its result.
pub async fn run_in<T, F, Fut>(netns: &Path, f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetError>>,
{
    let (tx, rx) = oneshot::channel();
    let path = netns.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("isola-netns".into())
        .spawn(move || {
            let _ = tx.send(enter_and_run(&path, f));
        });
    spawned.map_err(|e| NetError::io("spawning the network namespace thread", e))?;
    rx.await.map_err(|_| {
        NetError::Unusable("the network namespace thread ended without an answer".into())
    })?
}

fn enter_and_run<T, F, Fut>(path: &Path, f: F) -> Result<T, NetError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, NetError>>,
{
    let ns_err = |source| NetError::Netns {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(ns_err)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| ns_err(e.into()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NetError::io("building the network namespace runtime", e))?;
    rt.block_on(f())
}

/// A connected rtnetlink handle for the current thread's namespace; the connection task runs
/// on the current runtime.
pub fn connect() -> Result<rtnetlink::Handle, NetError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| NetError::io("opening a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}
