//! The [`Journal`] trait: where runs, leases and step results are stored.
//!
//! A journal stores opaque bytes; sealing and checking them is the runtime's
//! job. Every write names the [`Lease`] it is made under and is refused with
//! [`Error::LeaseLost`] unless that lease's epoch is still the run's current
//! one: that fencing is what keeps two workers from both recording a step.

use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

#[allow(unused_imports)] // for doc links
use crate::error::Error;
use crate::error::Result;

pub mod events;
pub mod memory;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

pub use events::{EventSender, JournalEvent, Subscription};

/// The fingerprint of a run submitted without the workflow's code (by a
/// [`Client`](crate::Client)): the first worker that executes it pins it to
/// its own fingerprint with [`Write::Pin`]. Generated fingerprints are never 0.
pub const UNPINNED: u64 = 0;

/// Milliseconds since the Unix epoch, as journals store time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(ms)
    }

    /// This time plus `d`.
    pub fn after(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }

    /// As a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.max(0) as u64)
    }
}

/// A run to create if its key is new.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The caller's run key (an idempotency key).
    pub key: String,
    /// The workflow's stable name.
    pub workflow: String,
    /// The workflow's step-structure fingerprint, or [`UNPINNED`].
    pub fingerprint: u64,
    /// The sealed input.
    pub input: Vec<u8>,
}

/// Who asks for a lease, and until when.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// The worker's id.
    pub owner: String,
    /// The worker's clock now.
    pub now: Timestamp,
    /// When the lease should expire unless renewed.
    pub until: Timestamp,
}

impl LeaseRequest {
    /// A lease for `owner` lasting `duration` from now.
    pub fn new(owner: &str, duration: Duration) -> Self {
        let now = Timestamp::now();
        LeaseRequest {
            owner: owner.to_owned(),
            now,
            until: now.after(duration),
        }
    }
}

/// The right to write a run's journal, until `expires_at` or until another
/// worker takes the run (which raises the run's epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The run key.
    pub run_key: String,
    /// The holder.
    pub owner: String,
    /// The run's epoch when this lease was granted.
    pub epoch: u64,
    /// When it expires unless renewed.
    pub expires_at: Timestamp,
}

/// Whether a run has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Started and not finished.
    Incomplete,
    /// Finished with `Ok`.
    Completed,
    /// Finished with a terminal `Err`.
    Failed,
}

impl RunState {
    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Incomplete => "incomplete",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "incomplete" => RunState::Incomplete,
            "completed" => RunState::Completed,
            "failed" => RunState::Failed,
            _ => return None,
        })
    }
}

/// A run as the journal stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// The run key.
    pub key: String,
    /// The workflow's name.
    pub workflow: String,
    /// Fingerprint of the code that started it.
    pub fingerprint: u64,
    /// The sealed input.
    pub input: Vec<u8>,
    /// Finished or not.
    pub state: RunState,
    /// The sealed outcome, once finished.
    pub outcome: Option<Vec<u8>>,
    /// Raised each time a worker takes the lease.
    pub epoch: u64,
    /// The current or last lease holder, if leased.
    pub lease_owner: Option<String>,
    /// When the current lease expires, if leased.
    pub lease_expires_at: Option<Timestamp>,
    /// When a completer may take it next (backoff after failures).
    pub wake_at: Timestamp,
    /// How many times a worker has taken it (the first execution included).
    pub executions: u32,
    /// The last error that interrupted it, if any.
    pub last_error: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When the run itself last changed: created, leased, pinned, given
    /// back or finished. Step writes do not change it (each step record has
    /// its own `updated_at`), so that a step costs one row write.
    pub updated_at: Timestamp,
}

impl RunRecord {
    /// Whether a lease is held and unexpired at `now`.
    pub fn is_leased_at(&self, now: Timestamp) -> bool {
        self.lease_owner.is_some() && self.lease_expires_at.is_some_and(|t| t > now)
    }
}

/// Where a step is: recorded (it never runs again) or retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepState {
    /// Output recorded; the step never runs again and replays as that output.
    Completed,
    /// Failed for good (a terminal error, or out of attempts); the error is
    /// recorded as its output, and the step replays as that error.
    Failed,
    /// At least one attempt failed and nothing is recorded yet.
    Retrying,
}

impl StepState {
    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Completed => "completed",
            StepState::Failed => "failed",
            StepState::Retrying => "retrying",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "completed" => StepState::Completed,
            "failed" => StepState::Failed,
            "retrying" => StepState::Retrying,
            _ => return None,
        })
    }

    /// Whether the step's result is recorded: it never runs again.
    pub fn is_recorded(self) -> bool {
        matches!(self, StepState::Completed | StepState::Failed)
    }
}

/// One step of a run as the journal stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// `name#occurrence`.
    pub step_id: String,
    /// Recording order within the run (0-based), for recorded steps.
    pub seq: Option<u64>,
    /// Recorded or retrying.
    pub state: StepState,
    /// The sealed output (or, for a failed step, the sealed error), once recorded.
    pub output: Option<Vec<u8>>,
    /// Attempts made so far.
    pub attempts: u32,
    /// The last attempt's error, if one failed.
    pub last_error: Option<String>,
    /// When the next attempt is due, while retrying.
    pub retry_at: Option<Timestamp>,
    /// Epoch of the lease under which this record was last written.
    pub epoch: u64,
    /// When the first attempt started.
    pub started_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
}

/// A run and its steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSnapshot {
    /// The run.
    pub run: RunRecord,
    /// Its steps, in no particular order.
    pub steps: Vec<StepRecord>,
}

/// What [`Journal::open_run`] found.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The run (created just now, or found), with its steps if `lease` is set.
    pub snapshot: RunSnapshot,
    /// The lease granted, if the run is incomplete and was not leased by a live worker.
    pub lease: Option<Lease>,
    /// Whether this call created the run.
    pub created: bool,
}

/// A change to a run, made under a lease.
#[derive(Debug, Clone)]
pub enum Write {
    /// A step's result: its output, or its final error. Refused with
    /// [`Error::StepAlreadyRecorded`] if the step's result is already recorded.
    StepRecorded {
        /// `name#occurrence`.
        step_id: String,
        /// Recording order within the run.
        seq: u64,
        /// [`StepState::Completed`] or [`StepState::Failed`].
        state: StepState,
        /// The sealed output or error.
        output: Vec<u8>,
        /// For a failed step, its error's message, kept as the last error.
        error: Option<String>,
        /// Attempts it took.
        attempts: u32,
        /// When its first attempt started.
        started_at: Timestamp,
        /// Now.
        at: Timestamp,
    },
    /// A failed attempt of a step that will be retried, kept visible.
    AttemptFailed {
        /// `name#occurrence`.
        step_id: String,
        /// Attempts made so far.
        attempts: u32,
        /// The attempt's error.
        error: String,
        /// When the next attempt is due.
        retry_at: Option<Timestamp>,
        /// When its first attempt started.
        started_at: Timestamp,
        /// Now.
        at: Timestamp,
    },
    /// The run's final outcome; also releases the lease.
    RunFinished {
        /// [`RunState::Completed`] or [`RunState::Failed`].
        state: RunState,
        /// The sealed `Result`.
        outcome: Vec<u8>,
        /// Now.
        at: Timestamp,
    },
    /// Pins an [`UNPINNED`] run to the fingerprint of the code executing it,
    /// before its first step is recorded. A run already pinned keeps its
    /// fingerprint.
    Pin {
        /// The executing code's fingerprint.
        fingerprint: u64,
        /// Now.
        at: Timestamp,
    },
    /// Gives an unfinished run back: releases the lease, records why, and
    /// sets when a completer may take it again.
    Release {
        /// Why the run stopped, if it failed.
        last_error: Option<String>,
        /// When a completer may take it again.
        wake_at: Timestamp,
        /// Now.
        at: Timestamp,
    },
}

/// Which runs [`Journal::list_runs`] returns.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// Only runs of this workflow.
    pub workflow: Option<String>,
    /// Only runs leased to this worker (the lease may have expired; a run
    /// given back or finished has no lease).
    pub lease_owner: Option<String>,
    /// At most this many (all if `None`), oldest first.
    pub limit: Option<usize>,
}

/// Durable storage for runs. Implement it to add a backend, and prove the
/// implementation with the `conformance` suite.
///
/// The contract, per method, is what the conformance suite checks. All times
/// come from the caller, so tests and clock-skewed workers behave predictably.
#[async_trait]
pub trait Journal: Send + Sync + Debug + 'static {
    /// Creates the run if no run has `run.key` (incomplete, epoch 0), then, if
    /// it is incomplete and its lease is free or expired at `lease.now`, leases
    /// it: epoch + 1, `executions` + 1, owner and expiry set. Returns the run,
    /// with its steps when leased. Never changes an existing run's input.
    async fn open_run(&self, run: NewRun, lease: LeaseRequest) -> Result<Opened>;

    /// Leases up to `limit` incomplete runs whose lease is free or expired and
    /// whose `wake_at` has passed, earliest `wake_at` first, as `open_run`
    /// does. Concurrent callers, in this process or others, never get the
    /// same run.
    async fn claim_due(
        &self,
        lease: LeaseRequest,
        limit: usize,
    ) -> Result<Vec<(RunSnapshot, Lease)>>;

    /// Applies `write` atomically if `lease.epoch` is the run's current
    /// epoch, the run is incomplete and the lease was not given back
    /// ([`Write::Release`]); otherwise [`Error::LeaseLost`]. A lease that
    /// expired but was not taken over still writes. Durable when it returns
    /// `Ok`, to the level the backend promises.
    async fn write(&self, lease: &Lease, write: Write) -> Result<()>;

    /// Extends a lease to `until`, or [`Error::LeaseLost`] as for `write`.
    async fn renew(&self, lease: &Lease, until: Timestamp) -> Result<Lease>;

    /// The run and its steps, if the key exists.
    async fn load_run(&self, key: &str) -> Result<Option<RunSnapshot>>;

    /// Runs matching `filter`, oldest first.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>>;

    /// Wake-ups for completers and waiting clients: after a committed
    /// [`Write::Release`], a [`JournalEvent::Due`]; after a committed
    /// [`Write::RunFinished`], a [`JournalEvent::Finished`]. `None` (the
    /// default) if this journal cannot push them; callers then poll. Events
    /// are hints: a subscriber must still poll now and then.
    fn subscribe(&self) -> Option<Subscription> {
        None
    }
}

#[async_trait]
impl<J: Journal + ?Sized> Journal for std::sync::Arc<J> {
    async fn open_run(&self, run: NewRun, lease: LeaseRequest) -> Result<Opened> {
        (**self).open_run(run, lease).await
    }
    async fn claim_due(
        &self,
        lease: LeaseRequest,
        limit: usize,
    ) -> Result<Vec<(RunSnapshot, Lease)>> {
        (**self).claim_due(lease, limit).await
    }
    async fn write(&self, lease: &Lease, write: Write) -> Result<()> {
        (**self).write(lease, write).await
    }
    async fn renew(&self, lease: &Lease, until: Timestamp) -> Result<Lease> {
        (**self).renew(lease, until).await
    }
    async fn load_run(&self, key: &str) -> Result<Option<RunSnapshot>> {
        (**self).load_run(key).await
    }
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        (**self).list_runs(filter).await
    }
    fn subscribe(&self) -> Option<Subscription> {
        (**self).subscribe()
    }
}
