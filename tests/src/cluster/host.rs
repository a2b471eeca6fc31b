//! What a kubelet changes on the host outside its directories, recorded before the cluster
//! starts and put back when it goes: the node interface the harness adds (an `ifb` link with
//! the node IP: the node IP cannot be a loopback address, and this kind of host has no `dummy`
//! driver), the sysctls kubelet sets (`vm.overcommit_memory`, `kernel.panic`,
//! `kernel.panic_on_oops`), the iptables chains it adds (KUBE-FIREWALL, KUBE-KUBELET-CANARY,
//! KUBE-IPTABLES-HINT, in the filter, mangle and nat tables, v4 and v6), and the fixed paths it
//! creates (`/var/lib/kubelet`, `/var/log/containers`, `/var/log/pods`); and the nat chain the
//! harness adds itself for the `kubernetes` Service ([`super::service`]).
//!
//! The record is written to the cluster's directory before anything changes ([`STATE_FILE`]),
//! so a run that was interrupted (killed, Ctrl-C: no drop runs) is put back by the next one,
//! which reaps directories whose test process is gone ([`restore_stale`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// The record's file in the cluster's directory.
pub const STATE_FILE: &str = "host-state.json";

/// The sysctls kubelet sets on the host.
const KUBELET_SYSCTLS: [&str; 3] = [
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
];
/// The iptables chains kubelet adds.
const KUBELET_CHAINS: [&str; 3] = ["KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"];
/// Paths kubelet creates whatever its flags say.
const KUBELET_PATHS: [&str; 3] = ["/var/lib/kubelet", "/var/log/containers", "/var/log/pods"];

/// The host as it was, to put back.
#[derive(Debug, Serialize, Deserialize)]
pub struct HostState {
    link: String,
    sysctls: Vec<(PathBuf, String)>,
    absent_paths: Vec<PathBuf>,
    /// (tool, table) pairs whose kubelet chains existed before (a real kubelet's): kept.
    had_chains: Vec<(String, String)>,
    /// Whether the harness mounted the hugetlb v1 hierarchy (see [`HUGETLB`]).
    #[serde(default)]
    mounted_hugetlb: bool,
    /// The kubelet's QoS cgroup trees this cluster creates (none existed before).
    #[serde(default)]
    cgroup_trees: Vec<PathBuf>,
    /// The harness's iptables nat chain for the `kubernetes` Service (recorded before it is
    /// added; removed with the jumps to it).
    #[serde(default)]
    nat_chain: Option<String>,
}

/// Where kubelet (cgroupfs driver, cgroups v1) puts its pod cgroups: `kubepods` under each
/// controller.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const KUBEPODS: &str = "kubepods";
/// This host enables the hugetlb controller without mounting it in its v1 (hybrid) hierarchy,
/// which a systemd host does; CRI-O (through the kubelet's huge-page limits, one per page size
/// of the node) and runc then fail every container. The harness mounts it as a node has it,
/// and unmounts it afterwards.
const HUGETLB: &str = "/sys/fs/cgroup/hugetlb";

const IPTABLES: [&str; 2] = ["iptables", "ip6tables"];
const TABLES: [&str; 3] = ["filter", "mangle", "nat"];

pub(super) fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl HostState {
    /// Records the host (also in `dir`'s [`STATE_FILE`]) and adds the node link `link` with
    /// `ip`.
    pub fn prepare(dir: &Path, link: &str, ip: Ipv4Addr) -> Result<HostState> {
        let sysctls = KUBELET_SYSCTLS
            .iter()
            .map(|k| {
                let p = Path::new("/proc/sys").join(k);
                let v = std::fs::read_to_string(&p).unwrap_or_default();
                (p, v.trim().to_string())
            })
            .collect();
        let absent_paths = KUBELET_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect();
        let mut had_chains = Vec::new();
        for tool in IPTABLES {
            for table in TABLES {
                let rules = run(&[tool, "-w", "-t", table, "-S"]).unwrap_or_default();
                if KUBELET_CHAINS
                    .iter()
                    .any(|c| rules.lines().any(|l| l == format!("-N {c}")))
                {
                    had_chains.push((tool.to_string(), table.to_string()));
                }
            }
        }
        let mounted_hugetlb = !Path::new(HUGETLB).exists() && hugetlb_unmounted_but_enabled();
        let cgroup_trees: Vec<PathBuf> = std::fs::read_dir(CGROUP_ROOT)
            .map(|d| d.flatten().map(|e| e.path().join(KUBEPODS)).collect())
            .unwrap_or_default();
        let mut cgroup_trees = cgroup_trees;
        if mounted_hugetlb {
            cgroup_trees.push(Path::new(HUGETLB).join(KUBEPODS));
        }
        if let Some(t) = cgroup_trees.iter().find(|t| t.exists()) {
            anyhow::bail!(
                "{} exists: another kubelet runs on this host (or one left it); \
                 a test node needs the host's cgroups to itself",
                t.display()
            );
        }
        let state = HostState {
            link: link.to_string(),
            sysctls,
            absent_paths,
            had_chains,
            mounted_hugetlb,
            cgroup_trees,
            nat_chain: Some(super::service::CHAIN.to_string()),
        };
        std::fs::write(dir.join(STATE_FILE), serde_json::to_vec(&state)?)
            .context("recording the host's state")?;
        if mounted_hugetlb {
            std::fs::create_dir_all(HUGETLB)?;
            run(&["mount", "-t", "cgroup", "-o", "hugetlb", "hugetlb", HUGETLB])?;
        }
        let _ = Command::new("ip").args(["link", "del", link]).output();
        run(&["ip", "link", "add", link, "type", "ifb"])?;
        run(&["ip", "addr", "add", &format!("{ip}/32"), "dev", link])?;
        run(&["ip", "link", "set", link, "up"])?;
        Ok(state)
    }

    /// Puts the host back (best effort: what fails is reported and the rest still done).
    pub fn restore(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = run(&["ip", "link", "del", &self.link]) {
            problems.push(format!("removing {}: {e:#}", self.link));
        }
        for (path, value) in &self.sysctls {
            if value.is_empty() {
                continue;
            }
            if let Err(e) = std::fs::write(path, value) {
                problems.push(format!("restoring {}: {e}", path.display()));
            }
        }
        for tool in IPTABLES {
            for table in TABLES {
                if !self
                    .had_chains
                    .iter()
                    .any(|(t, tb)| t == tool && tb == table)
                {
                    remove_chains(tool, table, &KUBELET_CHAINS);
                }
            }
        }
        if let Some(chain) = &self.nat_chain {
            remove_chains("iptables", "nat", &[chain.as_str()]);
        }
        for tree in &self.cgroup_trees {
            if let Err(e) = remove_cgroup_tree(tree) {
                problems.push(format!("removing {}: {e}", tree.display()));
            }
        }
        if self.mounted_hugetlb && Path::new(HUGETLB).exists() {
            if let Err(e) = run(&["umount", HUGETLB]) {
                problems.push(format!("unmounting {HUGETLB}: {e:#}"));
            } else if let Err(e) = std::fs::remove_dir(HUGETLB) {
                problems.push(format!("removing {HUGETLB}: {e}"));
            }
        }
        for p in &self.absent_paths {
            if let Err(e) = std::fs::remove_dir_all(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    problems.push(format!("removing {}: {e}", p.display()));
                }
            }
        }
        problems
    }
}

/// Whether /proc/cgroups lists hugetlb as enabled while no cgroup v1 mount carries it and the
/// unified hierarchy does not use it either (so a v1 mount can take it).
fn hugetlb_unmounted_but_enabled() -> bool {
    let cgroups = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    let enabled = cgroups.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() == 4 && f[0] == "hugetlb" && f[3] == "1"
    });
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "hugetlb")
    });
    let unified_uses = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.subtree_control")
        .map(|s| s.contains("hugetlb"))
        .unwrap_or(false);
    enabled && !mounted && !unified_uses
}

/// The record in a cluster directory whose test process is gone, if it has one (read before
/// the directory goes; [`HostState::restore`] after its processes are dead).
pub fn stale_record(dir: &Path) -> Option<HostState> {
    let bytes = std::fs::read(dir.join(STATE_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Removes a cgroup directory and the ones below it (cgroupfs: rmdir, deepest first; a cgroup
/// whose last process is still exiting is retried for a few seconds).
fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match remove_cgroup_once(dir) {
            Err(e)
                if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Kills what still runs in the tree (it is this cluster's: none existed before), then
/// removes it bottom-up.
fn remove_cgroup_once(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for e in entries.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_cgroup_once(&e.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes `chains` from `table` (rules jumping to them first).
pub(super) fn remove_chains(tool: &str, table: &str, chains: &[&str]) {
    let Ok(rules) = run(&[tool, "-w", "-t", table, "-S"]) else {
        return;
    };
    for line in rules.lines() {
        let jumps = chains.iter().any(|c| {
            let jump = format!("-j {c}");
            line.ends_with(&jump) || line.contains(&format!("{jump} "))
        });
        if let Some(rule) = line.strip_prefix("-A ").filter(|_| jumps) {
            let words = split_quoted(rule);
            let mut args = vec![tool, "-w", "-t", table, "-D"];
            args.extend(words.iter().map(String::as_str));
            let _ = run(&args);
        }
    }
    for chain in chains {
        if rules.lines().any(|l| l == format!("-N {chain}")) {
            let _ = run(&[tool, "-w", "-t", table, "-F", chain]);
            let _ = run(&[tool, "-w", "-t", table, "-X", chain]);
        }
    }
}

/// Splits an `iptables -S` rule into words, a double-quoted run being one word.
fn split_quoted(rule: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in rule.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = HostState {
            link: "isola-k8s0".into(),
            sysctls: vec![("/proc/sys/kernel/panic".into(), "0".into())],
            absent_paths: vec!["/var/log/pods".into()],
            had_chains: vec![("iptables".into(), "nat".into())],
            mounted_hugetlb: true,
            cgroup_trees: vec!["/sys/fs/cgroup/memory/kubepods".into()],
            nat_chain: Some("ISOLA-TEST-K8S-SERVICES".into()),
        };
        std::fs::write(
            dir.path().join(STATE_FILE),
            serde_json::to_vec(&state).unwrap(),
        )
        .unwrap();
        let back = stale_record(dir.path()).expect("a record");
        assert_eq!(format!("{back:?}"), format!("{state:?}"));
        assert!(stale_record(&dir.path().join("nothing")).is_none());
    }

    #[test]
    fn rules_split_with_quoted_comments() {
        let rule = r#"INPUT -m comment --comment "kubernetes firewall for dropping marked packets" -j KUBE-FIREWALL"#;
        assert_eq!(
            split_quoted(rule),
            [
                "INPUT",
                "-m",
                "comment",
                "--comment",
                "kubernetes firewall for dropping marked packets",
                "-j",
                "KUBE-FIREWALL"
            ]
        );
    }
}
