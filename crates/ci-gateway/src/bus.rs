//! In-process notification of new run events.
//!
//! The store is the source of truth for a run's events; the bus only wakes the SSE streams of
//! this process when the run's ingester stored something, so they read it at once instead of at
//! their next poll. One `watch` channel per run carries the last stored sequence number: a slow
//! watcher never lags behind a queue, it just reads everything new from the store.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::domain::RunId;

/// Run id → the newest stored event's sequence number.
#[derive(Debug, Default)]
pub struct EventBus {
    // A std Mutex: every critical section is a map lookup or insert, never held across `.await`.
    channels: Mutex<HashMap<RunId, watch::Sender<i64>>>,
}

impl EventBus {
    /// Subscribes to a run's notifications.
    pub fn subscribe(&self, run_id: RunId) -> watch::Receiver<i64> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if channels.len() > 1024 {
            // Forget runs nobody watches any more; the next subscriber makes a fresh channel.
            channels.retain(|_, tx| tx.receiver_count() > 0);
        }
        channels
            .entry(run_id)
            .or_insert_with(|| watch::channel(-1).0)
            .subscribe()
    }

    /// Announces that events up to `seq` are stored.
    pub fn publish(&self, run_id: RunId, seq: i64) {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = channels.get(&run_id) {
            tx.send_replace(seq);
        }
    }

    /// Drops a run's channel once it has ended; its watchers see the sender go away and read
    /// the end from the store.
    pub fn close(&self, run_id: RunId) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.remove(&run_id);
    }
}
