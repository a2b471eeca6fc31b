//! The isola configuration of a runtime handler that `isola install ... --hypervisor <kind>`
//! writes: an existing configuration (the one isola itself loads, or `--from`) with
//! `hypervisor.kind` set, everything else (comments included) kept, under a marker line naming
//! the handler so that `isola uninstall ... --handler <name>` removes exactly that file again.
//! Pure: text in, text out.

use std::path::Path;

use anyhow::Context;
use isola_config::{Config, HypervisorKind};
use toml_edit::{DocumentMut, Item, Table};

/// The first line of a configuration written for `handler`; uninstall removes only a file that
/// starts with it.
pub fn marker(handler: &str) -> String {
    format!("# isola configuration of the runtime handler `{handler}`, written by `isola install`.")
}

/// Whether `text` is a configuration `isola install` wrote for `handler`.
pub fn is_ours(text: &str, handler: &str) -> bool {
    text.lines().next() == Some(marker(handler).as_str())
}

/// A runtime handler name as Kubernetes takes it in a RuntimeClass (`handler`): a DNS label,
/// 1 to 63 lowercase letters, digits and `-`, starting and ending with a letter or digit. It is
/// also a containerd runtime name, a CRI-O table key and part of the drop-in's file name.
pub fn check_handler(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c != '-');
    if (1..=63).contains(&name.len())
        && name.chars().all(ok_char)
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last())
    {
        Ok(())
    } else {
        Err(format!(
            "runtime handler {name:?} is not a DNS label (1 to 63 lowercase letters, digits and \
             '-', starting and ending with a letter or digit), as a Kubernetes RuntimeClass \
             handler must be; e.g. isola-clh"
        ))
    }
}

/// The configuration for `handler`: `base` (read from `origin`, named in the header) with
/// `[hypervisor] kind = kind`. Refused, naming the key, when the result is not a valid
/// configuration (e.g. `accelerator = "tcg"` with Cloud Hypervisor); `target` is where it will
/// be written, for that message.
pub fn generate(
    base: &str,
    origin: &str,
    handler: &str,
    kind: HypervisorKind,
    target: &Path,
) -> anyhow::Result<String> {
    let mut doc = base
        .parse::<DocumentMut>()
        .with_context(|| format!("{origin}: not a valid TOML file"))?;
    let hypervisor = doc
        .entry("hypervisor")
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_like_mut()
        .with_context(|| format!("{origin}: `hypervisor` is not a table"))?;
    let mut value = toml_edit::Value::from(kind.as_str());
    match hypervisor.get_mut("kind") {
        // In place: the comments above the key, its spacing and a trailing comment stay.
        Some(Item::Value(old)) => {
            *value.decor_mut() = old.decor().clone();
            *old = value;
        }
        _ => {
            hypervisor.insert("kind", Item::Value(value));
        }
    }
    let text = format!(
        "{}\n\
         # Made from {origin} with [hypervisor] kind = \"{kind}\". `isola uninstall containerd\n\
         # --handler {handler}` (or `crio`) removes it again; edit it freely, or install again\n\
         # to make it anew.\n\
         \n\
         {doc}",
        marker(handler),
    );
    Config::from_toml_str(&text, target).with_context(|| {
        format!(
            "the configuration made from {origin} with kind = \"{kind}\" would not be valid; fix \
             it there, or pass another with --from"
        )
    })?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = "/etc/isola/configuration-clh.toml";

    fn clh(base: &str) -> anyhow::Result<String> {
        generate(
            base,
            "/etc/isola/configuration.toml",
            "isola-clh",
            HypervisorKind::CloudHypervisor,
            Path::new(TARGET),
        )
    }

    #[test]
    fn the_shipped_default_becomes_a_cloud_hypervisor_configuration() {
        let text = clh(isola_config::DEFAULT_CONFIG_TOML).unwrap();
        assert!(is_ours(&text, "isola-clh"), "{text}");
        assert!(!is_ours(&text, "isola"));
        let c = Config::from_toml_str(&text, Path::new(TARGET)).unwrap();
        assert_eq!(c.hypervisor.kind, HypervisorKind::CloudHypervisor);
        // Only the kind changed; the shipped comments are all still there.
        let mut expected =
            Config::from_toml_str(isola_config::DEFAULT_CONFIG_TOML, Path::new("/d.toml")).unwrap();
        expected.hypervisor.kind = HypervisorKind::CloudHypervisor;
        assert_eq!(c, expected);
        assert!(text.contains("kind = \"cloud-hypervisor\"\n"), "{text}");
        for line in isola_config::DEFAULT_CONFIG_TOML
            .lines()
            .filter(|l| l.starts_with('#'))
        {
            assert!(text.contains(line), "{line:?} lost");
        }
        // Idempotent: the same base gives the same text.
        assert_eq!(clh(isola_config::DEFAULT_CONFIG_TOML).unwrap(), text);
    }

    #[test]
    fn a_short_base_gets_the_key_in_its_hypervisor_table() {
        let base = "# dev\n[hypervisor]\nkernel = \"/src/vmlinux\"\n";
        let text = clh(base).unwrap();
        assert_eq!(
            text,
            format!(
                "{}
# Made from /etc/isola/configuration.toml with [hypervisor] kind = \"cloud-hypervisor\". `isola uninstall containerd
# --handler isola-clh` (or `crio`) removes it again; edit it freely, or install again
# to make it anew.

# dev
[hypervisor]
kernel = \"/src/vmlinux\"
kind = \"cloud-hypervisor\"
",
                marker("isola-clh")
            )
        );
        let text = clh("[agent]\nlog_level = \"debug\"\n").unwrap();
        let c = Config::from_toml_str(&text, Path::new(TARGET)).unwrap();
        assert_eq!(c.hypervisor.kind, HypervisorKind::CloudHypervisor);
        let text = clh("hypervisor.vcpus = 2\nhypervisor.kind = \"qemu\" # was\n").unwrap();
        assert!(
            text.contains("hypervisor.kind = \"cloud-hypervisor\" # was\n"),
            "{text}"
        );
    }

    #[test]
    fn a_base_cloud_hypervisor_cannot_run_is_refused_naming_the_key() {
        let err = clh("[hypervisor]\naccelerator = \"tcg\"\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("hypervisor.accelerator") && msg.contains("no software emulation"),
            "{msg}"
        );
        assert!(msg.contains("--from"), "{msg}");
        assert!(clh("[hypervisor\n").is_err());
        assert!(clh("hypervisor = 3\n").is_err());
    }

    #[test]
    fn handler_names_are_dns_labels() {
        for ok in ["isola", "isola-clh", "a", "clh2"] {
            assert_eq!(check_handler(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Isola",
            "isola_clh",
            "-clh",
            "clh-",
            "a.b",
            "x y",
            &"a".repeat(64),
        ] {
            let e = check_handler(bad).unwrap_err();
            assert!(e.contains("DNS label"), "{bad}: {e}");
        }
    }

    /// `key: value` lines of a small YAML manifest, trimmed, quotes dropped.
    fn yaml_fields(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            .collect()
    }

    #[test]
    fn the_cloud_hypervisor_runtimeclass_matches_the_second_handler() {
        let clh = yaml_fields(include_str!("../../../deploy/runtimeclass-clh.yaml"));
        let qemu = yaml_fields(include_str!("../../../deploy/runtimeclass.yaml"));
        let get = |fields: &[(String, String)], key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {key}"))
        };
        assert_eq!(get(&clh, "kind"), "RuntimeClass");
        assert_eq!(get(&clh, "name"), "isola-clh");
        assert_eq!(get(&clh, "handler"), "isola-clh");
        check_handler(&get(&clh, "handler")).unwrap();
        assert_eq!(
            get(&qemu, "handler"),
            super::super::containerd::RUNTIME_NAME
        );
        for key in ["apiVersion", "memory", "cpu"] {
            assert_eq!(get(&clh, key), get(&qemu, key), "{key}");
        }
    }
}
