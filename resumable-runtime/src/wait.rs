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
use crate::context::{Ctx, RunCtx};
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
    let until = match step.prepare::<C, Timestamp>().await {
        Prepared::Replayed(Ok(until)) => until,
        Prepared::Replayed(Err(_)) => {
            // A step that failed for good is recorded under this sleep's id.
            let err = Error::NonDeterminism {
                run: step.run().run_key.clone(),
                expected: format!("{} (a step that failed)", step.id()),
                found: format!("{} (a sleep)", step.id()),
                location: site.location,
            };
            return step.abort(err).await;
        }
        Prepared::Attempt => {
            let until = match wake {
                Wake::After(duration) => Timestamp::now().after(duration),
                Wake::At(time) => Timestamp::from(time),
            };
            match step.settle::<C, Timestamp>(Ok(Ok(until)), false).await {
                Settled::Done(until) => until,
                // A value always settles as done (or aborts the run).
                Settled::Retry | Settled::Failed(_) => return std::future::pending().await,
            }
        }
    };
    wait_until(step.run(), step.id(), until).await;
}

/// Waits for `until`, registered with the run as sleep `id` meanwhile.
async fn wait_until(run: &RunCtx, id: Arc<str>, until: Timestamp) {
    let left = until.0.saturating_sub(Timestamp::now().0);
    if left <= 0 {
        return;
    }
    let _waiting = Waiting::start(run, id, until);
    tokio::time::sleep(Duration::from_millis(left as u64)).await;
}

/// A sleep registered with its run until dropped (when due, or when the
/// execution ends).
struct Waiting<'r> {
    run: &'r RunCtx,
    id: Arc<str>,
}

impl<'r> Waiting<'r> {
    fn start(run: &'r RunCtx, id: Arc<str>, until: Timestamp) -> Self {
        run.sleep_started(id.clone(), until);
        Waiting { run, id }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.run.sleep_ended(&self.id);
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
