//! Strict configuration: one TOML file, unknown fields are errors, every
//! error names the file, the line and the field. [`load`] reads and parses,
//! `RawConfig::validate` turns the raw form into runtime [`Settings`].
//!
//! The parts, each in a file of its own:
//! - `raw`: the file's shape, one serde type per section, every value spanned
//! - `validator`: spans to `file:line: field` errors, and the checks
//!   sections share (durations, counts, choices, templates, URLs)
//! - `error`, `env` (the environment overrides), `redact` (secrets out of URLs)
//! - one file per section, each with its runtime settings type, its defaults
//!   (each with its reason) and its validation: `source`, `redis`, `admin`,
//!   `plan`, `lookup`, `avro`, `notices`, `connect`, `dead_letters`, `entity`,
//!   `messages`
//!
//! This file is the entry: it reads and parses, then validates the sections
//! in order and assembles [`Settings`]. The settings types are re-exported
//! here, so their paths are `crate::config::Name` whichever file holds them.

mod admin;
mod avro;
mod connect;
mod dead_letters;
mod entity;
mod env;
mod error;
mod lookup;
mod messages;
mod notices;
mod plan;
mod raw;
mod redact;
mod redis;
mod source;
mod validator;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde_spanned::Spanned;

pub use self::avro::SchemaSources;
pub(crate) use self::connect::ConnectSettings;
pub(crate) use self::dead_letters::DeadLetterSettings;
pub use self::error::ConfigError;
pub use self::notices::NoticeSettings;
pub use self::plan::PlanSettings;
pub(crate) use self::redact::redact_url;
pub use self::redis::{default_loss_check_interval, RedisSettings, SentinelSettings};
pub use self::source::SourceSettings;
pub(crate) use self::source::{GroupProtocol, Subscription};

use self::admin::{validate_admin, ProbeSettings};
use self::avro::validate_avro;
use self::dead_letters::validate_dead_letters;
use self::entity::EntityContext;
use self::env::Env;
use self::lookup::{validate_lookup, LookupSettings};
use self::messages::validate_messages;
use self::plan::validate_plan;
use self::raw::RawConfig;
use self::validator::{line_col, Validator};
use crate::graph::Graph;

/// Runtime settings, produced only by `RawConfig::validate`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: SourceSettings,
    pub(crate) redis: RedisSettings,
    pub(crate) admin_listen: SocketAddr,
    pub(crate) probe: ProbeSettings,
    pub plan: PlanSettings,
    /// Where the dead-letter table lives; without it, records that cannot be
    /// decoded escalate or stall.
    pub(crate) dead_letters: Option<DeadLetterSettings>,
    pub(crate) lookup: Option<LookupSettings>,
    /// Where Avro schemas come from; None reads JSON only.
    pub avro: Option<SchemaSources>,
    pub(crate) notices: Option<NoticeSettings>,
    /// Connector status watch; None watches nothing.
    pub(crate) connect: Option<ConnectSettings>,
    pub graph: Graph,
}

/// Reads, parses and validates a config file; `env` supplies overrides.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    })?;
    parse(&path.display().to_string(), &text, env)
}

/// Parses and validates `text`, the contents of the file named `path` (as
/// errors print it); `env` supplies overrides.
pub fn parse(path: &str, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|span| line_col(text, span.start)).unwrap_or((1, 1));
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })?;
    raw.validate(&Validator::new(path, text), env)
}

impl RawConfig {
    /// One function per section, called in the order the sections have
    /// always been checked, so the first error reported stays the same.
    fn validate(self, v: &Validator<'_>, env: Env<'_>) -> Result<Settings, ConfigError> {
        let instance_id_span = self.source.get_ref().instance_id.as_ref().map(|i| i.span());
        let (mut source, instance_id) = self.source.into_inner().validate(v, env)?;
        let redis_span = self.redis.span();
        let redis = self.redis.into_inner().validate(redis_span.clone(), v, env)?;
        let (admin_listen, probe) = validate_admin(self.admin.map(Spanned::into_inner), v, env)?;
        source.instance_id = source::resolve_instance_id(instance_id, instance_id_span, admin_listen, v)?;
        let plan = validate_plan(self.plan.map(Spanned::into_inner), v)?;
        let lookup = validate_lookup(self.lookup.map(Spanned::into_inner), v, env)?;
        let avro = validate_avro(self.avro, v, env)?;
        let notices = self.notices.map(|n| n.into_inner().validate());
        let connect = match self.connect {
            Some(raw) => Some(raw.into_inner().validate(v, env)?),
            None => None,
        };
        let dead_letters = validate_dead_letters(self.dead_letters.map(Spanned::into_inner), v, env)?;
        // Named invalidations (messages, outbox rows) may be all a daemon reads.
        if self.entities.is_empty() && self.messages.is_none() {
            return v.error(
                redis_span,
                "entity",
                "expected at least one [[entity]] (or [messages]): without one nothing is ever invalidated",
            );
        }
        let mut entities = Vec::new();
        let mut tables = HashSet::new();
        for (index, spanned) in self.entities.into_iter().enumerate() {
            let context = EntityContext {
                index,
                version_ttl: redis.version_ttl,
                has_lookup: lookup.is_some(),
                mysql_lookup: lookup
                    .as_ref()
                    .is_some_and(|l| crate::lookup::mysql::is_mysql_url(&l.url)),
            };
            entities.push(spanned.into_inner().validate(&context, &mut tables, v)?);
        }
        let entity_tables = entities.iter().map(|e| e.table.clone()).collect();
        let messages = validate_messages(self.messages, &source.subscription, &entity_tables, v)?;
        let graph = match messages {
            Some(rules) => Graph::new(entities).with_messages(rules),
            None => Graph::new(entities),
        };
        Ok(Settings {
            source,
            redis,
            admin_listen,
            probe,
            plan,
            dead_letters,
            lookup,
            avro,
            notices,
            connect,
            graph,
        })
    }
}

#[cfg(test)]
mod tests;
