//! One `step!`: replay its journaled output, or run its body under the retry
//! policy and journal the output before the workflow sees it.
//!
//! Generated code drives a [`Step`] in a loop (see `resumable-macros`):
//! `prepare` → (body) → `settle`, until the step is done or failed.
//! Infrastructure failures never reach user code: the step aborts the run
//! through its [`Ctx`] and never completes, and the driver returns the error.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tracing::Instrument;

use crate::codec::Codec;
use crate::codec::Envelope;
use crate::context::{Ctx, Decision, RunCtx, panic_message};
use crate::error::{Error, Escaped, Location, Slot};
use crate::journal::{Ack, StepRecord, StepState, Timestamp, Write};
use crate::retry::RetryPolicy;
use crate::workflow::{Journaled, WorkflowError};

/// Where a step is written, and its name.
#[derive(Debug, Clone, Copy)]
pub struct StepSite {
    /// The step's name (a string literal).
    pub name: &'static str,
    /// Where the `step!` is.
    pub location: Location,
}

/// What a step body can know about itself: pass its
/// [`idempotency_key`](StepContext::idempotency_key) to external systems so
/// that a re-executed attempt does not repeat their effect.
#[derive(Debug, Clone)]
pub struct StepContext {
    run_key: Arc<str>,
    step_id: Arc<str>,
    attempt: u32,
}

impl StepContext {
    /// `run_key/step_id`: the same on every attempt and every re-execution of
    /// this step in this run, different for every other step and run.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.run_key, self.step_id)
    }

    /// The run key.
    pub fn run_key(&self) -> &str {
        &self.run_key
    }

    /// The step id, `name#occurrence`.
    pub fn step_id(&self) -> &str {
        &self.step_id
    }

    /// This attempt's number, from 1, counted across re-executions of the run.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// Whether a step replays or runs its body.
#[doc(hidden)]
pub enum Prepared<T, E> {
    /// The journaled output (or final error), decoded.
    Replayed(Result<T, E>),
    /// Run the body (again).
    Attempt,
}

/// What happened to an attempt.
#[doc(hidden)]
pub enum Settled<T, E> {
    /// Output journaled; this is it, decoded from the journal bytes.
    Done(T),
    /// Failed; the policy allows another attempt, after the delay already waited.
    Retry,
    /// Failed for good (terminal, or out of attempts); the error is journaled
    /// and this is it, decoded from the journal bytes.
    Failed(E),
}

/// How a workflow's error type is journaled and shown. Built once per
/// workflow body, where the type's bounds are checked, so that an error type
/// that cannot be journaled is reported once, at the signature, rather than
/// at every step.
#[doc(hidden)]
pub struct ErrorCodec<E> {
    seal_and_open: SealAndOpen<E>,
    open: Open<E>,
    message: fn(&E) -> String,
}

type SealAndOpen<E> = fn(&Envelope, &str, &dyn Fn() -> Slot, &E) -> Result<(Vec<u8>, E), Error>;
type Open<E> = fn(&Envelope, &str, &dyn Fn() -> Slot, &[u8]) -> Result<E, Error>;

/// The [`ErrorCodec`] of error type `E` under codec `C`; used by generated code.
#[doc(hidden)]
pub fn error_codec<C: Codec, E: WorkflowError>() -> ErrorCodec<E> {
    ErrorCodec {
        seal_and_open: |envelope, run, slot, err| {
            let bytes = envelope.seal::<C, E>(run, slot, err)?;
            let decoded = envelope.open::<C, E>(run, slot, &bytes)?;
            Ok((bytes, decoded))
        },
        open: |envelope, run, slot, bytes| envelope.open::<C, E>(run, slot, bytes),
        message: |err| err.to_string(),
    }
}

/// Why an attempt ended without the body's own result.
#[doc(hidden)]
#[derive(Debug)]
pub enum AttemptFailure {
    /// The body panicked, with this message.
    Panicked(String),
    /// The attempt ran past the step's time limit.
    TimedOut(std::time::Duration),
}

/// One execution of a `step!` call site.
#[doc(hidden)]
pub struct Step<'c, E> {
    run: &'c RunCtx,
    errors: &'c ErrorCodec<E>,
    site: &'static StepSite,
    id: Arc<str>,
    policy: RetryPolicy,
    /// How long one attempt may take.
    timeout: Option<std::time::Duration>,
    attempts: u32,
    started_at: Timestamp,
    phase: Phase,
    span: tracing::Span,
}

#[derive(PartialEq)]
enum Phase {
    New,
    Executing,
    /// A receive waiting for its message: it does not count as executing.
    Paused,
    Finished,
}

impl<'c, E> Step<'c, E> {
    /// Allocates the step's id (`name#occurrence`) at the point the code reaches it.
    pub fn new(
        ctx: &'c Ctx,
        site: &'static StepSite,
        policy: Option<RetryPolicy>,
        errors: &'c ErrorCodec<E>,
    ) -> Self {
        let run = &*ctx.run;
        Step {
            run,
            errors,
            site,
            id: ctx.next_step_id(site.name),
            policy: policy.unwrap_or(run.retry),
            timeout: None,
            attempts: 0,
            started_at: Timestamp(0),
            phase: Phase::New,
            span: tracing::Span::none(),
        }
    }

    /// Limits each attempt to `limit`: one that runs longer is dropped and
    /// counts as a failed attempt under the retry policy.
    pub fn with_timeout(mut self, limit: Option<std::time::Duration>) -> Self {
        self.timeout = limit;
        self
    }

    /// Replays the step or lets its body run.
    pub async fn prepare<C: Codec, T: Journaled>(&mut self) -> Prepared<T, E> {
        let Some(record) = self.begin().await else {
            return Prepared::Attempt;
        };
        match self.decode_record::<C, T>(&record) {
            Ok(value) => Prepared::Replayed(value),
            Err(err) => self.abort(err).await,
        }
    }

    /// The step's journaled record, if it replays; `None` once its body
    /// (or another attempt of it) may run.
    pub(crate) async fn begin(&mut self) -> Option<StepRecord> {
        if self.phase == Phase::Executing {
            // Another attempt is a step boundary too: a stopping run makes none.
            if self.run.stopping() {
                self.finish();
                return std::future::pending().await;
            }
            return None;
        }
        let decision =
            std::future::poll_fn(|cx| self.run.decide(&self.id, self.site.location, cx)).await;
        match decision {
            Decision::Replay(record) => {
                self.phase = Phase::Finished;
                let span = tracing::info_span!(
                    "step",
                    run = %Escaped(&self.run.run_key),
                    workflow = self.run.workflow,
                    step = %self.id,
                    attempt = record.attempts,
                    replayed = true,
                );
                span.in_scope(|| tracing::debug!("replayed from the journal"));
                Some(record)
            }
            Decision::Execute {
                attempts,
                started_at,
                retry_at,
            } => {
                self.phase = Phase::Executing;
                self.attempts = attempts;
                self.started_at = started_at;
                // A retry that was due later when the last worker stopped still waits.
                if let Some(due) = retry_at {
                    self.wait_until(due).await;
                    if self.run.stopping() {
                        self.finish();
                        return std::future::pending().await;
                    }
                }
                None
            }
        }
    }

    fn decode_record<C: Codec, T: Journaled>(
        &self,
        record: &StepRecord,
    ) -> Result<Result<T, E>, Error> {
        let bytes = record.output.as_deref().unwrap_or_default();
        let envelope = &self.run.envelope;
        match record.state {
            StepState::Failed => {
                (self.errors.open)(envelope, &self.run.run_key, &|| self.slot(), bytes).map(Err)
            }
            _ => envelope
                .open::<C, T>(&self.run.run_key, || self.slot(), bytes)
                .map(Ok),
        }
    }

    /// The context handed to a `|step| { .. }` body.
    pub fn context(&self) -> StepContext {
        StepContext {
            run_key: self.run.run_key.as_str().into(),
            step_id: self.id.clone(),
            attempt: self.attempts.saturating_add(1),
        }
    }

    /// Runs one attempt of the body, catching a panic (or running past the
    /// time limit) as a failed attempt.
    pub async fn attempt<F, T>(&mut self, body: F) -> Result<Result<T, E>, AttemptFailure>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.span = tracing::info_span!(
            "step",
            run = %Escaped(&self.run.run_key),
            workflow = self.run.workflow,
            step = %self.id,
            attempt = self.attempts.saturating_add(1),
            replayed = false,
        );
        let attempt = AssertUnwindSafe(body)
            .catch_unwind()
            .instrument(self.span.clone());
        let caught = match self.timeout {
            None => attempt.await,
            Some(limit) => match tokio::time::timeout(limit, attempt).await {
                Ok(caught) => caught,
                Err(_) => return Err(AttemptFailure::TimedOut(limit)),
            },
        };
        caught.map_err(|payload| AttemptFailure::Panicked(panic_message(&*payload)))
    }

    /// Journals a success, or records a failure and decides whether to retry.
    /// `terminal` says the error's type classified it as not worth retrying.
    pub async fn settle<C: Codec, T: Journaled>(
        &mut self,
        result: Result<Result<T, E>, AttemptFailure>,
        terminal: bool,
    ) -> Settled<T, E> {
        self.attempts = self.attempts.saturating_add(1);
        let span = self.span.clone();
        match result {
            Ok(Ok(value)) => {
                let run = self.run;
                let sealed = run
                    .envelope
                    .seal::<C, T>(&run.run_key, || self.slot(), &value)
                    .and_then(|bytes| {
                        // Contract 2: the code after the step sees what the journal holds.
                        let decoded =
                            run.envelope
                                .open::<C, T>(&run.run_key, || self.slot(), &bytes)?;
                        Ok((bytes, decoded))
                    });
                let (bytes, decoded) = match sealed {
                    Ok(sealed) => sealed,
                    Err(err) => return self.abort(err).await,
                };
                drop(value);
                self.record(StepState::Completed, bytes, None)
                    .instrument(span)
                    .await;
                Settled::Done(decoded)
            }
            Ok(Err(err)) => {
                let message = (self.errors.message)(&err);
                span.in_scope(|| tracing::warn!(error = %message, terminal, "step attempt failed"));
                if terminal || !self.policy.allows_retry(self.attempts) {
                    let run = self.run;
                    let sealed = (self.errors.seal_and_open)(
                        &run.envelope,
                        &run.run_key,
                        &|| self.slot(),
                        &err,
                    );
                    let (bytes, decoded) = match sealed {
                        Ok(sealed) => sealed,
                        Err(e) => return self.abort(e).await,
                    };
                    self.record(StepState::Failed, bytes, Some(message)).await;
                    Settled::Failed(decoded)
                } else {
                    self.retry_later(message).await;
                    Settled::Retry
                }
            }
            Err(failure) => {
                let message = match &failure {
                    AttemptFailure::Panicked(panic) => {
                        span.in_scope(|| tracing::error!(panic = %panic, "step attempt panicked"));
                        format!("panicked: {panic}")
                    }
                    AttemptFailure::TimedOut(limit) => {
                        span.in_scope(|| tracing::warn!(limit = ?limit, "step attempt timed out"));
                        format!("timed out after {limit:?}")
                    }
                };
                if self.policy.allows_retry(self.attempts) {
                    self.retry_later(message).await;
                    return Settled::Retry;
                }
                self.record_failure(message, None).await;
                let (run, step, attempts) =
                    (self.run.run_key.clone(), self.id.to_string(), self.attempts);
                let err = match failure {
                    AttemptFailure::Panicked(message) => Error::StepPanicked {
                        run,
                        step,
                        attempts,
                        message,
                    },
                    AttemptFailure::TimedOut(limit) => Error::StepTimedOut {
                        run,
                        step,
                        attempts,
                        limit,
                    },
                };
                self.abort(err).await
            }
        }
    }

    /// Journals the step's sealed result (its output, or its final error).
    async fn record(&mut self, state: StepState, bytes: Vec<u8>, error: Option<String>) {
        let run = self.run;
        let write = Write::StepRecorded {
            step_id: self.id.to_string(),
            seq: run.next_seq(),
            state,
            output: bytes,
            error,
            attempts: self.attempts,
            started_at: self.started_at,
            at: Timestamp::now(),
        };
        match run.journal.write(&run.lease(), write).await {
            Ok(ack) => {
                run.recorded();
                self.heed(ack);
            }
            Err(err) => return self.abort(err).await,
        }
        self.span.in_scope(|| {
            tracing::debug!(
                state = state.as_str(),
                attempts = self.attempts,
                "step recorded"
            )
        });
        self.finish();
    }

    /// Makes `write`, which records the step, and finishes it.
    pub(crate) async fn commit(&mut self, write: Write) {
        let run = self.run;
        match run.journal.write(&run.lease(), write).await {
            Ok(ack) => {
                run.recorded();
                self.heed(ack);
            }
            Err(err) => return self.abort(err).await,
        }
        self.finish();
    }

    /// Journals `bytes` as the step's output without running a body (a
    /// receive that timed out: see `receive`).
    pub(crate) async fn record_output(&mut self, bytes: Vec<u8>) {
        self.attempts = self.attempts.max(1);
        self.record(StepState::Completed, bytes, None).await;
    }

    /// Looks for a message on `topic` and, if one waits, takes it and
    /// journals it as the step's output, in one write; returns it, and how
    /// many messages had been sent to the run.
    pub(crate) async fn take_message(&mut self, topic: &str) -> (Option<Vec<u8>>, u64) {
        let run = self.run;
        let seq = run.next_seq();
        let receive = crate::journal::Receive {
            step_id: self.id.to_string(),
            seq,
            topic: topic.to_owned(),
            at: Timestamp::now(),
        };
        let received = match run.journal.receive(&run.lease(), receive).await {
            Ok(received) => received,
            Err(err) => return self.abort(err).await,
        };
        self.heed(received.ack);
        match received.message {
            Some(_) => {
                run.recorded();
                self.finish();
            }
            None => run.unused_seq(seq),
        }
        (received.message, received.sent)
    }

    /// While the step waits (a receive for its message), it does not count
    /// as executing: the run may stop, or be given back, meanwhile.
    pub(crate) fn pause(&mut self) {
        if self.phase == Phase::Executing {
            self.run.step_done();
            self.phase = Phase::Paused;
        }
    }

    /// Executes again after [`pause`](Self::pause); `false` (and it stays
    /// paused) if the run is stopping.
    pub(crate) fn resume(&mut self) -> bool {
        if self.phase != Phase::Paused {
            return true;
        }
        if !self.run.step_resumed() {
            return false;
        }
        self.phase = Phase::Executing;
        true
    }

    /// A cancel requested while this step executed stops the run at its
    /// next step boundary.
    fn heed(&self, ack: Ack) {
        if ack.cancel_requested {
            self.run.stop_at_boundary(Error::Cancelled {
                run: self.run.run_key.clone(),
            });
        }
    }

    async fn retry_later(&mut self, message: String) {
        let delay = self.policy.jittered_delay(self.attempts);
        let due = Timestamp::now().after(delay);
        self.span.in_scope(
            || tracing::debug!(attempt = self.attempts, delay = ?delay, "step will retry"),
        );
        self.record_failure(message, Some(due)).await;
        self.wait_until(due).await;
    }

    /// Waits for the next attempt, due at `due`, for the policy's longest
    /// delay at most (a time from the journal may be anything). A run that
    /// must not hold a worker that long (see `RunCtx::park_after`) is
    /// stopped at its next boundary instead, to be taken again when due.
    async fn wait_until(&mut self, due: Timestamp) {
        if self.run.stopping() {
            return;
        }
        let left = due.0.saturating_sub(Timestamp::now().0).max(0) as u64;
        let wait = std::time::Duration::from_millis(left).min(self.policy.max_delay);
        if wait.is_zero() {
            return;
        }
        match self.run.park_after {
            Some(limit) if wait > limit => self.run.stop_at_boundary(Error::WaitingToRetry {
                run: self.run.run_key.clone(),
                step: self.id.to_string(),
                until: Timestamp::now().after(wait).to_system_time(),
            }),
            _ => tokio::time::sleep(wait).await,
        }
    }

    async fn record_failure(&mut self, error: String, retry_at: Option<Timestamp>) {
        let write = Write::AttemptFailed {
            step_id: self.id.to_string(),
            attempts: self.attempts,
            error,
            retry_at,
            started_at: self.started_at,
            at: Timestamp::now(),
        };
        match self.run.journal.write(&self.run.lease(), write).await {
            Ok(ack) => self.heed(ack),
            Err(err) => self.abort::<()>(err).await,
        }
    }

    fn finish(&mut self) {
        if self.phase == Phase::Executing {
            self.run.step_done();
        }
        self.phase = Phase::Finished;
    }

    pub(crate) fn slot(&self) -> Slot {
        Slot::Step(self.id.to_string())
    }

    /// The run it belongs to.
    pub(crate) fn run(&self) -> &'c RunCtx {
        self.run
    }

    /// Its id, `name#occurrence`.
    pub(crate) fn id(&self) -> Arc<str> {
        self.id.clone()
    }

    /// Where it is written, and its name.
    pub(crate) fn site(&self) -> &'static StepSite {
        self.site
    }

    /// Stops the run with `err`. Never returns: the driver drops the workflow.
    pub(crate) async fn abort<T>(&mut self, err: Error) -> T {
        self.finish();
        self.run.abort(err);
        std::future::pending().await
    }
}

impl<E> Drop for Step<'_, E> {
    fn drop(&mut self) {
        match self.phase {
            Phase::Executing => self.run.step_done(),
            Phase::New => self.run.forget_gated(&self.id),
            Phase::Paused | Phase::Finished => {}
        }
    }
}
