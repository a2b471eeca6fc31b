//! `isola install <what>` and `isola uninstall <what>`: hooking isola into the host's software.
//! The editing logic is pure (text in, text out, see [`containerd`], [`crio`] and
//! [`handler_config`]); this module reads and writes the files.
//!
//! `--handler <name>` installs a further runtime handler next to `isola`, with its own isola
//! configuration (`--isola-config`); `--hypervisor <kind>` also writes that configuration, made
//! from the one isola loads with `[hypervisor] kind` set. Uninstalling a handler removes its
//! entry (or drop-in) and, when `install --hypervisor` wrote it, its configuration file.

pub mod containerd;
pub mod crio;
pub mod handler_config;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};
use isola_config::HypervisorKind;

#[derive(Subcommand)]
pub enum Install {
    /// Add the isola runtime (io.containerd.isola.v2) to containerd's configuration as the CRI
    /// runtime `isola` (or --handler), keeping the rest of the file as it is; idempotent
    Containerd {
        /// containerd's configuration file (created when absent)
        #[arg(long, default_value = containerd::DEFAULT_CONTAINERD_CONFIG)]
        config: PathBuf,
        /// The isola configuration the runtime uses (default: the file isola itself would load:
        /// $ISOLA_CONFIG, /etc/isola/configuration.toml, $PREFIX/share/isola/configuration.toml)
        #[arg(long)]
        isola_config: Option<PathBuf>,
        #[command(flatten)]
        handler: HandlerArgs,
        /// Print the resulting file instead of writing it
        #[arg(long)]
        dry_run: bool,
    },
    /// Add the isola runtime handler `isola` (or --handler) to CRI-O (runtime_type "vm") as a
    /// drop-in file of its own; idempotent
    Crio {
        /// CRI-O's drop-in directory
        #[arg(long, default_value = crio::DEFAULT_CRIO_DROP_IN_DIR)]
        dir: PathBuf,
        /// The isola configuration the runtime uses (default: the file isola itself would load)
        #[arg(long)]
        isola_config: Option<PathBuf>,
        /// The shim binary (default: containerd-shim-isola-v2 next to this isola binary)
        #[arg(long)]
        shim: Option<PathBuf>,
        #[command(flatten)]
        handler: HandlerArgs,
        /// Print the drop-in instead of writing it
        #[arg(long)]
        dry_run: bool,
    },
}

/// Which runtime handler to install, and whether to write its isola configuration.
#[derive(Args)]
pub struct HandlerArgs {
    /// The runtime handler's name (containerd runtime, CRI-O handler, RuntimeClass `handler`);
    /// a second one, e.g. isola-clh with its own --isola-config, lets pods pick a hypervisor
    #[arg(long, default_value = containerd::RUNTIME_NAME)]
    handler: String,
    /// Also write the handler's isola configuration to --isola-config: the configuration isola
    /// loads (or --from) with [hypervisor] kind set to this; uninstall removes it again
    #[arg(long, requires = "isola_config", value_parser = PossibleValuesParser::new(HypervisorKind::VALUES))]
    hypervisor: Option<String>,
    /// With --hypervisor: the configuration to start from (default: the file isola itself
    /// would load, else the shipped default)
    #[arg(long, requires = "hypervisor")]
    from: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Uninstall {
    /// Remove isola's CRI-O drop-in again
    Crio {
        /// CRI-O's drop-in directory
        #[arg(long, default_value = crio::DEFAULT_CRIO_DROP_IN_DIR)]
        dir: PathBuf,
        /// The runtime handler to remove (its drop-in, and the isola configuration
        /// `install --hypervisor` wrote for it)
        #[arg(long, default_value = containerd::RUNTIME_NAME)]
        handler: String,
        /// Say what would be removed instead of removing it
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove the isola runtime from containerd's configuration again
    Containerd {
        /// containerd's configuration file
        #[arg(long, default_value = containerd::DEFAULT_CONTAINERD_CONFIG)]
        config: PathBuf,
        /// The runtime handler to remove (its entry, and the isola configuration
        /// `install --hypervisor` wrote for it)
        #[arg(long, default_value = containerd::RUNTIME_NAME)]
        handler: String,
        /// Print the resulting file instead of writing it
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn install(what: Install) -> anyhow::Result<bool> {
    match what {
        Install::Containerd {
            config,
            isola_config,
            handler,
            dry_run,
        } => install_containerd(&config, isola_config, &handler, dry_run),
        Install::Crio {
            dir,
            isola_config,
            shim,
            handler,
            dry_run,
        } => install_crio(&dir, isola_config, shim, &handler, dry_run),
    }
}

fn install_containerd(
    config: &Path,
    isola_config: Option<PathBuf>,
    h: &HandlerArgs,
    dry_run: bool,
) -> anyhow::Result<bool> {
    handler_config::check_handler(&h.handler).map_err(anyhow::Error::msg)?;
    let isola_config = absolute_or_default(isola_config)?;
    let (path, old) = read(config)?;
    let edit = containerd::install(old.as_deref().unwrap_or(""), &h.handler, &isola_config)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let plan = plan_handler_config(h, &isola_config)?;
    apply_handler_config(plan.as_ref(), &h.handler, dry_run)?;
    if plan.is_none() && !isola_config.is_file() {
        eprintln!(
            "isola: warning: {} does not exist (yet); the runtime will fail until it does",
            isola_config.display()
        );
    }
    if dry_run {
        print!("{}", edit.text);
    } else if !edit.changed {
        println!(
            "{}: the isola runtime `{}` is already there (ConfigPath = {})",
            path.display(),
            h.handler,
            isola_config.display()
        );
    } else {
        write(&path, &edit.text, old.is_some())?;
        println!(
            "{}: added the CRI runtime `{}` ({}, ConfigPath = {}); restart containerd \
             to use it (systemctl restart containerd)",
            path.display(),
            h.handler,
            containerd::RUNTIME_TYPE,
            isola_config.display()
        );
    }
    Ok(true)
}

fn install_crio(
    dir: &Path,
    isola_config: Option<PathBuf>,
    shim: Option<PathBuf>,
    h: &HandlerArgs,
    dry_run: bool,
) -> anyhow::Result<bool> {
    handler_config::check_handler(&h.handler).map_err(anyhow::Error::msg)?;
    let isola_config = absolute_or_default(isola_config)?;
    let shim = match shim {
        Some(p) => std::path::absolute(&p).with_context(|| format!("resolving {}", p.display()))?,
        None => std::env::current_exe()
            .context("finding this binary to locate the shim next to it")?
            .with_file_name("containerd-shim-isola-v2"),
    };
    let plan = plan_handler_config(h, &isola_config)?;
    let mut missing = vec![("shim", &shim)];
    if plan.is_none() {
        missing.push(("isola configuration", &isola_config));
    }
    for (what, p) in missing {
        if !p.is_file() {
            eprintln!(
                "isola: warning: the {what} {} does not exist (yet); CRI-O cannot run pods with \
                 the {} handler until it does",
                p.display(),
                h.handler
            );
        }
    }
    // The state directory of the configuration the runtime will use, not of isola's own.
    let state_dir = match &plan {
        Some(plan) => isola_config::Config::from_toml_str(&plan.text, &plan.path).ok(),
        None => isola_config::Config::load_from(&isola_config).ok(),
    }
    .map(|c| c.runtime.state_dir)
    .unwrap_or_else(|| PathBuf::from(isola_config::DEFAULT_STATE_DIR));
    let text = crio::drop_in(&h.handler, &shim, &isola_config, &state_dir);
    let path = dir.join(crio::drop_in_name(&h.handler));
    let (path, old) = read(&path)?;
    if let Some(old) = &old {
        if !crio::is_ours(old) {
            anyhow::bail!(
                "{}: exists and was not written by isola; move it away or pass --dir",
                path.display()
            );
        }
    }
    apply_handler_config(plan.as_ref(), &h.handler, dry_run)?;
    if dry_run {
        print!("{text}");
        return Ok(true);
    }
    if old.as_deref() == Some(text.as_str()) {
        println!(
            "{}: the isola handler `{}` is already there",
            path.display(),
            h.handler
        );
    } else {
        write(&path, &text, old.is_some())?;
        println!(
            "{}: added the CRI-O runtime handler `{}` (runtime_type \"vm\", shim {}, \
             configuration {}); restart CRI-O to use it (systemctl restart crio)",
            path.display(),
            h.handler,
            shim.display(),
            isola_config.display()
        );
    }
    Ok(true)
}

fn uninstall_crio(dir: &Path, handler: &str, dry_run: bool) -> anyhow::Result<bool> {
    handler_config::check_handler(handler).map_err(anyhow::Error::msg)?;
    let path = dir.join(crio::drop_in_name(handler));
    let (path, old) = read(&path)?;
    match &old {
        None => println!("{}: no such file, nothing to remove", path.display()),
        Some(old) if !crio::is_ours(old) => anyhow::bail!(
            "{}: was not written by isola; not removing it",
            path.display()
        ),
        Some(_) if dry_run => println!("would remove {}", path.display()),
        Some(_) => {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            println!(
                "{}: removed the CRI-O runtime handler `{handler}`; restart CRI-O (systemctl \
                 restart crio)",
                path.display(),
            );
        }
    }
    let config = old.and_then(|old| crio::installed_config_path(&old, handler));
    remove_handler_config(config.as_deref(), handler, dry_run, false)?;
    Ok(true)
}

pub fn uninstall(what: Uninstall) -> anyhow::Result<bool> {
    match what {
        Uninstall::Crio {
            dir,
            handler,
            dry_run,
        } => uninstall_crio(&dir, &handler, dry_run),
        Uninstall::Containerd {
            config,
            handler,
            dry_run,
        } => {
            handler_config::check_handler(&handler).map_err(anyhow::Error::msg)?;
            let (path, old) = read(&config)?;
            let Some(old) = old else {
                println!("{}: no such file, nothing to remove", path.display());
                return Ok(true);
            };
            let edit = containerd::uninstall(&old, &handler)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let was = containerd::installed_config_path(&old, &handler);
            if dry_run {
                print!("{}", edit.text);
            } else if !edit.changed {
                println!("{}: no isola runtime `{handler}` to remove", path.display());
            } else {
                write(&path, &edit.text, true)?;
                println!(
                    "{}: removed the CRI runtime `{handler}` (ConfigPath = {}); restart \
                     containerd (systemctl restart containerd)",
                    path.display(),
                    was.as_deref()
                        .map_or_else(|| "\"\"".to_string(), |p| format!("{p:?}")),
                );
            }
            if edit.changed {
                remove_handler_config(was.as_deref(), &handler, dry_run, dry_run)?;
            }
            Ok(true)
        }
    }
}

/// The isola configuration file `install --hypervisor` is about to write.
struct HandlerConfigPlan {
    /// Where (a symlink's target).
    path: PathBuf,
    /// The configuration the handler will use.
    text: String,
    /// Write `text` (true), or keep the file that is there (false: the same text, or a file of
    /// someone else's that already selects the kind).
    write: bool,
    /// Whether the file exists.
    existed: bool,
}

/// What `--hypervisor` asks to write, or None without it. Nothing is written yet, so a later
/// refusal (a foreign drop-in, a version 1 containerd file) leaves nothing behind.
fn plan_handler_config(
    h: &HandlerArgs,
    target: &Path,
) -> anyhow::Result<Option<HandlerConfigPlan>> {
    let Some(kind) = h.hypervisor.as_deref() else {
        return Ok(None);
    };
    let kind = HypervisorKind::from_name(kind)
        .with_context(|| format!("unknown hypervisor kind {kind:?}"))?;
    let (path, old) = read(target)?;
    let base = match &h.from {
        Some(p) => Some(std::path::absolute(p)?),
        None => isola_config::Config::search_paths()
            .into_iter()
            .find(|p| p.is_file()),
    };
    let (base, origin) = match base {
        Some(p) if std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone()) == path => {
            anyhow::bail!(
                "{}: is both the configuration to start from and the one to write; pass the \
                 one to start from with --from",
                p.display()
            )
        }
        Some(p) => (
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            isola_config::DEFAULT_CONFIG_TOML.to_string(),
            "isola's shipped default configuration".to_string(),
        ),
    };
    let text = handler_config::generate(&base, &origin, &h.handler, kind, &path)?;
    let write = match &old {
        None => true,
        Some(old) if handler_config::is_ours(old, &h.handler) => *old != text,
        Some(old) => match isola_config::Config::from_toml_str(old, &path) {
            Ok(c) if c.hypervisor.kind == kind => false,
            _ => anyhow::bail!(
                "{}: exists and was not written by isola for the handler `{}`; set [hypervisor] \
                 kind = \"{kind}\" in it yourself and install without --hypervisor, or pass \
                 another --isola-config",
                path.display(),
                h.handler
            ),
        },
    };
    let text = match (&old, write) {
        (Some(old), false) => old.clone(),
        _ => text,
    };
    Ok(Some(HandlerConfigPlan {
        path,
        text,
        write,
        existed: old.is_some(),
    }))
}

/// Writes what [`plan_handler_config`] planned; with `dry_run` only says so (on stderr: stdout
/// is the containerd file or drop-in).
fn apply_handler_config(
    plan: Option<&HandlerConfigPlan>,
    handler: &str,
    dry_run: bool,
) -> anyhow::Result<()> {
    let Some(plan) = plan else {
        return Ok(());
    };
    let shown = plan.path.display();
    if !plan.write {
        let msg = format!("{shown}: kept, it already is the isola configuration of `{handler}`");
        if dry_run {
            eprintln!("isola: {msg}");
        } else {
            println!("{msg}");
        }
    } else if dry_run {
        eprintln!("isola: would write {shown}:\n{}", plan.text);
    } else {
        write(&plan.path, &plan.text, plan.existed)?;
        println!("{shown}: wrote the isola configuration of the runtime handler `{handler}`");
    }
    Ok(())
}

/// Removes the isola configuration at `path` if `isola install --hypervisor` wrote it for
/// `handler` (its first line says so); anything else stays. `quiet` sends the message to stderr.
fn remove_handler_config(
    path: Option<&str>,
    handler: &str,
    dry_run: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let Some(path) = path.map(Path::new) else {
        return Ok(());
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    if !handler_config::is_ours(&text, handler) {
        return Ok(());
    }
    let msg = if dry_run {
        format!("would remove {}", path.display())
    } else {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        format!(
            "{}: removed the isola configuration of the runtime handler `{handler}`",
            path.display()
        )
    };
    if quiet {
        eprintln!("isola: {msg}");
    } else {
        println!("{msg}");
    }
    Ok(())
}

/// `p` made absolute, or the configuration isola itself would load.
fn absolute_or_default(p: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match p {
        Some(p) => std::path::absolute(&p).with_context(|| format!("resolving {}", p.display())),
        None => Ok(default_isola_config()),
    }
}

/// The configuration isola itself would load, or where `make install` puts it.
fn default_isola_config() -> PathBuf {
    isola_config::Config::search_paths()
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(isola_config::Config::default_config_path)
}

/// The file to edit (a symlink's target) and its text, `None` when it does not exist.
fn read(config: &Path) -> anyhow::Result<(PathBuf, Option<String>)> {
    let path = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok((path, Some(t))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((path, None)),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Replaces `path` atomically (a temporary file in the same directory, then rename), keeping
/// the old file's permissions.
fn write(path: &Path, text: &str, existed: bool) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".isola-install.")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    let perms = if existed {
        std::fs::metadata(path)?.permissions()
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::Permissions::from_mode(0o644)
    };
    std::fs::set_permissions(tmp.path(), perms)?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
