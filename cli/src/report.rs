//! Printing check results: one line per step, with its status and time.

use std::time::Duration;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// Collects and prints check lines; remembers whether any failed.
#[derive(Default)]
pub struct Report {
    failed: bool,
}

impl Report {
    pub fn line(&mut self, status: Status, what: &str, detail: impl AsRef<str>) {
        self.timed(status, what, None, detail)
    }

    pub fn timed(
        &mut self,
        status: Status,
        what: &str,
        took: Option<Duration>,
        detail: impl AsRef<str>,
    ) {
        if status == Status::Fail {
            self.failed = true;
        }
        println!("{}", format_line(status, what, took, detail.as_ref()));
    }

    pub fn failed(&self) -> bool {
        self.failed
    }
}

pub fn format_line(status: Status, what: &str, took: Option<Duration>, detail: &str) -> String {
    let tag = match status {
        Status::Ok => "[ ok ]",
        Status::Warn => "[warn]",
        Status::Fail => "[FAIL]",
    };
    let time = took
        .map(|d| format!("{:>8.3} s  ", d.as_secs_f64()))
        .unwrap_or_else(|| " ".repeat(12));
    format!("{tag} {what:<18} {time}{detail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_aligned_and_tagged() {
        let l = format_line(Status::Ok, "qemu", Some(Duration::from_millis(1500)), "7.2");
        assert_eq!(l, "[ ok ] qemu                  1.500 s  7.2");
        let l = format_line(Status::Fail, "kernel", None, "missing");
        assert_eq!(l, "[FAIL] kernel                         missing");
    }

    #[test]
    fn remembers_failure() {
        let mut r = Report::default();
        r.line(Status::Warn, "x", "");
        assert!(!r.failed());
        r.line(Status::Fail, "y", "");
        assert!(r.failed());
    }
}
