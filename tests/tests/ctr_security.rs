//! A container's security settings hold for every process in it, as under runc: the seccomp
//! filter, capabilities, no_new_privs, rlimits and user of `ctr tasks exec` processes, with and
//! without a terminal, compared side by side with the same container under runc on this host.
//!
//! Each container runs in its own VM (TCG here), so these are `vm_*` tests.

use std::process::Output;
use std::time::Duration;

use isola_tests::containerd::{describe, Containerd, RUNTIME};
use isola_tests::probe::{
    caps, confinement, field, CHMOD_DENIED_PROFILE, DENIED_BY_PROFILE, PROBE,
};

/// How long a container may take to reach RUNNING (a VM boot under TCG, on a shared host).
const BOOT: Duration = Duration::from_secs(120);
const RUNC: &str = "io.containerd.runc.v2";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn started() -> Containerd {
    let c = Containerd::start();
    c.import_test_image();
    c
}

/// `ctr run -d` with `runtime` and `opts`, sleeping; waits until it runs.
fn run_detached(c: &Containerd, runtime: &str, opts: &[&str], id: &str) {
    c.run_detached(runtime, opts, id, &["sleep", "100000"], BOOT);
}

fn remove(c: &Containerd, id: &str) {
    c.kill_and_remove(id);
}

/// The probe run by `ctr tasks exec` (with `opts`, e.g. `--user`) in container `id`.
fn exec_probe(c: &Containerd, id: &str, exec_id: &str, opts: &[&str]) -> String {
    let mut args = vec!["tasks", "exec", "--exec-id", exec_id];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[id, "sh", "-c", PROBE]);
    let out = c.ctr(&args);
    assert!(
        out.status.success(),
        "ctr {}: {}",
        args.join(" "),
        describe(&out)
    );
    stdout(&out)
}

/// The probe through `ctr tasks exec -t` on a pseudo-terminal.
fn exec_probe_tty(c: &Containerd, id: &str, exec_id: &str) -> String {
    let args = [
        "tasks",
        "exec",
        "-t",
        "--exec-id",
        exec_id,
        id,
        "sh",
        "-c",
        PROBE,
    ];
    let (code, term) = c.ctr_on_pty(&args, Duration::from_secs(120));
    assert_eq!(code, Some(0), "ctr {}: {term}", args.join(" "));
    term.replace('\r', "")
}

#[test]
fn vm_ctr_exec_runs_under_the_containers_seccomp_filter_like_runc() {
    let c = started();
    let profile = c.dir().join("chmod-denied.json");
    std::fs::write(&profile, CHMOD_DENIED_PROFILE).unwrap();
    let profile = profile.to_string_lossy().into_owned();
    // --allow-new-privs: no no_new_privs, the Kubernetes default, where installing the filter
    // needs CAP_SYS_ADMIN, which the container does not have. An AppArmor profile is host
    // policy the shim leaves out for the init and for every exec.
    let runc_opts = [
        "--seccomp",
        "--seccomp-profile",
        &profile,
        "--allow-new-privs",
    ];
    let mut opts = runc_opts.to_vec();
    opts.extend(["--apparmor-profile", "isola-test-host-profile"]);
    run_detached(&c, RUNTIME, &opts, "t-sec");
    // (This host has no AppArmor: runc gets the same container without the profile.)
    run_detached(&c, RUNC, &runc_opts, "t-sec-runc");

    let plain = exec_probe(&c, "t-sec", "e-plain", &[]);
    assert_eq!(
        field(&plain, "Seccomp"),
        "2",
        "exec without a terminal:\n{plain}"
    );
    assert_eq!(field(&plain, "NoNewPrivs"), "0", "{plain}");
    assert!(
        field(&plain, "chmod").contains(DENIED_BY_PROFILE),
        "{plain}"
    );
    // The filter is installed with CAP_SYS_ADMIN held for the moment: it is gone afterwards.
    let cap_eff = caps(&plain, "CapEff");
    assert_eq!(
        cap_eff & (1 << 21),
        0,
        "CAP_SYS_ADMIN left in CapEff:\n{plain}"
    );
    let cap_bnd = caps(&plain, "CapBnd");
    assert_eq!(
        cap_bnd & (1 << 21),
        0,
        "CAP_SYS_ADMIN left in CapBnd:\n{plain}"
    );

    let tty = exec_probe_tty(&c, "t-sec", "e-tty");
    assert_eq!(field(&tty, "Seccomp"), "2", "exec with a terminal:\n{tty}");
    assert!(field(&tty, "chmod").contains(DENIED_BY_PROFILE), "{tty}");

    let user = exec_probe(&c, "t-sec", "e-user", &["--user", "1000"]);
    assert_eq!(field(&user, "uid"), "1000", "{user}");
    assert_eq!(field(&user, "Seccomp"), "2", "exec as uid 1000:\n{user}");
    assert!(field(&user, "chmod").contains(DENIED_BY_PROFILE), "{user}");

    // The container's own process has it too (pid 1 of its PID namespace).
    let init = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e-init",
        "t-sec",
        "grep",
        "Seccomp:",
        "/proc/1/status",
    ]);
    assert!(stdout(&init).contains('2'), "the init: {}", describe(&init));

    // Exactly what runc gives the same container's execs.
    for (exec_id, opts) in [("r-plain", &[][..]), ("r-user", &["--user", "1000"][..])] {
        let ours = exec_probe(&c, "t-sec", &format!("{exec_id}-isola"), opts);
        let runc = exec_probe(&c, "t-sec-runc", exec_id, opts);
        assert_eq!(
            confinement(&ours),
            confinement(&runc),
            "isola:\n{ours}\nrunc:\n{runc}"
        );
    }
    assert_eq!(
        confinement(&tty),
        confinement(&exec_probe_tty(&c, "t-sec-runc", "r-tty"))
    );

    remove(&c, "t-sec");
    remove(&c, "t-sec-runc");
    c.assert_nothing_left("removing the seccomp containers");
}

#[test]
fn vm_ctr_exec_gets_the_default_profile_and_no_new_privs_like_runc() {
    let c = started();
    // ctr's default spec has no_new_privs; --seccomp is containerd's RuntimeDefault profile.
    run_detached(
        &c,
        RUNTIME,
        &["--seccomp", "--cap-drop", "CAP_NET_RAW"],
        "t-def",
    );
    run_detached(
        &c,
        RUNC,
        &["--seccomp", "--cap-drop", "CAP_NET_RAW"],
        "t-def-runc",
    );
    // A container without a profile, for contrast: the probe can tell the difference.
    run_detached(&c, RUNTIME, &[], "t-none");

    let ours = exec_probe(&c, "t-def", "e1", &[]);
    assert_eq!(field(&ours, "Seccomp"), "2", "{ours}");
    assert_eq!(field(&ours, "NoNewPrivs"), "1", "{ours}");
    let cap_eff = caps(&ours, "CapEff");
    assert_eq!(cap_eff & (1 << 13), 0, "CAP_NET_RAW was dropped:\n{ours}");
    // RuntimeDefault refuses new user namespaces to a container without CAP_SYS_ADMIN.
    let unshare = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e2",
        "t-def",
        "unshare",
        "-U",
        "true",
    ]);
    assert!(
        !unshare.status.success(),
        "unshare -U under RuntimeDefault: {}",
        describe(&unshare)
    );
    let tty = exec_probe_tty(&c, "t-def", "e-tty");
    assert_eq!(field(&tty, "Seccomp"), "2", "exec with a terminal:\n{tty}");
    let runc_tty = exec_probe_tty(&c, "t-def-runc", "e-tty");
    assert_eq!(
        confinement(&tty),
        confinement(&runc_tty),
        "isola:\n{tty}\nrunc:\n{runc_tty}"
    );
    let runc = exec_probe(&c, "t-def-runc", "e1", &[]);
    assert_eq!(
        confinement(&ours),
        confinement(&runc),
        "isola:\n{ours}\nrunc:\n{runc}"
    );

    let none = exec_probe(&c, "t-none", "e1", &[]);
    assert_eq!(field(&none, "Seccomp"), "0", "{none}");
    assert_eq!(field(&none, "chmod"), "allowed", "{none}");
    let unshare = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e2",
        "t-none",
        "unshare",
        "-U",
        "true",
    ]);
    assert!(
        unshare.status.success(),
        "unshare -U without a profile: {}",
        describe(&unshare)
    );

    for id in ["t-def", "t-def-runc", "t-none"] {
        remove(&c, id);
    }
    c.assert_nothing_left("removing the containers");
}
