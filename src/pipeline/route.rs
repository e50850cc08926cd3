//! Routing: what one record asks of the pipeline (decode, graph, moot
//! check). Pure, so `run`, `explain`, `audit` and the tests share it;
//! `explain` also keeps what routing saw on the way ([`trace_with`]).

use crate::config::PlanSettings;
use crate::dead_letter::{Failure, Stage};
use crate::decode::{decode_with, table_from_topic, AvroSchemas, DecodeError, DecodeErrorKind};
use crate::event::{ChangeEvent, Decoded, KafkaRecord, Position, RowColumns};
use crate::graph::{
    escalate, Consistency, Derivation, Entity, EscalationReason, Graph, LookupRequest, MessageVerdict, SkipReason,
    StallReason, Target, Why,
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
    Stall { reason: StallReason, detail: String },
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
    // Only the row columns the graph reads are built: routing reads no other.
    let event = match decode_within_limit(plan, record, avro, Some(graph.row_columns())) {
        Ok(Decoded::Change(event)) => event,
        Ok(other) => return route_other(graph, record, &other, dead_letters).0,
        Err(error) => return route_undecodable(graph, record, error, dead_letters),
    };
    if let Some(verdict) = graph.route_outbox(&event) {
        return route_named(verdict, Named::of_change(&event), dead_letters);
    }
    let judged = judge(graph, plan, &event, now_us);
    route_judged(event.op.code(), judged, event.position, event.commit_time_us)
}

/// [`route_with`], keeping what routing saw on the way, for `explain`: how
/// the record decoded and the graph's derivation, from the one decode and the
/// one derivation behind the route.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub route: Route,
    /// The decoded record, or why there is none (a record over
    /// `plan.max_record_bytes` is not parsed: `TooLarge`).
    pub decoded: Result<Decoded, DecodeError>,
    /// The graph's derivation for a change event that is not moot (an
    /// unknown table derives `Skip(UnknownTable)`); None otherwise.
    pub derivation: Option<Derivation>,
    /// What a logical-decoding message or a row of an outbox table names,
    /// or why it is skipped, ignored or refused; None for other records.
    pub named: Option<MessageVerdict>,
}

/// Routes one record as [`route_with`] does and keeps the [`Trace`].
pub fn trace_with(
    graph: &Graph,
    plan: &PlanSettings,
    record: &KafkaRecord,
    now_us: i64,
    dead_letters: bool,
    avro: Option<&AvroSchemas>,
) -> Trace {
    // Whole rows: `explain` prints the decoded record.
    let decoded = decode_within_limit(plan, record, avro, None);
    let event = match decoded {
        Ok(Decoded::Change(event)) => event,
        Ok(ref other) => {
            let (route, named) = route_other(graph, record, other, dead_letters);
            return Trace {
                route,
                decoded,
                derivation: None,
                named,
            };
        }
        Err(ref error) => {
            let route = route_undecodable(graph, record, error.clone(), dead_letters);
            return Trace {
                route,
                decoded,
                derivation: None,
                named: None,
            };
        }
    };
    if let Some(verdict) = graph.route_outbox(&event) {
        let route = route_named(verdict.clone(), Named::of_change(&event), dead_letters);
        return Trace {
            route,
            decoded: Ok(Decoded::Change(event)),
            derivation: None,
            named: Some(verdict),
        };
    }
    let judged = judge(graph, plan, &event, now_us);
    let derivation = match &judged {
        Judged::UnknownTable => Some(Derivation::Skip(SkipReason::UnknownTable)),
        Judged::Moot => None,
        Judged::Derived(_, derivation) => Some(derivation.clone()),
    };
    let route = route_judged(event.op.code(), judged, event.position.clone(), event.commit_time_us);
    Trace {
        route,
        decoded: Ok(Decoded::Change(event)),
        derivation,
        named: None,
    }
}

/// Decodes the record unless it is over `plan.max_record_bytes`.
fn decode_within_limit(
    plan: &PlanSettings,
    record: &KafkaRecord,
    avro: Option<&AvroSchemas>,
    read: Option<&RowColumns>,
) -> Result<Decoded, DecodeError> {
    let size = record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len);
    if size > plan.max_record_bytes {
        return Err(DecodeError {
            kind: DecodeErrorKind::TooLarge,
            detail: format!("{size} bytes, above plan.max_record_bytes ({})", plan.max_record_bytes),
        });
    }
    decode_with(record, avro, read)
}

/// The route of a record that decoded to something other than a row
/// change, and for a logical-decoding message what its content names.
fn route_other(
    graph: &Graph,
    record: &KafkaRecord,
    other: &Decoded,
    dead_letters: bool,
) -> (Route, Option<MessageVerdict>) {
    match other {
        // Debezium never writes these to a table's own topic: on the topic
        // of a configured table, skipping could lose a change (a row whose
        // columns merely look like one of them), so it is handled as an
        // undecodable record of that table instead.
        Decoded::Heartbeat | Decoded::TransactionMetadata | Decoded::SchemaChange | Decoded::Message(_)
            if table_from_topic(&record.topic).is_some_and(|t| graph.entity(&t).is_some()) =>
        {
            let error = DecodeError {
                kind: DecodeErrorKind::UnexpectedShape,
                detail: format!(
                    "a {} record on the topic of a configured table; not skipped",
                    other.op_label_long()
                ),
            };
            (route_undecodable(graph, record, error, dead_letters), None)
        }
        Decoded::Message(message) => {
            let verdict = graph.route_message(&record.topic, message);
            let named = Named {
                op: crate::event::Op::Message.code(),
                position: message.position.clone(),
                commit_time_us: message.commit_time_us,
            };
            (route_named(verdict.clone(), named, dead_letters), Some(verdict))
        }
        _ => (
            Route {
                op: other.op_label(),
                action: Routed::Skip,
                dead_letter: None,
                message: None,
            },
            None,
        ),
    }
}

/// Where a message or an outbox record sits: its op label, and the
/// position and commit time of its transaction.
struct Named {
    op: &'static str,
    position: Position,
    commit_time_us: Option<i64>,
}

impl Named {
    fn of_change(event: &ChangeEvent) -> Named {
        Named {
            op: event.op.code(),
            position: event.position.clone(),
            commit_time_us: event.commit_time_us,
        }
    }
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
            let kind = error.kind();
            let failure = Failure {
                stage: Stage::Message,
                kind: kind.label(),
                detail: error.detail.clone(),
            };
            let (action, outcome) = if dead_letters {
                (Routed::Skip, MessageOutcome::DeadLetter)
            } else {
                (
                    Routed::Stall {
                        reason: StallReason::MessageRefused(kind),
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

/// The second half: the change event through its entity's rule.
enum Judged<'g> {
    UnknownTable,
    Moot,
    Derived(&'g Entity, Derivation),
}

fn judge<'g>(graph: &'g Graph, plan: &PlanSettings, event: &ChangeEvent, now_us: i64) -> Judged<'g> {
    let Some(entity) = graph.entity(&event.table) else {
        return Judged::UnknownTable;
    };
    if is_moot(
        event.commit_time_us,
        now_us,
        entity.max_cache_ttl,
        plan.clock_skew_margin,
    ) {
        return Judged::Moot;
    }
    Judged::Derived(entity, graph.derive(event))
}

/// The route of a judged change event: `op` is its op code, `position` and
/// `commit_time_us` its own.
fn route_judged(op: &'static str, judged: Judged<'_>, position: Position, commit_time_us: Option<i64>) -> Route {
    let (entity, derivation) = match judged {
        Judged::UnknownTable => {
            return Route {
                op,
                action: Routed::Skip,
                dead_letter: None,
                message: None,
            }
        }
        Judged::Moot => {
            return Route {
                op,
                action: Routed::Moot,
                dead_letter: None,
                message: None,
            }
        }
        Judged::Derived(entity, derivation) => (entity, derivation),
    };
    let render_failure = |reason: EscalationReason, detail: &str| {
        (reason == EscalationReason::Unrenderable).then(|| Failure {
            stage: Stage::Render,
            kind: "unrenderable",
            detail: detail.to_owned(),
        })
    };
    match derivation {
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
                reason: StallReason::NoNamespace(reason),
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
                    position,
                    commit_time_us,
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
                reason: StallReason::NoNamespace(reason),
                detail,
            },
            Derivation::Skip(_) => unreachable!("escalate never skips"),
        },
        // Kept as a dead letter, nothing is lost by moving on.
        None if dead_letters => Routed::Skip,
        None => Routed::Stall {
            reason: StallReason::NoDeadLetterStore(error.kind),
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
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)) // saturates in the year 294247
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Settings};
    use crate::graph::MessageErrorKind;
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
                    reason: StallReason::NoNamespace(EscalationReason::Undecodable),
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
                    reason: StallReason::NoDeadLetterStore(DecodeErrorKind::Malformed),
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
                    reason: StallReason::MessageRefused(MessageErrorKind::ReservedKey),
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
    fn a_trace_keeps_what_a_message_or_an_outbox_row_names() {
        let s = with_messages();
        let message = message_record("app", Some(7), r#"{"v":1,"keys":["a:1"]}"#);
        let trace = trace_with(&s.graph, &s.plan, &message, now_us(), true, None);
        assert_eq!(trace.route, route(&s.graph, &s.plan, &message, now_us(), true));
        assert_eq!(trace.derivation, None);
        assert!(
            matches!(&trace.named, Some(MessageVerdict::Bump { targets, .. }) if targets.len() == 1),
            "{trace:?}"
        );

        let refused = message_record("app", None, r#"{"v":1,"keys":["a:1"]}"#);
        let trace = trace_with(&s.graph, &s.plan, &refused, now_us(), false, None);
        assert_eq!(trace.route, route(&s.graph, &s.plan, &refused, now_us(), false));
        assert!(
            matches!(&trace.named, Some(MessageVerdict::Refuse(e)) if e.kind() == MessageErrorKind::NotTransactional),
            "{trace:?}"
        );

        // A change of a configured table names nothing of its own.
        let now = now_us();
        let change = serde_json::to_vec(
            &json!({"op": "u", "after": {"id": 1}, "source": {"connector": "postgresql", "name": "shop",
            "schema": "public", "table": "products", "lsn": 5, "ts_us": now}}),
        )
        .unwrap();
        let trace = trace_with(
            &s.graph,
            &s.plan,
            &record("shop.public.products", &change),
            now,
            true,
            None,
        );
        assert_eq!(trace.named, None);
        assert!(trace.derivation.is_some(), "{trace:?}");
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

    #[test]
    fn a_trace_keeps_the_one_decoding_and_derivation_behind_its_route() {
        let s = settings();
        let now = now_us();
        let value = serde_json::to_vec(
            &json!({"op": "u", "after": {"id": 1}, "source": {"connector": "postgresql", "name": "shop",
            "schema": "public", "table": "products", "lsn": 5, "ts_us": now}}),
        )
        .unwrap();
        let change = record("shop.public.products", &value);
        let trace = trace_with(&s.graph, &s.plan, &change, now, true, None);
        assert_eq!(trace.route, route(&s.graph, &s.plan, &change, now, true));
        let Ok(Decoded::Change(event)) = &trace.decoded else {
            panic!("{trace:?}")
        };
        assert_eq!(trace.derivation, Some(s.graph.derive(event)));

        // Moot: routed without a derivation.
        let old = trace_with(&s.graph, &s.plan, &change, now + 11 * 60 * 1_000_000, true, None);
        assert_eq!((old.route.action, old.derivation), (Routed::Moot, None));

        // Not parsed at all: the decoding says why, and nothing was derived.
        let mut small = settings();
        small.plan.max_record_bytes = 10;
        let large = trace_with(&small.graph, &small.plan, &change, now, true, None);
        assert!(
            matches!(&large.decoded, Err(e) if e.kind == DecodeErrorKind::TooLarge),
            "{large:?}"
        );
        assert_eq!(large.derivation, None);
        assert_eq!(large.route, route(&small.graph, &small.plan, &change, now, true));
    }
}
