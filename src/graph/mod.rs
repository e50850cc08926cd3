//! The relationship graph: which cache keys depend on a changed row.
//! Templates render from the old and the new image; when the targets of an
//! event cannot be derived exactly, the entity's namespace is escalated
//! instead, and without a namespace the event stalls (docs/architecture.md,
//! "Never silent"). Pure: the fan-out queries an entity declares are
//! returned as [`LookupRequest`]s, run by `lookup`, never from here.

mod content;
pub mod message;
mod template;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

pub use content::{check_key, parse_content, Content, MessageError, MessageErrorKind, CONTENT_VERSION};
pub use message::{MessageRules, MessageVerdict};
pub use template::{canonical_number, escape, RenderError, Template, TemplateError};

use crate::event::DecodeErrorKind;
use crate::event::{ChangeEvent, Op, Row, RowColumns, UNAVAILABLE_VALUE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// Flushed at once; never coalesced across a linger.
    Strong,
    /// May linger to coalesce more changes to the same keys.
    Eventual,
}

#[derive(Debug, Clone)]
pub struct Entity {
    pub(crate) table: String,
    pub(crate) namespace: Option<String>,
    pub(crate) consistency: Consistency,
    pub(crate) max_cache_ttl: Option<Duration>,
    pub(crate) keys: Vec<Template>,
    pub(crate) invalidate_on_snapshot: bool,
    /// True when the table logs whole old rows (PostgreSQL REPLICA IDENTITY
    /// FULL, MySQL binlog_row_image=FULL). Otherwise a `before` image holds
    /// only trustworthy key columns: Debezium fills the others with nulls or
    /// type defaults (`""`, `0`) that must never become keys.
    pub(crate) full_before_image: bool,
    pub(crate) fanouts: Vec<Fanout>,
}

/// One `[[entity.fanout]]` rule: a parent row's change invalidates the
/// children its query lists (run by `lookup`).
#[derive(Debug, Clone)]
pub struct Fanout {
    pub query: String,
    /// Columns of the changed row bound to `$1`, `$2`, ... (`?` on MySQL).
    pub bind: Vec<String>,
    /// Templates rendered from each result row.
    pub keys: Vec<Template>,
    pub max_rows: usize,
    /// Bumped instead when the children cannot be listed exactly.
    pub namespace: Option<String>,
}

/// A lookup the graph asks for: which rule, with which values.
#[derive(Debug, Clone, PartialEq)]
pub struct LookupRequest {
    pub(crate) table: String,
    pub(crate) fanout: usize,
    pub(crate) binds: Vec<serde_json::Value>,
}

/// What gets bumped: one version record per target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Key(String),
    Namespace(String),
}

impl Target {
    /// The Redis key of its version record.
    pub fn record_key(&self, prefix: &str) -> String {
        match self {
            Target::Key(key) => format!("{prefix}{key}"),
            Target::Namespace(name) => format!("{prefix}ns:{name}"),
        }
    }

    pub(crate) fn kind_label(&self) -> &'static str {
        match self {
            Target::Key(_) => "key",
            Target::Namespace(_) => "namespace",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Key(key) => write!(f, "key {key}"),
            Target::Namespace(name) => write!(f, "namespace {name}"),
        }
    }
}

/// Which row image a key was rendered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Image {
    Before,
    After,
}

impl fmt::Display for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Image::Before => "before",
            Image::After => "after",
        })
    }
}

/// Why an event's targets could not be derived exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EscalationReason {
    /// A template needs the old value and the event has no full `before` image.
    MissingBefore,
    /// Debezium's TOAST placeholder in a templated column.
    Toast,
    /// A value without a canonical key form, or a templated column missing.
    Unrenderable,
    /// The record could not be decoded, but its topic names a known table.
    Undecodable,
    /// Consumer lag above `plan.escalate_above_lag`: one namespace bump per
    /// entity per batch instead of every key, until the lag recovers.
    Lag,
    /// A fan-out lookup returned more than its `max_rows`.
    FanoutLimit,
    /// A fan-out lookup kept failing or timing out.
    LookupFailed,
}

impl EscalationReason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            EscalationReason::MissingBefore => "missing_before",
            EscalationReason::Toast => "toast",
            EscalationReason::Unrenderable => "unrenderable",
            EscalationReason::Undecodable => "undecodable",
            EscalationReason::Lag => "lag",
            EscalationReason::FanoutLimit => "fanout_limit",
            EscalationReason::LookupFailed => "lookup_failed",
        }
    }
}

impl fmt::Display for EscalationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why a partition stops at a record: nothing at or past it is committed
/// (docs/architecture.md, "Never silent"). Kept typed from where it arises
/// to the readiness text; [`StallReason::label`] is its one spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallReason {
    /// Exact keys cannot be derived for this reason, and no namespace is
    /// declared to bump instead.
    NoNamespace(EscalationReason),
    /// An undecodable record whose topic names no configured table, and no
    /// dead-letter store to keep it.
    NoDeadLetterStore(DecodeErrorKind),
    /// The dead-letter store refused to keep the record.
    DeadLetterRefused,
    /// A message or an outbox row whose content is refused, and no
    /// dead-letter store to keep it.
    MessageRefused(MessageErrorKind),
}

impl StallReason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            StallReason::NoNamespace(reason) => reason.label(),
            StallReason::NoDeadLetterStore(kind) => kind.label(),
            StallReason::DeadLetterRefused => "dead_letter_refused",
            StallReason::MessageRefused(kind) => kind.label(),
        }
    }
}

impl fmt::Display for StallReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why a target is bumped, for `explain` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Why {
    Template {
        template: String,
        image: Image,
    },
    Truncate,
    Escalation {
        reason: EscalationReason,
        detail: String,
    },
    /// A row of a fan-out query, rendered through one of its templates.
    FanoutRow {
        template: String,
    },
    /// Named by a logical-decoding message or an outbox row (`message`).
    Named(String),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Template { template, image } => {
                write!(f, "template {template:?} from the {image} image")
            }
            Why::Truncate => write!(f, "truncate of the whole table"),
            Why::Escalation { reason, detail } => {
                write!(f, "escalation ({}): {detail}", reason.label())
            }
            Why::FanoutRow { template } => write!(f, "fan-out row, template {template:?}"),
            Why::Named(what) => f.write_str(what),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedTarget {
    pub target: Target,
    pub(crate) why: Why,
}

/// The outcome of mapping one event through the graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Derivation {
    Targets {
        targets: Vec<DerivedTarget>,
        /// Set when the namespace was bumped because exact keys could not be derived.
        escalation: Option<EscalationReason>,
        /// Fan-out queries whose rows name more targets.
        lookups: Vec<LookupRequest>,
    },
    /// Nothing to invalidate, and nothing lost by skipping.
    Skip(SkipReason),
    /// An invalidation is needed but cannot be expressed: no namespace to
    /// escalate to. The partition must not move past this event.
    Stall { reason: EscalationReason, detail: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// No `[[entity]]` for the table.
    UnknownTable,
    /// Snapshot read (`op = r`) and the entity does not ask for them.
    Snapshot,
    /// Logical decoding message: no row.
    Message,
}

#[derive(Debug, Clone)]
pub struct Graph {
    entities: Vec<Entity>,
    by_table: HashMap<String, usize>,
    /// `[messages]`: invalidations the application names (`message`).
    messages: Option<MessageRules>,
    /// The row columns `derive` and `route_outbox` read, for decoding.
    row_columns: RowColumns,
}

impl Graph {
    pub(crate) fn new(entities: Vec<Entity>) -> Graph {
        let by_table = entities.iter().enumerate().map(|(i, e)| (e.table.clone(), i)).collect();
        let mut row_columns = RowColumns::default();
        for entity in &entities {
            // Every column `derive` looks up in a row: the templates' and the
            // fan-out binds'. The message key's columns are kept by decode.
            let templated = entity.keys.iter().flat_map(Template::columns);
            let bound = entity.fanouts.iter().flat_map(|f| f.bind.iter().map(String::as_str));
            for column in templated.chain(bound) {
                row_columns.insert(&entity.table, column);
            }
        }
        Graph {
            entities,
            by_table,
            messages: None,
            row_columns,
        }
    }

    /// The graph that also reads logical-decoding messages and outbox rows.
    pub(crate) fn with_messages(self, rules: MessageRules) -> Graph {
        let mut row_columns = self.row_columns;
        for table in &rules.outbox_tables {
            row_columns.insert(table, &rules.outbox_column);
        }
        Graph {
            messages: Some(rules),
            row_columns,
            ..self
        }
    }

    /// The columns of each table's rows that routing reads: decoding may
    /// leave every other column out.
    pub fn row_columns(&self) -> &RowColumns {
        &self.row_columns
    }

    pub(crate) fn messages(&self) -> Option<&MessageRules> {
        self.messages.as_ref()
    }

    pub(crate) fn entities(&self) -> &[Entity] {
        &self.entities
    }

    pub fn entity(&self, table: &str) -> Option<&Entity> {
        self.by_table.get(table).and_then(|&i| self.entities.get(i))
    }

    /// Maps one change event to the targets it invalidates.
    pub fn derive(&self, event: &ChangeEvent) -> Derivation {
        let Some(entity) = self.entity(&event.table) else {
            return Derivation::Skip(SkipReason::UnknownTable);
        };
        match event.op {
            Op::Message => return Derivation::Skip(SkipReason::Message),
            Op::Read if !entity.invalidate_on_snapshot => return Derivation::Skip(SkipReason::Snapshot),
            Op::Truncate => {
                return match &entity.namespace {
                    Some(ns) => Derivation::Targets {
                        targets: vec![DerivedTarget {
                            target: Target::Namespace(ns.clone()),
                            why: Why::Truncate,
                        }],
                        escalation: None,
                        lookups: Vec::new(),
                    },
                    None => Derivation::Stall {
                        reason: EscalationReason::MissingBefore,
                        detail: format!(
                            "truncate of {} and the entity declares no namespace to bump",
                            entity.table
                        ),
                    },
                }
            }
            _ => {}
        }

        let filled = fill_unavailable(entity, event);
        let event = filled.as_ref().unwrap_or(event);
        let mut targets: Vec<DerivedTarget> = Vec::new();
        let mut problem: Option<(EscalationReason, String)> = None;
        for template in &entity.keys {
            for (image, row) in images_for(entity, event, template.columns()) {
                if let Some(row) = row {
                    if let Some(column) = null_key_column(event, template, row) {
                        // A primary key is never NULL: rendering "no key" here
                        // would skip the row's own keys silently.
                        problem.get_or_insert((
                            EscalationReason::Unrenderable,
                            format!(
                                "template {:?}, {image} image: primary-key column {column:?} is null",
                                template.text()
                            ),
                        ));
                        continue;
                    }
                }
                let rendered = match row {
                    Some(row) => template.render(row),
                    None => {
                        problem.get_or_insert((
                            EscalationReason::MissingBefore,
                            format!(
                                "template {:?} needs the old row and the event has no full before image (REPLICA IDENTITY DEFAULT?)",
                                template.text()
                            ),
                        ));
                        continue;
                    }
                };
                match rendered {
                    Ok(Some(key)) => {
                        let target = Target::Key(key);
                        if !targets.iter().any(|t| t.target == target) {
                            targets.push(DerivedTarget {
                                target,
                                why: Why::Template {
                                    template: template.text().to_owned(),
                                    image,
                                },
                            });
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let reason = match e {
                            RenderError::Unavailable { .. } => EscalationReason::Toast,
                            RenderError::MissingColumn { .. } | RenderError::Unrenderable { .. } => {
                                EscalationReason::Unrenderable
                            }
                        };
                        problem.get_or_insert((reason, format!("template {:?}, {image} image: {e}", template.text())));
                    }
                }
            }
        }

        let mut lookups = Vec::new();
        for (index, fanout) in entity.fanouts.iter().enumerate() {
            for (image, row) in images_for(entity, event, fanout.bind.iter().map(String::as_str)) {
                let Some(row) = row else {
                    problem.get_or_insert((
                        EscalationReason::MissingBefore,
                        format!(
                            "fan-out {:?} binds old values and the event has no full before image",
                            fanout.query
                        ),
                    ));
                    continue;
                };
                let mut binds = Vec::with_capacity(fanout.bind.len());
                for column in &fanout.bind {
                    match row.get(column) {
                        // SQL NULL matches no child.
                        Some(serde_json::Value::Null) => break,
                        Some(serde_json::Value::String(s)) if s == crate::event::UNAVAILABLE_VALUE => {
                            problem.get_or_insert((
                                EscalationReason::Toast,
                                format!("fan-out bind column {column:?}, {image} image: TOAST placeholder"),
                            ));
                            break;
                        }
                        Some(value) => binds.push(value.clone()),
                        None => {
                            problem.get_or_insert((
                                EscalationReason::Unrenderable,
                                format!("fan-out bind column {column:?} is not in the {image} image"),
                            ));
                            break;
                        }
                    }
                }
                let request = LookupRequest {
                    table: entity.table.clone(),
                    fanout: index,
                    binds,
                };
                if request.binds.len() == fanout.bind.len() && !lookups.contains(&request) {
                    lookups.push(request);
                }
            }
        }

        match problem {
            None => Derivation::Targets {
                targets,
                escalation: None,
                lookups,
            },
            Some((reason, detail)) => match escalate(entity, targets, reason, detail) {
                // The namespace covers the children too only if they live in
                // it; lookups still run so exact child keys are bumped.
                Derivation::Targets {
                    targets, escalation, ..
                } => Derivation::Targets {
                    targets,
                    escalation,
                    lookups,
                },
                other => other,
            },
        }
    }
}

/// Debezium's TOAST placeholder stands for "unchanged and not in the WAL
/// record". In an update of a table that logs whole old rows (REPLICA
/// IDENTITY FULL), the before image of the same event holds that unchanged
/// value: the after image takes it from there. `None` when nothing to fill.
fn fill_unavailable(entity: &Entity, event: &ChangeEvent) -> Option<ChangeEvent> {
    let is_placeholder = |v: &serde_json::Value| v.as_str() == Some(UNAVAILABLE_VALUE);
    if event.op != Op::Update || !entity.full_before_image {
        return None;
    }
    let (Some(before), Some(after)) = (&event.before, &event.after) else {
        return None;
    };
    if !after.values().any(is_placeholder) {
        return None;
    }
    let mut filled = event.clone();
    if let Some(after) = filled.after.as_mut() {
        for (column, value) in after.iter_mut() {
            if let Some(old) = before
                .get(column)
                .filter(|old| is_placeholder(value) && !is_placeholder(old))
            {
                *value = old.clone();
            }
        }
    }
    Some(filled)
}

/// A templated primary-key column (one the message key names) that is NULL
/// in `row`.
fn null_key_column<'t>(event: &ChangeEvent, template: &'t Template, row: &Row) -> Option<&'t str> {
    template
        .columns()
        .find(|c| event.is_key_column(c) && row.get(*c).is_some_and(serde_json::Value::is_null))
}

/// Adds the entity's namespace to what could be rendered exactly; readers
/// that fold the namespace version into their keys are then covered.
pub(crate) fn escalate(
    entity: &Entity,
    mut targets: Vec<DerivedTarget>,
    reason: EscalationReason,
    detail: String,
) -> Derivation {
    match &entity.namespace {
        Some(ns) => {
            targets.push(DerivedTarget {
                target: Target::Namespace(ns.clone()),
                why: Why::Escalation { reason, detail },
            });
            Derivation::Targets {
                targets,
                escalation: Some(reason),
                lookups: Vec::new(),
            }
        }
        None => Derivation::Stall {
            reason,
            detail: format!("{detail}; entity {} declares no namespace to escalate to", entity.table),
        },
    }
}

/// The row images that the given columns (of a template or a fan-out bind)
/// are read from for this event. `None` stands for an old image that is
/// needed but not available.
fn images_for<'e, 'c>(
    entity: &Entity,
    event: &'e ChangeEvent,
    mut columns: impl Iterator<Item = &'c str>,
) -> Vec<(Image, Option<&'e Row>)> {
    // Key columns cannot change within one event (a primary-key change
    // arrives as a delete and a create), so the message key stands in for the
    // old image of templates that use only key columns.
    let key_only = columns.all(|c| event.is_key_column(c));
    let old: Option<&'e Row> = match &event.before {
        Some(before) if key_only || entity.full_before_image => Some(before),
        _ if key_only => event.key.as_ref().or(event.after.as_ref()),
        _ => None,
    };
    match event.op {
        Op::Create | Op::Read => vec![(Image::After, event.after.as_ref())],
        // A key-only template renders the same key from both images.
        Op::Update if key_only => vec![(Image::After, event.after.as_ref())],
        Op::Update => vec![(Image::After, event.after.as_ref()), (Image::Before, old)],
        Op::Delete => vec![(Image::Before, old)],
        Op::Truncate | Op::Message => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Position, UNAVAILABLE_VALUE};
    use serde_json::{json, Value};

    fn row(v: Value) -> Option<Row> {
        Some(v.as_object().unwrap().clone())
    }

    fn products(namespace: Option<&str>) -> Graph {
        Graph::new(vec![Entity {
            table: "public.products".into(),
            namespace: namespace.map(str::to_owned),
            consistency: Consistency::Strong,
            max_cache_ttl: None,
            keys: vec![
                Template::parse("product:{id}").unwrap(),
                Template::parse("category:{category_id}:products").unwrap(),
            ],
            invalidate_on_snapshot: false,
            full_before_image: true,
            fanouts: Vec::new(),
        }])
    }

    fn event(op: Op, before: Option<Row>, after: Option<Row>) -> ChangeEvent {
        ChangeEvent {
            table: "public.products".into(),
            op,
            before,
            after,
            key: row(json!({"id": 1})),
            position: Position::postgres("shop", 1, 2),
            commit_time_us: None,
        }
    }

    fn keys(d: &Derivation) -> Vec<String> {
        match d {
            Derivation::Targets { targets, .. } => targets.iter().map(|t| t.target.to_string()).collect(),
            other => panic!("expected targets, got {other:?}"),
        }
    }

    #[test]
    fn insert_renders_after() {
        let d = products(Some("product")).derive(&event(Op::Create, None, row(json!({"id": 1, "category_id": 3}))));
        assert_eq!(keys(&d), vec!["key product:1", "key category:3:products"]);
    }

    #[test]
    fn move_between_categories_invalidates_both() {
        let d = products(Some("product")).derive(&event(
            Op::Update,
            row(json!({"id": 1, "category_id": 3})),
            row(json!({"id": 1, "category_id": 7})),
        ));
        assert_eq!(
            keys(&d),
            vec!["key product:1", "key category:7:products", "key category:3:products"]
        );
    }

    #[test]
    fn update_without_before_escalates_for_non_key_templates_only() {
        let d = products(Some("product")).derive(&event(Op::Update, None, row(json!({"id": 1, "category_id": 7}))));
        assert_eq!(
            keys(&d),
            vec!["key product:1", "key category:7:products", "namespace product"]
        );
        assert!(matches!(
            d,
            Derivation::Targets {
                escalation: Some(EscalationReason::MissingBefore),
                ..
            }
        ));

        let key_only = Graph::new(vec![Entity {
            keys: vec![Template::parse("product:{id}").unwrap()],
            ..products(None).entities()[0].clone()
        }]);
        let d = key_only.derive(&event(Op::Update, None, row(json!({"id": 1, "category_id": 7}))));
        assert_eq!(
            d,
            Derivation::Targets {
                targets: vec![DerivedTarget {
                    target: Target::Key("product:1".into()),
                    why: Why::Template {
                        template: "product:{id}".into(),
                        image: Image::After
                    }
                }],
                escalation: None,
                lookups: Vec::new(),
            }
        );
    }

    #[test]
    fn fanout_requests_carry_binds_from_each_needed_image() {
        let categories = Graph::new(vec![Entity {
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
                namespace: Some("product".into()),
            }],
        }]);
        let mut ev = event(Op::Update, None, row(json!({"id": 1, "name": "x"})));
        ev.table = "public.categories".into();
        match categories.derive(&ev) {
            Derivation::Targets {
                lookups,
                escalation: None,
                ..
            } => {
                // The key column renders once: the old and new ids are equal.
                assert_eq!(
                    lookups,
                    vec![LookupRequest {
                        table: "public.categories".into(),
                        fanout: 0,
                        binds: vec![json!(1)]
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn delete_under_replica_identity_default_escalates() {
        // Debezium fills non-key NOT NULL columns with type defaults here.
        let default_identity = Graph::new(vec![Entity {
            full_before_image: false,
            ..products(None).entities()[0].clone()
        }]);
        let ev = event(Op::Delete, row(json!({"id": 1, "category_id": 0})), None);
        assert!(matches!(
            default_identity.derive(&ev),
            Derivation::Stall {
                reason: EscalationReason::MissingBefore,
                ..
            }
        ));
        let with_ns = Graph::new(vec![Entity {
            namespace: Some("product".into()),
            ..default_identity.entities()[0].clone()
        }]);
        assert_eq!(keys(&with_ns.derive(&ev)), vec!["key product:1", "namespace product"]);
    }

    #[test]
    fn delete_with_full_before_is_exact() {
        let d = products(Some("product")).derive(&event(Op::Delete, row(json!({"id": 1, "category_id": 3})), None));
        assert_eq!(keys(&d), vec!["key product:1", "key category:3:products"]);
    }

    #[test]
    fn toast_placeholder_escalates_and_without_namespace_stalls() {
        // No image has the value: the before image holds the placeholder too.
        let ev = event(
            Op::Update,
            row(json!({"id": 1, "category_id": UNAVAILABLE_VALUE})),
            row(json!({"id": 1, "category_id": UNAVAILABLE_VALUE})),
        );
        let d = products(Some("product")).derive(&ev);
        assert!(matches!(
            d,
            Derivation::Targets {
                escalation: Some(EscalationReason::Toast),
                ..
            }
        ));
        assert!(matches!(
            products(None).derive(&ev),
            Derivation::Stall {
                reason: EscalationReason::Toast,
                ..
            }
        ));
    }

    #[test]
    fn toast_placeholder_takes_the_before_value_under_replica_identity_full() {
        // The unchanged TOASTed column is in the before image of the same event.
        let ev = event(
            Op::Update,
            row(json!({"id": 1, "category_id": 3})),
            row(json!({"id": 1, "category_id": UNAVAILABLE_VALUE})),
        );
        let d = products(None).derive(&ev);
        assert_eq!(keys(&d), vec!["key product:1", "key category:3:products"]);
        // Without a full before image nothing can be taken from it.
        let default_identity = Graph::new(vec![Entity {
            full_before_image: false,
            namespace: Some("product".into()),
            ..products(None).entities()[0].clone()
        }]);
        assert!(matches!(
            default_identity.derive(&ev),
            Derivation::Targets {
                escalation: Some(EscalationReason::Toast),
                ..
            }
        ));
    }

    #[test]
    fn null_primary_key_escalates_instead_of_rendering_no_key() {
        let mut ev = event(Op::Create, None, row(json!({"id": null, "category_id": 3})));
        ev.key = row(json!({"id": null}));
        let d = products(Some("product")).derive(&ev);
        assert_eq!(keys(&d), vec!["key category:3:products", "namespace product"]);
        assert!(matches!(products(None).derive(&ev), Derivation::Stall { .. }));
    }

    #[test]
    fn truncate_bumps_namespace_snapshot_and_unknown_tables_skip() {
        let g = products(Some("product"));
        assert_eq!(
            keys(&g.derive(&event(Op::Truncate, None, None))),
            vec!["namespace product"]
        );
        assert_eq!(
            g.derive(&event(Op::Read, None, row(json!({"id": 1, "category_id": 3})))),
            Derivation::Skip(SkipReason::Snapshot)
        );
        let mut other = event(Op::Create, None, row(json!({"id": 1})));
        other.table = "public.other".into();
        assert_eq!(g.derive(&other), Derivation::Skip(SkipReason::UnknownTable));
    }

    #[test]
    fn null_foreign_key_names_no_key() {
        let d = products(Some("product")).derive(&event(Op::Create, None, row(json!({"id": 1, "category_id": null}))));
        assert_eq!(keys(&d), vec!["key product:1"]);
    }
}
