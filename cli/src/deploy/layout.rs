//! Where things are: the host's paths as the host sees them (written into containerd's and
//! CRI-O's configuration, into isola's configuration, compared with `/proc/*/exe`), and the same
//! paths as this process reaches them (under `--host-root`, e.g. `/host` in the DaemonSet's pod).
//!
//! ```text
//! <prefix>/versions/<version-id>/bin/{isola,containerd-shim-isola-v2}
//! <prefix>/versions/<version-id>/share/isola/{configuration.toml,configuration-<h>.toml,vmlinux,…}
//! <prefix>/current -> versions/<version-id>        (relative: the same from the pod and the host)
//! <prefix>/backup/{manifest.json,files/…}          (the runtime's configuration before isola)
//! ```

use std::path::{Path, PathBuf};

use isola_config::HypervisorKind;

use crate::install::handler_config::check_handler;

/// The shim's file name under `bin/`.
pub const SHIM: &str = "containerd-shim-isola-v2";
/// The CLI's file name under `bin/`.
pub const ISOLA: &str = "isola";
/// The share directory of a version (and of a payload), relative to its root.
pub const SHARE: &str = "share/isola";

/// The install's two roots.
#[derive(Debug, Clone)]
pub struct Layout {
    host_root: PathBuf,
    prefix: PathBuf,
}

impl Layout {
    /// `host_root`: where the host's `/` is (`/` on the node itself); `prefix`: the install
    /// directory as the host sees it. Both absolute; the prefix is not `/` and has no `..`.
    pub fn new(host_root: &Path, prefix: &Path) -> anyhow::Result<Layout> {
        if !host_root.is_absolute() {
            anyhow::bail!(
                "--host-root {}: must be an absolute path (where the node's / is mounted, or /)",
                host_root.display()
            );
        }
        // `Path::components` drops inner `.`s, so the text is looked at.
        let plain = prefix
            .to_str()
            .is_some_and(|s| !s.split('/').any(|seg| seg == "." || seg == ".."));
        if !prefix.is_absolute() || !plain || prefix.parent().is_none() {
            anyhow::bail!(
                "--prefix {}: must be an absolute directory other than / without `.` or `..` \
                 (isola owns it entirely: uninstall removes it), e.g. /opt/isola",
                prefix.display()
            );
        }
        Ok(Layout {
            host_root: host_root.to_path_buf(),
            prefix: prefix.to_path_buf(),
        })
    }

    /// Where this process reaches the host path `p`.
    pub fn local(&self, p: &Path) -> PathBuf {
        let rel = p.strip_prefix("/").unwrap_or(p);
        if rel.as_os_str().is_empty() {
            self.host_root.clone()
        } else {
            self.host_root.join(rel)
        }
    }

    pub fn host_root(&self) -> &Path {
        &self.host_root
    }

    /// The prefix (host view).
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// `<prefix>/versions` (host view).
    pub fn versions(&self) -> PathBuf {
        self.prefix.join("versions")
    }

    /// `<prefix>/versions/<id>` (host view).
    pub fn version(&self, id: &str) -> PathBuf {
        self.versions().join(id)
    }

    /// `<prefix>/current` (host view).
    pub fn current(&self) -> PathBuf {
        self.prefix.join("current")
    }

    /// `<prefix>/backup` (host view).
    pub fn backup(&self) -> PathBuf {
        self.prefix.join("backup")
    }

    /// The shim the runtime runs: through `current`, so an upgrade needs no new registration.
    pub fn shim(&self) -> PathBuf {
        self.current().join("bin").join(SHIM)
    }

    /// The isola CLI of the current version.
    pub fn isola(&self) -> PathBuf {
        self.current().join("bin").join(ISOLA)
    }

    /// The isola configuration `handler` uses, through `current`.
    pub fn handler_config(&self, handler: &Handler) -> PathBuf {
        self.current().join(SHARE).join(handler.config_file())
    }
}

/// A runtime handler to register: `name[:hypervisor]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    pub name: String,
    /// The VMM its configuration selects; `None`: the version's `configuration.toml` as it is.
    pub hypervisor: Option<HypervisorKind>,
}

impl Handler {
    /// Parses `name[:hypervisor]`, e.g. `isola` or `isola-clh:cloud-hypervisor`.
    pub fn parse(spec: &str) -> Result<Handler, String> {
        let (name, kind) = match spec.split_once(':') {
            Some((n, k)) => (n, Some(k)),
            None => (spec, None),
        };
        check_handler(name)?;
        let hypervisor = match kind {
            None => None,
            Some(k) => Some(HypervisorKind::from_name(k).ok_or_else(|| {
                format!(
                    "--handler {spec}: unknown hypervisor {k:?} (qemu or cloud-hypervisor), \
                     e.g. isola-clh:cloud-hypervisor"
                )
            })?),
        };
        Ok(Handler {
            name: name.to_string(),
            hypervisor,
        })
    }

    /// Its configuration's file name in `share/isola`: the version's own `configuration.toml`
    /// unless the handler selects a hypervisor, then `configuration-<name>.toml`.
    pub fn config_file(&self) -> String {
        match self.hypervisor {
            None => "configuration.toml".to_string(),
            Some(_) => format!("configuration-{}.toml", self.name),
        }
    }

    /// Back to `name[:hypervisor]`.
    pub fn spec(&self) -> String {
        match self.hypervisor {
            None => self.name.clone(),
            Some(k) => format!("{}:{}", self.name, k.as_str()),
        }
    }
}

/// The handlers of `specs`, `isola` when there are none; a name given twice is an error.
pub fn handlers(specs: &[String]) -> anyhow::Result<Vec<Handler>> {
    let mut out: Vec<Handler> = Vec::new();
    for spec in specs {
        let h = Handler::parse(spec).map_err(anyhow::Error::msg)?;
        if out.iter().any(|o| o.name == h.name) {
            anyhow::bail!("--handler {}: given twice", h.name);
        }
        out.push(h);
    }
    if out.is_empty() {
        out.push(Handler {
            name: crate::install::containerd::RUNTIME_NAME.to_string(),
            hypervisor: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_reached_under_the_host_root() {
        let l = Layout::new(Path::new("/host"), Path::new("/opt/isola")).unwrap();
        assert_eq!(l.version("v1"), Path::new("/opt/isola/versions/v1"));
        assert_eq!(
            l.local(&l.version("v1")),
            Path::new("/host/opt/isola/versions/v1")
        );
        assert_eq!(l.local(Path::new("/")), Path::new("/host"));
        assert_eq!(
            l.shim(),
            Path::new("/opt/isola/current/bin/containerd-shim-isola-v2")
        );
        let on = Layout::new(Path::new("/"), Path::new("/opt/isola")).unwrap();
        assert_eq!(on.local(&on.backup()), Path::new("/opt/isola/backup"));
    }

    #[test]
    fn odd_prefixes_and_roots_are_refused() {
        for bad in ["/", "opt/isola", "/opt/../etc", "/opt/./isola", ""] {
            let e = Layout::new(Path::new("/"), Path::new(bad)).unwrap_err();
            assert!(e.to_string().contains("--prefix"), "{bad}: {e}");
        }
        let e = Layout::new(Path::new("host"), Path::new("/opt/isola")).unwrap_err();
        assert!(e.to_string().contains("--host-root"), "{e}");
    }

    #[test]
    fn handler_specs() {
        let h = Handler::parse("isola-clh:cloud-hypervisor").unwrap();
        assert_eq!(h.name, "isola-clh");
        assert_eq!(h.hypervisor, Some(HypervisorKind::CloudHypervisor));
        assert_eq!(h.config_file(), "configuration-isola-clh.toml");
        assert_eq!(h.spec(), "isola-clh:cloud-hypervisor");
        let plain = Handler::parse("isola").unwrap();
        assert_eq!(plain.config_file(), "configuration.toml");
        let l = Layout::new(Path::new("/"), Path::new("/opt/isola")).unwrap();
        assert_eq!(
            l.handler_config(&h),
            Path::new("/opt/isola/current/share/isola/configuration-isola-clh.toml")
        );
        assert!(Handler::parse("isola:firecracker")
            .unwrap_err()
            .contains("unknown hypervisor"));
        assert!(Handler::parse("Isola").unwrap_err().contains("DNS label"));
        assert_eq!(handlers(&[]).unwrap(), vec![plain]);
        let twice = handlers(&["a".into(), "a:qemu".into()]).unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
    }
}
