//! Histories: every operation with its invocation and completion time and its outcome.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    /// It happened; the answer.
    Ok {
        /// What the service answered.
        value: serde_json::Value,
    },
    /// It certainly did not happen (the service refused it).
    Fail {
        /// Why.
        error: String,
    },
    /// Unknown: a timeout or a lost connection; it may or may not have happened.
    Info {
        /// What went wrong.
        error: String,
    },
}

/// One operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    /// The client (process) that ran it.
    pub process: usize,
    /// The node it was sent to.
    pub node: usize,
    /// What it was, such as `acquire` or `send`.
    pub f: String,
    /// Its arguments.
    pub input: serde_json::Value,
    /// Microseconds since the run started, at invocation.
    pub invoked_us: u64,
    /// Microseconds since the run started, at completion.
    pub completed_us: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// A shared, append-only history.
#[derive(Clone)]
pub struct History {
    started: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        Self { started: Instant::now(), ops: Arc::default() }
    }

    /// Microseconds since the history started.
    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// When the history started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Records an operation.
    pub fn push(&self, op: Op) {
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(op);
        }
    }

    /// Every operation so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

/// The outcome of a client call: errors the service answered are failures (the operation did
/// not happen) unless they say the outcome is unknown; transport errors are unknown, except
/// a refused connection (the request never left). Every unknown outcome multiplies what the
/// checkers must consider, so a refusal that certainly did nothing counts as a failure:
/// a cache that is still joining refuses before it proposes anything.
pub fn outcome_of<T: Serialize>(result: &Result<T, sinkron_client::ClientError>) -> Outcome {
    match result {
        Ok(v) => Outcome::Ok { value: serde_json::to_value(v).unwrap_or_default() },
        Err(e @ sinkron_client::ClientError::Transport { source, .. }) if source.is_connect() => {
            Outcome::Fail { error: e.to_string() }
        }
        Err(e @ sinkron_client::ClientError::Api { status: 503, message, .. })
            if message.contains("cache of this node is still joining") =>
        {
            Outcome::Fail { error: e.to_string() }
        }
        Err(e @ sinkron_client::ClientError::Api { status, .. }) if *status == 503 || *status == 500 => {
            // A timed-out write may still commit.
            Outcome::Info { error: e.to_string() }
        }
        Err(e @ sinkron_client::ClientError::Api { .. }) => Outcome::Fail { error: e.to_string() },
        Err(e) => Outcome::Info { error: e.to_string() },
    }
}
