//! The [`Runtime`]: starts or resumes runs by key, drives workflow bodies, and
//! answers questions about runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::Instrument;

use crate::client::Client;
use crate::codec::{Codec, Envelope};
use crate::context::{Ctx, RunCtx};
use crate::drive::{Drive, HOLD, Heartbeat};
use crate::error::{Error, Escaped, Result, Slot};
use crate::journal::{
    Ack, Journal, JournalEvent, Lease, LeaseRequest, NewRun, Opened, RunFilter, RunRecord,
    RunSnapshot, RunState, Subscription, Timestamp, UNPINNED, Write,
};
use crate::owner;
use crate::retry::RetryPolicy;
use crate::runs::Runs;
use crate::status::RunInfo;
use crate::workflow::{BoxFuture, Invocation, Journaled, WorkflowMeta, WorkflowResult};

/// Executes workflows against a [`Journal`]. Cheap to clone; clones share
/// the journal and the worker id.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use resumable::{MemoryJournal, Runtime};
/// let rt = Runtime::new(MemoryJournal::new());
/// assert!(rt.run_info("nothing-yet").await.unwrap().is_none());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Runtime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    journal: Arc<dyn Journal>,
    worker_id: String,
    lease_duration: Duration,
    envelope: Envelope,
    default_retry: RetryPolicy,
    run_backoff: RetryPolicy,
    stall_timeout: Duration,
    hold_waits: Duration,
    dead_letter_after: u32,
    wait_when_busy: bool,
    /// Leases being handed back by executions that were dropped, by run key.
    handbacks: Mutex<HashMap<String, Handback>>,
}

#[derive(Debug)]
struct Handback {
    id: u64,
    task: tokio::task::JoinHandle<()>,
}

/// Settings for a [`Runtime`].
#[derive(Debug)]
pub struct RuntimeBuilder {
    journal: Arc<dyn Journal>,
    worker_id: Option<String>,
    lease_duration: Duration,
    max_payload: usize,
    default_retry: RetryPolicy,
    run_backoff: RetryPolicy,
    stall_timeout: Duration,
    hold_waits: Duration,
    dead_letter_after: u32,
    wait_when_busy: bool,
}

impl RuntimeBuilder {
    /// This worker's id, as stored in leases. The default,
    /// `host:pid:start:scope`, names this process, so that a process started
    /// on the same machine after it died takes its runs at once instead of
    /// waiting out their leases. A stable id (a host or pod name) lets a
    /// restarted worker on another machine do the same with
    /// [`Runtime::recover_leases`].
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// How long a lease lasts without renewal (default 30 s). It is renewed
    /// every third of that while the run executes; a worker that stalls
    /// longer loses the run to another.
    pub fn lease_duration(mut self, d: Duration) -> Self {
        self.lease_duration = d.max(Duration::from_millis(30));
        self
    }

    /// The largest journaled value, in bytes (default 16 MiB).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// The retry policy of steps whose workflow and call site set none.
    pub fn default_retry(mut self, policy: RetryPolicy) -> Self {
        self.default_retry = policy;
        self
    }

    /// How long a run that stopped with an error waits before a completer
    /// takes it again, by how many times it has been executed (default: 1 s
    /// doubling to 5 min). Its `max_attempts` is not used: runs are never
    /// given up.
    pub fn run_backoff(mut self, policy: RetryPolicy) -> Self {
        self.run_backoff = policy;
        self
    }

    /// How long a replay may make no progress while a step the journal did
    /// not record waits for recorded steps, before it is reported as
    /// [`Error::NonDeterminism`] (default 1 s). Only code that awaits
    /// something other than steps concurrently with a replay (a sleep in one
    /// branch of a `join!`) needs more.
    pub fn stall_timeout(mut self, d: Duration) -> Self {
        self.stall_timeout = d;
        self
    }

    /// How long a durable wait keeps its worker before the run is given
    /// back (default 1 s): a sleep due within it sleeps in place, and a
    /// receive with no message waits this long in place for one (a quick
    /// reply then needs no replay). Longer waits end the execution, once no
    /// step executes, and hold no lease. A worker pool whose runs mostly wait
    /// for messages spends a slot for this long on each receive: shorten it
    /// there (zero: give the run back at once).
    ///
    /// ```
    /// use std::time::Duration;
    /// use resumable::{MemoryJournal, Runtime};
    ///
    /// let rt = Runtime::builder(MemoryJournal::new())
    ///     .hold_waits(Duration::from_millis(100))
    ///     .build();
    /// # drop(rt);
    /// ```
    pub fn hold_waits(mut self, d: Duration) -> Self {
        self.hold_waits = d;
        self
    }

    /// After how many executions in a row that fail outside their steps'
    /// own errors (a panic, a determinism or version error, a record that
    /// cannot be decoded) a run is dead-lettered: set aside, untouched by
    /// completers, until an operator resumes it (default 10; at least 1).
    /// A run whose input cannot be decoded is dead-lettered at once.
    ///
    /// ```
    /// use resumable::{MemoryJournal, Runtime};
    ///
    /// let rt = Runtime::builder(MemoryJournal::new())
    ///     .dead_letter_after(5)    // set a run aside after 5 failing executions
    ///     .wait_when_busy(false)   // Error::Busy instead of waiting for another worker
    ///     .build();
    /// # drop(rt);
    /// ```
    pub fn dead_letter_after(mut self, executions: u32) -> Self {
        self.dead_letter_after = executions.max(1);
        self
    }

    /// Whether [`Runtime::run`] on a run that another live worker is
    /// executing waits for that run's outcome, or for its lease to become
    /// free (the default), instead of failing at once with [`Error::Busy`].
    ///
    /// ```
    /// use resumable::{MemoryJournal, Runtime};
    ///
    /// // A request handler that answers "busy, try later" rather than waiting.
    /// let rt = Runtime::builder(MemoryJournal::new()).wait_when_busy(false).build();
    /// # drop(rt);
    /// ```
    pub fn wait_when_busy(mut self, wait: bool) -> Self {
        self.wait_when_busy = wait;
        self
    }

    /// The runtime.
    pub fn build(self) -> Runtime {
        Runtime {
            inner: Arc::new(Inner {
                journal: self.journal,
                worker_id: self.worker_id.unwrap_or_else(owner::default_worker_id),
                lease_duration: self.lease_duration,
                envelope: Envelope {
                    max_payload: self.max_payload,
                },
                default_retry: self.default_retry,
                run_backoff: self.run_backoff,
                stall_timeout: self.stall_timeout,
                hold_waits: self.hold_waits,
                dead_letter_after: self.dead_letter_after,
                wait_when_busy: self.wait_when_busy,
                handbacks: Mutex::default(),
            }),
        }
    }
}

/// Longest accepted run key, in bytes.
pub const MAX_RUN_KEY: usize = 512;

impl Runtime {
    /// A runtime with default settings.
    pub fn new(journal: impl Journal) -> Self {
        Self::builder(journal).build()
    }

    /// A runtime to configure.
    pub fn builder(journal: impl Journal) -> RuntimeBuilder {
        RuntimeBuilder {
            journal: Arc::new(journal),
            worker_id: None,
            lease_duration: Duration::from_secs(30),
            max_payload: 16 << 20,
            default_retry: RetryPolicy::DEFAULT,
            run_backoff: RetryPolicy::exponential(u32::MAX)
                .initial_delay(Duration::from_secs(1))
                .max_delay(Duration::from_secs(300))
                .jitter(0.2),
            stall_timeout: Duration::from_secs(1),
            hold_waits: HOLD,
            dead_letter_after: 10,
            wait_when_busy: true,
        }
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.journal
    }

    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// Starts the run named `key`, or resumes it, or returns its outcome.
    ///
    /// - A new key journals the input and runs the workflow.
    /// - A key whose run is incomplete (crashed, interrupted, or stopped by an
    ///   error) resumes it: journaled steps replay, the rest run.
    /// - A key whose run finished returns the journaled outcome without
    ///   running any workflow code: the workflow's own `Result`, or
    ///   [`Error::Cancelled`] / [`Error::DeadlineExceeded`]; a dead-lettered
    ///   run is [`Error::DeadLettered`].
    /// - A key whose run another live worker is executing waits for that
    ///   run's outcome, or takes the run over once its lease is free (see
    ///   [`RuntimeBuilder::wait_when_busy`]). A lease held by a process on
    ///   this machine that no longer runs is taken over at once.
    ///
    /// The outer `Result` is the machinery's (journal, leases, determinism,
    /// the lifecycle); the inner one is the workflow's own outcome.
    pub async fn run<I, R, C>(
        &self,
        key: impl Into<String>,
        invocation: Invocation<'_, I, R, C>,
    ) -> Result<R>
    where
        I: Journaled,
        R: WorkflowResult + Journaled,
        C: Codec,
    {
        let Invocation {
            meta,
            input,
            start,
            deadline,
            ..
        } = invocation;
        let key = key.into();
        let new = self.new_run::<I, C>(key, &meta, &input, deadline).await?;
        let mut events = None;
        loop {
            let Opened {
                snapshot, lease, ..
            } = self.open(&new, &meta).await?;
            if let Some(lease) = lease {
                // The caller waits for the outcome: retry delays are waited here.
                return self
                    .execute::<I, R, C>(meta, snapshot, lease, start, None)
                    .await;
            }
            let run = snapshot.run;
            if run.state != RunState::Incomplete {
                return outcome_of::<R, C>(&self.inner.envelope, &run);
            }
            if self.take_over_from_gone_owner(&run).await? {
                continue;
            }
            if !self.inner.wait_when_busy {
                return Err(Error::Busy {
                    run: run.key.clone(),
                    owner: run.lease_owner.clone().unwrap_or_default(),
                });
            }
            let events = events.get_or_insert_with(|| self.inner.journal.subscribe());
            wait_for_lease_or_outcome(events, &run).await;
        }
    }

    /// Records a run for a [`Completer`](crate::Completer) to execute, without
    /// executing it here: the input is journaled and the run is due at once.
    /// A key that already has a run is left as it is (after the same input
    /// checks as [`run`](Self::run)). Submitting is not an execution: the
    /// run's `executions` count stays 0 until a worker takes it.
    pub async fn submit<I, R, C>(
        &self,
        key: impl Into<String>,
        invocation: Invocation<'_, I, R, C>,
    ) -> Result<()>
    where
        I: Journaled,
        R: WorkflowResult + Journaled,
        C: Codec,
    {
        let meta = invocation.meta;
        let new = self
            .new_run::<I, C>(key.into(), &meta, &invocation.input, invocation.deadline)
            .await?;
        let (run, _) = self
            .inner
            .journal
            .create_run(new.clone(), Timestamp::now())
            .await?;
        mismatch(&run, &new, Some(&meta)).map_or(Ok(()), Err)
    }

    /// The run `key` of workflow `meta` with `input` would be created as.
    async fn new_run<I: Journaled, C: Codec>(
        &self,
        key: String,
        meta: &WorkflowMeta,
        input: &I,
        deadline: Option<Timestamp>,
    ) -> Result<NewRun> {
        validate_key(&key)?;
        // An execution of this run that was dropped may still be handing its
        // lease back: let it finish, or the run would look busy.
        let handback = self
            .inner
            .handbacks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        if let Some(handback) = handback {
            let _ = handback.task.await;
        }
        let input = self
            .inner
            .envelope
            .seal::<C, I>(&key, || Slot::Input, input)?;
        Ok(NewRun {
            key,
            workflow: meta.name.to_owned(),
            fingerprint: meta.fingerprint,
            input,
            deadline,
        })
    }

    /// Creates or finds the run, checks it is this workflow with this input,
    /// and leases it if it is incomplete and free.
    async fn open(&self, new: &NewRun, meta: &WorkflowMeta) -> Result<Opened> {
        let opened = self
            .inner
            .journal
            .open_run(new.clone(), self.lease_request())
            .await?;
        let run = &opened.snapshot.run;
        let Some(mismatch) = mismatch(run, new, Some(meta)) else {
            return Ok(opened);
        };
        if let Some(lease) = &opened.lease {
            let release = Release::plain(run.last_error.clone(), run.wake_at, run.failures);
            self.give_back(lease, release).await;
        }
        Err(mismatch)
    }

    /// If `run` is leased by a process on this machine that no longer runs,
    /// gives its lease back; whether it did (or someone else did meanwhile).
    async fn take_over_from_gone_owner(&self, run: &RunRecord) -> Result<bool> {
        let Some(owner) = run.lease_owner.as_deref().filter(|o| owner::is_gone(o)) else {
            return Ok(false);
        };
        let reason = format!("worker {owner:?} died while executing run {:?}", run.key);
        self.release_all(std::slice::from_ref(run), &reason).await?;
        tracing::info!(run = %Escaped(&run.key), owner = %Escaped(owner), "took over a run whose worker process is gone");
        Ok(true)
    }

    /// Executes a leased, incomplete run to its outcome (or to an error, in
    /// which case the run is given back with that error as its last error,
    /// or dead-lettered). With `park_after`, a step whose next attempt is
    /// further away gives the run back until then instead of waiting.
    pub(crate) async fn execute<'a, I, R, C>(
        &self,
        meta: WorkflowMeta,
        mut snapshot: RunSnapshot,
        lease: Lease,
        start: impl FnOnce(Ctx, I) -> BoxFuture<'a, R>,
        park_after: Option<Duration>,
    ) -> Result<R>
    where
        I: Journaled,
        R: WorkflowResult + Journaled,
        C: Codec,
    {
        let key = snapshot.run.key.clone();
        let span = tracing::info_span!(
            "run",
            run = %Escaped(&key),
            workflow = meta.name,
            epoch = lease.epoch,
            execution = snapshot.run.executions,
        );
        let guard = GiveBackOnDrop {
            rt: Some(self.clone()),
            lease: lease.clone(),
            failures: snapshot.run.failures,
        };
        let past = PastExecutions::of(&snapshot.run);
        let mut run_ctx = None;
        span.in_scope(|| match snapshot.run.executions {
            0 | 1 => tracing::info!("run started"),
            n => tracing::info!(execution = n, "run resumed"),
        });
        let result = async {
            // Its workers kept dying (or failing) without progress: set aside.
            if snapshot.run.failures >= self.inner.dead_letter_after {
                return Err(Error::DeadLettered {
                    run: key.clone(),
                    last_error: format!(
                        "{} executions in a row ended without recording a step; the last error: {}",
                        snapshot.run.failures,
                        snapshot
                            .run
                            .last_error
                            .as_deref()
                            .unwrap_or("its worker died")
                    ),
                });
            }
            // Cancelled while no live worker held it, or out of time: no user code runs.
            if snapshot.run.cancel_requested_at.is_some() {
                return Err(Error::Cancelled { run: key.clone() });
            }
            if snapshot.run.deadline.is_some_and(|d| Timestamp::now() >= d) {
                return Err(Error::DeadlineExceeded { run: key.clone() });
            }
            if !meta.accepts(snapshot.run.fingerprint) {
                return Err(Error::VersionMismatch {
                    run: key.clone(),
                    workflow: meta.name.to_owned(),
                    journaled: snapshot.run.fingerprint,
                    current: meta.fingerprint,
                });
            }
            if snapshot.run.fingerprint == UNPINNED {
                // Before any step is recorded, so later code versions are checked against it.
                let pin = Write::Pin {
                    fingerprint: meta.fingerprint,
                    at: Timestamp::now(),
                };
                self.inner.journal.write(&lease, pin).await?;
                snapshot.run.fingerprint = meta.fingerprint;
            }
            // Contract 2 holds for the input too: the body sees the journaled bytes.
            let input =
                self.inner
                    .envelope
                    .open::<C, I>(&key, || Slot::Input, &snapshot.run.input)?;
            let run = Arc::new(
                RunCtx::new(
                    &mut snapshot,
                    lease.clone(),
                    self.inner.journal.clone(),
                    self.inner.envelope,
                    meta.retry.unwrap_or(self.inner.default_retry),
                    meta.name,
                    park_after,
                )
                .holding_waits(self.inner.hold_waits),
            );
            run_ctx = Some(run.clone());
            let _heartbeat = Heartbeat::start(run.clone(), self.inner.lease_duration);
            let body = start(Ctx::root(run.clone()), input);
            let result = Drive::new(body, &run, self.inner.stall_timeout).await?;
            if let Some(expected) = run.unreplayed() {
                return Err(Error::NonDeterminism {
                    run: key.clone(),
                    expected,
                    found: "<end of workflow>".to_owned(),
                    location: meta.location,
                });
            }
            let state = if result.is_ok() {
                RunState::Completed
            } else {
                RunState::Failed
            };
            let outcome = self
                .inner
                .envelope
                .seal::<C, R>(&key, || Slot::Outcome, &result)?;
            let decoded = self
                .inner
                .envelope
                .open::<C, R>(&key, || Slot::Outcome, &outcome)?;
            let write = Write::RunFinished {
                state,
                outcome,
                at: Timestamp::now(),
            };
            if self
                .inner
                .journal
                .write(&run.lease(), write)
                .await?
                .cancel_requested
            {
                // A cancel that came before the outcome was recorded wins.
                return Err(Error::Cancelled { run: key.clone() });
            }
            tracing::info!(outcome = state.as_str(), "run finished");
            Ok(decoded)
        }
        .instrument(span.clone())
        .await;
        let result = match result {
            Err(err) => {
                span.in_scope(|| match &err {
                    Error::Sleeping { until, .. } => {
                        tracing::info!(until = ?until, "run sleeping; given back until then")
                    }
                    Error::WaitingForMessage { topic, until, .. } => {
                        tracing::info!(topic, until = ?until, "run waiting for a message; given back until one comes")
                    }
                    _ => tracing::warn!(error = %err, "run stopped"),
                });
                let ended = Ended {
                    progressed: run_ctx.as_ref().is_some_and(|run| run.progressed()),
                    awaited_messages: run_ctx.as_ref().and_then(|run| run.awaited_messages()),
                };
                self.after_error::<R, C>(&lease, err, past, ended)
                    .instrument(span)
                    .await
            }
            ok => ok,
        };
        // Only now: dropped while giving the run back, it is still given back.
        guard.disarm();
        result
    }

    /// What a caller gets after `err` stopped an execution of `run` under
    /// `lease`, once the journal says so: a cancel or deadline finishes the
    /// run; a lost race returns the outcome recorded elsewhere; anything else
    /// gives the run back (or dead-letters it) and returns `err`.
    async fn after_error<R: Journaled, C: Codec>(
        &self,
        lease: &Lease,
        err: Error,
        past: PastExecutions,
        ended: Ended,
    ) -> Result<R> {
        let journal = &self.inner.journal;
        let stopped = match &err {
            Error::Cancelled { .. } => Some(RunState::Cancelled),
            Error::DeadlineExceeded { .. } => Some(RunState::DeadlineExceeded),
            _ => None,
        };
        if let Some(state) = stopped {
            let write = Write::RunFinished {
                state,
                outcome: Vec::new(),
                at: Timestamp::now(),
            };
            return match journal.write(lease, write).await {
                Ok(ack) if ack.cancel_requested => Err(Error::Cancelled {
                    run: lease.run_key.clone(),
                }),
                Ok(_) => {
                    tracing::info!(outcome = state.as_str(), "run finished");
                    Err(err)
                }
                Err(Error::LeaseLost { .. }) => self.recorded_outcome::<R, C>(lease).await,
                Err(write_err) => {
                    // Left for the next worker, which stops it the same way.
                    self.give_back_after_error(lease, &write_err, past, ended)
                        .await;
                    Err(write_err)
                }
            };
        }
        if let Error::LeaseLost { .. } = err {
            return self.recorded_outcome::<R, C>(lease).await;
        }
        self.give_back_after_error(lease, &err, past, ended).await;
        Err(err)
    }

    /// After losing `lease`: the run's recorded outcome if it finished
    /// elsewhere, else [`Error::LeaseLost`] (it is still going elsewhere).
    async fn recorded_outcome<R: Journaled, C: Codec>(&self, lease: &Lease) -> Result<R> {
        let lost = Error::LeaseLost {
            run: lease.run_key.clone(),
            epoch: lease.epoch,
        };
        match self.inner.journal.load_run(&lease.run_key).await {
            Ok(Some(snapshot)) if snapshot.run.state.is_finished() => {
                outcome_of::<R, C>(&self.inner.envelope, &snapshot.run)
            }
            _ => Err(lost),
        }
    }

    /// Gives a run back after `err` stopped an execution of it (see
    /// [`Ended`]), with the error visible and a
    /// backoff growing with its executions; or dead-letters it if `err` is a
    /// failure outside its steps and executions in a row failed so without
    /// progress too often (or at once if its input cannot be decoded). A
    /// lost lease is not ours to give.
    pub(crate) async fn give_back_after_error(
        &self,
        lease: &Lease,
        err: &Error,
        past: PastExecutions,
        ended: Ended,
    ) {
        if matches!(err, Error::LeaseLost { .. }) {
            return;
        }
        let failed = counts_as_failure(err);
        let failures = match ended.progressed {
            true => u32::from(failed),
            false => past.failures.saturating_add(u32::from(failed)),
        };
        let at = Timestamp::now();
        let dead = matches!(err, Error::DeadLettered { .. })
            || (failed && (failures >= self.inner.dead_letter_after || is_bad_input(err)));
        if dead {
            let write = Write::DeadLetter {
                last_error: err.to_string(),
                failures,
                at,
            };
            match self.inner.journal.write(lease, write).await {
                Ok(_) => {
                    tracing::error!(run = %Escaped(&lease.run_key), error = %err, "run dead-lettered")
                }
                Err(e) => {
                    tracing::debug!(run = %Escaped(&lease.run_key), error = %e, "could not dead-letter the run; its lease will expire")
                }
            }
            return;
        }
        let due = match err {
            // Parked until its step's next attempt, or its sleep's end.
            Error::WaitingToRetry { until, .. } | Error::Sleeping { until, .. } => {
                Timestamp::from(*until)
            }
            // Until its receive's time limit, or a message.
            Error::WaitingForMessage { until, .. } => {
                until.map_or(Timestamp(i64::MAX), Timestamp::from)
            }
            _ => at.after(
                self.inner
                    .run_backoff
                    .jittered_delay(past.executions.max(1)),
            ),
        };
        // Never sleeping past its deadline, where it ends.
        let wake_at = past.deadline.map_or(due, |d| d.min(due));
        // A durable wait is no error: the run shows as waiting, not backing off.
        let (last_error, wake_on_message) = match err {
            Error::Sleeping { .. } | Error::WaitingForMessage { .. } => {
                (None, ended.awaited_messages)
            }
            _ => (Some(err.to_string()), None),
        };
        let release = Release {
            last_error,
            wake_at,
            failures,
            wake_on_message,
        };
        self.give_back(lease, release).await;
    }

    /// Releases a lease, best effort: if this fails the lease simply expires.
    async fn give_back(&self, lease: &Lease, release: Release) {
        let journal = &*self.inner.journal;
        if let Err(err) = release.write(journal, lease).await {
            tracing::debug!(run = %Escaped(&lease.run_key), error = %err, "could not release the lease; it will expire");
        }
    }

    /// Gives back every incomplete run still leased under this runtime's
    /// worker id, so that the runs a previous process with the same id was
    /// executing when it died resume at once instead of after their leases
    /// expire. Returns how many it gave back.
    ///
    /// For workers whose id is stable across restarts (a host or pod name,
    /// set with [`RuntimeBuilder::worker_id`]): call it when the worker
    /// starts, before it executes anything. The id must belong to one live
    /// process at a time: a run that another live process with this id is
    /// executing would be given back under it, and that process would stop
    /// with [`Error::LeaseLost`] at its next write.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{MemoryJournal, Runtime};
    ///
    /// let rt = Runtime::builder(MemoryJournal::new()).worker_id("render-7").build();
    /// assert_eq!(rt.recover_leases().await?, 0); // nothing was left behind
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recover_leases(&self) -> Result<usize> {
        let filter = RunFilter {
            state: Some(RunState::Incomplete),
            lease_owner: Some(self.inner.worker_id.clone()),
            ..RunFilter::default()
        };
        let runs = self.inner.journal.list_runs(&filter).await?;
        let reason = format!("worker {:?} restarted", self.inner.worker_id);
        let given_back = self.release_all(&runs, &reason).await?;
        if given_back > 0 {
            tracing::info!(worker = %self.inner.worker_id, runs = given_back, "gave back the runs a previous process left leased");
        }
        Ok(given_back)
    }

    /// Gives back, in one journal write, the leases of every incomplete run
    /// held by a process on this machine that no longer runs (see
    /// [`RuntimeBuilder::worker_id`]), so that they resume at once. A
    /// [`Completer`](crate::Completer) calls it when it starts and now and
    /// then while it runs. Returns how many it gave back.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{MemoryJournal, Runtime};
    ///
    /// let rt = Runtime::new(MemoryJournal::new());
    /// assert_eq!(rt.recover_gone_workers().await?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recover_gone_workers(&self) -> Result<usize> {
        // Only leased runs (bounded by what workers execute), by an index.
        let filter = RunFilter {
            state: Some(RunState::Incomplete),
            leased: true,
            ..RunFilter::default()
        };
        let now = Timestamp::now();
        let mut runs = self.inner.journal.list_runs(&filter).await?;
        runs.retain(|run| {
            run.is_leased_at(now) && run.lease_owner.as_deref().is_some_and(owner::is_gone)
        });
        let given_back = self.release_all(&runs, "its worker process died").await?;
        if given_back > 0 {
            tracing::info!(
                runs = given_back,
                "took over the runs of worker processes that died"
            );
        }
        Ok(given_back)
    }

    /// Gives back the current leases of `runs` in one write, with `reason`.
    async fn release_all(&self, runs: &[RunRecord], reason: &str) -> Result<usize> {
        let leases: Vec<Lease> = runs
            .iter()
            .filter_map(|run| {
                Some(Lease {
                    run_key: run.key.clone(),
                    owner: run.lease_owner.clone()?,
                    epoch: run.epoch,
                    expires_at: run.lease_expires_at.unwrap_or_default(),
                })
            })
            .collect();
        if leases.is_empty() {
            return Ok(0);
        }
        self.inner
            .journal
            .release_leases(&leases, reason, Timestamp::now())
            .await
    }

    /// Waits until every run that a dropped execution is handing back is back.
    pub(crate) async fn finish_handbacks(&self) {
        let pending: Vec<Handback> = {
            let mut handbacks = self
                .inner
                .handbacks
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            handbacks.drain().map(|(_, h)| h).collect()
        };
        for handback in pending {
            let _ = handback.task.await;
        }
    }

    pub(crate) fn lease_request(&self) -> LeaseRequest {
        LeaseRequest::new(&self.inner.worker_id, self.inner.lease_duration)
    }

    /// The runs of this runtime's journal, to look at and steer: cancel,
    /// resume, retry now, fork, dead letters, purge.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{MemoryJournal, Runtime};
    ///
    /// let rt = Runtime::new(MemoryJournal::new());
    /// assert!(rt.runs().dead_letters(10).await?.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn runs(&self) -> Runs {
        Runs::new(self.inner.journal.clone())
    }

    /// A [`Client`] of this runtime's journal: to send messages to runs
    /// ([`Client::send`]), read what they publish, or wait for outcomes.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{MemoryJournal, Runtime, WorkflowRef};
    ///
    /// const ORDER: WorkflowRef<(u64,), Result<(), String>> = WorkflowRef::named("order");
    /// let rt = Runtime::new(MemoryJournal::new());
    /// let client = rt.client();
    /// client.submit(&ORDER, "order-1", (1,)).await?;
    /// assert!(client.send(&ORDER, "order-1", "approval", &true, "ok-1").await?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn client(&self) -> Client {
        Client::of_runtime(self.inner.journal.clone(), self.inner.envelope)
    }

    /// A run's status and steps, if the key exists (as [`Runs::info`]).
    pub async fn run_info(&self, key: &str) -> Result<Option<RunInfo>> {
        self.runs().info(key).await
    }

    /// Runs matching `filter`, without their steps (as [`Runs::list`]).
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunInfo>> {
        self.runs().list(filter).await
    }
}

/// Why run `run`, found (or created) for `new`, is not the run `new` asks
/// for: another workflow, a version `meta` cannot resume (when the code is
/// known), or another input.
pub(crate) fn mismatch(
    run: &RunRecord,
    new: &NewRun,
    meta: Option<&WorkflowMeta>,
) -> Option<Error> {
    if run.workflow != new.workflow {
        return Some(Error::WorkflowMismatch {
            run: new.key.clone(),
            journaled: run.workflow.clone(),
            requested: new.workflow.clone(),
        });
    }
    // Checked before the input: a new version may well take another input type.
    if let Some(meta) = meta
        && run.state == RunState::Incomplete
        && !meta.accepts(run.fingerprint)
    {
        return Some(Error::VersionMismatch {
            run: new.key.clone(),
            workflow: new.workflow.clone(),
            journaled: run.fingerprint,
            current: meta.fingerprint,
        });
    }
    (run.input != new.input).then(|| Error::InputMismatch {
        run: new.key.clone(),
    })
}

/// The stable outcome of `run`, which is not incomplete: the workflow's own
/// journaled `Result`, or the lifecycle's error.
pub(crate) fn outcome_of<R: Journaled, C: Codec>(
    envelope: &Envelope,
    run: &RunRecord,
) -> Result<R> {
    let key = run.key.clone();
    match run.state {
        RunState::Cancelled => Err(Error::Cancelled { run: key }),
        RunState::DeadlineExceeded => Err(Error::DeadlineExceeded { run: key }),
        RunState::DeadLettered => Err(Error::DeadLettered {
            run: key,
            last_error: run.last_error.clone().unwrap_or_default(),
        }),
        RunState::Incomplete => Err(Error::Busy {
            run: key,
            owner: run.lease_owner.clone().unwrap_or_default(),
        }),
        RunState::Completed | RunState::Failed => {
            let bytes = run.outcome.as_deref().unwrap_or_default();
            envelope.open::<C, R>(&run.key, || Slot::Outcome, bytes)
        }
    }
}

/// What giving a run back after an execution needs to know of the run as
/// that execution found it (copied, not the whole record with its input).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PastExecutions {
    /// Executions so far, this one included.
    executions: u32,
    /// Failures in a row before this execution.
    failures: u32,
    /// The run's deadline.
    deadline: Option<Timestamp>,
}

impl PastExecutions {
    pub(crate) fn of(run: &RunRecord) -> Self {
        PastExecutions {
            executions: run.executions,
            failures: run.failures,
            deadline: run.deadline,
        }
    }
}

/// How an execution that stopped with an error ended.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ended {
    /// It recorded a step.
    pub progressed: bool,
    /// A receive waits for a message: how many had been sent when it looked.
    pub awaited_messages: Option<u64>,
}

/// How a lease is given back ([`Write::Release`]).
#[derive(Debug, Clone)]
pub(crate) struct Release {
    /// The run's last error from now on.
    pub last_error: Option<String>,
    /// When it is due again (never before now, since the next lease starts
    /// after this one ends).
    pub wake_at: Timestamp,
    /// Its failures in a row from now on.
    pub failures: u32,
    /// See [`Write::Release`].
    pub wake_on_message: Option<u64>,
}

impl Release {
    /// A release that keeps the run as it was, due at `wake_at`.
    pub(crate) fn plain(last_error: Option<String>, wake_at: Timestamp, failures: u32) -> Self {
        Release {
            last_error,
            wake_at,
            failures,
            wake_on_message: None,
        }
    }

    pub(crate) async fn write(self, journal: &dyn Journal, lease: &Lease) -> Result<Ack> {
        let at = Timestamp::now();
        let write = Write::Release {
            last_error: self.last_error,
            wake_at: self.wake_at.max(at),
            failures: self.failures,
            wake_on_message: self.wake_on_message,
            at,
        };
        journal.write(lease, write).await
    }
}

/// Whether `err` stopping an execution counts towards dead-lettering the
/// run: a failure outside its steps' own errors, not trouble with storage,
/// leases or this worker's registrations.
fn counts_as_failure(err: &Error) -> bool {
    !err.is_transient()
        && !matches!(
            err,
            Error::UnknownWorkflow { .. }
                | Error::Cancelled { .. }
                | Error::DeadlineExceeded { .. }
        )
}

/// Whether `err` says the run's input cannot be read: no execution will
/// ever succeed, so the run is dead-lettered at once.
fn is_bad_input(err: &Error) -> bool {
    matches!(
        err,
        Error::Decode {
            slot: Slot::Input,
            ..
        } | Error::Corrupted {
            slot: Slot::Input,
            ..
        } | Error::UnknownRecordVersion {
            slot: Slot::Input,
            ..
        }
    )
}

/// Waits until run `run` (leased by another worker) finished, its lease is
/// given back or expires, or a second passes, whichever comes first.
async fn wait_for_lease_or_outcome(events: &mut Option<Subscription>, run: &RunRecord) {
    let until_free = run
        .lease_expires_at
        .map_or(0, |t| t.0.saturating_sub(Timestamp::now().0))
        .clamp(1, 1_000);
    let sleep = tokio::time::sleep(Duration::from_millis(until_free as u64));
    tokio::pin!(sleep);
    loop {
        let event = async {
            match events {
                Some(subscription) => subscription.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut sleep => return,
            event = event => match event {
                Some(JournalEvent::Finished { key }) if key == run.key => return,
                Some(JournalEvent::Due { .. } | JournalEvent::Resync) => return,
                Some(_) => {}
                None => *events = None,
            },
        }
    }
}

/// Checks the key of a new run: not empty or blank, at most
/// [`MAX_RUN_KEY`] bytes, without control characters.
pub(crate) fn validate_key(key: &str) -> Result<()> {
    check_key(key, true)
}

/// Checks a key that only looks a run up: not empty, not longer than any
/// stored key (so that no error echoes an oversized key).
pub(crate) fn validate_lookup_key(key: &str) -> Result<()> {
    check_key(key, false)
}

fn check_key(key: &str, new: bool) -> Result<()> {
    let reason = if key.is_empty() {
        "a run key must not be empty"
    } else if key.len() > MAX_RUN_KEY {
        "a run key must be at most 512 bytes"
    } else if new && key.trim().is_empty() {
        "a run key must not be blank"
    } else if new && key.chars().any(char::is_control) {
        "a run key must not contain control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidRunKey {
        key: key.chars().take(64).collect(),
        reason,
    })
}

/// Gives the run back if its execution is dropped before it finished (the
/// caller stopped waiting, or a completer was shut down), so the next worker
/// need not wait for the lease to expire.
struct GiveBackOnDrop {
    rt: Option<Runtime>,
    lease: Lease,
    /// The run's failures, unchanged: an interruption is not one.
    failures: u32,
}

impl GiveBackOnDrop {
    fn disarm(mut self) {
        self.rt = None;
    }
}

impl Drop for GiveBackOnDrop {
    fn drop(&mut self) {
        let (Some(rt), Ok(handle)) = (self.rt.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let lease = self.lease.clone();
        let failures = self.failures;
        let key = lease.run_key.clone();
        let id = fastrand::u64(..);
        let inner = rt.inner.clone();
        // Locked across the spawn, so the task cannot look for its entry before it exists.
        let mut handbacks = inner.handbacks.lock().unwrap_or_else(|p| p.into_inner());
        let task = handle.spawn(async move {
            let reason = Error::Interrupted {
                run: lease.run_key.clone(),
            };
            rt.give_back(
                &lease,
                Release::plain(Some(reason.to_string()), Timestamp::now(), failures),
            )
            .await;
            let mut handbacks = rt.inner.handbacks.lock().unwrap_or_else(|p| p.into_inner());
            if handbacks.get(&lease.run_key).is_some_and(|h| h.id == id) {
                handbacks.remove(&lease.run_key);
            }
        });
        handbacks.insert(key, Handback { id, task });
    }
}
