//! GetOOMEvent: noticing that the kernel's OOM killer killed a process of a container.
//!
//! Each container's cgroup counts its OOM kills in `memory.events` (`oom_kill N`, including its
//! sub-cgroups). A container is watched from its creation until its removal; the kernel signals
//! every change of that file through inotify (`IN_MODIFY`), and on each signal the watcher reads
//! the counters of the watched containers. An increase queues one event naming the container.
//! Where inotify is unavailable the watcher polls every [`POLL_FALLBACK`] instead.
//!
//! The queue keeps events nobody has asked for yet (the host long-polls with GetOOMEvent, one
//! call per event), up to [`QUEUE_CAPACITY`] (oldest dropped first, with a warning). A container
//! is checked one last time when it stops being watched (before its cgroup goes away), so an
//! OOM kill right before removal is not missed.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::cgroups::stats::flat_keyed;

/// At most this many undelivered events are kept.
pub const QUEUE_CAPACITY: usize = 256;
/// How often counters are read when inotify is unavailable.
pub const POLL_FALLBACK: Duration = Duration::from_millis(100);

/// The `oom_kill` counter of a `memory.events` text (0 when absent).
pub fn oom_kills(memory_events: &str) -> u64 {
    flat_keyed(memory_events)
        .get("oom_kill")
        .copied()
        .unwrap_or(0)
}

struct Watched {
    events_file: PathBuf,
    oom_kills: u64,
    wd: Option<WatchDescriptor>,
}

#[derive(Default)]
struct State {
    watched: HashMap<String, Watched>,
    queue: VecDeque<String>,
}

impl State {
    /// Records the counter `now` of container `id`; true if it rose (an event was queued).
    fn observe(&mut self, id: &str, now: u64) -> bool {
        let Some(w) = self.watched.get_mut(id) else {
            return false;
        };
        if now <= w.oom_kills {
            return false;
        }
        tracing::info!(
            container_id = id,
            oom_kills = now,
            before = w.oom_kills,
            "container OOM-killed a process"
        );
        w.oom_kills = now;
        if self.queue.len() >= QUEUE_CAPACITY {
            if let Some(dropped) = self.queue.pop_front() {
                tracing::warn!(container_id = %dropped, "OOM event queue full; dropping the oldest event");
            }
        }
        self.queue.push_back(id.to_string());
        true
    }
}

/// The inotify instance as something tokio's reactor can poll.
struct InotifyFd(Arc<Inotify>);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

struct Inner {
    state: Mutex<State>,
    /// Wakes GetOOMEvent callers when an event is queued.
    queued: Notify,
    /// None when inotify is unavailable (then the watcher polls).
    inotify: Option<Arc<Inotify>>,
    started: OnceLock<()>,
}

/// The OOM watcher of all containers (cheap to clone).
#[derive(Clone)]
pub struct OomWatcher {
    inner: Arc<Inner>,
}

impl Default for OomWatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl OomWatcher {
    /// A watcher with nothing watched; its task starts with the first [`OomWatcher::watch`].
    pub fn new() -> OomWatcher {
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(i) => Some(Arc::new(i)),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable; OOM kills will be polled for");
                None
            }
        };
        OomWatcher {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                queued: Notify::new(),
                inotify,
                started: OnceLock::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching container `id`, whose cgroup is `cgroup_dir`. Must be called within a
    /// tokio runtime. A cgroup without the memory controller is watched without effect.
    pub fn watch(&self, id: &str, cgroup_dir: &Path) {
        self.start();
        let events_file = cgroup_dir.join("memory.events");
        let oom_kills = oom_kills(&std::fs::read_to_string(&events_file).unwrap_or_default());
        let wd = self.inner.inotify.as_ref().and_then(|i| {
            i.add_watch(&events_file, AddWatchFlags::IN_MODIFY)
                .map_err(|e| {
                    tracing::warn!(container_id = id, file = %events_file.display(), error = %e,
                        "cannot watch for OOM kills");
                })
                .ok()
        });
        let old = self.lock().watched.insert(
            id.to_string(),
            Watched {
                events_file,
                oom_kills,
                wd,
            },
        );
        if let (Some(old), Some(i)) = (old.and_then(|o| o.wd), &self.inner.inotify) {
            let _ = i.rm_watch(old);
        }
    }

    /// Stops watching container `id` after checking it one last time.
    pub fn unwatch(&self, id: &str) {
        let file = self.lock().watched.get(id).map(|w| w.events_file.clone());
        let Some(file) = file else { return };
        let now = oom_kills(&std::fs::read_to_string(file).unwrap_or_default());
        let removed = {
            let mut st = self.lock();
            if st.observe(id, now) {
                self.inner.queued.notify_waiters();
            }
            st.watched.remove(id)
        };
        if let (Some(wd), Some(i)) = (removed.and_then(|w| w.wd), &self.inner.inotify) {
            // Fails harmlessly when the kernel already dropped the watch.
            let _ = i.rm_watch(wd);
        }
    }

    /// Reads the counters of every watched container and queues the increases.
    fn check_all(&self) {
        let files: Vec<(String, PathBuf)> = self
            .lock()
            .watched
            .iter()
            .map(|(id, w)| (id.clone(), w.events_file.clone()))
            .collect();
        for (id, file) in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            if self.lock().observe(&id, oom_kills(&text)) {
                self.inner.queued.notify_waiters();
            }
        }
    }

    /// The next event (a container id), waiting for one if none is queued. Cancel-safe: an
    /// event is taken from the queue only when it is returned.
    pub async fn next(&self) -> String {
        loop {
            let notified = self.inner.queued.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(id) = self.lock().queue.pop_front() {
                return id;
            }
            notified.await;
        }
    }

    fn start(&self) {
        if self.inner.started.set(()).is_err() {
            return;
        }
        let me = self.clone();
        let fd = self.inner.inotify.as_ref().and_then(|i| {
            // SAFETY: the `Arc` keeps the inotify descriptor open for as long as the `AsyncFd`
            // lives (the watcher shares it and never closes it), and `as_raw_fd` always returns
            // that same descriptor.
            unsafe { AsyncFd::register(InotifyFd(i.clone())) }
                .map_err(|e| tracing::warn!(error = %e.into_parts().1, "cannot poll inotify; OOM kills will be polled for"))
                .ok()
        });
        tokio::spawn(async move {
            loop {
                match &fd {
                    Some(fd) => {
                        let Ok(mut ready) = fd.readable().await else {
                            tracing::error!(
                                "inotify polling failed; OOM kills are no longer noticed"
                            );
                            return;
                        };
                        // Drain every pending event; which file changed does not matter.
                        while let Ok(result) = ready
                            .try_io(|i| i.get_ref().0.read_events().map_err(std::io::Error::from))
                        {
                            if let Err(e) = result {
                                tracing::warn!(error = %e, "reading inotify events failed");
                                tokio::time::sleep(POLL_FALLBACK).await;
                                break;
                            }
                        }
                    }
                    None => tokio::time::sleep(POLL_FALLBACK).await,
                }
                me.check_all();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: u64) -> String {
        format!("low 0\nhigh 0\nmax 4\noom 1\noom_kill {n}\noom_group_kill 0\n")
    }

    #[test]
    fn counter_parsing() {
        assert_eq!(oom_kills(&events(3)), 3);
        assert_eq!(oom_kills(""), 0);
    }

    #[test]
    fn queue_is_bounded_and_keeps_the_newest() {
        let mut st = State::default();
        st.watched.insert(
            "c".into(),
            Watched {
                events_file: PathBuf::new(),
                oom_kills: 0,
                wd: None,
            },
        );
        assert!(!st.observe("c", 0));
        assert!(!st.observe("unknown", 5));
        for n in 1..=(QUEUE_CAPACITY as u64 + 10) {
            assert!(st.observe("c", n));
        }
        assert_eq!(st.queue.len(), QUEUE_CAPACITY);
        // A counter that does not rise (or a reset) queues nothing.
        assert!(!st.observe("c", 1));
    }

    #[tokio::test]
    async fn increases_are_queued_for_later_callers_and_one_event_per_call() {
        let w = OomWatcher::new();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("memory.events"), events(1)).unwrap();
        std::fs::write(b.path().join("memory.events"), events(0)).unwrap();
        w.watch("a", a.path());
        w.watch("b", b.path());
        // Nobody is waiting when both happen; neither is lost.
        std::fs::write(b.path().join("memory.events"), events(1)).unwrap();
        std::fs::write(a.path().join("memory.events"), events(2)).unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(
                tokio::time::timeout(Duration::from_secs(5), w.next())
                    .await
                    .expect("an event"),
            );
        }
        got.sort();
        assert_eq!(got, ["a", "b"]);
        // Nothing more: the next call waits (and being cancelled loses nothing).
        assert!(tokio::time::timeout(Duration::from_millis(300), w.next())
            .await
            .is_err());
        // A kill just before removal is caught by the last check.
        std::fs::write(a.path().join("memory.events"), events(3)).unwrap();
        w.unwatch("a");
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), w.next())
                .await
                .unwrap(),
            "a"
        );
        // Unwatched containers are not checked any more.
        w.unwatch("a");
        std::fs::write(a.path().join("memory.events"), events(9)).unwrap();
        w.check_all();
        assert!(w.lock().queue.is_empty());
    }
}
