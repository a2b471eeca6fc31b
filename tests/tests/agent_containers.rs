//! Containers in a real pod VM (TCG here): the agent side of `ctr run`, driven over ttrpc and
//! the stdio streams exactly as the shim drives it.
//!
//! The rootfs is a busybox tree the host writes into the VM's shared directory (virtio-fs);
//! each test boots one VM and groups several checks, since a boot costs seconds under TCG.

mod agent_support;

use std::time::Duration;

use agent_support::*;
use isola_agent_proto::agent::stdio_stream_header::Stream;
use isola_agent_proto::agent::*;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_containers_output_exit_codes_signals_and_errors() {
    let pod = Pod::boot("t-ctr").await;

    // Unknown ids are NOT_FOUND; a bad spec is INVALID_ARGUMENT.
    assert_eq!(code(&pod.start("nope").await.unwrap_err()), "NOT_FOUND");
    assert_eq!(code(&pod.wait("nope", "").await.unwrap_err()), "NOT_FOUND");
    assert_eq!(
        code(&pod.signal("nope", "", 9, false).await.unwrap_err()),
        "NOT_FOUND"
    );
    assert_eq!(code(&pod.remove("nope", 0).await.unwrap_err()), "NOT_FOUND");
    let bad = pod
        .agent()
        .create_container(
            isola_agent_client::context(RPC),
            &CreateContainerRequest {
                container_id: "bad".into(),
                oci_spec_json: b"{this is not json".to_vec(),
                ..Default::default()
            },
        )
        .await
        .map_err(err)
        .unwrap_err();
    assert_eq!(code(&bad), "INVALID_ARGUMENT", "{bad:?}");
    assert!(bad.contains("not a valid OCI runtime spec"), "{bad}");

    // Output on stdout and stderr, an exit code; streams attached before start.
    pod.rootfs("c1");
    pod.create(
        "c1",
        &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
        stdio(false, true, true, false),
    )
    .await
    .expect("CreateContainer");
    let dup = pod
        .create("c1", &["true"], stdio(false, false, false, false))
        .await
        .unwrap_err();
    assert_eq!(code(&dup), "ALREADY_EXISTS", "{dup:?}");
    let out = pod.stream("c1", "", Stream::STDOUT).await;
    let err = pod.stream("c1", "", Stream::STDERR).await;
    pod.start("c1").await.expect("StartContainer");
    let again = pod.start("c1").await.unwrap_err();
    assert_eq!(code(&again), "FAILED_PRECONDITION", "{again:?}");
    assert_eq!(pod.wait("c1", "").await.unwrap(), 3);
    // WaitProcess answered only after the output was flushed: both streams are complete.
    assert_eq!(read_all(out).await, "hello\n");
    assert_eq!(read_all(err).await, "oops\n");
    // Many waiters, after the exit too.
    let (a, b) = tokio::join!(pod.wait("c1", ""), pod.wait("c1", ""));
    assert_eq!((a.unwrap(), b.unwrap()), (3, 3));
    pod.remove("c1", 0)
        .await
        .expect("removing an exited container");
    assert_eq!(code(&pod.wait("c1", "").await.unwrap_err()), "NOT_FOUND");

    // A long-running container: execs, signals, removal rules.
    pod.rootfs("c2");
    pod.create("c2", &["sleep", "100"], stdio(false, false, false, false))
        .await
        .unwrap();
    let early = pod
        .exec("c2", "e0", &["true"], stdio(false, false, false, false))
        .await
        .unwrap_err();
    assert_eq!(
        code(&early),
        "FAILED_PRECONDITION",
        "exec before start: {early:?}"
    );
    pod.start("c2").await.unwrap();
    let busy = pod.remove("c2", 0).await.unwrap_err();
    assert_eq!(code(&busy), "FAILED_PRECONDITION", "{busy:?}");

    pod.exec(
        "c2",
        "e7",
        &["sh", "-c", "exit 7"],
        stdio(false, false, false, false),
    )
    .await
    .expect("ExecProcess");
    assert_eq!(pod.wait("c2", "e7").await.unwrap(), 7);
    // The id of an exec that has exited is free again (the host deleted it first) ...
    pod.exec(
        "c2",
        "e7",
        &["sh", "-c", "exit 8"],
        stdio(false, false, false, false),
    )
    .await
    .expect("ExecProcess with the id of an exited exec");
    assert_eq!(pod.wait("c2", "e7").await.unwrap(), 8);
    // ... the id of a running one is not.
    pod.exec(
        "c2",
        "long",
        &["sleep", "100"],
        stdio(false, false, false, false),
    )
    .await
    .expect("ExecProcess");
    let dup = pod
        .exec("c2", "long", &["true"], stdio(false, false, false, false))
        .await
        .unwrap_err();
    assert_eq!(code(&dup), "ALREADY_EXISTS", "{dup:?}");
    assert_eq!(
        code(&pod.wait("c2", "nope").await.unwrap_err()),
        "NOT_FOUND"
    );

    pod.exec(
        "c2",
        "say",
        &["sh", "-c", "echo from-exec; hostname"],
        stdio(false, true, false, false),
    )
    .await
    .unwrap();
    let said = pod.stream("c2", "say", Stream::STDOUT).await;
    assert_eq!(pod.wait("c2", "say").await.unwrap(), 0);
    assert_eq!(read_all(said).await, "from-exec\nc2\n");

    // Container processes start with default signal dispositions (none ignored, SIGPIPE
    // included), whatever the agent's own are.
    pod.exec(
        "c2",
        "sig",
        &["grep", "SigIgn", "/proc/self/status"],
        stdio(false, true, false, false),
    )
    .await
    .unwrap();
    let sig = pod.stream("c2", "sig", Stream::STDOUT).await;
    assert_eq!(pod.wait("c2", "sig").await.unwrap(), 0);
    assert_eq!(read_all(sig).await, "SigIgn:\t0000000000000000\n");

    pod.exec(
        "c2",
        "term",
        &["sleep", "100"],
        stdio(false, false, false, false),
    )
    .await
    .unwrap();
    pod.signal("c2", "term", 15, false).await.expect("SIGTERM");
    assert_eq!(pod.wait("c2", "term").await.unwrap(), 128 + 15);

    pod.signal("c2", "", 9, false).await.expect("SIGKILL");
    assert_eq!(pod.wait("c2", "").await.unwrap(), 128 + 9);
    let gone = pod.signal("c2", "", 9, false).await.unwrap_err();
    assert_eq!(
        code(&gone),
        "NOT_FOUND",
        "signalling an exited process: {gone:?}"
    );
    let stopped = pod
        .exec("c2", "late", &["true"], stdio(false, false, false, false))
        .await
        .unwrap_err();
    assert_eq!(code(&stopped), "FAILED_PRECONDITION", "{stopped:?}");
    pod.remove("c2", 0).await.unwrap();

    // A running container removed with a timeout is killed; a created one simply goes.
    pod.rootfs("c3");
    pod.create("c3", &["sleep", "100"], stdio(false, false, false, false))
        .await
        .unwrap();
    pod.start("c3").await.unwrap();
    pod.remove("c3", 1)
        .await
        .expect("remove with a timeout kills");
    pod.rootfs("c4");
    pod.create("c4", &["sleep", "100"], stdio(false, false, false, false))
        .await
        .unwrap();
    pod.remove("c4", 0)
        .await
        .expect("a created container can be removed");
    assert_eq!(code(&pod.start("c4").await.unwrap_err()), "NOT_FOUND");

    // A missing executable fails CreateContainer with a message saying so.
    pod.rootfs("c5");
    let missing = pod
        .create("c5", &["nonexistent"], stdio(false, false, false, false))
        .await
        .unwrap_err();
    assert!(missing.contains("nonexistent"), "{missing}");
    assert_eq!(code(&pod.start("c5").await.unwrap_err()), "NOT_FOUND");

    pod.client()
        .check(Duration::from_secs(5))
        .await
        .expect("the agent is fine");
    pod.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_container_stdin_and_terminals() {
    let pod = Pod::boot("t-tty").await;

    // stdin round trip through cat, EOF included; stdout attached after start.
    pod.rootfs("cat");
    pod.create("cat", &["cat"], stdio(true, true, false, false))
        .await
        .unwrap();
    let mut input = pod.stream("cat", "", Stream::STDIN).await;
    pod.start("cat").await.unwrap();
    let out = pod.stream("cat", "", Stream::STDOUT).await;
    input.write_all(b"ping\n").await.unwrap();
    input.write_all(b"pong\n").await.unwrap();
    input.shutdown().await.unwrap();
    assert_eq!(pod.wait("cat", "").await.unwrap(), 0);
    assert_eq!(read_all(out).await, "ping\npong\n");
    drop(input);
    pod.remove("cat", 0).await.unwrap();

    // CloseStdin ends a reader without the host closing its stream.
    pod.rootfs("cl");
    pod.create(
        "cl",
        &["sh", "-c", "cat; echo closed"],
        stdio(true, true, false, false),
    )
    .await
    .unwrap();
    let out = pod.stream("cl", "", Stream::STDOUT).await;
    let _input = pod.stream("cl", "", Stream::STDIN).await;
    pod.start("cl").await.unwrap();
    pod.agent()
        .close_stdin(
            isola_agent_client::context(RPC),
            &CloseStdinRequest {
                container_id: "cl".into(),
                ..Default::default()
            },
        )
        .await
        .expect("CloseStdin");
    assert_eq!(pod.wait("cl", "").await.unwrap(), 0);
    assert_eq!(read_all(out).await, "closed\n");
    pod.remove("cl", 0).await.unwrap();

    // A terminal: tty names the container's pty; the output starts with it (no stray bytes),
    // and the terminal has a size before the host sets one (busybox `stty size` fails on a
    // 0x0 terminal, reporting a stale errno such as ECHILD).
    pod.rootfs("tty");
    pod.create(
        "tty",
        &["sh", "-c", "tty; stty size"],
        stdio(false, true, false, true),
    )
    .await
    .unwrap();
    let out = pod.stream("tty", "", Stream::STDOUT).await;
    pod.start("tty").await.unwrap();
    assert_eq!(pod.wait("tty", "").await.unwrap(), 0);
    let text = read_all(out).await;
    assert!(
        text.starts_with("/dev/pts/"),
        "no leading NUL or other bytes: {text:?}"
    );
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert!(
        lines[0]["/dev/pts/".len()..].parse::<u32>().is_ok(),
        "tty printed {text:?}"
    );
    assert_eq!(
        lines[1..],
        ["24 80", ""],
        "default size, terminal line endings: {text:?}"
    );
    pod.remove("tty", 0).await.unwrap();

    // A terminal init resized before it starts reports the new size; a 0x0 resize (a client
    // whose own terminal has no size) keeps it.
    pod.rootfs("tsz");
    pod.create("tsz", &["stty", "size"], stdio(false, true, false, true))
        .await
        .unwrap();
    let out = pod.stream("tsz", "", Stream::STDOUT).await;
    pod.resize("tsz", "", 40, 100).await.expect("TtyWinResize");
    pod.resize("tsz", "", 0, 0).await.expect("TtyWinResize 0x0");
    pod.start("tsz").await.unwrap();
    assert_eq!(pod.wait("tsz", "").await.unwrap(), 0);
    assert_eq!(read_all(out).await, "40 100\r\n");
    pod.remove("tsz", 0).await.unwrap();

    // An interactive terminal exec: a default size, then input through the pty, the size the
    // host sets, output.
    pod.rootfs("sh");
    pod.create("sh", &["sleep", "100"], stdio(false, false, false, false))
        .await
        .unwrap();
    pod.start("sh").await.unwrap();
    pod.exec(
        "sh",
        "it",
        &[
            "sh",
            "-c",
            "stty size; read line; stty size; echo got:$line",
        ],
        stdio(true, true, false, true),
    )
    .await
    .unwrap();
    let mut out = pod.stream("sh", "it", Stream::STDOUT).await;
    let mut input = pod.stream("sh", "it", Stream::STDIN).await;
    let first = read_until(&mut out, "\r\n").await;
    assert_eq!(first, "24 80\r\n", "stty size before any resize");
    pod.resize("sh", "it", 33, 77).await.expect("TtyWinResize");
    input.write_all(b"go\n").await.unwrap();
    assert_eq!(pod.wait("sh", "it").await.unwrap(), 0);
    let text = read_all(out).await;
    assert_eq!(
        text, "go\r\n33 77\r\ngot:go\r\n",
        "echo, size after resize, output"
    );
    let no_tty = pod
        .agent()
        .tty_win_resize(
            isola_agent_client::context(RPC),
            &TtyWinResizeRequest {
                container_id: "sh".into(),
                row: 1,
                column: 1,
                ..Default::default()
            },
        )
        .await
        .map_err(err)
        .unwrap_err();
    assert_eq!(code(&no_tty), "FAILED_PRECONDITION", "{no_tty:?}");
    // Signal every process of the container.
    pod.signal("sh", "", 9, true).await.expect("SIGKILL all");
    assert_eq!(pod.wait("sh", "").await.unwrap(), 137);

    // DestroySandbox (in finish) removes what is left.
    pod.finish().await;
}
