//! Receiving the messages sent to a run (`recv!`).
//!
//! A receive is journaled under its own id (`recv:<topic>#<n>`); its record
//! is the message it took, as the sender sealed it, or empty if it timed
//! out. The journal takes a message and records it in one write
//! ([`Journal::receive`](crate::Journal::receive)), so a message goes into
//! exactly one receive, and a replayed receive returns the message it took
//! and never takes another.
//!
//! While no message waits, the receive does not execute: it waits in place
//! for up to `RuntimeBuilder::hold_waits` (woken by the journal's
//! [`JournalEvent::Message`]),
//! then lets the run be given back, holding no lease, until a message is
//! sent to it or its deadline passes. A receive's deadline is journaled
//! beside it (`recv-deadline:<topic>#<n>`), so a resumed run does not
//! restart the clock.

use std::sync::Arc;
use std::time::Duration;

use crate::codec::Codec;
use crate::context::{Ctx, Waiter};
use crate::error::Error;
use crate::journal::{JournalEvent, StepState, Subscription, Timestamp};
use crate::step::{ErrorCodec, Step, StepSite};
use crate::wait::{Waiting, Wake, wake_time};
use crate::workflow::{Journaled, WorkflowError};

/// How often a receive held in place looks for its message when the
/// journal sends no events.
const POLL: Duration = Duration::from_millis(100);

/// A receive's time limit: where its deadline is journaled, and how long
/// after it is first reached it falls.
#[doc(hidden)]
pub type Timeout = (&'static StepSite, Duration);

/// One receive without a time limit at `site` (`recv!("topic")`); used by
/// generated code. Returns the next message sent to the run on the site's
/// topic, in this execution or a later one.
#[doc(hidden)]
pub async fn recv<C: Codec, T: Journaled, E: WorkflowError>(
    ctx: &Ctx,
    site: &'static StepSite,
    topic: &'static str,
    errors: &ErrorCodec<E>,
) -> T {
    match recv_until::<C, T, E>(ctx, site, topic, None, errors).await {
        Some(message) => message,
        // Without a time limit it returns a message, or never (see there).
        None => std::future::pending().await,
    }
}

/// One receive at `site` (`recv!("topic", timeout = ..)`); used by generated
/// code. `None` if no message came before the time limit.
#[doc(hidden)]
pub async fn recv_until<C: Codec, T: Journaled, E: WorkflowError>(
    ctx: &Ctx,
    site: &'static StepSite,
    topic: &'static str,
    timeout: Option<Timeout>,
    errors: &ErrorCodec<E>,
) -> Option<T> {
    let (mut step, message) = take_or_wait::<C, E>(ctx, site, topic.into(), timeout, errors).await;
    match message {
        Some(bytes) => Some(decode::<C, T, E>(&mut step, &bytes).await),
        None => None,
    }
}

/// The message receive `site` takes on `topic` (its record, when it
/// replays), as sent; `None` if its time limit passed first. Returns the
/// receive's step, to stop the run with if the message cannot be used.
pub(crate) async fn take_or_wait<'c, C: Codec, E>(
    ctx: &'c Ctx,
    site: &'static StepSite,
    topic: Arc<str>,
    timeout: Option<Timeout>,
    errors: &'c ErrorCodec<E>,
) -> (Step<'c, E>, Option<Vec<u8>>) {
    let until = match timeout {
        Some((deadline_site, limit)) => {
            let mut deadline = Step::new(ctx, deadline_site, None, errors);
            Some(wake_time::<C, E>(&mut deadline, Wake::After(limit)).await)
        }
        None => None,
    };
    let mut step = Step::new(ctx, site, None, errors);
    if let Some(record) = step.begin().await {
        let bytes = record.output.unwrap_or_default();
        let found = match (record.state, bytes.is_empty()) {
            (StepState::Completed, false) => return (step, Some(bytes)),
            (StepState::Completed, true) if until.is_some() => return (step, None),
            (StepState::Completed, true) => "a receive that timed out",
            _ => "a step that failed",
        };
        let err = Error::NonDeterminism {
            run: step.run().run_key.clone(),
            expected: format!("{} ({found})", step.id()),
            found: format!(
                "{} (a receive {})",
                step.id(),
                match until {
                    Some(_) => "with a time limit",
                    None => "without a time limit",
                }
            ),
            location: site.location,
        };
        return step.abort(err).await;
    }
    let run = step.run();
    let hold_ends = Timestamp::now().after(run.hold_waits);
    let mut events = run.journal.subscribe();
    loop {
        let (message, seen) = step.take_message(&topic).await;
        if message.is_some() {
            return (step, message);
        }
        if until.is_some_and(|until| until <= Timestamp::now()) {
            step.record_output(Vec::new()).await;
            return (step, None);
        }
        step.pause();
        let waiter = Waiter {
            id: step.id(),
            until,
            holds_until: until.map_or(hold_ends, |until| until.min(hold_ends)),
            topic: Some(topic.clone()),
            seen,
        };
        let waiting = Waiting::start(run, waiter);
        next_look(&mut events, &run.run_key, until, hold_ends).await;
        drop(waiting);
        if !step.resume() {
            // The run is stopping (cancelled, out of time): it ends here.
            return std::future::pending().await;
        }
    }
}

async fn decode<C: Codec, T: Journaled, E>(step: &mut Step<'_, E>, bytes: &[u8]) -> T {
    let run = step.run();
    match run
        .envelope
        .open::<C, T>(&run.run_key, || step.slot(), bytes)
    {
        Ok(message) => message,
        Err(err) => step.abort(err).await,
    }
}

/// Returns when a receive waiting for a message to run `key` should look
/// again: a message was sent to the run (or events may have been missed),
/// its deadline `until` passed, or its hold ended (after which the run may
/// be given back). Without events, it polls while held.
async fn next_look(
    events: &mut Option<Subscription>,
    key: &str,
    until: Option<Timestamp>,
    hold_ends: Timestamp,
) {
    let now = Timestamp::now();
    let held = hold_ends > now;
    let mut wake = until.unwrap_or(Timestamp(i64::MAX));
    if held {
        wake = wake.min(hold_ends);
    }
    if events.is_none() && held {
        wake = wake.min(now.after(POLL));
    }
    let left = Duration::from_millis(wake.0.saturating_sub(now.0).max(0) as u64);
    tokio::select! {
        () = tokio::time::sleep(left) => {}
        () = message_for(events, key) => {}
    }
}

/// Returns when `events` says a message was sent to run `key`, or that
/// events were missed; never, if there are no events.
async fn message_for(events: &mut Option<Subscription>, key: &str) {
    while let Some(subscription) = events {
        match subscription.next().await {
            Some(JournalEvent::Message { key: k }) if k == key => return,
            Some(JournalEvent::Resync) => return,
            Some(_) => {}
            None => *events = None,
        }
    }
    std::future::pending().await
}
