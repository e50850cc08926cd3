//! The gauge refresher: a task of its own, so that the gauges stay true
//! (and present) while the consumer stage or the applier waits.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer as _;
use tokio_util::sync::CancellationToken;

use crate::admin::Status;
use crate::metrics;
use crate::source::Consumer;

/// Re-sets every gauge on a timer of its own, so that they stay true (and
/// present) while the apply loop waits on an outage or a hung call, and
/// measures the lag of paused partitions against the broker's high
/// watermark, which the statistics of a paused partition no longer follow.
pub(super) async fn refresh(consumer: Arc<Consumer>, status: Arc<Status>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(metrics::GAUGE_REFRESH);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        for (partition, unapplied_from) in consumer.context().paused_partitions() {
            let Some(unapplied_from) = unapplied_from else { continue };
            let asking = consumer.clone();
            let (topic, id) = partition.clone();
            // fetch_watermarks blocks on a broker round trip.
            let answer =
                tokio::task::spawn_blocking(move || asking.fetch_watermarks(&topic, id, WATERMARK_TIMEOUT)).await;
            match answer {
                Ok(Ok((_low, high))) => consumer.context().set_paused_lag(&partition, high - unapplied_from),
                Ok(Err(e)) => tracing::debug!(topic = %partition.0, partition = partition.1, error = %e,
                    "high watermark of a paused partition not available"),
                Err(e) => tracing::debug!(error = %e, "watermark query task failed"),
            }
        }
        status.kafka_quiet(consumer.context().kafka_quiet_for());
        status.readiness();
        metrics::refresh_gauges();
    }
}

// A broker that does not answer within this is asked again at the next refresh.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);
