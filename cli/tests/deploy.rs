//! `isola deploy install|uninstall` end to end: the real binary against a scratch host root
//! (a copy of a containerd configuration, a CRI-O drop-in directory, a fake `/proc`), with
//! `--restart none` and `--no-check`.

use std::fs;
use std::path::Path;
use std::process::Command;

/// A containerd 1.6 configuration as a node has it: comments, odd spacing, other runtimes.
const CONTAINERD: &str = r#"# managed by the node's provisioning
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.10"   # pinned
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"
          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
            SystemdCgroup = true
"#;

const CRIO_DEFAULT: &str = "[crio.runtime]\ndefault_runtime = \"crun\"\n";

fn isola(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_isola"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("ISOLA_DEPLOY_HANDLERS")
        .output()
        .expect("running isola");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A payload as scripts/build-deploy-payload.sh lays it out, with this build's isola.
fn payload(dir: &Path, shim: &str) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("share/isola/debian")).unwrap();
    fs::copy(env!("CARGO_BIN_EXE_isola"), dir.join("bin/isola")).unwrap();
    fs::write(dir.join("bin/containerd-shim-isola-v2"), shim).unwrap();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/configuration.toml");
    fs::copy(cfg, dir.join("share/isola/configuration.toml")).unwrap();
    for f in [
        "vmlinux",
        "initrd.img",
        "debian/vmlinux",
        "debian/initrd.img",
    ] {
        fs::write(dir.join("share/isola").join(f), f).unwrap();
    }
}

fn versions(host: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(host.join("opt/isola/versions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn containerd_install_upgrade_and_uninstall_leave_the_node_as_it_was() {
    let host = tempfile::tempdir().unwrap();
    let pl = tempfile::tempdir().unwrap();
    payload(pl.path(), "shim 1");
    let h = host.path();
    fs::create_dir_all(h.join("etc/containerd")).unwrap();
    fs::create_dir_all(h.join("proc")).unwrap();
    let cfg = h.join("etc/containerd/config.toml");
    fs::write(&cfg, CONTAINERD).unwrap();
    let (hs, ps) = (h.to_str().unwrap(), pl.path().to_str().unwrap());
    let install = [
        "deploy",
        "install",
        "--host-root",
        hs,
        "--runtime",
        "containerd",
        "--runtime-config",
        "/etc/containerd/config.toml",
        "--payload",
        ps,
        "--handler",
        "isola",
        "--handler",
        "isola-clh:cloud-hypervisor",
        "--restart",
        "none",
        "--no-check",
    ];

    let (ok, out) = isola(&install, &[]);
    assert!(ok, "{out}");
    let current = fs::read_link(h.join("opt/isola/current")).unwrap();
    let v1 = versions(h);
    assert_eq!(v1.len(), 1, "{v1:?}");
    assert_eq!(current, Path::new("versions").join(&v1[0]));
    assert!(v1[0].starts_with(env!("CARGO_PKG_VERSION")), "{v1:?}");
    let vdir = h.join("opt/isola/versions").join(&v1[0]);
    assert_eq!(
        fs::read(vdir.join("bin/isola")).unwrap(),
        fs::read(env!("CARGO_BIN_EXE_isola")).unwrap()
    );
    let vcfg = fs::read_to_string(vdir.join("share/isola/configuration.toml")).unwrap();
    assert!(
        vcfg.contains(&format!(
            "kernel = \"/opt/isola/versions/{}/share/isola/vmlinux\"",
            v1[0]
        )),
        "{vcfg}"
    );
    assert!(vdir
        .join("share/isola/configuration-isola-clh.toml")
        .is_file());
    let edited = fs::read_to_string(&cfg).unwrap();
    let doc: toml::Table = toml::from_str(&edited).unwrap();
    let rts = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    assert_eq!(
        rts["isola"]["runtime_path"].as_str(),
        Some("/opt/isola/current/bin/containerd-shim-isola-v2")
    );
    assert_eq!(
        rts["isola-clh"]["options"]["ConfigPath"].as_str(),
        Some("/opt/isola/current/share/isola/configuration-isola-clh.toml")
    );
    assert_eq!(
        rts["runc"]["options"]["SystemdCgroup"].as_bool(),
        Some(true)
    );
    assert!(
        edited.starts_with("# managed by the node's provisioning\n"),
        "{edited}"
    );
    // The installed CLI reads the installed configuration (what `isola check` would load).
    let (ok, out) = isola(
        &[
            "--config",
            vdir.join("share/isola/configuration-isola-clh.toml")
                .to_str()
                .unwrap(),
            "ps",
            "--json",
        ],
        &[],
    );
    assert!(ok, "{out}");

    // Twice is once.
    let (ok, out) = isola(&install, &[]);
    assert!(
        ok && out.contains("already installed") && out.contains("no restart needed"),
        "{out}"
    );
    assert_eq!(fs::read_to_string(&cfg).unwrap(), edited);
    assert_eq!(versions(h), v1);

    // A new payload while a shim of the old version runs (a fake /proc entry): both stay.
    fs::write(pl.path().join("bin/containerd-shim-isola-v2"), "shim 2").unwrap();
    fs::create_dir_all(h.join("proc/4242")).unwrap();
    let old_shim = format!("/opt/isola/versions/{}/bin/containerd-shim-isola-v2", v1[0]);
    std::os::unix::fs::symlink(&old_shim, h.join("proc/4242/exe")).unwrap();
    let (ok, out) = isola(&install, &[]);
    assert!(ok && out.contains("4242"), "{out}");
    let v2 = versions(h);
    assert_eq!(v2.len(), 2, "{v2:?}");
    let new = v2.iter().find(|v| **v != v1[0]).unwrap().clone();
    assert_eq!(
        fs::read_link(h.join("opt/isola/current")).unwrap(),
        Path::new("versions").join(&new)
    );
    assert_eq!(
        fs::read_to_string(h.join("opt/isola/current/bin/containerd-shim-isola-v2")).unwrap(),
        "shim 2"
    );
    assert_eq!(
        fs::read_to_string(&cfg).unwrap(),
        edited,
        "an upgrade edits nothing"
    );
    // The shim ends: the next install collects the old version.
    fs::remove_dir_all(h.join("proc/4242")).unwrap();
    let (ok, out) = isola(&install, &[]);
    assert!(ok, "{out}");
    assert_eq!(versions(h), vec![new.clone()]);

    // Uninstall while a pod's VMM still boots from the current version: the configuration
    // comes back byte for byte, the version stays until a later run finds it unused.
    fs::create_dir_all(h.join("proc/77")).unwrap();
    let kernel = format!("/opt/isola/versions/{new}/share/isola/vmlinux");
    fs::write(
        h.join("proc/77/cmdline"),
        format!("qemu\0-kernel\0{kernel}\0"),
    )
    .unwrap();
    let uninstall = [
        "deploy",
        "uninstall",
        "--host-root",
        hs,
        "--restart",
        "none",
    ];
    let (ok, out) = isola(&uninstall, &[]);
    assert!(
        ok && out.contains("pids [77]") && out.contains("again"),
        "{out}"
    );
    assert_eq!(fs::read(&cfg).unwrap(), CONTAINERD.as_bytes());
    assert!(h
        .join("opt/isola/current/bin/containerd-shim-isola-v2")
        .is_file());
    fs::remove_dir_all(h.join("proc/77")).unwrap();
    let (ok, out) = isola(&uninstall, &[]);
    assert!(ok, "{out}");
    assert_eq!(fs::read(&cfg).unwrap(), CONTAINERD.as_bytes());
    assert!(!h.join("opt/isola").exists());
    assert!(h.join("opt").exists());
    let (ok, out) = isola(&uninstall, &[]);
    assert!(ok && out.contains("nothing to do"), "{out}");
}

#[test]
fn crio_from_the_environment_as_the_daemonset_runs_it() {
    let host = tempfile::tempdir().unwrap();
    let pl = tempfile::tempdir().unwrap();
    payload(pl.path(), "shim");
    let h = host.path();
    let dir = h.join("etc/crio/crio.conf.d");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("00-default.conf"), CRIO_DEFAULT).unwrap();
    let env = [
        ("ISOLA_DEPLOY_HOST_ROOT", h.to_str().unwrap()),
        ("ISOLA_DEPLOY_PREFIX", "/opt/isola-test"),
        ("ISOLA_DEPLOY_RUNTIME", "crio"),
        ("ISOLA_DEPLOY_RUNTIME_CONFIG", "/etc/crio/crio.conf.d"),
        ("ISOLA_DEPLOY_PAYLOAD", pl.path().to_str().unwrap()),
        ("ISOLA_DEPLOY_RESTART", "none"),
        ("ISOLA_DEPLOY_NO_CHECK", "true"),
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_isola"));
    cmd.args(["deploy", "install"])
        .envs(env)
        .env("ISOLA_DEPLOY_HANDLERS", "isola,isola-clh:cloud-hypervisor");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = fs::read_to_string(dir.join("50-isola-clh.conf")).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let hd = &doc["crio"]["runtime"]["runtimes"]["isola-clh"];
    assert_eq!(
        hd["runtime_path"].as_str(),
        Some("/opt/isola-test/current/bin/containerd-shim-isola-v2")
    );
    assert_eq!(hd["runtime_type"].as_str(), Some("vm"));
    assert!(dir.join("50-isola.conf").is_file());

    let (ok, out) = isola(&["deploy", "uninstall"], &env);
    assert!(ok, "{out}");
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["00-default.conf"]);
    assert_eq!(
        fs::read_to_string(dir.join("00-default.conf")).unwrap(),
        CRIO_DEFAULT
    );
    assert!(!h.join("opt/isola-test").exists());
}

#[test]
fn bad_inputs_say_what_to_do() {
    let host = tempfile::tempdir().unwrap();
    let hs = host.path().to_str().unwrap();
    let base = [
        "deploy",
        "install",
        "--host-root",
        hs,
        "--runtime",
        "containerd",
        "--runtime-config",
        "/etc/containerd/config.toml",
        "--no-check",
    ];
    let (ok, out) = isola(
        &[&base[..], &["--payload", hs, "--restart", "none"]].concat(),
        &[],
    );
    assert!(!ok && out.contains("build-deploy-payload"), "{out}");
    let (ok, out) = isola(
        &[&base[..], &["--payload", hs, "--restart", "reboot"]].concat(),
        &[],
    );
    assert!(!ok && out.contains("systemd:<unit>"), "{out}");
    let (ok, out) = isola(
        &[
            "deploy",
            "install",
            "--host-root",
            hs,
            "--runtime",
            "containerd",
            "--payload",
            hs,
            "--restart",
            "none",
        ],
        &[],
    );
    assert!(!ok && out.contains("--runtime-config"), "{out}");
}
