//! The guest is untrusted: an agent that answers with oversized or malformed frames, never
//! answers, or hangs up mid-frame must make the host's calls fail within their deadline, without
//! growing the host's memory, and never panic. A fake agent on a hybrid-vsock socket plays each
//! part (the handshake right, then the hostile ttrpc stream).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use isola_agent_client::{AgentClient, Backoff, ClientError};
use isola_agent_proto::AgentEndpoint;
use proptest::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// ttrpc's frame header: length (BE u32), stream id (BE u32), type, flags.
fn frame_header(len: u32, stream: u32) -> Vec<u8> {
    let mut h = len.to_be_bytes().to_vec();
    h.extend_from_slice(&stream.to_be_bytes());
    h.extend_from_slice(&[2, 0]); // a response, no flags
    h
}

/// What the fake agent sends once the host's first request arrived.
#[derive(Clone, Debug)]
enum Hostile {
    /// These bytes, then it keeps the connection open and silent.
    Bytes(Vec<u8>),
    /// These bytes, then it hangs up.
    BytesThenClose(Vec<u8>),
}

async fn fake_agent(behaviour: Hostile) -> (tempfile::TempDir, AgentEndpoint) {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("vm.vsock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let behaviour = behaviour.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let mut s = reader.into_inner();
                if s.write_all(b"OK 1\n").await.is_err() {
                    return;
                }
                // Wait for the host's request before answering it.
                let mut req = [0u8; 10];
                if s.read_exact(&mut req).await.is_err() {
                    return;
                }
                match behaviour {
                    Hostile::Bytes(b) => {
                        let _ = s.write_all(&b).await;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    Hostile::BytesThenClose(b) => {
                        let _ = s.write_all(&b).await;
                    }
                }
            });
        }
    });
    let endpoint = AgentEndpoint::HybridVsock { path, port: 1024 };
    (dir, endpoint)
}

const DEADLINE: Duration = Duration::from_secs(2);

/// Connects (dial + Health.Check) to a hostile agent: it must fail, within the deadline.
async fn must_fail(behaviour: Hostile) -> (ClientError, Duration) {
    let (_dir, endpoint) = fake_agent(behaviour.clone()).await;
    let t0 = Instant::now();
    let res = AgentClient::connect_with(&endpoint, DEADLINE, Backoff::default()).await;
    let took = t0.elapsed();
    let Err(err) = res else {
        panic!("a hostile agent was accepted");
    };
    assert!(
        took < DEADLINE + Duration::from_secs(1),
        "the call was held for {took:?}"
    );
    (err, took)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_oversized_answer_is_discarded_not_buffered() {
    // 64 MiB announced and sent: the client must discard it in small pieces.
    let len: u32 = 64 << 20;
    let mut bytes = frame_header(len, 1);
    bytes.resize(bytes.len() + len as usize, 0xab);
    let before = rss_kib();
    let (err, _) = must_fail(Hostile::Bytes(bytes)).await;
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    // The fake agent's own copy of the 64 MiB lives in this process too: allow for it.
    assert!(grown_mib < 64 + 32, "the host grew by {grown_mib} MiB");
    assert!(
        matches!(err, ClientError::Rpc { rpc: "Check", .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_huge_length_never_sent_ends_at_the_deadline() {
    let (err, took) = must_fail(Hostile::Bytes(frame_header(u32::MAX, 1))).await;
    assert!(matches!(err, ClientError::Rpc { .. }), "{err}");
    assert!(took >= DEADLINE / 2, "{took:?}");
}

#[tokio::test]
async fn a_silent_agent_ends_at_the_deadline() {
    let (err, _) = must_fail(Hostile::Bytes(Vec::new())).await;
    assert!(matches!(err, ClientError::Rpc { .. }), "{err}");
}

#[tokio::test]
async fn a_hang_up_mid_frame_fails_at_once() {
    let mut bytes = frame_header(100, 1);
    bytes.extend_from_slice(b"partial");
    let (err, took) = must_fail(Hostile::BytesThenClose(bytes)).await;
    assert!(matches!(err, ClientError::Rpc { .. }), "{err}");
    assert!(
        took < DEADLINE,
        "a closed stream is not a timeout: {took:?}"
    );
}

#[tokio::test]
async fn an_answer_that_is_not_the_message_fails() {
    let body = vec![0xff; 32];
    let mut bytes = frame_header(body.len() as u32, 1);
    bytes.extend_from_slice(&body);
    let (err, _) = must_fail(Hostile::BytesThenClose(bytes)).await;
    assert!(matches!(err, ClientError::Rpc { .. }), "{err}");
}

proptest! {
    // Each case dials a fake agent; a few dozen random streams are enough to shake the decoder.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn random_answers_fail_within_the_deadline(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        close in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let behaviour = if close { Hostile::BytesThenClose(bytes) } else { Hostile::Bytes(bytes) };
        rt.block_on(async {
            let (_dir, endpoint) = fake_agent(behaviour.clone()).await;
            let t0 = Instant::now();
            let res = AgentClient::connect_with(
                &endpoint,
                Duration::from_millis(500),
                Backoff::default(),
            )
            .await;
            prop_assert!(res.is_err(), "{:?} was accepted", behaviour);
            let took = t0.elapsed();
            prop_assert!(took < Duration::from_millis(1500), "{:?}: {:?}", behaviour, took);
            Ok(())
        })?;
    }
}
