//! The metrics `isola monitor` serves: from the sandbox records and /proc to the OpenMetrics
//! text Prometheus scrapes ([`render`]), with nothing kept between scrapes.
//!
//! Written with `prometheus-client`, the Prometheus project's own Rust client: it writes the
//! HELP/TYPE lines and escapes label values the way Prometheus parses them, so this module only
//! says what each figure is.

use std::sync::atomic::AtomicU64;

use isola_sandbox::record::SandboxRecord;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::procfs::{self, ProcSource, Units};

/// The HTTP content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of a per-pod figure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    sandbox_id: String,
    backend: String,
}

/// Labels of a per-process figure: `process` is "vmm" for the VMM, else the helper's name
/// (virtiofsd, vhost-device-vsock, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcLabels {
    sandbox_id: String,
    backend: String,
    process: String,
}

/// Labels of `isola_sandboxes`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every family, registered under its name.
struct Families {
    sandboxes: Family<StateLabels, Gauge>,
    vcpus: Family<PodLabels, Gauge>,
    memory: Family<PodLabels, Gauge>,
    vmm_ready: Family<PodLabels, FloatGauge>,
    agent_ready: Family<PodLabels, FloatGauge>,
    uptime: Family<PodLabels, Gauge>,
    cpu: Family<ProcLabels, Counter<f64, AtomicU64>>,
    rss: Family<ProcLabels, Gauge>,
    pss: Family<ProcLabels, Gauge>,
}

impl Families {
    fn register(registry: &mut Registry) -> Families {
        let f = Families {
            sandboxes: Family::default(),
            vcpus: Family::default(),
            memory: Family::default(),
            vmm_ready: Family::default(),
            agent_ready: Family::default(),
            uptime: Family::default(),
            cpu: Family::default(),
            rss: Family::default(),
            pss: Family::default(),
        };
        let r = registry;
        r.register(
            "isola_sandboxes",
            "isola sandboxes recorded on this node, by whether their VMM runs",
            f.sandboxes.clone(),
        );
        r.register(
            "isola_pod_vcpus",
            "vCPUs the pod VM booted with",
            f.vcpus.clone(),
        );
        r.register(
            "isola_pod_memory_bytes",
            "Memory the pod VM booted with",
            f.memory.clone(),
        );
        r.register(
            "isola_pod_vmm_ready_seconds",
            "Time from spawning the VMM to it running with its helper daemons",
            f.vmm_ready.clone(),
        );
        r.register(
            "isola_pod_agent_ready_seconds",
            "Time from spawning the VMM to the guest agent answering",
            f.agent_ready.clone(),
        );
        r.register(
            "isola_pod_uptime_seconds",
            "Time since the sandbox was created",
            f.uptime.clone(),
        );
        r.register(
            "isola_process_cpu_seconds",
            "User and system CPU time of a host process of the pod",
            f.cpu.clone(),
        );
        r.register(
            "isola_process_resident_memory_bytes",
            "Resident set size of a host process of the pod",
            f.rss.clone(),
        );
        r.register(
            "isola_process_pss_bytes",
            "Proportional set size of a host process of the pod (shared pages split among their users)",
            f.pss.clone(),
        );
        f
    }
}

/// Saturating u64 → i64 for gauges.
fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The metrics of the sandboxes `records`, their processes read through `src`, at
/// `now_unix`. Only sandboxes whose VMM runs (same pid and start time as recorded) get
/// per-pod and per-process figures; the others count in `isola_sandboxes{state="dead"}`.
pub fn render(
    records: &[SandboxRecord],
    src: &dyn ProcSource,
    units: Units,
    now_unix: u64,
) -> String {
    let mut registry = Registry::default();
    let f = Families::register(&mut registry);
    let (mut running, mut dead) = (0, 0);
    for rec in records {
        let Some(vmm_stats) = rec.vmm().and_then(|p| procfs::stats(src, p, units)) else {
            dead += 1;
            continue;
        };
        running += 1;
        let pod = PodLabels {
            sandbox_id: rec.sandbox_id.clone(),
            backend: rec.hypervisor.clone(),
        };
        f.vcpus.get_or_create(&pod).set(i64::from(rec.vcpus));
        f.memory
            .get_or_create(&pod)
            .set(gauge_value(rec.memory_mib.saturating_mul(1024 * 1024)));
        if let Some(ms) = rec.vmm_ready_ms {
            f.vmm_ready.get_or_create(&pod).set(ms as f64 / 1000.0);
        }
        if let Some(ms) = rec.agent_ready_ms {
            f.agent_ready.get_or_create(&pod).set(ms as f64 / 1000.0);
        }
        if rec.created_unix > 0 {
            f.uptime
                .get_or_create(&pod)
                .set(gauge_value(now_unix.saturating_sub(rec.created_unix)));
        }
        for (i, proc) in rec.processes.iter().enumerate() {
            let stats = if i == 0 {
                Some(vmm_stats.clone())
            } else {
                procfs::stats(src, *proc, units)
            };
            let Some(stats) = stats else { continue };
            let process = if i == 0 {
                "vmm".to_string()
            } else {
                procfs::name(src, proc.pid).unwrap_or_else(|| "unknown".into())
            };
            let labels = ProcLabels {
                sandbox_id: pod.sandbox_id.clone(),
                backend: pod.backend.clone(),
                process,
            };
            // Two helpers of one name (rare) add up under one label set.
            f.cpu.get_or_create(&labels).inc_by(stats.cpu_seconds);
            if let Some(rss) = stats.rss_bytes {
                f.rss.get_or_create(&labels).inc_by(gauge_value(rss));
            }
            if let Some(pss) = stats.pss_bytes {
                f.pss.get_or_create(&labels).inc_by(gauge_value(pss));
            }
        }
    }
    for (state, n) in [("running", running), ("dead", dead)] {
        f.sandboxes
            .get_or_create(&StateLabels {
                state: state.into(),
            })
            .set(n);
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        // Writing into a String does not fail; say so rather than serve half a page silently.
        tracing::error!(error = %e, "encoding the metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use isola_sandbox::record::ProcId;

    use super::*;

    /// /proc of made-up processes: pid → file → text.
    struct Fake(HashMap<u32, HashMap<&'static str, String>>);

    impl ProcSource for Fake {
        fn read(&self, pid: u32, file: &str) -> Option<String> {
            self.0.get(&pid)?.get(file).cloned()
        }
    }

    fn fake_proc(
        utime: u64,
        rss_pages: u64,
        pss_kib: u64,
        cmd: &str,
    ) -> HashMap<&'static str, String> {
        HashMap::from([
            (
                "stat",
                format!("1 (x) S 1 1 1 0 -1 0 0 0 0 0 {utime} 0 0 0 20 0 1 0 500 1000 10"),
            ),
            ("statm", format!("1000 {rss_pages} 0 0 0 0 0")),
            ("smaps_rollup", format!("Rss: 1 kB\nPss: {pss_kib} kB\n")),
            ("cmdline", format!("/usr/bin/{cmd}\0")),
        ])
    }

    #[test]
    fn renders_pods_processes_and_dead_sandboxes() {
        let src = Fake(HashMap::from([
            (10, fake_proc(250, 100, 300, "qemu-system-x86_64")),
            (11, fake_proc(50, 10, 20, "virtiofsd")),
        ]));
        let at = |pid| ProcId {
            pid,
            start_time: 500,
        };
        let live = SandboxRecord {
            sandbox_id: "p\"1".into(),
            processes: vec![at(10), at(11), at(12)],
            hypervisor: "qemu".into(),
            vcpus: 2,
            memory_mib: 256,
            vmm_ready_ms: Some(40),
            agent_ready_ms: Some(750),
            created_unix: 1000,
            ..Default::default()
        };
        let dead = SandboxRecord {
            sandbox_id: "p2".into(),
            processes: vec![ProcId {
                pid: 10,
                start_time: 1,
            }],
            ..Default::default()
        };
        let units = Units {
            clk_tck: 100,
            page_size: 4096,
        };
        let text = render(&[live, dead], &src, units, 1060);
        let pod = r#"sandbox_id="p\"1",backend="qemu""#;
        for line in [
            "# TYPE isola_sandboxes gauge".to_string(),
            r#"isola_sandboxes{state="running"} 1"#.into(),
            r#"isola_sandboxes{state="dead"} 1"#.into(),
            format!("isola_pod_vcpus{{{pod}}} 2"),
            format!("isola_pod_memory_bytes{{{pod}}} 268435456"),
            format!("isola_pod_vmm_ready_seconds{{{pod}}} 0.04"),
            format!("isola_pod_agent_ready_seconds{{{pod}}} 0.75"),
            format!("isola_pod_uptime_seconds{{{pod}}} 60"),
            "# TYPE isola_process_cpu_seconds counter".into(),
            format!(r#"isola_process_cpu_seconds_total{{{pod},process="vmm"}} 2.5"#),
            format!(r#"isola_process_cpu_seconds_total{{{pod},process="virtiofsd"}} 0.5"#),
            format!(r#"isola_process_resident_memory_bytes{{{pod},process="vmm"}} 409600"#),
            format!(r#"isola_process_pss_bytes{{{pod},process="virtiofsd"}} 20480"#),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("p2"), "{text}");
        assert!(text.contains("# HELP isola_process_pss_bytes "), "{text}");
    }
}
