//! Cloud Hypervisor selected by configuration, through containerd (`ctr run`), the way an
//! operator meets it. On a host without hardware KVM (this CI's PVM /dev/kvm) the shim refuses
//! the pod at VM start, fast, with the reason and FailedPrecondition, and leaves nothing; on a
//! host with vmx/svm the same configuration runs the container in a Cloud Hypervisor guest.
//! Either branch asserts: which one runs is decided by the host, and printed.

use std::time::{Duration, Instant};

use isola_config::HypervisorKind;
use isola_tests::containerd::{describe, host_kernel_release, Containerd};
use isola_tests::TestEnv;

#[test]
fn vm_ctr_cloud_hypervisor_runs_or_is_refused_up_front() {
    let mut env = TestEnv::new();
    env.config.hypervisor.kind = HypervisorKind::CloudHypervisor;
    env.config.hypervisor.cloud_hypervisor_path = isola_tests::test_cloud_hypervisor();
    let c = Containerd::start_with(env);
    c.import_test_image();
    let host = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(isola_hypervisor::accel::probe_host());
    let hw_kvm =
        isola_hypervisor::accel::cloud_hypervisor_problem(&host.cpuinfo, host.kvm_openable);
    let t0 = Instant::now();
    let out = c.run("t-clh", &["uname", "-r"]);
    let took = t0.elapsed();
    let _ = c.ctr(&["containers", "rm", "t-clh"]);
    match hw_kvm {
        Some(reason) => {
            eprintln!("no hardware KVM here ({reason}): checking the refusal");
            assert!(
                !out.status.success(),
                "ran without hardware KVM: {}",
                describe(&out)
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("Cloud Hypervisor needs hardware KVM") && err.contains("vmx/svm"),
                "the reason reaches the user: {}",
                describe(&out)
            );
            assert!(err.contains("failed precondition"), "{}", describe(&out));
            // Refused before any VMM ran: far below a VM boot, never a hung one.
            assert!(took < Duration::from_secs(30), "took {took:?}");
        }
        None => {
            eprintln!("hardware KVM here: the container runs in a Cloud Hypervisor guest");
            assert!(out.status.success(), "ctr run: {}", describe(&out));
            let guest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            assert!(
                !guest.is_empty() && guest != host_kernel_release(),
                "{guest}"
            );
        }
    }
    c.assert_nothing_left("a Cloud Hypervisor pod");
}
