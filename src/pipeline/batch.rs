//! The batching state of the consumer stage, with no I/O: what a batch
//! holds, when it is due, when it is full, when it is handed to the
//! applier. Kept pure so the riskiest decisions are tested under paused
//! tokio time, without a daemon (the offsets a batch may store are the
//! partition unit's rule, in `partitions`).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::dead_letter::Failure;
use crate::event::{KafkaRecord, Position};
use crate::graph::Target;
use crate::plan::Plan;
use crate::source::PartitionId;

/// Records taken since the last hand-over, and what they ask of Redis.
#[derive(Default)]
pub(super) struct Batch {
    pub(crate) plan: Plan,
    /// Written durably before anything of the batch is acknowledged.
    pub(crate) dead_letters: Vec<(KafkaRecord, Failure)>,
    /// Per partition, the highest offset whose work is in this batch.
    pub(crate) done: HashMap<PartitionId, i64>,
    /// Kafka timestamps of the records whose bumps are in this batch, for
    /// the apply latency (bounded by the batch's record budget).
    pub(crate) record_times_ms: Vec<i64>,
    pub(crate) records: usize,
    pub(crate) bytes: usize,
    /// When the batch must be handed over: now for a strong change, after
    /// the linger for eventual ones and for records that only need their
    /// offsets stored.
    pub(crate) due_at: Option<Instant>,
}

impl Batch {
    /// The batch must be handed over no later than `at`.
    pub(crate) fn due_by(&mut self, at: Instant) {
        self.due_at = Some(self.due_at.map_or(at, |t| t.min(at)));
    }

    /// Adds a routed record's targets.
    pub(crate) fn add_targets(&mut self, targets: Vec<Target>, position: &Position, commit_time_us: Option<i64>) {
        for target in targets {
            self.plan.add(target, position, commit_time_us);
        }
    }

    /// Counts a record whose work (possibly none) is in this batch.
    pub(crate) fn count(&mut self, partition: PartitionId, offset: i64, bytes: usize) {
        self.done.insert(partition, offset);
        self.records += 1;
        self.bytes += bytes;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records == 0 && self.dead_letters.is_empty()
    }

    /// Abandons the offsets of partitions no longer ours: work already taken
    /// stays (a bump is harmless to repeat), their offsets are someone
    /// else's to commit now.
    pub(crate) fn forget(&mut self, partition: &PartitionId) {
        self.done.remove(partition);
    }
}

/// What the consumer stage does next with its open batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Keep taking records; the batch is not due yet (or still draining
    /// records already fetched).
    Take,
    /// Hand the batch to the applier now.
    HandOver,
    /// Due, but the applier has no room: keep taking records (coalescing)
    /// and hand over as soon as it has.
    GrowUntilRoom,
    /// Full, and the applier has no room: wait for it, taking nothing more.
    WaitForApplier,
}

/// The batch limits and the adaptive hand-over rule.
#[derive(Debug, Clone, Copy)]
pub(super) struct Batching {
    pub(crate) max_records: usize,
    pub(crate) max_bytes: usize,
    /// How long a due batch may keep taking records that are already
    /// fetched: bounds what a strong change pays for batching under load.
    pub(crate) max_drain: Duration,
}

impl Batching {
    pub(crate) fn is_full(&self, batch: &Batch) -> bool {
        batch.records >= self.max_records || batch.bytes >= self.max_bytes
    }

    /// `took_record`: the last poll returned a record at once (more are
    /// probably waiting). `applier_has_room`: a hand-over would not block.
    ///
    /// While the applier is busy a due batch keeps growing (up to full),
    /// coalescing hot keys, so a consumer that is behind sends few large
    /// batches; when it is caught up, a due batch goes as soon as no fetched
    /// record is waiting, so a strong change is applied at once.
    pub(crate) fn next(&self, batch: &Batch, now: Instant, took_record: bool, applier_has_room: bool) -> Next {
        if batch.is_empty() {
            return Next::Take;
        }
        if self.is_full(batch) {
            return if applier_has_room {
                Next::HandOver
            } else {
                Next::WaitForApplier
            };
        }
        let ready = batch
            .due_at
            .is_some_and(|due| due <= now && (!took_record || now - due >= self.max_drain));
        match (ready, applier_has_room) {
            (true, true) => Next::HandOver,
            (true, false) => Next::GrowUntilRoom,
            (false, _) => Next::Take,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCHING: Batching = Batching {
        max_records: 3,
        max_bytes: 1000,
        max_drain: Duration::from_millis(5),
    };

    fn p(n: i32) -> PartitionId {
        ("t".to_owned(), n)
    }

    fn batch_with(records: usize) -> Batch {
        let mut batch = Batch::default();
        for offset in (0_i64..).take(records) {
            batch.count(p(0), offset, 10);
        }
        batch
    }

    #[tokio::test(start_paused = true)]
    async fn empty_batch_is_never_handed_over() {
        let mut batch = Batch::default();
        batch.due_by(Instant::now());
        assert_eq!(BATCHING.next(&batch, Instant::now(), false, true), Next::Take);
    }

    #[tokio::test(start_paused = true)]
    async fn strong_change_goes_at_once_when_nothing_else_is_waiting() {
        let mut batch = batch_with(1);
        batch.due_by(Instant::now());
        assert_eq!(BATCHING.next(&batch, Instant::now(), false, true), Next::HandOver);
    }

    #[tokio::test(start_paused = true)]
    async fn due_batch_drains_fetched_records_for_at_most_max_drain() {
        let mut batch = batch_with(1);
        batch.due_by(Instant::now());
        assert_eq!(BATCHING.next(&batch, Instant::now(), true, true), Next::Take);
        tokio::time::advance(Duration::from_millis(4)).await;
        assert_eq!(BATCHING.next(&batch, Instant::now(), true, true), Next::Take);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(BATCHING.next(&batch, Instant::now(), true, true), Next::HandOver);
    }

    #[tokio::test(start_paused = true)]
    async fn eventual_change_waits_for_its_linger() {
        let mut batch = batch_with(1);
        batch.due_by(Instant::now() + Duration::from_millis(50));
        assert_eq!(BATCHING.next(&batch, Instant::now(), false, true), Next::Take);
        tokio::time::advance(Duration::from_millis(49)).await;
        assert_eq!(BATCHING.next(&batch, Instant::now(), false, true), Next::Take);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(BATCHING.next(&batch, Instant::now(), false, true), Next::HandOver);
    }

    #[tokio::test(start_paused = true)]
    async fn a_strong_change_shortens_an_eventual_linger() {
        let mut batch = batch_with(2);
        batch.due_by(Instant::now() + Duration::from_millis(50));
        batch.due_by(Instant::now());
        assert_eq!(BATCHING.next(&batch, Instant::now(), false, true), Next::HandOver);
    }

    #[tokio::test(start_paused = true)]
    async fn due_batch_grows_while_the_applier_is_busy() {
        let mut batch = batch_with(2);
        batch.due_by(Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(BATCHING.next(&batch, Instant::now(), false, false), Next::GrowUntilRoom);
        batch.count(p(1), 0, 10);
        assert_eq!(
            BATCHING.next(&batch, Instant::now(), false, false),
            Next::WaitForApplier
        );
        assert_eq!(BATCHING.next(&batch, Instant::now(), false, true), Next::HandOver);
    }

    #[tokio::test(start_paused = true)]
    async fn full_by_bytes_is_full() {
        let mut batch = Batch::default();
        batch.count(p(0), 0, 1000);
        assert!(BATCHING.is_full(&batch));
        assert_eq!(BATCHING.next(&batch, Instant::now(), true, true), Next::HandOver);
    }

    #[test]
    fn dead_letters_alone_make_a_batch() {
        let mut batch = Batch::default();
        batch.dead_letters.push((
            KafkaRecord {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                key: None,
                value: None,
                timestamp_ms: None,
                headers: Vec::new(),
            },
            Failure {
                stage: crate::dead_letter::Stage::Decode,
                kind: "x",
                detail: String::new(),
            },
        ));
        assert!(!batch.is_empty());
    }

    #[test]
    fn forgotten_partition_keeps_its_work_but_not_its_offsets() {
        let mut batch = batch_with(2);
        batch.count(p(1), 7, 1);
        batch.forget(&p(0));
        assert_eq!(batch.done, HashMap::from([(p(1), 7)]));
        assert_eq!(batch.records, 3);
    }
}
