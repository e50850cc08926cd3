//! Key templates: `product:{id}`, `category:{category_id}:products`.
//! `{{` and `}}` stand for literal braces.

use std::fmt;

use serde_json::Value;

use crate::event::{Row, UNAVAILABLE_VALUE};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Column(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{` at byte {0}")]
    Unclosed(usize),
    #[error("empty `{{}}` at byte {0}")]
    Empty(usize),
    #[error("unmatched `}}` at byte {0} (write `}}}}` for a literal brace)")]
    Unmatched(usize),
}

/// Why one value could not become part of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// Debezium's TOAST placeholder: the value was not in the WAL record.
    Unavailable { column: String },
    /// The row has no such column.
    MissingColumn { column: String },
    /// A value with no canonical text form (object, array, non-finite number).
    Unrenderable { column: String, kind: &'static str },
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::Unavailable { column } => write!(
                f,
                "column {column:?} holds Debezium's unavailable-value placeholder (TOAST)"
            ),
            RenderError::MissingColumn { column } => {
                write!(f, "column {column:?} is not in the row image")
            }
            RenderError::Unrenderable { column, kind } => {
                write!(f, "column {column:?} holds a {kind}, which has no canonical key form")
            }
        }
    }
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while let Some(&byte) = bytes.get(i) {
            match byte {
                b'{' if bytes.get(i + 1) == Some(&b'{') => {
                    literal.push('{');
                    i += 2;
                }
                b'}' if bytes.get(i + 1) == Some(&b'}') => {
                    literal.push('}');
                    i += 2;
                }
                b'{' => {
                    // `i` is at an ASCII `{`, a character boundary, and so
                    // are `close` (an ASCII `}`) and `i + 1`.
                    let rest = text.get(i..).unwrap_or_default();
                    let close = rest.find('}').ok_or(TemplateError::Unclosed(i))? + i;
                    let column = text.get(i + 1..close).unwrap_or_default().trim();
                    if column.is_empty() {
                        return Err(TemplateError::Empty(i));
                    }
                    if column.contains('{') {
                        return Err(TemplateError::Unclosed(i));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Column(column.to_owned()));
                    i = close + 1;
                }
                b'}' => return Err(TemplateError::Unmatched(i)),
                _ => {
                    // Copy one UTF-8 character (`i` only ever moves by whole characters).
                    let Some(ch) = text.get(i..).and_then(|rest| rest.chars().next()) else {
                        break;
                    };
                    literal.push(ch);
                    i += ch.len_utf8();
                }
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            text: text.to_owned(),
            parts,
        })
    }

    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    pub(crate) fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Column(c) => Some(c.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Renders from one row image. `Ok(None)`: a column is SQL NULL, so this
    /// image names no key (a product without a category is in no category list).
    pub fn render(&self, row: &Row) -> Result<Option<String>, RenderError> {
        let mut out = String::with_capacity(self.text.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Column(column) => {
                    let value = row
                        .get(column)
                        .ok_or_else(|| RenderError::MissingColumn { column: column.clone() })?;
                    match render_value(column, value)? {
                        Some(text) => out.push_str(&text),
                        None => return Ok(None),
                    }
                }
            }
        }
        Ok(Some(out))
    }
}

/// The canonical text of one value (docs/key-rendering.md; vectors in
/// tests/vectors/keys.json). Every path (Debezium JSON, Debezium Avro, a
/// fan-out lookup row) hands over the JSON value Debezium's JsonConverter
/// would print, and this one function turns it into key text.
fn render_value(column: &str, value: &Value) -> Result<Option<String>, RenderError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s == UNAVAILABLE_VALUE => Err(RenderError::Unavailable {
            column: column.to_owned(),
        }),
        Value::String(s) => Ok(Some(escape(s))),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Number(n) => canonical_number(&n.to_string())
            .map(Some)
            .ok_or_else(|| RenderError::Unrenderable {
                column: column.to_owned(),
                kind: "number out of range",
            }),
        Value::Array(_) => Err(RenderError::Unrenderable {
            column: column.to_owned(),
            kind: "array",
        }),
        Value::Object(_) => Err(RenderError::Unrenderable {
            column: column.to_owned(),
            kind: "structure",
        }),
    }
}

/// A JSON number's canonical text. An integer literal is exact at any size
/// (`-0` is `0`). Anything else is a binary64 float printed as its shortest
/// round-trip digits in plain notation, integral values without a fraction
/// (`1024.0` is `1024`, `-0.0` is `0`, `1.0E10` is `10000000000`). `None`
/// for a value no float can hold (`1e400`).
pub fn canonical_number(text: &str) -> Option<String> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        let digits = unsigned.trim_start_matches('0');
        return Some(match (digits.is_empty(), text.starts_with('-')) {
            (true, _) => "0".to_owned(),
            (false, true) => format!("-{digits}"),
            (false, false) => digits.to_owned(),
        });
    }
    let f: f64 = text.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    Some(if f == 0.0 { "0".to_owned() } else { format!("{f}") })
}

/// Text values are percent-escaped where they could be mistaken for key
/// structure: `%` (the escape itself), `:` (the separator templates use),
/// `{` and `}` (template syntax), and control characters (U+0000..U+001F,
/// U+007F), each as `%XX` (uppercase hex of the byte). So `("1", "2:3")`
/// and `("1:2", "3")` render `1:2%3A3` and `1%3A2:3`. Everything else,
/// non-ASCII included, is kept as it is.
pub fn escape(text: &str) -> String {
    let reserved = |c: char| matches!(c, '%' | ':' | '{' | '}') || c.is_ascii_control();
    if !text.chars().any(reserved) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if reserved(c) {
            out.push_str(&format!("%{:02X}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Row {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn parses_columns_and_literals() {
        let t = Template::parse("category:{category_id}:products").unwrap();
        assert_eq!(t.columns().collect::<Vec<_>>(), vec!["category_id"]);
        assert_eq!(
            t.render(&row(json!({"category_id": 3}))).unwrap().as_deref(),
            Some("category:3:products")
        );
    }

    #[test]
    fn escaped_braces_are_literal() {
        let t = Template::parse("{{tag}}:{id}").unwrap();
        assert_eq!(t.render(&row(json!({"id": "a"}))).unwrap().as_deref(), Some("{tag}:a"));
    }

    #[test]
    fn parse_errors() {
        assert_eq!(Template::parse("p:{id").unwrap_err(), TemplateError::Unclosed(2));
        assert_eq!(Template::parse("p:{}").unwrap_err(), TemplateError::Empty(2));
        assert_eq!(Template::parse("p:}").unwrap_err(), TemplateError::Unmatched(2));
    }

    #[test]
    fn canonical_values() {
        let t = Template::parse("{a}|{b}|{c}|{d}|{e}|{f}").unwrap();
        let r = row(json!({"a": 42, "b": -7, "c": "12.50", "d": true, "e": 18446744073709551615u64, "f": 1.5}));
        assert_eq!(
            t.render(&r).unwrap().as_deref(),
            Some("42|-7|12.50|true|18446744073709551615|1.5")
        );
    }

    #[test]
    fn null_renders_no_key() {
        let t = Template::parse("category:{parent_id}").unwrap();
        assert_eq!(t.render(&row(json!({"parent_id": null}))).unwrap(), None);
    }

    #[test]
    fn placeholder_missing_and_structures_are_errors() {
        let t = Template::parse("p:{body}").unwrap();
        assert_eq!(
            t.render(&row(json!({"body": UNAVAILABLE_VALUE}))).unwrap_err(),
            RenderError::Unavailable { column: "body".into() }
        );
        assert_eq!(
            t.render(&row(json!({}))).unwrap_err(),
            RenderError::MissingColumn { column: "body".into() }
        );
        assert!(matches!(
            t.render(&row(json!({"body": {"scale": 2, "value": "AQ=="}}))),
            Err(RenderError::Unrenderable { .. })
        ));
    }

    #[test]
    fn utf8_literals_survive() {
        let t = Template::parse("größe:{id}").unwrap();
        assert_eq!(t.render(&row(json!({"id": 1}))).unwrap().as_deref(), Some("größe:1"));
    }

    #[test]
    fn numbers_are_canonical_and_exact() {
        let render = |text: &str| {
            let value: Value = serde_json::from_str(text).unwrap();
            render_value("c", &value).unwrap().unwrap()
        };
        assert_eq!(render("18446744073709551616"), "18446744073709551616");
        assert_eq!(render("18446744073709551617"), "18446744073709551617");
        assert_eq!(render("-0"), "0");
        assert_eq!(render("-0.0"), "0");
        assert_eq!(render("1024.0"), "1024");
        assert_eq!(render("1.0E10"), "10000000000");
        assert_eq!(render("0.1"), "0.1");
        assert!(render_value("c", &serde_json::from_str::<Value>("1e400").unwrap()).is_err());
    }

    #[test]
    fn reserved_characters_in_text_are_escaped() {
        let t = Template::parse("pair:{a}:{b}").unwrap();
        let one = t.render(&row(json!({"a": "1", "b": "2:3"}))).unwrap().unwrap();
        let two = t.render(&row(json!({"a": "1:2", "b": "3"}))).unwrap().unwrap();
        assert_eq!(one, "pair:1:2%3A3");
        assert_eq!(two, "pair:1%3A2:3");
        assert_eq!(escape("50%{x}\n\u{7f}é"), "50%25%7Bx%7D%0A%7Fé");
    }
}
