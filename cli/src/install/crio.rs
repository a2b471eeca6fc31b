//! `isola install crio` / `isola uninstall crio`: the isola runtime as a CRI-O runtime handler,
//! in a drop-in file of its own (CRI-O reads `/etc/crio/crio.conf.d/*.conf` in order), so
//! CRI-O's own configuration is never edited:
//!
//! ```toml
//! [crio.runtime.runtimes.isola]
//! runtime_path = "/usr/local/bin/containerd-shim-isola-v2"
//! runtime_type = "vm"
//! runtime_root = "/run/isola/crio"
//! runtime_config_path = "/usr/local/share/isola/configuration.toml"
//! privileged_without_host_devices = true
//! ```
//!
//! Another handler (`--handler isola-clh`) gets a drop-in of its own, `50-<handler>.conf`, of the
//! same shape with its own `runtime_config_path`.
//!
//! `runtime_type = "vm"` makes CRI-O speak the containerd shim v2 protocol to the binary, as it
//! does for Kata Containers; it hands `runtime_config_path` to the shim as the runtime option
//! `ConfigPath`, the same option containerd sends. No `allowed_annotations`: CRI-O 1.32 accepts
//! there only annotations of its own fixed list and drops a whole handler that names another
//! ("invalid allowed_annotation: io.isola.config.*"); it passes every pod annotation into the
//! spec anyway, so `io.isola.config.*` reaches the runtime without it.

use std::path::Path;

use super::containerd::RUNTIME_NAME;

/// CRI-O's drop-in directory.
pub const DEFAULT_CRIO_DROP_IN_DIR: &str = "/etc/crio/crio.conf.d";
/// The drop-in's file name for `handler`, after CRI-O's own `00-default.conf`:
/// `50-isola.conf` for the default handler.
pub fn drop_in_name(handler: &str) -> String {
    format!("50-{handler}.conf")
}
/// The first line of the drop-in; uninstall removes only a file that starts with it.
pub const MARKER: &str = "# The isola runtime handler for CRI-O, written by `isola install crio`.";

/// A TOML basic string.
fn quoted(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}

/// The drop-in text of the runtime handler `handler`: the shim at `shim` using the isola
/// configuration `isola_config`, with the runtime's state under `state_dir`.
pub fn drop_in(handler: &str, shim: &Path, isola_config: &Path, state_dir: &Path) -> String {
    format!(
        "{MARKER}\n\
         # Remove it with `isola uninstall crio{}`, then restart CRI-O.\n\
         # Pods pick it with a Kubernetes RuntimeClass whose handler is \"{handler}\".\n\
         [crio.runtime.runtimes.{handler}]\n\
         runtime_path = {}\n\
         # CRI-O talks the containerd shim v2 protocol to VM runtimes.\n\
         runtime_type = \"vm\"\n\
         runtime_root = {}\n\
         runtime_config_path = {}\n\
         # A privileged pod gets no host devices: they would be the host's, not the guest's.\n\
         privileged_without_host_devices = true\n",
        handler_flag(handler),
        quoted(&shim.to_string_lossy()),
        quoted(&state_dir.join("crio").to_string_lossy()),
        quoted(&isola_config.to_string_lossy()),
    )
}

/// ` --handler <name>` for a handler other than the default, for the messages and comments.
pub fn handler_flag(handler: &str) -> String {
    if handler == RUNTIME_NAME {
        String::new()
    } else {
        format!(" --handler {handler}")
    }
}

/// Whether `text` is a drop-in isola wrote (and may remove).
pub fn is_ours(text: &str) -> bool {
    text.starts_with(MARKER)
}

/// The `runtime_config_path` of `handler` in the drop-in `text`, if it has one.
pub fn installed_config_path(text: &str, handler: &str) -> Option<String> {
    let doc = text.parse::<toml_edit::DocumentMut>().ok()?;
    [
        "crio",
        "runtime",
        "runtimes",
        handler,
        "runtime_config_path",
    ]
    .iter()
    .try_fold(doc.as_item(), |item, key| item.get(key))?
    .as_str()
    .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_in_is_a_vm_runtime_handler() {
        let text = drop_in(
            RUNTIME_NAME,
            Path::new("/usr/local/bin/containerd-shim-isola-v2"),
            Path::new("/etc/isola/configuration.toml"),
            Path::new("/run/isola"),
        );
        assert!(is_ours(&text));
        assert_eq!(drop_in_name(RUNTIME_NAME), "50-isola.conf");
        assert!(text.contains("`isola uninstall crio`"), "{text}");
        let doc: toml::Table = toml::from_str(&text).expect("valid TOML");
        let h = &doc["crio"]["runtime"]["runtimes"]["isola"];
        assert_eq!(h["runtime_type"].as_str(), Some("vm"));
        assert_eq!(
            h["runtime_path"].as_str(),
            Some("/usr/local/bin/containerd-shim-isola-v2")
        );
        assert_eq!(
            h["runtime_config_path"].as_str(),
            Some("/etc/isola/configuration.toml")
        );
        assert_eq!(h["runtime_root"].as_str(), Some("/run/isola/crio"));
        assert_eq!(h["privileged_without_host_devices"].as_bool(), Some(true));
        // CRI-O 1.32 drops a handler whose allowed_annotations name anything of another's.
        assert!(h.get("allowed_annotations").is_none(), "{text}");
    }

    #[test]
    fn odd_paths_stay_valid_toml() {
        let text = drop_in(
            RUNTIME_NAME,
            Path::new("/opt/my \"isola\"/shim"),
            Path::new("/etc/isola/c.toml"),
            Path::new("/run/isola"),
        );
        let doc: toml::Table = toml::from_str(&text).expect("valid TOML");
        assert_eq!(
            doc["crio"]["runtime"]["runtimes"]["isola"]["runtime_path"].as_str(),
            Some("/opt/my \"isola\"/shim")
        );
    }

    #[test]
    fn a_second_handler_has_its_own_drop_in_and_configuration() {
        let text = drop_in(
            "isola-clh",
            Path::new("/usr/local/bin/containerd-shim-isola-v2"),
            Path::new("/etc/isola/configuration-clh.toml"),
            Path::new("/run/isola"),
        );
        assert_eq!(drop_in_name("isola-clh"), "50-isola-clh.conf");
        assert!(is_ours(&text));
        assert_eq!(
            text,
            format!(
                "{MARKER}
# Remove it with `isola uninstall crio --handler isola-clh`, then restart CRI-O.
# Pods pick it with a Kubernetes RuntimeClass whose handler is \"isola-clh\".
[crio.runtime.runtimes.isola-clh]
runtime_path = \"/usr/local/bin/containerd-shim-isola-v2\"
# CRI-O talks the containerd shim v2 protocol to VM runtimes.
runtime_type = \"vm\"
runtime_root = \"/run/isola/crio\"
runtime_config_path = \"/etc/isola/configuration-clh.toml\"
# A privileged pod gets no host devices: they would be the host's, not the guest's.
privileged_without_host_devices = true
"
            )
        );
        let doc: toml::Table = toml::from_str(&text).expect("valid TOML");
        assert!(doc["crio"]["runtime"]["runtimes"].get("isola").is_none());
        assert_eq!(
            installed_config_path(&text, "isola-clh").as_deref(),
            Some("/etc/isola/configuration-clh.toml")
        );
        assert_eq!(installed_config_path(&text, RUNTIME_NAME), None);
    }

    #[test]
    fn only_our_files_are_ours() {
        assert!(!is_ours("[crio.runtime.runtimes.isola]\n"));
        assert!(!is_ours(""));
    }
}
