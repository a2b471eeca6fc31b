//! Reading the end of a guest console log. The guest writes that file, so it is untrusted:
//! read at most a bounded tail, never the whole file.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The last `max` bytes of `path` as text (lossy), starting at a line boundary when possible.
/// Empty when the file cannot be read.
pub fn tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::with_capacity(max.min(len) as usize);
    if file.take(max).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    match (start > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_string(),
        _ => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_tail_from_a_line_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let mut text = String::new();
        for i in 0..1000 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&p, &text).unwrap();
        let t = tail(&p, 64);
        assert!(t.len() <= 64);
        assert!(t.starts_with("line "), "{t:?}");
        assert!(t.ends_with("line 999\n"));
        assert_eq!(tail(&dir.path().join("none"), 64), "");
        std::fs::write(&p, "short\n").unwrap();
        assert_eq!(tail(&p, 64), "short\n");
    }
}
