//! Mapping between byte offsets in a TOML document, line:column positions,
//! and dotted key paths, so that errors can name the key and its line.
//!
//! The TOML deserializer reports errors with a byte span but without the path
//! of the key. To recover it, the document is parsed a second time into a
//! tree of tables whose keys carry their spans ([`toml::Spanned`]). In TOML a
//! value always directly follows its key, and a scalar or array value contains
//! no keys, so the key an error is about is the last key that starts at or
//! before the error's offset. (Values themselves are not spanned: tables made
//! implicitly by dotted keys or `[a.b]` headers have no span.)

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// 1-based (line, column) of byte `offset` in `text`; the column counts
/// characters, not bytes. Offsets past the end are clamped.
pub(crate) fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    (clamp(line), clamp(col))
}

/// A TOML value with spans on every key; only tables are kept structurally,
/// everything else is a leaf.
#[derive(Debug)]
enum Node {
    Table(Vec<(Spanned<String>, Node)>),
    Leaf,
}

/// Every key of the document as (dotted path, span of the key itself).
fn keys(text: &str) -> Option<Vec<(String, Range<usize>)>> {
    fn walk(node: &Node, prefix: &str, out: &mut Vec<(String, Range<usize>)>) {
        let Node::Table(entries) = node else {
            return;
        };
        for (key, value) in entries {
            let path = if prefix.is_empty() {
                key.get_ref().clone()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            walk(value, &path, out);
            out.push((path, key.span()));
        }
    }
    let root: Node = toml::from_str(text).ok()?;
    let mut out = Vec::new();
    walk(&root, "", &mut out);
    Some(out)
}

/// The dotted path (e.g. `hypervisor.vcpus`) of the key that the byte at
/// `offset` belongs to: the key itself, or its value.
pub(crate) fn key_at(text: &str, offset: usize) -> Option<String> {
    match keys(text) {
        Some(keys) => keys
            .into_iter()
            .filter(|(_, span)| span.start <= offset)
            .max_by_key(|(_, span)| span.start)
            .map(|(path, _)| path),
        None => key_at_textually(text, offset),
    }
}

/// Fallback of [`key_at`] for documents the span tree cannot represent
/// (e.g. a datetime value): the bare key before `=` on the offset's line,
/// prefixed with the closest `[table]` header above it.
fn key_at_textually(text: &str, offset: usize) -> Option<String> {
    let line = usize::try_from(line_col(text, offset).0).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let key = lines.get(line - 1)?.split_once('=')?.0.trim();
    if key.is_empty() || key.contains(['[', '"', '\'']) {
        return None;
    }
    let header = lines[..line - 1].iter().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix('[')?.split(']').next().map(str::trim)
    });
    Some(match header {
        Some(h) if !h.is_empty() => format!("{}.{key}", h.trim_start_matches('[').trim()),
        _ => key.to_owned(),
    })
}

/// The span of the dotted `key` (the key itself), if it is present in `text`.
pub(crate) fn span_of(text: &str, key: &str) -> Option<Range<usize>> {
    keys(text)?
        .into_iter()
        .find(|(path, _)| path == key)
        .map(|(_, span)| span)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Node::Leaf)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Node::Table(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_lines_and_chars() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(line_col(text, 9), (2, 3));
        assert_eq!(line_col(text, 1000), (3, 1));
        // Inside a multi-byte char: clamps back to its start.
        assert_eq!(line_col(text, 8), (2, 2));
    }

    #[test]
    fn key_at_finds_keys_values_and_headers() {
        let text = "[hypervisor]\nvcpus = 2\n\n[hypervisor.extra]\nx = \"y\"\n[agent]\nlog_level = \"info\"\n";
        let at = |needle: &str| key_at(text, text.find(needle).unwrap());
        assert_eq!(at("vcpus").as_deref(), Some("hypervisor.vcpus"));
        assert_eq!(at("2").as_deref(), Some("hypervisor.vcpus"));
        assert_eq!(at("extra").as_deref(), Some("hypervisor.extra"));
        assert_eq!(at("\"y\"").as_deref(), Some("hypervisor.extra.x"));
        assert_eq!(at("\"info\"").as_deref(), Some("agent.log_level"));
        assert_eq!(key_at("a = [1, 2]", 6).as_deref(), Some("a"));
        assert_eq!(key_at("a = {b = 1}", 5).as_deref(), Some("a.b"));
        assert_eq!(key_at("not toml [", 0), None);
        // Implicit tables from dotted keys have no span of their own.
        let text = "agent.dial_timeout_ms = 1\nagent.log_level = \"x\"\n";
        let at = |needle: &str| key_at(text, text.find(needle).unwrap());
        assert_eq!(at("\"x\"").as_deref(), Some("agent.log_level"));
        assert_eq!(at("1").as_deref(), Some("agent.dial_timeout_ms"));
    }

    #[test]
    fn key_at_falls_back_to_the_text_for_datetimes() {
        let text = "[hypervisor]\nvcpus = 1979-05-27\n";
        assert_eq!(key_at(text, 21).as_deref(), Some("hypervisor.vcpus"));
        assert_eq!(key_at("when = 1979-05-27", 8).as_deref(), Some("when"));
    }

    #[test]
    fn span_of_finds_nested_values() {
        let text = "[hypervisor]\nvcpus = 300\n";
        let span = span_of(text, "hypervisor.vcpus").unwrap();
        assert_eq!(&text[span], "vcpus");
        assert_eq!(span_of(text, "hypervisor.memory_mib"), None);
        assert_eq!(span_of(text, "agent.log_level"), None);
    }
}
