//! Routing: what one record asks of the pipeline (decode, graph, moot
//! check). Pure, so `run`, `explain`, `audit` and the tests share it.

use crate::config::PlanSettings;
use crate::dead_letter::{Failure, Stage};
use crate::decode::{decode, table_from_topic, AvroSchemas, DecodeError, DecodeErrorKind};
use crate::event::{Decoded, KafkaRecord, Position};
use crate::graph::{
    escalate, Consistency, Derivation, EscalationReason, Graph, LookupRequest, MessageVerdict, Target, Why,
};
use crate::metrics::MessageOutcome;
use crate::plan::is_moot;

/// What one record asks of the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// Nothing to invalidate (tombstone, heartbeat, unknown table, snapshot).
    Skip,
    /// Provably moot: older than the entity's cache TTL plus the skew margin.
    Moot,
    Bump {
        targets: Vec<Target>,
        position: Position,
        commit_time_us: Option<i64>,
        consistency: Consistency,
        escalation: Option<EscalationReason>,
        /// The entity's namespace, for escalation under lag.
        namespace: Option<String>,
        /// Fan-out queries still to run; their rows add targets.
        lookups: Vec<LookupRequest>,
    },
    /// Cannot be applied or escalated: stop the partition here.
    Stall { reason: &'static str, detail: String },
}

/// The routing of one record: the op label for metrics, the action, and
/// whether the record must also be kept as a dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub op: &'static str,
    pub action: Routed,
    pub dead_letter: Option<Failure>,
    /// Set for logical-decoding messages and outbox records: what became of
    /// them (`cdc_invalidator_messages_total{outcome}`).
    pub message: Option<MessageOutcome>,
}

/// Decode and graph for one record; pure, so `explain`, replays and tests
/// share it. `dead_letters` says whether a dead-letter store is configured:
/// with one, a bad record of an unknown table is kept there and skipped;
/// without one it stalls, because nothing may be lost silently.
pub fn route(graph: &Graph, plan: &PlanSettings, record: &KafkaRecord, now_us: i64, dead_letters: bool) -> Route {
    route_with(graph, plan, record, now_us, dead_letters, None)
}

/// [`route`] for topics that may carry Avro: the schemas of the record's
/// ids must already be loaded (`AvroSchemas::ensure`).
pub fn route_with(
    graph: &Graph,
    plan: &PlanSettings,
    record: &KafkaRecord,
    now_us: i64,
    dead_letters: bool,
    avro: Option<&AvroSchemas>,
) -> Route {
    let size = record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len);
    let decoded = if size > plan.max_record_bytes {
        Err(DecodeError {
            kind: DecodeErrorKind::TooLarge,
            detail: format!("{size} bytes, above plan.max_record_bytes ({})", plan.max_record_bytes),
        })
    } else {
        decode(record, avro)
    };
    let event = match decoded {
        Ok(Decoded::Change(event)) => event,
        // Debezium never writes these to a table's own topic: on the topic
        // of a configured table, skipping could lose a change (a row whose
        // columns merely look like one of them), so it is handled as an
        // undecodable record of that table instead.
        Ok(
            other @ (Decoded::Heartbeat | Decoded::TransactionMetadata | Decoded::SchemaChange | Decoded::Message(_)),
        ) if table_from_topic(&record.topic).is_some_and(|t| graph.entity(&t).is_some()) => {
            let error = DecodeError {
                kind: DecodeErrorKind::UnexpectedShape,
                detail: format!(
                    "a {} record on the topic of a configured table; not skipped",
                    other.op_label_long()
                ),
            };
            return route_undecodable(graph, record, error, dead_letters);
        }
        Ok(Decoded::Message(message)) => {
            let verdict = graph.route_message(&record.topic, &message);
            let named = Named {
                op: crate::event::Op::Message.code(),
                position: message.position,
                commit_time_us: message.commit_time_us,
            };
            return route_named(verdict, named, dead_letters);
        }
        Ok(other) => {
            return Route {
                op: other.op_label(),
                action: Routed::Skip,
                dead_letter: None,
                message: None,
            }
        }
        Err(error) => return route_undecodable(graph, record, error, dead_letters),
    };
    let op = event.op.code();
    if let Some(verdict) = graph.route_outbox(&event) {
        let named = Named {
            op,
            position: event.position,
            commit_time_us: event.commit_time_us,
        };
        return route_named(verdict, named, dead_letters);
    }
    let Some(entity) = graph.entity(&event.table) else {
        return Route {
            op,
            action: Routed::Skip,
            dead_letter: None,
            message: None,
        };
    };
    if is_moot(
        event.commit_time_us,
        now_us,
        entity.max_cache_ttl,
        plan.clock_skew_margin,
    ) {
        return Route {
            op,
            action: Routed::Moot,
            dead_letter: None,
            message: None,
        };
    }
    let render_failure = |reason: EscalationReason, detail: &str| {
        (reason == EscalationReason::Unrenderable).then(|| Failure {
            stage: Stage::Render,
            kind: "unrenderable",
            detail: detail.to_owned(),
        })
    };
    match graph.derive(&event) {
        Derivation::Skip(_) => Route {
            op,
            action: Routed::Skip,
            dead_letter: None,
            message: None,
        },
        Derivation::Stall { reason, detail } => Route {
            op,
            dead_letter: render_failure(reason, &detail),
            action: Routed::Stall {
                reason: reason.label(),
                detail,
            },
            message: None,
        },
        Derivation::Targets {
            targets,
            escalation,
            lookups,
        } => {
            let dead_letter = targets.iter().find_map(|t| match (&t.why, escalation) {
                (Why::Escalation { detail, .. }, Some(reason)) => render_failure(reason, detail),
                _ => None,
            });
            Route {
                op,
                dead_letter,
                action: Routed::Bump {
                    targets: targets.into_iter().map(|t| t.target).collect(),
                    position: event.position,
                    commit_time_us: event.commit_time_us,
                    consistency: entity.consistency,
                    escalation,
                    namespace: entity.namespace.clone(),
                    lookups,
                },
                message: None,
            }
        }
    }
}

/// Where a message or an outbox record sits: its op label, and the
/// position and commit time of its transaction.
struct Named {
    op: &'static str,
    position: Position,
    commit_time_us: Option<i64>,
}

/// A message's or an outbox record's verdict as the pipeline's action. Its
/// targets carry the record's own position under its transaction's guard
/// source, so they are ordered with that transaction's rows; they are
/// strong (applied at once), never moot and never escalated. A refused
/// content is kept as a dead letter and skipped, or, without a dead-letter
/// store, stalls its partition (nothing may be lost silently).
fn route_named(verdict: MessageVerdict, named: Named, dead_letters: bool) -> Route {
    let Named {
        op,
        position,
        commit_time_us,
    } = named;
    match verdict {
        MessageVerdict::Bump { targets, lookups } => Route {
            op,
            action: Routed::Bump {
                targets: targets.into_iter().map(|t| t.target).collect(),
                position,
                commit_time_us,
                consistency: Consistency::Strong,
                escalation: None,
                namespace: None,
                lookups,
            },
            dead_letter: None,
            message: Some(MessageOutcome::Applied),
        },
        MessageVerdict::Skip(_) => Route {
            op,
            action: Routed::Skip,
            dead_letter: None,
            message: Some(MessageOutcome::Skipped),
        },
        MessageVerdict::Ignore(_) => Route {
            op,
            action: Routed::Skip,
            dead_letter: None,
            message: Some(MessageOutcome::Ignored),
        },
        MessageVerdict::Refuse(error) => {
            let kind = error.kind().label();
            let failure = Failure {
                stage: Stage::Message,
                kind,
                detail: error.detail.clone(),
            };
            let (action, outcome) = if dead_letters {
                (Routed::Skip, MessageOutcome::DeadLetter)
            } else {
                (
                    Routed::Stall {
                        reason: kind,
                        detail: format!("refused message ({error}) and no [dead_letters] store to keep it"),
                    },
                    MessageOutcome::Stalled,
                )
            };
            Route {
                op,
                action,
                dead_letter: Some(failure),
                message: Some(outcome),
            }
        }
    }
}

/// The record says nothing trustworthy, but its topic may name the table:
/// then the whole entity is invalidated instead.
fn route_undecodable(graph: &Graph, record: &KafkaRecord, error: DecodeError, dead_letters: bool) -> Route {
    let failure = Failure {
        stage: Stage::Decode,
        kind: error.kind.label(),
        detail: error.detail.clone(),
    };
    let entity = table_from_topic(&record.topic).and_then(|t| graph.entity(&t));
    let detail = format!("undecodable record ({error})");
    let action = match entity {
        Some(entity) => match escalate(entity, Vec::new(), EscalationReason::Undecodable, detail) {
            Derivation::Targets {
                targets, escalation, ..
            } => Routed::Bump {
                targets: targets.into_iter().map(|t| t.target).collect(),
                position: Position::kafka(&record.topic, record.partition, record.offset),
                commit_time_us: None,
                consistency: entity.consistency,
                escalation,
                namespace: entity.namespace.clone(),
                lookups: Vec::new(),
            },
            Derivation::Stall { reason, detail } => Routed::Stall {
                reason: reason.label(),
                detail,
            },
            Derivation::Skip(_) => unreachable!("escalate never skips"),
        },
        // Kept as a dead letter, nothing is lost by moving on.
        None if dead_letters => Routed::Skip,
        None => Routed::Stall {
            reason: error.kind.label(),
            detail,
        },
    };
    Route {
        op: "other",
        action,
        dead_letter: Some(failure),
        message: None,
    }
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Settings};
    use serde_json::json;

    fn settings() -> Settings {
        let text = r#"
[source]
brokers = "127.0.0.1:9092"
group_id = "g"
topics = ["shop.public.products"]
[redis]
url = "redis://127.0.0.1:6379"
version_ttl = "1h"
[[entity]]
table = "public.products"
namespace = "product"
consistency = "strong"
max_cache_ttl = "10m"
keys = ["product:{id}"]
[[entity]]
table = "public.plain"
keys = ["plain:{id}"]
"#;
        config::parse("t.toml", text, &|_| None).unwrap()
    }

    fn record(topic: &str, value: &[u8]) -> KafkaRecord {
        KafkaRecord {
            topic: topic.into(),
            partition: 0,
            offset: 9,
            key: None,
            value: Some(value.to_vec()),
            timestamp_ms: None,
            headers: Vec::new(),
        }
    }

    #[test]
    fn undecodable_record_of_known_table_escalates_and_is_dead_lettered() {
        let s = settings();
        let r = route(
            &s.graph,
            &s.plan,
            &record("shop.public.products", b"{oops"),
            now_us(),
            true,
        );
        assert_eq!(
            r.dead_letter.as_ref().map(|f| (f.stage, f.kind)),
            Some((Stage::Decode, "malformed"))
        );
        match r.action {
            Routed::Bump {
                targets,
                position,
                escalation,
                ..
            } => {
                assert_eq!(targets, vec![Target::Namespace("product".into())]);
                assert_eq!(position, Position::kafka("shop.public.products", 0, 9));
                assert_eq!(escalation, Some(EscalationReason::Undecodable));
            }
            other => panic!("expected an escalation, got {other:?}"),
        }
    }

    #[test]
    fn undecodable_record_without_namespace_stalls() {
        let s = settings();
        let r = route(
            &s.graph,
            &s.plan,
            &record("shop.public.plain", b"{oops"),
            now_us(),
            true,
        );
        assert!(
            matches!(
                r.action,
                Routed::Stall {
                    reason: "undecodable",
                    ..
                }
            ),
            "{r:?}"
        );
        assert!(r.dead_letter.is_some());
    }

    #[test]
    fn undecodable_record_of_unknown_table_is_dead_lettered_or_stalls() {
        let s = settings();
        let with_store = route(&s.graph, &s.plan, &record("elsewhere", b"{oops"), now_us(), true);
        assert_eq!(with_store.action, Routed::Skip);
        assert!(with_store.dead_letter.is_some());
        let without = route(&s.graph, &s.plan, &record("elsewhere", b"{oops"), now_us(), false);
        assert!(
            matches!(
                without.action,
                Routed::Stall {
                    reason: "malformed",
                    ..
                }
            ),
            "{without:?}"
        );
    }

    #[test]
    fn oversized_record_is_not_parsed() {
        let mut s = settings();
        s.plan.max_record_bytes = 10;
        let r = route(
            &s.graph,
            &s.plan,
            &record("shop.public.products", &[b'x'; 11]),
            now_us(),
            true,
        );
        assert_eq!(r.dead_letter.map(|f| f.kind), Some("too_large"));
    }

    #[test]
    fn unrenderable_value_is_dead_lettered_and_escalated() {
        let s = settings();
        let value = serde_json::to_vec(
            &json!({"op": "c", "after": {"id": {"nested": 1}}, "source": {"connector": "postgresql",
            "name": "shop", "schema": "public", "table": "products", "lsn": 5}}),
        )
        .unwrap();
        let r = route(
            &s.graph,
            &s.plan,
            &record("shop.public.products", &value),
            now_us(),
            true,
        );
        assert_eq!(
            r.dead_letter.as_ref().map(|f| (f.stage, f.kind)),
            Some((Stage::Render, "unrenderable"))
        );
        assert!(
            matches!(
                r.action,
                Routed::Bump {
                    escalation: Some(EscalationReason::Unrenderable),
                    ..
                }
            ),
            "{r:?}"
        );
    }

    fn message_record(prefix: &str, tx_id: Option<i64>, content: &str) -> KafkaRecord {
        use base64::Engine as _;
        let value = json!({"op": "m", "ts_ms": 1, "source": {"connector": "postgresql", "name": "shop",
            "schema": "", "table": "", "txId": tx_id, "lsn": 200, "sequence": "[\"150\",\"200\"]",
            "ts_us": 1_700_000_000_000_000i64},
            "message": {"prefix": prefix, "content": base64::engine::general_purpose::STANDARD.encode(content)}});
        record("shop.message", &serde_json::to_vec(&value).unwrap())
    }

    fn with_messages() -> Settings {
        let text = r#"
[source]
brokers = "127.0.0.1:9092"
group_id = "g"
topics = ["shop.public.products", "shop.message"]
[redis]
url = "redis://127.0.0.1:6379"
version_ttl = "1h"
[messages]
prefix = "app"
[[entity]]
table = "public.products"
namespace = "product"
max_cache_ttl = "10m"
keys = ["product:{id}"]
"#;
        config::parse("t.toml", text, &|_| None).unwrap()
    }

    #[test]
    fn a_message_bumps_at_its_transactions_position_strong_and_never_moot() {
        let s = with_messages();
        // Committed long ago: still applied (messages have no cache TTL).
        let r = route(
            &s.graph,
            &s.plan,
            &message_record("app", Some(7), r#"{"v":1,"keys":["a:1"],"namespaces":["product"]}"#),
            now_us(),
            true,
        );
        assert_eq!(
            (r.op, r.message, r.dead_letter),
            ("m", Some(MessageOutcome::Applied), None)
        );
        assert_eq!(
            r.action,
            Routed::Bump {
                targets: vec![Target::Key("a:1".into()), Target::Namespace("product".into())],
                position: Position::postgres("shop", 150, 200),
                commit_time_us: Some(1_700_000_000_000_000),
                consistency: Consistency::Strong,
                escalation: None,
                namespace: None,
                lookups: Vec::new(),
            }
        );
    }

    #[test]
    fn refused_messages_are_dead_letters_or_stall_and_other_prefixes_skip() {
        let s = with_messages();
        let hostile = message_record("app", Some(7), r#"{"v":1,"keys":["epoch"]}"#);
        let r = route(&s.graph, &s.plan, &hostile, now_us(), true);
        assert_eq!(r.action, Routed::Skip);
        assert_eq!(r.message, Some(MessageOutcome::DeadLetter));
        assert_eq!(
            r.dead_letter.as_ref().map(|f| (f.stage, f.kind)),
            Some((Stage::Message, "reserved_key"))
        );
        let r = route(&s.graph, &s.plan, &hostile, now_us(), false);
        assert!(
            matches!(
                r.action,
                Routed::Stall {
                    reason: "reserved_key",
                    ..
                }
            ),
            "{r:?}"
        );
        assert_eq!(r.message, Some(MessageOutcome::Stalled));

        let untransacted = route(
            &s.graph,
            &s.plan,
            &message_record("app", None, r#"{"v":1,"keys":["a"]}"#),
            now_us(),
            true,
        );
        assert_eq!(untransacted.dead_letter.map(|f| f.kind), Some("not_transactional"));

        let other = route(
            &s.graph,
            &s.plan,
            &message_record("other", None, "not even json"),
            now_us(),
            false,
        );
        assert_eq!(
            (other.action, other.message, other.dead_letter),
            (Routed::Skip, Some(MessageOutcome::Skipped), None)
        );

        // Without [messages], a message is skipped and counted too.
        let plain = settings();
        let r = route(
            &plain.graph,
            &plain.plan,
            &message_record("app", Some(7), r#"{"v":1,"keys":["a"]}"#),
            now_us(),
            true,
        );
        assert_eq!((r.action, r.message), (Routed::Skip, Some(MessageOutcome::Skipped)));
    }

    #[test]
    fn a_message_on_a_configured_tables_topic_is_not_trusted() {
        let s = with_messages();
        let mut r = message_record("app", Some(7), r#"{"v":1,"keys":["a"]}"#);
        r.topic = "shop.public.products".into();
        let routed = route(&s.graph, &s.plan, &r, now_us(), true);
        assert_eq!(
            routed.dead_letter.map(|f| (f.stage, f.kind)),
            Some((Stage::Decode, "unexpected_shape"))
        );
        assert!(matches!(
            routed.action,
            Routed::Bump {
                escalation: Some(EscalationReason::Undecodable),
                ..
            }
        ));
    }

    #[test]
    fn old_events_are_moot_recent_ones_bump() {
        let s = settings();
        let value = |ts_us: i64| {
            serde_json::to_vec(
                &json!({"op": "u", "after": {"id": 1}, "source": {"connector": "postgresql", "name": "shop",
                "schema": "public", "table": "products", "lsn": 5, "ts_us": ts_us}}),
            )
            .unwrap()
        };
        let now = now_us();
        let r = route(
            &s.graph,
            &s.plan,
            &record("shop.public.products", &value(now - 11 * 60 * 1_000_000)),
            now,
            false,
        );
        assert_eq!((r.op, r.action), ("u", Routed::Moot));
        let r = route(
            &s.graph,
            &s.plan,
            &record("shop.public.products", &value(now - 1_000_000)),
            now,
            false,
        );
        assert!(matches!(r.action, Routed::Bump { .. }), "{r:?}");
    }
}
