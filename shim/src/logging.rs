//! Logs into containerd's log.
//!
//! containerd creates a FIFO named `log` in the bundle (the shim's working directory) and
//! copies whatever the shim writes there into its own log. containerd-shim 0.12 only offers a
//! `log` crate logger on it; the shim logs with `tracing` (spans carry `sandbox_id` and
//! `container_id`), so it installs a tracing subscriber writing logfmt lines, like containerd's
//! own (`time=... level=... msg=... key=value`), to that FIFO, and bridges the `log` records of
//! containerd-shim itself (event publishing) into it with `tracing_log::LogTracer`.
//! Each line is one `write`, so lines of several shims never interleave.
//! Every line carries `sandbox_id`: the span's where one sets it, else the shim's own `-id`
//! (one shim serves one pod, so that is its sandbox).

use std::fmt::{self, Write as _};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Where the log goes.
pub enum Target {
    /// containerd's `log` FIFO in the working directory (serving, `start`); stderr if absent.
    ContainerdFifo,
    /// stderr (`delete`: containerd logs what the shim prints there).
    Stderr,
}

/// Installs the subscriber. `debug` is containerd's `-debug`; `RUST_LOG` overrides the level;
/// `sandbox_id` (the shim's `-id`) goes on every line no span gives one.
pub fn init(target: Target, debug: bool, sandbox_id: &str) {
    // `delete` prints to stderr, which containerd logs as "cleanup warnings": problems only.
    let default = match (debug, &target) {
        (true, _) => "debug",
        (false, Target::Stderr) => "warn",
        (false, Target::ContainerdFifo) => "info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fifo = match target {
        Target::ContainerdFifo => open_fifo("log"),
        Target::Stderr => None,
    };
    let writer = match fifo {
        Some(f) => BoxMakeWriter::new(Mutex::new(f)),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(Logfmt {
            sandbox_id: sandbox_id.to_string(),
        })
        .fmt_fields(LogfmtFields)
        .with_writer(writer)
        .finish();
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return; // already initialized
    }
    // containerd-shim's own `log` records (event publishing) into the same log.
    let _ = tracing_log::LogTracer::init();
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("panic: {info}");
    }));
}

/// Opens containerd's FIFO for writing without blocking when nobody reads it.
fn open_fifo(path: &str) -> Option<File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    // Blocking writes from here on: a line is never cut short by a full pipe.
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).ok()?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags)).ok()?;
    Some(file)
}

/// RFC 3339 UTC time with nanoseconds, as containerd's logrus writes it.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// A logfmt value: bare when it is a simple word, else JSON-quoted.
fn value(v: &str) -> String {
    let bare = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/:@+".contains(&b));
    if bare {
        v.to_string()
    } else {
        serde_json::to_string(v).unwrap_or_else(|_| "\"?\"".into())
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    pairs: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, v: &str) {
        if field.name() == "message" {
            self.message = v.to_string();
        } else if !v.is_empty() {
            // An empty value (exec_id of an init process) says nothing: left out.
            let _ = write!(self.pairs, " {}={}", field.name(), value(v));
        }
    }

    fn record_debug(&mut self, field: &Field, v: &dyn fmt::Debug) {
        self.record_str(field, &format!("{v:?}"));
    }
}

/// The event format: `time="..." level=info msg="..." k=v ... span_k=v`, with `sandbox_id`
/// added when no span set it.
struct Logfmt {
    sandbox_id: String,
}

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        write!(
            w,
            "time=\"{}\" level={} msg={}{}",
            rfc3339(SystemTime::now()),
            event.metadata().level().as_str().to_ascii_lowercase(),
            serde_json::to_string(&fields.message).unwrap_or_default(),
            fields.pairs
        )?;
        let mut spans = String::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<FormattedFields<N>>() {
                    spans.push_str(&f.fields);
                }
            }
        }
        write!(w, "{spans}")?;
        let named = spans.contains(" sandbox_id=") || fields.pairs.contains(" sandbox_id=");
        if !named && !self.sandbox_id.is_empty() {
            write!(w, " sandbox_id={}", value(&self.sandbox_id))?;
        }
        writeln!(w)
    }
}

/// Span fields as ` k=v` pairs.
struct LogfmtFields;

impl<'w> FormatFields<'w> for LogfmtFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut w: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut f = Fields::default();
        fields.record(&mut f);
        if !f.message.is_empty() {
            write!(w, " span_msg={}", value(&f.message))?;
        }
        write!(w, "{}", f.pairs)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut f = Fields::default();
        fields.record(&mut f);
        current.fields.push_str(&f.pairs);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_251_199, 5); // 2024-02-29 23:59:59 UTC
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.000000005Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn values_are_quoted_only_when_needed() {
        assert_eq!(value("c1"), "c1");
        assert_eq!(value("/run/isola/x"), "/run/isola/x");
        assert_eq!(value("two words"), "\"two words\"");
        assert_eq!(value("a\"b\nc"), "\"a\\\"b\\nc\"");
        assert_eq!(value(""), "\"\"");
    }

    /// What `f` logs, formatted as the shim of sandbox `shim-sb` does.
    fn logged(f: impl FnOnce()) -> String {
        use tracing_subscriber::layer::SubscriberExt;
        let buf = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let b = buf.clone();
        let make = move || Capture(b.clone());
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(Logfmt {
                    sandbox_id: "shim-sb".into(),
                })
                .fmt_fields(LogfmtFields)
                .with_ansi(false)
                .with_writer(make),
        );
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn lines_outside_a_pod_span_carry_the_shims_sandbox_id() {
        let text = logged(|| {
            tracing::info!("serving");
            let span = tracing::info_span!("watchdog", period_ms = 100);
            let _e = span.enter();
            tracing::warn!(sandbox_id = "ev-sb", "from the event");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with("msg=\"serving\" sandbox_id=shim-sb"),
            "{text}"
        );
        assert!(
            lines[1].ends_with("msg=\"from the event\" sandbox_id=ev-sb period_ms=100"),
            "{text}"
        );
    }

    #[test]
    fn lines_carry_span_fields() {
        let text = logged(|| {
            let span = tracing::info_span!(
                "create",
                container_id = "c1",
                exec_id = "",
                sandbox_id = tracing::field::Empty
            );
            let _e = span.enter();
            span.record("sandbox_id", "sb");
            tracing::warn!(error = "no such file", "sharing the \"rootfs\"");
        });
        assert!(text.starts_with("time=\""), "{text}");
        assert!(
            text.contains("level=warn msg=\"sharing the \\\"rootfs\\\"\" error=\"no such file\" container_id=c1 sandbox_id=sb\n"),
            "{text}"
        );
    }

    struct Capture(std::sync::Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
