//! `isola template build|ls|rm`: the node's VM templates (`[factory] template`,
//! docs/fast-start.md).

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;
use clap::Subcommand;
use isola_config::{Config, HypervisorKind};
use isola_hypervisor::qemu::template::{TemplateInfo, TemplateStore};
use isola_hypervisor::qemu::QemuHypervisor;
use isola_sandbox::SandboxPaths;

use crate::report::Status;

#[derive(Subcommand)]
pub enum Template {
    /// Build the template pods start from with this configuration (pods build it on first use
    /// too); prints its key
    Build,
    /// List the templates on this node
    Ls,
    /// Remove templates: the keys given, every stale one (--stale) or all (--all)
    Rm {
        /// Template keys (as `isola template ls` shows them)
        keys: Vec<String>,
        /// Every template whose kernel, initrd, firmware or QEMU changed
        #[arg(long)]
        stale: bool,
        /// Every template
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(config: Option<&Path>, what: Template) -> anyhow::Result<bool> {
    let (cfg, _) = crate::load_config(config)?;
    let store = TemplateStore::new(cfg.template_dir());
    match what {
        Template::Build => {
            let t = vm(&cfg)
                .build_template(&store)
                .await
                .context("building the VM template")?;
            println!("{}", t.key);
            if !cfg.factory.template {
                eprintln!(
                    "note: [factory] template is false in this configuration: pods boot \
                     without it until it is set to true"
                );
            }
            Ok(true)
        }
        Template::Ls => {
            let mine = vm(&cfg).template_inputs().await.ok().map(|i| i.key());
            let list = store.list()?;
            print!("{}", table(&list, mine.as_deref(), SystemTime::now()));
            Ok(true)
        }
        Template::Rm { keys, stale, all } => {
            anyhow::ensure!(
                !keys.is_empty() || stale || all,
                "name the templates to remove, or use --stale or --all"
            );
            let list = store.list()?;
            if let Some(k) = keys
                .iter()
                .find(|k| !list.iter().any(|t| &t.paths.key == *k))
            {
                anyhow::bail!("no template {k} (see `isola template ls`)");
            }
            let mut removed = 0;
            for t in &list {
                let key = &t.paths.key;
                if all || (stale && !t.current) || keys.contains(key) {
                    store
                        .discard(key)
                        .with_context(|| format!("removing template {key}"))?;
                    removed += 1;
                }
            }
            println!("{removed} template(s) removed");
            Ok(true)
        }
    }
}

/// `isola check`'s "vm templates" line.
pub async fn check_line(cfg: &Config) -> (Status, String) {
    if !cfg.factory.template {
        return (
            Status::Ok,
            "off ([factory] template = false): every pod boots its VM".into(),
        );
    }
    if cfg.hypervisor.kind != HypervisorKind::Qemu {
        // On by default: not a problem, only not for this VMM.
        return (
            Status::Ok,
            format!(
                "on, for QEMU only: {} pods boot their VM",
                cfg.hypervisor.kind
            ),
        );
    }
    let store = TemplateStore::new(cfg.template_dir());
    let list = store.list().unwrap_or_default();
    let stale = list.iter().filter(|t| !t.current).count();
    let stale = if stale > 0 {
        format!("; {stale} stale (isola template rm --stale)")
    } else {
        String::new()
    };
    match vm(cfg).template_inputs().await {
        Ok(inputs) => {
            let key = inputs.key();
            match list.iter().find(|t| t.paths.key == key) {
                Some(t) => (
                    Status::Ok,
                    format!(
                        "on; template {key} ready ({} MiB of RAM) under {}{stale}",
                        t.ram_allocated >> 20,
                        store.root().display()
                    ),
                ),
                None => (
                    Status::Ok,
                    format!(
                        "on; template {key} is built by the first pod (or `isola template \
                         build`) under {}{stale}",
                        store.root().display()
                    ),
                ),
            }
        }
        Err(e) => (
            Status::Warn,
            format!("on, but no template can be made here, so pods boot as usual ({e})"),
        ),
    }
}

/// The VM a pod of this configuration gets (its template is the one pods look for).
fn vm(cfg: &Config) -> QemuHypervisor {
    let id = crate::throwaway_id("template", 0);
    let paths = SandboxPaths::new(&cfg.runtime.state_dir, &id);
    let (vm_cfg, _) = isola_sandbox::pod_vm_config(cfg, &id, &paths);
    QemuHypervisor::new(vm_cfg)
}

/// `isola template ls`'s table.
fn table(list: &[TemplateInfo], mine: Option<&str>, now: SystemTime) -> String {
    let mut out = format!(
        "{:<34} {:<8} {:>9} {:>8} {:>9}  USED\n",
        "KEY", "STATE", "RAM", "AGE", "LAST USE"
    );
    let ago = |t: Option<SystemTime>| {
        t.and_then(|m| now.duration_since(m).ok())
            .map_or("?".into(), |d| format!("{}s", d.as_secs()))
    };
    for t in list {
        let state = if t.current { "current" } else { "stale" };
        let age = ago(std::fs::metadata(&t.paths.inputs)
            .and_then(|m| m.modified())
            .ok());
        let used = if mine == Some(t.paths.key.as_str()) {
            "by this configuration"
        } else {
            "-"
        };
        out.push_str(&format!(
            "{:<34} {:<8} {:>6} MiB {:>8} {:>9}  {used}\n",
            t.paths.key,
            state,
            t.ram_allocated >> 20,
            age,
            ago(t.last_used)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_marks_stale_and_used_templates() {
        let tmp = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(tmp.path());
        let info = |key: &str, current: bool| TemplateInfo {
            paths: store.paths(key),
            inputs: None,
            ram_allocated: 60 << 20,
            current,
            last_used: Some(SystemTime::now() - std::time::Duration::from_secs(90)),
        };
        let t = table(
            &[info("aaa", true), info("bbb", false)],
            Some("aaa"),
            SystemTime::now(),
        );
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("KEY"));
        assert!(lines[1].contains("current") && lines[1].contains("60 MiB"));
        assert!(
            lines[0].contains("LAST USE") && lines[1].contains(" 90s "),
            "{t}"
        );
        assert!(lines[1].ends_with("by this configuration"), "{t}");
        assert!(lines[2].contains("stale") && lines[2].ends_with('-'), "{t}");
    }

    #[tokio::test]
    async fn the_check_line_is_ok_when_off_and_for_another_vmm() {
        let mut cfg = Config::default();
        assert!(cfg.factory.template, "on by default");
        cfg.factory.template = false;
        let (status, line) = check_line(&cfg).await;
        assert!(
            matches!(status, Status::Ok) && line.starts_with("off"),
            "{line}"
        );
        cfg.factory.template = true;
        cfg.hypervisor.kind = HypervisorKind::CloudHypervisor;
        let (status, line) = check_line(&cfg).await;
        assert!(matches!(status, Status::Ok), "{line}");
        assert!(
            line.contains("QEMU only") && line.contains("cloud-hypervisor"),
            "{line}"
        );
    }
}
