//! `kubectl port-forward` (CRI PortForward) to a pod, under isola and side by side under runc:
//! a server listening on the pod's localhost only and one on every address, transfers of
//! megabytes both ways, several forwards at once, and a port nothing listens on, which fails
//! cleanly ("connection refused") and leaves nothing behind.

use anyhow::{ensure, Result};
use isola_tests::cri::{ContainerOptions, CriEnv, Pod, PodOptions, ISOLA, RUNC};

/// The servers: busybox httpd on 127.0.0.1:8080 only (an index and a large file), and echo
/// servers (nc running cat for each connection) on every address, ports 9000 to 9003. busybox
/// nc listens with a backlog of one, so connections arriving together at one nc can be reset by
/// the pod's own kernel (under runc too); the concurrent forwards each get their own port, and
/// the concurrent GETs go to httpd, whose backlog is larger.
const SERVERS: &str = "mkdir -p /www && echo hello-from-the-pod > /www/index.html && \
     seq 1 300000 > /www/big && \
     (httpd -f -p 127.0.0.1:8080 -h /www &) && \
     for p in 9000 9001 9002 9003; do (nc -ll -p $p -e cat &); done && \
     trap 'exit 0' TERM; while :; do sleep 1; done";
const HTTP_PORT: u16 = 8080;
const ECHO_PORTS: [u16; 4] = [9000, 9001, 9002, 9003];
const CLOSED_PORT: u16 = 9999;

/// What `seq 1 300000` writes.
fn big_file() -> Vec<u8> {
    (1..=300_000)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Bytes that are not all alike (so that a shifted or partial echo shows).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

async fn get(cri: &CriEnv, pod: &Pod, path: &str) -> Result<Vec<u8>> {
    let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").into_bytes();
    let out = cri.port_forward(&pod.id, HTTP_PORT, req, None).await?;
    ensure!(out.error.is_empty(), "GET {path}: {}", out.error);
    let head_end = out
        .data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            anyhow::anyhow!(
                "GET {path}: no HTTP head in {:?}",
                String::from_utf8_lossy(&out.data)
            )
        })?;
    ensure!(
        out.data.starts_with(b"HTTP/1.1 200") || out.data.starts_with(b"HTTP/1.0 200"),
        "GET {path}: {:?}",
        String::from_utf8_lossy(&out.data[..head_end])
    );
    Ok(out.data[head_end + 4..].to_vec())
}

async fn echo(cri: &CriEnv, pod: &Pod, port: u16, data: Vec<u8>) -> Result<Vec<u8>> {
    let n = data.len();
    let out = cri.port_forward(&pod.id, port, data, Some(n)).await?;
    ensure!(out.error.is_empty(), "echo: {}", out.error);
    Ok(out.data)
}

async fn start_servers(cri: &CriEnv, handler: &str) -> Result<Pod> {
    let pod = cri
        .run_pod(&format!("fwd-{handler}"), handler, PodOptions::default())
        .await?;
    let cid = cri
        .create_start_container(
            &pod,
            "servers",
            ContainerOptions::cmd(&["sh", "-c", SERVERS]),
        )
        .await?;
    // Listening before anything is forwarded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ls = cri.exec_ok(&cid, &["netstat", "-ltn"]).await?;
        if ls.contains("127.0.0.1:8080")
            && ECHO_PORTS.iter().all(|p| ls.contains(&format!(":{p} ")))
        {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{handler}: the servers never listened:\n{ls}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    Ok(pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_cri_port_forward_reaches_the_pods_localhost_like_runc() {
    let cri = CriEnv::start().await.expect("starting containerd");
    let result = port_forward(&cri).await;
    cri.check(result);
}

async fn port_forward(cri: &CriEnv) -> Result<()> {
    let big = big_file();
    for handler in [ISOLA, RUNC] {
        let pod = start_servers(cri, handler).await?;
        // A server on the pod's localhost only, small and large answers.
        let index = get(cri, &pod, "/index.html").await?;
        ensure!(
            index == b"hello-from-the-pod\n",
            "{handler}: {:?}",
            String::from_utf8_lossy(&index)
        );
        let got = get(cri, &pod, "/big").await?;
        ensure!(
            got.len() == big.len() && got == big,
            "{handler}: /big came back with {} of {} bytes",
            got.len(),
            big.len()
        );
        // Megabytes to the pod and back.
        let sent = pattern(1 << 20, 7);
        let back = echo(cri, &pod, ECHO_PORTS[0], sent.clone()).await?;
        ensure!(
            back == sent,
            "{handler}: the echo differs ({} of {} bytes)",
            back.len(),
            sent.len()
        );
        // Several forwards at once, each its own connection.
        let pod_ref = &pod;
        let many: Vec<_> = (0..4u8)
            .zip(ECHO_PORTS)
            .map(|(i, port)| {
                let data = pattern(64 << 10, i);
                async move { (data.clone(), echo(cri, pod_ref, port, data).await) }
            })
            .collect();
        for (i, (sent, back)) in futures::future::join_all(many)
            .await
            .into_iter()
            .enumerate()
        {
            ensure!(back? == sent, "{handler}: concurrent forward {i} differs");
        }
        // Several at once to one port.
        let gets = futures::future::join_all(
            ["/big", "/index.html", "/big", "/index.html"].map(|path| get(cri, pod_ref, path)),
        )
        .await;
        for (i, got) in gets.into_iter().enumerate() {
            let got = got?;
            let want: &[u8] = if i % 2 == 0 {
                &big
            } else {
                b"hello-from-the-pod\n"
            };
            ensure!(got == want, "{handler}: concurrent GET {i} differs");
        }
        // Nothing listens: the forward fails, with containerd's "connection refused".
        let closed = cri
            .port_forward(&pod.id, CLOSED_PORT, b"anyone?".to_vec(), None)
            .await?;
        ensure!(
            closed.data.is_empty(),
            "{handler}: data from a closed port: {closed:?}"
        );
        ensure!(
            closed.error.contains("connection refused"),
            "{handler}: {closed:?}"
        );
        cri.stop_and_remove_pod(&pod.id).await?;
        if handler == ISOLA {
            cri.assert_pod_gone(&pod.id).await;
        }
    }
    Ok(())
}
