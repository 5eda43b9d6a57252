//! The [`Runtime`]: starts or resumes runs by key, drives workflow bodies, and
//! answers questions about runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::Instrument;

use crate::codec::{Codec, Envelope};
use crate::context::{Ctx, RunCtx};
use crate::drive::{Drive, Heartbeat};
use crate::error::{Error, Result, Slot};
use crate::journal::{
    Journal, Lease, LeaseRequest, NewRun, Opened, RunFilter, RunRecord, RunSnapshot, RunState,
    Timestamp, UNPINNED, Write,
};
use crate::retry::RetryPolicy;
use crate::status::RunInfo;
use crate::workflow::{BoxFuture, Invocation, Journaled, WorkflowMeta, WorkflowResult};

/// Executes workflows against a [`Journal`]. Cheap to clone; clones share
/// the journal and the worker id.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use resumable_runtime::{MemoryJournal, Runtime};
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
}

impl RuntimeBuilder {
    /// This worker's id, as stored in leases (default: pid and a random
    /// suffix). A stable id (a host or pod name) lets a restarted worker
    /// take back at once the runs it left behind: see
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

    /// The runtime.
    pub fn build(self) -> Runtime {
        Runtime {
            inner: Arc::new(Inner {
                journal: self.journal,
                worker_id: self.worker_id.unwrap_or_else(default_worker_id),
                lease_duration: self.lease_duration,
                envelope: Envelope {
                    max_payload: self.max_payload,
                },
                default_retry: self.default_retry,
                run_backoff: self.run_backoff,
                stall_timeout: self.stall_timeout,
                handbacks: Mutex::default(),
            }),
        }
    }
}

fn default_worker_id() -> String {
    format!("worker-{}-{:08x}", std::process::id(), fastrand::u32(..))
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
    ///   running any workflow code.
    ///
    /// The outer `Result` is the machinery's (journal, leases, determinism);
    /// the inner one is the workflow's own outcome.
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
            meta, input, start, ..
        } = invocation;
        let opened = self.open::<I, C>(key.into(), &meta, &input).await?;
        let run = &opened.snapshot.run;
        match (run.state, opened.lease) {
            (RunState::Completed | RunState::Failed, _) => self.outcome::<R, C>(run),
            (RunState::Incomplete, None) => Err(Error::Busy {
                run: run.key.clone(),
                owner: run.lease_owner.clone().unwrap_or_default(),
            }),
            (RunState::Incomplete, Some(lease)) => {
                self.execute::<I, R, C>(meta, opened.snapshot, lease, start)
                    .await
            }
        }
    }

    /// Records a run for a [`Completer`](crate::Completer) to execute, without
    /// executing it here: the input is journaled and the run is due at once.
    /// A key that already has a run is left as it is (after the same input
    /// checks as [`run`](Self::run)).
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
        let opened = self
            .open::<I, C>(key.into(), &invocation.meta, &invocation.input)
            .await?;
        if let Some(lease) = &opened.lease {
            let run = &opened.snapshot.run;
            self.give_back(lease, run.last_error.clone(), Timestamp::now())
                .await;
        }
        Ok(())
    }

    /// Creates or finds the run, checks it is this workflow with this input,
    /// and leases it if it is incomplete and free.
    async fn open<I: Journaled, C: Codec>(
        &self,
        key: String,
        meta: &WorkflowMeta,
        input: &I,
    ) -> Result<Opened> {
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
        let new = NewRun {
            key: key.clone(),
            workflow: meta.name.to_owned(),
            fingerprint: meta.fingerprint,
            input,
        };
        let opened = self
            .inner
            .journal
            .open_run(new.clone(), self.lease_request())
            .await?;
        let run = &opened.snapshot.run;
        let Some(mismatch) = mismatch(run, &new, Some(meta)) else {
            return Ok(opened);
        };
        if let Some(lease) = &opened.lease {
            self.give_back(lease, run.last_error.clone(), run.wake_at)
                .await;
        }
        Err(mismatch)
    }

    /// The stored outcome of a finished run, decoded.
    fn outcome<R: Journaled, C: Codec>(&self, run: &RunRecord) -> Result<R> {
        let bytes = run.outcome.as_deref().unwrap_or_default();
        self.inner
            .envelope
            .open::<C, R>(&run.key, || Slot::Outcome, bytes)
    }

    /// Executes a leased, incomplete run to its outcome (or to an error, in
    /// which case the run is given back with that error as its last error).
    pub(crate) async fn execute<'a, I, R, C>(
        &self,
        meta: WorkflowMeta,
        mut snapshot: RunSnapshot,
        lease: Lease,
        start: impl FnOnce(Ctx, I) -> BoxFuture<'a, R>,
    ) -> Result<R>
    where
        I: Journaled,
        R: WorkflowResult + Journaled,
        C: Codec,
    {
        let key = snapshot.run.key.clone();
        let span = tracing::info_span!(
            "run",
            run = %key,
            workflow = meta.name,
            epoch = lease.epoch,
            execution = snapshot.run.executions,
        );
        let guard = GiveBackOnDrop {
            rt: Some(self.clone()),
            lease: lease.clone(),
        };
        let result = async {
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
            let run = Arc::new(RunCtx::new(
                &mut snapshot,
                lease.clone(),
                self.inner.journal.clone(),
                self.inner.envelope,
                meta.retry.unwrap_or(self.inner.default_retry),
                meta.name,
            ));
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
            self.inner.journal.write(&run.lease(), write).await?;
            tracing::info!(outcome = state.as_str(), "run finished");
            Ok(decoded)
        }
        .instrument(span.clone())
        .await;
        if let Err(err) = &result {
            span.in_scope(|| tracing::warn!(error = %err, "run stopped"));
            self.give_back_after_error(&lease, err, snapshot.run.executions)
                .await;
        }
        // Only now: dropped while giving the run back, it is still given back.
        guard.disarm();
        result
    }

    /// Gives a run back after `err` stopped it, with the error visible and a
    /// backoff growing with its executions. A lost lease is not ours to give.
    pub(crate) async fn give_back_after_error(&self, lease: &Lease, err: &Error, executions: u32) {
        if matches!(err, Error::LeaseLost { .. }) {
            return;
        }
        let delay = self.inner.run_backoff.jittered_delay(executions.max(1));
        self.give_back(lease, Some(err.to_string()), Timestamp::now().after(delay))
            .await;
    }

    /// Releases a lease, best effort: if this fails the lease simply expires.
    async fn give_back(&self, lease: &Lease, last_error: Option<String>, wake_at: Timestamp) {
        if let Err(err) = release(&*self.inner.journal, lease, last_error, wake_at).await {
            tracing::debug!(run = %lease.run_key, error = %err, "could not release the lease; it will expire");
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
    /// # async fn main() -> resumable_runtime::Result<()> {
    /// use resumable_runtime::{MemoryJournal, Runtime};
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
        let mut given_back = 0;
        for run in self.inner.journal.list_runs(&filter).await? {
            let lease = Lease {
                run_key: run.key,
                owner: self.inner.worker_id.clone(),
                epoch: run.epoch,
                expires_at: run.lease_expires_at.unwrap_or_default(),
            };
            let reason = format!(
                "worker '{}' restarted while executing run '{}'",
                lease.owner, lease.run_key
            );
            let journal = &*self.inner.journal;
            match release(journal, &lease, Some(reason), Timestamp::now()).await {
                Ok(()) => given_back += 1,
                // Taken over meanwhile: not ours to give.
                Err(Error::LeaseLost { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        if given_back > 0 {
            tracing::info!(worker = %self.inner.worker_id, runs = given_back, "gave back the runs a previous process left leased");
        }
        Ok(given_back)
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

    /// A run's status and steps, if the key exists.
    pub async fn run_info(&self, key: &str) -> Result<Option<RunInfo>> {
        Ok(self
            .inner
            .journal
            .load_run(key)
            .await?
            .map(RunInfo::from_snapshot))
    }

    /// Runs matching `filter` (without their steps; see [`run_info`](Self::run_info)).
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunInfo>> {
        let runs = self.inner.journal.list_runs(filter).await?;
        Ok(runs
            .into_iter()
            .map(|run| {
                RunInfo::from_snapshot(RunSnapshot {
                    run,
                    steps: Vec::new(),
                })
            })
            .collect())
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

/// Gives `lease` back: its run keeps `last_error` and is due at `wake_at`,
/// but never before now, since the next lease starts after this one ends.
pub(crate) async fn release(
    journal: &dyn Journal,
    lease: &Lease,
    last_error: Option<String>,
    wake_at: Timestamp,
) -> Result<()> {
    let at = Timestamp::now();
    let write = Write::Release {
        last_error,
        wake_at: wake_at.max(at),
        at,
    };
    journal.write(lease, write).await
}

pub(crate) fn validate_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "a run key must not be empty"
    } else if key.len() > MAX_RUN_KEY {
        "a run key must be at most 512 bytes"
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
        let key = lease.run_key.clone();
        let id = fastrand::u64(..);
        let inner = rt.inner.clone();
        // Locked across the spawn, so the task cannot look for its entry before it exists.
        let mut handbacks = inner.handbacks.lock().unwrap_or_else(|p| p.into_inner());
        let task = handle.spawn(async move {
            let reason = Error::Interrupted {
                run: lease.run_key.clone(),
            };
            rt.give_back(&lease, Some(reason.to_string()), Timestamp::now())
                .await;
            let mut handbacks = rt.inner.handbacks.lock().unwrap_or_else(|p| p.into_inner());
            if handbacks.get(&lease.run_key).is_some_and(|h| h.id == id) {
                handbacks.remove(&lease.run_key);
            }
        });
        handbacks.insert(key, Handback { id, task });
    }
}
