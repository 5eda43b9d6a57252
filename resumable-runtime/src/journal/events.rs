//! Wake-ups from a journal: a run became due, a run finished, a message
//! was sent.
//!
//! A journal that can push them (PostgreSQL through `LISTEN/NOTIFY`; the
//! in-process journals for writers in the same process) returns a
//! [`Subscription`] from [`Journal::subscribe`](super::Journal::subscribe).
//! Completers and waiting clients use it to act at once instead of at their
//! next poll; they keep polling as the fallback, since events are hints and
//! may be lost (a dropped connection, a slow subscriber).

use tokio::sync::broadcast;

use super::{Ack, Timestamp, Write};

/// How many events a slow subscriber may fall behind before it is told to
/// [`Resync`](JournalEvent::Resync).
const BUFFER: usize = 1024;

/// Something that happened in a journal and may give a worker, or a client
/// waiting for an outcome, something to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEvent {
    /// A run was given back (or submitted) and may be claimed from `at` on.
    Due {
        /// When it becomes due.
        at: Timestamp,
    },
    /// A run finished (its outcome is journaled) or was dead-lettered.
    Finished {
        /// The run key.
        key: String,
    },
    /// A message was sent to a run ([`Journal::send_message`](super::Journal::send_message)).
    Message {
        /// The receiving run's key.
        key: String,
    },
    /// Events may have been missed (a reconnect, or this subscriber fell
    /// behind): look at the journal again.
    Resync,
}

impl JournalEvent {
    /// The event that `write` to run `run_key`, committed with `ack`,
    /// announces, if any: a released run is due at its `wake_at`; a finished
    /// run (or one that a requested cancel finished, or a dead-lettered one)
    /// finished.
    pub fn announced_by(run_key: &str, write: &Write, ack: Ack) -> Option<Self> {
        let finished = || JournalEvent::Finished {
            key: run_key.to_owned(),
        };
        match write {
            Write::Release { .. } if ack.cancel_requested => Some(finished()),
            Write::Release { .. } => Some(JournalEvent::Due {
                at: released_due(write),
            }),
            // A child run was created (or adopted), due now.
            Write::StartChild { at, .. } => Some(JournalEvent::Due { at: *at }),
            // Dead-lettered: waiting callers get `Error::DeadLettered`.
            Write::RunFinished { .. } | Write::DeadLetter { .. } => Some(finished()),
            _ => None,
        }
    }
}

/// When a run given back by `write` (a [`Write::Release`]) may be due, as
/// announced: its `wake_at`, or now for a run waiting for a message (one
/// may have come since it looked, which makes it due at once).
pub(crate) fn released_due(write: &Write) -> Timestamp {
    match write {
        Write::Release {
            wake_on_message: Some(_),
            at,
            ..
        } => *at,
        Write::Release { wake_at, .. } => *wake_at,
        _ => Timestamp::now(),
    }
}

/// A stream of [`JournalEvent`]s from one journal.
#[derive(Debug)]
pub struct Subscription(broadcast::Receiver<JournalEvent>);

impl Subscription {
    /// The next event; `None` once the journal is gone. Events missed
    /// because this subscriber fell behind come back as one
    /// [`JournalEvent::Resync`].
    pub async fn next(&mut self) -> Option<JournalEvent> {
        match self.0.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(JournalEvent::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// The sending side, for journal implementations: publish events after the
/// change they describe is committed.
#[derive(Debug, Clone)]
pub struct EventSender(broadcast::Sender<JournalEvent>);

impl Default for EventSender {
    fn default() -> Self {
        EventSender(broadcast::channel(BUFFER).0)
    }
}

impl EventSender {
    /// A sender with no subscribers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes `event` to every current subscriber (none is fine).
    pub fn send(&self, event: JournalEvent) {
        let _ = self.0.send(event);
    }

    /// A new subscriber, which sees events sent from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription(self.0.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_to_resync() {
        let sender = EventSender::new();
        let mut sub = sender.subscribe();
        for i in 0..(BUFFER as i64 + 5) {
            sender.send(JournalEvent::Due { at: Timestamp(i) });
        }
        assert_eq!(sub.next().await, Some(JournalEvent::Resync));
        assert!(matches!(sub.next().await, Some(JournalEvent::Due { .. })));
        drop(sender);
        while let Some(event) = sub.next().await {
            assert!(matches!(event, JournalEvent::Due { .. }));
        }
    }
}
