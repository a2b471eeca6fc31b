//! containerd's shim binary for each handler, found on containerd's `PATH`.
//!
//! containerd 1.6 up to at least 1.6.20 (Debian 12's) logs the handler's `runtime_path` and
//! then still starts the binary its `runtime_type` names, looked up on its `PATH`
//! (`io.containerd.<name>.v2` -> `containerd-shim-<name>-v2`; measured on the test node: the
//! pod ran whichever `containerd-shim-isola-v2` came first on that `PATH`). So, as kata-deploy
//! does, each handler gets its own runtime type, `io.containerd.<handler>.v2`, and a symlink
//! `<shim dir>/containerd-shim-<handler>-v2` -> `<prefix>/current/bin/containerd-shim-isola-v2`
//! in a directory on containerd's `PATH` (`--shim-dir`, default /usr/local/bin). A containerd
//! that honours `runtime_path` runs the same binary through it. Every link is recorded in the
//! manifest and removed by uninstall; a file of that name that is not isola's link is never
//! touched (the install fails and says so).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::backup::Manifest;
use super::layout::{Handler, Layout};

/// The runtime type of `handler` in containerd's configuration.
pub fn runtime_type(handler: &str) -> String {
    format!("io.containerd.{handler}.v2")
}

/// The binary name containerd derives from [`runtime_type`].
pub fn link_name(handler: &str) -> String {
    format!("containerd-shim-{handler}-v2")
}

/// Whether `local` is a symlink to `target`.
fn is_link_to(local: &Path, target: &Path) -> bool {
    fs::read_link(local).is_ok_and(|t| t == target)
}

/// Makes the links of `handlers` in `shim_dir` (a host path) and removes the recorded links of
/// handlers no longer wanted. Returns whether anything changed.
pub fn ensure(
    layout: &Layout,
    m: &mut Manifest,
    shim_dir: &Path,
    handlers: &[Handler],
) -> anyhow::Result<bool> {
    let target = layout.shim();
    let wanted: Vec<PathBuf> = handlers
        .iter()
        .map(|h| shim_dir.join(link_name(&h.name)))
        .collect();
    let mut changed = false;
    for link in &wanted {
        let local = layout.local(link);
        if is_link_to(&local, &target) {
            if !m.links.contains(link) {
                m.links.push(link.clone());
            }
            continue;
        }
        if fs::symlink_metadata(&local).is_ok() {
            anyhow::bail!(
                "{}: exists and is not isola's link to {}; remove it (an isola installed by \
                 hand? `make uninstall`), or pick another handler name",
                link.display(),
                target.display()
            );
        }
        let dir = layout.local(shim_dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Recorded before it exists: an interrupted run's uninstall still removes it.
        if !m.links.contains(link) {
            m.links.push(link.clone());
            m.save(layout)?;
        }
        let tmp = local.with_file_name(format!(
            ".{}.isola-{}",
            link_name("tmp"),
            std::process::id()
        ));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)
            .with_context(|| format!("creating the link {}", tmp.display()))?;
        fs::rename(&tmp, &local).with_context(|| format!("creating {}", local.display()))?;
        println!("{} -> {}", link.display(), target.display());
        changed = true;
    }
    let stale: Vec<PathBuf> = m
        .links
        .iter()
        .filter(|l| !wanted.contains(l))
        .cloned()
        .collect();
    for link in stale {
        changed |= remove(layout, &link)?;
        m.links.retain(|l| *l != link);
    }
    Ok(changed)
}

/// Removes every recorded link (uninstall).
pub fn remove_all(layout: &Layout, m: &mut Manifest) -> anyhow::Result<()> {
    for link in std::mem::take(&mut m.links) {
        remove(layout, &link)?;
    }
    Ok(())
}

/// Removes `link` if it is still isola's; says what it did.
fn remove(layout: &Layout, link: &Path) -> anyhow::Result<bool> {
    let local = layout.local(link);
    if is_link_to(&local, &layout.shim()) {
        fs::remove_file(&local).with_context(|| format!("removing {}", local.display()))?;
        println!("{}: removed", link.display());
        return Ok(true);
    }
    if fs::symlink_metadata(&local).is_ok() {
        println!(
            "{}: no longer isola's link (changed since); left as it is",
            link.display()
        );
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Layout, Manifest) {
        let host = tempfile::tempdir().unwrap();
        let layout = Layout::new(host.path(), Path::new("/opt/isola")).unwrap();
        fs::create_dir_all(layout.local(&layout.backup())).unwrap();
        (host, layout, Manifest::default())
    }

    fn hs(names: &[&str]) -> Vec<Handler> {
        names.iter().map(|n| Handler::parse(n).unwrap()).collect()
    }

    #[test]
    fn each_handler_gets_a_link_to_the_current_shim_and_loses_it_when_dropped() {
        let (host, layout, mut m) = setup();
        let dir = Path::new("/usr/local/bin");
        assert!(ensure(&layout, &mut m, dir, &hs(&["isola", "isola-clh"])).unwrap());
        let link = host
            .path()
            .join("usr/local/bin/containerd-shim-isola-clh-v2");
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("/opt/isola/current/bin/containerd-shim-isola-v2")
        );
        assert_eq!(m.links.len(), 2);
        assert!(
            !ensure(&layout, &mut m, dir, &hs(&["isola", "isola-clh"])).unwrap(),
            "idempotent"
        );
        assert!(ensure(&layout, &mut m, dir, &hs(&["isola"])).unwrap());
        assert!(!link.exists() && fs::symlink_metadata(&link).is_err());
        assert_eq!(m.links, [dir.join("containerd-shim-isola-v2")]);
        remove_all(&layout, &mut m).unwrap();
        assert!(m.links.is_empty());
        let left: Vec<_> = fs::read_dir(host.path().join("usr/local/bin"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_file_of_that_name_is_never_replaced_nor_removed() {
        let (host, layout, mut m) = setup();
        let bin = host.path().join("usr/local/bin");
        fs::create_dir_all(&bin).unwrap();
        fs::write(bin.join("containerd-shim-isola-v2"), "by hand").unwrap();
        let e = ensure(
            &layout,
            &mut m,
            Path::new("/usr/local/bin"),
            &hs(&["isola"]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("is not isola's link"), "{e}");
        m.links
            .push(PathBuf::from("/usr/local/bin/containerd-shim-isola-v2"));
        remove_all(&layout, &mut m).unwrap();
        assert_eq!(
            fs::read_to_string(bin.join("containerd-shim-isola-v2")).unwrap(),
            "by hand"
        );
    }

    #[test]
    fn the_names_are_containerds() {
        assert_eq!(runtime_type("isola-op"), "io.containerd.isola-op.v2");
        assert_eq!(link_name("isola-op"), "containerd-shim-isola-op-v2");
    }
}
