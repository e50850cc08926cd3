//! The bare writes of a bump: what `bump.lua` writes per key (`HSET v pv
//! p:<source>` and `PEXPIRE`), pipelined from a plain client, with no guard
//! and no script. The guarded script's throughput over this one, measured in
//! the same run on the same Redis, is what the guard and the script cost.
//! Redis's own main-thread CPU per bump (`INFO cpu` before and after) is
//! taken for both, because on a loaded machine the rates move with whatever
//! else runs, and the CPU Redis spent on each bump much less.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use anyhow::{bail, Context};
use rand::Rng;

use crate::processes::Ctx;
use crate::results::BareWritesResult;

/// The daemon's argument shapes, as `steps::redis_benchmark` sends them to
/// the script: a 40-digit position of source `pg:bench`, version_ttl 6 h.
pub const GUARD_FIELD: &str = "p:pg:bench";
pub const TTL_MS: &str = "21600000";

/// Keys are drawn from this many, as redis-benchmark's `-r` does for the
/// script: nearly every key is new, as nearly every scripted bump is applied.
pub const KEY_SPACE: u64 = 100_000_000;

/// The position every bare write records (the script run's, too).
pub fn position() -> String {
    format!("{:020}{:020}", 33_554_248u64, 33_554_432u64)
}

/// Versions of the width the script writes (server microseconds).
const VERSION: &str = "1795697046074000";
const PREVIOUS: &str = "1795697046073000";

/// The bare writes of a key in Redis's protocol: what redis-rs packs for
/// `HSET <record> v .. pv .. <guard> <position>` and `PEXPIRE <record>
/// <ttl>`. Encoded by hand, everything but the record's name once, because
/// the client must cost far less than the server, even in a debug build.
/// Each command answers one integer line.
pub struct Encoder {
    hset_head: Vec<u8>,
    hset_tail: Vec<u8>,
    pexpire_head: Vec<u8>,
    pexpire_tail: Vec<u8>,
}

fn bulk(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(format!("${}\r\n{text}\r\n", text.len()).as_bytes());
}

impl Encoder {
    pub fn new(position: &str) -> Encoder {
        let strings = |args: &[&str]| {
            let mut out = Vec::new();
            args.iter().for_each(|arg| bulk(&mut out, arg));
            out
        };
        let mut hset_head = b"*8\r\n".to_vec();
        bulk(&mut hset_head, "HSET");
        let mut pexpire_head = b"*3\r\n".to_vec();
        bulk(&mut pexpire_head, "PEXPIRE");
        Encoder {
            hset_head,
            hset_tail: strings(&["v", VERSION, "pv", PREVIOUS, GUARD_FIELD, position]),
            pexpire_head,
            pexpire_tail: strings(&[TTL_MS]),
        }
    }

    /// Appends the two commands of `key`'s record to `out`.
    pub fn key(&self, key: u64, out: &mut Vec<u8>) {
        let record = format!("ver:item:{key}");
        out.extend_from_slice(&self.hset_head);
        bulk(out, &record);
        out.extend_from_slice(&self.hset_tail);
        out.extend_from_slice(&self.pexpire_head);
        bulk(out, &record);
        out.extend_from_slice(&self.pexpire_tail);
    }
}

/// Reads `lines` reply lines from `stream`; every one must be an integer
/// (`:`), as HSET's and PEXPIRE's are: an error reply fails the round.
fn read_integer_lines(stream: &mut impl Read, lines: usize, buffer: &mut [u8]) -> anyhow::Result<()> {
    let mut seen = 0;
    let mut at_line_start = true;
    while seen < lines {
        let n = stream.read(buffer)?;
        if n == 0 {
            bail!("redis closed the connection after {seen} of {lines} replies");
        }
        for &byte in &buffer[..n] {
            if at_line_start && byte != b':' {
                bail!("redis answered a bare write with something other than an integer (an error?)");
            }
            at_line_start = byte == b'\n';
            seen += usize::from(at_line_start);
        }
    }
    Ok(())
}

/// Redis's main-thread CPU seconds so far (user + system), from `INFO cpu`.
pub fn main_thread_cpu_seconds(info: &str) -> Option<f64> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<f64>().ok())
    };
    Some(field("used_cpu_user_main_thread")? + field("used_cpu_sys_main_thread")?)
}

/// Redis's main-thread CPU seconds so far, on `connection`.
pub fn redis_cpu_seconds(connection: &mut redis::Connection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query(connection)?;
    main_thread_cpu_seconds(&info).context("INFO cpu without used_cpu_*_main_thread (Redis 6.2 or later has them)")
}

/// `bumps` bare writes (at least one round), `per_call` keys per group and
/// `in_flight` keys per pipelined round, on one connection: the shape
/// redis-benchmark gives the script (one client, a pipeline of about
/// `--redis-benchmark-pipeline` bumps).
pub fn bare_writes(ctx: &mut Ctx, per_call: usize, in_flight: u64, bumps: u64) -> anyhow::Result<BareWritesResult> {
    ctx.flush_redis()?;
    let per_call = per_call.max(1);
    let calls_per_round = (in_flight / per_call as u64).max(1);
    let keys_per_round = calls_per_round * per_call as u64;
    let rounds = bumps.div_ceil(keys_per_round).max(1);
    let port = ctx.args.redis_port;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("redis on port {port}"))?;
    stream.set_nodelay(true)?;
    let position = position();
    let mut rng = rand::rng();
    let before = ctx.commandstats()?;
    let cpu_before = redis_cpu_seconds(&mut ctx.redis)?;
    let encoder = Encoder::new(&position);
    let mut packed = Vec::new();
    let mut replies = vec![0u8; 1 << 16];
    let started = Instant::now();
    for _ in 0..rounds {
        packed.clear();
        for _ in 0..keys_per_round {
            encoder.key(rng.random_range(0..KEY_SPACE), &mut packed);
        }
        // One round is about 150 KB and its replies about 8 KB: Redis never
        // blocks on its output while the round is written whole.
        stream.write_all(&packed)?;
        read_integer_lines(&mut stream, 2 * usize::try_from(keys_per_round)?, &mut replies)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = redis_cpu_seconds(&mut ctx.redis)? - cpu_before;
    let after = ctx.commandstats()?;
    let written = rounds * keys_per_round;
    Ok(BareWritesResult {
        keys_per_call: per_call,
        pipeline: calls_per_round,
        bumps: written,
        seconds,
        bumps_per_second: written as f64 / seconds,
        redis_cpu_us_per_bump: cpu / written as f64 * 1e6,
        redis_commands: Ctx::commands_delta(&before, &after),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_encoded_as_redis_rs_packs_the_same_commands() {
        let mut packed = Vec::new();
        let encoder = Encoder::new(&position());
        encoder.key(7, &mut packed);
        encoder.key(12345, &mut packed);
        let mut pipe = redis::pipe();
        for key in [7, 12345] {
            let record = format!("ver:item:{key}");
            pipe.cmd("HSET")
                .arg(&record)
                .arg("v")
                .arg(VERSION)
                .arg("pv")
                .arg(PREVIOUS)
                .arg("p:pg:bench")
                .arg(position());
            pipe.cmd("PEXPIRE").arg(&record).arg("21600000");
        }
        assert_eq!(
            String::from_utf8_lossy(&packed),
            String::from_utf8_lossy(&pipe.get_packed_pipeline())
        );
        assert_eq!(position().len(), 40);
    }

    #[test]
    fn replies_are_counted_across_reads_and_an_error_fails() {
        let mut buffer = [0u8; 3];
        assert!(read_integer_lines(&mut &b":3\r\n:1\r\n:0\r\n"[..], 3, &mut buffer).is_ok());
        assert!(read_integer_lines(&mut &b":3\r\n-ERR no\r\n"[..], 2, &mut buffer).is_err());
        assert!(
            read_integer_lines(&mut &b":3\r\n"[..], 2, &mut buffer).is_err(),
            "closed early"
        );
    }

    /// Both Redis measurements of a run, the script's (redis-benchmark)
    /// and the bare writes, against a Redis of the caller's: FLUSHALL
    /// empties it. Run with
    /// `CDC_BENCH_REDIS_URL=redis://127.0.0.1:PORT cargo test -p cdc-bench --bin harness -- --ignored`.
    #[test]
    #[ignore = "needs a redis-server it may flush (CDC_BENCH_REDIS_URL) and redis-benchmark"]
    fn the_script_and_the_bare_writes_on_a_real_redis() {
        use clap::Parser;
        let url = std::env::var("CDC_BENCH_REDIS_URL").expect("CDC_BENCH_REDIS_URL");
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok());
        let port = port.expect("a port in CDC_BENCH_REDIS_URL");
        let dir = std::env::temp_dir();
        let mut ctx = Ctx {
            args: crate::Args::parse_from(["harness", "--redis-port", &port.to_string()]),
            run_id: "test".into(),
            dir,
            redis: redis::Client::open(url.as_str()).unwrap().get_connection().unwrap(),
            redis_url: url,
            admin: String::new(),
            last_log: None,
            cluster_nodes: Vec::new(),
            on_cluster: false,
            reaper: crate::processes::Reaper(Vec::new()),
            topics: Vec::new(),
            git_at_start: Default::default(),
            dead_letters: None,
        };
        let per_call = cdc_invalidator::sink::BUMPS_PER_CALL;
        let script = crate::steps::redis_benchmark(&mut ctx, per_call).unwrap();
        let bare = bare_writes(&mut ctx, per_call, 1000, script.requests * per_call as u64).unwrap();
        let script_bumps = script.requests * per_call as u64;
        // redis-benchmark sends whole pipelines: up to one more than asked.
        let calls = script.redis_commands.by_command["evalsha"];
        assert!((script.requests..script.requests + script.pipeline).contains(&calls));
        // Nearly every scripted bump was applied: one HSET each.
        assert!(script.redis_commands.by_command["hset"] * 100 > script_bumps * 99);
        assert_eq!(
            bare.bumps,
            calls * per_call as u64,
            "as many bumps as the script ran, whole rounds too"
        );
        assert_eq!(bare.pipeline, 1000 / per_call as u64);
        assert_eq!(bare.redis_commands.by_command["hset"], bare.bumps);
        assert_eq!(bare.redis_commands.by_command["pexpire"], bare.bumps);
        assert!(!bare.redis_commands.by_command.contains_key("hmget"));
        // Redis spent CPU on both, and more per bump on the guarded script.
        let script_cpu = script.redis_cpu_us_per_bump.unwrap();
        assert!(bare.redis_cpu_us_per_bump > 0.0 && script_cpu > bare.redis_cpu_us_per_bump);
        eprintln!(
            "script {:.0} bumps/s, {script_cpu:.2} µs Redis CPU per bump; bare {:.0} bumps/s, {:.2} µs",
            script.bumps_per_second, bare.bumps_per_second, bare.redis_cpu_us_per_bump
        );
    }

    #[test]
    fn main_thread_cpu_is_user_plus_system() {
        let info = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.5\r\nused_cpu_sys_main_thread:0.25\r\nused_cpu_user_main_thread:1.5\r\n";
        assert_eq!(main_thread_cpu_seconds(info), Some(1.75));
        assert_eq!(main_thread_cpu_seconds("# CPU\r\nused_cpu_sys:1.5\r\n"), None);
    }
}
