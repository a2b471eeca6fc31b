//! OnlineCPUMem: bringing CPUs and memory the host hot-plugged into use.
//!
//! A hot-plugged CPU appears as `/sys/devices/system/cpu/cpuN` with `online` = 0, a memory
//! block as `/sys/devices/system/memory/memoryN` with `state` = `offline`; nothing in the guest
//! onlines them (there is no udev). [`online`] writes `1` to every offline CPU and `online` to
//! every offline memory block (`online_movable` if the kernel refuses plain `online`), then
//! reports what it onlined. CPUs and memory can take a moment to appear after the host's
//! hot-plug: the host's `device_add` returns before the guest's ACPI handler has added them.
//! So when the host says how many CPUs it added, they are looked for again until that many were
//! onlined; when it says how much memory the VM now has, the agent waits until the guest's
//! memory blocks add up to it and every one is online (the kernel may be onlining them itself,
//! `memhp_default_state=online`, at the same moment). Both waits are bounded by [`HOTPLUG_WAIT`]:
//! an Update that raised a memory limit answers only once that memory can be used.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{AgentError, Result};

/// The sysfs mount.
pub const SYSFS: &str = "/sys";
/// How long to wait for the CPUs and memory the host announced to appear and be online.
pub const HOTPLUG_WAIT: Duration = Duration::from_secs(10);
/// How often to look for them meanwhile.
const RETRY: Duration = Duration::from_millis(50);

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

/// The memory blocks under `sys` with their directories; none where the guest has no memory
/// hot-plug support.
fn memory_blocks(sys: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let dir = sys.join("devices/system/memory");
    match numbered(&dir, "memory") {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(AgentError::io(format!("listing {}", dir.display()), e)),
    }
}

/// Onlines every offline memory block under `sys`; returns their numbers. A block the kernel
/// onlined itself meanwhile (the write then fails, the state reads `online`) is not an error
/// and not counted. A guest without memory hot-plug support has no blocks: nothing to do.
pub fn online_memory(sys: &Path) -> Result<Vec<u32>> {
    let mut onlined = Vec::new();
    for (n, path) in memory_blocks(sys)? {
        let state = path.join("state");
        if read_trimmed(&state).as_deref() != Some("offline") {
            continue;
        }
        if let Err(first) = std::fs::write(&state, "online") {
            if let Err(e) = std::fs::write(&state, "online_movable") {
                if read_trimmed(&state).is_some_and(|s| s.starts_with("online")) {
                    continue;
                }
                return Err(AgentError::io(
                    format!(
                        "onlining memory block {n} ({}; online: {first})",
                        state.display()
                    ),
                    e,
                ));
            }
        }
        onlined.push(n);
    }
    Ok(onlined)
}

/// The guest's memory block size in MiB (`block_size_bytes`, hexadecimal).
fn block_mib(sys: &Path) -> Result<u64> {
    let path = sys.join("devices/system/memory/block_size_bytes");
    let text = read_trimmed(&path).ok_or_else(|| {
        AgentError::FailedPrecondition(format!(
            "the host hot-plugged memory but {} is missing: the guest kernel has no memory hot-plug",
            path.display()
        ))
    })?;
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .ok()
        .map(|bytes| bytes >> 20)
        .filter(|mib| *mib > 0)
        .ok_or_else(|| {
            AgentError::io(
                format!("reading {}", path.display()),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not a hexadecimal block size: {text:?}"),
                ),
            )
        })
}

/// The guest's memory as blocks show it: MiB present (each boot RAM range rounded up to whole
/// blocks; hot-plugged DIMMs are whole blocks) and the blocks not online. The guest has all of
/// the VM's `memory_mib`, usable, when present >= memory_mib and none is left offline.
fn memory_present(sys: &Path) -> Result<(u64, Vec<u32>)> {
    let block = block_mib(sys)?;
    let blocks = memory_blocks(sys)?;
    let not_online = blocks
        .iter()
        .filter(|(_, p)| read_trimmed(&p.join("state")).as_deref() != Some("online"))
        .map(|(n, _)| *n)
        .collect();
    Ok((blocks.len() as u64 * block, not_online))
}

/// What [`online`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Onlined {
    pub cpus: Vec<u32>,
    pub memory_blocks: Vec<u32>,
}

/// What the host asks of [`online`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// CPUs the host has just hot-plugged: wait until that many were onlined (0: don't wait).
    pub nb_cpus: u32,
    /// Leave memory alone.
    pub cpu_only: bool,
    /// The VM's memory in MiB after the host's hot-plug: wait until the guest has that much,
    /// online (0: don't wait).
    pub memory_mib: u32,
}

/// OnlineCPUMem: onlines the offline CPUs and, unless `cpu_only`, the offline memory blocks,
/// waiting up to `wait` for what the host announced (see [`Wanted`]).
pub async fn online(sys: &Path, want: Wanted, wait: Duration) -> Result<Onlined> {
    let mut done = Onlined::default();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        done.cpus.extend(online_cpus(sys)?);
        if done.cpus.len() >= want.nb_cpus as usize {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::DeadlineExceeded(format!(
                "the host added {} CPUs but only {} appeared offline within {wait:?} (onlined: {:?})",
                want.nb_cpus,
                done.cpus.len(),
                done.cpus
            )));
        }
        tokio::time::sleep(RETRY).await;
    }
    if !want.cpu_only {
        loop {
            done.memory_blocks.extend(online_memory(sys)?);
            if want.memory_mib == 0 {
                break;
            }
            let (present, not_online) = memory_present(sys)?;
            if present >= u64::from(want.memory_mib) && not_online.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AgentError::DeadlineExceeded(format!(
                    "the VM has {} MiB of memory but within {wait:?} the guest found {present} MiB \
                     in memory blocks, blocks not online: {not_online:?} (onlined: {:?})",
                    want.memory_mib, done.memory_blocks
                )));
            }
            tokio::time::sleep(RETRY).await;
        }
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

    fn cpus(nb_cpus: u32) -> Wanted {
        Wanted {
            nb_cpus,
            cpu_only: true,
            memory_mib: 0,
        }
    }

    fn memory(memory_mib: u32) -> Wanted {
        Wanted {
            memory_mib,
            ..Wanted::default()
        }
    }

    fn read(d: &tempfile::TempDir, p: &str) -> String {
        std::fs::read_to_string(d.path().join(p)).unwrap()
    }

    #[tokio::test]
    async fn onlines_what_is_offline_and_nothing_else() {
        let d = fake_sys();
        let done = online(d.path(), Wanted::default(), HOTPLUG_WAIT)
            .await
            .unwrap();
        assert_eq!(done.cpus, [1]);
        assert_eq!(done.memory_blocks, [1, 3]);
        assert_eq!(read(&d, "devices/system/cpu/cpu1/online"), "1");
        assert_eq!(read(&d, "devices/system/cpu/cpu2/online"), "1\n");
        assert_eq!(read(&d, "devices/system/memory/memory1/state"), "online");
        assert_eq!(read(&d, "devices/system/memory/memory0/state"), "online\n");
        // A second call finds nothing to do.
        assert_eq!(
            online(d.path(), Wanted::default(), HOTPLUG_WAIT)
                .await
                .unwrap(),
            Onlined::default()
        );
    }

    #[tokio::test]
    async fn cpu_only_leaves_memory_alone() {
        let d = fake_sys();
        let done = online(d.path(), cpus(1), HOTPLUG_WAIT).await.unwrap();
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
        let done = online(d.path(), cpus(2), HOTPLUG_WAIT).await.unwrap();
        appear.await.unwrap();
        assert_eq!(done.cpus, [1, 3]);
        let e = online(d.path(), cpus(1), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::DEADLINE_EXCEEDED, "{e}");
    }

    #[tokio::test]
    async fn waits_for_announced_memory_to_arrive_and_be_online() {
        // fake_sys: three 128 MiB blocks (memory0, 1, 3), two of them offline.
        let d = fake_sys();
        let mem = d.path().join("devices/system/memory");
        // The host plugged 256 MiB more (to 640 MiB): memory4 and memory5 arrive later, one
        // onlined by the kernel itself, one left offline for the agent.
        let late = mem.clone();
        let appear = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            for (m, state) in [("memory4", "online"), ("memory5", "offline")] {
                std::fs::create_dir_all(late.join(m)).unwrap();
                std::fs::write(late.join(m).join("state"), state).unwrap();
            }
        });
        let done = online(d.path(), memory(640), HOTPLUG_WAIT).await.unwrap();
        appear.await.unwrap();
        assert_eq!(done.memory_blocks, [1, 3, 5]);
        assert_eq!(read(&d, "devices/system/memory/memory5/state"), "online");
        // What the guest already has needs no wait.
        let done = online(d.path(), memory(600), Duration::ZERO).await.unwrap();
        assert_eq!(done, Onlined::default());
        // Memory that never arrives: DEADLINE_EXCEEDED saying what the guest found.
        let e = online(d.path(), memory(1024), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::DEADLINE_EXCEEDED, "{e}");
        assert!(e.to_string().contains("found 640 MiB"), "{e}");
    }

    #[tokio::test]
    async fn announced_memory_without_hotplug_support_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("devices/system/cpu")).unwrap();
        let e = online(d.path(), memory(640), HOTPLUG_WAIT)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::FAILED_PRECONDITION, "{e}");
    }

    #[test]
    fn no_memory_hotplug_is_not_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(online_memory(d.path()).unwrap().is_empty());
        assert!(online_cpus(d.path()).is_err());
    }
}
