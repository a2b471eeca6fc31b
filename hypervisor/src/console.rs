//! The guest serial console, kept on disk within a fixed size.
//!
//! The guest is untrusted and may print without end, so QEMU does not write the console to a
//! file itself (`-serial file:` grows without bound). QEMU writes it to its stdout, a pipe that
//! [`pump`] drains into `console.log`; when that file reaches the cap it becomes
//! `console.log.1` (replacing the previous one) and a new `console.log` starts. At most twice
//! the cap is ever on disk, and the latest output (what explains a crash) is always kept.
//! The pipe is always drained, so a chatty guest never blocks on its serial port.

use std::path::{Path, PathBuf};

use tokio::fs::File;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Default cap of one console log file.
pub const DEFAULT_CONSOLE_LOG_MAX: u64 = 1024 * 1024;

/// The rotated-out previous file for `log`.
pub fn rotated(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Copies `src` into `log` until EOF, rotating at `max` bytes. Write errors stop the copying
/// to disk but not the draining.
pub async fn pump(mut src: impl AsyncRead + Unpin, log: PathBuf, max: u64) {
    let mut file = match File::create(&log).await {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = %log.display(), error = %e, "cannot create the console log; discarding console output");
            None
        }
    };
    let mut written: u64 = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            let Some(f) = file.as_mut() else { break };
            let room = usize::try_from(max.saturating_sub(written)).unwrap_or(usize::MAX);
            if room == 0 {
                let _ = f.flush().await;
                file = rotate(&log).await;
                written = 0;
                continue;
            }
            let take = room.min(chunk.len());
            if f.write_all(&chunk[..take]).await.is_err() {
                file = None;
                break;
            }
            written += take as u64;
            chunk = &chunk[take..];
        }
    }
    if let Some(mut f) = file {
        let _ = f.flush().await;
    }
}

async fn rotate(log: &Path) -> Option<File> {
    if let Err(e) = tokio::fs::rename(log, rotated(log)).await {
        tracing::warn!(path = %log.display(), error = %e, "rotating the console log failed");
    }
    File::create(log).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotates_and_keeps_the_latest_within_twice_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut input = Vec::new();
        for i in 0..10_000 {
            input.extend_from_slice(format!("line {i:05}\n").as_bytes());
        }
        pump(&input[..], log.clone(), 1000).await;
        let cur = std::fs::read_to_string(&log).unwrap();
        let old = std::fs::read_to_string(rotated(&log)).unwrap();
        assert!(
            cur.len() as u64 <= 1000 && old.len() == 1000,
            "{} {}",
            cur.len(),
            old.len()
        );
        assert!(cur.ends_with("line 09999\n"), "the latest output is kept");
        // Nothing lost at the seam between the two files.
        let both = old + &cur;
        assert!(input.ends_with(both.as_bytes()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[tokio::test]
    async fn small_output_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        pump(&b"hello\n"[..], log.clone(), 1000).await;
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "hello\n");
        assert!(!rotated(&log).exists());
    }
}
