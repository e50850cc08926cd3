//! The daemon's background tasks, tracked so that `run` waits for them at
//! shutdown instead of leaving them to be dropped mid-work by the runtime.
//!
//! [`Tasks`] is a [`TaskTracker`] whose tasks carry names: each long-lived
//! task takes the shutdown token and ends when it is cancelled, and
//! [`Tasks::close_and_wait`] waits for all of them with a bound, naming
//! those still running when the bound passes.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// A tracker of named tasks; clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    /// How many tasks of each name are running.
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

/// Counts its task as running until the task ends (or is dropped).
struct Running {
    name: &'static str,
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = running.get_mut(self.name) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(self.name);
            }
        }
    }
}

impl Tasks {
    pub(crate) fn new() -> Tasks {
        Tasks::default()
    }

    /// Spawns `task` on the runtime, tracked under `name`.
    pub(crate) fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        *self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name)
            .or_default() += 1;
        let running = Running {
            name,
            running: self.running.clone(),
        };
        self.tracker.spawn(async move {
            let _running = running;
            task.await
        })
    }

    /// The names of the tasks still running, each once.
    pub(crate) fn running(&self) -> Vec<&'static str> {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.keys().copied().collect()
    }

    /// Takes no more tasks and waits up to `bound` for the running ones to
    /// end; Err names those still running then (they are left to the
    /// runtime, which drops them when the process exits).
    pub(crate) async fn close_and_wait(&self, bound: Duration) -> Result<(), Vec<&'static str>> {
        self.tracker.close();
        match tokio::time::timeout(bound, self.tracker.wait()).await {
            Ok(()) => Ok(()),
            Err(_elapsed) => Err(self.running()),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tasks_that_heed_the_token_end_within_the_bound() {
        let tasks = Tasks::new();
        let shutdown = CancellationToken::new();
        for name in ["probe", "watch"] {
            let stop = shutdown.clone();
            tasks.spawn(name, async move { stop.cancelled().await });
        }
        tasks.spawn("short", async {});
        tokio::task::yield_now().await;
        assert_eq!(tasks.running(), ["probe", "watch"]);
        shutdown.cancel();
        assert_eq!(tasks.close_and_wait(Duration::from_secs(5)).await, Ok(()));
        assert!(tasks.tracker.is_empty());
        assert!(tasks.running().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_does_not_stop_is_named_after_the_bound() {
        let tasks = Tasks::new();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tasks.spawn("heeds", async move { stop.cancelled().await });
        tasks.spawn("stuck", std::future::pending::<()>());
        tasks.spawn("stuck", std::future::pending::<()>());
        shutdown.cancel();
        let started = tokio::time::Instant::now();
        assert_eq!(tasks.close_and_wait(Duration::from_secs(5)).await, Err(vec!["stuck"]));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(!tasks.tracker.is_empty());
    }
}
