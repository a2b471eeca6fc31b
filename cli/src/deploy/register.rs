//! Registering the handlers with the node's runtime: what containerd's `config.toml` or CRI-O's
//! drop-ins should say, made by `isola install`'s own editing functions with the deploy
//! layout's paths: the shim and every handler's configuration through `<prefix>/current`, so an
//! upgrade (a new `current`) changes nothing here and needs no runtime restart. Pure.

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use super::layout::{Handler, Layout};
use super::shim_link;
use crate::install::{containerd, crio};

/// The node's container runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    /// containerd 1.6 or later (`--runtime-config`: its config.toml)
    Containerd,
    /// CRI-O (`--runtime-config`: its drop-in directory, e.g. /etc/crio/crio.conf.d)
    Crio,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::Crio => "crio",
        }
    }

    pub fn from_name(s: &str) -> Option<Runtime> {
        [Runtime::Containerd, Runtime::Crio]
            .into_iter()
            .find(|r| r.name() == s)
    }

    /// The CRI socket it answers on (host path), when `--runtime-socket` does not say.
    pub fn default_socket(self) -> &'static str {
        match self {
            Runtime::Containerd => "/run/containerd/containerd.sock",
            Runtime::Crio => "/run/crio/crio.sock",
        }
    }
}

/// containerd's configuration `text` with every handler of `hs` (runtime
/// `io.containerd.<handler>.v2`, whose binary is a link to the current shim (`shim_link`),
/// `runtime_path` = the current shim, `ConfigPath` = its current configuration) and without
/// the handlers named in `dropped` (installed before, no longer wanted).
pub fn containerd_config(
    text: &str,
    layout: &Layout,
    hs: &[Handler],
    dropped: &[String],
) -> anyhow::Result<String> {
    let mut text = containerd_unregister(text, dropped)?;
    for h in hs {
        text = containerd::install(&text, &h.name, &layout.handler_config(h))
            .map_err(anyhow::Error::msg)?
            .text;
        text = containerd::set_runtime_type(&text, &h.name, &shim_link::runtime_type(&h.name))
            .map_err(anyhow::Error::msg)?
            .text;
        text = containerd::set_runtime_path(&text, &h.name, &layout.shim())
            .map_err(anyhow::Error::msg)?
            .text;
    }
    Ok(text)
}

/// containerd's configuration `text` without the handlers `names` (also for a file changed by
/// someone else since install, which uninstall must not put back byte for byte).
pub fn containerd_unregister(text: &str, names: &[String]) -> anyhow::Result<String> {
    let mut text = text.to_string();
    for name in names {
        text = containerd::uninstall(&text, name)
            .map_err(|e| anyhow::anyhow!("removing the runtime `{name}`: {e}"))?
            .text;
    }
    Ok(text)
}

/// CRI-O's drop-in for each handler: (host path in `dir`, text). `state_dir(h)` is the
/// `runtime.state_dir` of the handler's configuration.
pub fn crio_drop_ins(
    dir: &Path,
    layout: &Layout,
    hs: &[Handler],
    state_dir: impl Fn(&Handler) -> PathBuf,
) -> Vec<(PathBuf, String)> {
    hs.iter()
        .map(|h| {
            let text = crio::drop_in(
                &h.name,
                &layout.shim(),
                &layout.handler_config(h),
                &state_dir(h),
            );
            (dir.join(crio::drop_in_name(&h.name)), text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new(Path::new("/host"), Path::new("/opt/isola")).unwrap()
    }

    fn hs() -> Vec<Handler> {
        vec![
            Handler::parse("isola").unwrap(),
            Handler::parse("isola-clh:cloud-hypervisor").unwrap(),
        ]
    }

    #[test]
    fn containerd_runs_the_current_shim_with_the_current_configuration() {
        let original =
            "version = 2\n# mine\n[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"p\"\n";
        let text = containerd_config(original, &layout(), &hs(), &[]).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let rts = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        let isola = &rts["isola"];
        assert_eq!(
            isola["runtime_type"].as_str(),
            Some("io.containerd.isola.v2")
        );
        assert_eq!(
            rts["isola-clh"]["runtime_type"].as_str(),
            Some("io.containerd.isola-clh.v2"),
            "each handler its own binary name (shim_link)"
        );
        assert_eq!(
            isola["runtime_path"].as_str(),
            Some("/opt/isola/current/bin/containerd-shim-isola-v2")
        );
        assert_eq!(
            isola["options"]["ConfigPath"].as_str(),
            Some("/opt/isola/current/share/isola/configuration.toml")
        );
        assert_eq!(
            rts["isola-clh"]["options"]["ConfigPath"].as_str(),
            Some("/opt/isola/current/share/isola/configuration-isola-clh.toml")
        );
        assert!(text.starts_with("version = 2\n# mine\n"), "{text}");
        // Idempotent; and dropping a handler takes exactly it out again.
        assert_eq!(
            containerd_config(&text, &layout(), &hs(), &[]).unwrap(),
            text
        );
        let one = containerd_config(&text, &layout(), &hs()[..1], &["isola-clh".into()]).unwrap();
        assert_eq!(
            one,
            containerd_config(original, &layout(), &hs()[..1], &[]).unwrap()
        );
        let none = containerd_unregister(&one, &["isola".into()]).unwrap();
        assert_eq!(none, original);
    }

    #[test]
    fn a_version_1_file_is_refused_with_the_reason() {
        let e = containerd_config("[plugins]\n", &layout(), &hs(), &[]).unwrap_err();
        assert!(e.to_string().contains("version 1"), "{e}");
    }

    #[test]
    fn crio_gets_one_drop_in_per_handler() {
        let files = crio_drop_ins(Path::new("/etc/crio/crio.conf.d"), &layout(), &hs(), |_| {
            PathBuf::from("/run/isola")
        });
        assert_eq!(files.len(), 2);
        assert_eq!(
            files[1].0,
            Path::new("/etc/crio/crio.conf.d/50-isola-clh.conf")
        );
        let doc: toml::Table = toml::from_str(&files[1].1).unwrap();
        let h = &doc["crio"]["runtime"]["runtimes"]["isola-clh"];
        assert_eq!(
            h["runtime_path"].as_str(),
            Some("/opt/isola/current/bin/containerd-shim-isola-v2")
        );
        assert_eq!(
            h["runtime_config_path"].as_str(),
            Some("/opt/isola/current/share/isola/configuration-isola-clh.toml")
        );
        assert_eq!(Runtime::from_name("crio"), Some(Runtime::Crio));
        assert_eq!(Runtime::from_name("docker"), None);
    }
}
