//! `migrate`: creates or upgrades the dead-letter table in its schema.

use std::path::Path;

use super::{dead_letter_store, load};

pub(super) async fn migrate(config: &Path) -> anyhow::Result<i32> {
    let store = dead_letter_store(&load(config)?)?;
    store.migrate().await?;
    println!("dead-letter table is up to date");
    Ok(0)
}
