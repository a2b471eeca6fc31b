//! The pod's heartbeat: one task per running pod VM that talks to its agent on a fixed period,
//! serving two ends with the same calls.
//!
//! - **The watchdog.** After `[agent] watchdog_timeout_ms` without an answer the VM is declared
//!   dead — its VMM is killed, and the VM's exit is then handled as a crash ([`crate::podvm`]):
//!   every process ends with status 255 and TaskExit, the pod is torn down, nothing is left. So
//!   a frozen VMM or a hung guest holds no Task API call longer than the timeout plus one period
//!   (35 s by default): calls in flight fail when the VM's connections close.
//! - **The metrics snapshot** ([`crate::counters`]): at once and every [`SNAPSHOT_PERIOD`] the
//!   beat asks `GetGuestDetails` instead of `Health.Check`, writes the guest's figures into the
//!   snapshot, and counts the answer as a sign of life like any other.
//!
//! The shim never pauses the VM itself (Pause freezes containers inside the guest; the agent
//! keeps answering), so there is no paused state to exempt here.

use std::sync::Arc;
use std::time::Duration;

use isola_sandbox::shim_metrics::SNAPSHOT_PERIOD;
use tokio::time::Instant;

use crate::counters::now_unix;
use crate::podvm::PodVm;
use crate::service::Service;

/// The longest GetGuestDetails may take.
const GUEST_DETAILS_TIMEOUT: Duration = Duration::from_secs(5);

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

/// What a beat asks the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// `Health.Check`, bounded by the watchdog period.
    Check(Duration),
    /// `GetGuestDetails` for the snapshot, bounded by this.
    Details(Duration),
}

/// The beat's schedule: how often it runs, and which beats ask for the guest's figures. Pure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// The watchdog's (timeout, period); None = no watchdog, beats only for the snapshot.
    watchdog: Option<(Duration, Duration)>,
    /// When the last snapshot was asked for; None before the first.
    last_details: Option<Instant>,
}

impl Schedule {
    pub fn new(watchdog: Option<(Duration, Duration)>) -> Self {
        Self {
            watchdog,
            last_details: None,
        }
    }

    /// How long to wait between beats.
    pub fn period(&self) -> Duration {
        self.watchdog
            .map_or(SNAPSHOT_PERIOD, |(_, p)| p.min(SNAPSHOT_PERIOD))
    }

    /// What the beat at `now` asks: the guest's figures when a snapshot is due (the first beat,
    /// then every [`SNAPSHOT_PERIOD`]), a health check otherwise.
    pub fn ask(&mut self, now: Instant) -> Ask {
        let due = self.last_details.map_or(true, |t| {
            now.saturating_duration_since(t) >= SNAPSHOT_PERIOD
        });
        let bound = self
            .watchdog
            .map_or(GUEST_DETAILS_TIMEOUT, |(_, p)| p.min(GUEST_DETAILS_TIMEOUT));
        if due {
            self.last_details = Some(now);
            Ask::Details(bound)
        } else {
            Ask::Check(self.period())
        }
    }
}

impl Service {
    /// Runs `vm`'s heartbeat while it is the current VM (see the module documentation).
    pub(crate) fn watch_pod(self: &Arc<Self>, vm: Arc<PodVm>) {
        let this = Arc::downgrade(self);
        let span = tracing::info_span!(parent: None, "heartbeat", sandbox_id = %vm.id);
        let task = async move {
            let mut schedule = Schedule::new(vm.watchdog);
            let mut live = vm.watchdog.map(|(t, _)| Liveness::new(t, Instant::now()));
            let current = || this.upgrade().is_some_and(|s| s.pod.is_current(&vm));
            let mut first = true;
            loop {
                if !std::mem::take(&mut first) {
                    tokio::time::sleep(schedule.period()).await;
                }
                if !current() {
                    return;
                }
                if beat(&vm, schedule.ask(Instant::now())).await {
                    if let Some(l) = live.as_mut() {
                        l.answered(Instant::now());
                    }
                } else if live.is_some() {
                    vm.counters.watchdog_failed();
                }
                let Some(silent) = live.and_then(|l| l.overdue(Instant::now())) else {
                    continue;
                };
                if !current() {
                    return;
                }
                tracing::error!(
                    silent_ms = silent.as_millis() as u64,
                    limit_ms = vm.watchdog.map_or(0, |(t, _)| t.as_millis() as u64),
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

/// One beat: asks the agent `ask`; whether it answered. A snapshot beat writes the snapshot,
/// with the guest's figures unknown when the agent did not answer.
async fn beat(vm: &PodVm, ask: Ask) -> bool {
    match ask {
        Ask::Check(bound) => match vm.agent.check(bound).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "the guest agent did not answer its health check");
                false
            }
        },
        Ask::Details(bound) => {
            let answered = match vm.agent.guest_details(bound).await {
                Ok(details) => {
                    vm.counters.guest(&details);
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the guest agent did not answer GetGuestDetails");
                    vm.counters.guest_unknown();
                    false
                }
            };
            vm.write_metrics(now_unix());
            answered
        }
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

    #[test]
    fn every_snapshot_period_a_beat_asks_for_the_guests_figures_instead_of_a_check() {
        let (timeout, period) = (Duration::from_secs(30), Duration::from_secs(5));
        let mut s = Schedule::new(Some((timeout, period)));
        assert_eq!(s.period(), period);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let asks: Vec<Ask> = [0, 5, 10, 15, 20, 25]
            .iter()
            .map(|t| s.ask(at(*t)))
            .collect();
        let d = Ask::Details(Duration::from_secs(5));
        let c = Ask::Check(period);
        assert_eq!(asks, [d, c, d, c, d, c]);
    }

    #[test]
    fn a_short_watchdog_bounds_the_details_call_and_no_watchdog_beats_for_the_snapshot() {
        let mut s = Schedule::new(Some((
            Duration::from_millis(300),
            Duration::from_millis(100),
        )));
        assert_eq!(s.period(), Duration::from_millis(100));
        assert_eq!(
            s.ask(Instant::now()),
            Ask::Details(Duration::from_millis(100))
        );
        let mut s = Schedule::new(None);
        assert_eq!(s.period(), SNAPSHOT_PERIOD);
        let t0 = Instant::now();
        assert_eq!(s.ask(t0), Ask::Details(GUEST_DETAILS_TIMEOUT));
        assert_eq!(
            s.ask(t0 + SNAPSHOT_PERIOD),
            Ask::Details(GUEST_DETAILS_TIMEOUT)
        );
    }
}
