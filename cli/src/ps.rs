//! `isola ps`: the node's isola sandboxes, from the records their shims leave under
//! `<runtime.state_dir>/shim/` (`isola_sandbox::record`).
//!
//! A sandbox is "running" while the VMM process it recorded (same pid, same start time) is
//! alive, "dead" otherwise (its shim died and nothing has cleaned up yet). Its size is the one
//! its shim last wrote in its metrics snapshot (hotplugged vCPUs and memory included), else the
//! recorded boot size.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use isola_sandbox::record::{self, ProcId, SandboxRecord};
use isola_sandbox::shim_metrics::{ShimMetrics, VmFigures};
use serde::Serialize;

/// One line of `isola ps`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PodRow {
    /// The sandbox (pod) id.
    pub sandbox_id: String,
    /// The VMM kind ("qemu", "cloud-hypervisor"); empty when the record predates it.
    pub backend: String,
    /// The VMM's pid, if recorded.
    pub vmm_pid: Option<u32>,
    /// vCPUs now (as booted when the shim has not said; 0: not recorded).
    pub vcpus: u32,
    /// Memory now, MiB (as booted when the shim has not said; 0: not recorded).
    pub memory_mib: u64,
    /// "running" or "dead".
    pub state: &'static str,
    /// Seconds since the sandbox was created, while it runs.
    pub uptime_seconds: Option<u64>,
    /// When the sandbox was created, Unix seconds (0: not recorded).
    pub created_unix: u64,
    /// Spawn to VMM ready, ms.
    pub vmm_ready_ms: Option<u64>,
    /// Spawn to agent ready, ms.
    pub agent_ready_ms: Option<u64>,
}

/// The rows of `records`, with `alive` telling whether a recorded process still runs, `size`
/// a sandbox's current size if its shim said, and `now_unix` the current time.
pub fn rows(
    records: &[SandboxRecord],
    alive: impl Fn(&ProcId) -> bool,
    size: impl Fn(&str) -> Option<VmFigures>,
    now_unix: u64,
) -> Vec<PodRow> {
    records
        .iter()
        .map(|r| {
            let running = r.vmm().is_some_and(|p| alive(&p));
            let now = size(&r.sandbox_id).unwrap_or(VmFigures {
                vcpus: r.vcpus,
                memory_mib: r.memory_mib,
            });
            PodRow {
                sandbox_id: r.sandbox_id.clone(),
                backend: r.hypervisor.clone(),
                vmm_pid: r.vmm().map(|p| p.pid),
                vcpus: now.vcpus,
                memory_mib: now.memory_mib,
                state: if running { "running" } else { "dead" },
                uptime_seconds: (running && r.created_unix > 0)
                    .then(|| now_unix.saturating_sub(r.created_unix)),
                created_unix: r.created_unix,
                vmm_ready_ms: r.vmm_ready_ms,
                agent_ready_ms: r.agent_ready_ms,
            }
        })
        .collect()
}

/// The rows as an aligned text table with a header line.
pub fn table(rows: &[PodRow]) -> String {
    let header = [
        "POD", "BACKEND", "VMM PID", "VCPUS", "MEMORY", "STATE", "UPTIME",
    ];
    let dash = || "-".to_string();
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.sandbox_id.clone(),
                if r.backend.is_empty() {
                    dash()
                } else {
                    r.backend.clone()
                },
                r.vmm_pid.map_or_else(dash, |p| p.to_string()),
                nonzero(u64::from(r.vcpus)).map_or_else(dash, |v| v.to_string()),
                nonzero(r.memory_mib).map_or_else(dash, |m| format!("{m} MiB")),
                r.state.to_string(),
                r.uptime_seconds.map_or_else(dash, human_duration),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |row: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}   ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &cells {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// The rows as pretty JSON (an array).
pub fn json(rows: &[PodRow]) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(rows)?)
}

fn nonzero(v: u64) -> Option<u64> {
    (v > 0).then_some(v)
}

/// `90061` → `1d1h`, `3725` → `1h2m`, `125` → `2m5s`, `7` → `7s`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// The current time, Unix seconds.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The runtime state directory: `runtime.state_dir` of the configuration `isola check` loads
/// (`--config` or the standard search order); the default (/run/isola) when no configuration
/// file exists and none was named.
pub fn state_dir(config: Option<&Path>) -> anyhow::Result<PathBuf> {
    match config {
        Some(_) => Ok(crate::load_config(config)?.0.runtime.state_dir),
        None => match isola_config::Config::load() {
            Ok((cfg, _)) => Ok(cfg.runtime.state_dir),
            Err(isola_config::ConfigError::NotFound { .. }) => {
                tracing::debug!("no configuration file: using the default state directory");
                Ok(PathBuf::from(isola_config::DEFAULT_STATE_DIR))
            }
            Err(e) => Err(e.into()),
        },
    }
}

/// The sandboxes recorded under `state_dir`, as `isola ps` shows them.
pub fn discover(state_dir: &Path) -> anyhow::Result<Vec<PodRow>> {
    let records = record::list(state_dir)
        .with_context(|| format!("reading the sandbox records of {}", state_dir.display()))?;
    let size = |id: &str| {
        ShimMetrics::read(&ShimMetrics::path(state_dir, id))
            .filter(|m| m.sandbox_id == id)
            .and_then(|m| m.vm)
    };
    Ok(rows(&records, ProcId::alive, size, now_unix()))
}

/// Runs `isola ps`: the table, or JSON with `as_json`.
pub fn run(config: Option<&Path>, as_json: bool) -> anyhow::Result<bool> {
    let rows = discover(&state_dir(config)?)?;
    if as_json {
        println!("{}", json(&rows)?);
    } else {
        print!("{}", table(&rows));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of sandbox `id` whose VMM is `vmm`.
    fn record(id: &str, vmm: ProcId, created_unix: u64) -> SandboxRecord {
        SandboxRecord {
            sandbox_id: id.into(),
            shim: None,
            processes: vec![vmm],
            hypervisor: "qemu".into(),
            vcpus: 2,
            memory_mib: 512,
            vmm_ready_ms: Some(40),
            agent_ready_ms: Some(750),
            created_unix,
            ..Default::default()
        }
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(7), "7s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(3725), "1h2m");
        assert_eq!(human_duration(90_061), "1d1h");
    }

    #[test]
    fn ps_shows_live_and_dead_sandboxes_from_the_state_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let live = ProcId::of(sleeper.id()).unwrap();
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let dead = ProcId {
            pid: gone.id(),
            start_time: 1,
        };
        let now = now_unix();
        record("pod-a", live, now - 125)
            .save(&SandboxRecord::path(tmp.path(), "pod-a"))
            .unwrap();
        record("pod-b", dead, now - 3600)
            .save(&SandboxRecord::path(tmp.path(), "pod-b"))
            .unwrap();
        // pod-b's shim grew its VM (and said so in its snapshot) before it died.
        ShimMetrics {
            sandbox_id: "pod-b".into(),
            vm: Some(VmFigures {
                vcpus: 4,
                memory_mib: 2048,
            }),
            ..Default::default()
        }
        .save(&ShimMetrics::path(tmp.path(), "pod-b"))
        .unwrap();
        // A record from before the boot figures were recorded.
        SandboxRecord {
            sandbox_id: "pod-c".into(),
            ..Default::default()
        }
        .save(&SandboxRecord::path(tmp.path(), "pod-c"))
        .unwrap();

        let rows = discover(tmp.path()).unwrap();
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].state, "running");
        assert_eq!(rows[0].vmm_pid, Some(live.pid));
        let up = rows[0].uptime_seconds.unwrap();
        assert!((125..130).contains(&up), "{up}");
        assert_eq!((rows[1].state, rows[1].uptime_seconds), ("dead", None));
        assert_eq!((rows[2].state, rows[2].vmm_pid), ("dead", None));

        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let cols = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            cols(lines[0]),
            ["POD", "BACKEND", "VMM", "PID", "VCPUS", "MEMORY", "STATE", "UPTIME"]
        );
        let pid = live.pid.to_string();
        // The uptime as the table writes it, from the one read above (it started 125 s ago,
        // but the table may be a second later than the moment that counted).
        let uptime = format!("{}m{}s", up / 60, up % 60);
        assert_eq!(
            cols(lines[1]),
            ["pod-a", "qemu", &pid, "2", "512", "MiB", "running", &uptime]
        );
        assert_eq!(cols(lines[2])[6], "dead");
        assert_eq!(cols(lines[2])[3..6], ["4", "2048", "MiB"]);
        assert_eq!(cols(lines[3]), ["pod-c", "-", "-", "-", "-", "dead", "-"]);
        // The columns line up under the header.
        let state_at = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[1][state_at..state_at + 7], "running");

        let parsed: serde_json::Value = serde_json::from_str(&json(&rows).unwrap()).unwrap();
        assert_eq!(parsed[0]["sandbox_id"], "pod-a");
        assert_eq!(parsed[0]["backend"], "qemu");
        assert_eq!(parsed[0]["vmm_pid"], live.pid);
        assert_eq!(parsed[0]["memory_mib"], 512);
        assert_eq!(parsed[0]["state"], "running");
        assert_eq!(parsed[0]["agent_ready_ms"], 750);
        assert_eq!(parsed[1]["state"], "dead");
        assert!(parsed[1]["uptime_seconds"].is_null());
    }
}
