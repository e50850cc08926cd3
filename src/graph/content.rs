//! The content of a named invalidation (a logical-decoding message or an
//! outbox row), version 1, parsed and checked on its own; the graph then
//! checks its namespaces and rows against the configuration (`message`).
//! The format, for application teams: docs/readers.md, "Naming
//! invalidations".
//!
//! ```json
//! {"v":1,"keys":["product:42"],"namespaces":["category"],
//!  "rows":[{"entity":"public.products","row":{"id":42}}]}
//! ```

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::event::Row;

/// The content version this daemon reads.
pub const CONTENT_VERSION: u64 = 1;

/// Why a message was refused. The kind is the dead letter's `error_kind`
/// and the `kind` label of `cdc_invalidator_dead_letters_total{stage="message"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct MessageError {
    pub(crate) kind: MessageErrorKind,
    pub(crate) detail: String,
}

impl MessageError {
    pub(crate) fn new(kind: MessageErrorKind, detail: impl Into<String>) -> MessageError {
        MessageError {
            kind,
            detail: detail.into(),
        }
    }

    pub fn kind(&self) -> MessageErrorKind {
        self.kind
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageErrorKind {
    /// `pg_logical_emit_message(false, ...)`: delivered even when its
    /// transaction rolls back, so it proves nothing was committed.
    NotTransactional,
    /// Not UTF-8 JSON, or a field given twice.
    Malformed,
    /// A member of the wrong JSON type (a key that is not a string, ...).
    WrongType,
    UnknownField,
    /// `v` missing or not a version this daemon reads.
    BadVersion,
    /// An empty key, namespace or entity name.
    EmptyName,
    /// `epoch` or `ns:*`: the key protocol's own records.
    ReservedKey,
    /// Text no template renders (a control character, a brace, a bare `%`).
    InvalidKey,
    /// A namespace no entity or fan-out declares.
    UnknownNamespace,
    /// A row of a table with no `[[entity]]`.
    UnknownEntity,
    /// A row from which the entity's templates do not render exactly.
    UnrenderableRow,
    /// More keys, namespaces and rows than `max_keys_per_message`.
    TooManyKeys,
    /// No key, namespace or row at all.
    NamesNothing,
    /// An outbox row whose content column is missing, null or not text.
    MissingContent,
}

impl MessageErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            MessageErrorKind::NotTransactional => "not_transactional",
            MessageErrorKind::Malformed => "malformed",
            MessageErrorKind::WrongType => "wrong_type",
            MessageErrorKind::UnknownField => "unknown_field",
            MessageErrorKind::BadVersion => "bad_version",
            MessageErrorKind::EmptyName => "empty_name",
            MessageErrorKind::ReservedKey => "reserved_key",
            MessageErrorKind::InvalidKey => "invalid_key",
            MessageErrorKind::UnknownNamespace => "unknown_namespace",
            MessageErrorKind::UnknownEntity => "unknown_entity",
            MessageErrorKind::UnrenderableRow => "unrenderable_row",
            MessageErrorKind::TooManyKeys => "too_many_keys",
            MessageErrorKind::NamesNothing => "names_nothing",
            MessageErrorKind::MissingContent => "missing_content",
        }
    }
}

impl fmt::Display for MessageErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One content, parsed and checked on its own (the graph checks the
/// namespaces and rows against the configuration).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Content {
    pub keys: Vec<String>,
    pub namespaces: Vec<String>,
    /// (entity table, row image)
    pub rows: Vec<(String, Row)>,
}

/// Checks that `key` is a cache key the key protocol can render
/// (docs/key-rendering.md): not empty, not a reserved record, and none of
/// what rendering always escapes inside values and no sane template
/// contains (control characters, braces, a `%` that is not `%XX`). A brace
/// is most often a template that was never rendered (`product:{id}`).
pub fn check_key(key: &str) -> Result<(), MessageError> {
    if key.is_empty() {
        return Err(MessageError::new(MessageErrorKind::EmptyName, "an empty key"));
    }
    if key == "epoch" || key.starts_with("ns:") {
        return Err(MessageError::new(
            MessageErrorKind::ReservedKey,
            format!("key {key:?} is reserved by the key protocol (`epoch`, `ns:*`): name namespaces in `namespaces`"),
        ));
    }
    let bytes = key.as_bytes();
    for (at, c) in key.char_indices() {
        let problem = match c {
            c if c.is_ascii_control() => Some(format!(
                "control character U+{:04X} at byte {at} (rendering escapes it as %{:02X})",
                u32::from(c),
                u32::from(c)
            )),
            '{' | '}' => Some(format!(
                "{c:?} at byte {at}: a template that was not rendered? (rendering escapes braces in values)"
            )),
            '%' => {
                let hex = |i: usize| bytes.get(i).is_some_and(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
                (!(hex(at + 1) && hex(at + 2))).then(|| {
                    format!(
                        "'%' at byte {at} is not followed by two uppercase hex digits (rendering escapes '%' as %25)"
                    )
                })
            }
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(MessageError::new(
                MessageErrorKind::InvalidKey,
                format!("key {key:?}: {problem}"),
            ));
        }
    }
    Ok(())
}

/// Parses one content (version 1). Lists are read element by element and
/// counted as they are read, so a content naming more than `max_names`
/// stops there instead of being built in memory first.
pub fn parse_content(bytes: &[u8], max_names: usize) -> Result<Content, MessageError> {
    let problem = RefCell::new(None);
    let seed = ContentSeed {
        max_names,
        problem: &problem,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = seed.deserialize(&mut deserializer).and_then(|content| {
        deserializer.end()?;
        Ok(content)
    });
    match (parsed, problem.into_inner()) {
        // A problem the visitors found explains the error they returned.
        (_, Some(problem)) => Err(problem),
        (Ok(content), None) => Ok(content),
        (Err(e), None) => Err(match e.classify() {
            serde_json::error::Category::Data => MessageError::new(MessageErrorKind::WrongType, e.to_string()),
            _ => MessageError::new(MessageErrorKind::Malformed, format!("not JSON: {e}")),
        }),
    }
}

/// The visitors' shared state: the limit, and the first problem found
/// (the serde error they return only stops the parse).
struct ContentSeed<'a> {
    max_names: usize,
    problem: &'a RefCell<Option<MessageError>>,
}

impl ContentSeed<'_> {
    fn fail<E: de::Error>(&self, kind: MessageErrorKind, detail: String) -> E {
        let error = E::custom(&detail);
        self.problem.borrow_mut().get_or_insert(MessageError::new(kind, detail));
        error
    }
}

impl<'de> DeserializeSeed<'de> for ContentSeed<'_> {
    type Value = Content;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Content, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ContentSeed<'_> {
    type Value = Content;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object {\"v\": 1, \"keys\": [...], \"namespaces\": [...], \"rows\": [...]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Content, A::Error> {
        let mut content = Content::default();
        let mut version: Option<Value> = None;
        let mut seen: Vec<String> = Vec::new();
        let mut named = 0usize;
        while let Some(field) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if seen.iter().any(|s| *s == field) {
                return Err(self.fail(MessageErrorKind::Malformed, format!("field `{field}` is given twice")));
            }
            seen.push(field.clone().into_owned());
            match field.as_ref() {
                "v" => version = Some(map.next_value::<Value>()?),
                "keys" | "namespaces" => {
                    let list = map.next_value_seed(Names {
                        seed: &self,
                        field: if field == "keys" { "keys" } else { "namespaces" },
                        named: &mut named,
                    })?;
                    if field == "keys" {
                        content.keys = list;
                    } else {
                        content.namespaces = list;
                    }
                }
                "rows" => {
                    content.rows = map.next_value_seed(Rows {
                        seed: &self,
                        named: &mut named,
                    })?
                }
                other => {
                    return Err(self.fail(
                        MessageErrorKind::UnknownField,
                        format!("unknown field `{other}` (version 1 has `v`, `keys`, `namespaces`, `rows`)"),
                    ))
                }
            }
        }
        match version {
            Some(Value::Number(n)) if n.as_u64() == Some(CONTENT_VERSION) => {}
            Some(other) => {
                return Err(self.fail(
                    MessageErrorKind::BadVersion,
                    format!("`v` is {other}: this daemon reads version {CONTENT_VERSION}"),
                ))
            }
            None => {
                return Err(self.fail(
                    MessageErrorKind::BadVersion,
                    format!("no `v`: expected \"v\": {CONTENT_VERSION}"),
                ))
            }
        }
        if named == 0 {
            return Err(self.fail(MessageErrorKind::NamesNothing, "names no key, namespace or row".into()));
        }
        for key in &content.keys {
            if let Err(problem) = check_key(key) {
                return Err(self.fail(problem.kind, format!("keys: {}", problem.detail)));
            }
        }
        if content.namespaces.iter().any(String::is_empty) {
            return Err(self.fail(MessageErrorKind::EmptyName, "namespaces: an empty namespace".into()));
        }
        Ok(content)
    }
}

/// `keys` / `namespaces`: strings, counted against the limit as read.
struct Names<'s, 'a, 'n> {
    seed: &'s ContentSeed<'a>,
    field: &'static str,
    named: &'n mut usize,
}

impl<'de> DeserializeSeed<'de> for Names<'_, '_, '_> {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<String>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Names<'_, '_, '_> {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: an array of strings", self.field)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut names: Vec<String> = Vec::new();
        let mut index = 0usize;
        while let Some(name) = seq.next_element::<Value>().and_then(|element| match element {
            None => Ok(None),
            Some(Value::String(name)) => Ok(Some(name)),
            Some(other) => Err(self.seed.fail(
                MessageErrorKind::WrongType,
                format!("`{}[{index}]` is {other}, not a string", self.field),
            )),
        })? {
            *self.named += 1;
            if *self.named > self.seed.max_names {
                return Err(too_many(self.seed));
            }
            if !names.contains(&name) {
                names.push(name);
            }
            index += 1;
        }
        Ok(names)
    }
}

fn too_many<E: de::Error>(seed: &ContentSeed<'_>) -> E {
    seed.fail(
        MessageErrorKind::TooManyKeys,
        format!(
            "names more than {} keys, namespaces and rows ([messages] max_keys_per_message): name a namespace instead",
            seed.max_names
        ),
    )
}

/// `rows`: objects `{"entity": "<table>", "row": {...}}`, counted as read.
struct Rows<'s, 'a, 'n> {
    seed: &'s ContentSeed<'a>,
    named: &'n mut usize,
}

impl<'de> DeserializeSeed<'de> for Rows<'_, '_, '_> {
    type Value = Vec<(String, Row)>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Rows<'_, '_, '_> {
    type Value = Vec<(String, Row)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`rows`: an array of {\"entity\": ..., \"row\": {...}}")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut rows = Vec::new();
        let mut index = 0usize;
        loop {
            // Counted before the element is built.
            if *self.named >= self.seed.max_names {
                return match seq.next_element::<IgnoredAny>()? {
                    Some(_) => Err(too_many(self.seed)),
                    None => Ok(rows),
                };
            }
            let Some(element) = seq.next_element::<Value>()? else {
                return Ok(rows);
            };
            *self.named += 1;
            rows.push(named_row(self.seed, index, element)?);
            index += 1;
        }
    }
}

fn named_row<E: de::Error>(seed: &ContentSeed<'_>, index: usize, element: Value) -> Result<(String, Row), E> {
    let Value::Object(mut object) = element else {
        return Err(seed.fail(
            MessageErrorKind::WrongType,
            format!("`rows[{index}]` is not an object {{\"entity\": ..., \"row\": {{...}}}}"),
        ));
    };
    if let Some(other) = object.keys().find(|k| *k != "entity" && *k != "row") {
        return Err(seed.fail(
            MessageErrorKind::UnknownField,
            format!("unknown field `rows[{index}].{other}` (a row has `entity` and `row`)"),
        ));
    }
    let entity = match object.remove("entity") {
        Some(Value::String(entity)) if entity.is_empty() => {
            return Err(seed.fail(MessageErrorKind::EmptyName, format!("`rows[{index}].entity` is empty")))
        }
        Some(Value::String(entity)) => entity,
        Some(_) => {
            return Err(seed.fail(
                MessageErrorKind::WrongType,
                format!("`rows[{index}].entity` is not a string"),
            ))
        }
        None => {
            return Err(seed.fail(
                MessageErrorKind::WrongType,
                format!("`rows[{index}]` has no `entity` (the table, as in [[entity]] table)"),
            ))
        }
    };
    match object.remove("row") {
        Some(Value::Object(row)) => Ok((entity, row)),
        _ => Err(seed.fail(
            MessageErrorKind::WrongType,
            format!("`rows[{index}].row` is missing or not an object of columns"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kind(text: &str) -> MessageErrorKind {
        parse_content(text.as_bytes(), 10).unwrap_err().kind
    }

    #[test]
    fn a_full_content_parses_with_duplicates_dropped() {
        let content = parse_content(
            br#"{"v":1,"keys":["product:42","product:42","caf%C3%A9:1"],"namespaces":["category"],
                "rows":[{"entity":"public.products","row":{"id":42,"category_id":3}}]}"#,
            10,
        )
        .unwrap();
        assert_eq!(content.keys, vec!["product:42", "caf%C3%A9:1"]);
        assert_eq!(content.namespaces, vec!["category"]);
        assert_eq!(content.rows.len(), 1);
        assert_eq!(content.rows[0].0, "public.products");
        assert_eq!(content.rows[0].1["category_id"], json!(3));
        // Members in any order, `v` last included; non-ASCII kept.
        let content = parse_content(r#"{"keys":["Café crème:1"],"v":1}"#.as_bytes(), 10).unwrap();
        assert_eq!(content.keys, vec!["Café crème:1"]);
    }

    #[test]
    fn malformed_and_wrongly_typed_contents_are_refused_with_their_kind() {
        let cases: &[(&str, MessageErrorKind)] = &[
            ("", MessageErrorKind::Malformed),
            ("{oops", MessageErrorKind::Malformed),
            (r#"{"v":1,"keys":["a"]} trailing"#, MessageErrorKind::Malformed),
            (r#"{"v":1,"keys":["a"],"keys":["b"]}"#, MessageErrorKind::Malformed),
            ("[1,2]", MessageErrorKind::WrongType),
            ("42", MessageErrorKind::WrongType),
            (r#"{"v":1,"keys":[42]}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"keys":[null]}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"keys":[["nested"]]}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"keys":"product:1"}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"keys":null}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"namespaces":{"a":1}}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"rows":[42]}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"rows":[{"entity":"t"}]}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"rows":[{"row":{"id":1}}]}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"rows":[{"entity":7,"row":{}}]}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"keys":["a"],"extra":true}"#, MessageErrorKind::UnknownField),
            (
                r#"{"v":1,"rows":[{"entity":"t","row":{},"op":"c"}]}"#,
                MessageErrorKind::UnknownField,
            ),
            (r#"{"keys":["a"]}"#, MessageErrorKind::BadVersion),
            (r#"{"v":2,"keys":["a"]}"#, MessageErrorKind::BadVersion),
            (r#"{"v":"1","keys":["a"]}"#, MessageErrorKind::BadVersion),
            (r#"{"v":1.0,"keys":["a"]}"#, MessageErrorKind::BadVersion),
            (r#"{"v":[1],"keys":["a"]}"#, MessageErrorKind::BadVersion),
            (r#"{"v":1}"#, MessageErrorKind::NamesNothing),
            (
                r#"{"v":1,"keys":[],"namespaces":[],"rows":[]}"#,
                MessageErrorKind::NamesNothing,
            ),
            (r#"{"v":1,"keys":[""]}"#, MessageErrorKind::EmptyName),
            (r#"{"v":1,"namespaces":[""]}"#, MessageErrorKind::EmptyName),
            (
                r#"{"v":1,"rows":[{"entity":"","row":{}}]}"#,
                MessageErrorKind::EmptyName,
            ),
            (r#"{"v":1,"keys":["epoch"]}"#, MessageErrorKind::ReservedKey),
            (r#"{"v":1,"keys":["ns:product"]}"#, MessageErrorKind::ReservedKey),
            (r#"{"v":1,"keys":["product:{id}"]}"#, MessageErrorKind::InvalidKey),
            (r#"{"v":1,"keys":["a\u0000b"]}"#, MessageErrorKind::InvalidKey),
            (r#"{"v":1,"keys":["line\nbreak"]}"#, MessageErrorKind::InvalidKey),
            (r#"{"v":1,"keys":["100%"]}"#, MessageErrorKind::InvalidKey),
            (r#"{"v":1,"keys":["a%3a"]}"#, MessageErrorKind::InvalidKey),
        ];
        for (text, expected) in cases {
            assert_eq!(kind(text), *expected, "{text}");
        }
        // Not UTF-8.
        assert_eq!(
            parse_content(b"{\"v\":1,\"keys\":[\"\xff\"]}", 10).unwrap_err().kind,
            MessageErrorKind::Malformed
        );
    }

    #[test]
    fn every_error_names_what_is_wrong() {
        let error = parse_content(br#"{"v":1,"keys":["ok",7]}"#, 10).unwrap_err();
        assert!(error.detail.contains("keys[1]"), "{error}");
        let error = parse_content(br#"{"v":1,"keys":["product:{id}"]}"#, 10).unwrap_err();
        assert!(
            error.detail.contains("product:{id}") && error.detail.contains("not rendered"),
            "{error}"
        );
        assert_eq!(error.to_string(), format!("invalid_key: {}", error.detail));
    }

    #[test]
    fn the_limit_counts_keys_namespaces_and_rows_together() {
        let at_limit = r#"{"v":1,"keys":["a","b"],"namespaces":["n"],"rows":[{"entity":"t","row":{}}]}"#;
        assert_eq!(parse_content(at_limit.as_bytes(), 4).unwrap().keys.len(), 2);
        assert_eq!(
            parse_content(at_limit.as_bytes(), 3).unwrap_err().kind,
            MessageErrorKind::TooManyKeys
        );
        // Duplicates count: the limit bounds the work, not the result.
        assert_eq!(
            parse_content(br#"{"v":1,"keys":["a","a","a"]}"#, 2).unwrap_err().kind,
            MessageErrorKind::TooManyKeys
        );
    }

    #[test]
    fn a_huge_list_stops_at_the_limit_before_anything_else_is_read() {
        // A million keys, then malformed JSON: the limit is what is reported.
        let mut text = String::from(r#"{"v":1,"keys":["#);
        for i in 0..1_000_000 {
            text.push_str(&format!("\"k{i}\","));
        }
        text.push_str("oops");
        let error = parse_content(text.as_bytes(), 1000).unwrap_err();
        assert_eq!(error.kind, MessageErrorKind::TooManyKeys, "{error}");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!(
            r#"{{"v":1,"rows":[{{"entity":"t","row":{{"id":{}1{}}}}}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse_content(deep.as_bytes(), 10).is_err());
        let deep_v = format!(
            r#"{{"v":{}1{},"keys":["a"]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            parse_content(deep_v.as_bytes(), 10).unwrap_err().kind,
            MessageErrorKind::Malformed
        );
    }

    #[test]
    fn keys_follow_the_key_protocol() {
        for ok in [
            "product:42",
            "pair:1:2%3A3",
            "caf%C3%A9",
            "Café crème",
            "a b",
            "x%25y",
            "ns",
            "epochs",
            "n:s:x",
        ] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        for (bad, expected) in [
            ("", MessageErrorKind::EmptyName),
            ("epoch", MessageErrorKind::ReservedKey),
            ("ns:", MessageErrorKind::ReservedKey),
            ("ns:category", MessageErrorKind::ReservedKey),
            ("a}b", MessageErrorKind::InvalidKey),
            ("tab\there", MessageErrorKind::InvalidKey),
            ("del\u{7f}", MessageErrorKind::InvalidKey),
            ("%", MessageErrorKind::InvalidKey),
            ("%4", MessageErrorKind::InvalidKey),
            ("%zz", MessageErrorKind::InvalidKey),
        ] {
            assert_eq!(check_key(bad).unwrap_err().kind, expected, "{bad:?}");
        }
    }
}
