//! `[avro]`: where Avro schemas come from (a Confluent-compatible registry,
//! a directory of `.avsc` files, or both). The settings type lives here,
//! below both of its readers: `decode` (schemas by id) and `registry` (the
//! client, which the notice producer also uses).

use std::path::PathBuf;
use std::time::Duration;

use serde_spanned::Spanned;

use super::env::{Env, ENV_SCHEMA_REGISTRY_PASSWORD, ENV_SCHEMA_REGISTRY_URL, ENV_SCHEMA_REGISTRY_USER};
use super::error::ConfigError;
use super::raw::RawAvro;
use super::validator::Validator;

/// Where schemas come from.
#[derive(Debug, Clone, Default)]
pub struct SchemaSources {
    pub registry_url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Files named `<id>.avsc`, used before (or instead of) the registry.
    pub schemas_dir: Option<PathBuf>,
    pub timeout: Duration,
}

// A registry slower than this is treated as unavailable for this attempt.
const DEFAULT_REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// The section, or the registry alone from the environment; None reads JSON only.
pub(super) fn validate_avro(
    raw: Option<Spanned<RawAvro>>,
    v: &Validator<'_>,
    env: Env<'_>,
) -> Result<Option<SchemaSources>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(env(ENV_SCHEMA_REGISTRY_URL).map(|url| SchemaSources {
            registry_url: Some(url),
            username: env(ENV_SCHEMA_REGISTRY_USER),
            password: env(ENV_SCHEMA_REGISTRY_PASSWORD),
            schemas_dir: None,
            timeout: DEFAULT_REGISTRY_TIMEOUT,
        }));
    };
    let raw_span = raw.span();
    let raw = raw.into_inner();
    let sources = SchemaSources {
        registry_url: env(ENV_SCHEMA_REGISTRY_URL).or_else(|| raw.registry_url.map(Spanned::into_inner)),
        username: env(ENV_SCHEMA_REGISTRY_USER).or_else(|| raw.username.map(Spanned::into_inner)),
        password: env(ENV_SCHEMA_REGISTRY_PASSWORD).or_else(|| raw.password.map(Spanned::into_inner)),
        schemas_dir: raw.schemas_dir.map(|d| PathBuf::from(d.into_inner())),
        timeout: v
            .optional_duration(raw.timeout.as_ref(), "avro.timeout")?
            .unwrap_or(DEFAULT_REGISTRY_TIMEOUT),
    };
    if sources.registry_url.is_none() && sources.schemas_dir.is_none() {
        return v.error(raw_span, "avro", "expected `registry_url` or `schemas_dir` (or both)");
    }
    Ok(Some(sources))
}
