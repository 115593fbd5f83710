//! Receives waiting at a batcher (`proposer.rs`) for a send to their queue.
//!
//! This module holds the waiting receives and the count of sends on their way; the batcher
//! decides when a batch takes them along. It does not propose anything itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sinkron_core::{Command, Request};
use tokio::sync::oneshot;

use crate::wire::ForwardedWrite;

/// Receives waiting at a batcher for a send to their queue.
///
/// A long-polling receive that found nothing parks here instead of only waiting for an
/// apply to wake it. When the batcher forms a batch holding sends to a queue, it appends
/// parked receives of that queue after them (oldest first, while the messages they ask
/// for add up to fewer than the sends), so the entry that stores the messages also hands
/// them out: one commit for a round trip instead of two. A receive taken along finds a
/// message (the leader's gate counts the batch's sends, see `sinkron_core::claims`) unless
/// a send is refused as it is applied; it then answers empty and its caller parks again.
///
/// A receive may wait at several batchers at once (those of every partition of its queue
/// this node carries sends for, so that a send with any key takes it along); the first
/// batch that takes it gets it, and the others drop it when they come across it.
///
/// A receive may park with requests that ride before it (the acks a consumer carries in
/// its next receive), bound to one of its places: taken there, they join the batch ahead of
/// the receive, so one entry settles the last message, stores the next and hands it out.
/// Taken elsewhere, or taken back, they are dropped unanswered and the caller proposes
/// them itself.
///
/// A receive that arrives while a batch with a send to its queue is on its way does not
/// park: proposed right behind that batch, it finds the message (the leader's gate counts
/// sends proposed and not yet applied), so the batcher also keeps count of those sends.
#[derive(Default)]
pub struct Park {
    waiting: Mutex<HashMap<String, Vec<Parked>>>,
    /// Sends in batches sent and not yet answered, by queue.
    sending: Mutex<HashMap<String, usize>>,
}

struct Parked {
    ticket: u64,
    max: usize,
    /// Requests it adds to a batch at most: the receive and what may ride before it.
    size: usize,
    receive: Arc<Waiting>,
    /// Which of the receive's places this park is.
    place: usize,
}

/// One parked receive, shared by the parks it waits at: taken once, by one of them.
struct Waiting(Mutex<Slot>);

enum Slot {
    /// No batch took it yet.
    Parked(Parcel),
    /// The batch of this place took it.
    TakenAt(usize),
    /// Taken back by its ticket, or its caller went away.
    Gone,
}

/// A parked receive and the requests that ride before it if the batch of place `at` takes it.
pub(crate) struct Parcel {
    pub(crate) receive: Pending,
    pub(crate) before: Vec<Pending>,
    pub(crate) at: usize,
}

impl Waiting {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The receive for the batch of `place` (after the requests bound to ride before it
    /// there), unless another place took it, its ticket took it back, or its caller is gone.
    fn take(&self, place: usize) -> Option<Vec<Pending>> {
        let mut slot = self.slot();
        if !matches!(&*slot, Slot::Parked(_)) {
            return None;
        }
        crate::metrics::record_receives_parked(-1);
        match std::mem::replace(&mut *slot, Slot::TakenAt(place)) {
            // A caller gone without its ticket's drop (a panic) gets nothing handed out.
            Slot::Parked(parcel) if parcel.receive.reply.is_closed() => {
                *slot = Slot::Gone;
                None
            }
            Slot::Parked(Parcel { receive, mut before, at }) => {
                if at != place {
                    // Dropped unanswered: the caller proposes them itself.
                    before.clear();
                }
                before.push(receive);
                Some(before)
            }
            _ => None,
        }
    }

    /// Takes it back unless a batch took it: true if it was still parked.
    fn take_back(&self) -> bool {
        let mut slot = self.slot();
        if !matches!(&*slot, Slot::Parked(_)) {
            return false;
        }
        *slot = Slot::Gone;
        crate::metrics::record_receives_parked(-1);
        true
    }

    /// Whether no batch can take it any more.
    fn gone(&self) -> bool {
        !matches!(&*self.slot(), Slot::Parked(_))
    }
}

/// A request waiting for a batch: the request, its estimated size, where its outcome goes
/// (a parked receive waits as one too).
pub(crate) struct Pending {
    pub(crate) request: Request,
    pub(crate) bytes: usize,
    pub(crate) reply: oneshot::Sender<ForwardedWrite>,
}

/// What a batch holds of one queue: its sends, and the messages its receives ask for.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct QueueCounts {
    pub(crate) sends: usize,
    pub(crate) asked: usize,
}

/// What a batch of `requests` holds, per queue it sends to or receives from.
pub(crate) fn queue_counts<'a>(requests: impl Iterator<Item = &'a Request>) -> HashMap<String, QueueCounts> {
    let mut by_queue: HashMap<String, QueueCounts> = HashMap::new();
    for request in requests {
        match &request.command {
            Command::QueueSend { queue, .. } => by_queue.entry(queue.clone()).or_default().sends += 1,
            Command::QueueReceive { queue, max, .. } => {
                by_queue.entry(queue.clone()).or_default().asked += (*max).max(1) as usize
            }
            _ => {}
        }
    }
    by_queue
}

/// A parked receive: wait on `reply`; take it back with [`Ticket::unpark`]. Dropping the
/// ticket takes it back too, so a caller that went away never has messages handed out to
/// nobody (unless a batch took the receive already).
pub struct Ticket {
    places: Vec<Arc<Park>>,
    queue: String,
    id: u64,
    receive: Arc<Waiting>,
    /// The receive's outcome, once a batch took it along and was answered.
    pub reply: oneshot::Receiver<ForwardedWrite>,
    /// The outcomes of the requests that rode before it, in order; each closes unanswered
    /// if they did not ride.
    pub before: Vec<oneshot::Receiver<ForwardedWrite>>,
}

impl Ticket {
    /// Parks `parcel` (a `QueueReceive` and what rides before it) at every park of `places`
    /// at once; `reply` is where the receive's outcome arrives.
    pub(crate) fn park(
        places: Vec<Arc<Park>>,
        parcel: Parcel,
        reply: oneshot::Receiver<ForwardedWrite>,
        before: Vec<oneshot::Receiver<ForwardedWrite>>,
    ) -> Ticket {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let (queue, max) = match &parcel.receive.request.command {
            Command::QueueReceive { queue, max, .. } => (queue.clone(), (*max).max(1) as usize),
            _ => (String::new(), 1),
        };
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let (riding, bound_to) = (parcel.before.len(), parcel.at);
        let receive = Arc::new(Waiting(Mutex::new(Slot::Parked(parcel))));
        // Counted before any batch can take it (and count it out).
        crate::metrics::record_receives_parked(1);
        for (place, park) in places.iter().enumerate() {
            let mut waiting = park.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let size = 1 + if place == bound_to { riding } else { 0 };
            let parked = Parked { ticket: id, max, size, receive: receive.clone(), place };
            waiting.entry(queue.clone()).or_default().push(parked);
        }
        Ticket { places, queue, id, receive, reply, before }
    }

    /// Takes the receive back. True if it was still waiting; false if a batch took it,
    /// whose outcome then arrives on `reply`.
    pub fn unpark(&self) -> bool {
        for park in &self.places {
            let mut waiting = park.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let Some(parked) = waiting.get_mut(&self.queue) else { continue };
            parked.retain(|p| p.ticket != self.id);
            if parked.is_empty() {
                waiting.remove(&self.queue);
            }
        }
        self.receive.take_back()
    }

    /// The place (an index into the parks it was parked at) whose batch took the receive.
    pub fn taken_at(&self) -> Option<usize> {
        match &*self.receive.slot() {
            Slot::TakenAt(place) => Some(*place),
            _ => None,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.unpark();
    }
}

impl Park {
    /// Whether a batch holding a send to `queue` is on its way and not yet answered.
    pub(crate) fn sending_to(&self, queue: &str) -> bool {
        self.sending.lock().unwrap_or_else(|p| p.into_inner()).contains_key(queue)
    }

    /// Counts a batch's sends (`by_queue`) as on their way (`going`) or answered.
    pub(crate) fn track_sends(&self, by_queue: &HashMap<String, QueueCounts>, going: bool) {
        if by_queue.values().all(|c| c.sends == 0) {
            return;
        }
        let mut sending = self.sending.lock().unwrap_or_else(|p| p.into_inner());
        for (queue, n) in by_queue.iter().map(|(q, c)| (q, c.sends)).filter(|(_, n)| *n > 0) {
            if going {
                *sending.entry(queue.clone()).or_default() += n;
            } else if let Some(count) = sending.get_mut(queue) {
                *count = count.saturating_sub(n);
                if *count == 0 {
                    sending.remove(queue);
                }
            }
        }
    }

    /// The parked receives to append to a batch, at most `room`, given what the batch holds
    /// per queue (`by_queue`): for each queue it sends to, the oldest, while the messages
    /// they and the batch's own receives of the queue ask for add up to fewer than the sends
    /// (so each finds one).
    pub(crate) fn riders(&self, by_queue: &HashMap<String, QueueCounts>, room: usize) -> Vec<Pending> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.is_empty() || room == 0 {
            return Vec::new();
        }
        let mut riders = Vec::new();
        let mut receives = 0;
        for (queue, counts) in by_queue.iter().filter(|(_, c)| c.sends > 0) {
            let Some(parked) = waiting.get_mut(queue) else { continue };
            // Receives another park's batch took, or whose caller went away, leave.
            parked.retain(|p| !p.receive.gone());
            let mut asked = counts.asked;
            // Oldest first among those that fit in the batch's room with what rides before
            // them; one taken meanwhile by another park's batch is passed over.
            let mut at = 0;
            while asked < counts.sends && at < parked.len() {
                if riders.len() + parked[at].size > room {
                    at += 1;
                    continue;
                }
                let oldest = parked.remove(at);
                if let Some(taken) = oldest.receive.take(oldest.place) {
                    asked += oldest.max;
                    receives += 1;
                    riders.extend(taken);
                }
            }
            if parked.is_empty() {
                waiting.remove(queue);
            }
        }
        crate::metrics::record_receives_rode(receives);
        riders
    }
}
