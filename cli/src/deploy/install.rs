//! `isola deploy install`: in this order, each step idempotent, so that running it again (the
//! DaemonSet's pod restarting) finishes what an interrupted run began:
//!
//! 1. the manifest (`<prefix>/backup/manifest.json`) exists from the start, so uninstall always
//!    knows what to undo;
//! 2. the payload becomes `<prefix>/versions/<id>` (complete or absent) and `current` points at
//!    it (one rename);
//! 3. containerd: each handler's shim link (`shim_link`); the runtime's configuration
//!    registers every handler, its original saved first;
//! 4. only when that changed something: the runtime restarts (or reloads), then its socket must
//!    answer; an upgrade changes nothing there (it all goes through `current`), so it restarts
//!    nothing;
//! 5. `isola check --no-boot` of the installed version, for each handler's configuration; a
//!    new version that fails it gives `current` back to the one before;
//! 6. versions neither current nor used by a running process are removed;
//! 7. the node hook: with a node name, the label isola.io/runtime=ready (`node`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::backup::{write_atomic, Manifest};
use super::layout::{Handler, Layout};
use super::register::{self, Runtime};
use super::restart::{restart_runtime, Restarted, Strategy};
use super::{gc, shim_link, version, Env};
use crate::install::crio;

/// What `install` needs, all explicit.
pub struct Opts {
    pub layout: Layout,
    pub runtime: Runtime,
    /// containerd's config.toml or CRI-O's drop-in directory (host path).
    pub runtime_config: PathBuf,
    pub payload: PathBuf,
    /// containerd only: where each handler's shim link goes (`shim_link`).
    pub shim_dir: PathBuf,
    pub handlers: Vec<Handler>,
    pub restart: Strategy,
    /// The runtime's socket (host path).
    pub socket: PathBuf,
    pub wait: Duration,
    pub check: bool,
    /// `[factory] template` in every handler's configuration; None keeps the payload's.
    pub vm_templates: Option<bool>,
}

/// What was installed, for the node hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub version: String,
    pub handlers: Vec<String>,
    pub runtime: Runtime,
    /// Whether the runtime's configuration changed (and the runtime was restarted).
    pub registered_now: bool,
}

fn read_opt(p: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).map_or(0o644, |m| m.permissions().mode() & 0o7777)
}

/// Writes `text` to the host file `path` unless it holds it already, its original saved first.
/// Returns whether it changed.
fn put(o: &Opts, m: &mut Manifest, path: &Path, text: &str) -> anyhow::Result<bool> {
    let local = o.layout.local(path);
    if fs::symlink_metadata(&local).is_ok_and(|md| md.file_type().is_symlink()) {
        anyhow::bail!(
            "{}: is a symlink; pass the file it points to as --runtime-config",
            path.display()
        );
    }
    m.record(&o.layout, path)?;
    let now = read_opt(&local)?;
    let changed = now.as_deref() != Some(text.as_bytes());
    if changed {
        m.restart_pending = true;
        m.save(&o.layout)?;
        write_atomic(&local, text.as_bytes(), mode_of(&local))?;
        println!("{}: registered the isola runtime handlers", path.display());
    }
    m.wrote(path, text.as_bytes());
    m.save(&o.layout)?;
    Ok(changed)
}

/// Registers `o.handlers` (and unregisters handlers of an earlier install that are no longer
/// wanted). Returns whether any file changed.
fn register(o: &Opts, m: &mut Manifest, id: &str) -> anyhow::Result<bool> {
    let wanted: Vec<&str> = o.handlers.iter().map(|h| h.name.as_str()).collect();
    let dropped: Vec<String> = m
        .handlers
        .iter()
        .filter_map(|s| Handler::parse(s).ok())
        .map(|h| h.name)
        .filter(|n| !wanted.contains(&n.as_str()))
        .collect();
    match o.runtime {
        Runtime::Containerd => {
            let path = &o.runtime_config;
            let now = read_opt(&o.layout.local(path))?;
            let now = String::from_utf8(now.unwrap_or_default())
                .with_context(|| format!("{}: not UTF-8 text", path.display()))?;
            let text = register::containerd_config(&now, &o.layout, &o.handlers, &dropped)
                .with_context(|| format!("editing {}", path.display()))?;
            put(o, m, path, &text)
        }
        Runtime::Crio => {
            let version_share = o
                .layout
                .local(&o.layout.version(id))
                .join(super::layout::SHARE);
            let state_dir = |h: &Handler| {
                super::version_config::state_dir(&version_share.join(h.config_file()))
            };
            let files =
                register::crio_drop_ins(&o.runtime_config, &o.layout, &o.handlers, state_dir);
            let mut changed = false;
            for (path, text) in &files {
                let local = o.layout.local(path);
                if let Some(old) = read_opt(&local)? {
                    let ours =
                        m.entry(path).is_some() || crio::is_ours(&String::from_utf8_lossy(&old));
                    if !ours {
                        anyhow::bail!(
                            "{}: exists and was not written by isola; move it away, or pick \
                             another --handler name",
                            path.display()
                        );
                    }
                }
                changed |= put(o, m, path, text)?;
            }
            // Drop-ins of handlers no longer wanted go back to what was there (nothing).
            let stale: Vec<_> = m
                .files
                .iter()
                .filter(|e| e.path.starts_with(&o.runtime_config))
                .filter(|e| !files.iter().any(|(p, _)| *p == e.path))
                .cloned()
                .collect();
            for e in stale {
                let r = m.restore(&o.layout, &e, |now| {
                    Ok((!crio::is_ours(&String::from_utf8_lossy(now))).then(|| now.to_vec()))
                })?;
                changed |= r != super::backup::Restore::Unchanged;
                m.files.retain(|f| f.path != e.path);
                println!("{}: removed (handler no longer wanted)", e.path.display());
            }
            Ok(changed)
        }
    }
}

pub fn install(o: &Opts, env: &Env) -> anyhow::Result<Installed> {
    version::check_payload(&o.payload)?;
    let hash = version::payload_hash(&o.payload)?;
    let id = version::version_id(
        env!("CARGO_PKG_VERSION"),
        &hash,
        o.layout.prefix(),
        &o.handlers,
        o.vm_templates,
    );

    let mut m = match Manifest::load(&o.layout)? {
        Some(m) => {
            if m.runtime != o.runtime.name() || m.runtime_config != o.runtime_config {
                anyhow::bail!(
                    "isola is installed under {} for {} ({}); run `isola deploy uninstall` \
                     first to install it for {} ({})",
                    o.layout.prefix().display(),
                    m.runtime,
                    m.runtime_config.display(),
                    o.runtime.name(),
                    o.runtime_config.display()
                );
            }
            m
        }
        None => {
            let local = o.layout.local(o.layout.prefix());
            if fs::read_dir(&local).is_ok_and(|mut d| d.next().is_some()) {
                anyhow::bail!(
                    "{} is not empty and holds no isola deploy manifest (backup/manifest.json); \
                     isola owns its --prefix entirely: pick another, or empty it",
                    o.layout.prefix().display()
                );
            }
            Manifest {
                runtime: o.runtime.name().to_string(),
                runtime_config: o.runtime_config.clone(),
                ..Manifest::default()
            }
        }
    };
    m.save(&o.layout)?;

    let version_dir = o.layout.version(&id);
    if version::stage(&o.layout, &o.payload, &id, &o.handlers, o.vm_templates)? {
        println!("{}: installed", version_dir.display());
    } else {
        println!("{}: already installed", version_dir.display());
    }
    let previous = version::current(&o.layout);
    if version::switch_current(&o.layout, &id)? {
        println!("{} -> versions/{id}", o.layout.current().display());
    }

    // The links first: a restarted containerd may start a shim at once.
    if o.runtime == Runtime::Containerd
        && shim_link::ensure(&o.layout, &mut m, &o.shim_dir, &o.handlers)?
    {
        m.save(&o.layout)?;
    }
    let changed = register(o, &mut m, &id)?;
    m.handlers = o.handlers.iter().map(Handler::spec).collect();
    m.save(&o.layout)?;
    if !changed && !m.restart_pending {
        println!(
            "{}: already registers {}: no restart needed",
            o.runtime_config.display(),
            m.handlers.join(", ")
        );
    } else {
        let socket = o.layout.local(&o.socket);
        match restart_runtime(env.restarter, &o.restart, &socket, Some(o.wait))? {
            Restarted::Answering(took) => println!(
                "{} ({}): answering after {took:.1?}",
                o.runtime.name(),
                o.restart
            ),
            Restarted::NotAsked | Restarted::NotWaited => println!(
                "--restart none: restart (or reload) {} yourself for the handlers to take effect",
                o.runtime.name()
            ),
        }
    }
    m.restart_pending = false;
    m.save(&o.layout)?;

    if o.check {
        if let Err(e) = env.checker.check(&o.layout, &o.handlers) {
            // An upgrade that fails its check: new pods keep getting the version that passed
            // (the node stays labelled for it), and this pod restarts and tries again.
            let previous =
                previous.filter(|p| *p != id && o.layout.local(&o.layout.version(p)).is_dir());
            if let Some(p) = previous {
                version::switch_current(&o.layout, &p)?;
                println!(
                    "{} -> versions/{p} again: versions/{id} failed its check",
                    o.layout.current().display()
                );
            }
            return Err(e);
        }
    }
    let collected = gc::collect(&o.layout, Some(&id), env.procs)?;
    for v in &collected.removed {
        println!(
            "{}: removed (no longer used)",
            o.layout.version(v).display()
        );
    }
    for (v, pids) in &collected.in_use {
        println!(
            "{}: kept while processes run from it (pids {pids:?})",
            o.layout.version(v).display()
        );
    }
    let installed = Installed {
        version: id,
        handlers: m.handlers.clone(),
        runtime: o.runtime,
        registered_now: changed,
    };
    env.hook.ready(&installed)?;
    Ok(installed)
}
