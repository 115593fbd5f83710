//! [`Rounds`]: concurrent callers share one run of an operation that only has to start
//! after they arrived, such as a ReadIndex round (one quorum confirmation serves every read
//! that was waiting when it began, as etcd batches its read requests).
//!
//! A caller joins the waiters of the next round. One background task runs rounds while
//! anyone waits: it takes every waiter present, runs the operation once and hands each of
//! them the result. A caller who arrives while a round is running waits for the next one,
//! never for a round that began before it: that is what keeps a shared ReadIndex
//! linearizable.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Shared rounds of one operation. Cloning gives another handle to the same rounds.
pub struct Rounds<T> {
    state: Arc<Mutex<State<T>>>,
}

impl<T> Clone for Rounds<T> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone() }
    }
}

impl<T> Default for Rounds<T> {
    fn default() -> Self {
        Self { state: Arc::new(Mutex::new(State { running: false, waiting: Vec::new() })) }
    }
}

struct State<T> {
    running: bool,
    waiting: Vec<oneshot::Sender<T>>,
}

impl<T: Clone + Send + 'static> Rounds<T> {
    /// The result of a run of `round` that started after this call; `None` if the round's
    /// task stopped (the runtime is shutting down). `round` is what this caller would run
    /// alone; when a round task is already running, it runs its own equivalent one.
    pub async fn join<F, Fut>(&self, round: F) -> Option<T>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.waiting.push(tx);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            let state = self.state.clone();
            tokio::spawn(async move {
                loop {
                    let waiting = {
                        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                        if s.waiting.is_empty() {
                            s.running = false;
                            return;
                        }
                        std::mem::take(&mut s.waiting)
                    };
                    crate::metrics::record_read_round(waiting.len());
                    let result = round().await;
                    for waiter in waiting {
                        let _ = waiter.send(result.clone());
                    }
                }
            });
        }
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_share_rounds_that_began_after_they_arrived() {
        let rounds: Rounds<u64> = Rounds::default();
        let started = Arc::new(AtomicU64::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for i in 0..60u64 {
            let (rounds, started) = (rounds.clone(), started.clone());
            callers.spawn(async move {
                tokio::time::sleep(Duration::from_millis(i % 15)).await;
                let seen_on_arrival = started.load(Ordering::SeqCst);
                let round = {
                    let started = started.clone();
                    move || {
                        let started = started.clone();
                        async move {
                            let number = started.fetch_add(1, Ordering::SeqCst) + 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            number
                        }
                    }
                };
                let got = rounds.join(round).await.expect("a round ran");
                (seen_on_arrival, got)
            });
        }
        let mut answers = Vec::new();
        while let Some(joined) = callers.join_next().await {
            answers.push(joined.expect("caller"));
        }
        for (seen_on_arrival, got) in &answers {
            assert!(got > seen_on_arrival, "answered by round {got}, which began before the caller arrived");
        }
        let total = started.load(Ordering::SeqCst);
        assert!(total < 60, "60 callers within 15 ms need fewer than 60 rounds, ran {total}");
    }
}
