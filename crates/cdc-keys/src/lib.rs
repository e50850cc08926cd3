//! cdc-keys: the text of cdc-invalidator's keys, in one place for the daemon
//! (which renders the keys it bumps) and the Rust reader `cdc-cache` (which
//! renders the keys it reads). A reader that renders `product:{id}` one byte
//! differently from the daemon reads a version record nobody bumps, so both
//! call this code; the Node package and other readers follow
//! docs/key-rendering.md and the vectors in tests/vectors/keys.json, which
//! test this crate too.
//!
//! - `template` key templates: `category:{category_id}:products`, `{{` and
//!   `}}` for literal braces
//! - `value`    the canonical text of one value: integers, floats, decimals,
//!   text (escaped), and with the `json` feature a whole JSON value

// Unit tests may unwrap, expect and index: a panic there is the test
// failing. Library code may not (the workspace lint table, Cargo.toml).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

pub mod template;
pub mod value;

pub use template::{Part, Template, TemplateError};
pub use value::{canonical_integer, canonical_number, escape, float32_text, float64_text, plain_decimal};
#[cfg(feature = "json")]
pub use value::{render_json, Unrenderable};
