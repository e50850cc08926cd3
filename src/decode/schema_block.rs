//! The JsonConverter schema block, stepped over without parsing it again.
//!
//! With `schemas.enable=true` every key and value is
//! `{"schema":S,"payload":P}`, and Debezium writes the same text `S` for
//! every record of a table: most of the record's bytes, and all decode takes
//! from it is its `name`. So the last block seen on each topic (one for keys,
//! one for values) is kept, with its name, once a record carrying it has
//! been parsed; a later record whose bytes hold the same block at the same
//! place is split by comparing bytes, and only `P` is parsed. Identical
//! bytes at the same place parse the same way, so the block is checked
//! exactly as before, once.
//!
//! The cache is per thread (nothing shared between routing threads, no
//! lock) and only ever changes how fast a record decodes, never what it
//! decodes to.

use std::cell::RefCell;
use std::collections::HashMap;

/// How every cached record begins: the wrapper, compact, schema first.
const HEAD: &[u8] = b"{\"schema\":";
/// What follows the schema block in a cached record.
const PAYLOAD_MEMBER: &[u8] = b",\"payload\":";

/// Topics remembered per thread; past it the cache starts afresh (a
/// daemon reads a bounded set of topics, this only bounds a pathological one).
const MAX_TOPICS: usize = 1024;

/// A schema block seen on a topic, and its name.
struct Block {
    text: Box<[u8]>,
    name: Option<String>,
}

/// Which part of a record a block wraps: keys and values have their own.
#[derive(Clone, Copy)]
pub(super) enum Part {
    Key,
    Value,
}

/// The blocks last seen, per topic, of keys and of values.
#[derive(Default)]
struct Blocks {
    keys: HashMap<String, Block>,
    values: HashMap<String, Block>,
}

impl Blocks {
    fn of(&mut self, part: Part) -> &mut HashMap<String, Block> {
        match part {
            Part::Key => &mut self.keys,
            Part::Value => &mut self.values,
        }
    }
}

thread_local! {
    static BLOCKS: RefCell<Blocks> = RefCell::new(Blocks::default());
}

/// A record split at its cached schema block.
pub(super) struct Split<'b> {
    /// The block's `name`, as the record's first decode read it.
    pub(super) name: Option<String>,
    /// The payload member's value, up to the record's closing brace
    /// (whitespace around it included).
    pub(super) payload: &'b [u8],
}

/// The record split at the block last remembered for `topic`, when it holds
/// exactly that block as its first member, then `payload` as its second and
/// last, and ends with a closing brace. `None` otherwise.
pub(super) fn split<'b>(part: Part, topic: &str, bytes: &'b [u8]) -> Option<Split<'b>> {
    let rest = bytes.strip_prefix(HEAD)?;
    let end = bytes.trim_ascii_end();
    let body = end.strip_suffix(b"}")?;
    BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        let block = blocks.of(part).get(topic)?;
        let after = rest.strip_prefix(&*block.text)?;
        let payload_at = bytes.len() - after.len() + PAYLOAD_MEMBER.len();
        after.starts_with(PAYLOAD_MEMBER).then_some(())?;
        Some(Split {
            name: block.name.clone(),
            payload: body.get(payload_at..)?,
        })
    })
}

/// Remembers the schema block of a key or value that parsed without an
/// error as the JsonConverter wrapper (so its JSON is valid), when it
/// begins as cached ones do.
pub(super) fn remember(part: Part, topic: &str, bytes: &[u8], name: Option<&str>) {
    let Some(rest) = bytes.strip_prefix(HEAD) else {
        return;
    };
    let Some(len) = value_len(rest) else {
        return;
    };
    let Some(text) = rest.get(..len) else {
        return;
    };
    if !rest.get(len..).is_some_and(|after| after.starts_with(PAYLOAD_MEMBER)) {
        return;
    }
    BLOCKS.with(|blocks| {
        let mut all = blocks.borrow_mut();
        let blocks = all.of(part);
        if blocks.len() >= MAX_TOPICS && !blocks.contains_key(topic) {
            blocks.clear();
        }
        blocks.insert(
            topic.to_owned(),
            Block {
                text: text.into(),
                name: name.map(str::to_owned),
            },
        );
    });
}

/// The length of the JSON value `text` begins with, which must be valid
/// JSON (it has been parsed): strings, with their escapes, are stepped over
/// whole, so brackets inside them do not count.
fn value_len(text: &[u8]) -> Option<usize> {
    let first = *text.first()?;
    if first != b'{' && first != b'[' {
        // Only an object or array is worth caching (a scalar block is short).
        return None;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (at, &b) in text.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(at + 1);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_len_steps_over_strings_and_escapes() {
        assert_eq!(value_len(br#"{"a":"}]"}, rest"#), Some(10));
        assert_eq!(value_len(br#"[{"a":"\"}"},[]],x"#), Some(16));
        assert_eq!(value_len(br#"{"a\\":{}}}"#), Some(10));
        assert_eq!(value_len(b"\"text\""), None);
        assert_eq!(value_len(b"{\"open\":["), None);
    }

    #[test]
    fn a_record_splits_only_at_the_block_remembered_for_its_topic() {
        let topic = "schema_block.test.split";
        let first = br#"{"schema":{"type":"struct","name":"shop.Envelope"},"payload":{"op":"c"}}"#;
        assert!(split(Part::Value, topic, first).is_none(), "nothing remembered yet");
        remember(Part::Value, topic, first, Some("shop.Envelope"));
        let next = br#"{"schema":{"type":"struct","name":"shop.Envelope"},"payload":{"op":"u","x":"}"}}  "#;
        let hit = split(Part::Value, topic, next).unwrap();
        assert!(split(Part::Key, topic, next).is_none(), "keys have their own blocks");
        assert_eq!(hit.name.as_deref(), Some("shop.Envelope"));
        assert_eq!(hit.payload, br#"{"op":"u","x":"}"}"#);
        // Another block, another member order, another topic: no split.
        for other in [
            &br#"{"schema":{"type":"struct","name":"shop.Other"},"payload":{}}"#[..],
            br#"{"payload":{},"schema":{"type":"struct","name":"shop.Envelope"}}"#,
            br#"{"schema":{"type":"struct","name":"shop.Envelope"},"extra":1}"#,
        ] {
            assert!(
                split(Part::Value, topic, other).is_none(),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        // A truncated record splits, and its payload does not parse: the
        // whole record is parsed then, and refused as before.
        let truncated = br#"{"schema":{"type":"struct","name":"shop.Envelope"},"payload":{}"#;
        assert_eq!(split(Part::Value, topic, truncated).unwrap().payload, b"{");
        assert!(split(Part::Value, "schema_block.test.other", next).is_none());
    }
}
