//! In-process fan-out of a run's new events.
//!
//! The store is the source of truth for a run's events. The bus carries each batch the run's
//! ingester just stored to the SSE streams of this process, so a hundred watchers of a busy run
//! cost one database write per batch and no reads. A stream that falls behind the channel
//! (`Lagged`), joins late, or watches a run another replica ingests, reads the store instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::domain::RunId;
use crate::store::EventRecord;

/// A batch of stored events, in sequence order, shared by every receiver.
pub type Batch = Arc<[EventRecord]>;

/// How many batches a receiver may fall behind before it must read the store.
const CAPACITY: usize = 256;

/// Run id → the channel of its stored event batches.
#[derive(Debug, Default)]
pub struct EventBus {
    // A std Mutex: every critical section is a map lookup or insert, never held across `.await`.
    channels: Mutex<HashMap<RunId, broadcast::Sender<Batch>>>,
}

impl EventBus {
    /// Subscribes to a run's batches.
    pub fn subscribe(&self, run_id: RunId) -> broadcast::Receiver<Batch> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if channels.len() > 1024 {
            // Forget runs nobody watches any more; the next subscriber makes a fresh channel.
            channels.retain(|_, tx| tx.receiver_count() > 0);
        }
        channels
            .entry(run_id)
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe()
    }

    /// Hands a stored batch to the run's watchers in this process.
    pub fn publish(&self, run_id: RunId, batch: Batch) {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = channels.get(&run_id) {
            // No receiver is fine: nobody watches.
            let _ = tx.send(batch);
        }
    }

    /// Drops a run's channel once it has ended; its watchers drain what was sent, then see the
    /// channel closed and read the end from the store.
    pub fn close(&self, run_id: RunId) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.remove(&run_id);
    }
}
