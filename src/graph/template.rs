//! Key templates: `product:{id}`, `category:{category_id}:products`.
//! `{{` and `}}` stand for literal braces. Parsing and the canonical text of
//! values live in the cdc-keys crate (crates/cdc-keys), which the Rust
//! reader uses too; this module renders a template from a row image.

use std::fmt;

use serde_json::Value;

use crate::event::{Row, UNAVAILABLE_VALUE};

/// A key template as the daemon uses it: the parsing is cdc-keys's, shared
/// with the Rust reader; this adds rendering from a row image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(cdc_keys::Template);

pub use cdc_keys::{canonical_number, escape, TemplateError};

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
        cdc_keys::Template::parse(text).map(Template)
    }

    pub(crate) fn text(&self) -> &str {
        self.0.text()
    }

    pub(crate) fn columns(&self) -> impl Iterator<Item = &str> {
        self.0.columns()
    }

    /// Renders from one row image. `Ok(None)`: a column is SQL NULL, so this
    /// image names no key (a product without a category is in no category list).
    pub fn render(&self, row: &Row) -> Result<Option<String>, RenderError> {
        self.0.render(|column| {
            let value = row.get(column).ok_or_else(|| RenderError::MissingColumn {
                column: column.to_owned(),
            })?;
            render_value(column, value)
        })
    }
}

/// The canonical text of one value (docs/key-rendering.md; vectors in
/// tests/vectors/keys.json). Every path (Debezium JSON, Debezium Avro, a
/// fan-out lookup row) hands over the JSON value Debezium's JsonConverter
/// would print; Debezium's TOAST placeholder is the daemon's to refuse, the
/// rest is cdc-keys's `render_json`.
fn render_value(column: &str, value: &Value) -> Result<Option<String>, RenderError> {
    if value.as_str() == Some(UNAVAILABLE_VALUE) {
        return Err(RenderError::Unavailable {
            column: column.to_owned(),
        });
    }
    cdc_keys::render_json(value).map_err(|why| RenderError::Unrenderable {
        column: column.to_owned(),
        kind: why.kind,
    })
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
