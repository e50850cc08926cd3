//! `[source]`: the Kafka cluster, the subscription, the librdkafka
//! passthrough, static membership, the group protocol and the liveness watch.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use super::env::{
    Env, ENV_GROUP_PROTOCOL, ENV_INSTANCE_ID, ENV_KAFKA_BROKERS, ENV_KAFKA_GROUP, ENV_KAFKA_SASL_PASSWORD,
    ENV_KAFKA_SASL_USERNAME, ENV_LEAVE_GROUP_ON_STOP,
};
use super::error::ConfigError;
use super::raw::RawSource;
use super::validator::Validator;
use crate::topic_pattern::TopicPattern;

#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub(crate) brokers: String,
    pub group_id: String,
    pub(crate) subscription: Subscription,
    pub(crate) librdkafka: BTreeMap<String, String>,
    /// `group.instance.id` when static membership is on.
    pub(crate) instance_id: Option<String>,
    pub(crate) group_protocol: GroupProtocol,
    /// Leave the group at a clean stop (after the final commit), so a
    /// static member's partitions are reassigned at once
    /// (docs/scale-in.md).
    pub(crate) leave_group_on_stop: bool,
    pub(crate) liveness: LivenessSettings,
}

/// Kafka's consumer group protocol (`group.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum GroupProtocol {
    /// JoinGroup/SyncGroup with the cooperative-sticky assignor: works with
    /// every broker the daemon supports, so it stays the default.
    #[default]
    Classic,
    /// KIP-848 (Kafka 4.0 or newer): the broker computes assignments and
    /// each member heartbeats on its own, with no group-wide barrier.
    Consumer,
}

impl GroupProtocol {
    /// The value of librdkafka's `group.protocol`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

/// librdkafka refuses these with `group.protocol=consumer` (the broker owns
/// the session, the heartbeat and the assignor there); refused at load so
/// the error names the line instead of failing at consumer creation.
const CLASSIC_ONLY_RDKAFKA_SETTINGS: &[&str] = &["session.timeout.ms", "heartbeat.interval.ms", "group.protocol.type"];

// Off unless asked for: static membership exists to keep a member's
// partitions across a restart, and a member that leaves at every stop gives
// that up (two rebalances per restart instead of none). Deployments whose
// stops are mostly for good (an autoscaler, the Helm chart's StatefulSet)
// turn it on.
fn default_leave_group_on_stop() -> bool {
    false
}

#[derive(Debug, Clone)]
pub(crate) enum Subscription {
    Topics(Vec<String>),
    /// Anchored (`^(...)$`) and compiled by librdkafka's own engine.
    Regex(TopicPattern),
}

impl Subscription {
    /// What `subscribe` takes: topic names, or one pattern starting with `^`.
    pub(crate) fn patterns(&self) -> Vec<String> {
        match self {
            Subscription::Topics(topics) => topics.clone(),
            Subscription::Regex(pattern) => vec![pattern.anchored().to_owned()],
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct LivenessSettings {
    /// None: the subscribed topics.
    pub(crate) topics: Option<Vec<String>>,
    pub(crate) max_idle: Option<Duration>,
    pub(crate) interval: Duration,
}

// Watermarks of the watched topics are read this often: Debezium's
// heartbeats come every few seconds, so 5 s keeps the idle age accurate to
// a heartbeat while costing one metadata round trip per partition.
pub(super) fn default_liveness_interval() -> Duration {
    Duration::from_secs(5)
}

/// The environment's SASL credentials replace the file's, so that the
/// password can come from a Secret while the rest of the passthrough is
/// checked in. An empty variable counts as unset.
fn with_sasl_credentials(mut librdkafka: BTreeMap<String, String>, env: Env<'_>) -> BTreeMap<String, String> {
    for (variable, setting) in [
        (ENV_KAFKA_SASL_USERNAME, "sasl.username"),
        (ENV_KAFKA_SASL_PASSWORD, "sasl.password"),
    ] {
        if let Some(value) = env(variable).filter(|value| !value.is_empty()) {
            librdkafka.insert(setting.to_owned(), value);
        }
    }
    librdkafka
}

/// "auto": `<hostname>-<admin port>`: stable across restarts of a replica,
/// distinct between replicas on one host (they cannot share a port).
pub(super) fn auto_instance_id(admin: SocketAddr) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}-{}", admin.port())
}

/// The static-membership id as written (file or environment), resolved once
/// the admin address is known; `span` is the file's `instance_id`, if any.
pub(super) fn resolve_instance_id(
    id: Option<String>,
    span: Option<Range<usize>>,
    admin_listen: SocketAddr,
    v: &Validator<'_>,
) -> Result<Option<String>, ConfigError> {
    match id {
        // "auto" is named after the admin port, known only now; with port 0
        // (the kernel picks one) every replica on a host would share a name.
        Some(id) if id == "auto" && admin_listen.port() == 0 => v.error(
            span.unwrap_or(0..0),
            "source.instance_id",
            "\"auto\" is named after the admin port, but admin.listen has port 0: set an explicit id",
        ),
        Some(id) if id == "auto" => Ok(Some(auto_instance_id(admin_listen))),
        id => Ok(id),
    }
}

impl RawSource {
    /// The source settings, and the static-membership id still to resolve
    /// ("auto" needs the admin address); None when membership is dynamic.
    pub(super) fn validate(
        self,
        v: &Validator<'_>,
        env: Env<'_>,
    ) -> Result<(SourceSettings, Option<String>), ConfigError> {
        let subscription = self.subscription(v)?;
        self.refuse_forced_settings(v)?;
        let max_idle = v.optional_duration(self.max_idle.as_ref(), "source.max_idle")?;
        let liveness_topics = match &self.liveness_topics {
            Some(t) if t.get_ref().is_empty() => {
                return v.error(t.span(), "source.liveness_topics", "expected at least one topic")
            }
            Some(t) => Some(t.get_ref().clone()),
            None => None,
        };
        let group_protocol = self.group_protocol(v, env)?;
        let instance_id = self.instance_id(v, env)?;
        let leave_group_on_stop = self.leave_group_on_stop(v, env, group_protocol, instance_id.is_some())?;
        let settings = SourceSettings {
            brokers: env(ENV_KAFKA_BROKERS).unwrap_or_else(|| self.brokers.get_ref().clone()),
            group_id: env(ENV_KAFKA_GROUP).unwrap_or_else(|| self.group_id.get_ref().clone()),
            subscription,
            librdkafka: with_sasl_credentials(
                self.librdkafka
                    .into_iter()
                    .map(|(k, val)| (k, val.into_inner()))
                    .collect(),
                env,
            ),
            instance_id: None,
            group_protocol,
            leave_group_on_stop,
            liveness: LivenessSettings {
                topics: liveness_topics,
                max_idle,
                interval: default_liveness_interval(),
            },
        };
        Ok((settings, instance_id))
    }

    fn subscription(&self, v: &Validator<'_>) -> Result<Subscription, ConfigError> {
        match (&self.topics, &self.topic_regex) {
            (Some(topics), None) => {
                // librdkafka refuses the whole subscription (Invalid argument)
                // for an empty list, an empty name or a repeated one.
                let names = topics.get_ref();
                if names.is_empty() {
                    return v.error(topics.span(), "source.topics", "expected at least one topic");
                }
                if let Some(bad) = names.iter().find(|t| t.is_empty() || t.starts_with('^')) {
                    return v.error(
                        topics.span(),
                        "source.topics",
                        format!("{bad:?} is not a topic name (patterns go in `topic_regex`)"),
                    );
                }
                let mut seen = std::collections::BTreeSet::new();
                if let Some(repeated) = names.iter().find(|t| !seen.insert(t.as_str())) {
                    return v.error(topics.span(), "source.topics", format!("{repeated:?} is listed twice"));
                }
                Ok(Subscription::Topics(names.clone()))
            }
            (None, Some(pattern)) => match TopicPattern::new(pattern.get_ref()) {
                Ok(compiled) => Ok(Subscription::Regex(compiled)),
                Err(reason) => v.error(pattern.span(), "source.topic_regex", reason),
            },
            (Some(topics), Some(_)) => v.error(
                topics.span(),
                "source.topics",
                "set either `topics` or `topic_regex`, not both",
            ),
            (None, None) => v.error(
                self.group_id.span(),
                "source",
                "expected `topics = [...]` or `topic_regex = \"...\"`",
            ),
        }
    }

    /// The passthrough may not set what the daemon forces (`kafka_forced`).
    fn refuse_forced_settings(&self, v: &Validator<'_>) -> Result<(), ConfigError> {
        match self
            .librdkafka
            .iter()
            .find(|(name, _)| crate::kafka_forced::is_forced(name))
        {
            Some((name, value)) => v.error(
                value.span(),
                &format!("source.librdkafka.{name}"),
                "is set by cdc-invalidator itself (offsets are stored only after Redis acknowledged); remove it",
            ),
            None => Ok(()),
        }
    }

    /// The environment's protocol wins over the file's; the consumer protocol
    /// refuses the passthrough settings only the classic one reads.
    fn group_protocol(&self, v: &Validator<'_>, env: Env<'_>) -> Result<GroupProtocol, ConfigError> {
        let group_protocol = v.choice(
            env(ENV_GROUP_PROTOCOL).or_else(|| self.group_protocol.as_ref().map(|p| p.get_ref().clone())),
            self.group_protocol.as_ref().map(|p| p.span()).unwrap_or(0..0),
            "source.group_protocol",
            &[
                ("classic", GroupProtocol::Classic),
                ("consumer", GroupProtocol::Consumer),
            ],
            GroupProtocol::Classic,
        )?;
        if group_protocol == GroupProtocol::Consumer {
            if let Some((name, value)) = self
                .librdkafka
                .iter()
                .find(|(name, _)| CLASSIC_ONLY_RDKAFKA_SETTINGS.contains(&name.as_str()))
            {
                return v.error(
                    value.span(),
                    &format!("source.librdkafka.{name}"),
                    "is not used with group_protocol = \"consumer\" (the broker sets it: group.consumer.*); remove it",
                );
            }
        }
        Ok(group_protocol)
    }

    /// The environment's value wins over the file's. Refused for a static
    /// member of the consumer protocol: librdkafka 2.12 always sends that
    /// member's leave as a temporary one (epoch -2), so the broker keeps its
    /// partitions for the session timeout whatever the daemon does, and a
    /// setting that silently does nothing would be trusted at scale-in. A
    /// dynamic member leaves at every close anyway, so there it only makes
    /// the stop wait for the revoke.
    fn leave_group_on_stop(
        &self,
        v: &Validator<'_>,
        env: Env<'_>,
        group_protocol: GroupProtocol,
        static_member: bool,
    ) -> Result<bool, ConfigError> {
        let span = self.leave_group_on_stop.as_ref().map(|l| l.span()).unwrap_or(0..0);
        let field = "source.leave_group_on_stop";
        let leave = match env(ENV_LEAVE_GROUP_ON_STOP) {
            Some(text) => match text.as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return v.error(
                        span,
                        field,
                        format!("{ENV_LEAVE_GROUP_ON_STOP} must be \"true\" or \"false\", got {text:?}"),
                    )
                }
            },
            None => self
                .leave_group_on_stop
                .as_ref()
                .map_or_else(default_leave_group_on_stop, |l| *l.get_ref()),
        };
        if leave && static_member && group_protocol == GroupProtocol::Consumer {
            return v.error(
                span,
                field,
                "cannot be honoured with group_protocol = \"consumer\": librdkafka leaves a static member's group only for the session timeout there, so its partitions wait anyway; use the classic protocol or remove it",
            );
        }
        Ok(leave)
    }

    /// The static-membership id as written; None when membership is dynamic.
    fn instance_id(&self, v: &Validator<'_>, env: Env<'_>) -> Result<Option<String>, ConfigError> {
        // An empty CDC_INSTANCE_ID turns static membership off whatever the
        // file says (one config shared by a fleet, one replica opting out).
        let env_instance_id = env(ENV_INSTANCE_ID);
        if let (None, Some(i)) = (&env_instance_id, &self.instance_id) {
            if i.get_ref().is_empty() {
                return v.error(i.span(), "source.instance_id", "expected a non-empty id or \"auto\"");
            }
        }
        Ok(env_instance_id
            .or_else(|| self.instance_id.as_ref().map(|i| i.get_ref().clone()))
            .filter(|id| !id.is_empty()))
    }
}
