//! `isola ps` and `isola monitor` on a node with two running pods (a private containerd): both
//! pods listed as running with their VMM's pid, and the scrape's figures for each VMM matching
//! what /proc says of that process.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use isola_tests::containerd::{describe, shim_dir, Containerd};
use isola_tests::{comm, processes_mentioning};

const BOOT: Duration = Duration::from_secs(120);

/// The VMM of sandbox `id`.
fn vmm_pid(c: &Containerd, id: &str) -> u32 {
    let vm_dir = c.state_dir().join("vm").join(id);
    processes_mentioning(&vm_dir.to_string_lossy())
        .into_iter()
        .map(|(pid, _)| pid)
        .find(|pid| comm(*pid).starts_with(isola_tests::test_vmm_comm()))
        .unwrap_or_else(|| panic!("no VMM for {id}: {:?}", c.vm_processes()))
}

fn rss_bytes(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib * 1024.0
}

/// The value of the sample of `metric` whose labels include all of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn vm_ps_and_monitor_show_two_running_pods() {
    let c = Containerd::start();
    c.import_test_image();
    for id in ["t-obs-a", "t-obs-b"] {
        let out = c.run_with(&["-d"], id, &["sleep", "1000"], None);
        assert!(out.status.success(), "ctr run -d {id}: {}", describe(&out));
        c.wait_task_status(id, "RUNNING", BOOT);
    }
    let isola = shim_dir().join("isola");
    let config = c.isola_config().to_owned();

    let ps = Command::new(&isola)
        .arg("--config")
        .arg(&config)
        .args(["ps", "--json"])
        .output()
        .unwrap();
    assert!(ps.status.success(), "isola ps: {}", describe(&ps));
    let listed: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    for id in ["t-obs-a", "t-obs-b"] {
        let pod = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["sandbox_id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {listed}"));
        assert_eq!(pod["state"], "running", "{pod}");
        assert_eq!(pod["vmm_pid"], vmm_pid(&c, id), "{pod}");
        assert!(
            pod["agent_ready_ms"].as_u64().is_some_and(|ms| ms > 0),
            "{pod}"
        );
    }

    let mut monitor = Command::new(&isola)
        .arg("--config")
        .arg(&config)
        .args(["monitor", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(monitor.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    let get = || {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        conn.write_all(request.as_bytes()).unwrap();
        let mut scrape = String::new();
        conn.read_to_string(&mut scrape).unwrap();
        scrape
    };
    // The shims' snapshots (guest figures, agent RPC counters) are written at boot and every
    // 10 s: wait for one that has seen the container created.
    let created = |scrape: &str, id: &str| {
        let pod = format!("sandbox_id=\"{id}\"");
        let rpc = [pod.as_str(), "rpc=\"CreateContainer\""];
        sample(scrape, "isola_agent_rpc_calls_total", &rpc).is_some_and(|n| n >= 1.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    let mut scrape = get();
    while !(created(&scrape, "t-obs-a") && created(&scrape, "t-obs-b")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot counted CreateContainer:\n{scrape}"
        );
        std::thread::sleep(Duration::from_millis(500));
        scrape = get();
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    assert_eq!(
        sample(&scrape, "isola_sandboxes", &["state=\"running\""]),
        Some(2.0),
        "{scrape}"
    );
    for id in ["t-obs-a", "t-obs-b"] {
        let pod = format!("sandbox_id=\"{id}\"");
        let vmm = ["process=\"vmm\"", pod.as_str()];
        let rss = sample(&scrape, "isola_process_resident_memory_bytes", &vmm)
            .unwrap_or_else(|| panic!("no VMM RSS for {id}:\n{scrape}"));
        let now = rss_bytes(vmm_pid(&c, id));
        assert!(
            (rss - now).abs() / now < 0.25,
            "{id}: scraped RSS {rss} vs /proc {now}"
        );
        let pss = sample(&scrape, "isola_process_pss_bytes", &vmm).unwrap();
        assert!(pss > 0.0 && pss <= rss * 1.05, "{id}: PSS {pss}, RSS {rss}");
        // A template clone's RAM copy its guest has not touched is in no PSS; a booted VM's
        // guest RAM is all mapped.
        let unmapped = sample(
            &scrape,
            "isola_pod_guest_ram_unmapped_bytes",
            &[pod.as_str()],
        )
        .unwrap_or_else(|| panic!("{id}: no unmapped guest RAM figure:\n{scrape}"));
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", vmm_pid(&c, id))).unwrap();
        let clone = String::from_utf8_lossy(&cmdline).contains("-incoming");
        if clone {
            assert!(
                unmapped > 1024.0 * 1024.0 && unmapped < 512.0 * 1024.0 * 1024.0,
                "{id}: a clone's untouched RAM copy: {unmapped} bytes"
            );
        } else {
            assert!(unmapped < 1024.0 * 1024.0, "{id}: a booted VM: {unmapped}");
        }
        let cpu = sample(&scrape, "isola_process_cpu_seconds_total", &vmm).unwrap();
        assert!(cpu > 0.0, "{id}: a booted VMM used CPU: {cpu}");
        assert!(
            sample(
                &scrape,
                "isola_process_resident_memory_bytes",
                &[pod.as_str(), "process=\"virtiofsd\""]
            )
            .is_some(),
            "{id}: virtiofsd's figures:\n{scrape}"
        );
        // The shim serving the pod is one of its host processes too.
        let shim = [pod.as_str(), "process=\"shim\""];
        let shim_rss = sample(&scrape, "isola_process_resident_memory_bytes", &shim)
            .unwrap_or_else(|| panic!("{id}: no figures of the shim:\n{scrape}"));
        assert!(
            shim_rss > 1024.0 * 1024.0 && shim_rss < rss,
            "{id}: shim RSS {shim_rss} (VMM {rss})"
        );
        assert!(sample(&scrape, "isola_process_cpu_seconds_total", &shim).is_some_and(|c| c > 0.0));
        // The guest's own view, from the agent.
        let total = sample(&scrape, "isola_guest_memory_total_bytes", &[pod.as_str()])
            .unwrap_or_else(|| panic!("{id}: no guest memory:\n{scrape}"));
        let avail = sample(
            &scrape,
            "isola_guest_memory_available_bytes",
            &[pod.as_str()],
        )
        .unwrap();
        assert!(
            total >= 256.0 * 1024.0 * 1024.0 && avail > 0.0 && avail < total,
            "{id}: {avail} of {total}"
        );
        let guest_cpu = sample(&scrape, "isola_guest_cpu_seconds_total", &[pod.as_str()]).unwrap();
        assert!(guest_cpu > 0.0, "{id}: guest CPU {guest_cpu}");
    }

    // Every line the agent logs once it serves the pod names the pod; a container request's
    // lines name the container too.
    for id in ["t-obs-a", "t-obs-b"] {
        let exec = c.ctr(&["tasks", "exec", "--exec-id", "logged", id, "true"]);
        assert!(exec.status.success(), "{}", describe(&exec));
        agent_lines_name_the_pod(&c, id);
    }

    for id in ["t-obs-a", "t-obs-b"] {
        let _ = c.ctr(&["tasks", "kill", "-s", "KILL", id]);
        let _ = c.ctr(&["tasks", "rm", "-f", id]);
        let _ = c.ctr(&["containers", "rm", id]);
    }
    c.assert_nothing_left("two pods, isola ps and isola monitor");
}

/// The agent's lines in pod `id`'s console log from the sandbox's creation on: each starts with
/// `sandbox_id=<id>`, and the exec's lines carry `container_id=<id>` (ctr's container is named
/// like its pod).
fn agent_lines_name_the_pod(c: &Containerd, id: &str) {
    let log = c.state_dir().join("vm").join(id).join("console.log");
    let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let is_agent = |l: &str| {
        [" INFO ", " WARN ", " DEBUG ", " TRACE ", "ERROR "]
            .iter()
            .any(|lvl| l.contains(lvl))
    };
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("sandbox created"))
        .filter(|l| is_agent(l))
        .collect();
    assert!(
        !lines.is_empty(),
        "{id}: no agent lines after the sandbox's creation:\n{text}"
    );
    let prefix = format!("sandbox_id={id} ");
    for l in &lines {
        assert!(
            l.starts_with(&prefix),
            "{id}: an agent line without its pod: {l:?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ExecProcess") && l.contains(&format!("container_id={id}"))),
        "{id}: no exec line naming the container:\n{}",
        lines.join("\n")
    );
}
