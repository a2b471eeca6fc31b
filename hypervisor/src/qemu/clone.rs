//! Building a VM template and starting a pod as a clone of it.
//!
//! **Build** (once per [`TemplateInputs`]): QEMU boots the template command line
//! ([`Boot::Template`]: RAM in a shared file, no vsock/virtio-fs/NIC, empty root ports) until
//! the agent writes [`CONSOLE_SERVING_LINE`] on the console (it serves, its boot work is
//! done), then the VM is paused and migrated to a file with `x-ignore-shared`: the stream
//! holds the devices and CPU (~130 KiB), the RAM stays in the RAM file.
//!
//! **Clone**: the template's RAM file is copied, holes kept ([`template::copy_sparse`]), into a
//! new memfd; that copy is the clone's own shared guest RAM, which its vhost-user daemons map
//! like a cold boot's memfd. So no daemon ever maps the template, and nothing one
//! clone writes reaches another (kata-containers#1091's corruption cannot happen). QEMU starts
//! with [`Boot::Restore`], reads the stream, gets its devices plugged
//! ([`clone_args::hotplugged`]) and runs. The agent's readiness announcement then arrives over
//! the freshly plugged vsock as after a boot.
//!
//! Anything wrong on the way (no template and another process building it, a damaged one, a
//! failed restore) boots the pod cold, with a warning: a template never fails a pod. A damaged
//! template and one a restore failed from are removed, so the next pod rebuilds it; so is one
//! whose clone's agent never answers (the sandbox crate boots that pod, on the same taps).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isola_agent_proto::CONSOLE_SERVING_LINE;
use nix::sys::memfd::{memfd_create, MFdFlags};

use super::args::{self, Boot, QemuPlan};
use super::clone_args;
use super::netdev::NetFds;
use super::qmp::QmpClient;
use super::startup;
use super::template::{self, FileId, TemplateError, TemplateInputs, TemplatePaths, TemplateStore};
use crate::lifecycle::Running;
use crate::vmm::VmmProcess;
use crate::Accelerator;

/// How long a template VM may take to boot to its agent.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(60);

/// How long reading a clone's stream may take.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long saving a template's stream may take.
const SAVE_TIMEOUT: Duration = Duration::from_secs(30);

/// The file names that stand for the store's paths in a template's recorded arguments.
const RAM_NAME: &str = "ram";
const QMP_NAME: &str = "qmp.sock";

/// `plan` as the template VM built in `dir`: its own name, its RAM file and QMP socket in
/// `dir`, no NIC.
fn as_template(plan: &QemuPlan, dir: &Path) -> QemuPlan {
    let mut p = plan.clone();
    p.name = "isola-template".into();
    p.qmp_socket = dir.join(QMP_NAME);
    p.boot = Boot::Template {
        ram: dir.join(RAM_NAME),
    };
    p.net.clear();
    p
}

/// `plan` as a template's recorded arguments: [`as_template`] with the bare file names for
/// the store's paths, without the things a template does not depend on (the TSC hint: the
/// template's measurement is the clones').
fn normalized(plan: &QemuPlan) -> QemuPlan {
    let mut p = as_template(plan, Path::new(""));
    p.tsc_khz = None;
    p
}

/// Finds `name` on `$PATH` when it has no slash.
fn resolve_binary(name: &Path) -> PathBuf {
    if name.components().count() > 1 {
        return name.to_owned();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.to_owned())
}

/// What a template for `plan` (any [`Boot`]) run by `qemu` is built from. Blocking (stats).
pub fn inputs(plan: &QemuPlan, qemu: &Path) -> Result<TemplateInputs, TemplateError> {
    let mut files = vec![FileId::of(&resolve_binary(qemu))?];
    files.push(FileId::of(&plan.kernel)?);
    files.push(FileId::of(&plan.initrd)?);
    if let Some(fw) = &plan.firmware {
        files.push(FileId::of(fw)?);
    }
    Ok(TemplateInputs {
        args: args::build(&normalized(plan)),
        files,
    })
}

/// Builds the template of `plan` (its TSC hint is kept for the clones) into `store`, unless
/// another process is building it ([`TemplateError::Busy`]) or it appeared meanwhile; then
/// keeps at most `max` templates in the store ([`TemplateStore::evict`]).
pub async fn build(
    store: &TemplateStore,
    plan: &QemuPlan,
    qemu: &Path,
    max: usize,
) -> Result<TemplatePaths, TemplateError> {
    let inputs = {
        let (plan, qemu) = (plan.clone(), qemu.to_owned());
        blocking(move || inputs(&plan, &qemu)).await?
    };
    let key = inputs.key();
    let lock = {
        let (store, key) = (store.clone(), key.clone());
        blocking(move || store.lock(&key)).await?
    };
    let ram_bytes = u64::from(plan.memory_mib) << 20;
    let prepared = {
        let (store, inputs, key) = (store.clone(), inputs.clone(), key.clone());
        blocking(move || match store.find(&inputs, ram_bytes) {
            Ok(Some(found)) => Ok(Err(found)),
            _ => store.build_dir(&key).map(Ok),
        })
        .await?
    };
    let dir = match prepared {
        Err(found) => return Ok(found),
        Ok(dir) => dir,
    };
    let started = Instant::now();
    let built = save(&dir, plan, qemu, &key).await;
    let published = match built {
        Ok(()) => {
            let (store, dir, inputs) = (store.clone(), dir.clone(), inputs.clone());
            blocking(move || {
                // Pages of zeros cost a clone nothing once they are holes.
                let freed = template::punch_zero_pages(&dir.join("ram"))?;
                store.publish(&dir, &inputs)?;
                Ok(freed)
            })
            .await
        }
        Err(e) => Err(e),
    };
    drop(lock);
    let freed = match published {
        Ok(freed) => freed,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
    };
    tracing::info!(template = %key, elapsed_ms = started.elapsed().as_millis() as u64, zero_pages_freed_mib = freed >> 20, "VM template built");
    let evicted = {
        let (store, key) = (store.clone(), key.clone());
        blocking(move || store.evict(max, &key)).await
    };
    match evicted {
        Ok(keys) if keys.is_empty() => {}
        Ok(keys) => {
            tracing::info!(
                ?keys,
                max,
                "VM templates removed, least recently used first (factory.max_templates)"
            )
        }
        Err(e) => tracing::warn!(error = %e, "could not trim the VM template store"),
    }
    Ok(store.paths(&key))
}

/// Boots the template VM in `dir` and saves it there (`ram`, `state`).
async fn save(dir: &Path, plan: &QemuPlan, qemu: &Path, key: &str) -> Result<(), TemplateError> {
    let fail = |why: String| TemplateError::Build {
        key: key.to_owned(),
        why,
    };
    let p = as_template(plan, dir);
    let console = dir.join("console.log");
    let vmm = VmmProcess::spawn(
        "qemu",
        qemu,
        &args::build(&p),
        &dir.join("qemu.log"),
        &console,
        "template",
        &[],
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    let saved = async {
        let mut qmp = startup::connect_qmp(&vmm, &p.qmp_socket, BUILD_TIMEOUT, "template")
            .await
            .map_err(|e| fail(e.to_string()))?;
        wait_console(&vmm, &console, BUILD_TIMEOUT)
            .await
            .map_err(fail)?;
        let state = dir.join("state");
        qmp.migrate_ignore_shared()
            .await
            .map_err(|e| fail(e.to_string()))?;
        qmp.stop().await.map_err(|e| fail(e.to_string()))?;
        qmp.migrate(&format!("exec:cat > {}", shell_quote(&state)))
            .await
            .map_err(|e| fail(e.to_string()))?;
        wait_migration(&mut qmp, SAVE_TIMEOUT).await.map_err(fail)?;
        let _ = qmp.quit().await;
        Ok(())
    }
    .await;
    let mut vmm = vmm;
    if vmm.wait_exit(Duration::from_secs(5)).await.is_none() {
        let _ = vmm.kill(Duration::from_secs(5)).await;
    }
    let _ = tokio::fs::remove_file(&p.qmp_socket).await;
    // The build directory goes with a failure: keep the last words of the guest and QEMU.
    match saved {
        Err(TemplateError::Build { key, why }) => Err(TemplateError::Build {
            key,
            why: format!(
                "{why}\nthe template VM's console ends with:\n{}\nQEMU's stderr ends with:\n{}",
                crate::process::tail_file(&console).await,
                crate::process::tail_file(&dir.join("qemu.log")).await
            ),
        }),
        other => other,
    }
}

/// Waits until the template VM's console shows [`CONSOLE_SERVING_LINE`].
async fn wait_console(vmm: &VmmProcess, console: &Path, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        // The console log is size-capped by its pump; the template VM is our own kernel and
        // agent with no workload, so what it prints is trusted here.
        if let Ok(text) = tokio::fs::read(console).await {
            if String::from_utf8_lossy(&text).contains(CONSOLE_SERVING_LINE) {
                return Ok(());
            }
        }
        if let Some(exit) = vmm.exited() {
            return Err(format!("QEMU exited ({exit}) before the agent served"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the agent did not serve within {} s",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `query-migrate` until the migration completed; its failure otherwise.
async fn wait_migration(qmp: &mut QmpClient, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, desc) = qmp.migration_status().await.map_err(|e| e.to_string())?;
        match status.as_str() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                return Err(format!(
                    "migration {status}: {}",
                    desc.unwrap_or_else(|| "QEMU gave no reason".into())
                ))
            }
            _ if Instant::now() > deadline => {
                return Err(format!(
                    "migration still {status} after {} s",
                    timeout.as_secs()
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Quotes a path for the shell QEMU runs an `exec:` migration URI with.
fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Reads a clone's stream from `template` into the QEMU on `qmp` (started with
/// [`Boot::Restore`]), plugs `plan`'s devices and lets it run.
pub async fn restore(
    qmp: &mut QmpClient,
    template: &TemplatePaths,
    plan: &QemuPlan,
) -> Result<(), TemplateError> {
    let fail = |why: String| TemplateError::Restore {
        key: template.key.clone(),
        why,
    };
    qmp.migrate_ignore_shared()
        .await
        .map_err(|e| fail(e.to_string()))?;
    qmp.migrate_incoming(&format!("exec:cat {}", shell_quote(&template.state)))
        .await
        .map_err(|e| fail(e.to_string()))?;
    wait_migration(qmp, RESTORE_TIMEOUT).await.map_err(fail)?;
    for device in clone_args::hotplugged(plan) {
        qmp.device_add(device.clone())
            .await
            .map_err(|e| fail(format!("plugging {device}: {e}")))?;
    }
    qmp.cont().await.map_err(|e| fail(e.to_string()))
}

/// Removes template `key` from `store` under its lock, unless a build holds it (see
/// [`crate::forget_template`]); errors are logged.
pub(crate) async fn forget(store: &TemplateStore, key: &str) {
    let (store, k) = (store.clone(), key.to_owned());
    match blocking(move || store.discard(&k)).await {
        Ok(()) => tracing::warn!(
            template = key,
            "VM template removed: the next pod rebuilds it"
        ),
        Err(TemplateError::Busy(_)) => {}
        Err(e) => tracing::warn!(template = key, error = %e, "could not remove the VM template"),
    }
}

/// Kills what a failed clone attempt started, so that a cold boot can start afresh (a
/// vhost-user daemon serves one VMM for its life).
pub(super) async fn discard(run: &mut Running) {
    if let Some(mut vmm) = run.vmm.take() {
        let _ = vmm.kill(Duration::from_secs(5)).await;
    }
    let stops = run
        .daemons
        .drain(..)
        .map(|d| d.stop(Duration::from_secs(2)));
    futures::future::join_all(stops).await;
}

impl super::QemuHypervisor {
    /// Starts this VM as a clone of its template, when templates are on and this VM can be
    /// one (building the template on first use). None: boot cold; why was logged, and if a
    /// clone's QEMU was spawned it is still in `run` for the caller to discard.
    pub(super) async fn start_clone(
        &self,
        run: &mut Running,
        accelerator: Accelerator,
        tsc_khz: Option<u32>,
        net: &NetFds,
    ) -> Option<QmpClient> {
        let root = self.cfg.templates.as_ref()?;
        let id = self.id();
        let mut plan = self.plan(accelerator, tsc_khz, super::cid_candidate(id, 0), net);
        if let Some(why) = clone_args::unsupported(&plan) {
            tracing::info!(sandbox = %id, %why, "this VM cannot start from a template: booting it");
            return None;
        }
        let template = self.template_for(&TemplateStore::new(root), &plan).await?;
        let started = Instant::now();
        let cloned = async {
            // Dropped when this returns: QEMU has the memfd mapped by then, and its daemons
            // have it from QEMU.
            let ram = copy_ram(&template).await?;
            plan.boot = Boot::Restore {
                ram: PathBuf::from(format!("/proc/self/fd/{}", ram.as_raw_fd())),
            };
            let mut client = self
                .start_vmm(
                    run,
                    accelerator,
                    tsc_khz,
                    net,
                    &plan.boot,
                    Some(ram.as_raw_fd()),
                )
                .await
                .map_err(|e| TemplateError::Restore {
                    key: template.key.clone(),
                    why: e.to_string(),
                })?;
            restore(&mut client, &template, &plan).await?;
            Ok::<_, TemplateError>(client)
        };
        match cloned.await {
            Ok(client) => {
                tracing::info!(sandbox = %id, template = %template.key, elapsed_ms = started.elapsed().as_millis() as u64, "VM restored from its template");
                self.core.set_template(template.key.clone());
                Some(client)
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "starting from the template failed: booting the VM instead");
                forget(&TemplateStore::new(root), &template.key).await;
                None
            }
        }
    }

    /// The template for `plan`: found, or built now unless another process builds it.
    async fn template_for(&self, store: &TemplateStore, plan: &QemuPlan) -> Option<TemplatePaths> {
        let id = self.id();
        let ram_bytes = u64::from(plan.memory_mib) << 20;
        let found = {
            let (store, plan, qemu) = (store.clone(), plan.clone(), self.cfg.qemu_path.clone());
            blocking(move || {
                let inputs = inputs(&plan, &qemu)?;
                let found = store.find(&inputs, ram_bytes);
                if let Ok(Some(t)) = &found {
                    store.touch(&t.key);
                }
                Ok((inputs.key(), found))
            })
            .await
        };
        match found {
            Ok((_, Ok(Some(t)))) => Some(t),
            Ok((_, Ok(None))) => {
                match build(store, plan, &self.cfg.qemu_path, self.cfg.max_templates).await {
                    Ok(t) => Some(t),
                    Err(TemplateError::Busy(key)) => {
                        tracing::info!(sandbox = %id, template = %key, "another process is building the VM template: booting this VM");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %id, error = %e, "building the VM template failed: booting this VM");
                        None
                    }
                }
            }
            Ok((key, Err(e))) => {
                tracing::warn!(sandbox = %id, error = %e, "booting this VM");
                forget(store, &key).await;
                None
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "cannot look for a VM template: booting this VM");
                None
            }
        }
    }
}

impl super::QemuHypervisor {
    /// This VM's plan as its template has it (no NIC), for `isola template` and `isola check`.
    async fn template_plan(&self) -> Result<QemuPlan, TemplateError> {
        let (accelerator, _) = crate::accel::resolve(self.cfg.accelerator)
            .await
            .map_err(|e| TemplateError::Build {
                key: String::new(),
                why: e.to_string(),
            })?;
        let tsc_khz = match accelerator {
            Accelerator::Tcg => tokio::task::spawn_blocking(crate::tsc::host_tsc_khz)
                .await
                .ok()
                .flatten(),
            Accelerator::Kvm => None,
        };
        let net = NetFds::default();
        Ok(self.plan(
            accelerator,
            tsc_khz,
            super::cid_candidate(self.id(), 0),
            &net,
        ))
    }

    /// What this VM's template is built from ([`TemplateInputs::key`] names it).
    pub async fn template_inputs(&self) -> Result<TemplateInputs, TemplateError> {
        let plan = self.template_plan().await?;
        let qemu = self.cfg.qemu_path.clone();
        blocking(move || inputs(&plan, &qemu)).await
    }

    /// Builds this VM's template into `store` now (or finds it there).
    pub async fn build_template(
        &self,
        store: &TemplateStore,
    ) -> Result<TemplatePaths, TemplateError> {
        let plan = self.template_plan().await?;
        if let Some(why) = clone_args::unsupported(&plan) {
            return Err(TemplateError::Build {
                key: String::new(),
                why: format!("this configuration cannot use templates: {why}"),
            });
        }
        build(store, &plan, &self.cfg.qemu_path, self.cfg.max_templates).await
    }
}

/// Runs blocking store work off the executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TemplateError> + Send + 'static,
) -> Result<T, TemplateError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(TemplateError::Build {
            key: String::new(),
            why: format!("a blocking task failed: {e}"),
        })
    })
}

/// A new memfd holding a copy of the template's RAM: the clone's own guest RAM, which QEMU
/// opens as `/proc/self/fd/<n>` (it inherits the descriptor). A memfd like a booted VM's
/// `memory-backend-memfd`: not a file in the state directory, whose filesystem may be a
/// size-limited tmpfs (`/run`) or a disk.
pub async fn copy_ram(template: &TemplatePaths) -> Result<OwnedFd, TemplateError> {
    let src = template.ram.clone();
    blocking(move || {
        let memfd = memfd_create(c"isola-clone-ram", MFdFlags::MFD_CLOEXEC).map_err(|e| {
            TemplateError::Restore {
                key: String::new(),
                why: format!("creating a memfd for the clone's RAM: {e}"),
            }
        })?;
        let file = std::fs::File::from(memfd);
        template::copy_sparse(&src, &file)?;
        Ok(OwnedFd::from(file))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::args::tests::plan;
    use super::*;

    #[test]
    fn the_inputs_ignore_what_differs_between_pods() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = plan();
        for f in ["qemu", "vmlinux", "initrd"] {
            std::fs::write(tmp.path().join(f), f).unwrap();
        }
        p.kernel = tmp.path().join("vmlinux");
        p.initrd = tmp.path().join("initrd");
        p.firmware = None;
        let qemu = tmp.path().join("qemu");
        let a = inputs(&p, &qemu).unwrap();
        let mut q = p.clone();
        q.name = "isola-other-pod".into();
        q.qmp_socket = "/elsewhere/qmp.sock".into();
        q.tsc_khz = Some(2_400_000);
        q.boot = Boot::Restore {
            ram: "/vm/x/ram".into(),
        };
        assert_eq!(inputs(&q, &qemu).unwrap().key(), a.key());
        q.memory_mib = 1024;
        assert_ne!(
            inputs(&q, &qemu).unwrap().key(),
            a.key(),
            "the VM shape counts"
        );
        let mut k = p.clone();
        k.kernel_params = "agent.log=debug other=1".into();
        assert_ne!(
            inputs(&k, &qemu).unwrap().key(),
            a.key(),
            "kernel parameters count"
        );
        assert_eq!(a.files.len(), 3);
        assert!(a.args.contains(&"isola-template".to_string()));
    }

    #[tokio::test]
    async fn a_failed_build_says_why_and_leaves_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let mut p = plan();
        for f in ["vmlinux", "initrd"] {
            std::fs::write(tmp.path().join(f), f).unwrap();
        }
        p.kernel = tmp.path().join("vmlinux");
        p.initrd = tmp.path().join("initrd");
        p.firmware = None;
        let qemu = tmp.path().join("qemu");
        std::fs::write(
            &qemu,
            "#!/bin/sh\necho 'qemu: no such machine' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = TemplateStore::new(tmp.path().join("templates"));
        let e = build(&store, &p, &qemu, 8).await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, TemplateError::Build { .. }), "{msg}");
        assert!(
            msg.contains("qemu: no such machine"),
            "QEMU's words are kept: {msg}"
        );
        let left: Vec<_> = std::fs::read_dir(store.root())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let key = inputs(&p, &qemu).unwrap().key();
        assert!(store.lock(&key).is_ok(), "the build lock was released");
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote(Path::new("/a b/c")), "'/a b/c'");
        assert_eq!(shell_quote(Path::new("/a'b")), r"'/a'\''b'");
    }
}
