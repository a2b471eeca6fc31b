//! PauseContainer/ResumeContainer: the cgroup v2 freezer.
//!
//! Writing `cgroup.freeze` asks the kernel to freeze (1) or thaw (0) every process in the
//! cgroup and below; the change is complete when `cgroup.events` says `frozen 1` (or
//! `frozen 0`). A process that is frozen still dies of SIGKILL.

use std::path::Path;
use std::time::Duration;

/// How often `cgroup.events` is looked at while waiting.
const POLL: Duration = Duration::from_millis(10);

/// The `frozen` field of `cgroup.events`, if present.
pub fn frozen(events: &str) -> Option<bool> {
    events
        .lines()
        .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            ["frozen", v] => Some(v == "1"),
            _ => None,
        })
}

/// Why a freeze or thaw did not complete.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} did not report frozen {want} within {waited:?}")]
    Timeout {
        path: String,
        want: u8,
        waited: Duration,
    },
}

/// Freezes (`frozen = true`) or thaws the cgroup at `dir` and waits up to `limit` for the
/// kernel to report it done.
pub async fn set_frozen(
    dir: &Path,
    frozen_wanted: bool,
    limit: Duration,
) -> Result<(), FreezeError> {
    let want = u8::from(frozen_wanted);
    let control = dir.join("cgroup.freeze");
    std::fs::write(&control, want.to_string()).map_err(|source| FreezeError::Write {
        path: control.display().to_string(),
        source,
    })?;
    let events = dir.join("cgroup.events");
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        if frozen(&text) == Some(frozen_wanted) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(FreezeError::Timeout {
                path: events.display().to_string(),
                want,
                waited: limit,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_frozen_field() {
        assert_eq!(frozen("populated 1\nfrozen 1\n"), Some(true));
        assert_eq!(frozen("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(frozen("populated 1\n"), None);
        assert_eq!(frozen(""), None);
    }

    #[tokio::test]
    async fn waits_for_the_kernel_then_gives_up() {
        // A fake cgroup whose events file we control.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let events = d.path().join("cgroup.events");
        let flip = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::fs::write(events, "populated 1\nfrozen 1\n").unwrap();
        });
        set_frozen(d.path(), true, Duration::from_secs(5))
            .await
            .unwrap();
        flip.await.unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("cgroup.freeze")).unwrap(),
            "1"
        );
        // Nobody thaws it: bounded.
        let e = set_frozen(d.path(), false, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(e, FreezeError::Timeout { want: 0, .. }), "{e}");
        // No such cgroup.
        let e = set_frozen(&d.path().join("gone"), true, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(e, FreezeError::Write { .. }), "{e}");
    }
}
