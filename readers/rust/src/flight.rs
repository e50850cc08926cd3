//! Single flight (spec section 5, rule 2): concurrent gets in one `Cache`
//! that found the same data key missing (with the same consistency) share
//! one lease attempt and one wait. The first get leads; the others follow and take the
//! outcome the leader publishes. A leader that is cancelled (its future
//! dropped) abandons the flight: its followers start again, one of them
//! leading. A follower whose leader holds the lease and is still loading one
//! lease after the follower joined leaves that flight and starts over, so a
//! hung leader delays its followers no longer than a hung holder delays
//! other processes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::cache::Got;
use crate::Error;

/// The outcome a leader hands to its followers.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub result: Result<Got, Error>,
}

#[derive(Debug, Clone)]
enum State {
    Running,
    Done(Shared),
    Abandoned,
}

/// One running flight as the map holds it.
struct Running {
    id: u64,
    rx: watch::Receiver<State>,
    /// The leader holds the lease (is loading): only such a leader can hang.
    holding: Arc<AtomicBool>,
}

#[derive(Default)]
pub(crate) struct Flights {
    running: Mutex<HashMap<String, Running>>,
    next_id: AtomicU64,
}

pub(crate) enum Joined<'a> {
    Lead(Leader<'a>),
    Follow(Follower<'a>),
}

/// How a follower's wait ended.
pub(crate) enum Followed {
    Done(Shared),
    /// The leader was cancelled: start again.
    Abandoned,
    /// The follower's own deadline passed first.
    TimedOut,
    /// The leader is still at work after the lease: the flight is closed to
    /// newcomers and the follower starts over.
    Left,
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        // Every mutation below completes or does nothing: a poisoned map is consistent.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the running flight of `key`, or starts one led by the caller.
    pub fn join(&self, key: &str) -> Joined<'_> {
        let mut running = self.lock();
        if let Some(flight) = running.get(key) {
            return Joined::Follow(Follower {
                flights: self,
                key: key.to_owned(),
                id: flight.id,
                rx: flight.rx.clone(),
                holding: flight.holding.clone(),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(State::Running);
        let holding = Arc::new(AtomicBool::new(false));
        running.insert(
            key.to_owned(),
            Running {
                id,
                rx,
                holding: holding.clone(),
            },
        );
        Joined::Lead(Leader {
            flights: self,
            key: key.to_owned(),
            id,
            tx,
            holding,
            finished: false,
        })
    }

    fn remove(&self, key: &str, id: u64) {
        let mut running = self.lock();
        if running.get(key).is_some_and(|flight| flight.id == id) {
            running.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    id: u64,
    tx: watch::Sender<State>,
    holding: Arc<AtomicBool>,
    finished: bool,
}

impl Leader<'_> {
    /// The leader took the lease: from now on it may hang in its loader.
    pub fn holding(&self) -> &AtomicBool {
        &self.holding
    }

    /// Hands `shared` to the followers and closes the flight: a get that
    /// starts after this starts a flight of its own. The leader may go on
    /// working for itself (an early refresh, a load behind a stale value).
    pub fn finish(&mut self, shared: Shared) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.flights.remove(&self.key, self.id);
        self.tx.send_replace(State::Done(shared));
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.flights.remove(&self.key, self.id);
            self.tx.send_replace(State::Abandoned);
        }
    }
}

pub(crate) struct Follower<'a> {
    flights: &'a Flights,
    key: String,
    id: u64,
    rx: watch::Receiver<State>,
    holding: Arc<AtomicBool>,
}

impl Follower<'_> {
    /// Waits for the leader's outcome until `deadline`. Every `patience`
    /// it looks whether the leader holds the lease: then the flight is
    /// closed to newcomers and the follower leaves it (`Left`).
    pub async fn wait(mut self, deadline: Instant, patience: Duration) -> Followed {
        let mut leave_at = Instant::now() + patience;
        let outcome = loop {
            let outcome = tokio::time::timeout_at(
                deadline.min(leave_at).into(),
                self.rx.wait_for(|s| !matches!(s, State::Running)),
            )
            .await;
            match outcome {
                Err(_) if leave_at < deadline => {
                    if self.holding.load(Ordering::SeqCst) {
                        self.flights.remove(&self.key, self.id);
                        return Followed::Left;
                    }
                    // A leader that is only waiting itself is not hung.
                    leave_at += patience;
                }
                other => break other,
            }
        };
        match outcome {
            Err(_) => Followed::TimedOut,
            // The sender is gone without an outcome: the same as abandoned.
            Ok(Err(_)) => Followed::Abandoned,
            Ok(Ok(state)) => match &*state {
                State::Done(shared) => Followed::Done(shared.clone()),
                State::Abandoned | State::Running => Followed::Abandoned,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn got(value: &[u8]) -> Shared {
        Shared {
            result: Ok(Got {
                value: value.to_vec(),
                hit: false,
                data_key: "k@e0:v1".into(),
                stale: false,
            }),
        }
    }

    #[tokio::test]
    async fn followers_take_the_leaders_outcome_and_a_finished_flight_is_closed() {
        let flights = Flights::default();
        let Joined::Lead(mut leader) = flights.join("k") else {
            panic!("the first get leads")
        };
        let Joined::Follow(follower) = flights.join("k") else {
            panic!("the second follows")
        };
        let far = Instant::now() + Duration::from_secs(5);
        let waiting = async move { follower.wait(far, Duration::from_secs(5)).await };
        leader.finish(got(b"v"));
        assert_eq!(flights.len(), 0, "finished flights are closed at once");
        let Followed::Done(shared) = waiting.await else {
            panic!("the follower got the outcome")
        };
        assert_eq!(shared.result.unwrap().value, b"v");
        assert!(matches!(flights.join("k"), Joined::Lead(_)), "a later get leads anew");
    }

    #[tokio::test]
    async fn a_dropped_leader_abandons_and_a_follower_times_out_on_its_own_deadline() {
        let flights = Flights::default();
        let leader = flights.join("k");
        let Joined::Follow(follower) = flights.join("k") else {
            panic!("follows")
        };
        drop(leader);
        let far = Instant::now() + Duration::from_secs(5);
        assert!(matches!(
            follower.wait(far, Duration::from_secs(5)).await,
            Followed::Abandoned
        ));
        assert_eq!(flights.len(), 0);

        let _leader = flights.join("k");
        let Joined::Follow(follower) = flights.join("k") else {
            panic!("follows")
        };
        let started = Instant::now();
        let soon = started + Duration::from_millis(30);
        assert!(matches!(
            follower.wait(soon, Duration::from_secs(1)).await,
            Followed::TimedOut
        ));
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(flights.len(), 1, "a timed-out follower leaves the flight running");
    }

    #[tokio::test]
    async fn a_follower_of_a_hung_holder_leaves_and_the_next_get_leads() {
        let flights = Flights::default();
        let Joined::Lead(hung) = flights.join("k") else {
            panic!("leads")
        };
        let Joined::Follow(follower) = flights.join("k") else {
            panic!("follows")
        };
        // A leader that only waits is followed past the patience.
        let soon = Instant::now() + Duration::from_millis(50);
        let waited = follower.wait(soon, Duration::from_millis(10));
        assert!(matches!(waited.await, Followed::TimedOut));
        hung.holding().store(true, Ordering::SeqCst);
        let Joined::Follow(follower) = flights.join("k") else {
            panic!("follows")
        };
        let left = follower.wait(Instant::now() + Duration::from_secs(5), Duration::from_millis(20));
        assert!(matches!(left.await, Followed::Left));
        assert!(
            matches!(flights.join("k"), Joined::Lead(_)),
            "the hung flight is closed"
        );
    }
}
