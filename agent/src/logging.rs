//! The agent's log: lines on the guest console (stderr), which the host keeps per pod (see
//! `isola check --verbose`). Once the host has named the sandbox (CreateSandbox), every line
//! starts with `sandbox_id=<id>`, so lines copied out of the pod's console log still say whose
//! they are; container requests add `container_id` (and `exec_id`) through their spans.

use std::fmt;
use std::sync::OnceLock;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The sandbox this guest serves, once the host has said (a VM serves one sandbox for life).
static SANDBOX_ID: OnceLock<String> = OnceLock::new();

/// The variable that hands the sandbox's id to the libcontainer helper (see `libct`).
pub const SANDBOX_ENV: &str = "ISOLA_SANDBOX_ID";

/// Remembers the sandbox's id for every later line (the first id given stays).
pub fn set_sandbox_id(id: &str) {
    let _ = SANDBOX_ID.set(id.to_string());
}

/// The sandbox's id, once the host has said.
pub fn sandbox_id() -> Option<&'static str> {
    SANDBOX_ID.get().map(String::as_str)
}

/// Installs the subscriber for `filter` (directives), writing to `writer`.
pub fn init<W>(filter: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .event_format(WithSandbox {
            id: &SANDBOX_ID,
            inner: Format::default().with_target(false),
        })
        .try_init();
}

/// The default format, each line led by `sandbox_id=<id>` once known.
struct WithSandbox<F> {
    id: &'static OnceLock<String>,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for WithSandbox<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if let Some(id) = self.id.get() {
            write!(w, "sandbox_id={id} ")?;
        }
        self.inner.format_event(ctx, w, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_carry_the_sandbox_id_once_known_and_the_container_from_spans() {
        static ID: OnceLock<String> = OnceLock::new();
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let b = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Capture(b.clone()))
            .event_format(WithSandbox {
                id: &ID,
                inner: Format::default().with_target(false).without_time(),
            })
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("booted");
            ID.set("sb-1".into()).unwrap();
            let span = tracing::info_span!("CreateContainer", container_id = %"c-1");
            let _e = span.enter();
            tracing::info!("created");
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(!lines[0].contains("sandbox_id"), "{text}");
        assert!(lines[0].ends_with("booted"), "{text}");
        assert!(lines[1].starts_with("sandbox_id=sb-1 "), "{text}");
        assert!(lines[1].contains("container_id=c-1"), "{text}");
    }
}
