//! Debezium-shaped change events for the benchmark table `public.bench_items`,
//! as the PostgreSQL connector writes them through JsonConverter with
//! `schemas.enable=true`: key and value each `{"schema": ..., "payload": ...}`,
//! field order and the `source` block as in tests/fixtures/debezium/.
//!
//! Every event has its own LSN, strictly increasing, and
//! `source.sequence = ["<previous commit lsn>", "<lsn>"]`, so the daemon's
//! position guard applies each one (single-row transactions in commit order).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The columns the key templates of the generated config refer to.
pub const TABLE: &str = "bench_items";
pub const SCHEMA: &str = "public";
/// `source.name` (the connector's topic.prefix) inside the records.
pub const SERVER: &str = "bench";
/// First LSN; about where a fresh PostgreSQL 15 cluster starts.
const FIRST_LSN: u64 = 0x0200_0000;
/// Bytes between consecutive changes' LSNs (a small row's WAL record).
const LSN_STEP: u64 = 184;

/// Key templates for `keys_per_row`: the first three are the shop example's
/// shapes (the row, a unique column, a parent list); more are per-row extras.
pub fn key_templates(keys_per_row: usize) -> Vec<String> {
    let base = [
        "item:{id}".to_owned(),
        "item-sku:{sku}".to_owned(),
        "category:{category_id}:items".to_owned(),
    ];
    let mut out: Vec<String> = base.into_iter().take(keys_per_row).collect();
    for extra in 3..keys_per_row {
        out.push(format!("item:{{id}}:view{extra}"));
    }
    out
}

/// Zipf over ranks 1..=n with exponent `s` (0 = uniform), by inverse CDF.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += 1.0 / (rank as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// A rank in 0..n (0 is the hottest).
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Percent of inserts; the rest after deletes are updates.
    pub create_pct: u32,
    pub delete_pct: u32,
    /// Percent of updates that move the row to another category (before and
    /// after render different parent keys: one more target).
    pub move_pct: u32,
    /// Debezium writes a tombstone (null value) after each delete.
    pub tombstones: bool,
}

impl Default for Mix {
    fn default() -> Mix {
        Mix {
            create_pct: 10,
            delete_pct: 5,
            move_pct: 5,
            tombstones: true,
        }
    }
}

/// The hostile records a malformed share of the stream is made of, in
/// turn. Each is a record Debezium cannot have written for the table; the
/// daemon keeps it as a dead letter (and, on the topic of a configured
/// table, escalates to the entity's namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Malformed {
    /// An update's value cut in half: not JSON (`malformed`).
    TruncatedJson,
    /// An update whose `source.table` is another table than the topic's
    /// (`table_mismatch`).
    WrongTable,
    /// An update whose key names a null primary key (`missing_key`).
    NullKey,
}

impl Malformed {
    /// The order the kinds take turns in.
    pub const ALL: [Malformed; 3] = [Malformed::TruncatedJson, Malformed::WrongTable, Malformed::NullKey];

    pub fn label(self) -> &'static str {
        match self {
            Malformed::TruncatedJson => "truncated_json",
            Malformed::WrongTable => "wrong_table",
            Malformed::NullKey => "null_key",
        }
    }
}

/// Which records of a stream are malformed: `pct` percent of them, spread
/// evenly (record `i` is malformed when that keeps the malformed count at
/// most `(i + 1) * pct / 100`), the kinds taking turns.
#[derive(Debug, Clone, Default)]
pub struct MalformedShare {
    pct: u32,
    /// Malformed records so far, by kind.
    pub produced: std::collections::BTreeMap<&'static str, u64>,
    total: u64,
}

impl MalformedShare {
    pub fn new(pct: u32) -> MalformedShare {
        assert!(pct <= 100, "a share of at most 100%");
        MalformedShare {
            pct,
            ..MalformedShare::default()
        }
    }

    /// The kind record `index` (0-based) is to be, or None for a clean one.
    /// A record that cannot be malformed (an owed tombstone) is simply not
    /// asked about: the next one makes up for it.
    pub fn take(&mut self, index: u64) -> Option<Malformed> {
        if (self.total + 1) * 100 > (index + 1) * u64::from(self.pct) {
            return None;
        }
        let turn = usize::try_from(self.total % Malformed::ALL.len() as u64).expect("below 3");
        let kind = Malformed::ALL[turn];
        self.total += 1;
        *self.produced.entry(kind.label()).or_default() += 1;
        Some(kind)
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

/// One Kafka record to produce.
pub struct Record {
    pub partition: i32,
    pub key: Vec<u8>,
    /// None for a tombstone.
    pub value: Option<Vec<u8>>,
    pub row_id: u64,
}

impl Record {
    /// The record as the daemon's consumer hands it on: at `offset` of its
    /// partition of `topic`, with no headers.
    pub fn into_kafka(
        self,
        topic: &str,
        offset: i64,
        timestamp_ms: Option<i64>,
    ) -> cdc_invalidator::event::KafkaRecord {
        cdc_invalidator::event::KafkaRecord {
            topic: topic.to_owned(),
            partition: self.partition,
            offset,
            key: Some(self.key),
            value: self.value,
            timestamp_ms,
            headers: Vec::new(),
        }
    }
}

pub struct Generator {
    topic_prefix: String,
    partitions: i32,
    rows: usize,
    categories: u64,
    zipf: Zipf,
    mix: Mix,
    rng: SmallRng,
    /// Current category of each row (so `before` matches the last `after`).
    category_of: Vec<u64>,
    lsn: u64,
    last_commit_lsn: u64,
    tx_id: u64,
    value_schema: String,
    key_schema: String,
    /// A tombstone owed after the last delete.
    pending_tombstone: Option<(i32, u64)>,
    /// Set: records are Avro (Confluent framing) instead of JSON.
    avro: Option<crate::avro::AvroEncoder>,
}

impl Generator {
    pub fn new(topic_prefix: &str, partitions: i32, rows: usize, zipf_s: f64, mix: Mix, seed: u64) -> Generator {
        let categories = (rows as u64 / 50).max(1);
        let mut rng = SmallRng::seed_from_u64(seed);
        let category_of = (0..rows).map(|_| rng.random_range(1..=categories)).collect();
        Generator {
            topic_prefix: topic_prefix.to_owned(),
            partitions,
            rows,
            categories,
            zipf: Zipf::new(rows, zipf_s),
            mix,
            rng,
            category_of,
            lsn: FIRST_LSN,
            last_commit_lsn: FIRST_LSN - LSN_STEP,
            tx_id: 1000,
            value_schema: value_schema(topic_prefix).to_string(),
            key_schema: key_schema(topic_prefix).to_string(),
            pending_tombstone: None,
            avro: None,
        }
    }

    /// Writes Avro records (Debezium's AvroConverter shape) from now on.
    pub fn with_avro(mut self) -> anyhow::Result<Generator> {
        self.avro = Some(crate::avro::AvroEncoder::new(&self.topic_prefix)?);
        Ok(self)
    }

    pub fn avro(&self) -> Option<&crate::avro::AvroEncoder> {
        self.avro.as_ref()
    }

    pub fn topic(&self) -> String {
        topic_name(&self.topic_prefix)
    }

    pub fn partition_of(&self, row_id: u64) -> i32 {
        let partitions = u64::try_from(self.partitions).expect("a positive partition count");
        i32::try_from(row_id % partitions).expect("below the partition count, an i32")
    }

    /// The next record of the stream, at commit time `now_us`.
    pub fn next(&mut self, now_us: i64) -> Record {
        if let Some((partition, id)) = self.pending_tombstone.take() {
            return Record {
                partition,
                key: self.key(id),
                value: None,
                row_id: id,
            };
        }
        let rank = self.zipf.sample(&mut self.rng);
        // Spread hot rows over the id space (and so over partitions).
        let index = (rank as u64).wrapping_mul(2_654_435_761) % self.rows as u64;
        let id = index + 1;
        let roll = self.rng.random_range(0..100);
        let op = if roll < self.mix.create_pct {
            'c'
        } else if roll < self.mix.create_pct + self.mix.delete_pct {
            'd'
        } else {
            'u'
        };
        let index = usize::try_from(index).expect("a row index");
        let old_category = self.category_of[index];
        let new_category = if op == 'u' && self.rng.random_range(0..100) < self.mix.move_pct {
            self.rng.random_range(1..=self.categories)
        } else {
            old_category
        };
        self.category_of[index] = new_category;
        let stock = self.rng.random_range(0..1000);
        let before = (op != 'c').then(|| self.row(id, old_category, stock + 1, now_us - 5_000_000));
        let after = (op != 'd').then(|| self.row(id, new_category, stock, now_us));
        let partition = self.partition_of(id);
        let value = self.envelope(op, before, after, now_us);
        if op == 'd' && self.mix.tombstones {
            self.pending_tombstone = Some((partition, id));
        }
        Record {
            partition,
            key: self.key(id),
            value: Some(value),
            row_id: id,
        }
    }

    /// Whether the next record must be the tombstone of the last delete
    /// (a malformed record never takes its place).
    pub fn tombstone_owed(&self) -> bool {
        self.pending_tombstone.is_some()
    }

    /// A hostile record of `kind` in place of the next change: an update of
    /// a drawn row, then broken. Call it only when no tombstone is owed.
    pub fn next_malformed(&mut self, kind: Malformed, now_us: i64) -> Record {
        assert!(!self.tombstone_owed(), "the owed tombstone comes first");
        assert!(self.avro.is_none(), "malformed records are JSON only");
        let rank = self.zipf.sample(&mut self.rng);
        let index = (rank as u64).wrapping_mul(2_654_435_761) % self.rows as u64;
        let id = index + 1;
        let category = self.category_of[usize::try_from(index).expect("a row index")];
        let before = self.row(id, category, 2, now_us - 5_000_000);
        let after = self.row(id, category, 1, now_us);
        let mut payload = self.payload('u', Some(before), Some(after), now_us);
        let mut key = self.key(id);
        if kind == Malformed::WrongTable {
            payload["source"]["table"] = json!(format!("{TABLE}_archive"));
        }
        let mut value = self.encode_value(&payload);
        match kind {
            Malformed::TruncatedJson => value.truncate(value.len() / 2),
            Malformed::NullKey => {
                key = format!("{{\"schema\":{},\"payload\":{{\"id\":null}}}}", self.key_schema).into_bytes();
            }
            Malformed::WrongTable => {}
        }
        Record {
            partition: self.partition_of(id),
            key,
            value: Some(value),
            row_id: id,
        }
    }

    /// An update of a row that no other event touches (the latency probe
    /// matches each Redis notification to exactly one event through it).
    pub fn unique_update(&mut self, id: u64, now_us: i64) -> Record {
        let category = 1 + id % self.categories;
        let before = self.row(id, category, 2, now_us - 5_000_000);
        let after = self.row(id, category, 1, now_us);
        Record {
            partition: self.partition_of(id),
            key: self.key(id),
            value: Some(self.envelope('u', Some(before), Some(after), now_us)),
            row_id: id,
        }
    }

    fn row(&self, id: u64, category: u64, stock: i64, updated_us: i64) -> Value {
        json!({
            "id": id,
            "sku": format!("SKU-{id:08}"),
            "category_id": category,
            "stock": stock,
            "price": format!("{}.{:02}", 5 + id % 200, id % 100),
            "active": true,
            "updated_at": zoned_timestamp(updated_us),
            "description": format!("Bench item {id}: a short description of the sort shops keep"),
        })
    }

    fn key(&self, id: u64) -> Vec<u8> {
        if let Some(avro) = &self.avro {
            return avro.encode_key(&json!({"id": id})).expect("the key fits its schema");
        }
        format!("{{\"schema\":{},\"payload\":{{\"id\":{id}}}}}", self.key_schema).into_bytes()
    }

    fn envelope(&mut self, op: char, before: Option<Value>, after: Option<Value>, now_us: i64) -> Vec<u8> {
        let payload = self.payload(op, before, after, now_us);
        self.encode_value(&payload)
    }

    /// The next change's envelope payload (it takes the next LSN).
    fn payload(&mut self, op: char, before: Option<Value>, after: Option<Value>, now_us: i64) -> Value {
        self.last_commit_lsn = self.lsn;
        self.lsn += LSN_STEP;
        self.tx_id += 1;
        let lsn = self.lsn;
        let commit_us = now_us;
        let emitted_us = now_us + 350;
        json!({
            "before": before,
            "after": after,
            "source": {
                "version": "3.6.1.Final",
                "connector": "postgresql",
                "name": SERVER,
                "ts_ms": commit_us / 1000,
                "snapshot": "false",
                "db": "shop",
                "sequence": format!("[\"{}\",\"{}\"]", self.last_commit_lsn, lsn),
                "ts_us": commit_us,
                "ts_ns": commit_us as i128 * 1000,
                "schema": SCHEMA,
                "table": TABLE,
                "txId": self.tx_id,
                "lsn": lsn,
                "xmin": null,
                "origin": null,
                "origin_lsn": null
            },
            "transaction": null,
            "op": op.to_string(),
            "ts_ms": emitted_us / 1000,
            "ts_us": emitted_us,
            "ts_ns": emitted_us as i128 * 1000
        })
    }

    fn encode_value(&self, payload: &Value) -> Vec<u8> {
        if let Some(avro) = &self.avro {
            return avro.encode_value(payload).expect("the event fits its schema");
        }
        format!("{{\"schema\":{},\"payload\":{}}}", self.value_schema, payload).into_bytes()
    }
}

pub fn topic_name(prefix: &str) -> String {
    format!("{prefix}.{SCHEMA}.{TABLE}")
}

/// io.debezium.time.ZonedTimestamp: ISO-8601 in UTC with microseconds.
fn zoned_timestamp(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn field(ty: &str, optional: bool, name: &str) -> Value {
    json!({"type": ty, "optional": optional, "field": name})
}

fn named_field(ty: &str, optional: bool, schema_name: &str, name: &str) -> Value {
    json!({"type": ty, "optional": optional, "name": schema_name, "version": 1, "field": name})
}

fn row_fields() -> Value {
    json!([
        field("int64", false, "id"),
        field("string", false, "sku"),
        field("int64", true, "category_id"),
        field("int16", true, "stock"),
        field("string", true, "price"),
        field("boolean", true, "active"),
        named_field("string", true, "io.debezium.time.ZonedTimestamp", "updated_at"),
        field("string", true, "description"),
    ])
}

fn key_schema(prefix: &str) -> Value {
    json!({
        "type": "struct",
        "fields": [field("int64", false, "id")],
        "optional": false,
        "name": format!("{prefix}.{SCHEMA}.{TABLE}.Key")
    })
}

/// The Envelope schema, shaped like the captured fixtures' (PostgreSQL
/// connector 3.6.1: before, after, source, transaction, op, ts_*).
fn value_schema(prefix: &str) -> Value {
    let value_name = format!("{prefix}.{SCHEMA}.{TABLE}.Value");
    let image = |name: &str| json!({"type": "struct", "fields": row_fields(), "optional": true, "name": value_name, "field": name});
    json!({
        "type": "struct",
        "fields": [
            image("before"),
            image("after"),
            {
                "type": "struct",
                "fields": [
                    field("string", false, "version"),
                    field("string", false, "connector"),
                    field("string", false, "name"),
                    field("int64", false, "ts_ms"),
                    {
                        "type": "string", "optional": true, "name": "io.debezium.data.Enum", "version": 1,
                        "parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
                        "default": "false", "field": "snapshot"
                    },
                    field("string", false, "db"),
                    field("string", true, "sequence"),
                    field("int64", true, "ts_us"),
                    field("int64", true, "ts_ns"),
                    field("string", false, "schema"),
                    field("string", false, "table"),
                    field("int64", true, "txId"),
                    field("int64", true, "lsn"),
                    field("int64", true, "xmin"),
                    field("string", true, "origin"),
                    field("int64", true, "origin_lsn"),
                ],
                "optional": false,
                "name": "io.debezium.connector.postgresql.Source",
                "version": 1,
                "field": "source"
            },
            {
                "type": "struct",
                "fields": [
                    field("string", false, "id"),
                    field("int64", false, "total_order"),
                    field("int64", false, "data_collection_order"),
                ],
                "optional": true,
                "name": "event.block",
                "version": 1,
                "field": "transaction"
            },
            field("string", false, "op"),
            field("int64", true, "ts_ms"),
            field("int64", true, "ts_us"),
            field("int64", true, "ts_ns"),
        ],
        "optional": false,
        "name": format!("{prefix}.{SCHEMA}.{TABLE}.Envelope"),
        "version": 2
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_like_debezium() {
        assert_eq!(zoned_timestamp(1_714_559_696_789_012), "2024-05-01T10:34:56.789012Z");
    }

    #[test]
    fn zipf_prefers_low_ranks_and_uniform_does_not() {
        let mut rng = SmallRng::seed_from_u64(1);
        let z = Zipf::new(1000, 1.0);
        let hot = (0..10_000).filter(|_| z.sample(&mut rng) == 0).count();
        assert!(hot > 1000, "rank 0 drawn {hot} times");
        let u = Zipf::new(1000, 0.0);
        let hot = (0..10_000).filter(|_| u.sample(&mut rng) == 0).count();
        assert!(hot < 50, "rank 0 drawn {hot} times");
    }

    #[test]
    fn the_malformed_share_is_exact_and_spread_and_takes_turns() {
        let mut share = MalformedShare::new(10);
        let picked: Vec<u64> = (0..1000).filter(|&i| share.take(i).is_some()).collect();
        assert_eq!(picked.len(), 100);
        assert_eq!(picked[..3], [9, 19, 29], "every tenth record");
        assert_eq!(share.produced["truncated_json"], 34);
        assert_eq!(share.produced["wrong_table"], 33);
        assert_eq!(share.produced["null_key"], 33);
        let mut none = MalformedShare::new(0);
        assert!((0..1000).all(|i| none.take(i).is_none()));
        // A record skipped (an owed tombstone) is made up by the next one asked.
        let mut late = MalformedShare::new(50);
        assert_eq!(late.take(0), None);
        assert_eq!(late.take(2), Some(Malformed::TruncatedJson));
        assert_eq!(late.take(3), Some(Malformed::WrongTable));
        assert_eq!(late.total(), 2);
    }

    #[test]
    fn positions_increase_and_tombstones_follow_deletes() {
        let mut g = Generator::new(
            "b",
            3,
            100,
            1.0,
            Mix {
                delete_pct: 50,
                ..Mix::default()
            },
            7,
        );
        let mut last = 0u64;
        let mut after_delete = false;
        for i in 0..500 {
            let r = g.next(1_700_000_000_000_000 + i);
            match r.value {
                None => {
                    assert!(after_delete, "a tombstone only right after a delete");
                    after_delete = false;
                }
                Some(v) => {
                    assert!(!after_delete, "the tombstone comes right after its delete");
                    let v: Value = serde_json::from_slice(&v).unwrap();
                    let lsn = v["payload"]["source"]["lsn"].as_u64().unwrap();
                    assert!(lsn > last);
                    last = lsn;
                    after_delete = v["payload"]["op"] == "d";
                }
            }
        }
    }
}
