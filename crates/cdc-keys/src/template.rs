//! Key templates: `product:{id}`, `category:{category_id}:products`. `{{`
//! and `}}` stand for literal braces; a column name is trimmed.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Literal(String),
    Column(String),
}

/// One piece of a template, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part<'a> {
    Literal(&'a str),
    Column(&'a str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Owned>,
}

/// Where a template is malformed (byte offsets into its text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{` at byte {0}")]
    Unclosed(usize),
    #[error("empty `{{}}` at byte {0}")]
    Empty(usize),
    #[error("unmatched `}}` at byte {0} (write `}}}}` for a literal brace)")]
    Unmatched(usize),
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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
                        parts.push(Owned::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Owned::Column(column.to_owned()));
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
            parts.push(Owned::Literal(literal));
        }
        Ok(Template {
            text: text.to_owned(),
            parts,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn parts(&self) -> impl Iterator<Item = Part<'_>> {
        self.parts.iter().map(|p| match p {
            Owned::Literal(s) => Part::Literal(s),
            Owned::Column(c) => Part::Column(c),
        })
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts().filter_map(|p| match p {
            Part::Column(c) => Some(c),
            Part::Literal(_) => None,
        })
    }

    /// Renders with `value(column)`: the column's canonical text, `None` for
    /// SQL NULL (then the template names no key: `Ok(None)`), or an error.
    pub fn render<E>(&self, mut value: impl FnMut(&str) -> Result<Option<String>, E>) -> Result<Option<String>, E> {
        let mut out = String::with_capacity(self.text.len() + 16);
        for part in self.parts() {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Column(column) => match value(column)? {
                    Some(text) => out.push_str(&text),
                    None => return Ok(None),
                },
            }
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, values: &[(&str, Option<&str>)]) -> Option<String> {
        let t = Template::parse(template).unwrap();
        t.render(|c| {
            let v = values.iter().find(|(n, _)| *n == c).map(|(_, v)| v.map(str::to_owned));
            v.ok_or(())
        })
        .unwrap()
    }

    #[test]
    fn parses_columns_literals_and_escaped_braces() {
        let t = Template::parse("category:{ category_id }:products").unwrap();
        assert_eq!(t.columns().collect::<Vec<_>>(), vec!["category_id"]);
        assert_eq!(
            render("category:{category_id}:products", &[("category_id", Some("3"))]).as_deref(),
            Some("category:3:products")
        );
        assert_eq!(render("{{tag}}:{id}", &[("id", Some("a"))]).as_deref(), Some("{tag}:a"));
        assert_eq!(render("größe:{id}", &[("id", Some("1"))]).as_deref(), Some("größe:1"));
        assert_eq!(render("c:{p}", &[("p", None)]), None, "NULL names no key");
        assert_eq!(Template::parse("p:{id}").unwrap().to_string(), "p:{id}");
    }

    #[test]
    fn malformed_templates_name_the_byte() {
        assert_eq!(Template::parse("p:{id").unwrap_err(), TemplateError::Unclosed(2));
        assert_eq!(Template::parse("p:{a{b}").unwrap_err(), TemplateError::Unclosed(2));
        assert_eq!(Template::parse("p:{}").unwrap_err(), TemplateError::Empty(2));
        assert_eq!(Template::parse("p:{ }").unwrap_err(), TemplateError::Empty(2));
        assert_eq!(Template::parse("p:}").unwrap_err(), TemplateError::Unmatched(2));
        assert_eq!(Template::parse("é{a}}x}").unwrap_err(), TemplateError::Unmatched(5));
    }
}
