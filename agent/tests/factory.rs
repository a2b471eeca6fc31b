//! The container factory process (the real agent binary run as `--isola-container-factory`),
//! driven over its control socket as the agent drives it: it forks one child per operation as
//! a child of *our* process (CLONE_PARENT), says so before or after the child's answer, keeps
//! none of an operation's descriptors, and exits when its control socket closes.

use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde_json::{json, Value};

fn pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

fn send(sock: BorrowedFd<'_>, msg: &Value, fds: &[RawFd]) {
    let bytes = serde_json::to_vec(msg).unwrap();
    let cmsgs = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &cmsgs,
        MsgFlags::empty(),
        None,
    )
    .unwrap();
}

/// The next message on `sock` (`None` at end of file), waiting at most 20 s.
fn recv(sock: BorrowedFd<'_>) -> Option<Value> {
    let limit = nix::sys::time::TimeVal::new(20, 0);
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &limit).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, None, MsgFlags::empty())
        .expect("no message within 20 s");
    let len = msg.bytes;
    (len > 0).then(|| serde_json::from_slice(&buf[..len]).unwrap())
}

struct FactoryProcess {
    child: std::process::Child,
    control: OwnedFd,
}

fn start_factory() -> FactoryProcess {
    let (control, theirs) = pair();
    let child = Command::new(env!("CARGO_BIN_EXE_isola-agent"))
        .arg("--isola-container-factory")
        .env("ISOLA_AGENT_LOG", "debug")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    FactoryProcess { child, control }
}

/// One operation: its reply socket's messages until end of file, and the child's exit.
fn operation(
    factory: &FactoryProcess,
    root: &std::path::Path,
    extra: &[RawFd],
) -> (i32, Value, WaitStatus) {
    let (ours, theirs) = pair();
    let mut fds = vec![theirs.as_raw_fd()];
    fds.extend_from_slice(extra);
    let request = json!({
        "root": root,
        "op": {"op": "start", "id": "no-such-container"},
        "sandbox_id": "pod-1",
    });
    send(factory.control.as_fd(), &request, &fds);
    drop(theirs);
    let (mut pid, mut done) = (None, None);
    while let Some(msg) = recv(ours.as_fd()) {
        if let Some(p) = msg.get("started").and_then(|s| s["pid"].as_i64()) {
            pid = Some(p as i32);
        } else if let Some(d) = msg.get("done") {
            done = Some(d.clone());
        } else {
            panic!("unexpected reply {msg}");
        }
    }
    let pid = pid.expect("the factory never said which child it started");
    // CLONE_PARENT: the child is ours, so we can (and must) reap it.
    let status = waitpid(Pid::from_raw(pid), None).unwrap();
    (pid, done.expect("the child never answered"), status)
}

/// The factory's open descriptors, as `fd->target`.
fn descriptors(pid: u32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!("{}->{}", e.file_name().to_string_lossy(), target.display())
        })
        .collect();
    fds.sort();
    fds
}

#[test]
fn forks_children_of_its_parent_that_answer_and_keep_no_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let factory = start_factory();
    let mut pids = Vec::new();
    let mut held = Vec::new();
    for _ in 0..3 {
        // A pipe's write end travels as a container's stdio would: once the child and the
        // factory have both closed their copies, its read end sees end of file.
        let (mut read_end, write_end) = std::io::pipe().unwrap();
        let write_fd = OwnedFd::from(write_end);
        let (pid, done, status) = operation(&factory, dir.path(), &[write_fd.as_raw_fd(); 3]);
        drop(write_fd);
        assert_eq!(
            done,
            json!({"failed": {"kind": "not_found", "message": done["failed"]["message"]}}),
            "an unknown container is NotFound"
        );
        assert!(
            matches!(status, WaitStatus::Exited(p, 0) if p.as_raw() == pid),
            "{status:?}"
        );
        let mut rest = Vec::new();
        read_end.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the child wrote to its stdio: {rest:?}");
        pids.push(pid);
        held.push(descriptors(factory.child.id()));
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "one child per operation");
    // The factory keeps nothing of an operation: the same descriptors after each.
    assert!(held.windows(2).all(|w| w[0] == w[1]), "{held:#?}");
}

#[test]
fn exits_when_the_agent_closes_its_control_socket() {
    let FactoryProcess { mut child, control } = start_factory();
    drop(control);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            return;
        }
        assert!(Instant::now() < deadline, "the factory outlived its agent");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_request_without_its_reply_socket_is_dropped_and_the_factory_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let factory = start_factory();
    let bytes = b"{}";
    sendmsg::<()>(
        factory.control.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &[],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    let (_, done, _) = operation(&factory, dir.path(), &[]);
    assert_eq!(done["failed"]["kind"], "not_found", "{done}");
}
