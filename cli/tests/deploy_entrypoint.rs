//! deploy/isola-deploy-entrypoint.sh (the isola-deploy image's entrypoint) with a fake isola
//! that logs its arguments: install, then on SIGTERM uninstall only when should-uninstall says
//! yes (or always, or never, as set); cleanup mode uninstalls; a failed install exits non-zero.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/isola-deploy-entrypoint.sh")
}

/// A fake isola: logs "$*" to $LOG; `should-uninstall` exits $ANSWER, `install` $INSTALL.
fn fake(dir: &Path) -> PathBuf {
    let p = dir.join("isola");
    fs::write(
        &p,
        "#!/bin/sh\necho \"$*\" >>\"$LOG\"\ncase \"$2\" in\n  should-uninstall) exit \"$ANSWER\" ;;\n  \
         install) exit \"$INSTALL\" ;;\nesac\n",
    )
    .unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Runs the entrypoint in install mode with `on_term` and the fake's `answer`, sends SIGTERM
/// once it waits, and returns its exit code and the fake's log.
fn run(on_term: &str, answer: &str, install: &str) -> (i32, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let ready = dir.path().join("ready");
    // A stale file from a previous run of the pod's container must not count.
    fs::write(&ready, "stale").unwrap();
    let mut child = Command::new("sh")
        .arg(script())
        .env("ISOLA_DEPLOY_ISOLA", fake(dir.path()))
        .env("ISOLA_DEPLOY_UNINSTALL_ON_TERM", on_term)
        .env("ISOLA_DEPLOY_MODE", "install")
        .env("ISOLA_DEPLOY_NODE_NAME", "node-1")
        .env("LOG", &log)
        .env("ISOLA_DEPLOY_READY_FILE", &ready)
        .env("ANSWER", answer)
        .env("INSTALL", install)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    if !line.is_empty() {
        assert_eq!(
            line,
            "isola-deploy: install done on node-1; waiting for SIGTERM\n"
        );
        // Ready (the DaemonSet's readinessProbe) only once the install is done.
        assert_eq!(fs::read_to_string(&ready).unwrap(), "install done\n");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    let code = child.wait().unwrap().code().unwrap_or(-1);
    if line.is_empty() {
        assert!(!ready.exists(), "a failed install is never ready");
    }
    // Its background sleep ended with it: reading stdout to its end would otherwise block.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "");
    let logged = fs::read_to_string(&log).unwrap_or_default();
    (code, logged.lines().map(str::to_string).collect())
}

#[test]
fn sigterm_uninstalls_only_when_the_daemonset_is_being_deleted() {
    let (code, log) = run("deleted", "0", "0");
    assert_eq!(code, 0);
    assert_eq!(
        log,
        [
            "deploy install",
            "deploy should-uninstall",
            "deploy uninstall --no-wait"
        ]
    );
    let (code, log) = run("deleted", "1", "0");
    assert_eq!(code, 0);
    assert_eq!(log, ["deploy install", "deploy should-uninstall"]);
    let (_, log) = run("always", "1", "0");
    assert_eq!(log, ["deploy install", "deploy uninstall --no-wait"]);
    let (_, log) = run("never", "0", "0");
    assert_eq!(log, ["deploy install"]);
}

#[test]
fn a_failed_install_exits_non_zero_and_bad_settings_say_so() {
    let (code, log) = run("deleted", "0", "1");
    assert_eq!(code, 1, "the pod restarts and tries again");
    assert_eq!(log, ["deploy install"]);
    let (code, log) = run("sometimes", "0", "0");
    assert_eq!(code, 2);
    assert!(log.is_empty(), "{log:?}");
}

#[test]
fn cleanup_mode_uninstalls_and_waits() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new("sh")
        .arg(script())
        .env("ISOLA_DEPLOY_ISOLA", fake(dir.path()))
        .env("ISOLA_DEPLOY_MODE", "cleanup")
        .env("ISOLA_DEPLOY_HOST_ROOT", dir.path())
        .env("ISOLA_DEPLOY_PREFIX", "/gone")
        .env("ISOLA_DEPLOY_READY_FILE", dir.path().join("ready"))
        .env("LOG", &log)
        .env("ANSWER", "0")
        .env("INSTALL", "0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(
        line,
        "isola-deploy: cleanup done on this node; waiting for SIGTERM\n"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("ready")).unwrap(),
        "cleanup done\n"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "", "its sleep ended with it");
    let logged = fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged, "deploy uninstall\n",
        "SIGTERM in cleanup mode does no more"
    );
}
