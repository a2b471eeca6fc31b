//! OnlineCPUMem: bringing CPUs and memory the host hot-plugged into use.
//!
//! A hot-plugged CPU appears as `/sys/devices/system/cpu/cpuN` with `online` = 0, a memory
//! block as `/sys/devices/system/memory/memoryN` with `state` = `offline`; nothing in the guest
//! onlines them (there is no udev). [`online`] writes `1` to every offline CPU and `online` to
//! every offline memory block (`online_movable` if the kernel refuses plain `online`), then
//! reports what it onlined. CPUs can take a moment to appear after the host's hot-plug, so when
//! the host says how many it added, the CPUs are looked for again until that many were onlined
//! (bounded by [`CPU_WAIT`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{AgentError, Result};

/// The sysfs mount.
pub const SYSFS: &str = "/sys";
/// How long to wait for the CPUs the host announced to appear.
pub const CPU_WAIT: Duration = Duration::from_secs(5);
/// How often to look for them meanwhile.
const CPU_RETRY: Duration = Duration::from_millis(50);

/// The entries `<prefix>N` of `dir`, by N.
fn numbered(dir: &Path, prefix: &str) -> std::io::Result<Vec<(u32, PathBuf)>> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix(prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Onlines every offline CPU under `sys`; returns their numbers. A CPU without an `online`
/// file (the boot CPU) cannot be offline.
pub fn online_cpus(sys: &Path) -> Result<Vec<u32>> {
    let dir = sys.join("devices/system/cpu");
    let mut onlined = Vec::new();
    for (n, path) in numbered(&dir, "cpu")
        .map_err(|e| AgentError::io(format!("listing {}", dir.display()), e))?
    {
        let control = path.join("online");
        if read_trimmed(&control).as_deref() != Some("0") {
            continue;
        }
        std::fs::write(&control, "1")
            .map_err(|e| AgentError::io(format!("onlining CPU {n} ({})", control.display()), e))?;
        onlined.push(n);
    }
    Ok(onlined)
}

/// Onlines every offline memory block under `sys`; returns their numbers. A guest without
/// memory hot-plug support has no blocks: nothing to do.
pub fn online_memory(sys: &Path) -> Result<Vec<u32>> {
    let dir = sys.join("devices/system/memory");
    let blocks = match numbered(&dir, "memory") {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AgentError::io(format!("listing {}", dir.display()), e)),
    };
    let mut onlined = Vec::new();
    for (n, path) in blocks {
        let state = path.join("state");
        if read_trimmed(&state).as_deref() != Some("offline") {
            continue;
        }
        if let Err(first) = std::fs::write(&state, "online") {
            std::fs::write(&state, "online_movable").map_err(|e| {
                AgentError::io(
                    format!(
                        "onlining memory block {n} ({}; online: {first})",
                        state.display()
                    ),
                    e,
                )
            })?;
        }
        onlined.push(n);
    }
    Ok(onlined)
}

/// What [`online`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Onlined {
    pub cpus: Vec<u32>,
    pub memory_blocks: Vec<u32>,
}

/// OnlineCPUMem: onlines the offline CPUs (waiting up to `cpu_wait` for `nb_cpus` of them when
/// the host says it added that many) and, unless `cpu_only`, the offline memory blocks.
pub async fn online(
    sys: &Path,
    nb_cpus: u32,
    cpu_only: bool,
    cpu_wait: Duration,
) -> Result<Onlined> {
    let mut done = Onlined::default();
    let deadline = tokio::time::Instant::now() + cpu_wait;
    loop {
        done.cpus.extend(online_cpus(sys)?);
        if done.cpus.len() >= nb_cpus as usize {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::DeadlineExceeded(format!(
                "the host added {nb_cpus} CPUs but only {} appeared offline within {cpu_wait:?} (onlined: {:?})",
                done.cpus.len(),
                done.cpus
            )));
        }
        tokio::time::sleep(CPU_RETRY).await;
    }
    if !cpu_only {
        done.memory_blocks = online_memory(sys)?;
    }
    tracing::info!(cpus = ?done.cpus, memory_blocks = ?done.memory_blocks, "OnlineCPUMem: onlined");
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs: cpu0 (no online file), cpu1 offline, cpu2 online, cpufreq (not a CPU);
    /// memory0 online, memory1 and memory3 offline.
    fn fake_sys() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let cpu = d.path().join("devices/system/cpu");
        for c in ["cpu0", "cpu1", "cpu2", "cpufreq"] {
            std::fs::create_dir_all(cpu.join(c)).unwrap();
        }
        std::fs::write(cpu.join("cpu1/online"), "0\n").unwrap();
        std::fs::write(cpu.join("cpu2/online"), "1\n").unwrap();
        std::fs::write(cpu.join("online"), "0,2\n").unwrap();
        let mem = d.path().join("devices/system/memory");
        for (m, state) in [
            ("memory0", "online"),
            ("memory1", "offline"),
            ("memory3", "offline"),
        ] {
            std::fs::create_dir_all(mem.join(m)).unwrap();
            std::fs::write(mem.join(m).join("state"), format!("{state}\n")).unwrap();
        }
        std::fs::write(mem.join("block_size_bytes"), "8000000\n").unwrap();
        d
    }

    fn read(d: &tempfile::TempDir, p: &str) -> String {
        std::fs::read_to_string(d.path().join(p)).unwrap()
    }

    #[tokio::test]
    async fn onlines_what_is_offline_and_nothing_else() {
        let d = fake_sys();
        let done = online(d.path(), 0, false, CPU_WAIT).await.unwrap();
        assert_eq!(done.cpus, [1]);
        assert_eq!(done.memory_blocks, [1, 3]);
        assert_eq!(read(&d, "devices/system/cpu/cpu1/online"), "1");
        assert_eq!(read(&d, "devices/system/cpu/cpu2/online"), "1\n");
        assert_eq!(read(&d, "devices/system/memory/memory1/state"), "online");
        assert_eq!(read(&d, "devices/system/memory/memory0/state"), "online\n");
        // A second call finds nothing to do.
        assert_eq!(
            online(d.path(), 0, false, CPU_WAIT).await.unwrap(),
            Onlined::default()
        );
    }

    #[tokio::test]
    async fn cpu_only_leaves_memory_alone() {
        let d = fake_sys();
        let done = online(d.path(), 1, true, CPU_WAIT).await.unwrap();
        assert_eq!(
            done,
            Onlined {
                cpus: vec![1],
                memory_blocks: vec![]
            }
        );
        assert_eq!(read(&d, "devices/system/memory/memory1/state"), "offline\n");
    }

    #[tokio::test]
    async fn waits_for_announced_cpus_then_gives_up() {
        let d = fake_sys();
        let cpu3 = d.path().join("devices/system/cpu/cpu3");
        let appear = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::fs::create_dir_all(&cpu3).unwrap();
            std::fs::write(cpu3.join("online"), "0").unwrap();
        });
        let done = online(d.path(), 2, true, CPU_WAIT).await.unwrap();
        appear.await.unwrap();
        assert_eq!(done.cpus, [1, 3]);
        let e = online(d.path(), 1, true, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::DEADLINE_EXCEEDED, "{e}");
    }

    #[test]
    fn no_memory_hotplug_is_not_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(online_memory(d.path()).unwrap().is_empty());
        assert!(online_cpus(d.path()).is_err());
    }
}
