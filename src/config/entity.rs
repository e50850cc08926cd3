//! `[[entity]]` and `[[entity.fanout]]`: the relationship graph, checked
//! against the other sections (the version records' TTL, the lookup
//! database) and turned into `graph` entities.

use std::collections::HashSet;
use std::time::Duration;

use serde_spanned::Spanned;

use super::error::ConfigError;
use super::raw::{RawEntity, RawFanout};
use super::validator::Validator;
use crate::graph::{Consistency, Entity, Fanout};

// Beyond this many children one namespace bump is cheaper than the keys.
pub(super) const DEFAULT_FANOUT_MAX_ROWS: usize = 10_000;

/// What an `[[entity]]` is checked against besides its own fields.
pub(super) struct EntityContext {
    pub(super) index: usize,
    pub(super) version_ttl: Duration,
    pub(super) has_lookup: bool,
    /// The lookup database is MySQL or MariaDB: fan-out queries bind `?`.
    pub(super) mysql_lookup: bool,
}

impl EntityContext {
    fn field(&self, name: &str) -> String {
        format!("entity[{}].{name}", self.index)
    }
}

impl RawEntity {
    /// `tables` holds the tables of the entities before this one. The
    /// fields are checked in the order they always were, so the first
    /// error reported stays the same.
    pub(super) fn validate(
        self,
        at: &EntityContext,
        tables: &mut HashSet<String>,
        v: &Validator<'_>,
    ) -> Result<Entity, ConfigError> {
        let table = self.table(at, tables, v)?;
        if self.keys.get_ref().is_empty() {
            return v.error(
                self.keys.span(),
                &at.field("keys"),
                "expected at least one key template",
            );
        }
        let keys = v.templates(&self.keys, &at.field("keys"))?;
        let consistency = v.choice(
            self.consistency.as_ref().map(|c| c.get_ref().clone()),
            self.consistency.as_ref().map(|c| c.span()).unwrap_or(0..0),
            &at.field("consistency"),
            &[("strong", Consistency::Strong), ("eventual", Consistency::Eventual)],
            Consistency::Eventual,
        )?;
        let max_cache_ttl = self.max_cache_ttl(at, v)?;
        let namespace = match &self.namespace {
            Some(ns) if ns.get_ref().is_empty() => {
                return v.error(ns.span(), &at.field("namespace"), "expected a non-empty name")
            }
            Some(ns) => Some(ns.get_ref().clone()),
            None => None,
        };
        // "default" unless declared: trusting an incomplete old image
        // would render wrong keys silently; distrusting a full one only
        // costs escalations.
        let full_before_image = v.choice(
            self.replica_identity.as_ref().map(|r| r.get_ref().clone()),
            self.replica_identity.as_ref().map(|r| r.span()).unwrap_or(0..0),
            &at.field("replica_identity"),
            &[("full", true), ("default", false)],
            false,
        )?;
        let fanouts = (self.fanout.iter().enumerate())
            .map(|(f, spanned)| validate_fanout(spanned, &format!("entity[{}].fanout[{f}]", at.index), at, v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Entity {
            table,
            namespace,
            consistency,
            max_cache_ttl,
            keys,
            invalidate_on_snapshot: self.invalidate_on_snapshot,
            full_before_image,
            fanouts,
        })
    }

    /// `schema.table`, declared by one entity only.
    fn table(
        &self,
        at: &EntityContext,
        tables: &mut HashSet<String>,
        v: &Validator<'_>,
    ) -> Result<String, ConfigError> {
        let table = self.table.get_ref().clone();
        if table.split('.').count() != 2 || table.split('.').any(str::is_empty) {
            return v.error(
                self.table.span(),
                &at.field("table"),
                format!("expected \"schema.table\" (or \"database.table\" for MySQL), got {table:?}"),
            );
        }
        if !tables.insert(table.clone()) {
            return v.error(
                self.table.span(),
                &at.field("table"),
                format!("table {table:?} is declared twice; put all its keys in one [[entity]]"),
            );
        }
        Ok(table)
    }

    /// No longer than the version records live: a version record must
    /// outlive the data it guards.
    fn max_cache_ttl(&self, at: &EntityContext, v: &Validator<'_>) -> Result<Option<Duration>, ConfigError> {
        let Some(d) = &self.max_cache_ttl else { return Ok(None) };
        let ttl = v.duration(d, &at.field("max_cache_ttl"))?;
        if ttl > at.version_ttl {
            return v.error(
                d.span(),
                &at.field("max_cache_ttl"),
                format!(
                    "is longer than redis.version_ttl ({}): a version record could expire while data it guards is still cached",
                    humantime::format_duration(at.version_ttl)
                ),
            );
        }
        Ok(Some(ttl))
    }
}

/// One `[[entity.fanout]]`; `name` is its field path, e.g. `entity[0].fanout[1]`.
fn validate_fanout(
    spanned: &Spanned<RawFanout>,
    name: &str,
    at: &EntityContext,
    v: &Validator<'_>,
) -> Result<Fanout, ConfigError> {
    let fanout = spanned.get_ref();
    let field = |f: &str| format!("{name}.{f}");
    if !at.has_lookup {
        return v.error(
            spanned.span(),
            &field("query"),
            "fan-out lookups need a [lookup] url (a read replica: PostgreSQL, MySQL or MariaDB)",
        );
    }
    let placeholders = if at.mysql_lookup {
        crate::lookup::mysql::placeholders(fanout.query.get_ref())
    } else {
        (1..=fanout.bind.get_ref().len() + 1)
            .take_while(|n| fanout.query.get_ref().contains(&format!("${n}")))
            .count()
    };
    if at.mysql_lookup && placeholders != fanout.bind.get_ref().len() {
        return v.error(
            fanout.bind.span(),
            &field("bind"),
            format!(
                "{} bind column(s) for a MySQL query with {placeholders} `?` placeholder(s)",
                fanout.bind.get_ref().len()
            ),
        );
    }
    if placeholders != fanout.bind.get_ref().len() {
        return v.error(
            fanout.bind.span(),
            &field("bind"),
            format!(
                "{} bind column(s) for a query using ${}..${placeholders}",
                fanout.bind.get_ref().len(),
                1.min(placeholders)
            ),
        );
    }
    let keys = v.templates(&fanout.keys, &field("keys"))?;
    if keys.is_empty() {
        return v.error(fanout.keys.span(), &field("keys"), "expected at least one key template");
    }
    Ok(Fanout {
        query: fanout.query.get_ref().clone(),
        bind: fanout.bind.get_ref().clone(),
        keys,
        max_rows: v
            .at_least_one(fanout.max_rows.as_ref(), &field("max_rows"))?
            .unwrap_or(DEFAULT_FANOUT_MAX_ROWS),
        namespace: fanout.namespace.as_ref().map(|n| n.get_ref().clone()),
    })
}
