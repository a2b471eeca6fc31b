//! Children that must die with the test process but not before their owner: a parent-death
//! signal fires when the *thread* that forked the child exits, and tokio's blocking-pool
//! threads (where async tests start containerd) exit when idle. So the child is forked from a
//! dedicated thread that lives until its [`Keeper`] is dropped, or until the process dies.

use std::process::{Child, Command};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Keeps the forking thread of a [`spawn_kept`] child alive; dropping it ends the thread.
#[derive(Debug)]
pub struct Keeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Spawns `cmd` from a dedicated thread (see the module docs); `cmd`'s own `pre_exec` hooks,
/// such as a parent-death signal, apply as usual.
pub fn spawn_kept(mut cmd: Command) -> std::io::Result<(Child, Keeper)> {
    let (child_tx, child_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("child-keeper".into())
        .spawn(move || {
            let spawned = cmd.spawn();
            let ok = spawned.is_ok();
            let _ = child_tx.send(spawned);
            if ok {
                // Returns when the Keeper is dropped (its sender goes away).
                let _ = stop_rx.recv();
            }
        })?;
    let child = child_rx
        .recv()
        .map_err(|_| std::io::Error::other("the keeper thread ended before spawning"))??;
    Ok((
        child,
        Keeper {
            stop: Some(stop_tx),
            thread: Some(thread),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_outlives_the_spawning_call_and_dies_with_the_keeper_thread() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // async-signal-safe prctl(2) system call.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let (mut child, keeper) = std::thread::spawn(move || spawn_kept(cmd).unwrap())
            .join()
            .unwrap();
        // The thread that called spawn_kept is gone; the child is not.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(child.try_wait().unwrap().is_none(), "the child died early");
        drop(keeper);
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the keeper's end kills the child: {status}"
        );
    }
}
