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
        while i < bytes.len() {
            match bytes[i] {
                b'{' if bytes.get(i + 1) == Some(&b'{') => {
                    literal.push('{');
                    i += 2;
                }
                b'}' if bytes.get(i + 1) == Some(&b'}') => {
                    literal.push('}');
                    i += 2;
                }
                b'{' => {
                    let close = text[i..].find('}').ok_or(TemplateError::Unclosed(i))? + i;
                    let column = text[i + 1..close].trim();
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
                    // Copy one UTF-8 character.
                    let ch = text[i..].chars().next().expect("in bounds");
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

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
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

/// The canonical text of one value: integers without decoration, strings as
/// they are (decimals arrive as strings under `decimal.handling.mode=string`).
fn render_value(column: &str, value: &Value) -> Result<Option<String>, RenderError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s == UNAVAILABLE_VALUE => Err(RenderError::Unavailable {
            column: column.to_owned(),
        }),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i.to_string()))
            } else if let Some(u) = n.as_u64() {
                Ok(Some(u.to_string()))
            } else {
                // serde_json prints the shortest text that round-trips.
                Ok(Some(n.to_string()))
            }
        }
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
}
