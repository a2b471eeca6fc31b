//! The metrics `isola monitor` serves: from the sandbox records, the shims' metrics snapshots
//! and /proc to the OpenMetrics text Prometheus scrapes ([`render`]), with nothing kept
//! between scrapes.
//!
//! Written with `prometheus-client`, the Prometheus project's own Rust client: it writes the
//! HELP/TYPE lines and escapes label values the way Prometheus parses them, so this module only
//! says what each figure is.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use isola_sandbox::record::SandboxRecord;
use isola_sandbox::shim_metrics::{DurationHistogram, ShimMetrics};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
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

/// Labels of a per-RPC figure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    sandbox_id: String,
    backend: String,
    rpc: String,
}

/// Labels of `isola_agent_rpc_errors_total`: `code` is the ttrpc status code's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcErrorLabels {
    sandbox_id: String,
    backend: String,
    rpc: String,
    code: String,
}

/// Labels of `isola_hotplug_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HotplugLabels {
    sandbox_id: String,
    backend: String,
    resource: String,
    outcome: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// A histogram whose buckets the shim counted: encoded as it is in its snapshot.
#[derive(Debug, Default)]
struct SnapshotHistogram(Mutex<Option<DurationHistogram>>);

impl SnapshotHistogram {
    fn set(&self, h: DurationHistogram) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
    }
}

impl TypedMetric for SnapshotHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for SnapshotHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        // Upper bounds, then +Inf for the last count; counts per bucket, which the encoder
        // makes cumulative.
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(h.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

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
    unmapped_ram: Family<PodLabels, Gauge>,
    guest_memory_total: Family<PodLabels, Gauge>,
    guest_memory_available: Family<PodLabels, Gauge>,
    guest_cpu: Family<PodLabels, Counter<f64, AtomicU64>>,
    rpc_calls: Family<RpcLabels, Counter>,
    rpc_errors: Family<RpcErrorLabels, Counter>,
    rpc_duration: Family<RpcLabels, SnapshotHistogram>,
    hotplug: Family<HotplugLabels, Counter>,
    watchdog_failed: Family<PodLabels, Counter>,
    snapshot_age: Family<PodLabels, Gauge>,
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
            unmapped_ram: Family::default(),
            guest_memory_total: Family::default(),
            guest_memory_available: Family::default(),
            guest_cpu: Family::default(),
            rpc_calls: Family::default(),
            rpc_errors: Family::default(),
            rpc_duration: Family::default(),
            hotplug: Family::default(),
            watchdog_failed: Family::default(),
            snapshot_age: Family::default(),
        };
        let r = registry;
        r.register(
            "isola_sandboxes",
            "isola sandboxes recorded on this node, by whether their VMM runs",
            f.sandboxes.clone(),
        );
        r.register(
            "isola_pod_vcpus",
            "vCPUs the pod VM has (as booted, plus any hotplugged)",
            f.vcpus.clone(),
        );
        r.register(
            "isola_pod_memory_bytes",
            "Memory the pod VM has (as booted, plus any hotplugged)",
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
        r.register(
            "isola_pod_guest_ram_unmapped_bytes",
            "Guest RAM the pod holds that no process of it maps, so in no PSS: a VM template clone's RAM its guest has not touched since the restore; add it to the pod's PSS for its host footprint",
            f.unmapped_ram.clone(),
        );
        r.register(
            "isola_guest_memory_total_bytes",
            "Memory the guest kernel manages (MemTotal in the guest), as the agent last reported it",
            f.guest_memory_total.clone(),
        );
        r.register(
            "isola_guest_memory_available_bytes",
            "Memory available in the guest (MemAvailable in the guest), as the agent last reported it",
            f.guest_memory_available.clone(),
        );
        r.register(
            "isola_guest_cpu_seconds",
            "CPU time the guest spent busy since it booted, all vCPUs, as the agent last reported it",
            f.guest_cpu.clone(),
        );
        r.register(
            "isola_agent_rpc_calls",
            "Calls of the shim to the guest agent, by RPC",
            f.rpc_calls.clone(),
        );
        r.register(
            "isola_agent_rpc_errors",
            "Failed calls of the shim to the guest agent, by RPC and status code",
            f.rpc_errors.clone(),
        );
        r.register(
            "isola_agent_rpc_duration_seconds",
            "How long the shim's calls to the guest agent took, by RPC (not the long polls WaitProcess and GetOOMEvent)",
            f.rpc_duration.clone(),
        );
        r.register(
            "isola_hotplug_events",
            "CPU and memory hotplug attempts of the pod VM, by resource and outcome",
            f.hotplug.clone(),
        );
        r.register(
            "isola_watchdog_failed_checks",
            "Health checks of the guest agent by the shim's watchdog that got no answer",
            f.watchdog_failed.clone(),
        );
        r.register(
            "isola_shim_metrics_age_seconds",
            "Age of the shim's metrics snapshot the shim figures come from (rewritten every 10 s)",
            f.snapshot_age.clone(),
        );
        f
    }

    /// The figures of `snap`, the snapshot of the pod `pod`, taken at `now_unix`.
    fn snapshot(&self, pod: &PodLabels, snap: &ShimMetrics, now_unix: u64) {
        self.snapshot_age
            .get_or_create(pod)
            .set(gauge_value(now_unix.saturating_sub(snap.written_unix)));
        let guest = &snap.guest;
        if let Some(v) = guest.memory_total_bytes {
            self.guest_memory_total
                .get_or_create(pod)
                .set(gauge_value(v));
        }
        if let Some(v) = guest.memory_available_bytes {
            self.guest_memory_available
                .get_or_create(pod)
                .set(gauge_value(v));
        }
        if let Some(v) = guest.cpu_seconds.filter(|v| v.is_finite() && *v >= 0.0) {
            self.guest_cpu.get_or_create(pod).inc_by(v);
        }
        for (rpc, figures) in &snap.rpcs {
            let labels = RpcLabels {
                sandbox_id: pod.sandbox_id.clone(),
                backend: pod.backend.clone(),
                rpc: rpc.clone(),
            };
            self.rpc_calls.get_or_create(&labels).inc_by(figures.calls);
            for (code, n) in &figures.errors {
                let labels = RpcErrorLabels {
                    sandbox_id: pod.sandbox_id.clone(),
                    backend: pod.backend.clone(),
                    rpc: rpc.clone(),
                    code: code.clone(),
                };
                self.rpc_errors.get_or_create(&labels).inc_by(*n);
            }
            if let Some(h) = figures.duration.as_ref().filter(|h| h.is_valid()) {
                self.rpc_duration.get_or_create(&labels).set(h.clone());
            }
        }
        for event in &snap.hotplug {
            let labels = HotplugLabels {
                sandbox_id: pod.sandbox_id.clone(),
                backend: pod.backend.clone(),
                resource: event.resource.clone(),
                outcome: event.outcome.clone(),
            };
            self.hotplug.get_or_create(&labels).inc_by(event.count);
        }
        self.watchdog_failed
            .get_or_create(pod)
            .inc_by(snap.watchdog_failed_checks);
    }
}

/// Saturating u64 → i64 for gauges.
fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The metrics of the sandboxes `records`, their processes read through `src`, their shims'
/// figures from `snapshot` (the metrics snapshot of a sandbox id, if there is one), at
/// `now_unix`. Only sandboxes whose VMM runs (same pid and start time as recorded) get
/// per-pod and per-process figures; the others count in `isola_sandboxes{state="dead"}`.
pub fn render(
    records: &[SandboxRecord],
    snapshot: &dyn Fn(&str) -> Option<ShimMetrics>,
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
        // A snapshot of another sandbox (a file put there by hand) is no figure of this one.
        let snap = snapshot(&rec.sandbox_id).filter(|s| s.sandbox_id == rec.sandbox_id);
        // The size now (hotplug included) when the shim says, else as booted.
        let (vcpus, memory_mib) = snap
            .as_ref()
            .and_then(|s| s.vm)
            .map_or((rec.vcpus, rec.memory_mib), |v| (v.vcpus, v.memory_mib));
        f.vcpus.get_or_create(&pod).set(i64::from(vcpus));
        f.memory
            .get_or_create(&pod)
            .set(gauge_value(memory_mib.saturating_mul(1024 * 1024)));
        if let Some(ms) = rec.vmm_ready_ms {
            f.vmm_ready.get_or_create(&pod).set(ms as f64 / 1000.0);
        }
        if let Some(ms) = rec.agent_ready_ms {
            f.agent_ready.get_or_create(&pod).set(ms as f64 / 1000.0);
        }
        if let Some(snap) = &snap {
            f.snapshot(&pod, snap, now_unix);
        }
        if rec.created_unix > 0 {
            f.uptime
                .get_or_create(&pod)
                .set(gauge_value(now_unix.saturating_sub(rec.created_unix)));
        }
        // The VMM (its figures read above), its helpers by name, then the shim serving the pod
        // (the very process recorded).
        let helpers = rec.processes.iter().skip(1).filter_map(|p| {
            let stats = procfs::stats(src, *p, units)?;
            Some((
                p.pid,
                procfs::name(src, p.pid).unwrap_or_else(|| "unknown".into()),
                stats,
            ))
        });
        let shim = rec
            .shim
            .iter()
            .filter_map(|p| Some((p.pid, "shim".to_string(), procfs::stats(src, *p, units)?)));
        let vmm_pid = rec.vmm().map_or(0, |p| p.pid);
        let all = std::iter::once((vmm_pid, "vmm".to_string(), vmm_stats));
        // Only processes that still are the recorded ones (same start time) are looked into.
        let mut pids = Vec::new();
        for (pid, process, stats) in all.chain(helpers).chain(shim) {
            pids.push(pid);
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
        f.unmapped_ram
            .get_or_create(&pod)
            .set(gauge_value(procfs::unmapped_memfd_bytes(src, &pids)));
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

        /// From a made-up file `memfds`: "<inode> <KiB>".
        fn memfds(&self, pid: u32) -> HashMap<u64, u64> {
            self.read(pid, "memfds")
                .and_then(|t| {
                    let (i, k) = t.split_once(' ')?;
                    Some(HashMap::from([(i.parse().ok()?, k.parse().ok()?)]))
                })
                .unwrap_or_default()
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
        // The VMM has a clone's RAM copy open (inode 42, 1000 KiB) and maps 300 KiB of it,
        // virtiofsd 100 KiB more (their PSS of it): 600 KiB are in no PSS.
        let ram =
            |pss| format!("7f00-7f10 rw-s 0 00:01 42 /memfd:isola-clone-ram\nPss: {pss} kB\n");
        let mut vmm = fake_proc(250, 100, 300, "qemu-system-x86_64");
        vmm.insert("memfds", "42 1000".into());
        vmm.insert("smaps", ram(300));
        let mut virtiofsd = fake_proc(50, 10, 20, "virtiofsd");
        virtiofsd.insert("smaps", ram(100));
        let src = Fake(HashMap::from([
            (10, vmm),
            (11, virtiofsd),
            (9, fake_proc(7, 30, 40, "containerd-shim-isola-v2")),
        ]));
        let at = |pid| ProcId {
            pid,
            start_time: 500,
        };
        let live = SandboxRecord {
            sandbox_id: "p\"1".into(),
            shim: Some(at(9)),
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
        let text = render(&[live, dead], &|_| None, &src, units, 1060);
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
            // The shim itself, named as such whatever its command line.
            format!(r#"isola_process_cpu_seconds_total{{{pod},process="shim"}} 0.07"#),
            format!(r#"isola_process_resident_memory_bytes{{{pod},process="shim"}} 122880"#),
            format!(r#"isola_process_pss_bytes{{{pod},process="shim"}} 40960"#),
            format!("isola_pod_guest_ram_unmapped_bytes{{{pod}}} 614400"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("p2"), "{text}");
        assert!(text.contains("# HELP isola_process_pss_bytes "), "{text}");
        assert!(
            !text.contains("isola_agent_rpc"),
            "no snapshot, no shim figures"
        );
    }

    #[test]
    fn renders_the_shims_snapshot() {
        use std::collections::BTreeMap;

        use isola_sandbox::shim_metrics::{GuestFigures, HotplugCount, RpcFigures, VmFigures};

        let src = Fake(HashMap::from([(10, fake_proc(0, 1, 1, "qemu"))]));
        let rec = SandboxRecord {
            sandbox_id: "p1".into(),
            processes: vec![ProcId {
                pid: 10,
                start_time: 500,
            }],
            hypervisor: "cloud-hypervisor".into(),
            ..Default::default()
        };
        let mut duration = DurationHistogram::new();
        for s in [0.0005, 0.02, 0.02, 120.0] {
            duration.observe(s);
        }
        let mut broken = DurationHistogram::new();
        broken.counts.clear();
        let snap = ShimMetrics {
            sandbox_id: "p1".into(),
            written_unix: 1000,
            guest: GuestFigures {
                memory_total_bytes: Some(1 << 30),
                memory_available_bytes: None,
                cpu_seconds: Some(12.5),
            },
            rpcs: BTreeMap::from([
                (
                    "CreateContainer".to_string(),
                    RpcFigures {
                        calls: 4,
                        errors: BTreeMap::from([("INTERNAL".to_string(), 1)]),
                        duration: Some(duration),
                    },
                ),
                (
                    "WaitProcess".to_string(),
                    RpcFigures {
                        calls: 2,
                        errors: BTreeMap::new(),
                        duration: None,
                    },
                ),
                (
                    "Check".to_string(),
                    RpcFigures {
                        calls: 1,
                        errors: BTreeMap::new(),
                        duration: Some(broken),
                    },
                ),
            ]),
            hotplug: vec![HotplugCount {
                resource: "memory".into(),
                outcome: "grown".into(),
                count: 3,
            }],
            watchdog_failed_checks: 5,
            // Grown from the record's (default: unknown) size by hotplug.
            vm: Some(VmFigures {
                vcpus: 3,
                memory_mib: 1024,
            }),
        };
        let units = Units {
            clk_tck: 100,
            page_size: 4096,
        };
        let snapshot = |id: &str| (id == "p1").then(|| snap.clone());
        let text = render(&[rec], &snapshot, &src, units, 1012);
        let pod = r#"sandbox_id="p1",backend="cloud-hypervisor""#;
        let cc = format!(r#"{pod},rpc="CreateContainer""#);
        for line in [
            format!("isola_shim_metrics_age_seconds{{{pod}}} 12"),
            format!("isola_guest_memory_total_bytes{{{pod}}} 1073741824"),
            "# TYPE isola_guest_cpu_seconds counter".into(),
            format!("isola_guest_cpu_seconds_total{{{pod}}} 12.5"),
            format!("isola_agent_rpc_calls_total{{{cc}}} 4"),
            format!(r#"isola_agent_rpc_calls_total{{{pod},rpc="WaitProcess"}} 2"#),
            format!(r#"isola_agent_rpc_errors_total{{{cc},code="INTERNAL"}} 1"#),
            "# TYPE isola_agent_rpc_duration_seconds histogram".into(),
            format!(r#"isola_agent_rpc_duration_seconds_bucket{{le="0.001",{cc}}} 1"#),
            format!(r#"isola_agent_rpc_duration_seconds_bucket{{le="0.025",{cc}}} 3"#),
            format!(r#"isola_agent_rpc_duration_seconds_bucket{{le="60.0",{cc}}} 3"#),
            format!(r#"isola_agent_rpc_duration_seconds_bucket{{le="+Inf",{cc}}} 4"#),
            format!("isola_agent_rpc_duration_seconds_count{{{cc}}} 4"),
            format!(r#"isola_hotplug_events_total{{{pod},resource="memory",outcome="grown"}} 3"#),
            format!("isola_watchdog_failed_checks_total{{{pod}}} 5"),
            format!("isola_pod_vcpus{{{pod}}} 3"),
            format!("isola_pod_memory_bytes{{{pod}}} 1073741824"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(
            text.contains("isola_agent_rpc_duration_seconds_sum{"),
            "{text}"
        );
        // Unknown figures and malformed histograms are left out, as are the long polls.
        assert!(
            !text.contains("isola_guest_memory_available_bytes{"),
            "{text}"
        );
        for rpc in ["Check", "WaitProcess"] {
            let count = format!(r#"isola_agent_rpc_duration_seconds_count{{{pod},rpc="{rpc}"}}"#);
            assert!(!text.contains(&count), "{text}");
        }
        // A snapshot naming another sandbox is no figure of this one.
        let other = |_: &str| {
            Some(ShimMetrics {
                sandbox_id: "p9".into(),
                ..Default::default()
            })
        };
        let rec = SandboxRecord {
            sandbox_id: "p1".into(),
            processes: vec![ProcId {
                pid: 10,
                start_time: 500,
            }],
            ..Default::default()
        };
        let text = render(&[rec], &other, &src, units, 1012);
        assert!(!text.contains("isola_shim_metrics_age_seconds{"), "{text}");
    }
}
