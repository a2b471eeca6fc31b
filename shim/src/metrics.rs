//! The guest agent's cgroup v2 statistics as containerd's `io.containerd.cgroups.v2.Metrics`
//! (the message of `github.com/containerd/cgroups/cgroup2/stats/metrics.proto`, compiled by
//! containerd-shim-protos as `cgroups_v2::metrics`), in the Any that Stats answers with.

use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use isola_agent_proto::agent::StatsContainerResponse;
use protobuf::well_known_types::any::Any;
use protobuf::Message;

use crate::error::{Result, ShimError};

/// The type URL containerd (`ctr task metrics`, the CRI plugin) decodes cgroup v2 metrics by:
/// the message's full protobuf name, as gogo's typeurl writes it.
pub const CGROUPS_V2_METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// containerd's cgroup v2 metrics from the agent's statistics.
pub fn from_agent(s: &StatsContainerResponse) -> Metrics {
    let mut m = Metrics::new();
    if let Some(p) = s.pids.as_ref() {
        m.pids = Some(PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        })
        .into();
    }
    if let Some(c) = s.cpu.as_ref() {
        m.cpu = Some(CPUStat {
            usage_usec: c.usage_usec,
            user_usec: c.user_usec,
            system_usec: c.system_usec,
            nr_periods: c.nr_periods,
            nr_throttled: c.nr_throttled,
            throttled_usec: c.throttled_usec,
            ..Default::default()
        })
        .into();
    }
    if let Some(mem) = s.memory.as_ref() {
        m.memory = Some(MemoryStat {
            usage: mem.usage,
            usage_limit: mem.usage_limit,
            swap_usage: mem.swap_usage,
            swap_limit: mem.swap_limit,
            anon: mem.anon,
            file: mem.file,
            kernel_stack: mem.kernel_stack,
            slab: mem.slab,
            sock: mem.sock,
            shmem: mem.shmem,
            file_mapped: mem.file_mapped,
            pgfault: mem.pgfault,
            pgmajfault: mem.pgmajfault,
            ..Default::default()
        })
        .into();
        m.memory_events = Some(MemoryEvents {
            oom: mem.oom_events,
            oom_kill: mem.oom_kill_events,
            ..Default::default()
        })
        .into();
    }
    if !s.io.is_empty() {
        m.io = Some(IOStat {
            usage: s
                .io
                .iter()
                .map(|e| IOEntry {
                    major: e.major,
                    minor: e.minor,
                    rbytes: e.rbytes,
                    wbytes: e.wbytes,
                    rios: e.rios,
                    wios: e.wios,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .into();
    }
    m
}

/// [`from_agent`] wrapped in the Any containerd expects in `StatsResponse.stats`.
pub fn to_any(s: &StatsContainerResponse) -> Result<Any> {
    let value = from_agent(s)
        .write_to_bytes()
        .map_err(|e| ShimError::Internal(format!("encoding the cgroup v2 metrics: {e}")))?;
    Ok(Any {
        type_url: CGROUPS_V2_METRICS_TYPE_URL.to_string(),
        value,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use isola_agent_proto::agent::{CpuStats, IoEntry, MemoryStats, PidsStats};

    #[test]
    fn agent_stats_become_cgroup_v2_metrics() {
        let s = StatsContainerResponse {
            cpu: Some(CpuStats {
                usage_usec: 1500,
                user_usec: 1000,
                system_usec: 500,
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStats {
                usage: 4 << 20,
                usage_limit: 64 << 20,
                anon: 1 << 20,
                oom_kill_events: 2,
                ..Default::default()
            })
            .into(),
            pids: Some(PidsStats {
                current: 3,
                limit: 100,
                ..Default::default()
            })
            .into(),
            io: vec![IoEntry {
                major: 254,
                rbytes: 4096,
                ..Default::default()
            }],
            ..Default::default()
        };
        let any = to_any(&s).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(
            (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec),
            (1500, 1000, 500)
        );
        assert_eq!(
            (m.memory.usage, m.memory.usage_limit, m.memory.anon),
            (4 << 20, 64 << 20, 1 << 20)
        );
        assert_eq!(m.memory_events.oom_kill, 2);
        assert_eq!((m.pids.current, m.pids.limit), (3, 100));
        assert_eq!((m.io.usage[0].major, m.io.usage[0].rbytes), (254, 4096));
    }

    #[test]
    fn field_numbers_match_containerds_proto() {
        // Metrics.memory is field 4 and MemoryStat.usage field 32 in containerd's
        // cgroup2/stats/metrics.proto: 0x22 = (4 << 3) | 2, then usage as (32 << 3) | 0.
        let mut m = Metrics::new();
        m.memory = Some(MemoryStat {
            usage: 1,
            ..Default::default()
        })
        .into();
        assert_eq!(m.write_to_bytes().unwrap(), [0x22, 3, 0x80, 0x02, 1]);
    }
}
