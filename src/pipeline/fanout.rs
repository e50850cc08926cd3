//! Fan-out resolution: the children a parent row's change names, found by
//! the entity's `[[entity.fanout]]` queries. [`resolve`] is the whole rule
//! (what a lookup that failed or ran over `max_rows` becomes); the intake
//! runs it through a [`Resolver`] as a task of its own, off the poll loop.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::config::Settings;
use crate::graph::{EscalationReason, Graph, LookupError, LookupRequest, Lookups, Target};

/// The extra targets and the escalation the lookups made, or the stall when
/// a lookup cannot be completed and its rule declares no namespace.
pub(super) type Resolution = Result<(Vec<Target>, Option<EscalationReason>), (EscalationReason, String)>;

/// Runs the event's fan-out lookups and renders the children they name.
pub(super) async fn resolve(
    graph: &Graph,
    lookups: Option<&Lookups>,
    requests: &[LookupRequest],
    escalating: bool,
) -> Resolution {
    let mut targets = Vec::new();
    let mut escalation = None;
    for request in requests {
        let Some(fanout) = graph.entity(&request.table).and_then(|e| e.fanouts.get(request.fanout)) else {
            continue;
        };
        if let (true, Some(ns)) = (escalating, &fanout.namespace) {
            // Under lag the children's namespace replaces the query.
            targets.push(Target::Namespace(ns.clone()));
            escalation.get_or_insert(EscalationReason::Lag);
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
                            Ok(Some(key)) => targets.push(Target::Key(key)),
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
        if let Some((reason, detail)) = problem {
            let Some(ns) = &fanout.namespace else {
                return Err((
                    reason,
                    format!("{detail}; the fan-out declares no namespace to escalate to"),
                ));
            };
            tracing::warn!(%reason, %detail, namespace = %ns, "fan-out escalated to its namespace");
            targets.push(Target::Namespace(ns.clone()));
            escalation.get_or_insert(reason);
        }
    }
    Ok((targets, escalation))
}

/// Whether resolving the requests asks the lookup database anything; when
/// not (no rule, or every rule replaced by its namespace under lag) it is
/// answered at once, without a task.
pub(super) fn needs_query(graph: &Graph, requests: &[LookupRequest], escalating: bool) -> bool {
    requests.iter().any(|request| {
        graph
            .entity(&request.table)
            .and_then(|e| e.fanouts.get(request.fanout))
            .is_some_and(|fanout| !(escalating && fanout.namespace.is_some()))
    })
}

/// Resolves fan-outs for the intake; tests inject a slow one.
pub(super) trait Resolver: Send + Sync {
    fn resolve(&self, requests: Vec<LookupRequest>, escalating: bool) -> BoxFuture<'static, Resolution>;
}

/// The resolver of a running daemon: [`resolve`] against the `[lookup]` database.
pub(super) struct SqlResolver {
    pub(super) settings: Arc<Settings>,
    pub(super) lookups: Option<Lookups>,
}

impl Resolver for SqlResolver {
    fn resolve(&self, requests: Vec<LookupRequest>, escalating: bool) -> BoxFuture<'static, Resolution> {
        let settings = self.settings.clone();
        let lookups = self.lookups.clone();
        Box::pin(async move { resolve(&settings.graph, lookups.as_ref(), &requests, escalating).await })
    }
}
