//! Decodes each input of `cdc_bench::decode_inputs` a given number of
//! times, for instruction counts under callgrind (repeatable on a loaded
//! machine, where wall-clock timings are not):
//!
//!   cargo bench -p cdc-bench --bench decode_count --no-run
//!   valgrind --tool=callgrind <the built binary> <input name> <records>
//!
//! Run it with two record counts and divide the difference in instructions
//! by the difference in records: the set-up cost cancels out.

use std::hint::black_box;

use cdc_invalidator::decode::decode;
use cdc_invalidator::event::Decoded;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (Some(name), Some(records)) = (args.next(), args.next()) else {
        eprintln!("usage: decode_count <input name> <records>");
        std::process::exit(2);
    };
    let records: u64 = records.parse().expect("a record count");
    // A fixed commit time: the inputs must be the same in every run.
    let inputs = cdc_bench::decode_inputs::all(1_795_697_046_074_000);
    let Some((_, record)) = inputs.iter().find(|(n, _)| *n == name) else {
        eprintln!("unknown input {name:?}");
        std::process::exit(2);
    };
    let mut changes = 0u64;
    for _ in 0..records {
        if let Ok(Decoded::Change(_)) = decode(black_box(record), None) {
            changes += 1;
        }
    }
    assert_eq!(changes, records, "every record must decode to a change");
}
