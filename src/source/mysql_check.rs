//! What `check` verifies when the lookup database is MySQL-family (MySQL or
//! MariaDB), the counterpart of the PostgreSQL checks in cli/check.rs: tables and
//! templated columns exist; the binlog logs rows (`binlog_format = ROW`,
//! without which Debezium reads no row changes); old rows are whole
//! (`binlog_row_image = FULL`) wherever the config trusts old values
//! (`replica_identity = "full"`), the MySQL-family form of REPLICA IDENTITY
//! FULL; MariaDB GTIDs are strict (the guard orders by their sequence
//! numbers); and fan-out queries prepare. Prints one line per finding and
//! returns the number of failures.
//!
//! The catalog queries themselves are in lookup::mysql, beside every other
//! query of the MySQL dialect and the pool they run on: this file holds no
//! SQL, only what the answers mean for the daemon (the verdicts and the
//! advice), which is `check`'s concern and not the lookup database's.

use std::collections::BTreeSet;

use crate::graph::Entity;
use crate::lookup::mysql::MySqlLookups;
use crate::lookup::{Catalog, Lookups};

pub(crate) async fn check_database(entities: &[Entity], lookups: &Lookups) -> usize {
    let Catalog::MySql(db) = lookups.catalog() else {
        return 0;
    };
    let mut problems = 0;
    // Global values: sessions can override binlog_format and
    // binlog_row_image for themselves, the global value is what every
    // session gets unless it does.
    let (format, image, strict) = match (
        db.global_variable("BINLOG_FORMAT").await,
        db.global_variable("BINLOG_ROW_IMAGE").await,
        db.global_variable("GTID_STRICT_MODE").await,
    ) {
        (Ok(f), Ok(i), Ok(s)) => (f, i, s),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => {
            println!("FAIL  lookup database (MySQL family): {e}");
            return 1;
        }
    };
    match format.as_deref() {
        Some("ROW") => println!("ok    binlog_format = ROW"),
        other => {
            println!(
                "FAIL  binlog_format is {}: Debezium reads row changes only from a ROW binlog (SET GLOBAL binlog_format = 'ROW', and in the server's config)",
                other.unwrap_or("unknown")
            );
            problems += 1;
        }
    }
    let full_image = image.as_deref() == Some("FULL");
    match strict.as_deref() {
        Some("ON") => println!("ok    gtid_strict_mode = ON: GTID sequence numbers follow the commit order"),
        Some(other) => println!(
            "warn  gtid_strict_mode is {other}: MariaDB GTID sequence numbers order the guard; without strict mode a server may log them out of order (SET GLOBAL gtid_strict_mode = ON)"
        ),
        // MySQL has no such variable; its changes are ordered by binlog coordinates.
        None => {}
    }
    for entity in entities {
        problems += check_entity(db, entity, full_image, image.as_deref()).await;
        problems += check_fanouts(entity, lookups).await;
    }
    problems
}

/// Prepares each fan-out query of `entity` on the lookup database, one
/// line each; returns how many failed. The PostgreSQL check (cli/check)
/// uses it too: preparing is the same for both families.
pub(crate) async fn check_fanouts(entity: &Entity, lookups: &Lookups) -> usize {
    let mut problems = 0;
    for fanout in &entity.fanouts {
        match lookups.prepare(fanout).await {
            Ok(()) => println!("ok    fan-out {:?} prepares", fanout.query),
            Err(e) => {
                println!("FAIL  fan-out {:?}: {e}", fanout.query);
                problems += 1;
            }
        }
    }
    problems
}

async fn check_entity(db: &MySqlLookups, entity: &Entity, full_image: bool, image: Option<&str>) -> usize {
    // Config validation refuses a table that is not database.table.
    let Some((database, table)) = entity.table.split_once('.') else {
        return 0;
    };
    let columns = match db.columns_with_keys(database, table).await {
        Ok(columns) => columns,
        Err(e) => {
            println!("FAIL  lookup database: {e}");
            return 1;
        }
    };
    if columns.is_empty() {
        println!("FAIL  table {}: not found in the lookup database", entity.table);
        return 1;
    }
    let mut problems = 0;
    let used = entity
        .keys
        .iter()
        .flat_map(|t| t.columns())
        .chain(entity.fanouts.iter().flat_map(|f| f.bind.iter().map(String::as_str)));
    let missing: BTreeSet<&str> = used.filter(|c| !columns.iter().any(|(k, _)| k == c)).collect();
    if !missing.is_empty() {
        println!(
            "FAIL  table {}: templated column(s) {missing:?} do not exist",
            entity.table
        );
        problems += 1;
    }
    let primary_key: Vec<&str> = columns
        .iter()
        .filter(|(_, key)| key == "PRI")
        .map(|(c, _)| c.as_str())
        .collect();
    let needs_old: Vec<&str> = entity
        .keys
        .iter()
        .filter(|t| t.columns().any(|c| !primary_key.contains(&c)))
        .map(|t| t.text())
        .collect();
    match (full_image, entity.full_before_image) {
        (true, true) => println!("ok    table {}: binlog_row_image = FULL, old keys render exactly", entity.table),
        (true, false) if !needs_old.is_empty() => println!(
            "note  table {}: binlog_row_image = FULL but the config says replica_identity = \"default\"; declare \"full\" to render old keys instead of escalating",
            entity.table
        ),
        (false, true) => {
            println!(
                "FAIL  table {}: replica_identity = \"full\" is declared but binlog_row_image is {} (SET GLOBAL binlog_row_image = 'FULL', and in the server's config)",
                entity.table,
                image.unwrap_or("unknown")
            );
            problems += 1;
        }
        (false, false) if !needs_old.is_empty() => println!(
            "note  table {}: binlog_row_image is {}; updates and deletes escalate to {} for {needs_old:?}",
            entity.table,
            image.unwrap_or("unknown"),
            entity
                .namespace
                .as_deref()
                .map(|n| format!("namespace {n}"))
                .unwrap_or_else(|| "nothing (no namespace: they STALL)".into())
        ),
        _ => println!("ok    table {}: every template uses key columns only", entity.table),
    }
    problems
}
