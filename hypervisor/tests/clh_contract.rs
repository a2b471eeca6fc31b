//! Contract tests against the real Cloud Hypervisor binary: its REST API accepts exactly the
//! configurations isola's builder produces, `vm.info` gives them back, and pause, resume,
//! resize, add-net (with a real tap descriptor) and shutdown behave as the backend expects.
//!
//! The API serves on any host, even where a guest cannot run (PVM /dev/kvm without vmx/svm:
//! there the booted guest's vCPU fails after a few seconds and the VMM exits by itself, so
//! everything after `vm.boot` happens within a second). The binary is
//! `$ISOLA_TEST_CLOUD_HYPERVISOR`, else `../shared/tools/cloud-hypervisor/cloud-hypervisor`
//! next to the workspace (what CI has), else `/usr/local/bin/cloud-hypervisor`; without any
//! of them the tests fail saying so.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use isola_hypervisor::clh::api::{ApiClient, ApiError};
use isola_hypervisor::clh::config::{self, ClhPlan, ResizeRequest, VmState};
use isola_hypervisor::clh::events;
use isola_hypervisor::{NetDevice, SharedFsConfig};

fn binary() -> PathBuf {
    let candidates = [
        std::env::var_os("ISOLA_TEST_CLOUD_HYPERVISOR").map(PathBuf::from),
        Some(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/tools/cloud-hypervisor/cloud-hypervisor"),
        ),
        Some(PathBuf::from("/usr/local/bin/cloud-hypervisor")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .expect(
            "cloud-hypervisor is missing: these contract tests need the v49 binary from \
             ../shared/tools/cloud-hypervisor (or set ISOLA_TEST_CLOUD_HYPERVISOR)",
        )
}

fn image(file: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../build/guest")
        .join(file);
    assert!(
        p.is_file(),
        "guest image {} not found: build the guest images first (make guest)",
        p.display()
    );
    p
}

/// A Cloud Hypervisor process with its API socket and event monitor file, killed on drop.
struct Vmm {
    child: tokio::process::Child,
    api: ApiClient,
    events: PathBuf,
    dir: tempfile::TempDir,
}

async fn spawn_vmm() -> Vmm {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let events = dir.path().join("events.json");
    let child = tokio::process::Command::new(binary())
        .arg("--api-socket")
        .arg(format!("path={}", socket.display()))
        .arg("--event-monitor")
        .arg(format!("path={}", events.display()))
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let api = ApiClient::new(&socket);
    for _ in 0..400 {
        if api.ping().await.is_ok() {
            return Vmm {
                child,
                api,
                events,
                dir,
            };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("cloud-hypervisor did not answer vmm.ping within 2 s");
}

/// A tap device (non-persistent: it disappears with its last descriptor), opened like isola's
/// shim opens pod taps.
fn open_tap() -> OwnedFd {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let fd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun (the contract tests run as root)");
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq` (40 bytes, which IfReq is) on a
    // descriptor of /dev/net/tun that stays open for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    // SAFETY: into_raw_fd hands over sole ownership of the descriptor.
    unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) }
}

fn plan(dir: &Path, fs: bool) -> ClhPlan {
    ClhPlan {
        kernel: image("vmlinux"),
        initrd: image("initrd.img"),
        cmdline: format!("{} agent.log=info", isola_hypervisor::DEFAULT_KERNEL_PARAMS),
        vcpus: 1,
        max_vcpus: 2,
        memory_mib: 512,
        hotplug_mib: 1024,
        vsock_socket: dir.join("vsock.sock"),
        fs: fs.then(|| (dir.join("virtiofs.sock"), "isolafs".to_owned())),
    }
}

#[tokio::test]
async fn clh_contract_create_and_info_round_trip() {
    let vmm = spawn_vmm().await;
    let want = config::build(&plan(vmm.dir.path(), true));
    vmm.api.create(&want).await.unwrap();
    let tap = open_tap();
    let dev = NetDevice {
        mac: "02:00:00:00:00:2a".into(),
        mtu: 1400,
        tap: std::sync::Arc::new(tap),
    };
    let net = config::net_config(0, &dev);
    vmm.api.add_net(&net, dev.tap_fd()).await.unwrap();
    let info = vmm.api.info().await.unwrap();
    assert_eq!(info.state, VmState::Created);
    let mut got = info.config.clone();
    let got_net = got
        .net
        .take()
        .expect("the added net device is in the configuration");
    assert_eq!(
        got, want,
        "vm.info returns exactly what vm.create was given"
    );
    assert_eq!(got_net.len(), 1);
    let fds = got_net[0]
        .fds
        .clone()
        .expect("the VMM holds the tap descriptor");
    assert_eq!(fds.len(), 1);
    assert_eq!(
        config::NetConfig {
            fds: None,
            ..got_net[0].clone()
        },
        net,
        "the net device round-trips"
    );
    // A second definition is refused with the VMM's reason.
    match vmm.api.create(&want).await.unwrap_err() {
        ApiError::Status {
            status, message, ..
        } => {
            assert!(status >= 400, "{status}");
            assert!(!message.is_empty());
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn clh_contract_refusals_are_typed() {
    let vmm = spawn_vmm().await;
    // Nothing defined yet.
    for res in [vmm.api.boot().await, vmm.api.pause().await] {
        assert!(
            matches!(res, Err(ApiError::Status { status, .. }) if status >= 400),
            "{res:?}"
        );
    }
    assert!(matches!(vmm.api.info().await, Err(ApiError::Status { .. })));
    // A kernel that does not exist is refused by vm.boot with the VMM's explanation.
    let mut p = plan(vmm.dir.path(), false);
    p.kernel = vmm.dir.path().join("no-such-vmlinux");
    vmm.api.create(&config::build(&p)).await.unwrap();
    let err = vmm.api.boot().await.unwrap_err();
    assert!(matches!(err, ApiError::Status { .. }), "{err:?}");
}

#[tokio::test]
async fn clh_contract_boot_pause_resume_resize_shutdown() {
    let mut vmm = spawn_vmm().await;
    let shared = vmm.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let fs_cfg = SharedFsConfig {
        virtiofsd_path: PathBuf::from(
            std::env::var_os("ISOLA_TEST_VIRTIOFSD").unwrap_or_else(|| "virtiofsd".into()),
        ),
        shared_dir: shared,
        cache: "auto".into(),
        sandbox: "none".into(),
        tag: "isolafs".into(),
    };
    let virtiofsd = isola_hypervisor::daemons::virtiofsd::start(
        &fs_cfg,
        vmm.dir.path().join("virtiofs.sock"),
        vmm.dir.path().join("virtiofsd.log"),
        false,
    )
    .await
    .unwrap();
    vmm.api
        .create(&config::build(&plan(vmm.dir.path(), true)))
        .await
        .unwrap();
    let dev = NetDevice {
        mac: "02:00:00:00:00:2b".into(),
        mtu: 0,
        tap: std::sync::Arc::new(open_tap()),
    };
    vmm.api
        .add_net(&config::net_config(0, &dev), dev.tap_fd())
        .await
        .unwrap();
    drop(dev);
    vmm.api.boot().await.unwrap();
    let state = || async { vmm.api.info().await.unwrap().state };
    assert_eq!(state().await, VmState::Running);
    assert!(
        vmm.dir.path().join("vsock.sock").exists(),
        "the hybrid vsock socket exists once booted"
    );
    vmm.api.pause().await.unwrap();
    assert_eq!(state().await, VmState::Paused);
    vmm.api.resume().await.unwrap();
    assert_eq!(state().await, VmState::Running);
    vmm.api
        .resize(&ResizeRequest {
            desired_vcpus: Some(2),
            ..ResizeRequest::default()
        })
        .await
        .unwrap();
    vmm.api
        .resize(&ResizeRequest {
            desired_ram: Some(768 << 20),
            ..ResizeRequest::default()
        })
        .await
        .unwrap();
    let info = vmm.api.info().await.unwrap();
    assert_eq!(
        info.config.cpus.boot_vcpus, 2,
        "vm.info reports the new vCPU count"
    );
    assert_eq!(info.memory_actual_size, Some(768 << 20));
    // Past the ceiling: refused.
    let err = vmm
        .api
        .resize(&ResizeRequest {
            desired_vcpus: Some(3),
            ..ResizeRequest::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Status { .. }), "{err:?}");
    vmm.api.shutdown().await.unwrap();
    vmm.api.shutdown_vmm().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), vmm.child.wait())
        .await
        .expect("the VMM exits after vmm.shutdown")
        .unwrap();
    assert!(status.success(), "{status}");
    virtiofsd.stop(Duration::from_secs(1)).await.unwrap();
    // The event monitor told the story isola's watcher parses.
    let mut text = std::fs::read(&vmm.events).unwrap();
    let seen: Vec<String> = events::drain(&mut text)
        .into_iter()
        .map(|e| format!("{}:{}", e.source, e.event))
        .collect();
    for e in [
        "vm:booted",
        "vm:paused",
        "vm:resumed",
        "vm:resized",
        "vmm:shutdown",
    ] {
        assert!(seen.iter().any(|s| s == e), "{e} missing from {seen:?}");
    }
    assert!(!seen.iter().any(|s| s == "vm:rebooting"));
}
