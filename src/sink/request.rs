//! What the sink sends, built without I/O: a batch's bumps split into
//! pipelines (the whole batch on a standalone server, one per hash slot on a
//! cluster), each pipeline into `bump.lua` calls of at most
//! [`BUMPS_PER_CALL`] keys, each call's KEYS and ARGV as the script reads
//! them.

use std::collections::HashMap;

use redis::cluster_routing::Slot;

use crate::plan::Bump;

/// How one batch's bumps must be split into pipelines (the connection
/// says which it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One pipeline for the whole batch.
    Standalone,
    /// One pipeline per hash slot: a cluster pipeline, and one script
    /// call's keys, must not cross slots.
    Cluster,
}

/// Guarded bumps per script call. A call costs far more than the commands
/// inside it, so keys per second grow with the chunk until the call's own
/// run time blocks the server for too long; the curve is in BENCHMARKS.md
/// ("Bumps per script call").
pub const BUMPS_PER_CALL: usize = 32;

/// One script call: `EVALSHA <sha> <keys.len()> KEYS... ARGV...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScriptCall {
    pub(crate) keys: Vec<String>,
    pub(crate) args: Vec<String>,
}

impl ScriptCall {
    pub(crate) fn evalsha(&self, sha: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha).arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        cmd
    }
}

/// The bumps of one pipeline: their indices in the batch, in the order of
/// the calls, and the calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BumpRequest {
    pub(crate) indices: Vec<usize>,
    pub(crate) calls: Vec<ScriptCall>,
}

/// What one pipeline carries besides its bump calls; the reply decoder
/// needs the same to find each reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Extras {
    /// The epoch record's watermark check goes first.
    pub(crate) check: bool,
    /// `WAIT` goes last.
    pub(crate) wait: bool,
}

impl BumpRequest {
    /// The pipeline: the check call (if any), the bump calls, then WAIT (if
    /// any). WAIT covers every write sent before it on this connection, so
    /// last in the pipeline it covers the whole batch and the watermark.
    pub(crate) fn pipeline(
        &self,
        bump_sha: &str,
        check: Option<(&str, &ScriptCall)>,
        wait: Option<(u32, u64)>,
    ) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        if let Some((epoch_sha, call)) = check {
            pipe.add_command(call.evalsha(epoch_sha));
        }
        for call in &self.calls {
            pipe.add_command(call.evalsha(bump_sha));
        }
        if let Some((replicas, timeout_ms)) = wait {
            pipe.cmd("WAIT").arg(replicas).arg(timeout_ms);
        }
        pipe
    }
}

/// Splits a batch into pipelines and script calls. Every bump appears in
/// exactly one call of one request.
pub(crate) fn bump_requests(bumps: &[Bump], prefix: &str, ttl_ms: u64, layout: Layout) -> Vec<BumpRequest> {
    let keys: Vec<String> = bumps.iter().map(|b| b.target.record_key(prefix)).collect();
    let groups: Vec<Vec<usize>> = match layout {
        Layout::Standalone => vec![(0..bumps.len()).collect()],
        Layout::Cluster => {
            // redis-rs's own slot function: the one its cluster client routes
            // by. Groups keep the order of their first bump.
            let mut group_of: HashMap<Slot, usize> = HashMap::new();
            let mut groups: Vec<Vec<usize>> = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                let group = *group_of.entry(Slot::for_key(key)).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                if let Some(indices) = groups.get_mut(group) {
                    indices.push(i);
                }
            }
            groups
        }
    };
    groups
        .into_iter()
        .filter(|indices| !indices.is_empty())
        .map(|indices| {
            let calls = indices
                .chunks(BUMPS_PER_CALL)
                .map(|chunk| {
                    let members = chunk.iter().filter_map(|&i| Some((keys.get(i)?, bumps.get(i)?)));
                    bump_call(members, ttl_ms)
                })
                .collect();
            BumpRequest { indices, calls }
        })
        .collect()
}

/// One `bump.lua` call: KEYS are the version records; ARGV the TTL, then a
/// (guard field, position) pair per key.
fn bump_call<'a>(members: impl Iterator<Item = (&'a String, &'a Bump)>, ttl_ms: u64) -> ScriptCall {
    let mut keys = Vec::new();
    let mut args = vec![ttl_ms.to_string()];
    for (key, bump) in members {
        keys.push(key.clone());
        args.push(format!("p:{}", bump.position.source));
        args.push(bump.position.ordinal.clone());
    }
    ScriptCall { keys, args }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Position;
    use crate::graph::Target;

    fn key(name: &str, offset: i64) -> Bump {
        Bump {
            target: Target::Key(name.into()),
            position: Position::kafka("t", 0, offset),
            commit_time_us: None,
        }
    }

    #[test]
    fn a_standalone_batch_is_one_pipeline_of_calls_of_at_most_bumps_per_call() {
        let bumps: Vec<Bump> = (0..BUMPS_PER_CALL * 2 + 5)
            .map(|i| key(&format!("k:{i}"), i64::try_from(i).unwrap()))
            .collect();
        let requests = bump_requests(&bumps, "ver:", 600_000, Layout::Standalone);
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.indices, (0..bumps.len()).collect::<Vec<_>>());
        let sizes: Vec<usize> = request.calls.iter().map(|c| c.keys.len()).collect();
        assert_eq!(sizes, [BUMPS_PER_CALL, BUMPS_PER_CALL, 5]);
        let first = &request.calls[0];
        assert_eq!(first.keys[0], "ver:k:0");
        // ARGV[1] the TTL, then ARGV[2i], ARGV[2i + 1] per key (bump.lua).
        assert_eq!(first.args.len(), 1 + 2 * BUMPS_PER_CALL);
        assert_eq!(first.args[0], "600000");
        assert_eq!(first.args[1], "p:kafka:t:0");
        assert_eq!(first.args[2], "00000000000000000000");
        assert_eq!(first.args[4], "00000000000000000001");
        assert_eq!(request.calls[2].keys[4], format!("ver:k:{}", BUMPS_PER_CALL * 2 + 4));
    }

    #[test]
    fn a_cluster_batch_is_one_pipeline_per_hash_slot() {
        let mut bumps: Vec<Bump> = (0..200).map(|i| key(&format!("product:{i}"), i)).collect();
        bumps.push(Bump {
            target: Target::Namespace("product".into()),
            position: Position::kafka("t", 0, 7),
            commit_time_us: None,
        });
        let requests = bump_requests(&bumps, "ver:", 1000, Layout::Cluster);
        let mut seen: Vec<usize> = Vec::new();
        for request in &requests {
            let slot = Slot::for_key(&request.calls[0].keys[0]);
            let keys: Vec<&String> = request.calls.iter().flat_map(|c| &c.keys).collect();
            assert_eq!(keys.len(), request.indices.len());
            for (key, &i) in keys.iter().zip(&request.indices) {
                assert_eq!(Slot::for_key(key.as_str()), slot, "{key} is in another slot");
                assert_eq!(key.as_str(), bumps[i].target.record_key("ver:"));
            }
            assert!(request.calls.iter().all(|c| c.keys.len() <= BUMPS_PER_CALL));
            seen.extend(&request.indices);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..bumps.len()).collect::<Vec<_>>(), "every bump exactly once");
        assert!(requests.len() > 100, "200 keys spread over many slots");
        // Keys sharing a hash tag share a pipeline.
        let tagged: Vec<Bump> = (0..40).map(|i| key(&format!("{{user1}}:{i}"), i)).collect();
        let requests = bump_requests(&tagged, "ver:", 1000, Layout::Cluster);
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].calls.len(), 2);
    }

    #[test]
    fn the_pipeline_puts_the_check_first_and_wait_last() {
        let bumps = vec![key("a", 1), key("b", 2)];
        let request = bump_requests(&bumps, "ver:", 1000, Layout::Standalone).remove(0);
        let check = ScriptCall {
            keys: vec!["ver:epoch".into()],
            args: vec!["check".into()],
        };
        let packed = |pipe: redis::Pipeline| String::from_utf8_lossy(&pipe.get_packed_pipeline()).into_owned();
        let full = packed(request.pipeline("bumpsha", Some(("epochsha", &check)), Some((1, 200))));
        let check_at = full.find("epochsha").unwrap();
        let bump_at = full.find("bumpsha").unwrap();
        let wait_at = full.find("WAIT").unwrap();
        assert!(check_at < bump_at && bump_at < wait_at, "{full}");
        let plain = packed(request.pipeline("bumpsha", None, None));
        assert!(!plain.contains("WAIT") && !plain.contains("epochsha"));
        assert_eq!(plain.matches("EVALSHA").count(), 1);
    }

    #[test]
    fn hash_slots_match_redis() {
        // Values from CLUSTER KEYSLOT on a real server.
        let slot = |n| Slot::new(n).unwrap();
        assert_eq!(Slot::for_key("foo"), slot(12182));
        assert_eq!(Slot::for_key("123456789"), slot(12739));
        assert_eq!(Slot::for_key("{user1000}.following"), Slot::for_key("user1000"));
    }
}
