//! Routing: what one record asks of the pipeline (decode, graph, moot
//! check). Pure, so `run`, `explain`, `audit` and the tests share it;
//! `explain` also keeps what routing saw on the way ([`trace_with`]).

use crate::config::PlanSettings;
use crate::dead_letter::{Failure, Stage};
use crate::decode::{decode, table_from_topic, AvroSchemas, DecodeError, DecodeErrorKind};
use crate::event::{ChangeEvent, Decoded, KafkaRecord, Position};
use crate::graph::{
    escalate, Consistency, Derivation, Entity, EscalationReason, Graph, LookupRequest, SkipReason, StallReason, Target,
    Why,
};
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
    let event = match decode_within_limit(plan, record, avro) {
        Ok(Decoded::Change(event)) => event,
        Ok(other) => return route_other(graph, record, &other, dead_letters),
        Err(error) => return route_undecodable(graph, record, error, dead_letters),
    };
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
    let decoded = decode_within_limit(plan, record, avro);
    let event = match decoded {
        Ok(Decoded::Change(event)) => event,
        Ok(ref other) => {
            let route = route_other(graph, record, other, dead_letters);
            return Trace {
                route,
                decoded,
                derivation: None,
            };
        }
        Err(ref error) => {
            let route = route_undecodable(graph, record, error.clone(), dead_letters);
            return Trace {
                route,
                decoded,
                derivation: None,
            };
        }
    };
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
    }
}

/// Decodes the record unless it is over `plan.max_record_bytes`.
fn decode_within_limit(
    plan: &PlanSettings,
    record: &KafkaRecord,
    avro: Option<&AvroSchemas>,
) -> Result<Decoded, DecodeError> {
    let size = record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len);
    if size > plan.max_record_bytes {
        return Err(DecodeError {
            kind: DecodeErrorKind::TooLarge,
            detail: format!("{size} bytes, above plan.max_record_bytes ({})", plan.max_record_bytes),
        });
    }
    decode(record, avro)
}

/// The route of a record that decoded to something other than a row change.
fn route_other(graph: &Graph, record: &KafkaRecord, other: &Decoded, dead_letters: bool) -> Route {
    match other {
        // Debezium never writes these to a table's own topic: on the topic
        // of a configured table, skipping could lose a change (a row whose
        // columns merely look like one of them), so it is handled as an
        // undecodable record of that table instead.
        Decoded::Heartbeat | Decoded::TransactionMetadata | Decoded::SchemaChange
            if table_from_topic(&record.topic).is_some_and(|t| graph.entity(&t).is_some()) =>
        {
            let error = DecodeError {
                kind: DecodeErrorKind::UnexpectedShape,
                detail: format!(
                    "a {} record on the topic of a configured table; not skipped",
                    other.op_label_long()
                ),
            };
            route_undecodable(graph, record, error, dead_letters)
        }
        _ => Route {
            op: other.op_label(),
            action: Routed::Skip,
            dead_letter: None,
        },
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
            }
        }
        Judged::Moot => {
            return Route {
                op,
                action: Routed::Moot,
                dead_letter: None,
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
        },
        Derivation::Stall { reason, detail } => Route {
            op,
            dead_letter: render_failure(reason, &detail),
            action: Routed::Stall {
                reason: StallReason::NoNamespace(reason),
                detail,
            },
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
