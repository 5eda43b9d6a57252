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

/// What a journal says of run `key` whose rows it cannot read (a row no
/// code of this library wrote): the same words on every backend.
pub(crate) fn unreadable(key: &str, err: &dyn std::fmt::Display) -> String {
    format!("run {key:?} cannot be read from the journal: {err}")
}

/// Milliseconds since the Unix epoch, as journals store time.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
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

/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use resumable::Timestamp;
///
/// assert_eq!(Timestamp::from(UNIX_EPOCH + Duration::from_millis(1500)), Timestamp(1500));
/// ```
impl From<SystemTime> for Timestamp {
    /// Milliseconds since the Unix epoch (0 before it, the largest value far after it).
    fn from(time: SystemTime) -> Self {
        let ms = time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64);
        Timestamp(ms)
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
    /// When the run must have finished, if it has a time limit: past it, it
    /// ends as [`RunState::DeadlineExceeded`] at its next step boundary.
    pub deadline: Option<Timestamp>,
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
    /// [`Journal::claim_due`] takes only runs of these workflows (a worker
    /// takes only the runs it has the code for); `None`: any.
    pub workflows: Option<Vec<String>>,
}

impl LeaseRequest {
    /// A lease for `owner` lasting `duration` from now.
    pub fn new(owner: &str, duration: Duration) -> Self {
        let now = Timestamp::now();
        LeaseRequest {
            owner: owner.to_owned(),
            now,
            until: now.after(duration),
            workflows: None,
        }
    }

    /// Claims only runs of `workflows` (by name).
    ///
    /// ```
    /// use std::time::Duration;
    /// use resumable::journal::LeaseRequest;
    ///
    /// let request = LeaseRequest::new("w", Duration::from_secs(30)).of_workflows(["shop::order"]);
    /// assert_eq!(request.workflows, Some(vec!["shop::order".to_string()]));
    /// ```
    pub fn of_workflows(mut self, workflows: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.workflows = Some(workflows.into_iter().map(Into::into).collect());
        self
    }

    /// Whether a claim under this request may take a run of `workflow`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use resumable::journal::LeaseRequest;
    ///
    /// let any = LeaseRequest::new("w", Duration::from_secs(30));
    /// assert!(any.takes("shop::order"));
    /// let mine = any.of_workflows(["shop::order"]);
    /// assert!(mine.takes("shop::order") && !mine.takes("shop::refund"));
    /// ```
    pub fn takes(&self, workflow: &str) -> bool {
        self.workflows
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == workflow))
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

/// Where a run is, as the journal stores it.
///
/// `Incomplete` runs are executed (and claimed by completers);
/// `DeadLettered` ones wait for an operator; the other four are finished,
/// with an outcome that never changes unless an operator resumes the run.
///
/// ```
/// use resumable::RunState;
///
/// assert!(RunState::Cancelled.is_finished() && RunState::Cancelled.is_resumable());
/// assert!(!RunState::DeadLettered.is_finished() && RunState::DeadLettered.is_resumable());
/// assert_eq!(RunState::parse("deadline_exceeded"), Some(RunState::DeadlineExceeded));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Started and not finished.
    Incomplete,
    /// Finished with `Ok`.
    Completed,
    /// Finished with a terminal `Err`.
    Failed,
    /// Finished because an operator cancelled it.
    Cancelled,
    /// Finished because it ran past its deadline.
    DeadlineExceeded,
    /// Set aside after failing outside its steps too many times (or with an
    /// input that cannot be decoded): no completer takes it until an
    /// operator resumes it.
    DeadLettered,
}

impl RunState {
    /// Every state, in lifecycle order.
    pub const ALL: [RunState; 6] = [
        RunState::Incomplete,
        RunState::Completed,
        RunState::Failed,
        RunState::Cancelled,
        RunState::DeadlineExceeded,
        RunState::DeadLettered,
    ];

    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Incomplete => "incomplete",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::DeadlineExceeded => "deadline_exceeded",
            RunState::DeadLettered => "dead_lettered",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s output.
    pub fn parse(s: &str) -> Option<Self> {
        RunState::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// Whether the run has an outcome that never changes (until an
    /// operator resumes it).
    pub fn is_finished(self) -> bool {
        !matches!(self, RunState::Incomplete | RunState::DeadLettered)
    }

    /// Whether an operator may resume a run in this state: it failed, was
    /// cancelled, ran out of time or was dead-lettered.
    pub fn is_resumable(self) -> bool {
        !matches!(self, RunState::Incomplete | RunState::Completed)
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
    /// When it must have finished, if it has a time limit.
    pub deadline: Option<Timestamp>,
    /// When an operator asked to cancel it, if one did while a worker held
    /// it: the worker stops at its next step boundary.
    pub cancel_requested_at: Option<Timestamp>,
    /// Executions in a row that failed without recording a step: stopped
    /// by an error outside the steps' own errors (a panic, a determinism or
    /// version error), or ended by their worker's death (a lease taken over
    /// after it expired, or given back by [`Journal::release_leases`]).
    /// Set by the runtime when it gives the run back; raised by the journal
    /// for a dead worker's execution that recorded no step; reset by a
    /// resume. Reaching the runtime's limit dead-letters the run.
    pub failures: u32,
    /// When an operator last resumed it.
    pub resumed_at: Option<Timestamp>,
    /// The run it was forked from, if any.
    pub forked_from: Option<String>,
    /// The run that started it as a child ([`Write::StartChild`]), if any.
    pub parent: Option<String>,
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

/// What a committed [`Journal::write`] learned about its run.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// use std::time::Duration;
/// use resumable::journal::{Command, LeaseRequest, NewRun, Write};
/// use resumable::{Journal, MemoryJournal, Timestamp};
///
/// let journal = MemoryJournal::new();
/// let new = NewRun { key: "r".into(), workflow: "w".into(), fingerprint: 1, input: vec![], deadline: None };
/// let lease = journal.open_run(new, LeaseRequest::new("worker", Duration::from_secs(60))).await?.lease.unwrap();
/// journal.command("r", Command::Cancel, Timestamp::now()).await?;
/// let release = Write::Release { last_error: None, wake_at: Timestamp::now(), failures: 0, wake_on_message: None, at: Timestamp::now() };
/// // The worker learns of the cancel, and its release cancelled the run.
/// assert!(journal.write(&lease, release).await?.cancel_requested);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ack {
    /// An operator asked to cancel the run. A [`Write::RunFinished`],
    /// [`Write::Release`] or [`Write::DeadLetter`] made while a cancel is
    /// requested finished the run as [`RunState::Cancelled`] instead; after
    /// a step write, the worker starts no new step.
    pub cancel_requested: bool,
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
    /// The run's final outcome; also releases the lease. A run whose
    /// cancel was requested is finished as [`RunState::Cancelled`] instead
    /// (and [`Ack::cancel_requested`] says so). Finishing as `Completed`
    /// clears the run's last error.
    RunFinished {
        /// Any finished state ([`RunState::is_finished`]).
        state: RunState,
        /// The sealed `Result` (empty for `Cancelled` and `DeadlineExceeded`).
        outcome: Vec<u8>,
        /// Now.
        at: Timestamp,
    },
    /// Sets the run aside for an operator ([`RunState::DeadLettered`]),
    /// with the error that stopped it; releases the lease. A run whose
    /// cancel was requested is cancelled instead.
    DeadLetter {
        /// Why the run stopped.
        last_error: String,
        /// The run's [`RunRecord::failures`] from now on.
        failures: u32,
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
    /// Starts a child run and records the step that started it, in one
    /// write: creates `child` (incomplete, due at `at`, with this run as its
    /// [`RunRecord::parent`]) and records step `step_id` as
    /// [`Write::StepRecorded`] does (completed, one attempt, `output`).
    /// Refused with [`Error::RunExists`] if a run has the child's key (a
    /// replayed start never writes again: its step is recorded), and with
    /// [`Error::StepAlreadyRecorded`] if the step is; if a cancel is
    /// requested, does nothing (the [`Ack`] says so, and the parent stops).
    ///
    /// When the child finishes (in any state [`RunState::is_finished`], by a
    /// write, a command or a release), the journal sends this run a message
    /// in the same transaction, as [`Journal::send_message`] would: topic
    /// `child:<child key>`, idempotency key `finished:<child key>#<epoch>`,
    /// value the child's state name ([`RunState::as_str`]), a zero byte,
    /// then its sealed outcome (empty if it has none).
    StartChild {
        /// The starting step's id.
        step_id: String,
        /// Recording order within the run.
        seq: u64,
        /// The step's sealed output (the child's key, as the parent's codec writes it).
        output: Vec<u8>,
        /// The child run.
        child: NewRun,
        /// Now.
        at: Timestamp,
    },
    /// Publishes `value` as the run's event `name`, replacing the value it
    /// had; read with [`Journal::get_event`].
    EventSet {
        /// The event's name.
        name: String,
        /// The sealed value.
        value: Vec<u8>,
        /// Now.
        at: Timestamp,
    },
    /// Gives an unfinished run back: releases the lease, records why, and
    /// sets when a completer may take it again. A run whose cancel was
    /// requested is finished as [`RunState::Cancelled`] instead.
    Release {
        /// Why the run stopped, if it failed.
        last_error: Option<String>,
        /// When a completer may take it again.
        wake_at: Timestamp,
        /// The run's [`RunRecord::failures`] from now on.
        failures: u32,
        /// Set when the run waits for a message: the number of messages sent
        /// to it when it last looked ([`Received::sent`]). If more have been
        /// sent since, the run is due at `at` instead of `wake_at`; else the
        /// next message sent to it ([`Journal::send_message`]) makes it due.
        wake_on_message: Option<u64>,
        /// Now.
        at: Timestamp,
    },
}

/// A message for a run, stored by [`Journal::send_message`] until a
/// receive of the run takes it ([`Journal::receive`]).
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The receiving run's key.
    pub run_key: String,
    /// The topic a receive names to take it.
    pub topic: String,
    /// The sealed value.
    pub value: Vec<u8>,
    /// The sender's key for this message: sending again with a key already
    /// sent to this run stores nothing more.
    pub idempotency_key: String,
    /// Now.
    pub at: Timestamp,
}

/// What a receive asks of [`Journal::receive`].
#[derive(Debug, Clone)]
pub struct Receive {
    /// The receive's step id (`name#occurrence`), under which the message
    /// it takes is recorded.
    pub step_id: String,
    /// Recording order within the run, if a message is taken.
    pub seq: u64,
    /// The topic to take a message from.
    pub topic: String,
    /// Now.
    pub at: Timestamp,
}

/// What [`Journal::receive`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sealed value of the message taken and recorded, if one was waiting.
    pub message: Option<Vec<u8>>,
    /// How many messages (on any topic) had been sent to the run, counted
    /// in the same transaction: given back in [`Write::Release`]'s
    /// `wake_on_message`, it tells the journal whether one came since.
    pub sent: u64,
    /// What the write learned about its run, as for [`Journal::write`].
    pub ack: Ack,
}

/// An operator's decision about a run, applied at once, without a lease.
/// Users give them through [`Runs`](crate::Runs); journals apply them.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// use resumable::journal::{Command, NewRun};
/// use resumable::{Journal, MemoryJournal, RunState, Timestamp};
///
/// let journal = MemoryJournal::new();
/// let new = NewRun { key: "r".into(), workflow: "w".into(), fingerprint: 1, input: vec![], deadline: None };
/// journal.create_run(new, Timestamp::now()).await?;
/// let (run, changed) = journal.command("r", Command::Cancel, Timestamp::now()).await?.unwrap();
/// assert_eq!((run.state, changed), (RunState::Cancelled, true));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Cancel. A finished run is left as it is. An incomplete run leased by
    /// a live worker gets [`RunRecord::cancel_requested_at`] (its worker
    /// stops at its next step boundary; if it dies, the next worker to take
    /// the run cancels it). Any other incomplete or dead-lettered run is
    /// finished as [`RunState::Cancelled`] at once, and its epoch raised so
    /// that a worker whose lease expired cannot write to it.
    Cancel,
    /// Resume a run an operator may resume ([`RunState::is_resumable`]):
    /// it becomes incomplete and due now, with no outcome, cancel request,
    /// deadline or counted failures; the steps that failed for good after
    /// its last completed step are forgotten, so they run again. Other runs
    /// are left as they are.
    Resume,
    /// Make an incomplete run that no live worker holds due now, and let
    /// its retrying steps try again without waiting out their delays.
    /// Other runs are left as they are.
    RetryNow,
}

/// Which runs [`Journal::list_runs`] returns, in a stable order: the order
/// they were created in, oldest first.
///
/// ```
/// use resumable::{RunFilter, RunState};
///
/// // The second page of 50 dead-lettered runs of workflow `checkout`.
/// let filter = RunFilter {
///     state: Some(RunState::DeadLettered),
///     workflow: Some("checkout".into()),
///     after: Some("last-key-of-page-1".into()),
///     limit: Some(50),
///     ..RunFilter::default()
/// };
/// ```
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// Only runs of this workflow.
    pub workflow: Option<String>,
    /// Only runs leased to this worker (the lease may have expired; a run
    /// given back or finished has no lease).
    pub lease_owner: Option<String>,
    /// Only runs that have a lease (held or expired, not given back).
    pub leased: bool,
    /// Only runs created before this time.
    pub created_before: Option<Timestamp>,
    /// Only runs created at or after this time.
    pub created_after: Option<Timestamp>,
    /// Only the children of the run with this key ([`RunRecord::parent`]).
    pub parent: Option<String>,
    /// Only runs created after the run with this key (the last key of the
    /// previous page); none if no run has this key.
    pub after: Option<String>,
    /// At most this many (all if `None`).
    pub limit: Option<usize>,
}

impl RunFilter {
    /// Whether `run` passes the filter's conditions other than `after` and
    /// `limit` (for journals that filter in memory).
    ///
    /// ```
    /// use resumable::journal::RunRecord;
    /// use resumable::{RunFilter, RunState, Timestamp};
    ///
    /// let run = RunRecord {
    ///     key: "r".into(), workflow: "w".into(), fingerprint: 1, input: vec![],
    ///     state: RunState::Failed, outcome: None, epoch: 1, lease_owner: None,
    ///     lease_expires_at: None, wake_at: Timestamp(0), executions: 1, last_error: None,
    ///     created_at: Timestamp(5), updated_at: Timestamp(5), deadline: None,
    ///     cancel_requested_at: None, failures: 0, resumed_at: None, forked_from: None,
    ///     parent: None,
    /// };
    /// let failed = RunFilter { state: Some(RunState::Failed), ..RunFilter::default() };
    /// assert!(failed.matches(&run));
    /// let older = RunFilter { created_before: Some(Timestamp(5)), ..RunFilter::default() };
    /// assert!(!older.matches(&run));
    /// ```
    pub fn matches(&self, run: &RunRecord) -> bool {
        self.state.is_none_or(|s| run.state == s)
            && self.workflow.as_ref().is_none_or(|w| &run.workflow == w)
            && self
                .lease_owner
                .as_ref()
                .is_none_or(|o| run.lease_owner.as_ref() == Some(o))
            && (!self.leased || run.lease_owner.is_some())
            && self.created_before.is_none_or(|t| run.created_at < t)
            && self.created_after.is_none_or(|t| run.created_at >= t)
            && self
                .parent
                .as_ref()
                .is_none_or(|p| run.parent.as_ref() == Some(p))
    }
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
    /// it: epoch + 1, `executions` + 1, owner and expiry set, and `failures`
    /// + 1 if an expired lease is taken over whose epoch recorded no step
    /// (its worker died without progress). Returns the run,
    /// with its steps when leased. Never changes an existing run's input.
    /// A new run never adopts step records no run owns: a journal that
    /// could give it such records (one that reuses a deleted run's id)
    /// refuses with [`Error::OrphanSteps`], changing nothing.
    async fn open_run(&self, run: NewRun, lease: LeaseRequest) -> Result<Opened>;

    /// Creates the run if no run has `run.key`, due at `now`, without
    /// leasing it (a submit, not an execution); returns the run as stored
    /// and whether this call created it. Never changes an existing run.
    /// Refuses orphan step records as `open_run` does.
    async fn create_run(&self, run: NewRun, now: Timestamp) -> Result<(RunRecord, bool)>;

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
    /// `Ok`, to the level the backend promises. The [`Ack`] says whether a
    /// cancel was requested, as the write found the run.
    async fn write(&self, lease: &Lease, write: Write) -> Result<Ack>;

    /// Gives back every lease of `leases` that is still its run's (as
    /// [`Write::Release`] with `last_error`, due at `at`) in one write, for
    /// workers that died: `failures` + 1 for each lease whose epoch recorded
    /// no step. Returns how many it gave back; the others are skipped.
    async fn release_leases(
        &self,
        leases: &[Lease],
        last_error: &str,
        at: Timestamp,
    ) -> Result<usize>;

    /// Extends a lease to `until`, or [`Error::LeaseLost`] as for `write`.
    async fn renew(&self, lease: &Lease, until: Timestamp) -> Result<Lease>;

    /// Applies an operator's [`Command`] to run `key` at `now`, and returns
    /// the run as it is afterwards with whether the command changed it
    /// (`None` if no run has the key). A command that finds its work done
    /// already (a second cancel request) changes nothing.
    async fn command(
        &self,
        key: &str,
        command: Command,
        now: Timestamp,
    ) -> Result<Option<(RunRecord, bool)>>;

    /// Creates run `new_key` from run `source`: same workflow and input, no
    /// deadline, [`UNPINNED`], due at `now`, `forked_from` set, with copies
    /// of the source's recorded steps whose `seq` is below `steps`. The
    /// source is untouched. [`Error::UnknownRun`] if `source` does not
    /// exist; if `new_key` exists, returns it when it was forked from
    /// `source` (a retried call), else [`Error::RunExists`].
    async fn fork_run(
        &self,
        source: &str,
        new_key: &str,
        steps: u64,
        now: Timestamp,
    ) -> Result<RunRecord>;

    /// Deletes up to `limit` finished runs ([`RunState::is_finished`]) that
    /// last changed before `before`, with all their records, in one short
    /// write; returns how many it deleted. Never touches an unfinished run.
    async fn purge(&self, before: Timestamp, limit: usize) -> Result<usize>;

    /// The run and its steps, if the key exists.
    async fn load_run(&self, key: &str) -> Result<Option<RunSnapshot>>;

    /// Runs matching `filter`, in the order they were created.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>>;

    /// The value run `key` last published as event `name`
    /// ([`Write::EventSet`]), if it did and the run exists. Purging a run
    /// deletes its events.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use std::time::Duration;
    /// use resumable::journal::{LeaseRequest, NewRun, Write};
    /// use resumable::{Journal, MemoryJournal, Timestamp};
    ///
    /// let journal = MemoryJournal::new();
    /// let new = NewRun { key: "r".into(), workflow: "w".into(), fingerprint: 1, input: vec![], deadline: None };
    /// let lease = journal.open_run(new, LeaseRequest::new("me", Duration::from_secs(30))).await?.lease.unwrap();
    /// let set = Write::EventSet { name: "status".into(), value: b"sealed".to_vec(), at: Timestamp::now() };
    /// journal.write(&lease, set).await?;
    /// assert_eq!(journal.get_event("r", "status").await?.as_deref(), Some(&b"sealed"[..]));
    /// assert_eq!(journal.get_event("r", "eta").await?, None);
    /// # Ok(())
    /// # }
    /// ```
    async fn get_event(&self, key: &str, name: &str) -> Result<Option<Vec<u8>>>;

    /// Stores `message` for run `message.run_key`, unless a message with its
    /// idempotency key was sent to that run before; returns whether it stored
    /// it. A run that waits for messages (given back with
    /// [`Write::Release`]'s `wake_on_message`) becomes due at `message.at`,
    /// announced as [`JournalEvent::Due`]; every stored message is announced
    /// as [`JournalEvent::Message`]. [`Error::UnknownRun`] if no run has the
    /// key. A message to a finished run is kept (a resumed run may take it).
    /// Purging a run deletes its messages.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use std::time::Duration;
    /// use resumable::journal::{LeaseRequest, NewMessage, NewRun, Receive};
    /// use resumable::{Journal, MemoryJournal, Timestamp};
    ///
    /// let journal = MemoryJournal::new();
    /// let new = NewRun { key: "r".into(), workflow: "w".into(), fingerprint: 1, input: vec![], deadline: None };
    /// let lease = journal.open_run(new, LeaseRequest::new("me", Duration::from_secs(30))).await?.lease.unwrap();
    /// let message = |id: &str| NewMessage {
    ///     run_key: "r".into(), topic: "approval".into(), value: b"yes".to_vec(),
    ///     idempotency_key: id.into(), at: Timestamp::now(),
    /// };
    /// assert!(journal.send_message(message("m1")).await?);
    /// assert!(!journal.send_message(message("m1")).await?); // a retried send
    /// let receive = Receive { step_id: "approval#0".into(), seq: 0, topic: "approval".into(), at: Timestamp::now() };
    /// let received = journal.receive(&lease, receive.clone()).await?;
    /// assert_eq!((received.message.as_deref(), received.sent), (Some(&b"yes"[..]), 1));
    /// let again = Receive { step_id: "approval#1".into(), seq: 1, ..receive };
    /// assert_eq!(journal.receive(&lease, again).await?.message, None); // delivered once
    /// # Ok(())
    /// # }
    /// ```
    async fn send_message(&self, message: NewMessage) -> Result<bool>;

    /// Takes the oldest message sent to the lease's run on `receive.topic`
    /// that no receive has taken, and in the same transaction records it as
    /// step `receive.step_id` ([`StepState::Completed`], one attempt, its
    /// output the message's value as sent): a message is taken by one
    /// receive only, and a taken message is never lost. If none waits,
    /// records nothing. Fenced as [`write`](Self::write) is; refused with
    /// [`Error::StepAlreadyRecorded`] if the step is recorded.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use std::time::Duration;
    /// use resumable::journal::{LeaseRequest, NewRun, Receive};
    /// use resumable::{Journal, MemoryJournal, Timestamp};
    ///
    /// let journal = MemoryJournal::new();
    /// let new = NewRun { key: "r".into(), workflow: "w".into(), fingerprint: 1, input: vec![], deadline: None };
    /// let lease = journal.open_run(new, LeaseRequest::new("me", Duration::from_secs(30))).await?.lease.unwrap();
    /// let receive = Receive { step_id: "recv:go#0".into(), seq: 0, topic: "go".into(), at: Timestamp::now() };
    /// let received = journal.receive(&lease, receive).await?;
    /// // Nothing sent yet: nothing taken, nothing recorded; the count to wait past is 0.
    /// assert_eq!((received.message, received.sent), (None, 0));
    /// assert!(journal.load_run("r").await?.unwrap().steps.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    async fn receive(&self, lease: &Lease, receive: Receive) -> Result<Received>;

    /// Wake-ups for completers and waiting clients: after a committed
    /// [`Write::Release`] or a run created or made due by a [`Command`], a
    /// [`JournalEvent::Due`]; after a run finished (by a write or a
    /// command), a [`JournalEvent::Finished`]; after a message was stored
    /// ([`send_message`](Self::send_message)), a [`JournalEvent::Message`].
    /// `None` (the default) if this
    /// journal cannot push them; callers then poll. Events are hints: a
    /// subscriber must still poll now and then.
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
    async fn create_run(&self, run: NewRun, now: Timestamp) -> Result<(RunRecord, bool)> {
        (**self).create_run(run, now).await
    }
    async fn write(&self, lease: &Lease, write: Write) -> Result<Ack> {
        (**self).write(lease, write).await
    }
    async fn release_leases(
        &self,
        leases: &[Lease],
        last_error: &str,
        at: Timestamp,
    ) -> Result<usize> {
        (**self).release_leases(leases, last_error, at).await
    }
    async fn command(
        &self,
        key: &str,
        command: Command,
        now: Timestamp,
    ) -> Result<Option<(RunRecord, bool)>> {
        (**self).command(key, command, now).await
    }
    async fn fork_run(
        &self,
        source: &str,
        new_key: &str,
        steps: u64,
        now: Timestamp,
    ) -> Result<RunRecord> {
        (**self).fork_run(source, new_key, steps, now).await
    }
    async fn purge(&self, before: Timestamp, limit: usize) -> Result<usize> {
        (**self).purge(before, limit).await
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
    async fn get_event(&self, key: &str, name: &str) -> Result<Option<Vec<u8>>> {
        (**self).get_event(key, name).await
    }
    async fn send_message(&self, message: NewMessage) -> Result<bool> {
        (**self).send_message(message).await
    }
    async fn receive(&self, lease: &Lease, receive: Receive) -> Result<Received> {
        (**self).receive(lease, receive).await
    }
    fn subscribe(&self) -> Option<Subscription> {
        (**self).subscribe()
    }
}
