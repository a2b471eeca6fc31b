//! A single-node Kubernetes 1.32 cluster for tests: etcd, kube-apiserver with a throwaway CA
//! ([`pki`]), controller-manager, scheduler and a kubelet on a private containerd or CRI-O
//! (with isola's handler registered as a user would, and CNI networking), all under one
//! temporary directory (`/tmp/ic.XXXXXX`), on ports picked free on the node's own address.
//!
//! Everything it starts mentions that directory, dies with the test process (parent-death
//! signal) and is stopped by [`Cluster`]'s drop, also when a test fails; what kubelet changes on
//! the host outside it (sysctls, iptables chains, fixed paths, the node link) is put back
//! ([`host`]). Binaries: `build/k8s/bin` (`make k8s`, from ../shared/k8s) and Debian's etcd.
//! A cluster starts in seconds: tests share one per runtime (one test function each).
//!
//! Two things make the test node behave like a real one for what runs on it:
//! - the `kubernetes` Service (10.96.0.1:443) reaches the apiserver from pods and from the host
//!   as kube-proxy would arrange it ([`service`]): in-cluster clients work;
//! - the container runtime is supervised as systemd would run it (`Restart=always`,
//!   [`crate::supervisor`]), its pid in `<cluster dir>/run/containerd.pid` or
//!   `<cluster dir>/run/crio.pid` ([`Cluster::runtime_pidfile`]): a privileged hostPID pod
//!   restarts it with `kill -TERM $(cat <pidfile>)`, and it comes back on the same
//!   configuration, state and sockets.

pub mod checks;
pub mod deploy;
mod host;
pub mod pki;
mod procs;
mod service;
pub mod workload;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::containerd::{cleanup_dir, describe, reap_stale, DIR_PREFIX, OWNER_FILE};
use crate::cri_engine::Engine;
use crate::ctr_child::run_with_deadline;
use procs::Procs;

/// Which CRI runtime the kubelet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    Crio,
}

/// The node's name and address (on an `ifb` link of its own).
pub const NODE: &str = "isola-node";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 255, 1);
const NODE_LINK: &str = "isola-k8s0";
const SERVICE_RANGE: &str = "10.96.0.0/24";
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// How long a cluster may take to come up (TCG host, two cores).
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// One node per host at a time: the node link, kubelet's fixed paths, chains and sysctls are
/// the host's. Test binaries run in parallel; a second cluster waits for the first.
const NODE_LOCK: &str = "/tmp/isola-test-k8s-node.lock";

/// The directory, in the cluster's, of the runtime's pidfile.
const RUN_DIR: &str = "run";

/// A running single-node cluster.
pub struct Cluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    procs: Procs,
    host: Option<host::HostState>,
    /// The node's CRI runtime (dropped after the kubelet).
    pub engine: Option<Engine>,
    /// The node's CRI runtime kind.
    pub runtime: Runtime,
    /// Held while the cluster exists (released last).
    _node_lock: nix::fcntl::Flock<std::fs::File>,
}

/// A free TCP port on the node address (bound and released: good enough for one test host).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind((NODE_IP, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Takes the host's node lock, waiting while another cluster (a parallel test binary, or
/// `make k8s-demo`) has it.
fn lock_node() -> Result<nix::fcntl::Flock<std::fs::File>> {
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(NODE_LOCK)
            .with_context(|| format!("opening {NODE_LOCK}"))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err((_, e)) => bail!(
                "{NODE_LOCK}: {e}: another test cluster holds this host's node \
                 (a `make k8s-demo` still running? `make k8s-demo-stop`)"
            ),
        }
    }
}

/// The directory of the Kubernetes binaries and etcd.
pub fn bin_dir() -> Result<PathBuf> {
    let dir = crate::crio::k8s_bin_dir()?;
    for bin in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kubectl",
        "etcd",
    ] {
        ensure!(
            dir.join(bin).is_file(),
            "{} is missing: run `make k8s` (../shared/k8s and Debian's etcd-server)",
            dir.join(bin).display()
        );
    }
    Ok(dir)
}

impl Cluster {
    /// Starts the cluster with `runtime`, imports the test images, applies isola's
    /// RuntimeClass and waits until the node is Ready and the default ServiceAccount exists.
    pub fn start(runtime: Runtime) -> Result<Cluster> {
        let bin = bin_dir()?;
        let node_lock = lock_node()?;
        reap_stale();
        crate::cri_leaks::reap_stale_netns();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in("/tmp")?
            .keep();
        std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string())?;
        let mut cluster = Cluster {
            kubeconfig: dir.join("admin.kubeconfig"),
            procs: Procs::new(dir.clone()),
            host: None,
            engine: None,
            dir,
            runtime,
            _node_lock: node_lock,
        };
        cluster.bring_up(runtime, &bin)?;
        Ok(cluster)
    }

    fn bring_up(&mut self, runtime: Runtime, bin: &Path) -> Result<()> {
        let t0 = Instant::now();
        self.host = Some(host::HostState::prepare(&self.dir, NODE_LINK, NODE_IP)?);
        let pidfile = self.runtime_pidfile();
        let engine = match runtime {
            Runtime::Containerd => {
                Engine::Containerd(crate::containerd::Containerd::start_supervised(pidfile))
            }
            Runtime::Crio => Engine::Crio(crate::crio::Crio::start_supervised(pidfile)?),
        };
        for tar in [
            crate::containerd::test_image_tar(),
            crate::cri::pause_image_tar(),
        ] {
            engine.import_image(&tar)?;
        }
        let cri_socket = engine.socket();
        self.engine = Some(engine);

        let d = self.dir.clone();
        let pki = pki::generate(&d.join("pki"), NODE, NODE_IP.into(), SERVICE_IP.into())?;
        let (etcd_port, etcd_peer, api_port) = (free_port()?, free_port()?, free_port()?);
        let api = format!("https://{NODE_IP}:{api_port}");
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        self.procs.spawn(
            "etcd",
            Command::new(bin.join("etcd")).args([
                "--name=isola-test",
                &format!("--data-dir={}/etcd", d.display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                &format!("--initial-cluster=isola-test=http://127.0.0.1:{etcd_peer}"),
            ]),
        )?;
        let p = |f: &Path| f.display().to_string();
        self.procs.spawn(
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver")).args([
                format!("--etcd-servers={etcd_url}"),
                format!("--bind-address={NODE_IP}"),
                format!("--advertise-address={NODE_IP}"),
                format!("--secure-port={api_port}"),
                format!("--service-cluster-ip-range={SERVICE_RANGE}"),
                format!("--client-ca-file={}", p(&pki.ca.cert)),
                format!("--tls-cert-file={}", p(&pki.apiserver.cert)),
                format!("--tls-private-key-file={}", p(&pki.apiserver.key)),
                format!(
                    "--kubelet-client-certificate={}",
                    p(&pki.apiserver_kubelet_client.cert)
                ),
                format!(
                    "--kubelet-client-key={}",
                    p(&pki.apiserver_kubelet_client.key)
                ),
                format!("--service-account-key-file={}", p(&pki.service_account_pub)),
                format!(
                    "--service-account-signing-key-file={}",
                    p(&pki.service_account_key)
                ),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                "--authorization-mode=Node,RBAC".into(),
                "--allow-privileged=true".into(),
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--cert-dir={}/apiserver-certs", d.display()),
            ]),
        )?;
        std::fs::write(
            &self.kubeconfig,
            pki::kubeconfig(&api, &pki.ca.cert, "admin", &pki.admin),
        )?;
        self.wait("the apiserver to be ready", || {
            Ok(self.kubectl(&["get", "--raw", "/readyz"])?.status.success())
        })?;
        service::route(SERVICE_IP, SERVICE_RANGE, NODE_LINK, (NODE_IP, api_port))
            .context("routing the kubernetes Service to the apiserver")?;
        for (name, creds) in [
            ("kube-controller-manager", &pki.controller_manager),
            ("kube-scheduler", &pki.scheduler),
        ] {
            let kc = d.join(format!("{name}.kubeconfig"));
            std::fs::write(&kc, pki::kubeconfig(&api, &pki.ca.cert, name, creds))?;
            let mut args = vec![
                format!("--kubeconfig={}", p(&kc)),
                "--leader-elect=false".into(),
                format!("--bind-address={NODE_IP}"),
                format!("--secure-port={}", free_port()?),
            ];
            if name == "kube-controller-manager" {
                args.extend([
                    format!(
                        "--service-account-private-key-file={}",
                        p(&pki.service_account_key)
                    ),
                    format!("--root-ca-file={}", p(&pki.ca.cert)),
                    "--use-service-account-credentials=true".into(),
                    "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller".into(),
                ]);
            }
            self.procs
                .spawn(name, Command::new(bin.join(name)).args(args))?;
        }
        let kubelet_kc = d.join("kubelet.kubeconfig");
        std::fs::write(
            &kubelet_kc,
            pki::kubeconfig(&api, &pki.ca.cert, "kubelet", &pki.kubelet),
        )?;
        let config = d.join("kubelet.yaml");
        std::fs::write(&config, kubelet_config(&d, &pki, &cri_socket, free_port()?))?;
        std::fs::write(d.join("resolv.conf"), "nameserver 10.89.0.1\n")?;
        self.procs.spawn(
            "kubelet",
            Command::new(bin.join("kubelet")).args([
                format!("--config={}", p(&config)),
                format!("--kubeconfig={}", p(&kubelet_kc)),
                format!("--root-dir={}/kubelet", d.display()),
                format!("--cert-dir={}/kubelet-pki", d.display()),
                format!("--node-ip={NODE_IP}"),
                format!("--hostname-override={NODE}"),
                "--v=2".into(),
            ]),
        )?;
        self.wait("the node to be Ready", || {
            let out = self.kubectl(&[
                "get",
                "node",
                NODE,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])?;
            Ok(String::from_utf8_lossy(&out.stdout).trim() == "True")
        })?;
        self.wait("the default ServiceAccount", || {
            Ok(self
                .kubectl(&["get", "serviceaccount", "default"])?
                .status
                .success())
        })?;
        let rc = crate::repo_root().join("deploy/runtimeclass.yaml");
        let out = self.kubectl(&["apply", "-f", &rc.to_string_lossy()])?;
        ensure!(
            out.status.success(),
            "kubectl apply -f {}: {}",
            rc.display(),
            describe(&out)
        );
        eprintln!(
            "cluster ({runtime:?}) up in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Polls `ready` until it says yes, a component dies, or the start timeout passes.
    fn wait(&self, what: &str, ready: impl Fn() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ready()? {
                return Ok(());
            }
            self.procs.check_alive()?;
            if let Some(why) = self.engine.as_ref().and_then(|e| e.daemon()?.ended()) {
                bail!("the node's runtime is down: {why}");
            }
            if Instant::now() > deadline {
                bail!(
                    "waiting for {what}: not after {START_TIMEOUT:?}\n{}",
                    self.procs.logs_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The admin kubeconfig (`export KUBECONFIG=...`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node's container runtime's pidfile: `<cluster dir>/run/containerd.pid` or
    /// `<cluster dir>/run/crio.pid`, rewritten by its supervisor on every (re)start.
    pub fn runtime_pidfile(&self) -> PathBuf {
        let name = match self.runtime {
            Runtime::Containerd => "containerd.pid",
            Runtime::Crio => "crio.pid",
        };
        self.dir.join(RUN_DIR).join(name)
    }

    /// The `kubernetes` Service's address and port (what pods get as
    /// `KUBERNETES_SERVICE_HOST`/`_PORT`).
    pub fn service_address(&self) -> (Ipv4Addr, u16) {
        (SERVICE_IP, service::SERVICE_PORT)
    }

    /// `kubectl <args>` as the admin, with a deadline.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_input(args, None)
    }

    /// `kubectl <args>` with `input` on stdin.
    pub fn kubectl_input(&self, args: &[&str], input: Option<Vec<u8>>) -> Result<Output> {
        let mut cmd = Command::new(bin_dir()?.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        run_with_deadline(&mut cmd, input, Duration::from_secs(180))
            .map_err(|e| anyhow::anyhow!("kubectl {}: {e}", args.join(" ")))
    }

    /// `kubectl <args>` with `input` on stdin; its stdout, or an error with its output.
    pub fn kubectl_ok(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let out = self.kubectl_input(args, input.map(|s| s.as_bytes().to_vec()))?;
        ensure!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            describe(&out)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl <args>` in the background (killed when dropped), its output collected.
    pub fn kubectl_bg(&self, args: &[&str]) -> Result<crate::ctr_child::CtrChild> {
        self.spawn_kubectl(args, None)
    }

    /// Like [`Cluster::kubectl_bg`] with `input` on stdin, which stays open until it exits.
    pub fn kubectl_bg_input(
        &self,
        args: &[&str],
        input: Vec<u8>,
    ) -> Result<crate::ctr_child::CtrChild> {
        self.spawn_kubectl(args, Some(input))
    }

    fn spawn_kubectl(
        &self,
        args: &[&str],
        input: Option<Vec<u8>>,
    ) -> Result<crate::ctr_child::CtrChild> {
        let mut cmd = Command::new(bin_dir()?.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        let hold: Option<crate::ctr_child::Hold> = input.as_ref().map(|_| {
            Box::new(|exited: &std::sync::atomic::AtomicBool| {
                while !exited.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }) as crate::ctr_child::Hold
        });
        crate::ctr_child::CtrChild::spawn_with_input(
            &mut cmd,
            input,
            hold,
            format!("kubectl {}", args.join(" ")),
        )
        .map_err(anyhow::Error::msg)
    }

    /// A kube-rs client as the admin.
    pub async fn client(&self) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The logs of the cluster's components (for failures).
    pub fn logs_tail(&self, n: usize) -> String {
        self.procs.logs_tail(n)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- cluster {} ---\n{}",
                self.dir.display(),
                self.procs.logs_tail(40)
            );
        }
        // Pods first, through the API, while the kubelet still runs them.
        if self.procs.is_running("kubelet") {
            let _ = self.kubectl(&[
                "delete",
                "pods",
                "--all",
                "--all-namespaces",
                "--grace-period=0",
                "--force",
                "--wait=false",
            ]);
        }
        self.procs.stop_all();
        // The pods the kubelet left go through CRI (CNI releases their addresses; runc's
        // processes are not the runtime directory's), then the runtime, then the host.
        if let Some(engine) = self.engine.take() {
            crate::cri_leaks::remove_all_pods_blocking(engine.socket());
            drop(engine);
        }
        if let Some(host) = self.host.take() {
            for p in host.restore() {
                eprintln!("restoring the host after the cluster: {p}");
            }
        }
        cleanup_dir(&self.dir);
    }
}

/// Reaps the directory of a test process that is gone: its processes and mounts, and, for a
/// cluster's, the host as the record in it says it was.
pub(crate) fn reap(dir: &Path) {
    let record = host::stale_record(dir);
    cleanup_dir(dir);
    if let Some(host) = record {
        for p in host.restore() {
            eprintln!("restoring the host after {}: {p}", dir.display());
        }
    }
}

/// The kubelet's configuration: cgroupfs (no systemd here) with kubelet's QoS tree (pods get
/// a cgroup parent, which containerd's CRI stats need), no swap check, x509 clients from the
/// cluster CA, stats from CRI, pod syncs every 10 s (volume updates reach pods quickly), logs and state under the cluster's directory, images never collected.
fn kubelet_config(dir: &Path, pki: &pki::Pki, cri: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "{NODE_IP}"
port: {port}
readOnlyPort: 0
healthzPort: 0
containerRuntimeEndpoint: "unix://{cri}"
cgroupDriver: cgroupfs
failSwapOn: false
protectKernelDefaults: false
resolvConf: "{d}/resolv.conf"
podLogsDir: "{d}/pod-logs"
tlsCertFile: "{serving_cert}"
tlsPrivateKeyFile: "{serving_key}"
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: "{ca}"}}
authorization:
  mode: AlwaysAllow
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
syncFrequency: 10s
featureGates:
  PodAndContainerStatsFromCRI: true
"#,
        cri = cri.display(),
        ca = pki.ca.cert.display(),
        serving_cert = pki.kubelet_serving.cert.display(),
        serving_key = pki.kubelet_serving.key.display(),
    )
}
