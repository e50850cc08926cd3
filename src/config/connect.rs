//! `[connect]`: the Kafka Connect worker whose connectors' status is
//! watched (readiness fails while one is not running).

use std::time::Duration;

use super::env::{Env, ENV_CONNECT_URL};
use super::error::ConfigError;
use super::raw::RawConnect;
use super::validator::Validator;

#[derive(Debug, Clone)]
pub(crate) struct ConnectSettings {
    /// Base URL of a Kafka Connect worker's REST API.
    pub(crate) url: String,
    pub(crate) connectors: Vec<String>,
    pub(crate) poll_interval: Duration,
}

/// Connect's REST API answers in milliseconds; a connector that FAILED is
/// reported within this (and the alert's `for`).
const DEFAULT_CONNECT_POLL_INTERVAL: Duration = Duration::from_secs(10);

impl RawConnect {
    pub(super) fn validate(self, v: &Validator<'_>, env: Env<'_>) -> Result<ConnectSettings, ConfigError> {
        let url = env(ENV_CONNECT_URL).unwrap_or_else(|| self.url.get_ref().clone());
        v.url_with_scheme(
            &url,
            self.url.span(),
            "connect.url",
            &["http://", "https://"],
            "an http:// or https:// URL of Kafka Connect's REST API",
        )?;
        let names = self.connectors.get_ref();
        if names.is_empty() {
            return v.error(
                self.connectors.span(),
                "connect.connectors",
                "expected at least one connector name",
            );
        }
        for (i, name) in names.iter().enumerate() {
            if name.trim().is_empty() || name.contains('/') {
                return v.error(
                    self.connectors.span(),
                    "connect.connectors",
                    format!("{name:?} is not a connector name"),
                );
            }
            if names.iter().take(i).any(|earlier| earlier == name) {
                return v.error(
                    self.connectors.span(),
                    "connect.connectors",
                    format!("{name:?} is listed twice"),
                );
            }
        }
        Ok(ConnectSettings {
            url: url.trim_end_matches('/').to_owned(),
            connectors: names.clone(),
            poll_interval: v
                .positive_duration(self.poll_interval.as_ref(), "connect.poll_interval")?
                .unwrap_or(DEFAULT_CONNECT_POLL_INTERVAL),
        })
    }
}
