//! Cache keys rendered exactly as the daemon renders its templates
//! (docs/key-rendering.md, vectors tests/vectors/keys.json): the template
//! syntax and the text of each value are the cdc-keys crate's, the code the
//! daemon itself runs. A reader that renders `product:{id}` differently
//! from the daemon reads a version record nobody bumps.

use std::fmt;

pub use cdc_keys::escape;

/// One typed column value, as the application holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyValue<'a> {
    /// `smallint`, `integer`, `bigint`; also `date` (days since 1970-01-01),
    /// `time` (µs since midnight) and `timestamp` (µs since the epoch).
    Int(i128),
    /// An integer beyond 128 bits, or already text: decimal digits with an
    /// optional `-`. Rendered without leading zeros, `-0` as `0`.
    IntText(&'a str),
    /// `double precision`.
    F64(f64),
    /// `real`: its shortest float32 digits (`0.1`, not `0.10000000149011612`).
    F32(f32),
    /// `numeric`/`decimal` as text in any notation (`12.50`, `1.5E+3`, as
    /// `BigDecimal::to_string` or Java's `toString` print it): rendered as
    /// Java's `BigDecimal.toPlainString`, scale kept (`12.50`, `1500`).
    Decimal(&'a str),
    Bool(bool),
    /// Text, `uuid` (lowercase) and `timestamptz` (`YYYY-MM-DDTHH:MM:SS.ffffffZ`,
    /// UTC): escaped.
    Text(&'a str),
    /// SQL NULL: the template names no key.
    Null,
}

impl From<i64> for KeyValue<'_> {
    fn from(v: i64) -> Self {
        KeyValue::Int(i128::from(v))
    }
}
impl From<i32> for KeyValue<'_> {
    fn from(v: i32) -> Self {
        KeyValue::Int(i128::from(v))
    }
}
impl From<u64> for KeyValue<'_> {
    fn from(v: u64) -> Self {
        KeyValue::Int(i128::from(v))
    }
}
impl From<bool> for KeyValue<'_> {
    fn from(v: bool) -> Self {
        KeyValue::Bool(v)
    }
}
impl<'a> From<&'a str> for KeyValue<'a> {
    fn from(v: &'a str) -> Self {
        KeyValue::Text(v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("template {template:?}: {error}")]
    Template {
        template: String,
        error: cdc_keys::TemplateError,
    },
    #[error("template {template:?}: no value for column {column:?}")]
    MissingColumn { template: String, column: String },
    #[error("column {column:?}: {text:?} is not an integer")]
    NotAnInteger { column: String, text: String },
    #[error("column {column:?}: {text:?} is not a decimal (or lies beyond PostgreSQL numeric's range)")]
    NotADecimal { column: String, text: String },
}

/// Why one value has no text: the column is named by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    NotAnInteger(String),
    NotADecimal(String),
}

/// The canonical text of one value; `None` for NULL.
pub fn render_value(value: &KeyValue<'_>) -> Result<Option<String>, ValueError> {
    Ok(Some(match *value {
        KeyValue::Null => return Ok(None),
        KeyValue::Int(i) => i.to_string(),
        KeyValue::IntText(text) => {
            cdc_keys::canonical_integer(text).ok_or_else(|| ValueError::NotAnInteger(text.to_owned()))?
        }
        KeyValue::F64(f) => cdc_keys::float64_text(f),
        KeyValue::F32(f) => cdc_keys::float32_text(f),
        KeyValue::Decimal(text) => {
            cdc_keys::plain_decimal(text).ok_or_else(|| ValueError::NotADecimal(text.to_owned()))?
        }
        KeyValue::Bool(b) => b.to_string(),
        KeyValue::Text(text) => escape(text),
    }))
}

/// A key template such as `category:{category_id}:products`; `{{` and `}}`
/// are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(cdc_keys::Template);

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, KeyError> {
        cdc_keys::Template::parse(text)
            .map(Template)
            .map_err(|error| KeyError::Template {
                template: text.to_owned(),
                error,
            })
    }

    /// Renders with the named values. `Ok(None)`: a value is NULL, the
    /// template names no key (as in the daemon).
    pub fn render(&self, values: &[(&str, KeyValue<'_>)]) -> Result<Option<String>, KeyError> {
        self.0.render(|column| {
            let value = values
                .iter()
                .find(|(name, _)| *name == column)
                .map(|(_, v)| v)
                .ok_or_else(|| KeyError::MissingColumn {
                    template: self.0.text().to_owned(),
                    column: column.to_owned(),
                })?;
            render_value(value).map_err(|e| match e {
                ValueError::NotAnInteger(text) => KeyError::NotAnInteger {
                    column: column.to_owned(),
                    text,
                },
                ValueError::NotADecimal(text) => KeyError::NotADecimal {
                    column: column.to_owned(),
                    text,
                },
            })
        })
    }
}

/// Renders `template` with `values` in one call: `key("product:{id}", &[("id", 42.into())])`.
pub fn key(template: &str, values: &[(&str, KeyValue<'_>)]) -> Result<Option<String>, KeyError> {
    Template::parse(template)?.render(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_like_the_daemon() {
        let k = |t: &str, v: &[(&str, KeyValue<'_>)]| key(t, v).unwrap();
        assert_eq!(
            k("category:{id}:products", &[("id", 3i64.into())]).as_deref(),
            Some("category:3:products")
        );
        assert_eq!(k("{{tag}}:{id}", &[("id", "a".into())]).as_deref(), Some("{tag}:a"));
        assert_eq!(
            k("pair:{a}:{b}", &[("a", "1".into()), ("b", "2:3".into())]).as_deref(),
            Some("pair:1:2%3A3")
        );
        assert_eq!(k("c:{p}", &[("p", KeyValue::Null)]), None);
        assert_eq!(k("größe:{ id }", &[("id", 1i64.into())]).as_deref(), Some("größe:1"));
        assert_eq!(
            k("f:{x}", &[("x", KeyValue::F64(f64::NEG_INFINITY))]).as_deref(),
            Some("f:-Infinity")
        );
        assert_eq!(k("f:{x}", &[("x", KeyValue::IntText("-000"))]).as_deref(), Some("f:0"));
    }

    #[test]
    fn template_errors_name_the_template() {
        let unclosed = Template::parse("p:{id").unwrap_err();
        assert!(matches!(
            unclosed,
            KeyError::Template {
                error: cdc_keys::TemplateError::Unclosed(2),
                ..
            }
        ));
        assert_eq!(unclosed.to_string(), "template \"p:{id\": unclosed `{` at byte 2");
        assert!(matches!(
            Template::parse("p:{}"),
            Err(KeyError::Template {
                error: cdc_keys::TemplateError::Empty(2),
                ..
            })
        ));
        let missing = key("p:{id}", &[]).unwrap_err().to_string();
        assert!(
            missing.contains("\"p:{id}\"") && missing.contains("\"id\""),
            "{missing}"
        );
        assert!(matches!(
            key("p:{id}", &[("id", KeyValue::IntText("1e3"))]),
            Err(KeyError::NotAnInteger { .. })
        ));
        assert!(matches!(
            key("p:{price}", &[("price", KeyValue::Decimal("12,50"))]),
            Err(KeyError::NotADecimal { .. })
        ));
    }

    #[test]
    fn a_decimal_in_exponent_form_renders_as_the_daemon_does() {
        let k = |text: &str| {
            key("p:{price}", &[("price", KeyValue::Decimal(text))])
                .unwrap()
                .unwrap()
        };
        assert_eq!(k("1E+3"), "p:1000");
        assert_eq!(k("1.5E-2"), "p:0.015");
        assert_eq!(k("12.50"), "p:12.50");
    }
}
