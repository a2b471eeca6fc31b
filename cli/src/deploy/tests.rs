//! install/uninstall end to end on a scratch host root, with a fake runtime restart, process
//! table, check and node hook.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::gc::{Process, Processes};
use super::restart::{Restarter, Strategy};
use super::*;

#[derive(Default)]
struct Fakes {
    restarts: RefCell<Vec<String>>,
    procs: RefCell<Vec<Process>>,
    checks: RefCell<Vec<Vec<String>>>,
    hook: RefCell<Vec<String>>,
    fail_restart: RefCell<bool>,
    fail_check: RefCell<bool>,
    /// The restart happens (so the runtime's socket is waited for, unless told not to);
    /// otherwise it is as if --restart none: no socket to wait for.
    restart_happens: RefCell<bool>,
    /// Whether each restart was asked for blocking.
    blocking: RefCell<Vec<bool>>,
}

impl Restarter for Fakes {
    fn restart(&self, how: &Strategy, blocking: bool) -> anyhow::Result<bool> {
        if *self.fail_restart.borrow() {
            anyhow::bail!("restart failed");
        }
        self.restarts.borrow_mut().push(how.to_string());
        self.blocking.borrow_mut().push(blocking);
        Ok(*self.restart_happens.borrow())
    }
}

impl Processes for Fakes {
    fn list(&self) -> Vec<Process> {
        self.procs.borrow().clone()
    }
}

impl Checker for Fakes {
    fn check(&self, _: &Layout, hs: &[Handler]) -> anyhow::Result<()> {
        self.checks
            .borrow_mut()
            .push(hs.iter().map(|h| h.name.clone()).collect());
        if *self.fail_check.borrow() {
            anyhow::bail!("check failed");
        }
        Ok(())
    }
}

impl NodeHook for Fakes {
    fn ready(&self, i: &Installed) -> anyhow::Result<()> {
        self.hook.borrow_mut().push(format!("ready {}", i.version));
        Ok(())
    }
    fn unready(&self) -> anyhow::Result<()> {
        self.hook.borrow_mut().push("unready".into());
        Ok(())
    }
}

fn env(f: &Fakes) -> Env<'_> {
    Env {
        procs: f,
        restarter: f,
        checker: f,
        hook: f,
    }
}

struct Node {
    host: tempfile::TempDir,
    payload: tempfile::TempDir,
}

const ORIGINAL: &str = "# the node's own\nversion = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"pause\"\n";

fn node() -> Node {
    let n = Node {
        host: tempfile::tempdir().unwrap(),
        payload: tempfile::tempdir().unwrap(),
    };
    super::version::tests::payload(n.payload.path(), "shim 1");
    fs::create_dir_all(n.host.path().join("etc/containerd")).unwrap();
    fs::write(n.host.path().join("etc/containerd/config.toml"), ORIGINAL).unwrap();
    n
}

fn opts(n: &Node, runtime: Runtime, handlers: &[&str]) -> install::Opts {
    let runtime_config = match runtime {
        Runtime::Containerd => PathBuf::from("/etc/containerd/config.toml"),
        Runtime::Crio => PathBuf::from("/etc/crio/crio.conf.d"),
    };
    install::Opts {
        layout: Layout::new(n.host.path(), Path::new("/opt/isola")).unwrap(),
        runtime,
        runtime_config,
        payload: n.payload.path().to_path_buf(),
        shim_dir: PathBuf::from("/usr/local/bin"),
        handlers: layout::handlers(&handlers.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap(),
        restart: "systemd:containerd".parse().unwrap(),
        socket: "/run/containerd/containerd.sock".into(),
        wait: Duration::from_secs(1),
        check: true,
        vm_templates: None,
    }
}

fn un(o: &install::Opts) -> uninstall::Opts {
    uninstall::Opts {
        layout: o.layout.clone(),
        restart: o.restart.clone(),
        socket: None,
        wait: Duration::from_secs(1),
        no_wait: false,
        force: false,
    }
}

#[test]
fn install_restarts_once_upgrades_restart_nothing_uninstall_restores_bytes() {
    let n = node();
    let f = Fakes::default();
    let o = opts(&n, Runtime::Containerd, &[]);
    let first = install::install(&o, &env(&f)).unwrap();
    assert!(first.registered_now);
    assert_eq!(*f.restarts.borrow(), ["systemd:containerd"]);
    assert_eq!(f.checks.borrow().len(), 1);
    let cfg = n.host.path().join("etc/containerd/config.toml");
    let edited = fs::read_to_string(&cfg).unwrap();
    assert!(edited.contains("runtime_path = \"/opt/isola/current/bin/containerd-shim-isola-v2\""));
    // containerd 1.6 runs the runtime type's binary from its PATH: the handler's link.
    let link = n.host.path().join("usr/local/bin/containerd-shim-isola-v2");
    assert_eq!(
        fs::read_link(&link).unwrap(),
        Path::new("/opt/isola/current/bin/containerd-shim-isola-v2")
    );

    // Again: the same version, no edit, no restart; still checked and hooked.
    let again = install::install(&o, &env(&f)).unwrap();
    assert_eq!(again.version, first.version);
    assert!(!again.registered_now);
    assert_eq!(f.restarts.borrow().len(), 1);
    assert_eq!(fs::read_to_string(&cfg).unwrap(), edited);

    // A new payload while a shim of the first version runs: a new version, the old one kept,
    // and still no restart (containerd's configuration goes through `current`).
    fs::write(
        n.payload.path().join("bin/containerd-shim-isola-v2"),
        "shim 2",
    )
    .unwrap();
    f.procs.borrow_mut().push(Process {
        pid: 99,
        exe: Some(format!(
            "/opt/isola/versions/{}/bin/containerd-shim-isola-v2",
            first.version
        )),
        cmdline: vec![],
    });
    let second = install::install(&o, &env(&f)).unwrap();
    assert_ne!(second.version, first.version);
    assert_eq!(f.restarts.borrow().len(), 1);
    assert_eq!(gc::installed(&o.layout).unwrap().len(), 2);
    // The shim ends: the next run collects its version.
    f.procs.borrow_mut().clear();
    install::install(&o, &env(&f)).unwrap();
    assert_eq!(
        gc::installed(&o.layout).unwrap(),
        vec![second.version.clone()]
    );
    assert_eq!(
        *f.hook.borrow(),
        [
            first.version.clone(),
            first.version,
            second.version.clone(),
            second.version
        ]
        .map(|v| format!("ready {v}"))
    );

    assert!(uninstall::uninstall(&un(&o), &env(&f)).unwrap());
    assert_eq!(fs::read(&cfg).unwrap(), ORIGINAL.as_bytes());
    assert!(!n.host.path().join("opt/isola").exists());
    assert!(fs::symlink_metadata(&link).is_err(), "the link goes too");
    assert_eq!(f.restarts.borrow().len(), 2);
    assert_eq!(f.hook.borrow().last().unwrap(), "unready");
    // Nothing installed: a no-op but for the hook (a stale label would still draw pods).
    let hooked = f.hook.borrow().len();
    assert!(!uninstall::uninstall(&un(&o), &env(&f)).unwrap());
    assert_eq!(f.restarts.borrow().len(), 2);
    assert_eq!(f.hook.borrow().len(), hooked + 1);
    assert_eq!(f.hook.borrow().last().unwrap(), "unready");
}

#[test]
fn a_failed_restart_is_retried_by_the_next_run() {
    let n = node();
    let f = Fakes::default();
    let o = opts(&n, Runtime::Containerd, &[]);
    *f.fail_restart.borrow_mut() = true;
    assert!(install::install(&o, &env(&f)).is_err());
    assert!(f.hook.borrow().is_empty(), "not ready after a failure");
    *f.fail_restart.borrow_mut() = false;
    install::install(&o, &env(&f)).unwrap();
    assert_eq!(f.restarts.borrow().len(), 1, "the pending restart happened");
}

#[test]
fn an_admin_edit_after_install_survives_uninstall() {
    let n = node();
    let f = Fakes::default();
    let o = opts(&n, Runtime::Containerd, &["isola", "isola-clh:qemu"]);
    install::install(&o, &env(&f)).unwrap();
    let cfg = n.host.path().join("etc/containerd/config.toml");
    let mut text = fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[metrics]\n  address = \"127.0.0.1:1338\"\n");
    fs::write(&cfg, &text).unwrap();
    uninstall::uninstall(&un(&o), &env(&f)).unwrap();
    let after = fs::read_to_string(&cfg).unwrap();
    assert!(after.contains("address = \"127.0.0.1:1338\""), "{after}");
    assert!(!after.contains("isola"), "{after}");
    assert!(after.starts_with(ORIGINAL), "{after}");
}

#[test]
fn crio_drop_ins_come_and_go_with_their_directory() {
    let n = node();
    fs::create_dir_all(n.host.path().join("etc")).unwrap();
    let f = Fakes::default();
    let mut o = opts(&n, Runtime::Crio, &["isola", "isola-clh:qemu"]);
    o.restart = "signal:/run/crio.pid:HUP".parse().unwrap();
    install::install(&o, &env(&f)).unwrap();
    let dir = n.host.path().join("etc/crio/crio.conf.d");
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["50-isola-clh.conf", "50-isola.conf"]);
    // Fewer handlers: the dropped handler's drop-in goes, and the runtime reloads.
    let o1 = opts(&n, Runtime::Crio, &["isola"]);
    let o1 = install::Opts {
        restart: o.restart.clone(),
        ..o1
    };
    install::install(&o1, &env(&f)).unwrap();
    assert!(!dir.join("50-isola-clh.conf").exists());
    assert!(dir.join("50-isola.conf").exists());
    assert_eq!(f.restarts.borrow().len(), 2);
    // A different runtime on top is refused until uninstalled.
    let e = install::install(&opts(&n, Runtime::Containerd, &[]), &env(&f)).unwrap_err();
    assert!(e.to_string().contains("uninstall"), "{e}");
    uninstall::uninstall(&un(&o1), &env(&f)).unwrap();
    assert!(!n.host.path().join("etc/crio").exists());
    assert!(n.host.path().join("etc").exists());
}

#[test]
fn a_foreign_prefix_or_drop_in_is_not_taken_over() {
    let n = node();
    let f = Fakes::default();
    fs::create_dir_all(n.host.path().join("opt/isola")).unwrap();
    fs::write(n.host.path().join("opt/isola/mine"), "x").unwrap();
    let e = install::install(&opts(&n, Runtime::Containerd, &[]), &env(&f)).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    fs::remove_file(n.host.path().join("opt/isola/mine")).unwrap();
    let dir = n.host.path().join("etc/crio/crio.conf.d");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("50-isola.conf"), "[crio.runtime]\n").unwrap();
    let e = install::install(&opts(&n, Runtime::Crio, &[]), &env(&f)).unwrap_err();
    assert!(format!("{e:#}").contains("not written by isola"), "{e:#}");
    assert_eq!(
        fs::read_to_string(dir.join("50-isola.conf")).unwrap(),
        "[crio.runtime]\n"
    );
}

#[test]
fn the_daemonset_sets_only_settings_the_cli_reads() {
    use clap::Subcommand;
    let cmd = Deploy::augment_subcommands(clap::Command::new("deploy"));
    let known: Vec<String> = cmd
        .get_subcommands()
        .flat_map(|s| s.get_arguments())
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().to_string())
        .collect();
    // The entrypoint script's own settings.
    let script = ["ISOLA_DEPLOY_MODE", "ISOLA_DEPLOY_UNINSTALL_ON_TERM"];
    // Set by the DaemonSet for should-uninstall and the hook (a flag of each subcommand).
    for n in ["ISOLA_DEPLOY_NODE_NAME", "ISOLA_DEPLOY_DAEMONSET"] {
        assert!(known.iter().any(|k| k == n), "{n}");
        let line = format!("- name: {n}");
        let yaml = include_str!("../../../deploy/isola-deploy.yaml");
        assert!(yaml.contains(&line), "the DaemonSet sets {n}");
    }
    let yaml = include_str!("../../../deploy/isola-deploy.yaml");
    let names: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.trim().trim_start_matches("# ").strip_prefix("- name: "))
        .filter(|n| n.starts_with("ISOLA_DEPLOY_"))
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    for n in names {
        assert!(
            known.iter().any(|k| k == n) || script.contains(&n),
            "{n} is read by nothing"
        );
    }
    for required in [
        "ISOLA_DEPLOY_HOST_ROOT",
        "ISOLA_DEPLOY_RESTART",
        "ISOLA_DEPLOY_RUNTIME_CONFIG",
    ] {
        assert!(yaml.contains(required), "{required}");
    }
}

#[test]
fn uninstall_keeps_what_running_pods_need_until_they_end() {
    let n = node();
    let f = Fakes::default();
    let o = opts(&n, Runtime::Containerd, &[]);
    let v1 = install::install(&o, &env(&f)).unwrap().version;
    fs::write(n.payload.path().join("bin/isola"), "isola 2").unwrap();
    f.procs.borrow_mut().push(Process {
        pid: 7,
        exe: Some("/usr/bin/qemu-system-x86_64".to_string()),
        cmdline: vec![format!("/opt/isola/versions/{v1}/share/isola/vmlinux")],
    });
    let v2 = install::install(&o, &env(&f)).unwrap().version;
    assert_eq!(gc::installed(&o.layout).unwrap().len(), 2);
    // VM templates of its pods, and the state of a running pod.
    let state = n.host.path().join("run/isola");
    fs::create_dir_all(state.join("templates/0123abcd")).unwrap();
    fs::write(state.join("templates/0123abcd/ram"), "ram").unwrap();
    fs::create_dir_all(state.join("shim")).unwrap();
    fs::write(state.join("shim/pod.json"), "{}").unwrap();
    // A pod of v1 runs: the configuration is restored, v1 and current (v2) stay.
    uninstall::uninstall(&un(&o), &env(&f)).unwrap();
    let cfg = n.host.path().join("etc/containerd/config.toml");
    assert_eq!(fs::read_to_string(&cfg).unwrap(), ORIGINAL);
    assert_eq!(gc::installed(&o.layout).unwrap(), {
        let mut v = vec![v1, v2.clone()];
        v.sort();
        v
    });
    assert_eq!(version::current(&o.layout).as_deref(), Some(v2.as_str()));
    // Again while it runs: nothing more happens, no restart.
    let restarts = f.restarts.borrow().len();
    uninstall::uninstall(&un(&o), &env(&f)).unwrap();
    assert!(n.host.path().join("opt/isola/current").exists());
    assert_eq!(f.restarts.borrow().len(), restarts);
    // containerd cleans up after those pods with the link's binary: it stays with them.
    let link = n.host.path().join("usr/local/bin/containerd-shim-isola-v2");
    assert!(fs::read_link(&link).is_ok());
    assert!(
        state.join("templates/0123abcd/ram").exists(),
        "kept with the install"
    );
    // --force takes it all.
    let forced = uninstall::Opts {
        force: true,
        ..un(&o)
    };
    uninstall::uninstall(&forced, &env(&f)).unwrap();
    assert!(!n.host.path().join("opt/isola").exists());
    assert!(fs::symlink_metadata(&link).is_err());
    assert_eq!(fs::read_to_string(&cfg).unwrap(), ORIGINAL);
    assert!(!state.join("templates").exists(), "the VM templates go");
    assert!(
        state.join("shim/pod.json").exists(),
        "a running pod's state stays"
    );
}

#[test]
fn a_configuration_that_did_not_exist_is_gone_again_with_its_directory() {
    let n = node();
    fs::remove_dir_all(n.host.path().join("etc/containerd")).unwrap();
    let f = Fakes::default();
    let o = opts(&n, Runtime::Containerd, &[]);
    install::install(&o, &env(&f)).unwrap();
    let cfg = n.host.path().join("etc/containerd/config.toml");
    let text = fs::read_to_string(&cfg).unwrap();
    assert!(text.starts_with("version = 2"), "{text}");
    assert!(
        text.contains("io.containerd.runc.v2"),
        "containerd keeps its runc: {text}"
    );
    uninstall::uninstall(&un(&o), &env(&f)).unwrap();
    assert!(!n.host.path().join("etc/containerd").exists());
    assert!(n.host.path().join("etc").exists());
}

#[test]
fn a_version_that_fails_its_check_does_not_stay_current() {
    let n = node();
    let f = Fakes::default();
    let o = opts(&n, Runtime::Containerd, &[]);
    let v1 = install::install(&o, &env(&f)).unwrap().version;
    fs::write(n.payload.path().join("bin/isola"), "isola 2").unwrap();
    *f.fail_check.borrow_mut() = true;
    let e = install::install(&o, &env(&f)).unwrap_err();
    assert!(e.to_string().contains("check failed"), "{e}");
    assert_eq!(
        version::current(&o.layout).as_deref(),
        Some(v1.as_str()),
        "new pods keep getting the version that passed"
    );
    assert_eq!(f.hook.borrow().len(), 1, "not labelled again");
    // Fixed: the next run installs it.
    *f.fail_check.borrow_mut() = false;
    let v2 = install::install(&o, &env(&f)).unwrap().version;
    assert_ne!(v2, v1);
    assert_eq!(version::current(&o.layout).as_deref(), Some(v2.as_str()));
}

#[test]
fn a_restart_is_waited_for_until_another_process_answers_but_not_from_a_terminating_pod() {
    let n = node();
    let f = Fakes::default();
    let o = opts(&n, Runtime::Containerd, &[]);
    install::install(&o, &env(&f)).unwrap();
    *f.restart_happens.borrow_mut() = true;
    let prefix = n.host.path().join("opt/isola");

    // The runtime asked to restart still answers (this process, on the runtime's socket in the
    // scratch root): that is not the runtime back, and the prefix stays for the next run.
    let sock = n.host.path().join("run/containerd/containerd.sock");
    fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let e = format!("{:#}", uninstall::uninstall(&un(&o), &env(&f)).unwrap_err());
    assert!(
        e.contains("still answered by the runtime asked to restart"),
        "{e}"
    );
    assert!(prefix.exists());
    // Nothing answers at all: the same, once the wait is over.
    drop(listener);
    fs::remove_file(&sock).unwrap();
    let e = format!("{:#}", uninstall::uninstall(&un(&o), &env(&f)).unwrap_err());
    assert!(e.contains("did not answer"), "{e}");
    assert!(prefix.exists());
    assert_eq!(*f.blocking.borrow(), [true, true, true]);

    // --no-wait (the DaemonSet's pod on its SIGTERM): the pending restart is asked for without
    // blocking and not waited for (nothing answers, so a wait would fail as above), and the
    // uninstall goes to its end.
    let no_wait = uninstall::Opts {
        no_wait: true,
        ..un(&o)
    };
    assert!(uninstall::uninstall(&no_wait, &env(&f)).unwrap());
    assert!(!prefix.exists());
    assert_eq!(f.blocking.borrow().last(), Some(&false));
    assert_eq!(
        fs::read(n.host.path().join("etc/containerd/config.toml")).unwrap(),
        ORIGINAL.as_bytes()
    );
}

#[test]
fn turning_vm_templates_off_makes_a_new_version_without_a_restart() {
    let n = node();
    let f = Fakes::default();
    let o = opts(&n, Runtime::Containerd, &["isola", "isola-q:qemu"]);
    let first = install::install(&o, &env(&f)).unwrap().version;
    let restarts = f.restarts.borrow().len();
    let config = |file: &str| {
        let path = n
            .host
            .path()
            .join("opt/isola/current/share/isola")
            .join(file);
        isola_config::Config::from_toml_str(&fs::read_to_string(&path).unwrap(), &path).unwrap()
    };
    assert!(
        config("configuration.toml").factory.template,
        "the payload's default"
    );
    let off = install::Opts {
        vm_templates: Some(false),
        ..opts(&n, Runtime::Containerd, &["isola", "isola-q:qemu"])
    };
    let second = install::install(&off, &env(&f)).unwrap().version;
    assert_ne!(second, first);
    assert_eq!(
        version::current(&off.layout).as_deref(),
        Some(second.as_str())
    );
    for file in ["configuration.toml", "configuration-isola-q.toml"] {
        assert!(!config(file).factory.template, "{file}");
    }
    // The runtime reaches every version through `current`: nothing to restart.
    assert_eq!(f.restarts.borrow().len(), restarts);
}
