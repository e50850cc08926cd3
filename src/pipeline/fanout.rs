//! Fan-out resolution: the children a parent row's change names, found by
//! the entity's `[[entity.fanout]]` queries. [`resolve`] is the whole rule
//! (what a lookup that failed or ran over `max_rows` becomes); the intake
//! runs it through a [`Resolver`] as a task of its own, off the poll loop.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::config::Settings;
use crate::graph::{EscalationReason, Graph, LookupRequest, Target};
use crate::lookup::Lookups;

/// The extra targets and the escalation the lookups made, or the stall when
/// a lookup cannot be completed and its rule declares no namespace.
pub(super) type Resolution = Result<(Vec<Target>, Option<EscalationReason>), (EscalationReason, String)>;

/// Runs the event's fan-out lookups and renders the children they name,
/// through the one fan-out rule `explain` and `dead-letters replay` share
/// (`lookup::fan_out`); escalations to a namespace are logged here, where
/// the daemon acts on them.
pub(super) async fn resolve(
    graph: &Graph,
    lookups: Option<&Lookups>,
    requests: &[LookupRequest],
    escalating: bool,
) -> Resolution {
    let found = crate::lookup::fan_out(graph, lookups, requests, escalating)
        .await
        .map_err(|stall| (stall.reason, stall.detail))?;
    found.log_escalations();
    Ok((found.targets.into_iter().map(|t| t.target).collect(), found.escalation))
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
