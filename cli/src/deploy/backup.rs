//! The runtime's configuration as it was before isola: before the first edit of a file, its
//! bytes and mode (or the fact that it did not exist) go to `<prefix>/backup/`, listed in
//! `manifest.json` with what the install was (runtime, configuration path, handlers). Uninstall
//! puts those bytes back, or removes a file that did not exist, and removes the directories
//! install created. A file changed by someone else since isola last wrote it is not clobbered:
//! the caller then takes isola's part out of it instead (see [`decide`]).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::layout::Layout;
use super::version::hex;

/// One file isola edits or creates (host paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: PathBuf,
    /// The backup copy's file name under `backup/files/`, `None`: the file did not exist.
    pub original: Option<String>,
    /// The original file's permission bits.
    pub mode: u32,
    /// SHA-256 of what isola last wrote there (`None`: isola wrote nothing yet).
    pub written: Option<String>,
}

/// What is installed, and how to put the runtime's configuration back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `containerd` or `crio`.
    pub runtime: String,
    /// `--runtime-config` (host path).
    pub runtime_config: PathBuf,
    /// The registered handlers, as `name[:hypervisor]`.
    pub handlers: Vec<String>,
    pub files: Vec<Entry>,
    /// Directories install created (host paths, outermost first); removed when empty.
    pub dirs: Vec<PathBuf>,
    /// A file changed and the runtime has not been restarted since (a failed or interrupted
    /// run): the next run restarts it even when it changes nothing itself.
    #[serde(default)]
    pub restart_pending: bool,
    /// containerd's per-handler shim links isola made (host paths; `shim_link`).
    #[serde(default)]
    pub links: Vec<PathBuf>,
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn manifest_path(layout: &Layout) -> PathBuf {
    layout.local(&layout.backup().join("manifest.json"))
}

impl Manifest {
    /// The manifest of an install under `layout`'s prefix, if there is one.
    pub fn load(layout: &Layout) -> anyhow::Result<Option<Manifest>> {
        let path = manifest_path(layout);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .with_context(|| format!("{}: not a manifest isola wrote", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, layout: &Layout) -> anyhow::Result<()> {
        let path = manifest_path(layout);
        let text = serde_json::to_string_pretty(self)?;
        write_atomic(&path, text.as_bytes(), 0o600)
    }

    pub fn entry(&self, host_path: &Path) -> Option<&Entry> {
        self.files.iter().find(|e| e.path == host_path)
    }

    /// Saves `host_path`'s original (bytes and mode, or absence) unless it is saved already,
    /// and the directories above it that do not exist (install is about to create them). The
    /// manifest is written before the caller edits the file.
    pub fn record(&mut self, layout: &Layout, host_path: &Path) -> anyhow::Result<()> {
        if self.entry(host_path).is_some() {
            return Ok(());
        }
        let local = layout.local(host_path);
        let mut missing = Vec::new();
        let mut dir = host_path.parent();
        while let Some(d) = dir.filter(|d| !layout.local(d).exists()) {
            missing.push(d.to_path_buf());
            dir = d.parent();
        }
        for d in missing.into_iter().rev() {
            if !self.dirs.contains(&d) {
                self.dirs.push(d);
            }
        }
        let (original, mode) = match fs::read(&local) {
            Ok(bytes) => {
                // Named after the path: unique, and stable when entries come and go.
                let name = sha256(host_path.as_os_str().as_encoded_bytes())[..16].to_string();
                let copy = layout.local(&layout.backup().join("files").join(&name));
                let mode = fs::metadata(&local)?.permissions().mode() & 0o7777;
                write_atomic(&copy, &bytes, 0o600)?;
                (Some(name), mode)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, 0o644),
            Err(e) => return Err(e).with_context(|| format!("reading {}", local.display())),
        };
        self.files.push(Entry {
            path: host_path.to_path_buf(),
            original,
            mode,
            written: None,
        });
        self.save(layout)
    }

    /// Notes what isola wrote to `host_path` (recorded before).
    pub fn wrote(&mut self, host_path: &Path, bytes: &[u8]) {
        if let Some(e) = self.files.iter_mut().find(|e| e.path == host_path) {
            e.written = Some(sha256(bytes));
        }
    }

    /// The original bytes of `entry`, `None` when the file did not exist.
    pub fn original(&self, layout: &Layout, entry: &Entry) -> anyhow::Result<Option<Vec<u8>>> {
        match &entry.original {
            None => Ok(None),
            Some(name) => {
                let p = layout.local(&layout.backup().join("files").join(name));
                fs::read(&p)
                    .map(Some)
                    .with_context(|| format!("reading the backup {}", p.display()))
            }
        }
    }
}

impl Manifest {
    /// Puts `entry`'s file back as [`decide`] says; for a file changed since isola wrote it,
    /// `surgical(now)` gives it without isola's part (`None`: remove it). Returns the decision.
    pub fn restore(
        &self,
        layout: &Layout,
        entry: &Entry,
        surgical: impl FnOnce(&[u8]) -> anyhow::Result<Option<Vec<u8>>>,
    ) -> anyhow::Result<Restore> {
        let local = layout.local(&entry.path);
        let original = self.original(layout, entry)?;
        let now = match fs::read(&local) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", local.display())),
        };
        let what = decide(entry, original.as_deref(), now.as_deref());
        let remove =
            |p: &Path| fs::remove_file(p).with_context(|| format!("removing {}", p.display()));
        match (&what, now) {
            (Restore::Unchanged, _) => {}
            (Restore::Original, _) => {
                let bytes = original.as_deref().unwrap_or_default();
                write_atomic(&local, bytes, entry.mode)?;
            }
            (Restore::Remove, _) => remove(&local)?,
            (Restore::ChangedSince, Some(now)) => match surgical(&now)? {
                Some(b) if b == now => {}
                Some(b) => {
                    let mode = fs::metadata(&local)?.permissions().mode() & 0o7777;
                    write_atomic(&local, &b, mode)?;
                }
                None => remove(&local)?,
            },
            (Restore::ChangedSince, None) => {}
        }
        Ok(what)
    }
}

/// What uninstall does with one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Restore {
    /// It is as isola left it (or as it was): put the original bytes back.
    Original,
    /// It did not exist before isola; isola's file goes.
    Remove,
    /// It already is the original: nothing to do.
    Unchanged,
    /// Someone changed it after isola last wrote it: take isola's part out, keep the rest.
    ChangedSince,
}

/// Pure: how to put back `entry`, whose file now holds `now` (`None`: absent), given its
/// original bytes.
pub fn decide(entry: &Entry, original: Option<&[u8]>, now: Option<&[u8]>) -> Restore {
    if now == original {
        return Restore::Unchanged;
    }
    let ours = match (now, &entry.written) {
        (Some(now), Some(w)) => sha256(now) == *w,
        (None, _) => true,
        (Some(_), None) => false,
    };
    match (ours, original) {
        (false, _) => Restore::ChangedSince,
        (true, Some(_)) => Restore::Original,
        (true, None) => Restore::Remove,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename,
/// creating the directory, with permission bits `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().context("a file path without a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".isola-deploy.")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
#[path = "backup_tests.rs"]
mod tests;
