//! `check`'s verdict on how the Redis holding version records keeps them:
//! persistence, eviction, whether a loss can be detected, replicas. Pure:
//! `RedisSink::server_facts` gathers what the server tells, `assess` judges.

use std::collections::HashMap;

/// One line of `check`'s verdict on how Redis keeps version records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finding {
    Ok(String),
    Warn(String),
}

/// What `check` learned from the server; each part may have been refused.
pub(crate) struct ServerFacts {
    /// CONFIG GET of save, appendonly, appendfsync, maxmemory,
    /// maxmemory-policy; Err when refused (ACLs) or unsupported.
    pub(crate) config: Result<HashMap<String, String>, String>,
    /// INFO (all default sections); Err when refused.
    pub(crate) info: Result<String, String>,
    pub(crate) cluster: bool,
    /// Namespaces the config declares (bumped on a loss).
    pub(crate) namespaces: usize,
    /// `redis.wait_replicas`.
    pub(crate) wait_replicas: u32,
}

/// `check`'s verdict: persistence, eviction, and whether loss is detectable.
pub(crate) fn assess(facts: &ServerFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    let info_field = |name: &str| {
        facts.info.as_ref().ok().and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().to_owned()))
        })
    };
    if let Err(e) = &facts.config {
        out.push(Finding::Warn(format!(
            "CONFIG GET refused ({e}); persistence and eviction are read from INFO instead"
        )));
    }
    let config = facts.config.as_ref().ok();
    let get = |name: &str| config.and_then(|c| c.get(name).cloned());
    // Persistence.
    let aof = get("appendonly")
        .map(|v| v == "yes")
        .or_else(|| info_field("aof_enabled").map(|v| v == "1"));
    let save = get("save");
    match (aof, save.as_deref()) {
        (Some(false), Some("")) => out.push(Finding::Warn(
            "persistence is off (save \"\", appendonly no): a restart loses every version record; the daemon detects it and bumps the epoch and every namespace, so readers must fold one of them".into(),
        )),
        (Some(false), Some(schedule)) => out.push(Finding::Warn(format!(
            "only RDB snapshots (save {schedule:?}, appendonly no): a restart or failover loses the writes since the last snapshot; the daemon detects it and bumps the epoch and every namespace"
        ))),
        (Some(false), None) => out.push(Finding::Warn(
            "no append-only file (aof_enabled:0) and the snapshot schedule is unknown: a restart loses writes since the last snapshot, if any; the daemon detects it and bumps the epoch".into(),
        )),
        (Some(true), _) => match get("appendfsync").as_deref() {
            Some("always") => out.push(Finding::Ok("persistence: append-only file, fsync always".into())),
            Some(other) => out.push(Finding::Warn(format!(
                "append-only file with appendfsync {other}: a crash loses up to about a second of writes; the daemon detects it and bumps the epoch"
            ))),
            None => out.push(Finding::Ok("persistence: append-only file (fsync policy unknown)".into())),
        },
        (None, _) => out.push(Finding::Warn(
            "persistence unknown (CONFIG and INFO refused)".into(),
        )),
    }
    // Eviction.
    let policy = get("maxmemory-policy").or_else(|| info_field("maxmemory_policy"));
    let maxmemory = get("maxmemory").or_else(|| info_field("maxmemory"));
    match (policy.as_deref(), maxmemory.as_deref()) {
        (Some("noeviction"), _) => out.push(Finding::Ok(
            "maxmemory-policy noeviction: version records are never evicted (a full Redis refuses writes and the daemon retries)".into(),
        )),
        (Some(p), m) if p.starts_with("allkeys-") || p.starts_with("volatile-") => {
            let note = if m == Some("0") { " (maxmemory 0: no limit yet)" } else { "" };
            out.push(Finding::Warn(format!(
                "maxmemory-policy {p}{note} can evict version records (they carry a TTL), and each such eviction bumps the epoch (every cache starts cold): use noeviction for the Redis holding version records"
            )));
            match get("notify-keyspace-events") {
                Some(flags) if super::eviction::notifies_evictions(&flags) => out.push(Finding::Ok(format!(
                    "notify-keyspace-events {flags:?} names evicted keys: evictions of other keys are not taken for a loss"
                ))),
                Some(flags) => out.push(Finding::Warn(format!(
                    "notify-keyspace-events {flags:?} does not name evicted keys, so every eviction (of data keys too) counts as a loss of version records and bumps the epoch: add E and e (CONFIG SET notify-keyspace-events Ee{flags})"
                ))),
                None => out.push(Finding::Warn(
                    "notify-keyspace-events unknown (CONFIG refused): unless it contains E and e, every eviction counts as a loss".into(),
                )),
            }
        }
        (Some(p), _) => out.push(Finding::Warn(format!("maxmemory-policy {p}: not known to this check"))),
        (None, _) => out.push(Finding::Warn("maxmemory-policy unknown (CONFIG and INFO refused)".into())),
    }
    // Detection.
    if let Err(e) = &facts.info {
        out.push(Finding::Warn(format!(
            "INFO refused ({e}): evictions and restarts cannot be watched, only lost or rolled-back epoch records; grant +info"
        )));
    } else if facts.cluster {
        out.push(Finding::Warn(
            "cluster: the epoch record detects restarts and rollbacks of its own node only, and evictions are not watched".into(),
        ));
    } else {
        out.push(Finding::Ok(
            "loss detection: epoch record watermarks, run_id and evicted_keys are watched".into(),
        ));
    }
    // Replicas.
    let replicas: Option<u32> = info_field("connected_slaves").and_then(|v| v.parse().ok());
    match (facts.wait_replicas, replicas) {
        (0, Some(n)) if n > 0 => out.push(Finding::Ok(format!(
            "{n} replica(s) connected; a failover may lose the last writes (detected and recovered by the epoch); redis.wait_replicas makes each batch wait for them"
        ))),
        (0, _) => {}
        (wanted, Some(n)) if n >= wanted => out.push(Finding::Ok(format!(
            "redis.wait_replicas = {wanted}: {n} replica(s) connected"
        ))),
        (wanted, Some(n)) => out.push(Finding::Warn(format!(
            "redis.wait_replicas = {wanted} but only {n} replica(s) are connected: every batch is retried (consumption paused, readiness 503) until enough replicas acknowledge"
        ))),
        (wanted, None) => out.push(Finding::Warn(format!(
            "redis.wait_replicas = {wanted}: the number of connected replicas is unknown (INFO refused)"
        ))),
    }
    if facts.namespaces == 0 {
        out.push(Finding::Warn(
            "no entity declares a namespace: after a loss only readers that fold the epoch record are protected".into(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(facts: &ServerFacts) -> Vec<String> {
        assess(facts)
            .into_iter()
            .filter_map(|f| match f {
                Finding::Warn(w) => Some(w),
                Finding::Ok(_) => None,
            })
            .collect()
    }

    #[test]
    fn check_warns_about_persistence_eviction_and_refused_config() {
        let config = |pairs: &[(&str, &str)]| -> Result<HashMap<String, String>, String> {
            Ok(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
        };
        let safe = ServerFacts {
            config: config(&[
                ("save", ""),
                ("appendonly", "yes"),
                ("appendfsync", "always"),
                ("maxmemory", "0"),
                ("maxmemory-policy", "noeviction"),
            ]),
            info: Ok("run_id:x\r\n".into()),
            cluster: false,
            namespaces: 2,
            wait_replicas: 0,
        };
        assert_eq!(warnings(&safe), Vec::<String>::new());

        let off = ServerFacts {
            config: config(&[("save", ""), ("appendonly", "no"), ("maxmemory-policy", "allkeys-lru")]),
            ..safe
        };
        let w = warnings(&off);
        assert!(w[0].starts_with("persistence is off"), "{w:?}");
        assert!(w[1].starts_with("maxmemory-policy allkeys-lru"), "{w:?}");

        let refused = ServerFacts {
            config: Err("NOPERM".into()),
            info: Ok("aof_enabled:0\r\nmaxmemory_policy:volatile-lru\r\n".into()),
            cluster: false,
            namespaces: 0,
            wait_replicas: 0,
        };
        let w = warnings(&refused);
        assert!(w[0].contains("CONFIG GET refused (NOPERM)"), "{w:?}");
        assert!(w[1].contains("aof_enabled:0"), "{w:?}");
        assert!(w[2].starts_with("maxmemory-policy volatile-lru"), "{w:?}");
        assert!(w[3].starts_with("notify-keyspace-events unknown"), "{w:?}");
        assert!(w[4].starts_with("no entity declares a namespace"), "{w:?}");

        let blind = ServerFacts {
            config: Err("NOPERM".into()),
            info: Err("NOPERM".into()),
            cluster: false,
            namespaces: 1,
            wait_replicas: 0,
        };
        let w = warnings(&blind);
        assert!(w.iter().any(|l| l.starts_with("INFO refused (NOPERM)")), "{w:?}");
    }

    #[test]
    fn check_tells_whether_evictions_of_data_keys_count_as_loss() {
        let facts = |flags: &str| ServerFacts {
            config: Ok([("maxmemory-policy", "allkeys-lru"), ("notify-keyspace-events", flags)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()),
            info: Ok("run_id:x\r\n".into()),
            cluster: false,
            namespaces: 1,
            wait_replicas: 0,
        };
        let w = warnings(&facts(""));
        assert!(w.iter().any(|l| l.contains("does not name evicted keys")), "{w:?}");
        let w = warnings(&facts("Ee"));
        assert!(!w.iter().any(|l| l.contains("notify-keyspace-events")), "{w:?}");
    }

    #[test]
    fn check_compares_wait_replicas_with_connected_replicas() {
        let facts = |wanted: u32, connected: u32| ServerFacts {
            config: Ok([
                ("maxmemory-policy", "noeviction"),
                ("appendonly", "yes"),
                ("appendfsync", "always"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()),
            info: Ok(format!("run_id:x\r\nconnected_slaves:{connected}\r\n")),
            cluster: false,
            namespaces: 1,
            wait_replicas: wanted,
        };
        assert_eq!(warnings(&facts(1, 1)), Vec::<String>::new());
        assert_eq!(warnings(&facts(0, 2)), Vec::<String>::new());
        let w = warnings(&facts(2, 1));
        assert!(w.iter().any(|l| l.contains("wait_replicas = 2 but only 1")), "{w:?}");
    }
}
