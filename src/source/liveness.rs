//! Source liveness: is Debezium still writing? A task of its own reads the
//! high watermarks of the watched topics (Debezium heartbeat topics, or the
//! subscribed topics) and exports how long each has gone without a new
//! record. It reads watermarks instead of consuming, so every replica sees
//! every watched topic whatever partitions the group gave it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tokio_util::sync::CancellationToken;

use crate::admin::Status;
use crate::config::{SourceSettings, Subscription};

// One metadata or watermark request slower than this counts as unanswered
// for this round; the topic's age keeps growing meanwhile.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The age of each watched topic, from the watermarks seen so far.
#[derive(Debug, Default)]
pub(crate) struct Ages {
    /// topic -> (sum of high watermarks, when it last changed)
    seen: HashMap<String, (i64, Instant)>,
}

impl Ages {
    /// Takes one round of watermarks in (None: not answered this round).
    pub(crate) fn observe(&mut self, topic: &str, high: Option<i64>, now: Instant) {
        match (self.seen.get_mut(topic), high) {
            (Some((sum, changed)), Some(h)) if *sum != h => {
                *sum = h;
                *changed = now;
            }
            (Some(_), _) => {}
            // The first sight starts the clock: idle since the daemon looked.
            (None, h) => {
                self.seen.insert(topic.to_owned(), (h.unwrap_or(-1), now));
            }
        }
    }

    /// Seconds since each topic's newest record was first seen.
    pub(crate) fn ages(&self, now: Instant) -> BTreeMap<String, u64> {
        self.seen
            .iter()
            .map(|(t, (_, changed))| (t.clone(), now.saturating_duration_since(*changed).as_secs()))
            .collect()
    }
}

/// Runs until shutdown: one round per interval.
pub(crate) async fn watch(settings: SourceSettings, status: Arc<Status>, shutdown: CancellationToken) {
    // Never subscribes or joins: the group id only satisfies the client.
    let config = crate::kafka_client::observer(&settings, "liveness");
    let consumer: Arc<BaseConsumer<super::SourceContext>> = match config
        .create_with_context(super::SourceContext::default())
        .map_err(crate::kafka_client::without_setting_value)
    {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::warn!(error = %e, "source liveness watcher not started");
            return;
        }
    };
    let liveness = settings.liveness.clone();
    let interval = match liveness.max_idle {
        // A third of the bound: an idle topic is reported within 4/3 of it.
        Some(max) => liveness.interval.min(max / 3).max(Duration::from_millis(200)),
        None => liveness.interval,
    };
    let mut ages = Ages::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let c = consumer.clone();
        let topics = liveness.topics.clone();
        let subscription = settings.subscription.clone();
        let Ok(round) = tokio::task::spawn_blocking(move || read_watermarks(&c, topics, &subscription)).await else {
            continue;
        };
        let now = Instant::now();
        for (topic, high) in &round {
            ages.observe(topic, *high, now);
        }
        let mut idle = BTreeMap::new();
        for (topic, age) in ages.ages(now) {
            crate::metrics::source_idle(&topic, age);
            if liveness.max_idle.is_some_and(|max| age > max.as_secs()) {
                idle.insert(topic, age);
            }
        }
        crate::metrics::source_idle_topics(idle.len());
        status.set_idle_sources(idle);
    }
}

/// One round: the sum of high watermarks per watched topic.
fn read_watermarks(
    consumer: &BaseConsumer<super::SourceContext>,
    topics: Option<Vec<String>>,
    subscription: &Subscription,
) -> Vec<(String, Option<i64>)> {
    let topics = match (topics, subscription) {
        (Some(t), _) => t,
        (None, Subscription::Topics(t)) => t.clone(),
        (None, Subscription::Regex(pattern)) => match consumer.fetch_metadata(None, REQUEST_TIMEOUT) {
            Ok(m) => m
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .filter(|t| pattern.is_match(t))
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "liveness: metadata not answered");
                return Vec::new();
            }
        },
    };
    topics
        .into_iter()
        .map(|topic| {
            let high = consumer
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                .ok()
                .and_then(|m| {
                    let partitions: Vec<i32> = m.topics().first()?.partitions().iter().map(|p| p.id()).collect();
                    if partitions.is_empty() {
                        return None;
                    }
                    partitions.iter().try_fold(0i64, |sum, p| {
                        consumer
                            .fetch_watermarks(&topic, *p, REQUEST_TIMEOUT)
                            .ok()
                            .map(|(_, high)| sum + high)
                    })
                });
            (topic, high)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_restarts_when_the_watermark_moves() {
        let mut ages = Ages::default();
        let t0 = Instant::now();
        ages.observe("hb", Some(10), t0);
        assert_eq!(ages.ages(t0 + Duration::from_secs(7))["hb"], 7);
        // Unanswered rounds and unchanged watermarks keep the clock running.
        ages.observe("hb", None, t0 + Duration::from_secs(8));
        ages.observe("hb", Some(10), t0 + Duration::from_secs(9));
        assert_eq!(ages.ages(t0 + Duration::from_secs(9))["hb"], 9);
        ages.observe("hb", Some(11), t0 + Duration::from_secs(10));
        assert_eq!(ages.ages(t0 + Duration::from_secs(12))["hb"], 2);
    }
}
