//! Every transition of the partition state machine, with explicit instants.

use super::*;

const LIMITS: Limits = Limits {
    escalate_above_lag: Some(100),
    schema_retry_cap: Duration::from_millis(400),
    held_records: 4,
    held_bytes: 1000,
};

fn p(n: i32) -> PartitionId {
    ("t".to_owned(), n)
}

fn rec(partition: i32, offset: i64) -> KafkaRecord {
    KafkaRecord {
        topic: "t".into(),
        partition,
        offset,
        key: None,
        value: Some(b"{}".to_vec()),
        timestamp_ms: None,
        headers: Vec::new(),
    }
}

fn take(partition: i32, offset: i64) -> Action {
    Action::Take(rec(partition, offset))
}

fn pause(partition: i32, unapplied_from: Option<i64>) -> Action {
    Action::Consumer(ConsumerAction::Pause {
        partition: p(partition),
        unapplied_from,
    })
}

fn resume(partition: i32, seek_to: Option<i64>) -> Action {
    Action::Consumer(ConsumerAction::Resume {
        partition: p(partition),
        seek_to,
    })
}

fn store(offsets: &[(i32, i64)]) -> Action {
    Action::Consumer(ConsumerAction::Store(
        offsets.iter().map(|&(n, offset)| (p(n), offset)).collect(),
    ))
}

fn done(offsets: &[(i32, i64)]) -> HashMap<PartitionId, i64> {
    offsets.iter().map(|&(n, offset)| (p(n), offset)).collect()
}

fn stall_of(actions: &[Action]) -> Option<(PartitionId, i64, StallReason)> {
    actions.iter().find_map(|a| match a {
        Action::Stall { partition, stall } => Some((partition.clone(), stall.offset, stall.reason)),
        _ => None,
    })
}

/// Two partitions assigned, offsets 0..taken of each taken.
fn assigned_and_taken(taken: i64) -> Partitions {
    let mut unit = Partitions::new(LIMITS);
    assert_eq!(unit.assigned(&[p(0), p(1)]), vec![]);
    for offset in 0..taken {
        assert_eq!(unit.record(rec(0, offset)), vec![take(0, offset)]);
        assert_eq!(unit.record(rec(1, offset)), vec![take(1, offset)]);
    }
    unit
}

#[test]
fn records_of_a_running_partition_are_taken_and_their_offsets_stored() {
    let mut unit = assigned_and_taken(3);
    assert_eq!(
        unit.applied(&done(&[(0, 2), (1, 1)]), Vec::new()),
        vec![store(&[(0, 3), (1, 2)])]
    );
    assert_eq!(unit.paused(), 0);
    assert_eq!(unit.assigned_count(), 2);
}

#[test]
fn outage_pauses_everything_and_resumes_at_the_first_record_not_taken() {
    let mut unit = assigned_and_taken(3);
    unit.applied(&done(&[(0, 1)]), Vec::new());
    assert_eq!(unit.outage_began(), vec![pause(0, Some(2)), pause(1, None)]);
    assert_eq!(unit.paused(), 2);
    // Fetched before the pause took effect: dropped, fetched again after the seek.
    assert_eq!(unit.record(rec(0, 3)), vec![]);
    assert_eq!(unit.record(rec(1, 3)), vec![]);
    assert!(!unit.has_ready());
    assert_eq!(unit.outage_began(), vec![], "a second report changes nothing");
    assert_eq!(unit.outage_ended(), vec![resume(0, Some(3)), resume(1, Some(3))]);
    assert_eq!(unit.paused(), 0);
    assert_eq!(unit.record(rec(0, 3)), vec![take(0, 3)]);
}

#[test]
fn a_partition_first_seen_during_an_outage_resumes_at_its_first_dropped_record() {
    let mut unit = Partitions::new(LIMITS);
    unit.assigned(&[p(0)]);
    assert_eq!(unit.outage_began(), vec![pause(0, None)]);
    assert_eq!(unit.record(rec(0, 7)), vec![]);
    assert_eq!(unit.record(rec(0, 8)), vec![]);
    assert_eq!(unit.outage_ended(), vec![resume(0, Some(7))]);
    // Assigned during an outage: paused at once.
    unit.outage_began();
    assert_eq!(unit.assigned(&[p(5)]), vec![pause(5, None)]);
}

#[test]
fn the_end_of_an_outage_keeps_held_partitions_paused() {
    let mut unit = assigned_and_taken(3);
    let now = Instant::now();
    let stalled = unit.stall(
        &p(1),
        2,
        StallReason::NoNamespace(crate::graph::EscalationReason::MissingBefore),
        "no namespace".into(),
    );
    assert!(stalled.contains(&pause(1, None)), "{stalled:?}");
    assert_eq!(unit.record(rec(0, 3)), vec![take(0, 3)]);
    assert_eq!(unit.schema_missing(&p(0), 3, vec![9], now), vec![pause(0, None)]);
    unit.assigned(&[p(2)]);
    assert_eq!(unit.outage_began(), vec![pause(2, None)], "only the one still running");
    assert_eq!(unit.outage_ended(), vec![resume(2, None)]);
    assert_eq!(unit.paused(), 2);
    // The schema arrives during a second outage: it resumes with the others.
    unit.outage_began();
    assert_eq!(unit.schemas_arrived(&p(0)), vec![]);
    assert_eq!(unit.outage_ended(), vec![resume(0, Some(3)), resume(2, None)]);
}

#[test]
fn a_failed_seek_keeps_the_partition_paused_until_a_retry() {
    let mut unit = assigned_and_taken(3);
    let now = Instant::now();
    unit.outage_began();
    assert_eq!(unit.outage_ended(), vec![resume(0, Some(3)), resume(1, Some(3))]);
    assert_eq!(unit.seek_failed(&p(0)), vec![pause(0, None)]);
    // Consuming on from librdkafka's position would skip 3: dropped.
    assert_eq!(unit.record(rec(0, 5)), vec![]);
    // No retry during an outage; its end leaves the partition to the tick.
    unit.outage_began();
    assert_eq!(unit.tick(now), vec![]);
    assert_eq!(unit.outage_ended(), vec![resume(1, Some(3))]);
    assert_eq!(unit.tick(now), vec![resume(0, Some(3))]);
    assert_eq!(unit.seek_failed(&p(0)), vec![pause(0, None)]);
    assert_eq!(unit.tick(now), vec![resume(0, Some(3))]);
    assert_eq!(unit.tick(now), vec![], "resumed: nothing left to retry");
    assert_eq!(unit.record(rec(0, 3)), vec![take(0, 3)]);
}

#[test]
fn a_stall_stops_the_partition_and_no_offset_at_or_past_it_is_stored() {
    let mut unit = assigned_and_taken(6);
    let actions = unit.stall(
        &p(0),
        4,
        StallReason::NoNamespace(crate::graph::EscalationReason::Toast),
        "toast".into(),
    );
    assert_eq!(
        stall_of(&actions),
        Some((p(0), 4, StallReason::NoNamespace(crate::graph::EscalationReason::Toast)))
    );
    assert!(actions.contains(&pause(0, None)));
    assert_eq!(unit.record(rec(0, 6)), vec![], "records past a stall are dropped");
    // A batch handed over before the stall holds 3..=5.
    assert_eq!(
        unit.applied(&done(&[(0, 5), (1, 5)]), Vec::new()),
        vec![store(&[(0, 4), (1, 6)])]
    );
    assert_eq!(unit.outage_began(), vec![pause(1, Some(6))]);
    assert_eq!(unit.outage_ended(), vec![resume(1, Some(6))]);
    assert_eq!(unit.tick(Instant::now()), vec![]);
}

#[test]
fn a_refused_dead_letter_stalls_before_the_offsets_are_stored() {
    let mut unit = assigned_and_taken(6);
    let refused = vec![Refused {
        partition: p(1),
        offset: 2,
        detail: "refused".into(),
    }];
    let actions = unit.applied(&done(&[(0, 5), (1, 1)]), refused);
    assert_eq!(stall_of(&actions), Some((p(1), 2, StallReason::DeadLetterRefused)));
    assert_eq!(actions.last(), Some(&store(&[(0, 6), (1, 2)])));
    // A later batch with records past the refused one stores nothing past it.
    assert_eq!(unit.applied(&done(&[(1, 5)]), Vec::new()), vec![store(&[(1, 2)])]);
    // A refusal for a partition no longer ours stalls nothing here.
    unit.revoked(&[p(0)]);
    let refused = vec![Refused {
        partition: p(0),
        offset: 3,
        detail: "refused".into(),
    }];
    assert_eq!(unit.applied(&done(&[]), refused), vec![]);
}

#[test]
fn schema_wait_retries_with_capped_backoff_then_resumes_at_the_record() {
    let mut unit = assigned_and_taken(3);
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    unit.record(rec(0, 3));
    assert_eq!(unit.schema_missing(&p(0), 3, vec![7, 8], t0), vec![pause(0, None)]);
    assert!(unit.waiting_for_schemas());
    assert_eq!(unit.record(rec(0, 4)), vec![], "later records wait behind it");
    let fetch = Action::FetchSchemas {
        partition: p(0),
        ids: vec![7, 8],
    };
    assert_eq!(unit.tick(t0 + ms(99)), vec![]);
    assert_eq!(unit.tick(t0 + ms(100)), vec![fetch.clone()]);
    unit.schemas_still_missing(&p(0), t0 + ms(100));
    assert_eq!(unit.tick(t0 + ms(299)), vec![]);
    assert_eq!(unit.tick(t0 + ms(300)), vec![fetch.clone()]);
    unit.schemas_still_missing(&p(0), t0 + ms(300));
    assert_eq!(unit.tick(t0 + ms(699)), vec![]);
    assert_eq!(unit.tick(t0 + ms(700)), vec![fetch.clone()]);
    unit.schemas_still_missing(&p(0), t0 + ms(700));
    // Capped at 400 ms.
    assert_eq!(unit.tick(t0 + ms(1099)), vec![]);
    assert_eq!(unit.tick(t0 + ms(1100)), vec![fetch]);
    assert_eq!(unit.schemas_arrived(&p(0)), vec![resume(0, Some(3))]);
    assert!(!unit.waiting_for_schemas());
    assert_eq!(unit.record(rec(0, 3)), vec![take(0, 3)]);
    assert_eq!(unit.tick(t0 + ms(5000)), vec![]);
}

#[test]
fn a_stalled_partition_stays_paused_when_its_schemas_arrive() {
    let mut unit = assigned_and_taken(3);
    unit.schema_missing(&p(0), 3, vec![7], Instant::now());
    unit.stall(&p(0), 1, StallReason::DeadLetterRefused, "refused".into());
    assert_eq!(unit.schemas_arrived(&p(0)), vec![]);
    assert_eq!(unit.paused(), 1);
}

#[test]
fn revoke_drops_pending_offsets_held_records_and_the_lookup() {
    let mut unit = assigned_and_taken(3);
    let ticket = unit.fanout_started(&p(0), 3);
    unit.record(rec(0, 4));
    let actions = unit.revoked(&[p(0)]);
    assert_eq!(actions, vec![Action::DropFanout(ticket), Action::Forget(p(0))]);
    // A batch sealed before the revoke stores nothing for it.
    assert_eq!(
        unit.applied(&done(&[(0, 2), (1, 2)]), Vec::new()),
        vec![store(&[(1, 3)])]
    );
    assert!(
        !unit.fanout_finished(&p(0), ticket),
        "the lookup's result no longer counts"
    );
    // Assigned again: a fresh start, and the old lookup still does not count.
    unit.assigned(&[p(0)]);
    assert!(!unit.fanout_finished(&p(0), ticket));
    assert!(!unit.has_ready());
    assert_eq!(unit.record(rec(0, 2)), vec![take(0, 2)]);
    assert_eq!(unit.assigned_count(), 2);
}

#[test]
fn records_behind_a_lookup_are_held_in_order_and_the_other_partitions_go_on() {
    let mut unit = assigned_and_taken(1);
    let ticket = unit.fanout_started(&p(0), 1);
    assert_eq!(unit.record(rec(0, 2)), vec![]);
    assert_eq!(unit.record(rec(0, 3)), vec![]);
    assert_eq!(unit.record(rec(1, 1)), vec![take(1, 1)]);
    assert!(!unit.has_ready(), "nothing to take while the lookup runs");
    assert_eq!(unit.take_ready(), vec![]);
    // Outage meanwhile: held records stay held, the lookup may finish.
    unit.outage_began();
    assert!(unit.fanout_finished(&p(0), ticket));
    assert!(!unit.has_ready());
    assert_eq!(unit.take_ready(), vec![]);
    assert_eq!(unit.outage_ended(), vec![resume(0, Some(4)), resume(1, Some(2))]);
    assert!(unit.has_ready());
    assert_eq!(unit.take_ready(), vec![take(0, 2)]);
    // Record 2 needs a lookup too: 3 waits again, new records join behind it.
    let second = unit.fanout_started(&p(0), 2);
    assert_eq!(unit.take_ready(), vec![]);
    assert_eq!(unit.record(rec(0, 4)), vec![]);
    assert!(unit.fanout_finished(&p(0), second));
    assert_eq!(unit.take_ready(), vec![take(0, 3)]);
    assert_eq!(unit.take_ready(), vec![take(0, 4)]);
    assert_eq!(unit.take_ready(), vec![]);
    assert!(!unit.has_ready());
    assert_eq!(unit.record(rec(0, 5)), vec![take(0, 5)]);
}

#[test]
fn a_stale_or_unknown_lookup_result_does_not_count() {
    let mut unit = assigned_and_taken(1);
    let first = unit.fanout_started(&p(0), 1);
    unit.record(rec(0, 2));
    let actions = unit.stall(&p(0), 0, StallReason::DeadLetterRefused, "refused".into());
    assert_eq!(actions[0], Action::DropFanout(first));
    assert!(!unit.fanout_finished(&p(0), first));
    assert!(!unit.has_ready(), "held records were dropped with the stall");
    assert!(!unit.fanout_finished(&p(9), first));
}

#[test]
fn full_held_records_pause_the_partition_until_half_are_taken() {
    let mut unit = assigned_and_taken(1);
    let ticket = unit.fanout_started(&p(0), 1);
    for offset in 2..5 {
        assert_eq!(unit.record(rec(0, offset)), vec![]);
    }
    // The fourth held record reaches the limit.
    assert_eq!(unit.record(rec(0, 5)), vec![pause(0, None)]);
    // Already fetched: dropped, fetched again after the resume's seek.
    assert_eq!(unit.record(rec(0, 6)), vec![]);
    assert!(unit.fanout_finished(&p(0), ticket));
    assert_eq!(unit.take_ready(), vec![take(0, 2)]);
    assert_eq!(unit.take_ready(), vec![take(0, 3), resume(0, Some(6))]);
    assert_eq!(unit.record(rec(0, 6)), vec![], "held behind 4 and 5");
    assert_eq!(unit.take_ready(), vec![take(0, 4)]);
    assert_eq!(unit.take_ready(), vec![take(0, 5)]);
    assert_eq!(unit.take_ready(), vec![take(0, 6)]);
    assert_eq!(unit.take_ready(), vec![]);
}

#[test]
fn held_bytes_count_toward_the_limit() {
    let mut unit = assigned_and_taken(1);
    unit.fanout_started(&p(0), 1);
    let mut big = rec(0, 2);
    big.value = Some(vec![b'x'; 1000]);
    assert_eq!(unit.record(big), vec![pause(0, None)]);
}

#[test]
fn a_schema_miss_of_a_held_record_drops_the_records_behind_it() {
    let mut unit = assigned_and_taken(1);
    let ticket = unit.fanout_started(&p(0), 1);
    unit.record(rec(0, 2));
    unit.record(rec(0, 3));
    assert!(unit.fanout_finished(&p(0), ticket));
    assert_eq!(unit.take_ready(), vec![take(0, 2)]);
    assert_eq!(
        unit.schema_missing(&p(0), 2, vec![1], Instant::now()),
        vec![pause(0, None)]
    );
    assert_eq!(unit.take_ready(), vec![], "3 is fetched again after the seek to 2");
    assert_eq!(unit.schemas_arrived(&p(0)), vec![resume(0, Some(2))]);
}

#[test]
fn lag_escalation_has_hysteresis() {
    let mut unit = assigned_and_taken(0);
    assert!(!unit.escalating(&p(0), None));
    assert!(!unit.escalating(&p(0), Some(100)));
    assert!(unit.escalating(&p(0), Some(101)));
    assert!(unit.escalating(&p(0), Some(50)), "still above half the threshold");
    assert!(unit.escalating(&p(0), None), "no new statistics: unchanged");
    assert!(!unit.escalating(&p(0), Some(49)));
    assert!(!unit.escalating(&p(1), Some(99)));
    let mut off = Partitions::new(Limits {
        escalate_above_lag: None,
        ..LIMITS
    });
    assert!(!off.escalating(&p(0), Some(1_000_000)));
}

#[test]
fn storable_skips_partitions_no_longer_owned() {
    let done = HashMap::from([(p(0), 4), (p(1), 9)]);
    let stored = storable(&done, |id| (id == &p(1)).then_some(None));
    assert_eq!(stored, vec![(p(1), 10)]);
}

#[test]
fn storable_never_passes_a_stalled_record() {
    // Stalled at 5: a batch handed over earlier holds offsets 3..=8.
    let done = HashMap::from([(p(0), 8), (p(1), 2)]);
    let stored = storable(&done, |id| Some((id == &p(0)).then_some(5)));
    assert_eq!(stored, vec![(p(0), 5), (p(1), 3)]);
    // Stalled at the partition's first record: nothing to store.
    let stored = storable(&HashMap::from([(p(0), 3)]), |_| Some(Some(0)));
    assert!(stored.is_empty());
}
