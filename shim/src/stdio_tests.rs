//! stdio through real FIFOs, with the fake agent playing the guest.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::stat::Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::fake::{Env, FakeAgent};

fn fifo(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).unwrap();
    p.display().to_string()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

/// What containerd's client does: write stdin and close it, read stdout to EOF.
async fn client(stdin: String, stdout: String, data: Vec<u8>) -> Vec<u8> {
    let reader = tokio::spawn(async move {
        let mut r = pipe::OpenOptions::new().open_receiver(&stdout).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        out
    });
    let mut w = pipe::OpenOptions::new().open_sender(&stdin).unwrap();
    w.write_all(&data).await.unwrap();
    drop(w);
    reader.await.unwrap()
}

#[test]
fn terminal_merges_stderr() {
    let p = StdioPaths {
        stdin: "/i".into(),
        stdout: "/o".into(),
        stderr: "/e".into(),
        terminal: true,
    };
    let kinds: Vec<_> = p.streams().into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, [StdioKind::Stdin, StdioKind::Stdout]);
    let c = p.config();
    assert!(c.stdin && c.stdout && !c.stderr && c.terminal);
    let none = StdioPaths::default().config();
    assert!(!none.stdin && !none.stdout && !none.stderr);
}

#[test]
fn only_fifos_and_files_are_accepted() {
    assert_eq!(host_path("file:///var/log/x").unwrap(), "/var/log/x");
    assert_eq!(host_path("/run/fifo").unwrap(), "/run/fifo");
    assert!(matches!(
        host_path("binary:///usr/bin/logger"),
        Err(ShimError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn ten_mib_round_trip_through_cat() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::default();
    agent.cat.store(true, Ordering::SeqCst);
    let paths = StdioPaths {
        stdin: fifo(dir.path(), "in"),
        stdout: fifo(dir.path(), "out"),
        stderr: String::new(),
        terminal: false,
    };
    agent
        .create_container(isola_agent_proto::agent::CreateContainerRequest {
            container_id: "c".into(),
            stdio: Some(paths.config()).into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let io = ProcessIo::attach(&agent, "c", "", &paths).await.unwrap();
    agent.start_container("c").await.unwrap();
    let data = pattern(10 << 20);
    let client = tokio::spawn(client(
        paths.stdin.clone(),
        paths.stdout.clone(),
        data.clone(),
    ));
    // The client closed its stdin; containerd then sends CloseIO.
    tokio::time::sleep(Duration::from_millis(50)).await;
    io.close_stdin();
    assert_eq!(agent.wait_process("c", "").await.unwrap().status, 0);
    assert!(io.wait_outputs(Duration::from_secs(5)).await);
    drop(io);
    let out = tokio::time::timeout(Duration::from_secs(30), client)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.len(), data.len());
    assert!(out == data, "bytes differ");
}

#[tokio::test]
async fn stdin_eof_waits_for_close_io() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::default();
    let paths = StdioPaths {
        stdin: fifo(dir.path(), "in"),
        ..Default::default()
    };
    agent
        .create_container(isola_agent_proto::agent::CreateContainerRequest {
            container_id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let io = ProcessIo::attach(&agent, "c", "", &paths).await.unwrap();
    let mut guest = agent.take_stream("c", "", StdioKind::Stdin).unwrap();
    let mut w = pipe::OpenOptions::new().open_sender(&paths.stdin).unwrap();
    w.write_all(b"abc").await.unwrap();
    drop(w);
    let mut buf = [0u8; 3];
    guest.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"abc");
    // The client is gone, but our closer keeps the FIFO open: no EOF yet.
    let mut more = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(100), guest.read(&mut more))
            .await
            .is_err()
    );
    io.close_stdin();
    let n = tokio::time::timeout(Duration::from_secs(5), guest.read(&mut more))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "EOF reaches the guest after CloseIO");
}

#[tokio::test]
async fn silent_open_output_is_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeAgent::default();
    let out = dir.path().join("out.log");
    let paths = StdioPaths {
        stdout: format!("file://{}", out.display()),
        ..Default::default()
    };
    agent
        .create_container(isola_agent_proto::agent::CreateContainerRequest {
            container_id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let io = ProcessIo::attach(&agent, "c", "", &paths).await.unwrap();
    let mut guest = agent.take_stream("c", "", StdioKind::Stdout).unwrap();
    guest.write_all(b"partial").await.unwrap();
    // The guest keeps the stream open and silent (a daemonized child holds the pipe).
    assert!(!io.wait_outputs(Duration::from_millis(300)).await);
    assert_eq!(std::fs::read(&out).unwrap(), b"partial");
}

#[tokio::test]
async fn wait_returns_after_all_output_is_copied() {
    let env = Env::new();
    let dir = env.tmp.path();
    let mut req = env.request("c1", "{}");
    req.stdout = fifo(dir, "c1-out");
    req.stderr = fifo(dir, "c1-err");
    let out_path: PathBuf = req.stdout.clone().into();
    let reader = tokio::spawn(async move {
        let mut r = pipe::OpenOptions::new().open_receiver(&out_path).unwrap();
        let mut v = Vec::new();
        r.read_to_end(&mut v).await.unwrap();
        v
    });
    env.service.create(req).await.unwrap();
    env.service.start("c1", "").await.unwrap();
    let agent = env.agent();
    let mut out = agent.take_stream("c1", "", StdioKind::Stdout).unwrap();
    let data = pattern(1 << 20);
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            out.write_all(&data).await.unwrap();
            out.shutdown().await.unwrap();
        })
    };
    // The process "exits" while its output is still in flight.
    agent.exit("c1", "", 0);
    let exit = env.service.wait("c1", "").await.unwrap();
    assert_eq!(exit.status, 0);
    writer.await.unwrap();
    env.service.delete("c1", "").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), data.len());
}
