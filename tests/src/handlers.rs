//! Runtime handlers registered with `isola install` as an operator would (the `isola` binary next
//! to the shim): `isola` in the private CRI-O, and in both runtimes the second handler
//! `isola-clh`, whose own configuration `isola install --hypervisor cloud-hypervisor` writes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::containerd::{describe, run_with_deadline, shim_dir, SHIM_BINARY};

/// The second handler's name (deploy/runtimeclass-clh.yaml's `handler`).
pub const CLH_HANDLER: &str = "isola-clh";

/// The file `isola install` writes the second handler's configuration to, in `dir`.
pub const CLH_CONFIG: &str = "configuration-clh.toml";

/// Runs `isola install <args>`.
fn isola_install(args: &[&std::ffi::OsStr]) -> Result<()> {
    let isola = shim_dir().join("isola");
    ensure!(
        isola.is_file(),
        "{} is missing: build it (cargo build -p isola)",
        isola.display()
    );
    let mut cmd = Command::new(&isola);
    cmd.arg("install").args(args);
    let out = run_with_deadline(&mut cmd, None, Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("isola install: {e}"))?;
    ensure!(
        out.status.success(),
        "isola install {args:?}: {}",
        describe(&out)
    );
    Ok(())
}

/// The `isola-clh` arguments: its name, the kind, its configuration file in `dir` made from
/// `base`.
fn clh_args(dir: &Path, base: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "--handler".into(),
        CLH_HANDLER.into(),
        "--hypervisor".into(),
        "cloud-hypervisor".into(),
        "--isola-config".into(),
        dir.join(CLH_CONFIG).into(),
        "--from".into(),
        base.into(),
    ]
}

/// Registers `isola-clh` in containerd's configuration file `config` (next to the `isola`
/// runtime the harness writes), its isola configuration made from `base` in `dir`.
pub fn install_clh_containerd(config: &Path, base: &Path, dir: &Path) -> Result<()> {
    let mut args: Vec<std::ffi::OsString> =
        vec!["containerd".into(), "--config".into(), config.into()];
    args.extend(clh_args(dir, base));
    isola_install(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>())
        .context("registering isola-clh with containerd")
}

/// Registers `isola` (configuration `isola_config`) and `isola-clh` (made from it, in `dir`)
/// as CRI-O drop-ins in `conf_d`.
pub fn install_crio(conf_d: &Path, isola_config: &Path, dir: &Path) -> Result<()> {
    let shim = shim_dir().join(SHIM_BINARY);
    let common: Vec<std::ffi::OsString> = vec![
        "crio".into(),
        "--dir".into(),
        conf_d.into(),
        "--shim".into(),
        shim.into(),
    ];
    let mut isola = common.clone();
    isola.extend(["--isola-config".into(), isola_config.into()]);
    isola_install(&isola.iter().map(|a| a.as_os_str()).collect::<Vec<_>>())
        .context("registering isola with CRI-O")?;
    let mut clh = common;
    clh.extend(clh_args(dir, isola_config));
    isola_install(&clh.iter().map(|a| a.as_os_str()).collect::<Vec<_>>())
        .context("registering isola-clh with CRI-O")
}
