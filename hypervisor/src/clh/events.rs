//! Cloud Hypervisor's event monitor (`--event-monitor fd=N`): a stream of pretty-printed JSON
//! objects (`{"timestamp": …, "source": "vm", "event": "booted", "properties": null}`)
//! separated by blank lines, read from a pipe.
//!
//! isola reads it for one thing QEMU's `-no-reboot` gives for free: a guest that reboots
//! (its init died and the kernel panicked with `panic=-1`, or it asked for a reset) or
//! panics (pvpanic) must end the VM, as a crash the shim reports, instead of Cloud Hypervisor
//! rebooting the guest in place.

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes kept of an event that has not ended yet; a longer one is dropped (events are small).
pub const MAX_PENDING: usize = 64 * 1024;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// "vmm", "vm", "guest", "virtio-device", …
    pub source: String,
    /// "booted", "rebooting", "panic", …
    pub event: String,
}

impl Event {
    /// Whether this event means the guest is going away by itself (reboot or panic), which
    /// isola treats as the end of the VM.
    pub fn ends_vm(&self) -> bool {
        matches!(
            (self.source.as_str(), self.event.as_str()),
            ("vm", "rebooting") | ("vm", "reboot") | ("guest", "panic")
        )
    }
}

/// Takes the complete events out of `buf`, leaving an incomplete tail for the next read.
/// Garbage is skipped up to the next object; a tail longer than [`MAX_PENDING`] is dropped.
pub fn drain(buf: &mut Vec<u8>) -> Vec<Event> {
    let mut events = Vec::new();
    let mut consumed = 0;
    loop {
        let rest = &buf[consumed..];
        let Some(start) = rest.iter().position(|b| *b == b'{') else {
            consumed = buf.len();
            break;
        };
        let mut stream =
            serde_json::Deserializer::from_slice(&rest[start..]).into_iter::<serde_json::Value>();
        match stream.next() {
            Some(Ok(value)) => {
                consumed += start + stream.byte_offset();
                if let Ok(e) = serde_json::from_value::<Event>(value) {
                    events.push(e);
                }
            }
            Some(Err(e)) if e.is_eof() => {
                consumed += start;
                break;
            }
            // Not JSON at this brace: skip it and look for the next object.
            Some(Err(_)) => consumed += start + 1,
            None => {
                consumed = buf.len();
                break;
            }
        }
    }
    buf.drain(..consumed);
    if buf.len() > MAX_PENDING {
        buf.clear();
    }
    events
}

/// Reads events from `src` until it ends, calling `on_end` once for the first event that
/// [`Event::ends_vm`]; other events are logged at debug level.
pub async fn watch(mut src: impl AsyncRead + Unpin, sandbox: String, on_end: impl FnOnce(&Event)) {
    let mut on_end = Some(on_end);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match src.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        for e in drain(&mut buf) {
            tracing::debug!(%sandbox, source = %e.source, event = %e.event, "cloud-hypervisor event");
            if e.ends_vm() {
                if let Some(f) = on_end.take() {
                    tracing::warn!(%sandbox, source = %e.source, event = %e.event, "the guest is rebooting or panicked: ending the VM");
                    f(&e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOTED: &str = "{\n  \"timestamp\": {\n    \"secs\": 0,\n    \"nanos\": 483818947\n  },\n  \"source\": \"vm\",\n  \"event\": \"booted\",\n  \"properties\": null\n}\n\n";

    #[test]
    fn splits_pretty_printed_events_across_reads() {
        let text = format!("{BOOTED}{}", BOOTED.replace("booted", "rebooting"));
        let (a, b) = text.as_bytes().split_at(BOOTED.len() + 20);
        let mut buf = a.to_vec();
        let first = drain(&mut buf);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].event, "booted");
        assert!(!first[0].ends_vm());
        assert_eq!(buf.len(), 20, "the partial second event is kept");
        buf.extend_from_slice(b);
        let second = drain(&mut buf);
        assert_eq!(second.len(), 1);
        assert!(second[0].ends_vm());
        assert!(buf.iter().all(u8::is_ascii_whitespace));
    }

    #[test]
    fn garbage_and_oversized_tails_are_dropped() {
        let mut buf = b"}{ not json {\"source\":\"guest\",\"event\":\"panic\"} x".to_vec();
        let got = drain(&mut buf);
        assert_eq!(got.len(), 1);
        assert!(got[0].ends_vm());
        let mut big = b"{\"source\":\"".to_vec();
        big.extend(std::iter::repeat(b'a').take(MAX_PENDING + 1));
        assert!(drain(&mut big).is_empty());
        assert!(big.is_empty(), "an endless event is not kept");
    }

    #[tokio::test]
    async fn watch_calls_back_once() {
        let text = format!(
            "{}{}",
            BOOTED.replace("booted", "rebooting"),
            BOOTED
                .replace("\"vm\"", "\"guest\"")
                .replace("booted", "panic")
        );
        let (tx, rx) = std::sync::mpsc::channel();
        watch(text.as_bytes(), "t".into(), move |e| {
            tx.send(e.event.clone()).unwrap()
        })
        .await;
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            vec!["rebooting".to_string()]
        );
    }
}
