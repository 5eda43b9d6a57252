//! One `step!`: replay its journaled output, or run its body under the retry
//! policy and journal the output before the workflow sees it.
//!
//! Generated code drives a [`Step`] in a loop (see `resumable-macros`):
//! `prepare` → (body) → `settle`, until the step is done or failed.
//! Infrastructure failures never reach user code: the step aborts the run
//! through its [`Ctx`] and never completes, and the driver returns the error.

use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tracing::Instrument;

use crate::codec::Codec;
use crate::context::{Ctx, Decision, RunCtx, panic_message};
use crate::error::{Error, Location, Slot};
use crate::journal::{Timestamp, Write};
use crate::retry::RetryPolicy;
use crate::workflow::Journaled;

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
pub enum Prepared<T> {
    /// The journaled output, decoded.
    Replayed(T),
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
    /// Failed for good: terminal, or out of attempts.
    Failed(E),
}

/// One execution of a `step!` call site.
#[doc(hidden)]
pub struct Step<'c> {
    run: &'c RunCtx,
    site: &'static StepSite,
    id: Arc<str>,
    policy: RetryPolicy,
    attempts: u32,
    started_at: Timestamp,
    phase: Phase,
    span: tracing::Span,
}

#[derive(PartialEq)]
enum Phase {
    New,
    Executing,
    Finished,
}

impl<'c> Step<'c> {
    /// Allocates the step's id (`name#occurrence`) at the point the code reaches it.
    pub fn new(ctx: &'c Ctx, site: &'static StepSite, policy: Option<RetryPolicy>) -> Self {
        let run = &*ctx.run;
        let occurrence = run.next_occurrence(site.name);
        Step {
            run,
            site,
            id: format!("{}#{occurrence}", site.name).into(),
            policy: policy.unwrap_or(run.retry),
            attempts: 0,
            started_at: Timestamp(0),
            phase: Phase::New,
            span: tracing::Span::none(),
        }
    }

    /// Replays the step or lets its body run.
    pub async fn prepare<C: Codec, T: Journaled>(&mut self) -> Prepared<T> {
        if self.phase == Phase::Executing {
            return Prepared::Attempt;
        }
        let decision =
            std::future::poll_fn(|cx| self.run.decide(&self.id, self.site.location, cx)).await;
        match decision {
            Decision::Replay(record) => {
                self.phase = Phase::Finished;
                let span = tracing::info_span!(
                    "step",
                    run = %self.run.run_key,
                    workflow = self.run.workflow,
                    step = %self.id,
                    attempt = record.attempts,
                    replayed = true,
                );
                let output = record.output.as_deref().unwrap_or_default();
                let decoded = span.in_scope(|| {
                    tracing::debug!("replayed from the journal");
                    self.run
                        .envelope
                        .open::<C, T>(&self.run.run_key, || self.slot(), output)
                });
                match decoded {
                    Ok(value) => Prepared::Replayed(value),
                    Err(err) => self.abort(err).await,
                }
            }
            Decision::Execute {
                attempts,
                started_at,
            } => {
                self.phase = Phase::Executing;
                self.attempts = attempts;
                self.started_at = started_at;
                Prepared::Attempt
            }
        }
    }

    /// The context handed to a `|step| { .. }` body.
    pub fn context(&self) -> StepContext {
        StepContext {
            run_key: self.run.run_key.as_str().into(),
            step_id: self.id.clone(),
            attempt: self.attempts + 1,
        }
    }

    /// Runs one attempt of the body, catching a panic as a failed attempt.
    pub async fn attempt<F, T, E>(&mut self, body: F) -> Result<Result<T, E>, String>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.span = tracing::info_span!(
            "step",
            run = %self.run.run_key,
            workflow = self.run.workflow,
            step = %self.id,
            attempt = self.attempts + 1,
            replayed = false,
        );
        AssertUnwindSafe(body)
            .catch_unwind()
            .instrument(self.span.clone())
            .await
            .map_err(|payload| panic_message(&*payload))
    }

    /// Journals a success, or records a failure and decides whether to retry.
    /// `terminal` says the error's type classified it as not worth retrying.
    pub async fn settle<C, T, E>(
        &mut self,
        result: Result<Result<T, E>, String>,
        terminal: bool,
    ) -> Settled<T, E>
    where
        C: Codec,
        T: Journaled,
        E: Display,
    {
        self.attempts += 1;
        let span = self.span.clone();
        match result {
            Ok(Ok(value)) => self.record::<C, T, E>(value).instrument(span).await,
            Ok(Err(err)) => {
                let message = err.to_string();
                span.in_scope(|| tracing::warn!(error = %message, terminal, "step attempt failed"));
                if terminal || !self.policy.allows_retry(self.attempts) {
                    self.record_failure(message, None).await;
                    self.finish();
                    Settled::Failed(err)
                } else {
                    self.retry_later(message).await;
                    Settled::Retry
                }
            }
            Err(panic) => {
                span.in_scope(|| tracing::error!(panic = %panic, "step attempt panicked"));
                if self.policy.allows_retry(self.attempts) {
                    self.retry_later(format!("panicked: {panic}")).await;
                    Settled::Retry
                } else {
                    self.record_failure(format!("panicked: {panic}"), None)
                        .await;
                    let err = Error::StepPanicked {
                        run: self.run.run_key.clone(),
                        step: self.id.to_string(),
                        attempts: self.attempts,
                        message: panic,
                    };
                    self.abort(err).await
                }
            }
        }
    }

    async fn record<C: Codec, T: Journaled, E>(&mut self, value: T) -> Settled<T, E> {
        let run = self.run;
        let bytes = match run
            .envelope
            .seal::<C, T>(&run.run_key, || self.slot(), &value)
        {
            Ok(bytes) => bytes,
            Err(err) => return self.abort(err).await,
        };
        drop(value);
        // Contract 2: the code after the step sees what the journal holds.
        let decoded = match run
            .envelope
            .open::<C, T>(&run.run_key, || self.slot(), &bytes)
        {
            Ok(v) => v,
            Err(err) => return self.abort(err).await,
        };
        let write = Write::StepCompleted {
            step_id: self.id.to_string(),
            seq: run.next_seq(),
            output: bytes,
            attempts: self.attempts,
            started_at: self.started_at,
            at: Timestamp::now(),
        };
        if let Err(err) = run.journal.write(&run.lease(), write).await {
            return self.abort(err).await;
        }
        self.finish();
        Settled::Done(decoded)
    }

    async fn retry_later(&mut self, message: String) {
        let delay = self.policy.jittered_delay(self.attempts);
        self.record_failure(message, Some(Timestamp::now().after(delay)))
            .await;
        tokio::time::sleep(delay).await;
    }

    async fn record_failure(&mut self, error: String, retry_at: Option<Timestamp>) {
        let write = Write::StepFailed {
            step_id: self.id.to_string(),
            attempts: self.attempts,
            error,
            retry_at,
            started_at: self.started_at,
            at: Timestamp::now(),
        };
        if let Err(err) = self.run.journal.write(&self.run.lease(), write).await {
            self.abort::<()>(err).await;
        }
    }

    fn finish(&mut self) {
        if self.phase == Phase::Executing {
            self.run.step_done();
        }
        self.phase = Phase::Finished;
    }

    fn slot(&self) -> Slot {
        Slot::Step(self.id.to_string())
    }

    /// Stops the run with `err`. Never returns: the driver drops the workflow.
    async fn abort<T>(&mut self, err: Error) -> T {
        self.finish();
        self.run.abort(err);
        std::future::pending().await
    }
}

impl Drop for Step<'_> {
    fn drop(&mut self) {
        match self.phase {
            Phase::Executing => self.run.step_done(),
            Phase::New => self.run.forget_gated(&self.id),
            Phase::Finished => {}
        }
    }
}
