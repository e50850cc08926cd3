//! `[lookup]`: the database fan-out queries read (ideally a read replica).

use std::time::Duration;

use super::env::{Env, ENV_LOOKUP_URL};
use super::error::ConfigError;
use super::raw::RawLookup;
use super::validator::Validator;

#[derive(Debug, Clone)]
pub(crate) struct LookupSettings {
    pub(crate) url: String,
    pub(crate) timeout: Duration,
    pub(crate) attempts: u32,
}

// A lookup slower than this holds up its partition; retry or escalate instead.
const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
// Three tries ride out a replica failover; then the namespace is escalated.
const DEFAULT_LOOKUP_ATTEMPTS: u32 = 3;

/// The section, or the URL alone from the environment; None: no lookups.
pub(super) fn validate_lookup(
    raw: Option<RawLookup>,
    v: &Validator<'_>,
    env: Env<'_>,
) -> Result<Option<LookupSettings>, ConfigError> {
    Ok(match raw {
        Some(raw) => Some(LookupSettings {
            url: env(ENV_LOOKUP_URL).unwrap_or_else(|| raw.url.get_ref().clone()),
            timeout: v
                .optional_duration(raw.timeout.as_ref(), "lookup.timeout")?
                .unwrap_or(DEFAULT_LOOKUP_TIMEOUT),
            attempts: v
                .at_least_one(raw.attempts.as_ref(), "lookup.attempts")?
                .unwrap_or(DEFAULT_LOOKUP_ATTEMPTS),
        }),
        None => env(ENV_LOOKUP_URL).map(|url| LookupSettings {
            url,
            timeout: DEFAULT_LOOKUP_TIMEOUT,
            attempts: DEFAULT_LOOKUP_ATTEMPTS,
        }),
    })
}
