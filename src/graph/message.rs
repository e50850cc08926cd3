//! Invalidations named by the application in its own transaction
//! (docs/architecture.md, "Invalidations named by the application"): a
//! PostgreSQL logical-decoding message (`pg_logical_emit_message(true,
//! prefix, content)`) or an inserted row of an outbox table, whose content
//! names cache keys, namespaces and rows the graph cannot derive by itself.
//!
//! The content format, version 1 (docs/readers.md, "Naming invalidations"):
//!
//! ```json
//! {"v":1,"keys":["product:42"],"namespaces":["category"],
//!  "rows":[{"entity":"public.products","row":{"id":42}}]}
//! ```
//!
//! Every key must be a cache key as the key protocol renders it, every
//! namespace one the configuration declares, every row one of a configured
//! entity whose templates render from it exactly; anything else refuses the
//! whole message (a dead letter with its kind), so a message never bumps
//! more than it names, nor part of it.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{Derivation, DerivedTarget, Graph, LookupRequest, Target, Why};
use crate::event::{ChangeEvent, LogicalMessage, Op, Position, Row};

/// The content version this daemon reads.
pub const CONTENT_VERSION: u64 = 1;

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

/// Why a message was refused. The kind is the dead letter's `error_kind`
/// and the `kind` label of `cdc_invalidator_dead_letters_total{stage="message"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct MessageError {
    pub(crate) kind: MessageErrorKind,
    pub(crate) detail: String,
}

impl MessageError {
    fn new(kind: MessageErrorKind, detail: impl Into<String>) -> MessageError {
        MessageError {
            kind,
            detail: detail.into(),
        }
    }

    pub fn kind(&self) -> MessageErrorKind {
        self.kind
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageErrorKind {
    /// `pg_logical_emit_message(false, ...)`: delivered even when its
    /// transaction rolls back, so it proves nothing was committed.
    NotTransactional,
    /// Not UTF-8 JSON, or a field given twice.
    Malformed,
    /// A member of the wrong JSON type (a key that is not a string, ...).
    WrongType,
    UnknownField,
    /// `v` missing or not a version this daemon reads.
    BadVersion,
    /// An empty key, namespace or entity name.
    EmptyName,
    /// `epoch` or `ns:*`: the key protocol's own records.
    ReservedKey,
    /// Text no template renders (a control character, a brace, a bare `%`).
    InvalidKey,
    /// A namespace no entity or fan-out declares.
    UnknownNamespace,
    /// A row of a table with no `[[entity]]`.
    UnknownEntity,
    /// A row from which the entity's templates do not render exactly.
    UnrenderableRow,
    /// More keys, namespaces and rows than `max_keys_per_message`.
    TooManyKeys,
    /// No key, namespace or row at all.
    NamesNothing,
    /// An outbox row whose content column is missing, null or not text.
    MissingContent,
}

impl MessageErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            MessageErrorKind::NotTransactional => "not_transactional",
            MessageErrorKind::Malformed => "malformed",
            MessageErrorKind::WrongType => "wrong_type",
            MessageErrorKind::UnknownField => "unknown_field",
            MessageErrorKind::BadVersion => "bad_version",
            MessageErrorKind::EmptyName => "empty_name",
            MessageErrorKind::ReservedKey => "reserved_key",
            MessageErrorKind::InvalidKey => "invalid_key",
            MessageErrorKind::UnknownNamespace => "unknown_namespace",
            MessageErrorKind::UnknownEntity => "unknown_entity",
            MessageErrorKind::UnrenderableRow => "unrenderable_row",
            MessageErrorKind::TooManyKeys => "too_many_keys",
            MessageErrorKind::NamesNothing => "names_nothing",
            MessageErrorKind::MissingContent => "missing_content",
        }
    }
}

impl fmt::Display for MessageErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
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

/// One content, parsed and checked on its own (the graph checks the
/// namespaces and rows against the configuration).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Content {
    pub keys: Vec<String>,
    pub namespaces: Vec<String>,
    /// (entity table, row image)
    pub rows: Vec<(String, Row)>,
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

/// Checks that `key` is a cache key the key protocol can render
/// (docs/key-rendering.md): not empty, not a reserved record, and none of
/// what rendering always escapes inside values and no sane template
/// contains (control characters, braces, a `%` that is not `%XX`). A brace
/// is most often a template that was never rendered (`product:{id}`).
pub fn check_key(key: &str) -> Result<(), MessageError> {
    if key.is_empty() {
        return Err(MessageError::new(MessageErrorKind::EmptyName, "an empty key"));
    }
    if key == "epoch" || key.starts_with("ns:") {
        return Err(MessageError::new(
            MessageErrorKind::ReservedKey,
            format!("key {key:?} is reserved by the key protocol (`epoch`, `ns:*`): name namespaces in `namespaces`"),
        ));
    }
    let bytes = key.as_bytes();
    for (at, c) in key.char_indices() {
        let problem = match c {
            c if c.is_ascii_control() => Some(format!(
                "control character U+{:04X} at byte {at} (rendering escapes it as %{:02X})",
                u32::from(c),
                u32::from(c)
            )),
            '{' | '}' => Some(format!(
                "{c:?} at byte {at}: a template that was not rendered? (rendering escapes braces in values)"
            )),
            '%' => {
                let hex = |i: usize| bytes.get(i).is_some_and(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
                (!(hex(at + 1) && hex(at + 2))).then(|| {
                    format!(
                        "'%' at byte {at} is not followed by two uppercase hex digits (rendering escapes '%' as %25)"
                    )
                })
            }
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(MessageError::new(
                MessageErrorKind::InvalidKey,
                format!("key {key:?}: {problem}"),
            ));
        }
    }
    Ok(())
}

/// Parses one content (version 1). Lists are read element by element and
/// counted as they are read, so a content naming more than `max_names`
/// stops there instead of being built in memory first.
pub fn parse_content(bytes: &[u8], max_names: usize) -> Result<Content, MessageError> {
    let problem = RefCell::new(None);
    let seed = ContentSeed {
        max_names,
        problem: &problem,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = seed.deserialize(&mut deserializer).and_then(|content| {
        deserializer.end()?;
        Ok(content)
    });
    match (parsed, problem.into_inner()) {
        // A problem the visitors found explains the error they returned.
        (_, Some(problem)) => Err(problem),
        (Ok(content), None) => Ok(content),
        (Err(e), None) => Err(match e.classify() {
            serde_json::error::Category::Data => MessageError::new(MessageErrorKind::WrongType, e.to_string()),
            _ => MessageError::new(MessageErrorKind::Malformed, format!("not JSON: {e}")),
        }),
    }
}

/// The visitors' shared state: the limit, and the first problem found
/// (the serde error they return only stops the parse).
struct ContentSeed<'a> {
    max_names: usize,
    problem: &'a RefCell<Option<MessageError>>,
}

impl ContentSeed<'_> {
    fn fail<E: de::Error>(&self, kind: MessageErrorKind, detail: String) -> E {
        let error = E::custom(&detail);
        self.problem.borrow_mut().get_or_insert(MessageError::new(kind, detail));
        error
    }
}

impl<'de> DeserializeSeed<'de> for ContentSeed<'_> {
    type Value = Content;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Content, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ContentSeed<'_> {
    type Value = Content;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object {\"v\": 1, \"keys\": [...], \"namespaces\": [...], \"rows\": [...]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Content, A::Error> {
        let mut content = Content::default();
        let mut version: Option<Value> = None;
        let mut seen: Vec<String> = Vec::new();
        let mut named = 0usize;
        while let Some(field) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if seen.iter().any(|s| *s == field) {
                return Err(self.fail(MessageErrorKind::Malformed, format!("field `{field}` is given twice")));
            }
            seen.push(field.clone().into_owned());
            match field.as_ref() {
                "v" => version = Some(map.next_value::<Value>()?),
                "keys" | "namespaces" => {
                    let list = map.next_value_seed(Names {
                        seed: &self,
                        field: if field == "keys" { "keys" } else { "namespaces" },
                        named: &mut named,
                    })?;
                    if field == "keys" {
                        content.keys = list;
                    } else {
                        content.namespaces = list;
                    }
                }
                "rows" => {
                    content.rows = map.next_value_seed(Rows {
                        seed: &self,
                        named: &mut named,
                    })?
                }
                other => {
                    return Err(self.fail(
                        MessageErrorKind::UnknownField,
                        format!("unknown field `{other}` (version 1 has `v`, `keys`, `namespaces`, `rows`)"),
                    ))
                }
            }
        }
        match version {
            Some(Value::Number(n)) if n.as_u64() == Some(CONTENT_VERSION) => {}
            Some(other) => {
                return Err(self.fail(
                    MessageErrorKind::BadVersion,
                    format!("`v` is {other}: this daemon reads version {CONTENT_VERSION}"),
                ))
            }
            None => {
                return Err(self.fail(
                    MessageErrorKind::BadVersion,
                    format!("no `v`: expected \"v\": {CONTENT_VERSION}"),
                ))
            }
        }
        if named == 0 {
            return Err(self.fail(MessageErrorKind::NamesNothing, "names no key, namespace or row".into()));
        }
        for key in &content.keys {
            if let Err(problem) = check_key(key) {
                return Err(self.fail(problem.kind, format!("keys: {}", problem.detail)));
            }
        }
        if content.namespaces.iter().any(String::is_empty) {
            return Err(self.fail(MessageErrorKind::EmptyName, "namespaces: an empty namespace".into()));
        }
        Ok(content)
    }
}

/// `keys` / `namespaces`: strings, counted against the limit as read.
struct Names<'s, 'a, 'n> {
    seed: &'s ContentSeed<'a>,
    field: &'static str,
    named: &'n mut usize,
}

impl<'de> DeserializeSeed<'de> for Names<'_, '_, '_> {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<String>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Names<'_, '_, '_> {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: an array of strings", self.field)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut names: Vec<String> = Vec::new();
        let mut index = 0usize;
        while let Some(name) = seq.next_element::<Value>().and_then(|element| match element {
            None => Ok(None),
            Some(Value::String(name)) => Ok(Some(name)),
            Some(other) => Err(self.seed.fail(
                MessageErrorKind::WrongType,
                format!("`{}[{index}]` is {other}, not a string", self.field),
            )),
        })? {
            *self.named += 1;
            if *self.named > self.seed.max_names {
                return Err(too_many(self.seed));
            }
            if !names.contains(&name) {
                names.push(name);
            }
            index += 1;
        }
        Ok(names)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Vec<String>, E> {
        Err(self.seed.fail(
            MessageErrorKind::WrongType,
            format!("`{}` is null, not an array", self.field),
        ))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Vec<String>, A::Error> {
        Err(self.seed.fail(
            MessageErrorKind::WrongType,
            format!("`{}` is an object, not an array", self.field),
        ))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Vec<String>, E> {
        Err(self.seed.fail(
            MessageErrorKind::WrongType,
            format!("`{}` is a string, not an array", self.field),
        ))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Vec<String>, E> {
        Err(self.seed.fail(
            MessageErrorKind::WrongType,
            format!("`{}` is a boolean, not an array", self.field),
        ))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Vec<String>, E> {
        Err(self.seed.fail(
            MessageErrorKind::WrongType,
            format!("`{}` is a number, not an array", self.field),
        ))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Vec<String>, E> {
        Err(self.seed.fail(
            MessageErrorKind::WrongType,
            format!("`{}` is a number, not an array", self.field),
        ))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Vec<String>, E> {
        Err(self.seed.fail(
            MessageErrorKind::WrongType,
            format!("`{}` is a number, not an array", self.field),
        ))
    }
}

fn too_many<E: de::Error>(seed: &ContentSeed<'_>) -> E {
    seed.fail(
        MessageErrorKind::TooManyKeys,
        format!(
            "names more than {} keys, namespaces and rows ([messages] max_keys_per_message): name a namespace instead",
            seed.max_names
        ),
    )
}

/// `rows`: objects `{"entity": "<table>", "row": {...}}`, counted as read.
struct Rows<'s, 'a, 'n> {
    seed: &'s ContentSeed<'a>,
    named: &'n mut usize,
}

impl<'de> DeserializeSeed<'de> for Rows<'_, '_, '_> {
    type Value = Vec<(String, Row)>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Rows<'_, '_, '_> {
    type Value = Vec<(String, Row)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`rows`: an array of {\"entity\": ..., \"row\": {...}}")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut rows = Vec::new();
        let mut index = 0usize;
        loop {
            // Counted before the element is built.
            if *self.named >= self.seed.max_names {
                return match seq.next_element::<IgnoredAny>()? {
                    Some(_) => Err(too_many(self.seed)),
                    None => Ok(rows),
                };
            }
            let Some(element) = seq.next_element::<Value>()? else {
                return Ok(rows);
            };
            *self.named += 1;
            rows.push(named_row(self.seed, index, element)?);
            index += 1;
        }
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(self
            .seed
            .fail(MessageErrorKind::WrongType, "`rows` is null, not an array".into()))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(self
            .seed
            .fail(MessageErrorKind::WrongType, "`rows` is an object, not an array".into()))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Err(self
            .seed
            .fail(MessageErrorKind::WrongType, "`rows` is a string, not an array".into()))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(self
            .seed
            .fail(MessageErrorKind::WrongType, "`rows` is a boolean, not an array".into()))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(self
            .seed
            .fail(MessageErrorKind::WrongType, "`rows` is a number, not an array".into()))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(self
            .seed
            .fail(MessageErrorKind::WrongType, "`rows` is a number, not an array".into()))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(self
            .seed
            .fail(MessageErrorKind::WrongType, "`rows` is a number, not an array".into()))
    }
}

fn named_row<E: de::Error>(seed: &ContentSeed<'_>, index: usize, element: Value) -> Result<(String, Row), E> {
    let Value::Object(mut object) = element else {
        return Err(seed.fail(
            MessageErrorKind::WrongType,
            format!("`rows[{index}]` is not an object {{\"entity\": ..., \"row\": {{...}}}}"),
        ));
    };
    if let Some(other) = object.keys().find(|k| *k != "entity" && *k != "row") {
        return Err(seed.fail(
            MessageErrorKind::UnknownField,
            format!("unknown field `rows[{index}].{other}` (a row has `entity` and `row`)"),
        ));
    }
    let entity = match object.remove("entity") {
        Some(Value::String(entity)) if entity.is_empty() => {
            return Err(seed.fail(MessageErrorKind::EmptyName, format!("`rows[{index}].entity` is empty")))
        }
        Some(Value::String(entity)) => entity,
        Some(_) => {
            return Err(seed.fail(
                MessageErrorKind::WrongType,
                format!("`rows[{index}].entity` is not a string"),
            ))
        }
        None => {
            return Err(seed.fail(
                MessageErrorKind::WrongType,
                format!("`rows[{index}]` has no `entity` (the table, as in [[entity]] table)"),
            ))
        }
    };
    match object.remove("row") {
        Some(Value::Object(row)) => Ok((entity, row)),
        _ => Err(seed.fail(
            MessageErrorKind::WrongType,
            format!("`rows[{index}].row` is missing or not an object of columns"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Consistency, Entity, Fanout, Template};
    use serde_json::json;

    fn kind(text: &str) -> MessageErrorKind {
        parse_content(text.as_bytes(), 10).unwrap_err().kind
    }

    #[test]
    fn a_full_content_parses_with_duplicates_dropped() {
        let content = parse_content(
            br#"{"v":1,"keys":["product:42","product:42","caf%C3%A9:1"],"namespaces":["category"],
                "rows":[{"entity":"public.products","row":{"id":42,"category_id":3}}]}"#,
            10,
        )
        .unwrap();
        assert_eq!(content.keys, vec!["product:42", "caf%C3%A9:1"]);
        assert_eq!(content.namespaces, vec!["category"]);
        assert_eq!(content.rows.len(), 1);
        assert_eq!(content.rows[0].0, "public.products");
        assert_eq!(content.rows[0].1["category_id"], json!(3));
        // Members in any order, `v` last included; non-ASCII kept.
        let content = parse_content(r#"{"keys":["Café crème:1"],"v":1}"#.as_bytes(), 10).unwrap();
        assert_eq!(content.keys, vec!["Café crème:1"]);
    }

    #[test]
    fn malformed_and_wrongly_typed_contents_are_refused_with_their_kind() {
        let cases: &[(&str, MessageErrorKind)] = &[
            ("", MessageErrorKind::Malformed),
            ("{oops", MessageErrorKind::Malformed),
            (r#"{"v":1,"keys":["a"]} trailing"#, MessageErrorKind::Malformed),
            (r#"{"v":1,"keys":["a"],"keys":["b"]}"#, MessageErrorKind::Malformed),
            ("[1,2]", MessageErrorKind::WrongType),
            ("42", MessageErrorKind::WrongType),
            (r#"{"v":1,"keys":[42]}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"keys":[null]}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"keys":[["nested"]]}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"keys":"product:1"}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"keys":null}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"namespaces":{"a":1}}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"rows":[42]}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"rows":[{"entity":"t"}]}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"rows":[{"row":{"id":1}}]}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"rows":[{"entity":7,"row":{}}]}"#, MessageErrorKind::WrongType),
            (r#"{"v":1,"keys":["a"],"extra":true}"#, MessageErrorKind::UnknownField),
            (
                r#"{"v":1,"rows":[{"entity":"t","row":{},"op":"c"}]}"#,
                MessageErrorKind::UnknownField,
            ),
            (r#"{"keys":["a"]}"#, MessageErrorKind::BadVersion),
            (r#"{"v":2,"keys":["a"]}"#, MessageErrorKind::BadVersion),
            (r#"{"v":"1","keys":["a"]}"#, MessageErrorKind::BadVersion),
            (r#"{"v":1.0,"keys":["a"]}"#, MessageErrorKind::BadVersion),
            (r#"{"v":[1],"keys":["a"]}"#, MessageErrorKind::BadVersion),
            (r#"{"v":1}"#, MessageErrorKind::NamesNothing),
            (
                r#"{"v":1,"keys":[],"namespaces":[],"rows":[]}"#,
                MessageErrorKind::NamesNothing,
            ),
            (r#"{"v":1,"keys":[""]}"#, MessageErrorKind::EmptyName),
            (r#"{"v":1,"namespaces":[""]}"#, MessageErrorKind::EmptyName),
            (
                r#"{"v":1,"rows":[{"entity":"","row":{}}]}"#,
                MessageErrorKind::EmptyName,
            ),
            (r#"{"v":1,"keys":["epoch"]}"#, MessageErrorKind::ReservedKey),
            (r#"{"v":1,"keys":["ns:product"]}"#, MessageErrorKind::ReservedKey),
            (r#"{"v":1,"keys":["product:{id}"]}"#, MessageErrorKind::InvalidKey),
            (r#"{"v":1,"keys":["a\u0000b"]}"#, MessageErrorKind::InvalidKey),
            (r#"{"v":1,"keys":["line\nbreak"]}"#, MessageErrorKind::InvalidKey),
            (r#"{"v":1,"keys":["100%"]}"#, MessageErrorKind::InvalidKey),
            (r#"{"v":1,"keys":["a%3a"]}"#, MessageErrorKind::InvalidKey),
        ];
        for (text, expected) in cases {
            assert_eq!(kind(text), *expected, "{text}");
        }
        // Not UTF-8.
        assert_eq!(
            parse_content(b"{\"v\":1,\"keys\":[\"\xff\"]}", 10).unwrap_err().kind,
            MessageErrorKind::Malformed
        );
    }

    #[test]
    fn every_error_names_what_is_wrong() {
        let error = parse_content(br#"{"v":1,"keys":["ok",7]}"#, 10).unwrap_err();
        assert!(error.detail.contains("keys[1]"), "{error}");
        let error = parse_content(br#"{"v":1,"keys":["product:{id}"]}"#, 10).unwrap_err();
        assert!(
            error.detail.contains("product:{id}") && error.detail.contains("not rendered"),
            "{error}"
        );
        assert_eq!(error.to_string(), format!("invalid_key: {}", error.detail));
    }

    #[test]
    fn the_limit_counts_keys_namespaces_and_rows_together() {
        let at_limit = r#"{"v":1,"keys":["a","b"],"namespaces":["n"],"rows":[{"entity":"t","row":{}}]}"#;
        assert_eq!(parse_content(at_limit.as_bytes(), 4).unwrap().keys.len(), 2);
        assert_eq!(
            parse_content(at_limit.as_bytes(), 3).unwrap_err().kind,
            MessageErrorKind::TooManyKeys
        );
        // Duplicates count: the limit bounds the work, not the result.
        assert_eq!(
            parse_content(br#"{"v":1,"keys":["a","a","a"]}"#, 2).unwrap_err().kind,
            MessageErrorKind::TooManyKeys
        );
    }

    #[test]
    fn a_huge_list_stops_at_the_limit_before_anything_else_is_read() {
        // A million keys, then malformed JSON: the limit is what is reported.
        let mut text = String::from(r#"{"v":1,"keys":["#);
        for i in 0..1_000_000 {
            text.push_str(&format!("\"k{i}\","));
        }
        text.push_str("oops");
        let error = parse_content(text.as_bytes(), 1000).unwrap_err();
        assert_eq!(error.kind, MessageErrorKind::TooManyKeys, "{error}");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!(
            r#"{{"v":1,"rows":[{{"entity":"t","row":{{"id":{}1{}}}}}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse_content(deep.as_bytes(), 10).is_err());
        let deep_v = format!(
            r#"{{"v":{}1{},"keys":["a"]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            parse_content(deep_v.as_bytes(), 10).unwrap_err().kind,
            MessageErrorKind::Malformed
        );
    }

    #[test]
    fn keys_follow_the_key_protocol() {
        for ok in [
            "product:42",
            "pair:1:2%3A3",
            "caf%C3%A9",
            "Café crème",
            "a b",
            "x%25y",
            "ns",
            "epochs",
            "n:s:x",
        ] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        for (bad, expected) in [
            ("", MessageErrorKind::EmptyName),
            ("epoch", MessageErrorKind::ReservedKey),
            ("ns:", MessageErrorKind::ReservedKey),
            ("ns:category", MessageErrorKind::ReservedKey),
            ("a}b", MessageErrorKind::InvalidKey),
            ("tab\there", MessageErrorKind::InvalidKey),
            ("del\u{7f}", MessageErrorKind::InvalidKey),
            ("%", MessageErrorKind::InvalidKey),
            ("%4", MessageErrorKind::InvalidKey),
            ("%zz", MessageErrorKind::InvalidKey),
        ] {
            assert_eq!(check_key(bad).unwrap_err().kind, expected, "{bad:?}");
        }
    }

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
