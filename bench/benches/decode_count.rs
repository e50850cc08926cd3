//! Decodes each input of `cdc_bench::decode_inputs` a given number of
//! times, for instruction counts under callgrind (repeatable on a loaded
//! machine, where wall-clock timings are not):
//!
//!   cargo bench -p cdc-bench --bench decode_count --no-run
//!   valgrind --tool=callgrind <the built binary> <input name> <records> [tree|graph]
//!
//! With `tree` it runs the decode that builds a whole `serde_json::Value`
//! (`decode::decode_tree`), for the two side by side. With `graph` it
//! decodes as the daemon routes: building only the row columns the bench's
//! own graph reads (`DaemonConfig::parse_only`, 3 key templates), with
//! `decode::decode_with`.
//!
//! Run it with two record counts and divide the difference in instructions
//! by the difference in records: the set-up cost cancels out.

// A benchmark, run by hand: a panic on a broken setup is the run failing
// loudly, which is what it should do. The cast lints still hold (Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;

use cdc_bench::daemon_config::DaemonConfig;
use cdc_invalidator::decode::{decode, decode_tree, decode_with};
use cdc_invalidator::event::Decoded;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (Some(name), Some(records)) = (args.next(), args.next()) else {
        eprintln!("usage: decode_count <input name> <records>");
        std::process::exit(2);
    };
    let records: u64 = records.parse().expect("a record count");
    let mode = args.next();
    let tree = mode.as_deref() == Some("tree");
    let settings = (mode.as_deref() == Some("graph")).then(|| {
        DaemonConfig::parse_only()
            .settings()
            .expect("the bench config validates")
    });
    let read = settings.as_ref().map(|s| s.graph.row_columns());
    // A fixed commit time: the inputs must be the same in every run.
    let inputs = cdc_bench::decode_inputs::all(1_795_697_046_074_000);
    let Some((_, record)) = inputs.iter().find(|(n, _)| *n == name) else {
        eprintln!("unknown input {name:?}");
        std::process::exit(2);
    };
    let mut changes = 0u64;
    for _ in 0..records {
        let decoded = if tree {
            decode_tree(black_box(record), None)
        } else if read.is_some() {
            decode_with(black_box(record), None, read)
        } else {
            decode(black_box(record), None)
        };
        if let Ok(Decoded::Change(_)) = decoded {
            changes += 1;
        }
    }
    assert_eq!(changes, records, "every record must decode to a change");
}
