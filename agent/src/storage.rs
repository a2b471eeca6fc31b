//! Mounting the host's `Storage`s in the guest (the sandbox's virtio-fs share, a container's
//! volumes).
//!
//! | driver | mounts |
//! |---|---|
//! | `virtiofs` | `mount -t virtiofs <source = tag> <mount_point>` |
//! | `bind` | a bind mount of the guest path `source` (`rbind` in options: recursive) |
//! | `tmpfs`, `overlay`, anything else | `mount -t <fstype or driver> <source> <mount_point>` |
//!
//! Options are mount(8)-style: flags (`ro`, `nosuid`, `nodev`, `noexec`, `noatime`, ...) become
//! mount flags, everything else (`size=64m`, `lowerdir=...`) is passed as filesystem data.

use std::path::{Path, PathBuf};

use isola_agent_proto::types::Storage;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{AgentError, Result};

/// A mount, planned from a `Storage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub source: String,
    pub target: PathBuf,
    pub fstype: Option<String>,
    pub flags: MsFlags,
    pub data: String,
}

/// Turns mount(8)-style options into flags and filesystem data.
pub fn parse_options<S: AsRef<str>>(options: &[S]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options.iter().flat_map(|o| o.as_ref().split(',')) {
        let opt = opt.trim();
        match opt {
            "" | "defaults" | "rw" => {}
            "ro" => flags |= MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

/// Plans the mount of `storage`; INVALID_ARGUMENT for an unusable one.
pub fn plan(storage: &Storage) -> Result<MountPlan> {
    let target = Path::new(&storage.mount_point);
    if !target.is_absolute() {
        return Err(AgentError::InvalidArgument(format!(
            "storage mount point {:?} is not an absolute guest path",
            storage.mount_point
        )));
    }
    if storage.source.is_empty() {
        return Err(AgentError::InvalidArgument(format!(
            "storage for {} has no source",
            storage.mount_point
        )));
    }
    let (mut flags, data) = parse_options(&storage.options);
    let fstype = match storage.driver.as_str() {
        "virtiofs" => Some("virtiofs".to_string()),
        "bind" => {
            flags |= MsFlags::MS_BIND;
            None
        }
        "" if storage.fstype.is_empty() => {
            return Err(AgentError::InvalidArgument(format!(
                "storage for {} names neither a driver nor a filesystem type",
                storage.mount_point
            )))
        }
        driver => Some(if storage.fstype.is_empty() {
            driver.to_string()
        } else {
            storage.fstype.clone()
        }),
    };
    let fstype = if flags.contains(MsFlags::MS_BIND) {
        None
    } else {
        fstype
    };
    Ok(MountPlan {
        source: storage.source.clone(),
        target: target.to_path_buf(),
        fstype,
        flags,
        data,
    })
}

/// Where the guest kernel lists the virtio-fs devices its driver has bound.
const VIRTIOFS_DRIVER_DIR: &str = "/sys/bus/virtio/drivers/virtiofs";

/// How long to wait for a virtio-fs device that is not there yet.
const VIRTIOFS_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until the guest has as many virtio-fs devices as `storages` mount: a VM restored from
/// a template gets its virtio-fs device plugged just before it runs, and the driver may bind it
/// after the host's first request arrives. At once on a booted VM or outside a guest.
pub async fn wait_for_virtiofs(storages: &[Storage]) -> Result<()> {
    let wanted = storages.iter().filter(|s| s.fstype == "virtiofs").count();
    if wanted == 0 || !crate::boot::is_guest_init() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + VIRTIOFS_WAIT;
    loop {
        let bound = std::fs::read_dir(VIRTIOFS_DRIVER_DIR).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("virtio"))
                .count()
        });
        if bound >= wanted {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(AgentError::NotFound(format!(
                "{wanted} virtio-fs device(s) to mount, {bound} in the guest after {} s",
                VIRTIOFS_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Mounts `storage` (creating its mount point) and returns the mount point.
pub fn mount_storage(storage: &Storage) -> Result<PathBuf> {
    let p = plan(storage)?;
    std::fs::create_dir_all(&p.target)
        .map_err(|e| AgentError::io(format!("creating mount point {}", p.target.display()), e))?;
    let data = (!p.data.is_empty()).then_some(p.data.as_str());
    mount(
        Some(p.source.as_str()),
        &p.target,
        p.fstype.as_deref(),
        p.flags,
        data,
    )
    .map_err(|e| {
        AgentError::sys(
            format!(
                "mounting {} ({}) on {}",
                p.source,
                p.fstype.as_deref().unwrap_or("bind"),
                p.target.display()
            ),
            e,
        )
    })?;
    // A bind mount ignores most flags on creation: apply them with a remount.
    let extra = p.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
    if p.flags.contains(MsFlags::MS_BIND) && !extra.is_empty() {
        mount(
            None::<&str>,
            &p.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
            None::<&str>,
        )
        .map_err(|e| {
            let _ = umount2(&p.target, MntFlags::MNT_DETACH);
            AgentError::sys(
                format!("remounting {} with its options", p.target.display()),
                e,
            )
        })?;
    }
    tracing::info!(source = %p.source, target = %p.target.display(), fstype = p.fstype.as_deref().unwrap_or("bind"), "storage mounted");
    Ok(p.target)
}

/// Unmounts a mount point (lazily when it is busy). Errors are logged, not returned: removal
/// goes on regardless.
pub fn unmount(target: &Path) {
    match umount2(target, MntFlags::empty()) {
        Ok(()) => {}
        Err(nix::errno::Errno::EBUSY) => {
            if let Err(e) = umount2(target, MntFlags::MNT_DETACH) {
                tracing::warn!(target = %target.display(), error = %e, "lazy unmount failed");
            }
        }
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!(target = %target.display(), error = %e, "unmount failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(driver: &str, source: &str, fstype: &str, options: &[&str], at: &str) -> Storage {
        Storage {
            driver: driver.into(),
            source: source.into(),
            fstype: fstype.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            mount_point: at.into(),
            ..Default::default()
        }
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = parse_options(&["ro,nosuid", "size=64m", "mode=755", "rw", ""]);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(data, "size=64m,mode=755");
    }

    #[test]
    fn virtiofs_share() {
        let p = plan(&storage(
            "virtiofs",
            "isolafs",
            "",
            &[],
            "/run/isola/shared",
        ))
        .unwrap();
        assert_eq!(p.fstype.as_deref(), Some("virtiofs"));
        assert_eq!(p.source, "isolafs");
        assert_eq!(p.target, Path::new("/run/isola/shared"));
        assert_eq!(p.flags, MsFlags::empty());
    }

    #[test]
    fn bind_tmpfs_and_generic() {
        let p = plan(&storage("bind", "/run/x", "", &["rbind", "ro"], "/run/y")).unwrap();
        assert_eq!(p.fstype, None);
        assert!(p
            .flags
            .contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        let p = plan(&storage("tmpfs", "tmpfs", "", &["size=1m"], "/run/t")).unwrap();
        assert_eq!(p.fstype.as_deref(), Some("tmpfs"));
        assert_eq!(p.data, "size=1m");
        let p = plan(&storage("blk", "/dev/vdb", "ext4", &[], "/run/b")).unwrap();
        assert_eq!(p.fstype.as_deref(), Some("ext4"));
    }

    #[test]
    fn unusable_storages_are_invalid() {
        for s in [
            storage("virtiofs", "isolafs", "", &[], "relative"),
            storage("virtiofs", "", "", &[], "/x"),
            storage("", "src", "", &[], "/x"),
        ] {
            let e = plan(&s).unwrap_err();
            assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT, "{e}");
        }
    }
}
