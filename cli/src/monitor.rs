//! `isola monitor --listen ADDR`: a Prometheus endpoint for the node's isola sandboxes, like
//! kata-monitor. `GET /metrics` discovers the sandboxes as `isola ps` does and reads their
//! host processes from /proc and their shims' metrics snapshots on every scrape
//! ([`crate::metrics::render`]); nothing runs between scrapes.
//!
//! HTTP is hyper 1.x's HTTP/1 server connection, one task per connection, with a header read
//! timeout so an idle or slow client cannot hold a connection open.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use isola_sandbox::record;
use isola_sandbox::shim_metrics::ShimMetrics;
use tokio::net::TcpListener;

use crate::metrics;
use crate::procfs::{HostProc, Units};

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to `method path` with the sandboxes recorded under `state_dir`: the metrics for
/// `GET /metrics`, 405 for another method there, 404 elsewhere. Blocking (reads /proc).
pub fn respond(method: &Method, path: &str, state_dir: &Path) -> Response<Full<Bytes>> {
    if path != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found: try /metrics\n");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let records = match record::list(state_dir) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "discovering the sandboxes");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"));
        }
    };
    let snapshot = |id: &str| ShimMetrics::read(&ShimMetrics::path(state_dir, id));
    let text = metrics::render(
        &records,
        &snapshot,
        &HostProc,
        Units::host(),
        crate::ps::now_unix(),
    );
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    r
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    state_dir: PathBuf,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let answer = tokio::task::spawn_blocking(move || respond(&method, &path, &state_dir)).await;
    Ok(answer.unwrap_or_else(|e| {
        tracing::error!(error = %e, "the metrics task failed");
        plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
    }))
}

/// Serves the endpoint on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state_dir: PathBuf) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let dir = state_dir.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, dir.clone()));
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "a metrics connection ended with an error");
            }
        });
    }
}

/// Runs `isola monitor`: serves on `listen` until interrupted (SIGINT or SIGTERM).
pub async fn run(config: Option<&Path>, listen: SocketAddr) -> anyhow::Result<bool> {
    let state_dir = crate::ps::state_dir(config)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, state_dir = %state_dir.display(), "serving /metrics");
    eprintln!("isola monitor: serving http://{addr}/metrics");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("watching SIGTERM")?;
    tokio::select! {
        () = serve(listener, state_dir) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use isola_sandbox::record::{ProcId, SandboxRecord};

    use super::*;
    use crate::procfs::{self, ProcSource};

    /// A `sleep 30` that is killed when the test ends.
    struct Sleeper(std::process::Child);

    impl Sleeper {
        fn spawn() -> Sleeper {
            Sleeper(
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap(),
            )
        }
        fn id(&self) -> ProcId {
            ProcId::of(self.0.id()).unwrap()
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The value of the sample line starting with `prefix` (metric name and labels).
    fn value(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    fn http_get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn scrapes_real_processes_through_the_handler_and_over_http() {
        let tmp = tempfile::tempdir().unwrap();
        let (vmm, helper) = (Sleeper::spawn(), Sleeper::spawn());
        let other = Sleeper::spawn();
        for (id, procs) in [
            ("pod-a", vec![vmm.id(), helper.id()]),
            ("pod-b", vec![other.id()]),
        ] {
            SandboxRecord {
                sandbox_id: id.into(),
                processes: procs,
                hypervisor: "cloud-hypervisor".into(),
                vcpus: 1,
                memory_mib: 128,
                vmm_ready_ms: Some(5),
                agent_ready_ms: Some(600),
                created_unix: crate::ps::now_unix() - 10,
                ..Default::default()
            }
            .save(&SandboxRecord::path(tmp.path(), id))
            .unwrap();
        }
        // pod-a's shim left a metrics snapshot, pod-b's a garbled one.
        ShimMetrics {
            sandbox_id: "pod-a".into(),
            written_unix: crate::ps::now_unix(),
            watchdog_failed_checks: 2,
            ..Default::default()
        }
        .save(&ShimMetrics::path(tmp.path(), "pod-a"))
        .unwrap();
        std::fs::write(ShimMetrics::path(tmp.path(), "pod-b"), "{garbled").unwrap();

        let resp = respond(&Method::GET, "/metrics", tmp.path());
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[CONTENT_TYPE], metrics::CONTENT_TYPE);
        let body = resp.into_body();
        let text = {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let bytes = rt.block_on(http_body_util::BodyExt::collect(body)).unwrap();
            String::from_utf8(bytes.to_bytes().to_vec()).unwrap()
        };
        assert!(
            text.contains(r#"isola_sandboxes{state="running"} 2"#),
            "{text}"
        );
        assert!(text.contains("# TYPE isola_process_resident_memory_bytes gauge"));
        let units = Units::host();
        for (id, process, proc) in [
            ("pod-a", "vmm", vmm.id()),
            ("pod-a", "sleep", helper.id()),
            ("pod-b", "vmm", other.id()),
        ] {
            let labels =
                format!(r#"{{sandbox_id="{id}",backend="cloud-hypervisor",process="{process}"}}"#);
            let now = procfs::stats(&procfs::HostProc, proc, units).unwrap();
            let rss = value(
                &text,
                &format!("isola_process_resident_memory_bytes{labels}"),
            );
            let expected = now.rss_bytes.unwrap() as f64;
            assert!(
                (rss - expected).abs() <= expected * 0.2,
                "{rss} vs {expected}"
            );
            let cpu = value(&text, &format!("isola_process_cpu_seconds_total{labels}"));
            assert!((cpu - now.cpu_seconds).abs() <= 0.05, "{cpu} vs {now:?}");
            if let Some(pss) = now.pss_bytes {
                let got = value(&text, &format!("isola_process_pss_bytes{labels}"));
                let expected = pss as f64;
                assert!(
                    (got - expected).abs() <= expected * 0.2,
                    "{got} vs {expected}"
                );
            }
            let name = procfs::HostProc.read(proc.pid, "comm").unwrap();
            assert_eq!(name.trim(), "sleep");
        }
        let pod = r#"{sandbox_id="pod-a",backend="cloud-hypervisor"}"#;
        assert_eq!(
            value(&text, &format!("isola_pod_memory_bytes{pod}")),
            134217728.0
        );
        assert_eq!(
            value(&text, &format!("isola_pod_agent_ready_seconds{pod}")),
            0.6
        );
        assert_eq!(
            value(&text, &format!("isola_watchdog_failed_checks_total{pod}")),
            2.0
        );
        assert!(
            !text.contains(r#"isola_shim_metrics_age_seconds{sandbox_id="pod-b""#),
            "{text}"
        );
        let up = value(&text, &format!("isola_pod_uptime_seconds{pod}"));
        assert!((10.0..15.0).contains(&up), "{up}");
        assert_eq!(
            respond(&Method::GET, "/", tmp.path()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::POST, "/metrics", tmp.path()).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );

        // The same over a real connection.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = rt.spawn(serve(listener, tmp.path().to_path_buf()));
        let answer = http_get(addr, "/metrics");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("content-type: application/openmetrics-text"),
            "{answer}"
        );
        assert!(answer.contains(r#"isola_process_cpu_seconds_total{sandbox_id="pod-b",backend="cloud-hypervisor",process="vmm"}"#));
        assert!(answer.trim_end().ends_with("# EOF"), "{answer}");
        assert!(http_get(addr, "/nope").starts_with("HTTP/1.1 404"));
        // One sandbox ends: it is counted dead and its figures go.
        drop(other);
        let answer = http_get(addr, "/metrics");
        assert!(
            answer.contains(r#"isola_sandboxes{state="dead"} 1"#),
            "{answer}"
        );
        assert!(!answer.contains("pod-b"), "{answer}");
        server.abort();
    }
}
