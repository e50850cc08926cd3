//! Invalidations named by the application in its own transaction
//! (docs/architecture.md, "Invalidations named by the application"): a
//! PostgreSQL logical-decoding message (`pg_logical_emit_message(true,
//! prefix, content)`) or an inserted row of an outbox table, whose content
//! names cache keys, namespaces and rows the graph cannot derive by itself.
//!
//! The content and its own checks are in `content`.
//!
//! Every key must be a cache key as the key protocol renders it, every
//! namespace one the configuration declares, every row one of a configured
//! entity whose templates render from it exactly; anything else refuses the
//! whole message (a dead letter with its kind), so a message never bumps
//! more than it names, nor part of it.

use serde_json::Value;

use super::content::{parse_content, Content, MessageError, MessageErrorKind};
use super::{Derivation, DerivedTarget, Graph, LookupRequest, Target, Why};
use crate::event::{ChangeEvent, LogicalMessage, Op, Position};

/// `[messages]`, validated (`config::messages`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRules {
    /// Messages with any other prefix are skipped (counted).
    pub(crate) prefix: String,
    /// Topics messages are read from; None: any subscribed topic.
    pub(crate) topics: Option<Vec<String>>,
    /// Keys, namespaces and rows one content may name, together.
    pub(crate) max_names: usize,
    /// Outbox tables (`schema.table` / `database.table`): their inserted
    /// rows carry a content in `outbox_column`.
    pub(crate) outbox_tables: Vec<String>,
    pub(crate) outbox_column: String,
}

impl MessageRules {
    pub(crate) fn is_outbox(&self, table: &str) -> bool {
        self.outbox_tables.iter().any(|t| t == table)
    }
}

/// What one message or outbox record asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageVerdict {
    Bump {
        targets: Vec<DerivedTarget>,
        /// Fan-out queries of the named rows' entities.
        lookups: Vec<LookupRequest>,
    },
    /// Not for this daemon (another prefix or topic); the reason in words.
    Skip(&'static str),
    /// An outbox row that was not inserted; the reason in words.
    Ignore(&'static str),
    Refuse(MessageError),
}

impl Graph {
    /// A logical-decoding message read from `topic`.
    pub(crate) fn route_message(&self, topic: &str, message: &LogicalMessage) -> MessageVerdict {
        let Some(rules) = self.messages() else {
            return MessageVerdict::Skip("no [messages] section: messages are not read");
        };
        if message.prefix != rules.prefix {
            return MessageVerdict::Skip("another prefix than [messages] prefix");
        }
        if rules
            .topics
            .as_ref()
            .is_some_and(|topics| !topics.iter().any(|t| t == topic))
        {
            return MessageVerdict::Skip("a topic outside [messages] topics");
        }
        if !message.transactional {
            return MessageVerdict::Refuse(MessageError::new(
                MessageErrorKind::NotTransactional,
                "pg_logical_emit_message(false, ...) is delivered even when its transaction rolls back: emit it with transactional = true",
            ));
        }
        self.named(&message.content, rules.max_names)
    }

    /// An event of an outbox table; None when the table is not one.
    pub(crate) fn route_outbox(&self, event: &ChangeEvent) -> Option<MessageVerdict> {
        let rules = self.messages().filter(|r| r.is_outbox(&event.table))?;
        Some(match event.op {
            Op::Create => match event.after.as_ref().and_then(|row| row.get(&rules.outbox_column)) {
                Some(Value::String(text)) => self.named(text.as_bytes(), rules.max_names),
                other => MessageVerdict::Refuse(MessageError::new(
                    MessageErrorKind::MissingContent,
                    format!(
                        "outbox column {:?} is {}: expected the content as text",
                        rules.outbox_column,
                        match other {
                            None => "not in the row",
                            Some(Value::Null) => "null",
                            Some(_) => "not text",
                        }
                    ),
                )),
            },
            Op::Update => MessageVerdict::Ignore("an update of an outbox row names nothing"),
            Op::Delete => MessageVerdict::Ignore("a delete of an outbox row (clean-up) names nothing"),
            Op::Read => MessageVerdict::Ignore("a snapshot read of an outbox row was applied when it was inserted"),
            Op::Truncate | Op::Message => MessageVerdict::Ignore("a truncate of an outbox table names nothing"),
        })
    }

    /// The targets one content names, or why it is refused.
    fn named(&self, content: &[u8], max_names: usize) -> MessageVerdict {
        match parse_content(content, max_names).and_then(|content| self.derive_content(&content)) {
            Ok((targets, lookups)) => MessageVerdict::Bump { targets, lookups },
            Err(error) => MessageVerdict::Refuse(error),
        }
    }

    /// Keys as they are, declared namespaces, and each row through its
    /// entity's templates as if it had been inserted.
    pub(crate) fn derive_content(
        &self,
        content: &Content,
    ) -> Result<(Vec<DerivedTarget>, Vec<LookupRequest>), MessageError> {
        let mut targets: Vec<DerivedTarget> = Vec::new();
        let push = |targets: &mut Vec<DerivedTarget>, target: DerivedTarget| {
            if !targets.iter().any(|t| t.target == target.target) {
                targets.push(target);
            }
        };
        for key in &content.keys {
            push(
                &mut targets,
                DerivedTarget {
                    target: Target::Key(key.clone()),
                    why: Why::Named("a key its content names".into()),
                },
            );
        }
        for namespace in &content.namespaces {
            if !self.declares_namespace(namespace) {
                return Err(MessageError::new(
                    MessageErrorKind::UnknownNamespace,
                    format!("namespace {namespace:?} is declared by no [[entity]] or fan-out (a Redis loss recovery would not bump it)"),
                ));
            }
            push(
                &mut targets,
                DerivedTarget {
                    target: Target::Namespace(namespace.clone()),
                    why: Why::Named("a namespace its content names".into()),
                },
            );
        }
        let mut lookups = Vec::new();
        for (index, (table, row)) in content.rows.iter().enumerate() {
            if self.entity(table).is_none() {
                return Err(MessageError::new(
                    MessageErrorKind::UnknownEntity,
                    format!("rows[{index}]: no [[entity]] for table {table:?}"),
                ));
            }
            let unrenderable = |detail: String| {
                MessageError::new(
                    MessageErrorKind::UnrenderableRow,
                    format!("rows[{index}] ({table}): {detail}"),
                )
            };
            let event = ChangeEvent {
                table: table.clone(),
                op: Op::Create,
                before: None,
                after: Some(row.clone()),
                key: None,
                // Derivation does not read the position.
                position: Position::kafka("", 0, 0),
                commit_time_us: None,
            };
            match self.derive(&event) {
                Derivation::Targets {
                    escalation: Some(_),
                    targets: derived,
                    ..
                } => {
                    let detail = derived
                        .into_iter()
                        .find_map(|t| match t.why {
                            Why::Escalation { detail, .. } => Some(detail),
                            _ => None,
                        })
                        .unwrap_or_else(|| "the templates do not render exactly".into());
                    return Err(unrenderable(detail));
                }
                Derivation::Targets {
                    targets: derived,
                    lookups: row_lookups,
                    escalation: None,
                } => {
                    if derived.is_empty() && row_lookups.is_empty() {
                        return Err(unrenderable("renders no key (a templated column is null)".into()));
                    }
                    for t in derived {
                        let why = Why::Named(format!("row {index} of its content ({table}): {}", t.why));
                        push(&mut targets, DerivedTarget { target: t.target, why });
                    }
                    for request in row_lookups {
                        if !lookups.contains(&request) {
                            lookups.push(request);
                        }
                    }
                }
                Derivation::Stall { detail, .. } => return Err(unrenderable(detail)),
                Derivation::Skip(reason) => return Err(unrenderable(format!("skipped ({reason:?})"))),
            }
        }
        Ok((targets, lookups))
    }

    /// A namespace an entity or one of its fan-outs declares: the ones a
    /// Redis loss recovery bumps.
    fn declares_namespace(&self, name: &str) -> bool {
        self.entities().iter().any(|e| {
            e.namespace.as_deref() == Some(name) || e.fanouts.iter().any(|f| f.namespace.as_deref() == Some(name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Consistency, Entity, Fanout, Template};
    use serde_json::json;

    fn graph(rules: Option<MessageRules>) -> Graph {
        let graph = Graph::new(vec![
            Entity {
                table: "public.products".into(),
                namespace: Some("product".into()),
                consistency: Consistency::Strong,
                max_cache_ttl: None,
                keys: vec![
                    Template::parse("product:{id}").unwrap(),
                    Template::parse("category:{category_id}:products").unwrap(),
                ],
                invalidate_on_snapshot: false,
                full_before_image: true,
                fanouts: Vec::new(),
            },
            Entity {
                table: "public.categories".into(),
                namespace: None,
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
                    namespace: Some("category-products".into()),
                }],
            },
        ]);
        match rules {
            Some(rules) => graph.with_messages(rules),
            None => graph,
        }
    }

    fn rules() -> MessageRules {
        MessageRules {
            prefix: "cdc-invalidator".into(),
            topics: None,
            max_names: 10,
            outbox_tables: vec!["shop.cache_outbox".into()],
            outbox_column: "content".into(),
        }
    }

    fn message(prefix: &str, transactional: bool, content: &str) -> LogicalMessage {
        LogicalMessage {
            prefix: prefix.into(),
            content: content.as_bytes().to_vec(),
            transactional,
            position: Position::postgres("shop", 1, 2),
            commit_time_us: None,
        }
    }

    fn targets(verdict: MessageVerdict) -> Vec<String> {
        match verdict {
            MessageVerdict::Bump { targets, .. } => targets.iter().map(|t| t.target.to_string()).collect(),
            other => panic!("expected targets, got {other:?}"),
        }
    }

    fn refused(verdict: MessageVerdict) -> MessageErrorKind {
        match verdict {
            MessageVerdict::Refuse(error) => error.kind,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_message_bumps_exactly_its_keys_namespaces_and_rows() {
        let g = graph(Some(rules()));
        let content = r#"{"v":1,"keys":["category:3:count"],"namespaces":["category-products"],
            "rows":[{"entity":"public.products","row":{"id":42,"category_id":3}},{"entity":"public.categories","row":{"id":3}}]}"#;
        let verdict = g.route_message("shop.message", &message("cdc-invalidator", true, content));
        let lookups = match &verdict {
            MessageVerdict::Bump { lookups, .. } => lookups.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            targets(verdict),
            vec![
                "key category:3:count",
                "namespace category-products",
                "key product:42",
                "key category:3:products",
                "key category:3",
            ]
        );
        // The categories row runs its fan-out, as a change of the row would.
        assert_eq!(
            lookups,
            vec![LookupRequest {
                table: "public.categories".into(),
                fanout: 0,
                binds: vec![json!(3)]
            }]
        );
    }

    #[test]
    fn other_prefixes_topics_and_no_section_are_skipped() {
        let content = r#"{"v":1,"keys":["a"]}"#;
        assert!(matches!(
            graph(Some(rules())).route_message("shop.message", &message("other", true, content)),
            MessageVerdict::Skip(_)
        ));
        assert!(matches!(
            graph(None).route_message("shop.message", &message("cdc-invalidator", true, content)),
            MessageVerdict::Skip(_)
        ));
        let only = MessageRules {
            topics: Some(vec!["shop.message".into()]),
            ..rules()
        };
        assert!(matches!(
            graph(Some(only.clone())).route_message("other.message", &message("cdc-invalidator", true, content)),
            MessageVerdict::Skip(_)
        ));
        assert!(matches!(
            graph(Some(only)).route_message("shop.message", &message("cdc-invalidator", true, content)),
            MessageVerdict::Bump { .. }
        ));
        // Another prefix is skipped before its content is even looked at.
        assert!(matches!(
            graph(Some(rules())).route_message("shop.message", &message("other", false, "{oops")),
            MessageVerdict::Skip(_)
        ));
    }

    #[test]
    fn non_transactional_and_ungrounded_contents_are_refused() {
        let g = graph(Some(rules()));
        let route = |transactional: bool, content: &str| {
            g.route_message("shop.message", &message("cdc-invalidator", transactional, content))
        };
        assert_eq!(
            refused(route(false, r#"{"v":1,"keys":["a"]}"#)),
            MessageErrorKind::NotTransactional
        );
        assert_eq!(
            refused(route(true, r#"{"v":1,"namespaces":["nope"]}"#)),
            MessageErrorKind::UnknownNamespace
        );
        assert_eq!(
            refused(route(
                true,
                r#"{"v":1,"rows":[{"entity":"public.nope","row":{"id":1}}]}"#
            )),
            MessageErrorKind::UnknownEntity
        );
        // A templated column missing: the keys cannot all be rendered.
        assert_eq!(
            refused(route(
                true,
                r#"{"v":1,"rows":[{"entity":"public.products","row":{"id":1}}]}"#
            )),
            MessageErrorKind::UnrenderableRow
        );
        // A value with no canonical form.
        assert_eq!(
            refused(route(
                true,
                r#"{"v":1,"rows":[{"entity":"public.products","row":{"id":[1],"category_id":1}}]}"#
            )),
            MessageErrorKind::UnrenderableRow
        );
        // Every templated column null: the row names nothing.
        assert_eq!(
            refused(route(
                true,
                r#"{"v":1,"rows":[{"entity":"public.products","row":{"id":null,"category_id":null}}]}"#
            )),
            MessageErrorKind::UnrenderableRow
        );
        // One bad name refuses the whole message: nothing of it is bumped.
        assert_eq!(
            refused(route(true, r#"{"v":1,"keys":["fine:1","epoch"]}"#)),
            MessageErrorKind::ReservedKey
        );
    }

    fn outbox_event(op: Op, after: Option<Value>) -> ChangeEvent {
        ChangeEvent {
            table: "shop.cache_outbox".into(),
            op,
            before: None,
            after: after.map(|v| v.as_object().unwrap().clone()),
            key: None,
            position: Position::mariadb_gtid("mariadb", 0, 5, 1, 100, 0),
            commit_time_us: None,
        }
    }

    #[test]
    fn outbox_inserts_bump_what_they_name_other_changes_nothing() {
        let g = graph(Some(rules()));
        let insert = outbox_event(
            Op::Create,
            Some(json!({"id": 1, "content": r#"{"v":1,"keys":["product:1"]}"#})),
        );
        assert_eq!(targets(g.route_outbox(&insert).unwrap()), vec!["key product:1"]);
        for op in [Op::Update, Op::Delete, Op::Read] {
            assert!(matches!(
                g.route_outbox(&outbox_event(op, Some(json!({"id": 1})))),
                Some(MessageVerdict::Ignore(_))
            ));
        }
        for row in [
            json!({"id": 1}),
            json!({"id": 1, "content": null}),
            json!({"id": 1, "content": 5}),
        ] {
            assert_eq!(
                refused(g.route_outbox(&outbox_event(Op::Create, Some(row))).unwrap()),
                MessageErrorKind::MissingContent
            );
        }
        let mut other = insert.clone();
        other.table = "shop.products".into();
        assert_eq!(g.route_outbox(&other), None);
        assert_eq!(graph(None).route_outbox(&insert), None);
    }
}
