//! Child workflows (`child!`): a workflow starts another as its own run and
//! waits for its outcome.
//!
//! The start is one journaled write ([`Write::StartChild`]): it creates the
//! child run and records the parent's step `child:<name>#<n>` (the child's
//! key) together, so a parent that crashes after starting its child finds
//! the start recorded and adopts that child; it never starts a second one.
//! The child's key is derived from the parent's key and the step's id (or
//! given), so even a start replayed from scratch names the same child.
//!
//! When the child finishes, the journal sends the parent a message (topic
//! `child:<child key>`) in the same transaction; the parent takes it as a
//! receive (`child-result:<name>#<n>`), so waiting for a child is waiting
//! for a message: no lease, no worker, woken when the child finishes.

use std::sync::Arc;

use crate::client::WorkflowRef;
use crate::codec::Codec;
use crate::context::Ctx;
use crate::error::{Error, Slot};
use crate::journal::{NewRun, RunState, StepState, Timestamp, UNPINNED, Write};
use crate::receive::take_or_wait;
use crate::runtime::validate_key;
use crate::step::{ErrorCodec, Step, StepSite};
use crate::workflow::{Journaled, WorkflowError, WorkflowResult};

/// Where a `child!` is: its start step and its result.
#[doc(hidden)]
#[derive(Debug)]
pub struct ChildSites {
    /// `child:<name>`: records the child's key.
    pub start: StepSite,
    /// `child-result:<name>`: records the child's outcome.
    pub result: StepSite,
}

/// Starts (or, replayed, finds) the child run of `workflow` with `input`
/// at `sites` and waits for its outcome; used by generated code. `PC` is
/// the parent's codec, `C` the child's.
#[doc(hidden)]
pub async fn child<PC, I, R, C, E>(
    ctx: &Ctx,
    sites: &'static ChildSites,
    workflow: &WorkflowRef<I, R, C>,
    input: I,
    key: Option<String>,
    errors: &ErrorCodec<E>,
) -> R
where
    PC: Codec,
    I: Journaled,
    R: WorkflowResult + Journaled,
    C: Codec,
    E: WorkflowError,
{
    let key = start::<PC, I, C, E>(ctx, &sites.start, workflow.name(), input, key, errors).await;
    let topic: Arc<str> = format!("child:{key}").into();
    let (mut step, message) = take_or_wait::<PC, E>(ctx, &sites.result, topic, None, errors).await;
    // Without a time limit a receive returns a message (or never returns).
    let message = message.unwrap_or_default();
    let run = step.run();
    let (state, outcome) = match message.iter().position(|b| *b == 0) {
        Some(zero) => (
            std::str::from_utf8(&message[..zero])
                .ok()
                .and_then(RunState::parse),
            &message[zero + 1..],
        ),
        None => (None, &message[..]),
    };
    let err = match state {
        Some(RunState::Completed | RunState::Failed) => {
            match run.envelope.open::<C, R>(&key, || Slot::Outcome, outcome) {
                Ok(outcome) => return outcome,
                Err(err) => err,
            }
        }
        Some(state) => Error::ChildEnded {
            run: run.run_key.clone(),
            child: key,
            state,
        },
        None => Error::Corrupted {
            run: run.run_key.clone(),
            slot: step.slot(),
            reason: "the record of a child's end does not start with a run state".to_owned(),
        },
    };
    step.abort(err).await
}

/// The child's key: recorded by the start step, or the step records it as
/// it creates (or adopts) the child.
async fn start<PC: Codec, I: Journaled, C: Codec, E>(
    ctx: &Ctx,
    site: &'static StepSite,
    workflow: &str,
    input: I,
    key: Option<String>,
    errors: &ErrorCodec<E>,
) -> String {
    let mut step = Step::new(ctx, site, None, errors);
    let run = step.run();
    if let Some(record) = step.begin().await {
        let opened = match record.state {
            StepState::Completed => run.envelope.open::<PC, String>(
                &run.run_key,
                || step.slot(),
                record.output.as_deref().unwrap_or_default(),
            ),
            _ => Err(Error::NonDeterminism {
                run: run.run_key.clone(),
                expected: format!("{} (a step that failed)", step.id()),
                found: format!("{} (the start of a child workflow)", step.id()),
                location: site.location,
            }),
        };
        return match opened {
            Ok(key) => key,
            Err(err) => step.abort(err).await,
        };
    }
    let key = key.unwrap_or_else(|| format!("{}/{}", run.run_key, step.id()));
    let sealed = validate_key(&key).and_then(|()| {
        let input = run.envelope.seal::<C, I>(&key, || Slot::Input, &input)?;
        let output = run
            .envelope
            .seal::<PC, String>(&run.run_key, || step.slot(), &key)?;
        Ok((input, output))
    });
    let (input, output) = match sealed {
        Ok(sealed) => sealed,
        Err(err) => return step.abort(err).await,
    };
    let write = Write::StartChild {
        step_id: step.id().to_string(),
        seq: run.next_seq(),
        output,
        child: NewRun {
            key: key.clone(),
            workflow: workflow.to_owned(),
            fingerprint: UNPINNED,
            input,
            deadline: None,
        },
        at: Timestamp::now(),
    };
    step.commit(write).await;
    key
}

/// What a `child!` that `#[resumable]` reported an error for expands to:
/// of the child's output type, so that no second error follows from it.
/// Never runs (the crate does not compile).
#[doc(hidden)]
pub fn child_unreachable<I, R, C>(_workflow: &WorkflowRef<I, R, C>, _input: I) -> R {
    unreachable!("the workflow did not compile")
}
