//! Routing ahead of the intake on several threads (`plan.route_workers`).
//!
//! Decoding and routing ([`route_with`]) is the consumer stage's one
//! CPU-bound step, and it is pure: what it returns depends only on the
//! graph, the plan settings, the record, the clock, whether dead letters are
//! kept, and the Avro schemas loaded. So the consumer stage can route a
//! chunk of records it already polled on several threads at once and then
//! hand them to the partition unit one by one, in the order polled, exactly
//! as it would have without the pool: order, holds, stalls, offsets and the
//! lag escalation stay where they are (`Intake::take`). The chunk is split
//! into contiguous parts: the first is routed on the calling task, the
//! others on worker threads of their own.
//!
//! A route computed ahead is only offered for a record whose Avro schemas
//! were all loaded before it was decoded (a loaded schema stays loaded):
//! any other is routed when it is taken, after the intake loaded its
//! schemas, as before. A worker that fails (a panic) is logged at ERROR and
//! retired; the records it had are routed when taken, on the consumer task.

use std::ops::Range;
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::route::{route_with, Route};
use crate::config::Settings;
use crate::decode::{schema_id, AvroSchemas};
use crate::event::KafkaRecord;

// Fewer records than this per thread cost more in hand-offs (a thread wake
// is some microseconds) than they save: a small chunk uses fewer threads.
const MIN_RECORDS_PER_THREAD: usize = 8;

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

/// One part of a chunk for a worker: the records stay shared, so a worker
/// that fails loses none of them.
struct Job {
    records: Arc<Vec<KafkaRecord>>,
    part: Range<usize>,
    now_us: i64,
    routes: oneshot::Sender<Vec<Option<Route>>>,
}

/// Tests make a worker panic with this clock (the calling thread ignores it).
#[cfg(test)]
const PANIC_NOW_US: i64 = i64::MIN;

struct Worker {
    name: String,
    jobs: std_mpsc::Sender<Job>,
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
            let (jobs, queue) = std_mpsc::channel::<Job>();
            let shared = routing.clone();
            let thread = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || work(&shared, &queue))?;
            workers.push(Worker { name, jobs, thread });
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
        let total = records.len();
        let parts = (total / MIN_RECORDS_PER_THREAD).clamp(1, self.threads());
        let part_len = total.div_ceil(parts);
        let records = Arc::new(records);
        let mut sent = Vec::new();
        for (index, worker) in self.workers.iter().enumerate().take(parts - 1) {
            let start = (index + 1) * part_len;
            let part = start.min(total)..(start + part_len).min(total);
            let (routes, answer) = oneshot::channel();
            let job = Job {
                records: records.clone(),
                part: part.clone(),
                now_us,
                routes,
            };
            // A worker that is gone answers nothing: its part is routed when taken.
            let answer = worker.jobs.send(job).is_ok().then_some(answer);
            sent.push((index, part, answer));
        }
        let mut routes: Vec<Option<Route>> = records
            .iter()
            .take(part_len)
            .map(|record| self.routing.ahead(record, now_us))
            .collect();
        routes.resize_with(total, || None);
        let mut failed = Vec::new();
        for (index, part, answer) in sent {
            let answered = match answer {
                Some(answer) => answer.await.ok(),
                None => None,
            };
            match answered {
                Some(part_routes) if part_routes.len() == part.len() => {
                    if let Some(slots) = routes.get_mut(part) {
                        for (slot, route) in slots.iter_mut().zip(part_routes) {
                            *slot = route;
                        }
                    }
                }
                _ => failed.push(index),
            }
        }
        // Failed workers go, last first so the indices stay valid.
        for index in failed.into_iter().rev() {
            self.retire(index);
        }
        // The workers dropped their handles before answering (a failed one
        // while unwinding): the records come back without a copy.
        let records = Arc::try_unwrap(records).unwrap_or_else(|shared| shared.as_ref().clone());
        records
            .into_iter()
            .zip(routes)
            .map(|(record, route)| Prerouted { record, route })
            .collect()
    }

    /// A worker failed to answer: it routes nothing more, loudly.
    fn retire(&mut self, index: usize) {
        if index >= self.workers.len() {
            return;
        }
        let Worker { name, jobs, thread } = self.workers.remove(index);
        drop(jobs);
        // It ended (it dropped its answer), so the join does not wait.
        let cause = match thread.join() {
            Ok(()) => "ended without answering".to_owned(),
            Err(panic) => panic_text(panic.as_ref()),
        };
        tracing::error!(worker = %name, %cause, threads = self.threads(),
            "route worker failed: the records it had are routed on the consumer task, and it routes nothing more");
    }
}

impl Drop for RoutePool {
    /// Closes every worker's queue and waits for the threads: an idle
    /// worker ends at once, a busy one after its part.
    fn drop(&mut self) {
        for Worker { jobs, thread, .. } in self.workers.drain(..) {
            drop(jobs);
            let _ = thread.join();
        }
    }
}

/// A worker thread: routes the parts it is given until its queue closes.
fn work(routing: &Routing, queue: &std_mpsc::Receiver<Job>) {
    while let Ok(Job {
        records,
        part,
        now_us,
        routes,
    }) = queue.recv()
    {
        #[cfg(test)]
        if now_us == PANIC_NOW_US {
            panic!("route worker test panic");
        }
        let computed: Vec<Option<Route>> = records
            .get(part)
            .unwrap_or_default()
            .iter()
            .map(|record| routing.ahead(record, now_us))
            .collect();
        // Before answering, so the caller gets the records back uncopied.
        drop(records);
        let _ = routes.send(computed);
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
        let ahead: Vec<bool> = routed.iter().map(|p| p.route.is_some()).collect();
        // The caller's part (the first ten) is routed; the workers' parts
        // are left to be routed when taken.
        assert_eq!(ahead, (0..30).map(|i| i < 10).collect::<Vec<_>>());
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
