//! What [`Runtime::run_info`](crate::Runtime::run_info) reports about a run and its steps.

use std::time::SystemTime;

use serde::Serialize;

use crate::codec::record_codec;
use crate::journal::{RunRecord, RunSnapshot, RunState, StepState, Timestamp};

/// Where a run is in its life, as an operator sees it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// use resumable::{resumable, step, MemoryJournal, RunStatus, Runtime};
///
/// #[resumable]
/// async fn ping(n: u8) -> Result<u8, String> {
///     let pong = step!("pong", { n });
///     Ok(pong)
/// }
///
/// let rt = Runtime::new(MemoryJournal::new());
/// rt.submit("ping-1", ping(1)).await?;
/// assert_eq!(rt.run_info("ping-1").await?.unwrap().status, RunStatus::Pending);
/// rt.run("ping-1", ping(1)).await?.unwrap();
/// assert_eq!(rt.run_info("ping-1").await?.unwrap().status, RunStatus::Completed);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Incomplete, due and not executing: new, given back, or its worker
    /// died (a completer takes it once its lease, if any, expires).
    Pending,
    /// A worker holds its lease and is executing it.
    Running,
    /// One of its steps waits out a retry delay: in its worker, or, for a
    /// long delay, given back until the attempt is due (listed without
    /// steps, such a run shows as `BackingOff`).
    WaitingToRetry,
    /// It stopped with an error and waits out its backoff before a
    /// completer takes it again.
    BackingOff,
    /// It waits, holding no lease: in a durable sleep (`sleep!`) until a
    /// completer takes it again when the sleep is due, or for a message
    /// (`recv!`) until one is sent to it (or its receive's time limit).
    Waiting,
    /// Finished with `Ok`.
    Completed,
    /// Finished with a terminal `Err`.
    Failed,
    /// Finished: an operator cancelled it.
    Cancelled,
    /// Finished: it ran past its deadline.
    DeadlineExceeded,
    /// Set aside for an operator after failing too often outside its steps.
    DeadLettered,
}

impl RunStatus {
    /// The status of `run` at `now`, given whether one of its steps waits
    /// out a retry delay.
    pub(crate) fn of(run: &RunRecord, step_waiting: bool, now: Timestamp) -> Self {
        match run.state {
            RunState::Completed => RunStatus::Completed,
            RunState::Failed => RunStatus::Failed,
            RunState::Cancelled => RunStatus::Cancelled,
            RunState::DeadlineExceeded => RunStatus::DeadlineExceeded,
            RunState::DeadLettered => RunStatus::DeadLettered,
            RunState::Incomplete if run.is_leased_at(now) && step_waiting => {
                RunStatus::WaitingToRetry
            }
            RunState::Incomplete if run.is_leased_at(now) => RunStatus::Running,
            RunState::Incomplete if run.wake_at > now && step_waiting => RunStatus::WaitingToRetry,
            RunState::Incomplete if run.wake_at > now && run.last_error.is_none() => {
                RunStatus::Waiting
            }
            RunState::Incomplete if run.wake_at > now => RunStatus::BackingOff,
            RunState::Incomplete => RunStatus::Pending,
        }
    }
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Its output is journaled; it never runs again.
    Completed,
    /// It failed for good (terminal, or out of attempts); the error is
    /// journaled and it never runs again.
    Failed,
    /// An attempt failed; no output yet.
    Retrying,
}

/// A journaled value as an operator sees it without its Rust type: its size
/// and the codec it was written with.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// use resumable::{resumable, step, MemoryJournal, Runtime};
///
/// #[resumable]
/// async fn hello(name: String) -> Result<String, String> {
///     let greeting = step!("greet", { format!("hello {name}") });
///     Ok(greeting)
/// }
///
/// let rt = Runtime::new(MemoryJournal::new());
/// rt.run("hello-ada", hello("ada".into())).await?.unwrap();
/// let info = rt.run_info("hello-ada").await?.unwrap();
/// let output = info.step("greet#0").unwrap().output.clone().unwrap();
/// assert_eq!(output.codec.as_deref(), Some("bincode2"));
/// assert!(output.size > "hello ada".len());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordInfo {
    /// The record's size in bytes, header included.
    pub size: usize,
    /// The name of the codec that wrote it ([`Codec::NAME`](crate::Codec::NAME)),
    /// if the record says.
    pub codec: Option<String>,
}

impl RecordInfo {
    /// What `record` (a journaled value, as a journal stores it) is.
    ///
    /// ```
    /// use resumable::RecordInfo;
    ///
    /// let info = RecordInfo::of_record(b"not a record");
    /// assert_eq!((info.size, info.codec), (12, None));
    /// ```
    pub fn of_record(record: &[u8]) -> Self {
        RecordInfo {
            size: record.len(),
            codec: record_codec(record).map(str::to_owned),
        }
    }
}

/// A run as [`Runtime::run_info`](crate::Runtime::run_info) reports it.
/// Times are wall-clock times of the workers that wrote them.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// The run key.
    pub key: String,
    /// The workflow's name.
    pub workflow: String,
    /// Where it is.
    pub status: RunStatus,
    /// How many times a worker took it to execute it (a submit that only
    /// records it is not one; a worker that crashed mid-run and the one that
    /// resumed it are two).
    pub executions: u32,
    /// Executions in a row that failed outside the steps' own errors since
    /// it was created or resumed (dead-lettered at the runtime's limit).
    pub failures: u32,
    /// The error that last interrupted it; cleared when it completes.
    pub last_error: Option<String>,
    /// The worker holding its lease, if a lease is held.
    pub lease_owner: Option<String>,
    /// When that lease expires unless renewed.
    pub lease_expires_at: Option<SystemTime>,
    /// When a completer may take it next, while it is incomplete.
    pub due_at: Option<SystemTime>,
    /// When it must have finished, if it has a deadline.
    pub deadline: Option<SystemTime>,
    /// When an operator asked to cancel it while a worker held it.
    pub cancel_requested_at: Option<SystemTime>,
    /// When an operator last resumed it.
    pub resumed_at: Option<SystemTime>,
    /// The run it was forked from.
    pub forked_from: Option<String>,
    /// The run that started it as a child workflow (`child!`), if any; its
    /// own children are listed by [`Runs::children`](crate::Runs::children).
    pub parent: Option<String>,
    /// Its journaled outcome, once finished with one (decode it with
    /// [`Runtime::run`](crate::Runtime::run) or
    /// [`Client::wait`](crate::Client::wait), which have its type).
    pub outcome: Option<RecordInfo>,
    /// Its journaled input.
    pub input: RecordInfo,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it or one of its steps last changed (for a run listed without
    /// its steps, when the run itself last changed: leased, given back, finished).
    pub updated_at: SystemTime,
    /// Its steps, ordered by completion, then retrying ones (empty in lists).
    pub steps: Vec<StepInfo>,
}

/// A step as [`Runtime::run_info`](crate::Runtime::run_info) reports it.
#[derive(Debug, Clone, Serialize)]
pub struct StepInfo {
    /// `name#occurrence`.
    pub id: String,
    /// Where it is.
    pub status: StepStatus,
    /// Attempts made, over every execution of the run.
    pub attempts: u32,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
    /// When its first attempt started.
    pub started_at: SystemTime,
    /// When it was recorded (completed steps) or last failed.
    pub updated_at: SystemTime,
    /// How long it took from its first attempt to its record, once recorded.
    pub duration_ms: Option<u64>,
    /// When the next attempt is due, while retrying.
    pub retry_at: Option<SystemTime>,
    /// Its journaled output (or, if it failed, its error), once recorded.
    pub output: Option<RecordInfo>,
}

impl RunInfo {
    pub(crate) fn from_snapshot(snapshot: RunSnapshot) -> Self {
        let RunSnapshot { run, mut steps } = snapshot;
        let now = Timestamp::now();
        let step_waiting = steps
            .iter()
            .any(|s| s.state == StepState::Retrying && s.retry_at.is_some_and(|t| t > now));
        let status = RunStatus::of(&run, step_waiting, now);
        steps.sort_by_key(|s| (s.seq.is_none(), s.seq, s.started_at));
        let leased = run.is_leased_at(now);
        let time = |t: Option<Timestamp>| t.map(Timestamp::to_system_time);
        RunInfo {
            status,
            executions: run.executions,
            failures: run.failures,
            lease_owner: run.lease_owner.clone().filter(|_| leased),
            lease_expires_at: time(run.lease_expires_at.filter(|_| leased)),
            due_at: time(Some(run.wake_at).filter(|_| run.state == RunState::Incomplete)),
            deadline: time(run.deadline),
            cancel_requested_at: time(run.cancel_requested_at),
            resumed_at: time(run.resumed_at),
            outcome: run
                .outcome
                .as_deref()
                .filter(|o| !o.is_empty())
                .map(RecordInfo::of_record),
            input: RecordInfo::of_record(&run.input),
            created_at: run.created_at.to_system_time(),
            // The run's row is not rewritten per step: its latest change may be a step's.
            updated_at: steps
                .iter()
                .map(|s| s.updated_at)
                .fold(run.updated_at, Timestamp::max)
                .to_system_time(),
            steps: steps
                .into_iter()
                .map(|s| StepInfo {
                    status: match s.state {
                        StepState::Completed => StepStatus::Completed,
                        StepState::Failed => StepStatus::Failed,
                        StepState::Retrying => StepStatus::Retrying,
                    },
                    attempts: s.attempts,
                    started_at: s.started_at.to_system_time(),
                    updated_at: s.updated_at.to_system_time(),
                    duration_ms: s
                        .state
                        .is_recorded()
                        .then(|| s.updated_at.0.saturating_sub(s.started_at.0).max(0) as u64),
                    retry_at: s.retry_at.map(Timestamp::to_system_time),
                    output: s.output.as_deref().map(RecordInfo::of_record),
                    last_error: s.last_error,
                    id: s.step_id,
                })
                .collect(),
            key: run.key,
            workflow: run.workflow,
            last_error: run.last_error,
            forked_from: run.forked_from,
            parent: run.parent,
        }
    }

    /// The step with id `id` (`name#occurrence`).
    pub fn step(&self, id: &str) -> Option<&StepInfo> {
        self.steps.iter().find(|s| s.id == id)
    }
}
