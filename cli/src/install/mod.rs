//! `isola install <what>` and `isola uninstall <what>`: hooking isola into the host's software.
//! The editing logic is pure (text in, text out, see [`containerd`]); this module reads and
//! writes the files.

pub mod containerd;
pub mod crio;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Install {
    /// Add the isola runtime (io.containerd.isola.v2) to containerd's configuration as the CRI
    /// runtime `isola`, keeping the rest of the file as it is; idempotent
    Containerd {
        /// containerd's configuration file (created when absent)
        #[arg(long, default_value = containerd::DEFAULT_CONTAINERD_CONFIG)]
        config: PathBuf,
        /// The isola configuration the runtime uses (default: the file isola itself would load:
        /// $ISOLA_CONFIG, /etc/isola/configuration.toml, $PREFIX/share/isola/configuration.toml)
        #[arg(long)]
        isola_config: Option<PathBuf>,
        /// Print the resulting file instead of writing it
        #[arg(long)]
        dry_run: bool,
    },
    /// Add the isola runtime handler `isola` to CRI-O (runtime_type "vm") as a drop-in file
    /// of its own; idempotent
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
        /// Print the drop-in instead of writing it
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub enum Uninstall {
    /// Remove isola's CRI-O drop-in again
    Crio {
        /// CRI-O's drop-in directory
        #[arg(long, default_value = crio::DEFAULT_CRIO_DROP_IN_DIR)]
        dir: PathBuf,
        /// Say what would be removed instead of removing it
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove the isola runtime from containerd's configuration again
    Containerd {
        /// containerd's configuration file
        #[arg(long, default_value = containerd::DEFAULT_CONTAINERD_CONFIG)]
        config: PathBuf,
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
            dry_run,
        } => {
            let isola_config = match isola_config {
                Some(p) => {
                    std::path::absolute(&p).with_context(|| format!("resolving {}", p.display()))?
                }
                None => default_isola_config(),
            };
            if !isola_config.is_file() {
                eprintln!(
                    "isola: warning: {} does not exist (yet); the runtime will fail until it does",
                    isola_config.display()
                );
            }
            let (path, old) = read(&config)?;
            let edit = containerd::install(old.as_deref().unwrap_or(""), &isola_config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if dry_run {
                print!("{}", edit.text);
            } else if !edit.changed {
                println!(
                    "{}: the isola runtime is already there (ConfigPath = {})",
                    path.display(),
                    isola_config.display()
                );
            } else {
                write(&path, &edit.text, old.is_some())?;
                println!(
                    "{}: added the CRI runtime `{}` ({}, ConfigPath = {}); restart containerd \
                     to use it (systemctl restart containerd)",
                    path.display(),
                    containerd::RUNTIME_NAME,
                    containerd::RUNTIME_TYPE,
                    isola_config.display()
                );
            }
            Ok(true)
        }
        Install::Crio {
            dir,
            isola_config,
            shim,
            dry_run,
        } => install_crio(&dir, isola_config, shim, dry_run),
    }
}

fn install_crio(
    dir: &Path,
    isola_config: Option<PathBuf>,
    shim: Option<PathBuf>,
    dry_run: bool,
) -> anyhow::Result<bool> {
    let isola_config = match isola_config {
        Some(p) => std::path::absolute(&p).with_context(|| format!("resolving {}", p.display()))?,
        None => default_isola_config(),
    };
    let shim = match shim {
        Some(p) => std::path::absolute(&p).with_context(|| format!("resolving {}", p.display()))?,
        None => std::env::current_exe()
            .context("finding this binary to locate the shim next to it")?
            .with_file_name("containerd-shim-isola-v2"),
    };
    for (what, p) in [("shim", &shim), ("isola configuration", &isola_config)] {
        if !p.is_file() {
            eprintln!(
                "isola: warning: the {what} {} does not exist (yet); CRI-O cannot run pods with \
                 the isola handler until it does",
                p.display()
            );
        }
    }
    // The state directory of the configuration the runtime will use, not of isola's own.
    let state_dir = isola_config::Config::load_from(&isola_config)
        .map(|c| c.runtime.state_dir)
        .unwrap_or_else(|_| PathBuf::from(isola_config::DEFAULT_STATE_DIR));
    let text = crio::drop_in(&shim, &isola_config, &state_dir);
    if dry_run {
        print!("{text}");
        return Ok(true);
    }
    let path = dir.join(crio::DROP_IN_NAME);
    let (path, old) = read(&path)?;
    if let Some(old) = &old {
        if !crio::is_ours(old) {
            anyhow::bail!(
                "{}: exists and was not written by isola; move it away or pass --dir",
                path.display()
            );
        }
    }
    if old.as_deref() == Some(text.as_str()) {
        println!("{}: the isola handler is already there", path.display());
    } else {
        write(&path, &text, old.is_some())?;
        println!(
            "{}: added the CRI-O runtime handler `{}` (runtime_type \"vm\", shim {}, \
             configuration {}); restart CRI-O to use it (systemctl restart crio)",
            path.display(),
            containerd::RUNTIME_NAME,
            shim.display(),
            isola_config.display()
        );
    }
    Ok(true)
}

fn uninstall_crio(dir: &Path, dry_run: bool) -> anyhow::Result<bool> {
    let path = dir.join(crio::DROP_IN_NAME);
    let (path, old) = read(&path)?;
    match old {
        None => println!("{}: no such file, nothing to remove", path.display()),
        Some(old) if !crio::is_ours(&old) => anyhow::bail!(
            "{}: was not written by isola; not removing it",
            path.display()
        ),
        Some(_) if dry_run => println!("would remove {}", path.display()),
        Some(_) => {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            println!(
                "{}: removed the CRI-O runtime handler `{}`; restart CRI-O (systemctl restart crio)",
                path.display(),
                containerd::RUNTIME_NAME
            );
        }
    }
    Ok(true)
}

pub fn uninstall(what: Uninstall) -> anyhow::Result<bool> {
    match what {
        Uninstall::Crio { dir, dry_run } => uninstall_crio(&dir, dry_run),
        Uninstall::Containerd { config, dry_run } => {
            let (path, old) = read(&config)?;
            let Some(old) = old else {
                println!("{}: no such file, nothing to remove", path.display());
                return Ok(true);
            };
            let edit = containerd::uninstall(&old)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if dry_run {
                print!("{}", edit.text);
            } else if !edit.changed {
                println!("{}: no isola runtime to remove", path.display());
            } else {
                let was = containerd::installed_config_path(&old).unwrap_or_default();
                write(&path, &edit.text, true)?;
                println!(
                    "{}: removed the CRI runtime `{}` (ConfigPath = {was:?}); restart containerd \
                     (systemctl restart containerd)",
                    path.display(),
                    containerd::RUNTIME_NAME
                );
            }
            Ok(true)
        }
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
