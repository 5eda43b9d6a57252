//! The one error type of the runtime.

use std::fmt;

/// A boxed error from a storage driver or a codec, kept out of the public API's types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A run key (or any text from outside) as logs show it: control
/// characters, quotes and backslashes escaped, so that a key cannot forge
/// log lines or terminal escapes.
pub(crate) struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_debug())
    }
}

/// Which journaled value an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// The run's input (the workflow's journaled arguments).
    Input,
    /// The output of one step, by step id (`name#occurrence`).
    Step(String),
    /// The run's final outcome.
    Outcome,
    /// A value the run published as an event (`set_event!`), by name.
    Event(String),
    /// A message sent to the run, by topic.
    Message(String),
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Input => f.write_str("input"),
            Slot::Step(id) => write!(f, "step '{id}'"),
            Slot::Outcome => f.write_str("outcome"),
            Slot::Event(name) => write!(f, "event '{name}'"),
            Slot::Message(topic) => write!(f, "message on topic '{topic}'"),
        }
    }
}

/// Where a step is written in the workflow's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Source file, as `file!()` gives it.
    pub file: &'static str,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// What went wrong while running, resuming or storing a workflow.
///
/// A step's own error is not here: it is the workflow's error type, returned
/// as the inner `Err` of [`Runtime::run`](crate::Runtime::run). These are the
/// failures of the machinery around it, and none of them is ever journaled as
/// a run's outcome.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use resumable::{resumable, step, Error, MemoryJournal, Runtime};
///
/// #[resumable]
/// async fn pay(cents: u64) -> Result<u64, String> {
///     let paid = step!("pay", { cents });
///     Ok(paid)
/// }
///
/// let rt = Runtime::new(MemoryJournal::new());
/// rt.submit("pay-1", pay(100)).await.unwrap();
/// rt.runs().cancel("pay-1").await.unwrap();
/// match rt.run("pay-1", pay(100)).await {
///     Ok(Ok(paid)) => println!("paid {paid}"),
///     Ok(Err(declined)) => println!("the workflow's own error: {declined}"),
///     Err(Error::Cancelled { run }) => assert_eq!(run, "pay-1"),
///     Err(other) => panic!("{other}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The run key is already used by a run with a different input.
    #[error(
        "run {run:?} was started with a different input; a run key names one operation, so use a new key for new input"
    )]
    InputMismatch {
        /// The run key.
        run: String,
    },

    /// The run key is already used by a run of another workflow.
    #[error("run {run:?} belongs to workflow {journaled:?}, not to {requested:?}")]
    WorkflowMismatch {
        /// The run key.
        run: String,
        /// The workflow recorded in the journal.
        journaled: String,
        /// The workflow this call asked for.
        requested: String,
    },

    /// On replay the workflow asked for a step that the journal did not record
    /// where it expected another: the code between steps is not deterministic,
    /// or it changed. The run's journal is left untouched.
    #[error(
        "non-determinism in run {run:?}: the journal expected step '{expected}' but the workflow asked for step '{found}' at {location}; code between steps must be deterministic (take time, randomness and ids from steps)"
    )]
    NonDeterminism {
        /// The run key.
        run: String,
        /// The step the journal recorded next.
        expected: String,
        /// The step the code asked for instead (or `<end of workflow>`).
        found: String,
        /// Where `found` is written.
        location: Location,
    },

    /// The run was started by a version of the workflow with another step
    /// structure, and this code does not declare it compatible.
    #[error(
        "run {run:?} of workflow '{workflow}' was started by code with fingerprint {journaled:016x}, but this code has fingerprint {current:016x}; if this code can resume such runs, declare it with #[resumable(compatible = [\"{journaled:016x}\"])]"
    )]
    VersionMismatch {
        /// The run key.
        run: String,
        /// The workflow name.
        workflow: String,
        /// Fingerprint stored with the run.
        journaled: u64,
        /// Fingerprint of the running code.
        current: u64,
    },

    /// This worker's lease on the run was taken over (or the run finished
    /// elsewhere); its write was rejected and it stopped.
    #[error(
        "lease on run {run:?} lost: epoch {epoch} is no longer current, another worker owns the run"
    )]
    LeaseLost {
        /// The run key.
        run: String,
        /// The epoch this worker held.
        epoch: u64,
    },

    /// Another worker is executing the run right now.
    #[error("run {run:?} is being executed by {owner:?}; try again later")]
    Busy {
        /// The run key.
        run: String,
        /// The worker holding the lease.
        owner: String,
    },

    /// A step output was recorded a second time.
    #[error("step '{step}' of run {run:?} is already recorded; a recorded step never runs again")]
    StepAlreadyRecorded {
        /// The run key.
        run: String,
        /// The step id.
        step: String,
    },

    /// A step panicked on every attempt its retry policy allowed. The run stays
    /// incomplete with this as its last error, so a fixed deployment can resume it.
    #[error("step '{step}' of run {run:?} panicked on attempt {attempts}: {message}")]
    StepPanicked {
        /// The run key.
        run: String,
        /// The step id.
        step: String,
        /// Attempts made.
        attempts: u32,
        /// The panic message.
        message: String,
    },

    /// Every attempt of a step with a time limit (`step!("name", timeout =
    /// …, { … })`) ran past it; like a panic on every attempt, the run stays
    /// incomplete with this as its last error.
    #[error(
        "step '{step}' of run {run:?} timed out on attempt {attempts} (limit {limit:?} per attempt)"
    )]
    StepTimedOut {
        /// The run key.
        run: String,
        /// The step id.
        step: String,
        /// Attempts made.
        attempts: u32,
        /// The limit of each attempt.
        limit: std::time::Duration,
    },

    /// The workflow body panicked outside any step. The run stays incomplete.
    #[error("workflow of run {run:?} panicked outside a step: {message}")]
    WorkflowPanicked {
        /// The run key.
        run: String,
        /// The panic message.
        message: String,
    },

    /// A journaled record is damaged: too short, or its checksum does not match.
    #[error("corrupted journal record for {slot} of run {run:?}: {reason}")]
    Corrupted {
        /// The run key.
        run: String,
        /// The damaged record.
        slot: Slot,
        /// What is wrong with it.
        reason: String,
    },

    /// A journaled record has a format version this code does not know.
    #[error(
        "{slot} of run {run:?} is stored in record format {found}, this code reads format {supported}"
    )]
    UnknownRecordVersion {
        /// The run key.
        run: String,
        /// The record.
        slot: Slot,
        /// The version found.
        found: u8,
        /// The version this code reads.
        supported: u8,
    },

    /// A journaled record was written with another codec than the one the
    /// code reads it with (the workflow's codec changed while runs were in
    /// flight).
    #[error(
        "{slot} of run {run:?} was written with codec '{journaled}', but this code reads it with codec '{current}'"
    )]
    CodecMismatch {
        /// The run key.
        run: String,
        /// The record.
        slot: Slot,
        /// The codec named in the record.
        journaled: String,
        /// The codec of the code reading it.
        current: &'static str,
    },

    /// A journaled record did not decode as the type the code expects.
    #[error("{slot} of run {run:?} does not decode as `{ty}`: {source}")]
    Decode {
        /// The run key.
        run: String,
        /// The record.
        slot: Slot,
        /// The Rust type expected.
        ty: &'static str,
        /// The codec's error.
        #[source]
        source: BoxError,
    },

    /// A value could not be encoded.
    #[error("{slot} of run {run:?} cannot be encoded as `{ty}`: {source}")]
    Encode {
        /// The run key.
        run: String,
        /// The record.
        slot: Slot,
        /// The Rust type.
        ty: &'static str,
        /// The codec's error.
        #[source]
        source: BoxError,
    },

    /// A value is larger than the runtime's payload limit.
    #[error("{slot} of run {run:?} is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The run key.
        run: String,
        /// The record.
        slot: Slot,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },

    /// No workflow is registered under the name a run was started with.
    #[error("run {run:?} needs workflow '{workflow}', which is not registered with this completer")]
    UnknownWorkflow {
        /// The run key.
        run: String,
        /// The workflow name.
        workflow: String,
    },

    /// Two workflows were registered under one name.
    #[error(
        "two workflows are registered as '{workflow}'; give one a stable name with #[resumable(name = \"...\")]"
    )]
    DuplicateWorkflow {
        /// The name.
        workflow: String,
    },

    /// The journal's schema was written by a newer (or unknown) version of this library.
    #[error("journal schema version {found} is not supported; this code reads version {supported}")]
    SchemaVersion {
        /// Version found in the store.
        found: i64,
        /// Version this code reads and writes.
        supported: i64,
    },

    /// A run key is not valid (empty, or too long).
    #[error("invalid run key {key:?}: {reason}")]
    InvalidRunKey {
        /// The key given.
        key: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A message cannot be sent as given (an empty topic or idempotency
    /// key, or one too long).
    #[error("message to run {run:?} refused: {reason}")]
    InvalidMessage {
        /// The run key.
        run: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A fork asked for cannot run as its source did.
    #[error("run {run:?} cannot be forked there: {reason}")]
    InvalidFork {
        /// The source run's key.
        run: String,
        /// Why.
        reason: String,
    },

    /// No run has this key.
    #[error("no run has the key {run:?}")]
    UnknownRun {
        /// The run key.
        run: String,
    },

    /// A setting given to a journal is not valid (a malformed URL, a bad
    /// schema name).
    #[error("invalid {setting} {value:?}: {reason}")]
    InvalidSetting {
        /// Which setting.
        setting: &'static str,
        /// The value given (passwords removed).
        value: String,
        /// Why it is refused.
        reason: String,
    },

    /// The storage backend failed (I/O, lost connection, locked database).
    #[error("journal storage ({backend}) failed: {source}")]
    Storage {
        /// The backend's name.
        backend: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// A step's next attempt is due later than a completer keeps a worker
    /// waiting: the run was given back, due again `until`.
    #[error("step '{step}' of run {run:?} waits to retry; the run is due again at {}", Utc(*until))]
    WaitingToRetry {
        /// The run key.
        run: String,
        /// The step id.
        step: String,
        /// When its next attempt is due.
        until: std::time::SystemTime,
    },

    /// Every branch of the run waits in a durable sleep (`sleep!`) due
    /// later than a worker is kept waiting: the execution ended and the run
    /// was given back, holding no lease, due again `until`, when a
    /// completer (in any process) resumes it. Wait for its outcome with
    /// `Client::wait`, or run it again then.
    #[error("run {run:?} sleeps at '{step}' until {}; a completer resumes it then", Utc(*until))]
    Sleeping {
        /// The run key.
        run: String,
        /// The id of the sleep it waits in (the earliest due).
        step: String,
        /// When it is due again.
        until: std::time::SystemTime,
    },

    /// Every branch of the run waits, and at least one waits for a message
    /// (`recv!`) that has not come: the execution ended and the run was
    /// given back, holding no lease, until a message is sent to it (or
    /// `until`, the time limit of the receive that ends first). A completer
    /// (in any process) resumes it then. Wait for its outcome with
    /// `Client::wait`.
    #[error("run {run:?} waits at '{step}' for a message on topic {topic:?}{}; a completer resumes it when one is sent", until.map(|t| format!(" (at most until {})", Utc(t))).unwrap_or_default())]
    WaitingForMessage {
        /// The run key.
        run: String,
        /// The id of the receive it waits in.
        step: String,
        /// The topic it waits on.
        topic: String,
        /// When it is due again without a message, if its receive has a
        /// time limit.
        until: Option<std::time::SystemTime>,
    },

    /// A child workflow this run waited for (`child!`) ended without an
    /// outcome: it was cancelled or ran past its deadline. The run stops
    /// here, as for any error outside its steps.
    #[error("child run {child:?} of run {run:?} ended {state} without an outcome")]
    ChildEnded {
        /// The parent run's key.
        run: String,
        /// The child run's key.
        child: String,
        /// How it ended.
        state: crate::journal::RunState,
    },

    /// The run was cancelled by an operator: its stable outcome.
    #[error("run {run:?} was cancelled")]
    Cancelled {
        /// The run key.
        run: String,
    },

    /// The run went past its deadline: its stable outcome.
    #[error("run {run:?} did not finish before its deadline")]
    DeadlineExceeded {
        /// The run key.
        run: String,
    },

    /// The run was set aside after failing outside its steps too often (or
    /// because its input cannot be decoded). No worker executes it until an
    /// operator resumes it.
    #[error("run {run:?} is dead-lettered (resume it once the cause is fixed): {last_error}")]
    DeadLettered {
        /// The run key.
        run: String,
        /// The error that set it aside.
        last_error: String,
    },

    /// A new run found step records that no run owns (left where a run
    /// row was deleted by hand, or written by hand) under the id it was
    /// given; it never adopts them. Only journals that may reuse a deleted
    /// run's id (SQLite reuses the newest one's) can meet them.
    #[error(
        "new run {run:?} found step records no run owns ({}): delete them, then try again",
        steps.join(", ")
    )]
    OrphanSteps {
        /// The run key.
        run: String,
        /// Some of the orphan step ids.
        steps: Vec<String>,
    },

    /// A run with this key exists already (a fork's new key must be new).
    #[error("a run with the key {run:?} exists already")]
    RunExists {
        /// The run key.
        run: String,
    },

    /// The run's execution was dropped before it finished (the caller stopped
    /// waiting, or a completer shut down); the run is left for the next worker.
    #[error("run {run:?} was interrupted before it finished; the next worker resumes it")]
    Interrupted {
        /// The run key.
        run: String,
    },
}

/// A time as errors print it: `2026-12-01T22:37:58.688Z` (UTC).
struct Utc(std::time::SystemTime);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(since) = self.0.duration_since(std::time::UNIX_EPOCH) else {
            return f.write_str("before 1970");
        };
        let secs = since.as_secs();
        let days = (secs / 86_400) as i64;
        if days > 2_932_896 {
            return f.write_str("the end of time");
        }
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let rem = secs % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            since.subsec_millis()
        )
    }
}

impl Error {
    /// Wraps a storage driver's error.
    pub fn storage(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Storage {
            backend,
            source: source.into(),
        }
    }

    /// Whether retrying the same call later may succeed (storage trouble, a busy
    /// run, a lost lease), as opposed to errors that need different input or code.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Storage { .. }
                | Error::Busy { .. }
                | Error::LeaseLost { .. }
                | Error::Interrupted { .. }
                | Error::WaitingToRetry { .. }
                | Error::Sleeping { .. }
                | Error::WaitingForMessage { .. }
        )
    }
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::Utc;

    #[test]
    fn times_in_errors_read_as_dates() {
        let at = |secs: u64, ms: u64| {
            Utc(UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms)).to_string()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_796_164_678, 688), "2026-12-01T22:37:58.688Z");
        assert_eq!(at(253_402_300_799, 999), "9999-12-31T23:59:59.999Z");
        assert_eq!(at(1 << 40, 0), "the end of time");
    }
}
