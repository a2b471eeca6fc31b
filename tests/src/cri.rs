//! A CRI client for tests: containerd's CRI API (`runtime.v1`, the `k8s-cri` crate over tonic)
//! on the Unix socket of a private [`Containerd`], with the CRI runtime handlers `isola`
//! (`io.containerd.isola.v2`, the shim from the target directory) and `runc`, the pause image
//! `localhost/isola/pause:latest` as sandbox image, and a CNI network of its own (bridge
//! `isola-cni0`, host-local IPAM on 10.89.0.0/24, state under the private directory).
//!
//! ```no_run
//! use isola_tests::cri::{ContainerOptions, CriEnv, PodOptions};
//! # async fn example() -> anyhow::Result<()> {
//! let cri = CriEnv::start().await?; // containerd + images (build/images/{busybox,pause}.tar)
//! let pod = cri.run_pod("web", "isola", PodOptions::default()).await?;
//! let cid = cri
//!     .create_start_container(&pod, "app", ContainerOptions::cmd(&["sh", "-c", "echo hi; sleep 1000"]))
//!     .await?;
//! let out = cri.exec_sync(&cid, &["hostname"], 30).await?;
//! assert_eq!(out.exit_code, 0, "{out:?}");
//! let ip = cri.pod_ip(&pod.id).await?; // from CNI, e.g. 10.89.0.2
//! cri.wait_log_contains(&cid, "hi", std::time::Duration::from_secs(10)).await?;
//! cri.stop_and_remove_pod(&pod.id).await?;
//! cri.assert_pod_gone(&pod.id).await; // no qemu, helper, state dir, mount or tap left
//! # Ok(()) }
//! ```
//!
//! Errors are `anyhow` errors; a CRI refusal keeps its [`tonic::Status`] inside
//! (`err.downcast_ref::<tonic::Status>()`). Every RPC has a deadline ([`RPC_TIMEOUT`]).
//! [`CriEnv::check`] turns an error into a panic that shows containerd's log: write the test
//! body as an `async fn body(cri: &CriEnv) -> Result<()>` and end with
//! `cri.check(body(&cri).await)`. Streaming Exec is [`CriEnv::exec_stream`]
//! ([`crate::cri_stream`]).
//!
//! Dropping a [`CriEnv`] (also when a test fails) stops and removes the pods still there through
//! CRI, so that CNI releases their network; [`CriEnv::start`] deletes the pod network namespaces
//! of test processes that died outright ([`crate::cri_leaks`]).
//!
//! Every [`CriEnv`] uses the same CNI bridge and subnet, so tests that run pods must run one at
//! a time: name them `vm_*` (they boot VMs) or `cri_*` (`.config/nextest.toml` serializes both).
//!
//! Start the [`CriEnv`] from the test's own thread (`#[tokio::test]`, either flavor): containerd
//! is stopped when the thread that started it ends.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, Device, DnsConfig, ExecSyncRequest, ImageSpec, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatus, PodSandboxStatusRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::{Containerd, TEST_IMAGE};
use crate::cri_engine::Engine;
pub use crate::cri_engine::CRI_NAMESPACE;
use crate::crio::Crio;
use crate::{repo_root, TestEnv};

/// The sandbox ("pause") image containerd's CRI plugin is configured with.
pub const PAUSE_IMAGE: &str = "localhost/isola/pause:latest";
/// The CRI runtime handler of isola.
pub const ISOLA: &str = "isola";
/// The CRI runtime handler of runc (baselines).
pub const RUNC: &str = "runc";
/// The CNI network's bridge on the host.
pub const CNI_BRIDGE: &str = "isola-cni0";
/// The CNI network's subnet.
pub const CNI_SUBNET: &str = "10.89.0.0/24";
/// The CNI network's gateway (the bridge's address on the host).
pub const CNI_GATEWAY: &str = "10.89.0.1";
/// The deadline of one CRI call (pods boot VMs under TCG here).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(180);

/// The CNI configuration list of the private containerd in `dir` (see the module docs).
pub fn cni_conflist(dir: &Path) -> String {
    let conflist = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "isola-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": CNI_SUBNET, "gateway": CNI_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.join("cni/ipam"),
                }
            },
            {"type": "loopback"}
        ]
    });
    serde_json::to_string_pretty(&conflist).expect("JSON")
}

/// Writes [`cni_conflist`] into `<dir>/cni/net.d/`.
pub fn write_cni_config(dir: &Path) -> std::io::Result<()> {
    let conf = dir.join("cni/net.d");
    std::fs::create_dir_all(&conf)?;
    std::fs::write(conf.join("10-isola-test.conflist"), cni_conflist(dir))
}

/// The pause image tarball: `$ISOLA_TEST_PAUSE_IMAGE`, else build/images/pause.tar.
pub fn pause_image_tar() -> PathBuf {
    let path = std::env::var_os("ISOLA_TEST_PAUSE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/images/pause.tar"));
    assert!(
        path.is_file(),
        "pause image {} is missing: run `make images` first (or set ISOLA_TEST_PAUSE_IMAGE)",
        path.display()
    );
    path
}

/// How to run a pod ([`CriEnv::run_pod`]).
#[derive(Debug, Clone, Default)]
pub struct PodOptions {
    /// Pod annotations (e.g. `io.isola.config.*`).
    pub annotations: HashMap<String, String>,
    /// The pod's hostname (default: the pod's name).
    pub hostname: Option<String>,
    /// `shareProcessNamespace`: one PID namespace for the whole pod.
    pub share_pid: bool,
    /// `hostNetwork`: the host's network namespace (isola refuses such pods).
    pub host_network: bool,
    /// Pod-level resources (containerd turns them into `sandbox-cpu-*`/`sandbox-memory`
    /// annotations where it supports them).
    pub resources: Option<LinuxContainerResources>,
    /// The pod's sysctls (`securityContext.sysctls`).
    pub sysctls: HashMap<String, String>,
    /// A privileged pod (needed for privileged containers).
    pub privileged: bool,
}

/// A pod [`CriEnv::run_pod`] started.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The pod sandbox id (also the pause container's id and isola's sandbox id).
    pub id: String,
    /// The runtime handler it runs with.
    pub handler: String,
    /// The configuration it was started with (CreateContainer needs it again).
    pub config: PodSandboxConfig,
}

/// A bind mount of a container ([`ContainerOptions::mounts`]).
#[derive(Debug, Clone)]
pub struct MountSpec {
    pub host_path: PathBuf,
    pub container_path: String,
    pub readonly: bool,
}

/// What to run in a container ([`CriEnv::create_start_container`]).
#[derive(Debug, Clone, Default)]
pub struct ContainerOptions {
    /// The command (the image's entrypoint is replaced).
    pub command: Vec<String>,
    /// The image (default: [`TEST_IMAGE`], busybox).
    pub image: Option<String>,
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<MountSpec>,
    pub annotations: HashMap<String, String>,
    pub resources: Option<LinuxContainerResources>,
    /// The container's security context (its namespace options are the harness's).
    pub security: LinuxContainerSecurityContext,
    /// Devices asked for (CRI `devices`: host path, container path, permissions).
    pub devices: Vec<Device>,
}

impl ContainerOptions {
    /// Runs `command` in the test image.
    pub fn cmd(command: &[&str]) -> ContainerOptions {
        ContainerOptions {
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Adds a bind mount of `host_path` at `container_path`.
    pub fn mount(
        mut self,
        host_path: impl Into<PathBuf>,
        container_path: &str,
        readonly: bool,
    ) -> Self {
        self.mounts.push(MountSpec {
            host_path: host_path.into(),
            container_path: container_path.into(),
            readonly,
        });
        self
    }
}

/// What [`CriEnv::exec_sync`] got back.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A private containerd (or CRI-O) with a CRI client; see the module docs.
pub struct CriEnv {
    /// The private CRI runtime (its log, state directory and leak checks).
    pub engine: Engine,
    client: RuntimeServiceClient<Channel>,
    unique: String,
    counter: AtomicU32,
    interfaces_before: BTreeSet<String>,
}

impl CriEnv {
    /// Starts a private containerd with the default test configuration, imports the test and
    /// pause images into the CRI namespace and connects.
    pub async fn start() -> Result<CriEnv> {
        CriEnv::start_with(None).await
    }

    /// [`CriEnv::start`] with the shims using `env`'s configuration.
    pub async fn start_with(env: Option<TestEnv>) -> Result<CriEnv> {
        // containerd is forked from a thread of its own (crate::supervisor), so which thread
        // starts it does not matter; the start blocks, so keep it off the async workers.
        CriEnv::start_engine(move || {
            Ok(Engine::Containerd(match env {
                Some(env) => Containerd::start_with(env),
                None => Containerd::start(),
            }))
        })
        .await
    }

    /// Starts a private CRI-O with isola's handler (as `isola install crio` writes it) and
    /// runc, imports the test and pause images and connects.
    pub async fn start_crio() -> Result<CriEnv> {
        CriEnv::start_engine(|| Crio::start().map(Engine::Crio)).await
    }

    async fn start_engine(start: impl FnOnce() -> Result<Engine>) -> Result<CriEnv> {
        // The runtime is forked from a thread of its own (crate::supervisor), so which thread
        // starts it does not matter; the start blocks, so keep it off the async workers.
        let start = move || {
            crate::cri_leaks::reap_stale_netns();
            let engine = start()?;
            for tar in [crate::containerd::test_image_tar(), pause_image_tar()] {
                engine.import_image(&tar)?;
            }
            Ok::<_, anyhow::Error>(engine)
        };
        let engine = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => start(),
            _ => tokio::task::block_in_place(start),
        }
        .context("starting the CRI runtime")?;
        let channel = connect(engine.socket()).await?;
        let unique = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos()
        );
        Ok(CriEnv {
            engine,
            client: RuntimeServiceClient::new(channel),
            unique,
            counter: AtomicU32::new(0),
            interfaces_before: crate::cri_leaks::host_interfaces(),
        })
    }

    /// The raw CRI runtime client, for calls this harness does not wrap.
    pub fn client(&self) -> RuntimeServiceClient<Channel> {
        self.client.clone()
    }

    /// RunPodSandbox: a pod `name` with runtime handler `handler`. Its containers' logs go to
    /// `<private dir>/pod-logs/<name>-<n>/<container name>.log` ([`CriEnv::container_log`]).
    pub async fn run_pod(&self, name: &str, handler: &str, opts: PodOptions) -> Result<Pod> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let log_dir = self
            .engine
            .dir()
            .join("pod-logs")
            .join(format!("{name}-{n}"));
        tokio::fs::create_dir_all(&log_dir)
            .await
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("{}-{n}-{name}", self.unique),
                namespace: "isola-test".into(),
                attempt: 0,
            }),
            hostname: opts.hostname.clone().unwrap_or_else(|| name.into()),
            log_directory: log_dir.to_string_lossy().into_owned(),
            dns_config: Some(DnsConfig {
                servers: vec![CNI_GATEWAY.into()],
                searches: vec!["isola.test".into()],
                options: vec!["ndots:2".into()],
            }),
            annotations: opts.annotations.clone(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: if opts.host_network {
                            NamespaceMode::Node as i32
                        } else {
                            NamespaceMode::Pod as i32
                        },
                        ..namespaces(opts.share_pid)
                    }),
                    privileged: opts.privileged,
                    ..Default::default()
                }),
                sysctls: opts.sysctls.clone(),
                resources: opts.resources.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let id = self
            .client
            .clone()
            .run_pod_sandbox(req)
            .await
            .map_err(|s| self.cri_error(s, format!("RunPodSandbox {name} ({handler})")))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod {
            id,
            handler: handler.into(),
            config,
        })
    }

    /// CreateContainer + StartContainer in `pod`; the log goes to `<pod log dir>/<name>.log`.
    pub async fn create_start_container(
        &self,
        pod: &Pod,
        name: &str,
        opts: ContainerOptions,
    ) -> Result<String> {
        let id = self.create_container(pod, name, opts).await?;
        self.client
            .clone()
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|s| self.cri_error(s, format!("StartContainer {name} in pod {}", pod.id)))?;
        Ok(id)
    }

    /// CreateContainer only (see [`CriEnv::create_start_container`]).
    pub async fn create_container(
        &self,
        pod: &Pod,
        name: &str,
        opts: ContainerOptions,
    ) -> Result<String> {
        let share_pid = pod
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.pid == NamespaceMode::Pod as i32);
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            // As kubelet 1.29+ sends it (CRI-O verifies signatures against the name the user
            // wrote).
            image: Some(ImageSpec {
                image: opts.image.clone().unwrap_or_else(|| TEST_IMAGE.into()),
                user_specified_image: opts.image.clone().unwrap_or_else(|| TEST_IMAGE.into()),
                ..Default::default()
            }),
            command: opts.command.clone(),
            envs: opts
                .envs
                .iter()
                .map(|(key, value)| KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            mounts: opts
                .mounts
                .iter()
                .map(|m| Mount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.to_string_lossy().into_owned(),
                    readonly: m.readonly,
                    ..Default::default()
                })
                .collect(),
            annotations: opts.annotations.clone(),
            devices: opts.devices.clone(),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                resources: opts.resources.clone(),
                security_context: Some(crate::cri_engine::as_kubelet_sends(
                    LinuxContainerSecurityContext {
                        namespace_options: Some(namespaces(share_pid)),
                        ..opts.security.clone()
                    },
                )),
            }),
            ..Default::default()
        };
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        Ok(self
            .client
            .clone()
            .create_container(req)
            .await
            .map_err(|s| self.cri_error(s, format!("CreateContainer {name} in pod {}", pod.id)))?
            .into_inner()
            .container_id)
    }

    /// ExecSync `cmd` in container `cid` with a timeout in seconds.
    pub async fn exec_sync(&self, cid: &str, cmd: &[&str], timeout_s: i64) -> Result<ExecOutput> {
        let req = ExecSyncRequest {
            container_id: cid.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        };
        let out = self
            .client
            .clone()
            .exec_sync(req)
            .await
            .map_err(|s| self.cri_error(s, format!("ExecSync {cmd:?} in {cid}")))?
            .into_inner();
        Ok(ExecOutput {
            exit_code: out.exit_code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// [`CriEnv::exec_sync`] that must exit 0; returns its stdout.
    pub async fn exec_ok(&self, cid: &str, cmd: &[&str]) -> Result<String> {
        let out = self.exec_sync(cid, cmd, 60).await?;
        if out.exit_code != 0 {
            bail!("{cmd:?} in {cid} exited {}: {out:?}", out.exit_code);
        }
        Ok(out.stdout)
    }

    /// PodSandboxStatus (verbose: `info` holds containerd's JSON with the runtime spec).
    pub async fn pod_status(
        &self,
        pod_id: &str,
    ) -> Result<(PodSandboxStatus, HashMap<String, String>)> {
        let resp = self
            .client
            .clone()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.into(),
                verbose: true,
            })
            .await
            .map_err(|s| self.cri_error(s, format!("PodSandboxStatus {pod_id}")))?
            .into_inner();
        let status = resp
            .status
            .ok_or_else(|| anyhow!("PodSandboxStatus {pod_id}: no status"))?;
        Ok((status, resp.info))
    }

    /// The pod's IP address (from CNI).
    pub async fn pod_ip(&self, pod_id: &str) -> Result<String> {
        let (status, _) = self.pod_status(pod_id).await?;
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        if ip.is_empty() {
            bail!("pod {pod_id} has no IP address");
        }
        Ok(ip)
    }

    /// The host path of the pod's network namespace (`/var/run/netns/cni-...`), from the pause
    /// container's runtime spec.
    pub async fn pod_netns(&self, pod_id: &str) -> Result<PathBuf> {
        let (_, info) = self.pod_status(pod_id).await?;
        let raw = info
            .get("info")
            .ok_or_else(|| anyhow!("PodSandboxStatus {pod_id}: no verbose info"))?;
        let v: serde_json::Value = serde_json::from_str(raw).context("verbose info")?;
        v["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|ns| ns["type"] == "network")
            .and_then(|ns| ns["path"].as_str())
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("pod {pod_id}: no network namespace path in {raw}"))
    }

    /// ContainerStatus of `cid`.
    pub async fn container_status(&self, cid: &str) -> Result<ContainerStatus> {
        self.client
            .clone()
            .container_status(ContainerStatusRequest {
                container_id: cid.into(),
                verbose: false,
            })
            .await
            .map_err(|s| self.cri_error(s, format!("ContainerStatus {cid}")))?
            .into_inner()
            .status
            .ok_or_else(|| anyhow!("ContainerStatus {cid}: no status"))
    }

    /// Waits until container `cid` has exited (CONTAINER_EXITED); returns its status.
    pub async fn wait_container_exited(
        &self,
        cid: &str,
        timeout: Duration,
    ) -> Result<ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(cid).await?;
            if status.state == ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("container {cid} has not exited after {timeout:?}: {status:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// StopContainer with a grace period in seconds, then RemoveContainer.
    pub async fn stop_and_remove_container(&self, cid: &str, timeout_s: i64) -> Result<()> {
        let mut client = self.client.clone();
        client
            .stop_container(StopContainerRequest {
                container_id: cid.into(),
                timeout: timeout_s,
            })
            .await
            .map_err(|s| self.cri_error(s, format!("StopContainer {cid}")))?;
        client
            .remove_container(RemoveContainerRequest {
                container_id: cid.into(),
            })
            .await
            .map_err(|s| self.cri_error(s, format!("RemoveContainer {cid}")))?;
        Ok(())
    }

    /// StopPodSandbox then RemovePodSandbox.
    pub async fn stop_and_remove_pod(&self, pod_id: &str) -> Result<()> {
        let mut client = self.client.clone();
        client
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            })
            .await
            .map_err(|s| self.cri_error(s, format!("StopPodSandbox {pod_id}")))?;
        client
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            })
            .await
            .map_err(|s| self.cri_error(s, format!("RemovePodSandbox {pod_id}")))?;
        Ok(())
    }

    /// The messages of container `cid`'s CRI log file, one per line, stdout and stderr mixed
    /// in the order containerd wrote them (partial lines joined).
    pub async fn container_log(&self, cid: &str) -> Result<String> {
        Ok(parse_cri_log(&self.container_log_raw(cid).await?)
            .into_iter()
            .map(|(_, text)| text)
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// The log lines of one stream ("stdout" or "stderr").
    pub async fn container_log_stream(&self, cid: &str, stream: &str) -> Result<Vec<String>> {
        Ok(parse_cri_log(&self.container_log_raw(cid).await?)
            .into_iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, text)| text)
            .collect())
    }

    /// The CRI log file of `cid` as containerd wrote it.
    pub async fn container_log_raw(&self, cid: &str) -> Result<String> {
        let path = self.container_status(cid).await?.log_path;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e).with_context(|| format!("reading {path}")),
        }
    }

    /// Waits until `cid`'s log contains `needle`; the error shows the log.
    pub async fn wait_log_contains(
        &self,
        cid: &str,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.container_log(cid).await?;
            if log.contains(needle) {
                return Ok(log);
            }
            if Instant::now() >= deadline {
                bail!("the log of {cid} has no {needle:?} after {timeout:?}:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// QEMU processes of pod `pod_id` (their command line names its state directory).
    pub fn qemu_processes(&self, pod_id: &str) -> Vec<u32> {
        crate::cri_leaks::pod_processes(pod_id)
            .into_iter()
            .filter(|(pid, _)| crate::comm(*pid).starts_with("qemu"))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// What pod `pod_id` left on the host (empty when nothing): see [`crate::cri_leaks`].
    pub async fn pod_leftovers(&self, pod_id: &str) -> Vec<String> {
        let dir = self.engine.dir().to_path_buf();
        let state = self.engine.state_dir().to_path_buf();
        let containerd = self.engine.pid();
        let pod = pod_id.to_string();
        let before = self.interfaces_before.clone();
        tokio::task::spawn_blocking(move || {
            crate::cri_leaks::pod_leftovers(&dir, &state, &pod, containerd, &before)
        })
        .await
        .unwrap_or_else(|e| vec![format!("the leak check panicked: {e}")])
    }

    /// Waits up to 15 s for [`CriEnv::pod_leftovers`] to be empty; panics naming what is left.
    pub async fn assert_pod_gone(&self, pod_id: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = self.pod_leftovers(pod_id).await;
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "pod {pod_id} left behind:\n  {}\n{}'s log:\n{}",
                    left.join("\n  "),
                    self.engine.name(),
                    self.engine.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn cri_error(&self, status: tonic::Status, what: String) -> anyhow::Error {
        let detail = format!("{what}: {:?}: {}", status.code(), status.message());
        anyhow::Error::new(status).context(detail)
    }

    /// The value of `r`, or a panic naming the error with containerd's log (for test bodies
    /// written with `?`: `cri.check(body(&cri).await)`).
    pub fn check<T>(&self, r: Result<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!(
                "{e:#}\n{}'s log:\n{}",
                self.engine.name(),
                self.engine.log_tail(60)
            ),
        }
    }
}

/// A CRI channel on a runtime's socket (containerd's or CRI-O's).
pub async fn connect(socket: PathBuf) -> Result<Channel> {
    Endpoint::try_from("http://[::]:50051")?
        .timeout(RPC_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .context("connecting to the CRI API")
}

/// Namespace options of a pod or container: network and IPC per pod, PID per container unless
/// `share_pid`.
fn namespaces(share_pid: bool) -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: if share_pid {
            NamespaceMode::Pod as i32
        } else {
            NamespaceMode::Container as i32
        },
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The CRI log format: `<RFC3339 time> <stream> <P|F> <text>` per line; `P` lines are parts of a
/// line continued by the next one of the same stream. Returns (stream, full line) pairs.
pub fn parse_cri_log(raw: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut partial: HashMap<String, String> = HashMap::new();
    for line in raw.lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(_time), Some(stream), Some(tag)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let text = f.next().unwrap_or("");
        let acc = partial.entry(stream.to_string()).or_default();
        acc.push_str(text);
        if tag != "P" {
            out.push((stream.to_string(), std::mem::take(acc)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_are_parsed_and_partials_joined() {
        let raw = "2024-01-01T00:00:00.1Z stdout F hello\n\
                   2024-01-01T00:00:00.2Z stderr P par\n\
                   2024-01-01T00:00:00.3Z stdout F world two\n\
                   2024-01-01T00:00:00.4Z stderr F tial\n\
                   garbage\n";
        assert_eq!(
            parse_cri_log(raw),
            vec![
                ("stdout".into(), "hello".into()),
                ("stdout".into(), "world two".into()),
                ("stderr".into(), "partial".into()),
            ]
        );
    }

    #[test]
    fn the_cni_config_is_a_private_bridge_network() {
        let v: serde_json::Value =
            serde_json::from_str(&cni_conflist(Path::new("/tmp/isola-c.x"))).unwrap();
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], CNI_BRIDGE);
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], CNI_SUBNET);
        assert_eq!(bridge["ipam"]["dataDir"], "/tmp/isola-c.x/cni/ipam");
        assert_eq!(v["plugins"][1]["type"], "loopback");
    }

    #[test]
    fn pods_share_network_and_ipc_and_pid_only_when_asked() {
        let n = namespaces(false);
        assert_eq!(n.network, NamespaceMode::Pod as i32);
        assert_eq!(n.ipc, NamespaceMode::Pod as i32);
        assert_eq!(n.pid, NamespaceMode::Container as i32);
        assert_eq!(namespaces(true).pid, NamespaceMode::Pod as i32);
    }
}
