use isola_tests::containerd::Containerd;
use std::process::Command;

fn run_tty(c: &Containerd, runtime: &str, id: &str, cmd: &str) -> Vec<u8> {
    let args = c.run_args_with_runtime(runtime, &["--rm", "-t"], id, &["sh", "-c", cmd]);
    let ctr = format!(
        "ctr --address {} --namespace isola-test {}",
        c.socket().display(),
        args.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = Command::new("sh")
        .args([
            "-c",
            &format!(
                "sleep 8 | script -qfec \"{}\" /dev/null",
                ctr.replace('"', "\\\"")
            ),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "{runtime}: status {:?} stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn vm_probe_ctr_tty() {
    let c = Containerd::start();
    c.import_test_image();
    for rt in ["io.containerd.runc.v2", "io.containerd.isola.v2"] {
        let out = run_tty(&c, rt, "p1", "stty size; echo rc=$?; sleep 1; stty size");
        eprintln!("{rt}: {:?}", String::from_utf8_lossy(&out));
        eprintln!("{rt}: {:?}", &out[..out.len().min(20)]);
    }
}
