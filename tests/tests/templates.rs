//! VM templates (`[factory] template = true`, docs/fast-start.md) through containerd: the first
//! pod builds the template, later pods are clones of it.
//!
//! - Several clones at once move data both ways through their own virtio-fs share (a bind
//!   mount: read a host file, write one back) and their own vsock (stdin in, stdout out), and
//!   every byte is compared: a clone whose vhost-user daemon mapped the template's RAM, or two
//!   clones sharing pages, would corrupt one of the four streams.
//! - Each clone is its own machine at once: its own boot id and random bytes (the RNG is
//!   reseeded from the host), the host's clock.
//! - A damaged template never fails a pod: it boots cold.
//! - Nothing a clone had is left behind; the template itself stays (it is a cache, like an
//!   image), with no build leftovers.

use std::path::Path;
use std::process::Output;

use isola_tests::containerd::{describe, pseudo_random_bytes, Containerd};
use isola_tests::TestEnv;

/// How many clones run at once.
const CLONES: usize = 3;

fn templated() -> Containerd {
    let mut env = TestEnv::new();
    env.config.factory.template = true;
    let c = Containerd::start_with(env);
    c.import_test_image();
    c
}

fn templates_dir(c: &Containerd) -> std::path::PathBuf {
    c.state_dir().join("templates")
}

/// The template directories (not the lock files); panics on a build leftover.
fn templates(c: &Containerd) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(templates_dir(c))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    assert!(
        !names.iter().any(|n| n.ends_with(".build")),
        "a template build was left behind: {names:?}"
    );
    names.retain(|n| !n.ends_with(".lock"));
    names
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// The command each clone runs: an identity line, the shared file, then stdin into a file.
const CLONE_SCRIPT: &str = "echo \"ID $(cat /proc/sys/kernel/random/boot_id) \
     $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n') $(date +%s)\"; \
     cat /data/in; cat > /data/out";

struct CloneRun {
    id: String,
    boot_id: String,
    random: String,
    clock: u64,
}

/// Runs clone `i` with its own share `dir` holding `into_guest`, feeding it `stdin`; checks
/// every byte both ways.
fn run_clone(c: &Containerd, i: usize, dir: &Path, into_guest: &[u8], stdin: Vec<u8>) -> CloneRun {
    let id = format!("clone-{i}");
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", dir.display());
    let out: Output = c.run_with(
        &["--rm", "--mount", &mount],
        &id,
        &["sh", "-c", CLONE_SCRIPT],
        Some(stdin.clone()),
    );
    assert!(out.status.success(), "{id}: {}", describe_short(&out));
    let newline = out
        .stdout
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or_else(|| panic!("{id}: no identity line: {}", describe_short(&out)));
    let line = String::from_utf8_lossy(&out.stdout[..newline]).into_owned();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{id}: identity line {line:?}");
    let from_share = &out.stdout[newline + 1..];
    assert!(
        from_share == into_guest,
        "{id}: the file read through virtio-fs came back over vsock with {} bytes for {} \
         (first difference at {:?})",
        from_share.len(),
        into_guest.len(),
        from_share.iter().zip(into_guest).position(|(a, b)| a != b)
    );
    let written = std::fs::read(dir.join("out")).expect("the clone's file on the host");
    assert!(
        written == stdin,
        "{id}: stdin written through virtio-fs is {} bytes for {} (first difference at {:?})",
        written.len(),
        stdin.len(),
        written.iter().zip(&stdin).position(|(a, b)| a != b)
    );
    CloneRun {
        id,
        boot_id: fields[1].to_owned(),
        random: fields[2].to_owned(),
        clock: fields[3].parse().expect("date +%s"),
    }
}

fn describe_short(out: &Output) -> String {
    describe(&Output {
        stdout: out.stdout.iter().take(400).copied().collect(),
        ..out.clone()
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn vm_template_clones_move_data_both_ways_at_once_and_diverge() {
    let c = templated();
    // The first pod builds the template (and is its first clone).
    let first = c.run("first", &["true"]);
    assert!(first.status.success(), "{}", describe(&first));
    let log = c.log();
    assert_eq!(count(&log, "VM template built"), 1, "{}", c.log_tail(40));
    assert_eq!(templates(&c).len(), 1, "one template");
    // `isola template ls` finds the template pods built and names it as this
    // configuration's: the CLI and the shim agree on the key.
    let ls = std::process::Command::new(isola_tests::containerd::shim_dir().join("isola"))
        .args(["--config"])
        .arg(c.isola_config())
        .args(["template", "ls"])
        .output()
        .expect("running isola template ls");
    let listed = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "isola template ls: {}", describe(&ls));
    assert!(
        listed.contains(&templates(&c)[0]) && listed.contains("by this configuration"),
        "isola template ls:\n{listed}"
    );

    let shares = tempfile::tempdir().unwrap();
    let inputs: Vec<(std::path::PathBuf, Vec<u8>, Vec<u8>)> = (0..CLONES)
        .map(|i| {
            let dir = shares.path().join(format!("share{i}"));
            std::fs::create_dir(&dir).unwrap();
            let into_guest = pseudo_random_bytes(3 << 20, 0x7e00 + i as u64);
            std::fs::write(dir.join("in"), &into_guest).unwrap();
            let stdin = pseudo_random_bytes(2 << 20, 0x5700 + i as u64);
            (dir, into_guest, stdin)
        })
        .collect();
    let started = now();
    let runs: Vec<CloneRun> = std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, (dir, into_guest, stdin))| {
                let c = &c;
                s.spawn(move || run_clone(c, i, dir, into_guest, stdin.clone()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let log = c.log();
    assert_eq!(
        count(&log, "VM restored from its template"),
        CLONES + 1,
        "every pod started from the template: {}",
        c.log_tail(60)
    );
    assert_eq!(count(&log, "VM template built"), 1, "built once");
    for (i, a) in runs.iter().enumerate() {
        assert!(
            a.clock + 5 >= started && a.clock <= now() + 5,
            "{} has the template's clock, not the host's: {} (host {started})",
            a.id,
            a.clock
        );
        for b in &runs[i + 1..] {
            assert_ne!(
                a.boot_id, b.boot_id,
                "{} and {} share a boot id",
                a.id, b.id
            );
            assert_ne!(
                a.random, b.random,
                "{} and {} read the same random bytes",
                a.id, b.id
            );
        }
    }
    c.assert_nothing_left("clones of a template");
    assert_eq!(templates(&c).len(), 1, "the template stays");
}

/// Runs `name` (`sh -c "echo <name>"`) and checks its output.
fn echo(c: &Containerd, name: &str) {
    let out = c.run(name, &["sh", "-c", &format!("echo {name}")]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{name}\n"));
}

/// The one template's directory, once the next pod built it.
fn rebuilt(c: &Containerd, name: &str, builds: usize) -> std::path::PathBuf {
    echo(c, name);
    assert_eq!(
        count(&c.log(), "VM template built"),
        builds,
        "{}",
        c.log_tail(40)
    );
    let names = templates(c);
    assert_eq!(names.len(), 1, "{names:?}");
    templates_dir(c).join(&names[0])
}

#[test]
fn vm_a_damaged_template_boots_the_pod_cold() {
    let c = templated();
    let template = rebuilt(&c, "build", 1);
    // A missing piece is found before anything starts: the template is removed, the pod boots.
    std::fs::remove_file(template.join("state")).unwrap();
    echo(&c, "missing");
    assert!(
        c.log().contains("state file"),
        "the damage is named: {}",
        c.log_tail(40)
    );
    assert!(templates(&c).is_empty(), "the damaged template is removed");
    c.assert_nothing_left("a template found damaged");

    // The stream is garbage of a plausible size: it passes the store's checks and fails in
    // QEMU, after the clone's QEMU and daemons were started.
    let template = rebuilt(&c, "rebuilt", 2);
    let state = template.join("state");
    let size = std::fs::metadata(&state).unwrap().len() as usize;
    std::fs::write(&state, pseudo_random_bytes(size, 0xbad)).unwrap();
    echo(&c, "garbage-stream");
    let log = c.log();
    assert_eq!(
        count(
            &log,
            "starting from the template failed: booting the VM instead"
        ),
        1,
        "{}",
        c.log_tail(40)
    );
    assert!(
        templates(&c).is_empty(),
        "a template a restore failed from is removed"
    );
    c.assert_nothing_left("a failed restore and a cold boot");

    // The RAM is garbage where the kernel is: the restore succeeds, the clone never answers
    // (it dies or hangs), and the pod's VM is booted instead.
    let template = rebuilt(&c, "rebuilt-again", 3);
    let ram = std::fs::OpenOptions::new()
        .write(true)
        .open(template.join("ram"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&ram, &pseudo_random_bytes(64 << 20, 0xdead), 0)
        .unwrap();
    drop(ram);
    echo(&c, "garbage-ram");
    assert_eq!(
        count(
            &c.log(),
            "the VM restored from its template did not answer: booting it instead"
        ),
        1,
        "{}",
        c.log_tail(40)
    );
    assert!(templates(&c).is_empty(), "the clone's template is removed");
    c.assert_nothing_left("a clone that never answered and a cold boot");
    rebuilt(&c, "rebuilt-at-last", 4);
    c.assert_nothing_left("rebuilding a template");
}
