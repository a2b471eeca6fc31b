//! The isola configurations of an installed version: the payload's `configuration.toml` with its
//! paths pointed into the version's own directory, and one configuration per handler that
//! selects a hypervisor. Pure: text in, text out.
//!
//! The paths point at `<prefix>/versions/<id>/…`, never at `<prefix>/current/…`: a pod boots its
//! VM with the guest kernel and initrd (whose agent speaks the protocol of the shim that booted
//! it) of the version whose configuration it read, whatever `current` says later, and the VMM's
//! command line names that version's directory, which keeps the version from being collected
//! while the VM runs (see `gc`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use toml_edit::{DocumentMut, Item};

use super::layout::Handler;
use crate::install::handler_config;

/// Where the payload's configuration says the guest image is: the shipped default
/// (`config/configuration.toml`, built for `PREFIX=/usr/local`).
pub const PAYLOAD_SHARE: &str = "/usr/local/share/isola/";

/// `[hypervisor]` keys naming a helper binary the payload may ship in its `bin/`.
const HELPERS: [&str; 3] = [
    "virtiofsd_path",
    "vhost_user_vsock_path",
    "cloud_hypervisor_path",
];

/// The `runtime.state_dir` of the isola configuration at `config` (a local path); the
/// default when it cannot be read.
pub fn state_dir(config: &Path) -> PathBuf {
    std::fs::read_to_string(config)
        .ok()
        .and_then(|t| isola_config::Config::from_toml_str(&t, Path::new("c")).ok())
        .map_or_else(
            || PathBuf::from(isola_config::DEFAULT_STATE_DIR),
            |c| c.runtime.state_dir,
        )
}

/// `text` with every path under [`PAYLOAD_SHARE`] moved to `<version>/share/isola/` (the same
/// replacement `make install` makes for its prefix, commented examples included), and each
/// helper path whose binary the payload ships (`shipped`: the file names in its `bin/`) pointed
/// at `<version>/bin/<name>`. Comments and layout stay; the result must be a valid
/// configuration.
pub fn rewrite(text: &str, version: &Path, shipped: &[String]) -> anyhow::Result<String> {
    let share = format!("\"{}/", version.join(super::layout::SHARE).display());
    let moved = text.replace(&format!("\"{PAYLOAD_SHARE}"), &share);
    let mut doc = moved
        .parse::<DocumentMut>()
        .context("the payload's configuration.toml is not valid TOML")?;
    if let Some(hv) = doc.get_mut("hypervisor").and_then(Item::as_table_like_mut) {
        for key in HELPERS {
            let Some(Item::Value(v)) = hv.get_mut(key) else {
                continue;
            };
            let Some(name) = v.as_str().and_then(|s| Path::new(s).file_name()) else {
                continue;
            };
            let name = name.to_string_lossy().to_string();
            if shipped.contains(&name) {
                let target = version.join("bin").join(&name);
                let mut new = toml_edit::Value::from(target.to_string_lossy().as_ref());
                *new.decor_mut() = v.decor().clone();
                *v = new;
            }
        }
    }
    let out = doc.to_string();
    isola_config::Config::from_toml_str(&out, &version.join(super::layout::SHARE))
        .context("the payload's configuration.toml, rewritten for this version, is not valid")?;
    Ok(out)
}

/// `text` with `[factory] template = on` (VM templates, docs/fast-start.md), comments kept.
pub fn with_templates(text: &str, on: bool) -> anyhow::Result<String> {
    let mut doc: DocumentMut = text
        .parse()
        .context("the version's configuration.toml is not TOML")?;
    let factory = doc
        .entry("factory")
        .or_insert_with(toml_edit::table)
        .as_table_mut()
        .context("[factory] of the version's configuration.toml is not a table")?;
    match factory.get_mut("template").and_then(Item::as_value_mut) {
        Some(v) => {
            let decor = v.decor().clone();
            *v = toml_edit::Value::from(on);
            *v.decor_mut() = decor;
        }
        None => {
            factory.insert("template", toml_edit::value(on));
        }
    }
    Ok(doc.to_string())
}

/// The configuration files of `handlers` that select a hypervisor: (file name, text), made from
/// the version's rewritten `base` (at `base_path`).
pub fn handler_files(
    base: &str,
    base_path: &Path,
    handlers: &[Handler],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for h in handlers {
        let Some(kind) = h.hypervisor else { continue };
        let file = h.config_file();
        let target = base_path.with_file_name(&file);
        let text = handler_config::generate(
            base,
            &base_path.display().to_string(),
            &h.name,
            kind,
            &target,
        )?;
        out.push((file, text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use isola_config::{Config, HypervisorKind};

    const V: &str = "/opt/isola/versions/0.1.0-abc";

    #[test]
    fn the_shipped_configuration_points_into_the_version() {
        let text = rewrite(
            isola_config::DEFAULT_CONFIG_TOML,
            Path::new(V),
            &["virtiofsd".into()],
        )
        .unwrap();
        let c = Config::from_toml_str(&text, Path::new("/c.toml")).unwrap();
        assert_eq!(
            c.hypervisor.kernel,
            Path::new(V).join("share/isola/vmlinux")
        );
        assert_eq!(
            c.hypervisor.initrd,
            Path::new(V).join("share/isola/initrd.img")
        );
        // Shipped helpers move into the version, others stay the host's.
        assert_eq!(
            c.hypervisor.virtiofsd_path,
            Path::new(V).join("bin/virtiofsd")
        );
        assert_eq!(
            c.hypervisor.vhost_user_vsock_path,
            Path::new("/usr/local/bin/vhost-device-vsock")
        );
        assert_eq!(c.hypervisor.path, Path::new("/usr/bin/qemu-system-x86_64"));
        // The commented alternatives move too; every comment stays.
        assert!(
            text.contains(&format!("#   kernel = \"{V}/share/isola/debian/vmlinux\"")),
            "{text}"
        );
        assert_eq!(
            text.lines().filter(|l| l.starts_with('#')).count(),
            isola_config::DEFAULT_CONFIG_TOML
                .lines()
                .filter(|l| l.starts_with('#'))
                .count()
        );
    }

    #[test]
    fn vm_templates_are_set_in_place_or_added() {
        let base = rewrite(isola_config::DEFAULT_CONFIG_TOML, Path::new(V), &[]).unwrap();
        let off = with_templates(&base, false).unwrap();
        let c = Config::from_toml_str(&off, Path::new("/c.toml")).unwrap();
        assert!(!c.factory.template);
        assert_eq!(
            off.lines().count(),
            base.lines().count(),
            "set in place, comments kept"
        );
        let on = with_templates(&off, true).unwrap();
        assert!(
            Config::from_toml_str(&on, Path::new("/c.toml"))
                .unwrap()
                .factory
                .template
        );
        let added = with_templates("[hypervisor]\nvcpus = 2\n", false).unwrap();
        let c = Config::from_toml_str(&added, Path::new("/c.toml")).unwrap();
        assert!(!c.factory.template && c.hypervisor.vcpus == 2, "{added}");
    }

    #[test]
    fn an_invalid_result_is_refused() {
        let e = rewrite("[hypervisor]\nvcpus = 0\n", Path::new(V), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("not valid"), "{e:#}");
        assert!(rewrite("[hypervisor", Path::new(V), &[]).is_err());
    }

    #[test]
    fn a_handler_with_a_hypervisor_gets_its_own_file() {
        let base = rewrite(isola_config::DEFAULT_CONFIG_TOML, Path::new(V), &[]).unwrap();
        let hs = [
            Handler::parse("isola").unwrap(),
            Handler::parse("isola-q:qemu").unwrap(),
        ];
        let path = Path::new(V).join("share/isola/configuration.toml");
        let files = handler_files(&base, &path, &hs).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "configuration-isola-q.toml");
        let c = Config::from_toml_str(&files[0].1, Path::new("/c.toml")).unwrap();
        assert_eq!(c.hypervisor.kind, HypervisorKind::Qemu);
        assert_eq!(
            c.hypervisor.kernel,
            Path::new(V).join("share/isola/vmlinux")
        );
        assert!(handler_config::is_ours(&files[0].1, "isola-q"));
    }
}
