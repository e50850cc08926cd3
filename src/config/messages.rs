//! `[messages]`: invalidations the application names in its own
//! transaction, which the graph cannot derive from rows: PostgreSQL
//! logical-decoding messages with the configured prefix, and inserted rows
//! of outbox tables (docs/operations.md, "[messages]"; the content format in
//! docs/readers.md). Built into `graph::MessageRules`.

use serde_spanned::Spanned;
use std::collections::BTreeSet;

use super::error::ConfigError;
use super::raw::RawMessages;
use super::source::Subscription;
use super::validator::Validator;
use crate::graph::MessageRules;

// Names the daemon, so one application's other uses of
// pg_logical_emit_message (replication hooks, auditing) never collide.
pub(super) const DEFAULT_PREFIX: &str = "cdc-invalidator";
// A message is applied in one batch, one bump per key; a change that
// touches more keys than this is better said with a namespace. 1000 keys of
// a hundred bytes is a 100 kB content, far below plan.max_record_bytes.
pub(super) const DEFAULT_MAX_KEYS_PER_MESSAGE: usize = 1000;
// The column the reader libraries' outbox helpers write.
pub(super) const DEFAULT_OUTBOX_COLUMN: &str = "content";

/// The section, checked against the subscription (a message topic must be
/// subscribed) and the entities (an outbox table is not one).
pub(super) fn validate_messages(
    raw: Option<Spanned<RawMessages>>,
    subscription: &Subscription,
    entity_tables: &BTreeSet<String>,
    v: &Validator<'_>,
) -> Result<Option<MessageRules>, ConfigError> {
    let Some(raw) = raw.map(Spanned::into_inner) else {
        return Ok(None);
    };
    let prefix = match raw.prefix {
        Some(p) if p.get_ref().is_empty() => {
            return v.error(p.span(), "messages.prefix", "expected a non-empty prefix")
        }
        Some(p) => p.into_inner(),
        None => DEFAULT_PREFIX.to_owned(),
    };
    let topics = match &raw.topics {
        Some(list) => {
            let names = names(list, "messages.topics", "topic", v)?;
            for topic in &names {
                let subscribed = match subscription {
                    Subscription::Topics(topics) => topics.contains(topic),
                    Subscription::Regex(pattern) => pattern.is_match(topic),
                };
                if !subscribed {
                    return v.error(
                        list.span(),
                        "messages.topics",
                        format!("topic {topic:?} is not subscribed: add it to source.topics (or make source.topic_regex match it)"),
                    );
                }
            }
            Some(names)
        }
        None => None,
    };
    let max_names = v
        .at_least_one(raw.max_keys_per_message.as_ref(), "messages.max_keys_per_message")?
        .unwrap_or(DEFAULT_MAX_KEYS_PER_MESSAGE);
    let outbox_tables = match &raw.outbox_tables {
        Some(list) => {
            let tables = names(list, "messages.outbox_tables", "table", v)?;
            for table in &tables {
                if table.split('.').count() != 2 || table.split('.').any(str::is_empty) {
                    return v.error(
                        list.span(),
                        "messages.outbox_tables",
                        format!("{table:?}: expected `schema.table` (PostgreSQL) or `database.table` (MySQL, MariaDB)"),
                    );
                }
                if entity_tables.contains(table) {
                    return v.error(
                        list.span(),
                        "messages.outbox_tables",
                        format!("{table:?} is also an [[entity]]: an outbox row is read for its content only"),
                    );
                }
            }
            tables
        }
        None => Vec::new(),
    };
    let outbox_column = match raw.outbox_column {
        Some(c) if c.get_ref().is_empty() => {
            return v.error(c.span(), "messages.outbox_column", "expected a column name")
        }
        Some(c) if outbox_tables.is_empty() => {
            return v.error(
                c.span(),
                "messages.outbox_column",
                "set without messages.outbox_tables: no outbox table to read it from",
            )
        }
        Some(c) => c.into_inner(),
        None => DEFAULT_OUTBOX_COLUMN.to_owned(),
    };
    Ok(Some(MessageRules {
        prefix,
        topics,
        max_names,
        outbox_tables,
        outbox_column,
    }))
}

/// A non-empty list of non-empty, distinct names.
fn names(list: &Spanned<Vec<String>>, field: &str, what: &str, v: &Validator<'_>) -> Result<Vec<String>, ConfigError> {
    let names = list.get_ref();
    if names.is_empty() {
        return v.error(list.span(), field, format!("expected at least one {what}"));
    }
    let mut seen = BTreeSet::new();
    for name in names {
        if name.is_empty() {
            return v.error(list.span(), field, format!("an empty {what} name"));
        }
        if !seen.insert(name.as_str()) {
            return v.error(list.span(), field, format!("{name:?} is listed twice"));
        }
    }
    Ok(names.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const BASE: &str = r#"
[source]
brokers = "127.0.0.1:9092"
group_id = "g"
topics = ["shop.public.products", "shop.message", "mariadb.shop.cache_outbox"]

[redis]
url = "redis://127.0.0.1:6379"
version_ttl = "1h"

[[entity]]
table = "public.products"
namespace = "product"
keys = ["product:{id}"]
"#;

    fn with(section: &str) -> String {
        format!("{BASE}\n[messages]\n{section}")
    }

    fn rules(text: &str) -> Option<MessageRules> {
        parse("shop.toml", text, &|_| None).unwrap().graph.messages().cloned()
    }

    fn error_of(text: &str) -> String {
        parse("shop.toml", text, &|_| None).unwrap_err().to_string()
    }

    #[test]
    fn the_section_is_optional_and_its_defaults_have_their_values() {
        assert_eq!(rules(BASE), None);
        assert_eq!(
            rules(&with("")),
            Some(MessageRules {
                prefix: DEFAULT_PREFIX.into(),
                topics: None,
                max_names: DEFAULT_MAX_KEYS_PER_MESSAGE,
                outbox_tables: Vec::new(),
                outbox_column: DEFAULT_OUTBOX_COLUMN.into(),
            })
        );
    }

    #[test]
    fn every_field_is_read() {
        let text = with(
            r#"prefix = "shop-cache"
topics = ["shop.message"]
max_keys_per_message = 50
outbox_tables = ["shop.cache_outbox"]
outbox_column = "payload""#,
        );
        assert_eq!(
            rules(&text),
            Some(MessageRules {
                prefix: "shop-cache".into(),
                topics: Some(vec!["shop.message".into()]),
                max_names: 50,
                outbox_tables: vec!["shop.cache_outbox".into()],
                outbox_column: "payload".into(),
            })
        );
    }

    #[test]
    fn a_regex_subscription_must_match_the_message_topics() {
        let regex = BASE.replace(
            r#"topics = ["shop.public.products", "shop.message", "mariadb.shop.cache_outbox"]"#,
            r#"topic_regex = "shop\\..*""#,
        );
        let ok = format!("{regex}\n[messages]\ntopics = [\"shop.message\"]\n");
        assert!(rules(&ok).is_some());
        let msg = error_of(&format!("{regex}\n[messages]\ntopics = [\"other.message\"]\n"));
        assert!(
            msg.contains("field `messages.topics`") && msg.contains("not subscribed"),
            "{msg}"
        );
    }

    #[test]
    fn refusals_name_file_line_and_field() {
        // [messages] is line 16 of these files, its first field line 17.
        let cases = [
            (
                r#"prefix = """#,
                "shop.toml:17: field `messages.prefix`: expected a non-empty prefix",
            ),
            (
                r#"topics = []"#,
                "shop.toml:17: field `messages.topics`: expected at least one topic",
            ),
            (r#"topics = ["shop.message", "shop.message"]"#, "listed twice"),
            (
                r#"topics = ["elsewhere.message"]"#,
                "\"elsewhere.message\" is not subscribed",
            ),
            (
                r#"max_keys_per_message = 0"#,
                "shop.toml:17: field `messages.max_keys_per_message`: expected at least 1",
            ),
            (r#"outbox_tables = ["cache_outbox"]"#, "expected `schema.table`"),
            (r#"outbox_tables = ["shop."]"#, "expected `schema.table`"),
            (r#"outbox_tables = ["public.products"]"#, "is also an [[entity]]"),
            (r#"outbox_tables = [""]"#, "an empty table name"),
            (r#"outbox_column = "payload""#, "without messages.outbox_tables"),
            (
                "outbox_tables = [\"shop.o\"]\noutbox_column = \"\"",
                "shop.toml:18: field `messages.outbox_column`",
            ),
            (r#"keys = ["x"]"#, "unknown field `keys`"),
            (r#"max_keys_per_message = -1"#, "shop.toml:17"),
        ];
        for (section, expected) in cases {
            let msg = error_of(&with(section));
            assert!(msg.contains(expected), "{section}: {msg}");
        }
    }

    #[test]
    fn messages_alone_need_no_entity() {
        let text = BASE.split("[[entity]]").next().unwrap().to_owned();
        assert!(error_of(&text).contains("expected at least one [[entity]] (or [messages])"));
        let alone = format!("{text}\n[messages]\noutbox_tables = [\"shop.cache_outbox\"]\n");
        assert_eq!(rules(&alone).unwrap().outbox_tables, vec!["shop.cache_outbox"]);
    }
}
