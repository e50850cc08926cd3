//! Turns byte spans into `file:line: field` errors, and the checks that
//! several sections share (durations, counts, a word out of a few, key
//! templates, URLs).

use std::ops::Range;
use std::time::Duration;

use serde_spanned::Spanned;

use super::error::ConfigError;
use super::redact::redact_url;
use crate::graph::Template;

/// The 1-based line and column of a byte offset in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Builds errors that point at a spanned value of the file being validated.
pub(super) struct Validator<'a> {
    path: &'a str,
    text: &'a str,
}

impl<'a> Validator<'a> {
    /// For the file named `path` (as errors print it), whose contents are `text`.
    pub(super) fn new(path: &'a str, text: &'a str) -> Validator<'a> {
        Validator { path, text }
    }

    pub(super) fn error<T>(
        &self,
        span: Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError::Invalid {
            path: self.path.to_owned(),
            line: line_col(self.text, span.start).0,
            field: field.to_owned(),
            message: message.into(),
        })
    }

    pub(super) fn duration(&self, value: &Spanned<String>, field: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(value.get_ref()).or_else(|e| {
            self.error(
                value.span(),
                field,
                format!(
                    "expected a duration such as \"10m\" or \"30s\", got {:?} ({e})",
                    value.get_ref()
                ),
            )
        })
    }

    pub(super) fn optional_duration(
        &self,
        value: Option<&Spanned<String>>,
        field: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        value.map(|d| self.duration(d, field)).transpose()
    }

    /// A duration that must not be zero (an interval something waits on).
    pub(super) fn positive_duration(
        &self,
        value: Option<&Spanned<String>>,
        field: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        let Some(d) = value else { return Ok(None) };
        let parsed = self.duration(d, field)?;
        if parsed.is_zero() {
            return self.error(d.span(), field, "expected a positive duration");
        }
        Ok(Some(parsed))
    }

    /// A count that must not be zero (a budget, a limit, a number of tries).
    pub(super) fn at_least_one<T: Copy + Default + PartialEq>(
        &self,
        value: Option<&Spanned<T>>,
        field: &str,
    ) -> Result<Option<T>, ConfigError> {
        match value {
            Some(n) if *n.get_ref() == T::default() => self.error(n.span(), field, "expected at least 1"),
            Some(n) => Ok(Some(*n.get_ref())),
            None => Ok(None),
        }
    }

    /// One of a few words, each standing for a typed value; `choices` in the
    /// order the error message lists them, `default` when the field is unset.
    pub(super) fn choice<T: Copy>(
        &self,
        value: Option<String>,
        span: Range<usize>,
        field: &str,
        choices: &[(&str, T)],
        default: T,
    ) -> Result<T, ConfigError> {
        let Some(text) = value else { return Ok(default) };
        match choices.iter().find(|(word, _)| *word == text) {
            Some((_, typed)) => Ok(*typed),
            None => {
                let words: Vec<String> = choices.iter().map(|(word, _)| format!("{word:?}")).collect();
                self.error(span, field, format!("expected {}, got {text:?}", words.join(" or ")))
            }
        }
    }

    pub(super) fn templates(&self, texts: &Spanned<Vec<String>>, field: &str) -> Result<Vec<Template>, ConfigError> {
        texts
            .get_ref()
            .iter()
            .map(|text| {
                Template::parse(text).or_else(|e| self.error(texts.span(), field, format!("template {text:?}: {e}")))
            })
            .collect()
    }

    /// A URL (from the file or the environment) that must start with one of
    /// `schemes`; `expected` describes it in the error ("a redis:// or
    /// rediss:// URL"). The error quotes the URL with its password hidden,
    /// whatever form it was written in.
    pub(super) fn url_with_scheme(
        &self,
        url: &str,
        span: Range<usize>,
        field: &str,
        schemes: &[&str],
        expected: &str,
    ) -> Result<(), ConfigError> {
        if schemes.iter().any(|scheme| url.starts_with(scheme)) {
            return Ok(());
        }
        self.error(span, field, format!("expected {expected}, got {:?}", redact_url(url)))
    }
}
