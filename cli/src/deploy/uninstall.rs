//! `isola deploy uninstall`: the node hook first (the node stops being ready for isola pods
//! before anything goes), then the runtime's configuration as it was before install (byte for
//! byte, see `backup`), the directories install created, a runtime restart when a file
//! changed (waited for, unless `--no-wait`: see `restart::restart_runtime`), and last `<prefix>`
//! entirely. Without an install under `<prefix>` it only runs the
//! node hook (a stale label goes too) and says so.
//!
//! Pods still running keep running: their shims, VMMs and daemons are processes of their own;
//! containerd reconnects to the shims after its restart, provided the shim binary it recorded
//! for each (`<prefix>/current/bin/containerd-shim-isola-v2`, in the task's bundle) still exists,
//! and runs that binary to clean up after a shim that dies. So while processes run from
//! `<prefix>`, uninstall keeps `current` and the versions in use (everything else goes) and
//! says to run it again once they have ended; `--force` removes it all regardless.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::backup::{Manifest, Restore};
use super::layout::{Handler, Layout};
use super::register::{self, Runtime};
use super::restart::{restart_runtime, Restarted, Strategy};
use super::{gc, version, Env};
use crate::install::crio;

/// What `uninstall` needs.
pub struct Opts {
    pub layout: Layout,
    pub restart: Strategy,
    /// The runtime's socket (host path); the installed runtime's usual one when `None`.
    pub socket: Option<PathBuf>,
    pub wait: Duration,
    /// Ask for the runtime's restart without waiting for it (see `restart::restart_runtime`).
    pub no_wait: bool,
    /// Remove `<prefix>` even while isola processes still run from it.
    pub force: bool,
}

/// Removes `<state_dir>/templates` of each handler's configuration (read from `current`, so
/// before the prefix goes): the VM templates pods of this install saved. Nothing else of the
/// state directory: a pod still running (`--force`) keeps its own.
fn remove_templates(l: &Layout, m: &Manifest) -> anyhow::Result<()> {
    let mut dirs: Vec<PathBuf> = m
        .handlers
        .iter()
        .filter_map(|s| Handler::parse(s).ok())
        .map(|h| super::version_config::state_dir(&l.local(&l.handler_config(&h))))
        .map(|state| state.join("templates"))
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        let local = l.local(&dir);
        match fs::remove_dir_all(&local) {
            Ok(()) => println!("{}: removed (VM templates)", dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("removing the VM templates {}", local.display()))
            }
        }
    }
    Ok(())
}

/// Returns whether isola was installed (and now is not).
pub fn uninstall(o: &Opts, env: &Env) -> anyhow::Result<bool> {
    let l = &o.layout;
    let Some(mut m) = Manifest::load(l)? else {
        // A label left from before (the prefix removed by hand, say) would still draw pods.
        env.hook.unready()?;
        println!(
            "isola is not installed under {} (no {}): nothing to do",
            l.prefix().display(),
            l.backup().join("manifest.json").display()
        );
        return Ok(false);
    };
    let runtime = Runtime::from_name(&m.runtime)
        .with_context(|| format!("the manifest names an unknown runtime {:?}", m.runtime))?;
    env.hook.unready()?;

    let names: Vec<String> = m
        .handlers
        .iter()
        .filter_map(|s| Handler::parse(s).ok())
        .map(|h| h.name)
        .collect();
    for e in m.files.clone() {
        let what = m.restore(l, &e, |now| match runtime {
            Runtime::Containerd => {
                let text = String::from_utf8_lossy(now);
                Ok(Some(
                    register::containerd_unregister(&text, &names)?.into_bytes(),
                ))
            }
            Runtime::Crio => {
                Ok((!crio::is_ours(&String::from_utf8_lossy(now))).then(|| now.to_vec()))
            }
        })?;
        let shown = e.path.display();
        match what {
            Restore::Unchanged => println!("{shown}: as it was before isola"),
            Restore::Original => println!("{shown}: restored byte for byte"),
            Restore::Remove => println!("{shown}: removed (isola created it)"),
            Restore::ChangedSince => println!(
                "{shown}: changed by someone else since isola wrote it; took isola's handlers \
                 out and kept the rest"
            ),
        }
        if what != Restore::Unchanged {
            m.restart_pending = true;
        }
    }
    for d in m.dirs.iter().rev() {
        // Only when empty: anything someone else put there stays.
        if fs::remove_dir(l.local(d)).is_ok() {
            println!("{}: removed (isola created it)", d.display());
        }
    }
    m.files.clear();
    m.save(l)?;
    if m.restart_pending {
        let socket = o
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(runtime.default_socket()));
        let wait = (!o.no_wait).then_some(o.wait);
        match restart_runtime(env.restarter, &o.restart, &l.local(&socket), wait)? {
            Restarted::Answering(took) => println!(
                "{} ({}): answering after {took:.1?}",
                runtime.name(),
                o.restart
            ),
            Restarted::NotWaited => println!(
                "{} ({}): restart asked for, not waited for (--no-wait)",
                runtime.name(),
                o.restart
            ),
            Restarted::NotAsked => println!(
                "--restart none: restart (or reload) {} yourself to drop the isola handlers",
                runtime.name()
            ),
        }
        m.restart_pending = false;
        m.save(l)?;
    }

    let users = gc::users(&env.procs.list(), l.prefix());
    if !users.is_empty() && !o.force {
        // containerd (1.6+) keeps the shim's path (`current/bin/...`) in each task's bundle and,
        // when it restarts, drops a task whose shim binary is gone: keep `current`, its version
        // and the versions in use, so it still manages those pods.
        let current = version::current(l);
        gc::collect(l, current.as_deref(), env.procs)?;
        println!(
            "{}: kept for the isola processes still running from it (pids {users:?}): the \
             runtime no longer offers isola, but still manages those pods through it. Run \
             `isola deploy uninstall` again once they have ended (drain the node's isola pods \
             first), or pass --force to remove it now, leaving those pods to the runtime's \
             next restart",
            l.prefix().display()
        );
        return Ok(true);
    }
    if !users.is_empty() {
        println!(
            "--force: removing {} although processes still run from it (pids {users:?})",
            l.prefix().display()
        );
    }
    remove_templates(l, &m)?;
    // containerd runs a pod's shim binary (the link) to clean up after it too: the links go
    // with the prefix, not before.
    super::shim_link::remove_all(l, &mut m)?;
    m.save(l)?;
    let prefix = l.local(l.prefix());
    let aside = prefix.with_file_name(format!(
        ".{}.removing-{}",
        prefix.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    fs::rename(&prefix, &aside)
        .with_context(|| format!("moving {} aside to remove it", prefix.display()))?;
    fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))?;
    println!("{}: removed", l.prefix().display());
    Ok(true)
}
