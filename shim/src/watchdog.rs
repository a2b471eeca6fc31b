//! The agent watchdog: a running pod's agent is asked `Health.Check` on a fixed period; after
//! `[agent] watchdog_timeout_ms` without an answer the VM is declared dead — its VMM is killed,
//! and the VM's exit is then handled as a crash ([`crate::podvm`]): every process ends with
//! status 255 and TaskExit, the pod is torn down, nothing is left. So a frozen VMM or a hung
//! guest holds no Task API call longer than the timeout plus one period (35 s by default):
//! calls in flight fail when the VM's connections close.
//!
//! The shim never pauses the VM itself (Pause freezes containers inside the guest; the agent
//! keeps answering), so there is no paused state to exempt here.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::podvm::PodVm;
use crate::service::Service;

/// When the agent last answered, and whether that is too long ago. Pure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    timeout: Duration,
    last_answer: Instant,
}

impl Liveness {
    /// Starts counting at `now` (the VM just booted: its agent just answered).
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Self {
            timeout,
            last_answer: now,
        }
    }

    /// The agent answered at `now`.
    pub fn answered(&mut self, now: Instant) {
        self.last_answer = now;
    }

    /// How long the agent has been silent, if that is past the timeout.
    pub fn overdue(&self, now: Instant) -> Option<Duration> {
        let silent = now.saturating_duration_since(self.last_answer);
        (silent >= self.timeout).then_some(silent)
    }
}

impl Service {
    /// Watches `vm`'s agent while it is the current VM (see the module documentation).
    pub(crate) fn watch_agent(self: &Arc<Self>, vm: Arc<PodVm>) {
        let Some((timeout, period)) = vm.watchdog else {
            return;
        };
        let this = Arc::downgrade(self);
        let span = tracing::info_span!(parent: None, "watchdog", sandbox_id = %vm.id);
        let task = async move {
            let mut live = Liveness::new(timeout, Instant::now());
            let current = || this.upgrade().is_some_and(|s| s.pod.is_current(&vm));
            loop {
                tokio::time::sleep(period).await;
                if !current() {
                    return;
                }
                match vm.agent.check(period).await {
                    Ok(()) => live.answered(Instant::now()),
                    Err(e) => {
                        vm.counters.watchdog_failed();
                        tracing::warn!(error = %e, "the guest agent did not answer its health check")
                    }
                }
                let Some(silent) = live.overdue(Instant::now()) else {
                    continue;
                };
                if !current() {
                    return;
                }
                tracing::error!(
                    silent_ms = silent.as_millis() as u64,
                    limit_ms = timeout.as_millis() as u64,
                    "the guest agent has not answered for longer than agent.watchdog_timeout_ms: the VM is declared dead and killed"
                );
                if let Err(e) = vm.vm.kill().await {
                    tracing::warn!(error = %e, "killing the VMM of a dead VM");
                }
                return;
            }
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_overdue_only_past_the_timeout() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Duration::from_secs(30), t0);
        assert_eq!(l.overdue(t0 + Duration::from_secs(29)), None);
        assert_eq!(
            l.overdue(t0 + Duration::from_secs(30)),
            Some(Duration::from_secs(30))
        );
        l.answered(t0 + Duration::from_secs(25));
        assert_eq!(l.overdue(t0 + Duration::from_secs(50)), None);
        assert!(l.overdue(t0 + Duration::from_secs(56)).is_some());
    }
}
