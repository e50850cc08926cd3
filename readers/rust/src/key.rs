//! Cache keys rendered exactly as the daemon renders its templates
//! (docs/key-rendering.md; the daemon's code is src/graph/template.rs, the
//! vectors tests/vectors/keys.json). A reader that renders `product:{id}`
//! differently from the daemon reads a version record nobody bumps.

use std::fmt;

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
    /// `numeric`/`decimal` in Java's `BigDecimal.toPlainString` form, scale
    /// kept (`12.50`): the application passes the text it has.
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
    #[error("template {template:?}: unclosed `{{` at byte {at}")]
    Unclosed { template: String, at: usize },
    #[error("template {template:?}: empty `{{}}` at byte {at}")]
    Empty { template: String, at: usize },
    #[error("template {template:?}: unmatched `}}` at byte {at} (write `}}}}` for a literal brace)")]
    Unmatched { template: String, at: usize },
    #[error("template {template:?}: no value for column {column:?}")]
    MissingColumn { template: String, column: String },
    #[error("column {column:?}: {text:?} is not an integer")]
    NotAnInteger { column: String, text: String },
}

/// The canonical text of one value; `None` for NULL.
pub fn render_value(value: &KeyValue<'_>) -> Result<Option<String>, String> {
    Ok(Some(match *value {
        KeyValue::Null => return Ok(None),
        KeyValue::Int(i) => i.to_string(),
        KeyValue::IntText(text) => canonical_integer(text).ok_or_else(|| text.to_owned())?,
        KeyValue::F64(f) => float_text(f, f.to_string()),
        KeyValue::F32(f) => float_text(f64::from(f), f.to_string()),
        KeyValue::Decimal(text) => text.to_owned(),
        KeyValue::Bool(b) => b.to_string(),
        KeyValue::Text(text) => escape(text),
    }))
}

fn canonical_integer(text: &str) -> Option<String> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = digits.trim_start_matches('0');
    Some(match (digits.is_empty(), negative) {
        (true, _) => "0".to_owned(),
        (false, true) => format!("-{digits}"),
        (false, false) => digits.to_owned(),
    })
}

/// Rust's `Display` of a float is already the shortest round-trip digits in
/// plain notation (the type's own width: f32 for `real`); only the special
/// values differ from Java's spelling, which Debezium (and so the daemon) uses.
fn float_text(f: f64, display: String) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else if f == 0.0 {
        "0".to_owned()
    } else {
        display
    }
}

/// `%`, `:`, `{`, `}` and control characters as `%XX`: text can never be
/// mistaken for key structure.
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Column(String),
}

/// A key template such as `category:{category_id}:products`; `{{` and `}}`
/// are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, KeyError> {
        let err_at = |at: usize, kind: fn(String, usize) -> KeyError| kind(text.to_owned(), at);
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut column = String::new();
                    let mut closed = false;
                    for (_, n) in chars.by_ref() {
                        match n {
                            '}' => {
                                closed = true;
                                break;
                            }
                            '{' => return Err(err_at(i, |template, at| KeyError::Unclosed { template, at })),
                            _ => column.push(n),
                        }
                    }
                    if !closed {
                        return Err(err_at(i, |template, at| KeyError::Unclosed { template, at }));
                    }
                    let column = column.trim();
                    if column.is_empty() {
                        return Err(err_at(i, |template, at| KeyError::Empty { template, at }));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Column(column.to_owned()));
                }
                '}' => return Err(err_at(i, |template, at| KeyError::Unmatched { template, at })),
                _ => literal.push(c),
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

    /// Renders with the named values. `Ok(None)`: a value is NULL, the
    /// template names no key (as in the daemon).
    pub fn render(&self, values: &[(&str, KeyValue<'_>)]) -> Result<Option<String>, KeyError> {
        let mut out = String::with_capacity(self.text.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Column(column) => {
                    let value = values
                        .iter()
                        .find(|(name, _)| name == column)
                        .map(|(_, v)| v)
                        .ok_or_else(|| KeyError::MissingColumn {
                            template: self.text.clone(),
                            column: column.clone(),
                        })?;
                    match render_value(value).map_err(|text| KeyError::NotAnInteger {
                        column: column.clone(),
                        text,
                    })? {
                        Some(text) => out.push_str(&text),
                        None => return Ok(None),
                    }
                }
            }
        }
        Ok(Some(out))
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
        assert!(matches!(
            Template::parse("p:{id"),
            Err(KeyError::Unclosed { at: 2, .. })
        ));
        assert!(matches!(Template::parse("p:{}"), Err(KeyError::Empty { at: 2, .. })));
        assert!(matches!(Template::parse("p:}"), Err(KeyError::Unmatched { at: 2, .. })));
        let missing = key("p:{id}", &[]).unwrap_err().to_string();
        assert!(
            missing.contains("\"p:{id}\"") && missing.contains("\"id\""),
            "{missing}"
        );
        assert!(matches!(
            key("p:{id}", &[("id", KeyValue::IntText("1e3"))]),
            Err(KeyError::NotAnInteger { .. })
        ));
    }
}
