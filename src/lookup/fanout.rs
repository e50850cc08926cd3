//! Fan-out resolution: a route's lookup requests become the children's
//! keys, or the fan-out's namespace when they cannot be listed exactly, or a
//! stall when the rule has no namespace (docs/architecture.md, "Never
//! silent"). The consumer stage, `explain` and `dead-letters replay` all
//! resolve through [`fan_out`], so they agree on what a change invalidates.

use super::{LookupError, Lookups};
use crate::graph::{DerivedTarget, EscalationReason, Graph, LookupRequest, Target, Why};

/// What the fan-out added to a record's targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FannedOut {
    /// The children's keys and the namespaces bumped instead, each with its
    /// reason, in the order found (duplicates possible).
    pub(crate) targets: Vec<DerivedTarget>,
    /// The first escalation made: `Lag` when a fan-out was replaced by its
    /// namespace under lag, else why a lookup could not list the children.
    pub(crate) escalation: Option<EscalationReason>,
}

/// A lookup that could not complete for a rule without a namespace: the
/// partition must stop at the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FanoutStall {
    pub(crate) reason: EscalationReason,
    pub(crate) detail: String,
}

/// Runs the lookups of `requests` (rules of `graph`) and renders the rows
/// into keys. Under lag (`escalating`) a rule with a namespace is replaced
/// by it without querying. A lookup over `max_rows`, failing, or naming a
/// row a template cannot render escalates to the rule's namespace; without
/// one the first such lookup ends the fan-out with a [`FanoutStall`].
/// Without a lookup database every lookup counts as failed.
pub(crate) async fn fan_out(
    graph: &Graph,
    lookups: Option<&Lookups>,
    requests: &[LookupRequest],
    escalating: bool,
) -> Result<FannedOut, FanoutStall> {
    let mut found = FannedOut {
        targets: Vec::new(),
        escalation: None,
    };
    for request in requests {
        let Some(fanout) = graph.entity(&request.table).and_then(|e| e.fanouts.get(request.fanout)) else {
            continue;
        };
        if let (true, Some(ns)) = (escalating, &fanout.namespace) {
            // Under lag the children's namespace replaces the query.
            found.targets.push(DerivedTarget {
                target: Target::Namespace(ns.clone()),
                why: Why::Escalation {
                    reason: EscalationReason::Lag,
                    detail: format!("fan-out {:?} replaced by its namespace under lag", fanout.query),
                },
            });
            found.escalation.get_or_insert(EscalationReason::Lag);
            continue;
        }
        let outcome = match lookups {
            Some(lookups) => lookups.run(fanout, &request.binds).await,
            None => Err(LookupError::Failed {
                attempts: 0,
                detail: "no [lookup] database configured".into(),
            }),
        };
        let problem = match outcome {
            Ok(rows) => {
                let mut unrenderable = None;
                for row in &rows {
                    for template in &fanout.keys {
                        match template.render(row) {
                            Ok(Some(key)) => found.targets.push(DerivedTarget {
                                target: Target::Key(key),
                                why: Why::FanoutRow {
                                    template: template.text().to_owned(),
                                },
                            }),
                            Ok(None) => {}
                            Err(e) => unrenderable = Some(format!("fan-out row, template {:?}: {e}", template.text())),
                        }
                    }
                }
                unrenderable.map(|detail| (EscalationReason::Unrenderable, detail))
            }
            Err(e @ LookupError::OverLimit { .. }) => Some((
                EscalationReason::FanoutLimit,
                format!("fan-out {:?}: {e}", fanout.query),
            )),
            Err(e @ LookupError::Failed { .. }) => Some((
                EscalationReason::LookupFailed,
                format!("fan-out {:?}: {e}", fanout.query),
            )),
        };
        let Some((reason, detail)) = problem else {
            continue;
        };
        let Some(ns) = &fanout.namespace else {
            return Err(FanoutStall {
                reason,
                detail: format!("{detail}; the fan-out declares no namespace to escalate to"),
            });
        };
        found.targets.push(DerivedTarget {
            target: Target::Namespace(ns.clone()),
            why: Why::Escalation { reason, detail },
        });
        found.escalation.get_or_insert(reason);
    }
    Ok(found)
}

impl FannedOut {
    /// A WARN line per fan-out escalated to its namespace because its
    /// children could not be listed (the daemon's log; a lag escalation is
    /// expected under load and only counted).
    pub(crate) fn log_escalations(&self) {
        for t in &self.targets {
            if let (Target::Namespace(ns), Why::Escalation { reason, detail }) = (&t.target, &t.why) {
                if *reason != EscalationReason::Lag {
                    tracing::warn!(reason = reason.label(), %detail, namespace = %ns, "fan-out escalated to its namespace");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Consistency, Entity, Fanout, Template};
    use serde_json::json;

    fn categories(namespace: Option<&str>) -> Graph {
        Graph::new(vec![Entity {
            table: "public.categories".into(),
            namespace: Some("category".into()),
            consistency: Consistency::Eventual,
            max_cache_ttl: None,
            keys: vec![Template::parse("category:{id}").unwrap()],
            invalidate_on_snapshot: false,
            full_before_image: false,
            fanouts: vec![Fanout {
                query: "SELECT id FROM products WHERE category_id = $1".into(),
                bind: vec!["id".into()],
                keys: vec![Template::parse("product:{id}").unwrap()],
                max_rows: 10,
                namespace: namespace.map(str::to_owned),
            }],
        }])
    }

    fn request(fanout: usize) -> LookupRequest {
        LookupRequest {
            table: "public.categories".into(),
            fanout,
            binds: vec![json!(1)],
        }
    }

    #[tokio::test]
    async fn under_lag_the_namespace_replaces_the_query() {
        let found = fan_out(&categories(Some("product")), None, &[request(0)], true)
            .await
            .unwrap();
        let targets: Vec<&Target> = found.targets.iter().map(|t| &t.target).collect();
        assert_eq!(targets, [&Target::Namespace("product".into())]);
        assert_eq!(found.escalation, Some(EscalationReason::Lag));
    }

    #[tokio::test]
    async fn without_a_lookup_database_the_fanout_escalates_or_stalls() {
        let found = fan_out(&categories(Some("product")), None, &[request(0)], false)
            .await
            .unwrap();
        assert_eq!(found.escalation, Some(EscalationReason::LookupFailed));
        match &found.targets[..] {
            [DerivedTarget {
                target: Target::Namespace(ns),
                why: Why::Escalation { reason, detail },
            }] => {
                assert_eq!((ns.as_str(), *reason), ("product", EscalationReason::LookupFailed));
                assert!(detail.contains("no [lookup] database configured"), "{detail}");
            }
            other => panic!("{other:?}"),
        }

        // Lag does not help a rule without a namespace: it still needs the rows.
        let stall = fan_out(&categories(None), None, &[request(0)], true).await.unwrap_err();
        assert_eq!(stall.reason, EscalationReason::LookupFailed);
        assert!(
            stall
                .detail
                .ends_with("the fan-out declares no namespace to escalate to"),
            "{}",
            stall.detail
        );
    }

    #[tokio::test]
    async fn a_request_for_an_unknown_rule_adds_nothing() {
        let found = fan_out(&categories(None), None, &[request(7)], false).await.unwrap();
        assert_eq!(
            found,
            FannedOut {
                targets: Vec::new(),
                escalation: None
            }
        );
    }
}
