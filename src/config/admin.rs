//! `[admin]`: the HTTP listener (`/metrics`, `/healthz`, `/readyz`) and the
//! readiness probe's timing.

use std::net::SocketAddr;
use std::time::Duration;

use super::env::{Env, ENV_ADMIN_LISTEN};
use super::error::ConfigError;
use super::raw::RawAdmin;
use super::redact::redact_url;
use super::validator::Validator;

#[derive(Debug, Clone)]
pub(crate) struct ProbeSettings {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

// Loopback by default: metrics are for a local scraper or a sidecar.
pub(super) const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9799";

// Readiness should turn within seconds of an outage, without the probe
// itself becoming load: one PING and one catalog query every 2 s.
pub(super) fn default_probe_interval() -> Duration {
    Duration::from_secs(2)
}

// A healthy Redis or PostgreSQL on the same network answers in
// milliseconds; a second without an answer is an outage for readiness.
pub(super) fn default_probe_timeout() -> Duration {
    Duration::from_secs(1)
}

/// The admin listener's address and the readiness probe's timing.
pub(super) fn validate_admin(
    raw: Option<RawAdmin>,
    v: &Validator<'_>,
    env: Env<'_>,
) -> Result<(SocketAddr, ProbeSettings), ConfigError> {
    let listen = match env(ENV_ADMIN_LISTEN).or_else(|| raw.as_ref().map(|a| a.listen.get_ref().clone())) {
        Some(text) => match text.parse() {
            Ok(addr) => addr,
            Err(_) => {
                let span = raw.as_ref().map(|a| a.listen.span()).unwrap_or(0..0);
                // Quoted as an address may be mistyped as a URL, password and all.
                return v.error(
                    span,
                    "admin.listen",
                    format!(
                        "expected host:port such as \"127.0.0.1:9799\", got {:?}",
                        redact_url(&text)
                    ),
                );
            }
        },
        None => {
            // A constant that the unit tests parse.
            #[allow(clippy::expect_used)]
            let default = DEFAULT_ADMIN_LISTEN.parse().expect("default admin address parses");
            default
        }
    };
    let probe = ProbeSettings {
        interval: v
            .optional_duration(
                raw.as_ref().and_then(|a| a.probe_interval.as_ref()),
                "admin.probe_interval",
            )?
            .unwrap_or_else(default_probe_interval),
        timeout: v
            .optional_duration(
                raw.as_ref().and_then(|a| a.probe_timeout.as_ref()),
                "admin.probe_timeout",
            )?
            .unwrap_or_else(default_probe_timeout),
    };
    if probe.interval.is_zero() || probe.timeout.is_zero() {
        return v.error(
            0..0,
            "admin.probe_interval",
            "probe interval and timeout must be positive",
        );
    }
    Ok((listen, probe))
}
