//! `isola install <what>` and `isola uninstall <what>`: hooking isola into the host's software.
//! The editing logic is pure (text in, text out, see [`containerd`]); this module reads and
//! writes the files.

pub mod containerd;

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
}

#[derive(Subcommand)]
pub enum Uninstall {
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
    }
}

pub fn uninstall(what: Uninstall) -> anyhow::Result<bool> {
    match what {
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
