//! `[dead_letters]`: the PostgreSQL table that records which could not be
//! decoded or rendered are written to (`dead_letter`).

use super::env::{Env, ENV_DEAD_LETTERS_URL};
use super::error::ConfigError;
use super::raw::RawDeadLetters;
use super::validator::Validator;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetterSettings {
    /// PostgreSQL URL.
    pub(crate) url: String,
    /// Schema of the table `cdc_dead_letters` (and of sqlx's migration history).
    pub(crate) schema: String,
}

/// Dead letters get a schema of their own so that a publication of the
/// captured schemas never includes them: a captured dead letter is itself a
/// change event, and a large one can fail the Debezium task for every table.
pub(super) const DEFAULT_DEAD_LETTER_SCHEMA: &str = "cdc_invalidator";

/// The section, or the URL alone from the environment; None: no dead-letter
/// store (undecodable records escalate or stall).
pub(super) fn validate_dead_letters(
    raw: Option<RawDeadLetters>,
    v: &Validator<'_>,
    env: Env<'_>,
) -> Result<Option<DeadLetterSettings>, ConfigError> {
    let schema = match raw.as_ref().and_then(|d| d.schema.as_ref()) {
        Some(schema) if !is_plain_identifier(schema.get_ref()) => {
            return v.error(
                schema.span(),
                "dead_letters.schema",
                "expected a plain PostgreSQL identifier (lowercase letters, digits, `_`; at most 63 bytes)",
            )
        }
        Some(schema) => schema.get_ref().clone(),
        None => DEFAULT_DEAD_LETTER_SCHEMA.to_owned(),
    };
    Ok(env(ENV_DEAD_LETTERS_URL)
        .or_else(|| raw.map(|d| d.url.into_inner()))
        .map(|url| DeadLetterSettings { url, schema }))
}

/// A name PostgreSQL takes without quoting; the schema is spliced into DDL.
fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63
}
