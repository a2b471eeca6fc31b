//! Versions: the payload's content hash, the version id, staging a version directory atomically
//! (a temporary directory renamed into place) and switching `<prefix>/current` atomically (a
//! new symlink renamed over the old one).

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::layout::{Handler, Layout, ISOLA, SHARE, SHIM};
use super::version_config;

/// What every payload must hold, relative to its root.
pub const REQUIRED: [&str; 5] = [
    "bin/isola",
    "bin/containerd-shim-isola-v2",
    "share/isola/configuration.toml",
    "share/isola/vmlinux",
    "share/isola/initrd.img",
];

/// Refuses a payload that lacks a required file, saying how to make one.
pub fn check_payload(payload: &Path) -> anyhow::Result<()> {
    let missing: Vec<_> = REQUIRED
        .iter()
        .filter(|f| !payload.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "--payload {}: missing {}; a payload is what scripts/build-deploy-payload.sh \
             (make deploy-payload) assembles",
            payload.display(),
            missing
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// The relative paths of every entry under `dir`, sorted, directories before their contents.
fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fn go(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        let here = root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&here)
            .with_context(|| format!("reading {}", here.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let p = rel.join(name);
            out.push(p.clone());
            if fs::symlink_metadata(root.join(&p))?.is_dir() {
                go(root, &p, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(dir, Path::new(""), &mut out)?;
    Ok(out)
}

/// SHA-256 over the payload's tree: each entry's path, kind, executable bit and content (a
/// symlink's target). The same files give the same hash wherever they are.
pub fn payload_hash(payload: &Path) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    for rel in walk(payload)? {
        let p = payload.join(&rel);
        let meta = fs::symlink_metadata(&p)?;
        h.update(rel.to_string_lossy().as_bytes());
        if meta.file_type().is_symlink() {
            h.update(b"\0l\0");
            h.update(fs::read_link(&p)?.to_string_lossy().as_bytes());
        } else if meta.is_dir() {
            h.update(b"\0d\0");
        } else {
            let exec = meta.permissions().mode() & 0o111 != 0;
            h.update(if exec { b"\0x\0" } else { b"\0f\0" });
            h.update(meta.len().to_le_bytes());
            let mut f = fs::File::open(&p).with_context(|| format!("reading {}", p.display()))?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
        h.update(b"\n");
    }
    Ok(hex(&h.finalize()))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `<isola version>-<12 hex digits>`: the hash covers the payload and what the installed files
/// are made from besides (the prefix, written into the configurations, the handlers, which
/// decide the configuration files, and `vm_templates`, written into them), so the same inputs
/// give the same version, and a change of any gives a new one.
pub fn version_id(
    isola_version: &str,
    payload_hash: &str,
    prefix: &Path,
    hs: &[Handler],
    vm_templates: Option<bool>,
) -> String {
    let mut h = Sha256::new();
    h.update(payload_hash.as_bytes());
    h.update(b"\0");
    h.update(prefix.to_string_lossy().as_bytes());
    for handler in hs {
        h.update(b"\0");
        h.update(handler.spec().as_bytes());
    }
    if let Some(on) = vm_templates {
        h.update(format!("\0vm_templates={on}").as_bytes());
    }
    format!("{isola_version}-{}", &hex(&h.finalize())[..12])
}

/// Copies `from` to `to` (which must not exist): files with their permissions, symlinks as
/// symlinks, each file synced before the rename that publishes the tree.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir(to).with_context(|| format!("creating {}", to.display()))?;
    for rel in walk(from)? {
        let (src, dst) = (from.join(&rel), to.join(&rel));
        let meta = fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if meta.is_dir() {
            fs::create_dir(&dst)?;
        } else {
            fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            fs::File::open(&dst)?.sync_all()?;
        }
    }
    Ok(())
}

/// Makes `<prefix>/versions/<id>` from the payload unless it exists: copied into a temporary
/// directory next to it, the configurations written there (with `[factory] template =
/// vm_templates` when given), then renamed into place, so a version directory is either
/// complete or absent. Returns whether it was made now.
pub fn stage(
    layout: &Layout,
    payload: &Path,
    id: &str,
    hs: &[Handler],
    vm_templates: Option<bool>,
) -> anyhow::Result<bool> {
    let host_dir = layout.version(id);
    let dir = layout.local(&host_dir);
    if dir.is_dir() {
        return Ok(false);
    }
    let versions = layout.local(&layout.versions());
    fs::create_dir_all(&versions).with_context(|| format!("creating {}", versions.display()))?;
    let tmp = versions.join(format!(".staging-{id}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    let made = (|| {
        copy_tree(payload, &tmp)?;
        let shipped: Vec<String> = fs::read_dir(tmp.join("bin"))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
            .filter(|n| n != ISOLA && n != SHIM)
            .collect();
        let cfg_rel = Path::new(SHARE).join("configuration.toml");
        let base = fs::read_to_string(tmp.join(&cfg_rel))?;
        let mut base = version_config::rewrite(&base, &host_dir, &shipped)?;
        if let Some(on) = vm_templates {
            base = version_config::with_templates(&base, on)?;
        }
        fs::write(tmp.join(&cfg_rel), &base)?;
        for (file, text) in version_config::handler_files(&base, &host_dir.join(&cfg_rel), hs)? {
            fs::write(tmp.join(SHARE).join(file), text)?;
        }
        fs::rename(&tmp, &dir).with_context(|| format!("renaming into {}", dir.display()))
    })();
    if made.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    made.with_context(|| format!("installing the payload as {}", host_dir.display()))?;
    Ok(true)
}

/// The version `<prefix>/current` points at, if any.
pub fn current(layout: &Layout) -> Option<String> {
    let target = fs::read_link(layout.local(&layout.current())).ok()?;
    let rest = target.strip_prefix("versions").ok()?;
    Some(rest.to_str()?.to_string()).filter(|s| !s.is_empty() && !s.contains('/'))
}

/// Points `<prefix>/current` at `versions/<id>` (relative, so the link reads the same from the
/// host and from a pod mounting the host elsewhere): a new link renamed over the old one, so it
/// always names a complete version. Returns whether it changed.
pub fn switch_current(layout: &Layout, id: &str) -> anyhow::Result<bool> {
    if current(layout).as_deref() == Some(id) {
        return Ok(false);
    }
    let link = layout.local(&layout.current());
    let tmp = link.with_file_name(format!(".current-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new("versions").join(id), &tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    fs::rename(&tmp, &link).with_context(|| format!("switching {}", link.display()))?;
    Ok(true)
}

#[cfg(test)]
#[path = "version_tests.rs"]
pub(crate) mod tests;
