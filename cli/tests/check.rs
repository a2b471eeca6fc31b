//! `isola check` end to end: host checks, a real boot, and config errors.

use std::process::Command;

use isola_tests::TestEnv;

fn isola(args: &[&str], config: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_isola"))
        .args(args)
        .env("ISOLA_CONFIG", config)
        .output()
        .expect("running isola");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn vm_check_boots_names_the_accelerator_and_exits_zero() {
    let env = TestEnv::new();
    let cfg = env.write_config();
    let (code, out, err) = isola(&["check"], &cfg);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let accel = out
        .lines()
        .find(|l| l.contains("accelerator"))
        .expect("an accelerator line");
    assert!(
        accel.contains("Tcg: ") || accel.contains("Kvm: "),
        "{accel}"
    );
    assert!(
        accel.len() > 40,
        "the accelerator line gives a reason: {accel}"
    );
    let ready = out
        .lines()
        .find(|l| l.contains("boot: agent ready"))
        .expect("an agent-ready line");
    assert!(
        ready.starts_with("[ ok ]") && ready.contains(" s "),
        "{ready}"
    );
    assert!(out.contains("no process or state left"), "{out}");
}

#[test]
fn check_without_boot_runs_host_checks_only() {
    let env = TestEnv::new();
    let cfg = env.write_config();
    let (code, out, err) = isola(&["check", "--no-boot"], &cfg);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for what in [
        "qemu",
        "accelerator",
        "vsock",
        "virtiofsd",
        "kernel",
        "initrd",
    ] {
        assert!(out.contains(what), "{what} is checked:\n{out}");
    }
    assert!(!out.contains("boot:"), "no boot with --no-boot:\n{out}");
    // The image's kernel, booted by PVH: the tailored one (the default) is "ok", Debian's a
    // warning (it boots ~2x slower).
    let kernel = out
        .lines()
        .find(|l| l.contains("] guest kernel "))
        .expect("a guest kernel line");
    let release = isola_tests::guest_kernel_release();
    let want = if release.ends_with("-isola") {
        "[ ok ]"
    } else {
        "[warn]"
    };
    assert!(
        kernel.starts_with(want) && kernel.contains(&release) && kernel.contains("PVH"),
        "{kernel}"
    );
}

#[test]
fn check_fails_on_a_bad_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[hypervisor]\nvcpus = 0\n").unwrap();
    let (code, out, _) = isola(&["check", "--no-boot"], &cfg);
    assert_ne!(code, 0);
    assert!(
        out.contains("hypervisor.vcpus") && out.contains("bad.toml"),
        "{out}"
    );
}

#[test]
fn check_fails_when_the_kernel_is_missing() {
    let mut env = TestEnv::new();
    env.config.hypervisor.kernel = env.dir.path().join("no-such-vmlinuz");
    let cfg = env.write_config();
    let (code, out, _) = isola(&["check"], &cfg);
    assert_ne!(code, 0);
    let line = out
        .lines()
        .find(|l| l.contains("] kernel "))
        .expect("a kernel line");
    assert!(
        line.starts_with("[FAIL]") && line.contains("no-such-vmlinuz"),
        "{line}"
    );
    assert!(
        !out.contains("boot:"),
        "no boot after a failed host check:\n{out}"
    );
}
