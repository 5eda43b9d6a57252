//! Durable waits (`sleep!` and `sleep_until!`), and what a run publishes
//! for others to read (`set_event!`).
//!
//! A sleep is journaled as a step whose output is its wake time, computed
//! once: a replay (after a crash, in another process) reads it back and
//! never restarts the clock. While it waits it tells the run, so that when
//! nothing else goes on (no step executes) and the earliest sleep is due
//! later than a worker is kept waiting, the driver ends the execution and
//! the run is given back, due at that time (see `Drive`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::codec::Codec;
use crate::context::{Ctx, RunCtx, Waiter};
use crate::error::{Error, Slot};
use crate::journal::{Timestamp, Write};
use crate::step::{ErrorCodec, Prepared, Settled, Step, StepSite};
use crate::workflow::WorkflowError;

/// When a durable sleep ends; written by `sleep!` and `sleep_until!`.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum Wake {
    /// This long after the sleep is first reached.
    After(Duration),
    /// At this time (at once if it has passed).
    At(SystemTime),
}

/// One durable sleep at `site`; used by generated code. Returns once its
/// journaled wake time has passed, in this execution or a later one.
#[doc(hidden)]
pub async fn sleep<C: Codec, E: WorkflowError>(
    ctx: &Ctx,
    site: &'static StepSite,
    wake: Wake,
    errors: &ErrorCodec<E>,
) {
    let mut step = Step::new(ctx, site, None, errors);
    let until = wake_time::<C, E>(&mut step, wake).await;
    let left = until.0.saturating_sub(Timestamp::now().0);
    if left <= 0 {
        return;
    }
    let now = Timestamp::now();
    // Due soon: slept in place; else the run may be given back until then.
    let hold = step.run().hold_waits.as_millis().min(i64::MAX as u128) as i64;
    let holds_until = match left <= hold {
        true => until,
        false => now,
    };
    let waiter = Waiter {
        id: step.id(),
        until: Some(until),
        holds_until,
        topic: None,
        seen: 0,
    };
    let _waiting = Waiting::start(step.run(), waiter);
    tokio::time::sleep(Duration::from_millis(left as u64)).await;
}

/// The wake time `step` journals for `wake` (computed the first time the
/// code reaches it, replayed after).
pub(crate) async fn wake_time<C: Codec, E>(step: &mut Step<'_, E>, wake: Wake) -> Timestamp {
    match step.prepare::<C, Timestamp>().await {
        Prepared::Replayed(Ok(until)) => until,
        Prepared::Replayed(Err(_)) => {
            // A step that failed for good is recorded under this wait's id.
            let err = Error::NonDeterminism {
                run: step.run().run_key.clone(),
                expected: format!("{} (a step that failed)", step.id()),
                found: format!("{} (a durable wait)", step.id()),
                location: step.site().location,
            };
            step.abort(err).await
        }
        Prepared::Attempt => {
            let until = match wake {
                Wake::After(duration) => Timestamp::now().after(duration),
                Wake::At(time) => Timestamp::from(time),
            };
            match step.settle::<C, Timestamp>(Ok(Ok(until)), false).await {
                Settled::Done(until) => until,
                // A value always settles as done (or aborts the run).
                Settled::Retry | Settled::Failed(_) => std::future::pending().await,
            }
        }
    }
}

/// A durable wait registered with its run until dropped (when it ends, or
/// when the execution does).
pub(crate) struct Waiting<'r> {
    run: &'r RunCtx,
    id: Arc<str>,
}

impl<'r> Waiting<'r> {
    pub(crate) fn start(run: &'r RunCtx, waiter: Waiter) -> Self {
        let id = waiter.id.clone();
        run.wait_started(waiter);
        Waiting { run, id }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.run.wait_ended(&self.id);
    }
}

/// Publishes `value` as the run's event `name`, replacing its last value;
/// used by generated code inside the step that journals the publication
/// (so that a replay does not publish an older value again). A failure of
/// the journal stops the run, as a step's write does.
#[doc(hidden)]
pub async fn publish<C: Codec, T: Serialize + ?Sized>(ctx: &Ctx, name: &'static str, value: &T) {
    let run = &*ctx.run;
    let published = async {
        let value =
            run.envelope
                .seal::<C, T>(&run.run_key, || Slot::Event(name.to_owned()), value)?;
        let write = Write::EventSet {
            name: name.to_owned(),
            value,
            at: Timestamp::now(),
        };
        run.journal.write(&run.lease(), write).await
    };
    match published.await {
        Ok(ack) if ack.cancel_requested => run.stop_at_boundary(Error::Cancelled {
            run: run.run_key.clone(),
        }),
        Ok(_) => {}
        Err(err) => {
            run.abort(err);
            std::future::pending::<()>().await;
        }
    }
}
