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
/// The drop-in's file name: after CRI-O's own `00-default.conf`.
pub const DROP_IN_NAME: &str = "50-isola.conf";
/// The first line of the drop-in; uninstall removes only a file that starts with it.
pub const MARKER: &str = "# The isola runtime handler for CRI-O, written by `isola install crio`.";

/// A TOML basic string.
fn quoted(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}

/// The drop-in text for the shim at `shim` using the isola configuration `isola_config`, with
/// the runtime's state under `state_dir`.
pub fn drop_in(shim: &Path, isola_config: &Path, state_dir: &Path) -> String {
    format!(
        "{MARKER}\n\
         # Remove it with `isola uninstall crio`, then restart CRI-O.\n\
         # Pods pick it with a Kubernetes RuntimeClass whose handler is \"{RUNTIME_NAME}\".\n\
         [crio.runtime.runtimes.{RUNTIME_NAME}]\n\
         runtime_path = {}\n\
         # CRI-O talks the containerd shim v2 protocol to VM runtimes.\n\
         runtime_type = \"vm\"\n\
         runtime_root = {}\n\
         runtime_config_path = {}\n\
         # A privileged pod gets no host devices: they would be the host's, not the guest's.\n\
         privileged_without_host_devices = true\n",
        quoted(&shim.to_string_lossy()),
        quoted(&state_dir.join("crio").to_string_lossy()),
        quoted(&isola_config.to_string_lossy()),
    )
}

/// Whether `text` is a drop-in isola wrote (and may remove).
pub fn is_ours(text: &str) -> bool {
    text.starts_with(MARKER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_in_is_a_vm_runtime_handler() {
        let text = drop_in(
            Path::new("/usr/local/bin/containerd-shim-isola-v2"),
            Path::new("/etc/isola/configuration.toml"),
            Path::new("/run/isola"),
        );
        assert!(is_ours(&text));
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
    fn only_our_files_are_ours() {
        assert!(!is_ours("[crio.runtime.runtimes.isola]\n"));
        assert!(!is_ours(""));
    }
}
