//! Routing ahead of the intake on several threads (`plan.route_workers`).
//!
//! Decoding and routing ([`route_with`]) is the consumer stage's one
//! CPU-bound step, and it is pure: what it returns depends only on the
//! graph, the plan settings, the record, the clock, whether dead letters are
//! kept, and the Avro schemas loaded. So the consumer stage can route a
//! chunk of records it already polled on several threads at once and then
//! hand them to the partition unit one by one, in the order polled, exactly
//! as it would have without the pool: order, holds, stalls, offsets and the
//! lag escalation stay where they are (`Intake::take`).
//!
//! The calling task and the workers it wakes claim small blocks of the
//! chunk until none is left, so a worker the machine is slow to schedule
//! never holds the chunk up by more than the block it claimed: the caller
//! routes the rest itself. A route computed ahead is only offered for a
//! record whose Avro schemas were all loaded before it was decoded (a
//! loaded schema stays loaded): any other is routed when it is taken, after
//! the intake loaded its schemas, as before. A worker that fails (a panic)
//! is logged at ERROR and retired; the records of the block it had are
//! routed when taken, on the consumer task.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::Notify;

use super::route::{route_with, Route};
use crate::config::Settings;
use crate::decode::{schema_id, AvroSchemas};
use crate::event::KafkaRecord;

// Fewer records than this per thread cost more in wake-ups (some
// microseconds each) than they save: a small chunk wakes fewer workers.
const MIN_RECORDS_PER_THREAD: usize = 8;
// Records claimed at once: small, so that a thread descheduled mid-block
// delays the chunk by little; large enough that claiming is no cost.
const BLOCK: usize = 4;

/// Tests make a worker panic with this clock (the calling thread ignores it).
#[cfg(test)]
const PANIC_NOW_US: i64 = i64::MIN;

/// A polled record and, when it could be computed ahead, its route.
#[derive(Debug)]
pub struct Prerouted {
    pub record: KafkaRecord,
    /// None: route it when it is taken (its Avro schemas were not all
    /// loaded, or its worker failed).
    pub route: Option<Route>,
}

/// What routing reads besides the record and the clock.
struct Routing {
    settings: Arc<Settings>,
    dead_letters: bool,
    avro: Option<Arc<AvroSchemas>>,
}

impl Routing {
    /// The record's route, if it is the one the intake would compute when
    /// taking it: only when every schema it names is loaded already.
    fn ahead(&self, record: &KafkaRecord, now_us: i64) -> Option<Route> {
        if let Some(avro) = &self.avro {
            if !schema_ids(record).into_iter().all(|id| avro.is_loaded(id)) {
                return None;
            }
        }
        Some(route_with(
            &self.settings.graph,
            &self.settings.plan,
            record,
            now_us,
            self.dead_letters,
            self.avro.as_deref(),
        ))
    }
}

/// The Avro schema ids a Confluent-framed record names (key, then value).
pub(super) fn schema_ids(record: &KafkaRecord) -> Vec<u32> {
    [record.key.as_deref(), record.value.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(schema_id)
        .collect()
}

/// One record of a chunk and its route once computed. Only the thread that
/// claimed it touches it until the chunk is settled, then only the caller.
struct Slot {
    record: Option<KafkaRecord>,
    route: Option<Route>,
}

/// A chunk being routed, shared by the caller and the workers it woke.
struct Chunk {
    slots: Vec<Mutex<Slot>>,
    now_us: i64,
    /// The first slot nobody claimed yet.
    next: AtomicUsize,
    /// Slots routed, or given up by a thread that failed on them.
    settled: AtomicUsize,
    /// Notified when the last slot settles.
    all_settled: Notify,
    /// A thread failed while routing a block of this chunk.
    failed: AtomicBool,
}

impl Chunk {
    fn new(records: Vec<KafkaRecord>, now_us: i64) -> Chunk {
        Chunk {
            slots: records
                .into_iter()
                .map(|record| {
                    Mutex::new(Slot {
                        record: Some(record),
                        route: None,
                    })
                })
                .collect(),
            now_us,
            next: AtomicUsize::new(0),
            settled: AtomicUsize::new(0),
            all_settled: Notify::new(),
            failed: AtomicBool::new(false),
        }
    }

    /// Claims blocks of slots and routes them until none is left.
    fn route_blocks(&self, routing: &Routing) {
        loop {
            let start = self.next.fetch_add(BLOCK, Ordering::Relaxed);
            let Some(block) = self.slots.get(start..(start + BLOCK).min(self.slots.len())) else {
                return;
            };
            if block.is_empty() {
                return;
            }
            // Settles the block however this ends, a panic included.
            let _claim = Claim {
                chunk: self,
                slots: block.len(),
            };
            #[cfg(test)]
            if self.now_us == PANIC_NOW_US
                && std::thread::current()
                    .name()
                    .is_some_and(|n| n.starts_with("cdc-route-"))
            {
                panic!("route worker test panic");
            }
            for slot in block {
                let mut slot = lock(slot);
                let route = slot
                    .record
                    .as_ref()
                    .and_then(|record| routing.ahead(record, self.now_us));
                slot.route = route;
            }
        }
    }

    fn settle(&self, slots: usize) {
        if self.settled.fetch_add(slots, Ordering::AcqRel) + slots == self.slots.len() {
            self.all_settled.notify_one();
        }
    }

    /// Waits until every slot is settled; the workers only ever hold a
    /// block they claimed, so this waits for at most one block each.
    async fn settled(&self) {
        while self.settled.load(Ordering::Acquire) < self.slots.len() {
            // A notification sent before this wait is kept for it.
            self.all_settled.notified().await;
        }
    }

    /// The records and their routes, in order. Called once settled: no
    /// other thread touches a slot any more.
    fn take(&self) -> Vec<Prerouted> {
        self.slots
            .iter()
            .filter_map(|slot| {
                let mut slot = lock(slot);
                let route = slot.route.take();
                slot.record.take().map(|record| Prerouted { record, route })
            })
            .collect()
    }
}

/// A claimed block: settled when dropped, also while unwinding from a
/// panic in routing, so the caller never waits for a block that failed.
struct Claim<'a> {
    chunk: &'a Chunk,
    slots: usize,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.chunk.failed.store(true, Ordering::Release);
        }
        self.chunk.settle(self.slots);
    }
}

/// A slot's lock; a slot whose routing panicked is still read as it is
/// (its record untouched: routing only reads it; its route None).
fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Worker {
    name: String,
    chunks: std_mpsc::Sender<Arc<Chunk>>,
    thread: JoinHandle<()>,
}

/// Routes chunks of records on `threads` threads, the caller's included.
pub struct RoutePool {
    routing: Arc<Routing>,
    workers: Vec<Worker>,
}

impl RoutePool {
    /// Starts `threads - 1` worker threads (none for 1: everything is
    /// routed on the caller's thread).
    pub fn new(
        threads: usize,
        settings: Arc<Settings>,
        dead_letters: bool,
        avro: Option<Arc<AvroSchemas>>,
    ) -> std::io::Result<RoutePool> {
        let routing = Arc::new(Routing {
            settings,
            dead_letters,
            avro,
        });
        let mut workers = Vec::new();
        for index in 1..threads.max(1) {
            let name = format!("cdc-route-{index}");
            let (chunks, queue) = std_mpsc::channel::<Arc<Chunk>>();
            let shared = routing.clone();
            let thread = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || work(&shared, &queue))?;
            workers.push(Worker { name, chunks, thread });
        }
        Ok(RoutePool { routing, workers })
    }

    /// The threads routing, the caller's included (fewer than configured
    /// once a worker failed).
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Routes `records` at `now_us` on up to [`RoutePool::threads`]
    /// threads; returns them in the same order, each with its route when it
    /// could be computed ahead.
    pub async fn route(&mut self, records: Vec<KafkaRecord>, now_us: i64) -> Vec<Prerouted> {
        let helpers = (records.len() / MIN_RECORDS_PER_THREAD)
            .saturating_sub(1)
            .min(self.workers.len());
        let chunk = Arc::new(Chunk::new(records, now_us));
        let mut gone = false;
        for worker in self.workers.iter().take(helpers) {
            // A worker that is gone takes nothing: the others and the caller do.
            gone |= worker.chunks.send(chunk.clone()).is_err();
        }
        #[cfg(test)]
        if now_us == PANIC_NOW_US {
            self.wait_for_failed_helpers(helpers).await;
        }
        chunk.route_blocks(&self.routing);
        chunk.settled().await;
        if gone || chunk.failed.load(Ordering::Acquire) {
            self.retire_finished();
        }
        chunk.take()
    }

    /// Tests: the caller lets the helpers it woke claim a block each and
    /// fail on it (their threads end) before it routes the rest, so that
    /// they fail whatever the scheduling.
    #[cfg(test)]
    async fn wait_for_failed_helpers(&self, helpers: usize) {
        for _ in 0..10_000 {
            if self.workers.iter().take(helpers).all(|w| w.thread.is_finished()) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Workers whose thread ended (a panic) route nothing more, loudly.
    fn retire_finished(&mut self) {
        let mut index = 0;
        while index < self.workers.len() {
            let finished = self.workers.get(index).is_some_and(|w| w.thread.is_finished());
            if !finished {
                index += 1;
                continue;
            }
            let Worker { name, chunks, thread } = self.workers.remove(index);
            drop(chunks);
            let cause = match thread.join() {
                Ok(()) => "ended without a panic".to_owned(),
                Err(panic) => panic_text(panic.as_ref()),
            };
            tracing::error!(worker = %name, %cause, threads = self.threads(),
                "route worker failed: the records it was routing are routed on the consumer task, and it routes nothing more");
        }
    }
}

impl Drop for RoutePool {
    /// Closes every worker's queue and waits for the threads: an idle
    /// worker ends at once, a busy one after its block.
    fn drop(&mut self) {
        for Worker { chunks, thread, .. } in self.workers.drain(..) {
            drop(chunks);
            let _ = thread.join();
        }
    }
}

/// A worker thread: helps route each chunk it is woken for, until its
/// queue closes.
fn work(routing: &Routing, queue: &std_mpsc::Receiver<Arc<Chunk>>) {
    while let Ok(chunk) = queue.recv() {
        chunk.route_blocks(routing);
    }
}

/// A panic's message, when it has one.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config;
    use crate::pipeline::route::now_us;

    const TOPIC: &str = "shop.public.plain";

    fn settings() -> Arc<Settings> {
        let text = format!(
            r#"
[source]
brokers = "127.0.0.1:9092"
group_id = "g"
topics = ["{TOPIC}"]
[redis]
url = "redis://127.0.0.1:6379"
version_ttl = "1h"
[[entity]]
table = "public.plain"
keys = ["plain:{{id}}"]
"#
        );
        Arc::new(config::parse("t.toml", &text, &|_| None).unwrap())
    }

    fn records(count: i64) -> Vec<KafkaRecord> {
        (0..count)
            .map(|offset| {
                let value = json!({"op": "c", "after": {"id": offset}, "source": {"connector": "postgresql",
                    "name": "shop", "schema": "public", "table": "plain", "lsn": 100 + offset}});
                KafkaRecord {
                    topic: TOPIC.into(),
                    partition: i32::try_from(offset % 3).unwrap(),
                    offset,
                    key: None,
                    value: Some(serde_json::to_vec(&value).unwrap()),
                    timestamp_ms: None,
                    headers: Vec::new(),
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn one_thread_starts_no_worker_and_routes_on_the_caller() {
        let mut pool = RoutePool::new(1, settings(), false, None).unwrap();
        assert_eq!((pool.threads(), pool.workers.len()), (1, 0));
        let now = now_us();
        let routed = pool.route(records(40), now).await;
        let settings = settings();
        for (expected, Prerouted { record, route }) in records(40).iter().zip(&routed) {
            assert_eq!(record, expected);
            let inline = route_with(&settings.graph, &settings.plan, record, now, false, None);
            assert_eq!(route.as_ref(), Some(&inline));
        }
    }

    #[tokio::test]
    async fn many_threads_route_every_record_in_order_as_inline() {
        let mut pool = RoutePool::new(3, settings(), false, None).unwrap();
        assert_eq!(pool.threads(), 3);
        let settings = settings();
        // Below, at and above the chunk sizes that use one, two and three threads.
        for count in [1, 7, 16, 17, 24, 100, 193] {
            let now = now_us();
            let routed = pool.route(records(count), now).await;
            assert_eq!(routed.len(), records(count).len());
            for (expected, Prerouted { record, route }) in records(count).iter().zip(&routed) {
                assert_eq!(record, expected, "in the order given");
                let inline = route_with(&settings.graph, &settings.plan, record, now, false, None);
                assert_eq!(route.as_ref(), Some(&inline), "offset {}", record.offset);
            }
        }
        assert_eq!(pool.threads(), 3);
    }

    #[tokio::test]
    async fn a_failed_worker_loses_no_record_and_is_retired() {
        let mut pool = RoutePool::new(3, settings(), false, None).unwrap();
        let routed = pool.route(records(30), PANIC_NOW_US).await;
        let offsets: Vec<i64> = routed.iter().map(|p| p.record.offset).collect();
        assert_eq!(offsets, (0..30).collect::<Vec<_>>(), "every record back, in order");
        // Each worker claimed a block and failed on it: those records are
        // left to be routed when taken; the caller routed the rest.
        let not_ahead: Vec<i64> = routed
            .iter()
            .filter(|p| p.route.is_none())
            .map(|p| p.record.offset)
            .collect();
        assert_eq!(not_ahead, (0..8).collect::<Vec<_>>());
        assert_eq!(pool.threads(), 1, "both workers retired");
        let routed = pool.route(records(30), now_us()).await;
        assert!(
            routed.iter().all(|p| p.route.is_some()),
            "the caller routes everything now"
        );
    }

    #[test]
    fn schema_ids_are_read_from_the_framing_of_key_and_value() {
        let mut record = records(1).remove(0);
        assert!(schema_ids(&record).is_empty(), "JSON names none");
        record.key = Some(vec![0, 0, 0, 0, 3, 1]);
        record.value = Some(vec![0, 0, 0, 1, 0, 2]);
        assert_eq!(schema_ids(&record), [3, 256]);
    }
}
