//! What `check` reports of a Sentinel deployment: which Sentinels answer
//! and whether they agree on the primary, the primary's state as they see
//! it, and each replica with how far it is behind (the primary's own
//! `INFO replication`: bytes of replication stream not yet acknowledged,
//! and seconds since the replica last acknowledged). A failover promotes
//! one of these replicas; one far behind is a data loss waiting to happen
//! (docs/redis-loss.md).

use std::collections::HashMap;
use std::time::Duration;

use crate::config::SentinelSettings;

/// One Sentinel's answer about the master name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentinelAnswer {
    pub(crate) sentinel: String,
    /// The primary it names, or why it did not answer.
    pub(crate) primary: Result<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplicaState {
    pub(crate) address: String,
    /// Sentinel's flags for it (`slave`, `s_down`, `disconnected`, ...).
    pub(crate) flags: String,
    /// `master-link-status` as the replica reports it.
    pub(crate) link: String,
    /// Replication stream the primary sent that the replica has not
    /// acknowledged; None when the primary does not list it.
    pub(crate) behind_bytes: Option<i64>,
    /// Seconds since its last acknowledgement, as the primary counts them.
    pub(crate) lag_s: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentinelView {
    pub(crate) answers: Vec<SentinelAnswer>,
    /// Sentinel's flags for the primary (`master`, `s_down`, `o_down`, ...).
    pub(crate) primary_flags: Option<String>,
    pub(crate) quorum: Option<String>,
    pub(crate) replicas: Vec<ReplicaState>,
}

impl SentinelView {
    /// The primary the answering Sentinels agree on; None when none answers
    /// or they disagree (a failover in progress, or a split).
    pub(crate) fn agreed_primary(&self) -> Option<&str> {
        let mut named = self.answers.iter().filter_map(|a| a.primary.as_ref().ok());
        let first = named.next()?;
        named.all(|p| p == first).then_some(first.as_str())
    }

    pub(crate) fn answering(&self) -> usize {
        self.answers.iter().filter(|a| a.primary.is_ok()).count()
    }
}

/// Asks every Sentinel, then the primary; every call bounded by `timeout`.
/// Errors are kept as text in the view (no password is part of any).
pub(crate) async fn view(settings: &SentinelSettings, timeout: Duration) -> SentinelView {
    let mut answers = Vec::new();
    let mut details = None;
    for (host, port) in &settings.addresses {
        let sentinel = format!("{host}:{port}");
        let asked = async {
            let client = redis::Client::open(sentinel_info(settings, host, *port)?)?;
            let mut connection = client.get_multiplexed_async_connection().await?;
            let address: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&settings.master_name)
                .query_async(&mut connection)
                .await?;
            let mut seen = None;
            if details.is_none() {
                let master: HashMap<String, String> = redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(&settings.master_name)
                    .query_async(&mut connection)
                    .await?;
                let replicas: Vec<HashMap<String, String>> = redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg(&settings.master_name)
                    .query_async(&mut connection)
                    .await?;
                seen = Some((master, replicas));
            }
            Ok::<_, redis::RedisError>((address, seen))
        };
        let primary = match tokio::time::timeout(timeout, asked).await {
            Ok(Ok((Some((host, port)), seen))) => {
                details = details.or(seen);
                Ok(format!("{host}:{port}"))
            }
            Ok(Ok((None, _))) => Err(format!("does not know master name {:?}", settings.master_name)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        answers.push(SentinelAnswer { sentinel, primary });
    }
    let mut view = SentinelView {
        answers,
        primary_flags: None,
        quorum: None,
        replicas: Vec::new(),
    };
    let Some((master, replicas)) = details else {
        return view;
    };
    view.primary_flags = master.get("flags").cloned();
    view.quorum = master.get("quorum").cloned();
    let offsets = match view.agreed_primary() {
        Some(primary) => primary_offsets(settings, primary, timeout).await,
        None => None,
    };
    view.replicas = replicas.iter().map(|r| replica_state(r, offsets.as_ref())).collect();
    view
}

fn replica_state(sentinel_says: &HashMap<String, String>, offsets: Option<&ReplicationInfo>) -> ReplicaState {
    let ip = sentinel_says.get("ip").cloned().unwrap_or_default();
    let port = sentinel_says.get("port").cloned().unwrap_or_default();
    let listed = offsets.and_then(|o| o.replicas.iter().find(|r| r.ip == ip && r.port == port));
    ReplicaState {
        address: format!("{ip}:{port}"),
        flags: sentinel_says.get("flags").cloned().unwrap_or_default(),
        link: sentinel_says.get("master-link-status").cloned().unwrap_or_default(),
        behind_bytes: listed.and_then(|r| Some(offsets?.master_offset - r.offset)),
        lag_s: listed.map(|r| r.lag),
    }
}

/// How to reach one Sentinel: its address, the Sentinels' credentials and TLS.
pub(crate) fn sentinel_info(
    settings: &SentinelSettings,
    host: &str,
    port: u16,
) -> redis::RedisResult<redis::ConnectionInfo> {
    let mut redis = redis::RedisConnectionInfo::default();
    if let Some(user) = &settings.sentinel_username {
        redis = redis.set_username(user);
    }
    if let Some(password) = &settings.sentinel_password {
        redis = redis.set_password(password);
    }
    Ok(address_info(settings.tls, host, port)?.set_redis_settings(redis))
}

fn address_info(tls: bool, host: &str, port: u16) -> redis::RedisResult<redis::ConnectionInfo> {
    let addr = match tls {
        true => redis::ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        },
        false => redis::ConnectionAddr::Tcp(host.to_owned(), port),
    };
    redis::IntoConnectionInfo::into_connection_info(addr)
}

/// The replication offsets in a primary's `INFO replication`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ReplicationInfo {
    pub(crate) master_offset: i64,
    pub(crate) replicas: Vec<ListedReplica>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ListedReplica {
    pub(crate) ip: String,
    pub(crate) port: String,
    pub(crate) offset: i64,
    pub(crate) lag: i64,
}

/// Parses `master_repl_offset` and the `slave<n>:ip=..,port=..,state=..,
/// offset=..,lag=..` lines.
pub(crate) fn parse_replication(info: &str) -> ReplicationInfo {
    let mut out = ReplicationInfo::default();
    for line in info.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("master_repl_offset:") {
            out.master_offset = v.parse().unwrap_or(0);
            continue;
        }
        let Some((name, fields)) = line.split_once(':') else {
            continue;
        };
        if !(name.starts_with("slave") && name[5..].chars().all(|c| c.is_ascii_digit()) && name.len() > 5) {
            continue;
        }
        let fields: HashMap<&str, &str> = fields.split(',').filter_map(|f| f.split_once('=')).collect();
        out.replicas.push(ListedReplica {
            ip: fields.get("ip").copied().unwrap_or_default().to_owned(),
            port: fields.get("port").copied().unwrap_or_default().to_owned(),
            offset: fields.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0),
            lag: fields.get("lag").and_then(|v| v.parse().ok()).unwrap_or(0),
        });
    }
    out
}

async fn primary_offsets(settings: &SentinelSettings, primary: &str, timeout: Duration) -> Option<ReplicationInfo> {
    let (host, port) = primary.rsplit_once(':')?;
    let mut redis = redis::RedisConnectionInfo::default().set_db(settings.db);
    if let Some(user) = &settings.username {
        redis = redis.set_username(user);
    }
    if let Some(password) = &settings.password {
        redis = redis.set_password(password);
    }
    let port = port.parse().ok()?;
    let asked = async {
        let client = redis::Client::open(address_info(settings.tls, host, port)?.set_redis_settings(redis))?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("INFO")
            .arg("replication")
            .query_async::<String>(&mut connection)
            .await
    };
    match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(text)) => Some(parse_replication(&text)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_offsets_and_replicas_are_read_from_info() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
            slave0:ip=127.0.0.1,port=6401,state=online,offset=1200,lag=0\r\n\
            slave1:ip=10.0.0.2,port=6379,state=wait_bgsave,offset=0,lag=7\r\n\
            master_failover_state:no-failover\r\nmaster_repl_offset:1500\r\nslave_read_repl_offset:1\r\n";
        let parsed = parse_replication(info);
        assert_eq!(parsed.master_offset, 1500);
        assert_eq!(parsed.replicas.len(), 2, "slave_read_repl_offset is not a replica line");
        assert_eq!(parsed.replicas[0].port, "6401");
        assert_eq!(parsed.replicas[1].lag, 7);
        let sentinel_says: HashMap<String, String> = [
            ("ip", "127.0.0.1"),
            ("port", "6401"),
            ("flags", "slave"),
            ("master-link-status", "ok"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let state = replica_state(&sentinel_says, Some(&parsed));
        assert_eq!(state.behind_bytes, Some(300));
        assert_eq!(state.lag_s, Some(0));
        assert_eq!(replica_state(&sentinel_says, None).behind_bytes, None);
    }

    #[test]
    fn the_primary_counts_only_when_every_answering_sentinel_names_it() {
        let answer = |s: &str, p: Result<&str, &str>| SentinelAnswer {
            sentinel: s.to_owned(),
            primary: p.map(str::to_owned).map_err(str::to_owned),
        };
        let mut view = SentinelView {
            answers: vec![
                answer("a:1", Ok("10.0.0.1:6379")),
                answer("b:1", Err("no answer")),
                answer("c:1", Ok("10.0.0.1:6379")),
            ],
            primary_flags: None,
            quorum: None,
            replicas: Vec::new(),
        };
        assert_eq!(view.agreed_primary(), Some("10.0.0.1:6379"));
        assert_eq!(view.answering(), 2);
        view.answers[1] = answer("b:1", Ok("10.0.0.2:6379"));
        assert_eq!(view.agreed_primary(), None, "a split or a failover in progress");
    }
}
