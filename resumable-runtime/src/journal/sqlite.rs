//! The embedded default journal: one SQLite file, written with group commit.
//!
//! One writer thread owns the connection. Async callers send it requests;
//! it takes whatever is pending (up to 1024 requests) and runs it all in one
//! `BEGIN IMMEDIATE` transaction with one commit, so concurrent runs share
//! the cost of a sync. `IMMEDIATE` takes SQLite's write lock up front, which
//! is also what makes fencing and `claim_due` safe between processes sharing
//! the file: their transactions run one after another.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::types::{ToSql, Type, Value};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{
    Ack, Command, EventSender, Journal, JournalEvent, Lease, LeaseRequest, NewMessage, NewRun,
    Opened, Receive, Received, RunFilter, RunRecord, RunSnapshot, RunState, StepRecord, StepState,
    Subscription, Timestamp, UNPINNED, Write,
};
use crate::error::{Error, Result};

/// The schema version this code reads and writes, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The most requests committed in one transaction.
const MAX_BATCH: usize = 1024;

/// How long the writer keeps looking for the next request before it sleeps.
/// A run executing steps one after another sends its next write well within
/// this, and finds the writer awake instead of paying for waking it.
const STAY_AWAKE: Duration = Duration::from_micros(100);

/// The backend's name in [`Error::Storage`].
const BACKEND: &str = "sqlite";

/// How long a connection waits for another one's write lock by default.
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Migrations in order: the version of each is its index plus one. Append
/// only; a file records the version it reached in `PRAGMA user_version`.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// Tables and indexes of schema version 1.
const V1: &str = "
CREATE TABLE IF NOT EXISTS resumable_runs (
    -- Insertion order: list_runs' 'oldest first' and claim_due's tie-break.
    id               INTEGER PRIMARY KEY,
    run_key          TEXT    NOT NULL UNIQUE,
    workflow         TEXT    NOT NULL,
    fingerprint      INTEGER NOT NULL, -- u64 bits stored as i64
    input            BLOB    NOT NULL,
    state            TEXT    NOT NULL,
    outcome          BLOB,
    epoch            INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    wake_at          INTEGER NOT NULL,
    executions       INTEGER NOT NULL,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS resumable_runs_due
    ON resumable_runs (wake_at, id) WHERE state = 'incomplete';
CREATE INDEX IF NOT EXISTS resumable_runs_workflow
    ON resumable_runs (workflow, id);
CREATE TABLE IF NOT EXISTS resumable_steps (
    run_key    TEXT    NOT NULL,
    step_id    TEXT    NOT NULL,
    seq        INTEGER,
    state      TEXT    NOT NULL,
    output     BLOB,
    attempts   INTEGER NOT NULL,
    last_error TEXT,
    retry_at   INTEGER,
    epoch      INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (run_key, step_id)
);
";

/// Version 2: the run lifecycle (deadlines, cancels, dead letters, resumes,
/// forks) and an index for purging finished runs by age.
const V2: &str = "
ALTER TABLE resumable_runs ADD COLUMN deadline INTEGER;
ALTER TABLE resumable_runs ADD COLUMN cancel_requested_at INTEGER;
ALTER TABLE resumable_runs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE resumable_runs ADD COLUMN resumed_at INTEGER;
ALTER TABLE resumable_runs ADD COLUMN forked_from TEXT;
CREATE INDEX IF NOT EXISTS resumable_runs_finished ON resumable_runs (updated_at, id)
    WHERE state IN ('completed', 'failed', 'cancelled', 'deadline_exceeded');
-- Listing by state, in creation order, whatever the history holds.
CREATE INDEX IF NOT EXISTS resumable_runs_state ON resumable_runs (state, id);
-- Finding a worker's leases (recover_leases), without scanning every run.
CREATE INDEX IF NOT EXISTS resumable_runs_lease_owner ON resumable_runs (lease_owner)
    WHERE lease_owner IS NOT NULL;
";

/// Version 3: steps refer to their run by its integer id instead of
/// repeating its key in every row and in the index (a smaller journal, and
/// shorter index entries). Steps whose run no longer exists (only ever left
/// by editing the tables by hand) are not carried over. An index of leased
/// runs, and the table of published events.
const V3: &str = "
CREATE TABLE resumable_steps_v3 (
    run_id     INTEGER NOT NULL, -- resumable_runs.id
    step_id    TEXT    NOT NULL,
    seq        INTEGER,
    state      TEXT    NOT NULL,
    output     BLOB,
    attempts   INTEGER NOT NULL,
    last_error TEXT,
    retry_at   INTEGER,
    epoch      INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, step_id)
);
INSERT INTO resumable_steps_v3 (run_id, step_id, seq, state, output, attempts, last_error,
    retry_at, epoch, started_at, updated_at)
SELECT r.id, s.step_id, s.seq, s.state, s.output, s.attempts, s.last_error, s.retry_at,
    s.epoch, s.started_at, s.updated_at
FROM resumable_steps s JOIN resumable_runs r ON r.run_key = s.run_key ORDER BY s.rowid;
DROP TABLE resumable_steps;
ALTER TABLE resumable_steps_v3 RENAME TO resumable_steps;
-- The leased runs in creation order (a completer's look for runs of dead
-- workers), whatever the number of incomplete runs.
CREATE INDEX resumable_runs_leased ON resumable_runs (state, id) WHERE lease_owner IS NOT NULL;
-- The last value of each event a run published.
CREATE TABLE resumable_events (
    run_id     INTEGER NOT NULL, -- resumable_runs.id
    name       TEXT    NOT NULL,
    value      BLOB    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, name)
);
";

/// Version 4: messages sent to runs (`recv!`), and on each run how many
/// were sent to it and whether it waits for one.
const V4: &str = "
ALTER TABLE resumable_runs ADD COLUMN messages_sent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE resumable_runs ADD COLUMN awaits_message INTEGER NOT NULL DEFAULT 0;
CREATE TABLE resumable_messages (
    id              INTEGER PRIMARY KEY, -- sending order
    run_id          INTEGER NOT NULL,    -- resumable_runs.id
    topic           TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    value           BLOB,                -- NULL once a receive took it
    sent_at         INTEGER NOT NULL,
    taken_by        TEXT,                -- the receive's step id
    UNIQUE (run_id, idempotency_key)
);
-- A run's messages not yet taken, by topic, oldest first.
CREATE INDEX resumable_messages_waiting ON resumable_messages (run_id, topic, id)
    WHERE taken_by IS NULL;
-- The run that started this one as a child, and its children in order.
ALTER TABLE resumable_runs ADD COLUMN parent TEXT;
CREATE INDEX resumable_runs_parent ON resumable_runs (parent, id) WHERE parent IS NOT NULL;
-- A child that finishes, by whatever statement, sends its parent a message
-- (see Write::StartChild): its state, a zero byte, its outcome.
CREATE TRIGGER resumable_child_finished AFTER UPDATE OF state ON resumable_runs
WHEN NEW.parent IS NOT NULL
    AND NEW.state IN ('completed', 'failed', 'cancelled', 'deadline_exceeded')
    AND OLD.state NOT IN ('completed', 'failed', 'cancelled', 'deadline_exceeded')
BEGIN
    UPDATE resumable_runs SET messages_sent = messages_sent + 1, awaits_message = 0,
        wake_at = CASE WHEN awaits_message AND state = 'incomplete' THEN NEW.updated_at
            ELSE wake_at END
    WHERE run_key = NEW.parent AND NOT EXISTS (SELECT 1 FROM resumable_messages m
        WHERE m.run_id = resumable_runs.id
          AND m.idempotency_key = 'finished:' || NEW.run_key || '#' || NEW.epoch);
    INSERT INTO resumable_messages (run_id, topic, idempotency_key, value, sent_at)
    SELECT id, 'child:' || NEW.run_key, 'finished:' || NEW.run_key || '#' || NEW.epoch,
        unhex(hex(NEW.state) || '00' || hex(COALESCE(NEW.outcome, x''))), NEW.updated_at
    FROM resumable_runs WHERE run_key = NEW.parent
    ON CONFLICT (run_id, idempotency_key) DO NOTHING;
END;
";

/// The id of run `?1`, for statements on its steps.
macro_rules! run_id {
    () => {
        "(SELECT id FROM resumable_runs WHERE run_key = ?1)"
    };
}

/// The states of finished runs, as an SQL list (as in `resumable_runs_finished`).
const FINISHED: &str = "('completed', 'failed', 'cancelled', 'deadline_exceeded')";

const RUN_COLUMNS: &str = "run_key, workflow, fingerprint, input, state, outcome, epoch, lease_owner, \
     lease_expires_at, wake_at, executions, last_error, created_at, updated_at, deadline, \
     cancel_requested_at, failures, resumed_at, forked_from, parent";

const STEP_COLUMNS: &str =
    "step_id, seq, state, output, attempts, last_error, retry_at, epoch, started_at, updated_at";

/// How far a write that returned `Ok` is guaranteed to survive.
///
/// Both levels use SQLite's write-ahead log (WAL), and neither can corrupt
/// the file: after any crash the journal opens in a consistent state, with
/// every transaction either wholly there or wholly absent. They differ in
/// which crashes may take back the last writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Durability {
    /// WAL with `PRAGMA synchronous = FULL`: each commit fsyncs the log before
    /// any of its writes returns, so a write that returned `Ok` survives the
    /// process dying, an operating-system crash and power loss (on storage
    /// that honours fsync). One fsync per commit, shared by every request
    /// grouped into it. The default.
    #[default]
    PowerLoss,
    /// WAL with `PRAGMA synchronous = NORMAL`: commits are not fsynced (the
    /// log is synced only when it is checkpointed into the database). A write
    /// that returned `Ok` survives the process dying, since the operating
    /// system already holds it; an operating-system crash or power loss may
    /// roll back the most recent commits. A step whose record is lost that
    /// way runs again when its run resumes.
    ProcessCrash,
}

impl Durability {
    fn synchronous(self) -> &'static str {
        match self {
            Durability::PowerLoss => "FULL",
            Durability::ProcessCrash => "NORMAL",
        }
    }
}

/// A [`Journal`] in one SQLite file: the embedded default.
///
/// The file is created with its tables on first open, in WAL mode. Several
/// journals, in this process or others, may open one file: writes wait for
/// each other (up to the [busy timeout](SqliteJournalBuilder::busy_timeout))
/// and `claim_due` never hands one run to two of them.
///
/// Dropping the journal ends its writer thread and closes the file; the drop
/// blocks until requests already sent (by futures since dropped) are done.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("runs.db");
/// use resumable::{Journal, RunFilter, SqliteJournal};
///
/// let journal = SqliteJournal::open(&path).await?;
/// assert!(journal.list_runs(&RunFilter::default()).await?.is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct SqliteJournal {
    path: PathBuf,
    durability: Durability,
    // Fields drop in declaration order. The read connections close first,
    // so that the writer's connection is the file's last: closing, it
    // checkpoints the log into the database and removes it (a copy of the
    // file alone is then the whole journal).
    readers: Arc<Readers>,
    // Then the channel closes (ending the thread's loop) before the thread
    // is joined.
    requests: mpsc::Sender<Box<dyn Job>>,
    stats: Arc<Counters>,
    events: EventSender,
    // Only held for its drop, which joins the thread.
    _writer: WriterThread,
}

/// Connections that only read (`load_run`, `list_runs`), each read in a
/// short transaction of its own: in WAL mode they read while the writer
/// writes, so that a status page or a CLI listing runs never holds up the
/// writer's batches (and so the runs' steps).
#[derive(Debug)]
struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    idle: std::sync::Mutex<Vec<Connection>>,
}

impl Readers {
    /// How many idle read connections are kept.
    const KEEP: usize = 4;

    fn take(&self) -> rusqlite::Result<Connection> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => {
                let conn = Connection::open(&self.path)?;
                conn.busy_timeout(self.busy_timeout)?;
                conn.set_prepared_statement_cache_capacity(32);
                Ok(conn)
            }
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < Self::KEEP {
            idle.push(conn);
        }
    }

    /// Runs `op` in a read transaction on a connection of its own.
    fn read<T>(&self, op: impl FnOnce(&Connection) -> OpResult<T>) -> Result<T> {
        let conn = self.take().map_err(sql_error)?;
        let in_transaction = |conn: &Connection| -> OpResult<T> {
            conn.prepare_cached("BEGIN")?.execute([])?;
            let value = op(conn);
            // A read changes nothing: its end is only a matter of releasing the snapshot.
            let _ = conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut s| s.execute([]));
            value
        };
        let result = in_transaction(&conn);
        if conn.is_autocommit() {
            self.give_back(conn);
        }
        result.map_err(|failure| match failure {
            Failure::Refused(err) => err,
            Failure::Sql(err) => sql_error(err),
        })
    }
}

/// Settings for a [`SqliteJournal`], from [`SqliteJournal::builder`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("runs.db");
/// use std::time::Duration;
/// use resumable::{Durability, SqliteJournal};
///
/// let journal = SqliteJournal::builder(&path)
///     .durability(Durability::ProcessCrash)
///     .busy_timeout(Duration::from_secs(10))
///     .open()
///     .await?;
/// assert_eq!(journal.durability(), Durability::ProcessCrash);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteJournalBuilder {
    path: PathBuf,
    durability: Durability,
    busy_timeout: Duration,
}

impl SqliteJournal {
    /// Opens (or creates) the journal at `path` with the default settings:
    /// [`Durability::PowerLoss`] and a 5 s busy timeout.
    ///
    /// Fails with [`Error::SchemaVersion`] if the file was written by a newer
    /// version of this library, and with [`Error::Storage`] if it cannot be
    /// opened as an SQLite database in WAL mode.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder(path).open().await
    }

    /// Settings for the journal at `path`; finish with
    /// [`open`](SqliteJournalBuilder::open).
    pub fn builder(path: impl AsRef<Path>) -> SqliteJournalBuilder {
        SqliteJournalBuilder {
            path: path.as_ref().to_owned(),
            durability: Durability::default(),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
        }
    }

    /// The file this journal writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability it was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// How many requests this journal has committed, in how many
    /// transactions: with group commit, concurrent runs share commits (and,
    /// with [`Durability::PowerLoss`], fsyncs).
    pub fn stats(&self) -> SqliteStats {
        SqliteStats {
            commits: self.stats.commits.load(Ordering::Relaxed),
            requests: self.stats.requests.load(Ordering::Relaxed),
        }
    }

    /// Runs `op` on a read connection, on tokio's blocking threads, never
    /// in the writer's transaction.
    async fn read<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> OpResult<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.read(op))
            .await
            .map_err(|err| Error::storage(BACKEND, format!("a journal read failed: {err}")))?
    }

    /// Runs `op` on the writer thread, inside the next batch's transaction.
    async fn call<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> OpResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Call {
            op,
            outcome: None,
            reply,
        });
        self.requests.send(job).map_err(|_| writer_stopped())?;
        answer.await.map_err(|_| writer_stopped())?
    }
}

impl SqliteJournalBuilder {
    /// How far a write that returned `Ok` survives (default
    /// [`Durability::PowerLoss`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long to wait for another connection's write lock before failing
    /// with [`Error::Storage`] (default 5 s). Matters when several journals
    /// or processes share the file.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Opens (or creates) the journal. See [`SqliteJournal::open`].
    pub async fn open(self) -> Result<SqliteJournal> {
        let (ready, opened) = oneshot::channel();
        let (requests, queue) = mpsc::channel();
        let settings = self.clone();
        let stats = Arc::new(Counters::default());
        let counters = stats.clone();
        let thread = std::thread::Builder::new()
            .name("resumable-sqlite".into())
            .spawn(move || writer_main(&settings, ready, queue, &counters))
            .map_err(|e| Error::storage(BACKEND, e))?;
        // Built before awaiting so that, if this future is dropped, the
        // journal's own drop order closes the channel before joining.
        let readers = Arc::new(Readers {
            path: self.path.clone(),
            busy_timeout: self.busy_timeout,
            idle: std::sync::Mutex::default(),
        });
        let journal = SqliteJournal {
            path: self.path,
            durability: self.durability,
            requests,
            stats,
            events: EventSender::new(),
            readers,
            _writer: WriterThread(Some(thread)),
        };
        opened.await.map_err(|_| writer_stopped())??;
        Ok(journal)
    }
}

/// Counts of a [`SqliteJournal`]'s committed work, from [`SqliteJournal::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqliteStats {
    /// Transactions committed.
    pub commits: u64,
    /// Requests (reads and writes) those transactions carried.
    pub requests: u64,
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    requests: AtomicU64,
}

/// Joins the writer thread when dropped.
#[derive(Debug)]
struct WriterThread(Option<JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            // Err only if the thread panicked; its callers already got an error.
            let _ = thread.join();
        }
    }
}

/// The error a request that panicked on the writer thread fails with.
fn panicked(payload: &(dyn std::any::Any + Send)) -> rusqlite::Error {
    let message = crate::context::panic_message(payload);
    // Any variant that carries a message; it is only ever shown.
    rusqlite::Error::ToSqlConversionFailure(format!("a journal request panicked: {message}").into())
}

fn writer_stopped() -> Error {
    Error::storage(BACKEND, "the SQLite writer thread has stopped")
}

fn sql_error(err: rusqlite::Error) -> Error {
    Error::storage(BACKEND, err)
}

/// An error to give each request of a failed transaction. `rusqlite::Error`
/// is not `Clone`; the common variant is rebuilt so callers can still
/// downcast it (for example to see `SQLITE_BUSY`).
fn copy_sql_error(err: &rusqlite::Error) -> Error {
    match err {
        rusqlite::Error::SqliteFailure(code, message) => {
            sql_error(rusqlite::Error::SqliteFailure(*code, message.clone()))
        }
        other => Error::storage(BACKEND, other.to_string()),
    }
}

// ---- the writer thread ----

fn writer_main(
    settings: &SqliteJournalBuilder,
    ready: oneshot::Sender<Result<()>>,
    queue: mpsc::Receiver<Box<dyn Job>>,
    counters: &Counters,
) {
    let mut conn = match connect(settings) {
        Ok(conn) => conn,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        return; // the opener gave up waiting
    }
    // Ends when every sender is gone, that is when the journal is dropped.
    while let Some(first) = next_request(&queue) {
        let mut batch = vec![first];
        batch.extend(queue.try_iter().take(MAX_BATCH - 1));
        run_batch(&mut conn, batch, counters);
    }
}

/// The next request, after looking for one for [`STAY_AWAKE`] before
/// sleeping until one comes; `None` once the journal is dropped.
fn next_request(queue: &mpsc::Receiver<Box<dyn Job>>) -> Option<Box<dyn Job>> {
    let awake_until = Instant::now() + STAY_AWAKE;
    loop {
        match queue.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if Instant::now() < awake_until => {
                std::hint::spin_loop();
            }
            Err(mpsc::TryRecvError::Empty) => return queue.recv().ok(),
        }
    }
}

/// Why a batch's transaction failed.
enum BatchError {
    /// One request's SQL failed; the others may be fine.
    Request(rusqlite::Error),
    /// `BEGIN` or `COMMIT` failed: no request in the batch took effect.
    Transaction(rusqlite::Error),
}

/// Runs `jobs` in one transaction and replies to each.
fn run_batch(conn: &mut Connection, mut jobs: Vec<Box<dyn Job>>, counters: &Counters) {
    match execute_batch(conn, &mut jobs) {
        Ok(()) => {
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters
                .requests
                .fetch_add(jobs.len() as u64, Ordering::Relaxed);
            finish_all(jobs, None)
        }
        // The batch was rolled back; run each request alone so that only
        // the one at fault fails.
        Err(BatchError::Request(err)) if jobs.len() > 1 => {
            tracing::debug!(error = %err, requests = jobs.len(), "sqlite batch failed; retrying one by one");
            for job in jobs {
                run_batch(conn, vec![job], counters);
            }
        }
        Err(BatchError::Request(err) | BatchError::Transaction(err)) => {
            finish_all(jobs, Some(&err))
        }
    }
}

fn execute_batch(conn: &mut Connection, jobs: &mut [Box<dyn Job>]) -> Result<(), BatchError> {
    // Prepared once and kept: parsing `BEGIN` and `COMMIT` for every batch
    // is a noticeable part of a one-request batch.
    let run = |sql: &str| conn.prepare_cached(sql)?.execute([]).map(drop);
    run("BEGIN IMMEDIATE").map_err(BatchError::Transaction)?;
    let done = jobs
        .iter_mut()
        .try_for_each(|job| job.execute(conn))
        .map_err(BatchError::Request)
        .and_then(|()| run("COMMIT").map_err(BatchError::Transaction));
    if done.is_err() && !conn.is_autocommit() {
        // Roll the whole batch back. If even that fails, the connection is
        // unusable and the next batch's BEGIN reports it.
        let _ = run("ROLLBACK");
    }
    done
}

fn finish_all(jobs: Vec<Box<dyn Job>>, failed: Option<&rusqlite::Error>) {
    for job in jobs {
        job.finish(failed);
    }
}

/// Why an operation did not produce its value.
enum Failure {
    /// The contract refuses it (a fencing error). Operations check before
    /// they change anything, so a refusal leaves the transaction untouched.
    Refused(Error),
    /// The database failed: the batch's transaction must be rolled back.
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(err: rusqlite::Error) -> Self {
        Failure::Sql(err)
    }
}

type OpResult<T> = std::result::Result<T, Failure>;

/// One request waiting in the writer's queue, with its reply channel.
trait Job: Send {
    /// Runs the operation inside the batch's transaction and keeps its
    /// result for [`finish`](Job::finish). May run again if the batch is
    /// retried. An `Err` means the transaction must be rolled back.
    fn execute(&mut self, conn: &Connection) -> rusqlite::Result<()>;

    /// Replies with the kept result, or with `failed` if the transaction
    /// did not commit.
    fn finish(self: Box<Self>, failed: Option<&rusqlite::Error>);
}

struct Call<T, F> {
    op: F,
    outcome: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Call<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection) -> OpResult<T> + Send + 'static,
{
    fn execute(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        // A panic (a bug, or a row no code expected) fails this request
        // alone: the batch is rolled back and the others run again without
        // it, and the writer thread goes on serving every run.
        let op = &mut self.op;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| op(conn)))
            .unwrap_or_else(|payload| Err(Failure::Sql(panicked(&*payload))));
        let outcome = match result {
            Ok(value) => Ok(value),
            Err(Failure::Refused(err)) => Err(err),
            Err(Failure::Sql(err)) => {
                self.outcome = None;
                return Err(err);
            }
        };
        self.outcome = Some(outcome);
        Ok(())
    }

    fn finish(self: Box<Self>, failed: Option<&rusqlite::Error>) {
        let result = match (failed, self.outcome) {
            (Some(err), _) => Err(copy_sql_error(err)),
            (None, Some(outcome)) => outcome,
            (None, None) => Err(Error::storage(
                BACKEND,
                "request finished without being executed",
            )),
        };
        // The caller may have stopped waiting (its future was dropped).
        let _ = self.reply.send(result);
    }
}

// ---- opening ----

fn connect(settings: &SqliteJournalBuilder) -> Result<Connection> {
    let mut conn = Connection::open(&settings.path).map_err(sql_error)?;
    conn.busy_timeout(settings.busy_timeout)
        .map_err(sql_error)?;
    // Room for every statement the operations prepare, list_runs' variants included.
    conn.set_prepared_statement_cache_capacity(32);
    // Refuse a newer file before changing anything in it (such as its journal mode).
    let found = schema_version(&conn)?;
    check_version(found)?;
    let mode = wal_mode(&conn, settings.busy_timeout)?;
    if !mode.eq_ignore_ascii_case("wal") {
        let msg = format!(
            "{} cannot use WAL mode (journal_mode is {mode})",
            settings.path.display()
        );
        return Err(Error::storage(BACKEND, msg));
    }
    conn.pragma_update(None, "synchronous", settings.durability.synchronous())
        .map_err(sql_error)?;
    if found != SCHEMA_VERSION {
        create_schema(&mut conn)?;
    }
    Ok(conn)
}

/// Switches to WAL mode. On a new file the switch takes an exclusive lock
/// and fails at once with `SQLITE_BUSY` (without waiting for the busy
/// timeout) when another connection is opening the file at the same time,
/// so it is tried again until `timeout`.
fn wal_mode(conn: &Connection, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(pause + Duration::from_micros(fastrand::u64(..1000)));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            result => return result.map_err(sql_error),
        }
    }
}

fn schema_version(conn: &Connection) -> Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sql_error)
}

/// Accepts a new file (0), an older version (migrated) or the current one.
fn check_version(found: i64) -> Result<()> {
    match found {
        0..=SCHEMA_VERSION => Ok(()),
        found => Err(Error::SchemaVersion {
            found,
            supported: SCHEMA_VERSION,
        }),
    }
}

fn create_schema(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_error)?;
    // Read again under the write lock: another process may have created it meanwhile.
    let found = schema_version(&tx)?;
    check_version(found)?;
    for migration in &MIGRATIONS[found as usize..] {
        tx.execute_batch(migration).map_err(sql_error)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(sql_error)?;
    tx.commit().map_err(sql_error)
}

// ---- operations (run on the writer thread, inside a transaction) ----

fn open_run(conn: &Connection, new: &NewRun, req: &LeaseRequest) -> OpResult<Opened> {
    let created = insert_run(conn, new, req.now)?;
    let mut run = select_run(conn, &new.key)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    let lease = if run.state == RunState::Incomplete && !run.is_leased_at(req.now) {
        Some(take_lease(conn, &mut run, req)?)
    } else {
        None
    };
    // The steps are only needed by the worker that will execute the run.
    let steps = match lease {
        Some(_) => select_steps(conn, &run.key)?,
        None => Vec::new(),
    };
    Ok(Opened {
        snapshot: RunSnapshot { run, steps },
        lease,
        created,
    })
}

fn create_run(conn: &Connection, new: &NewRun, now: Timestamp) -> OpResult<(RunRecord, bool)> {
    let created = insert_run(conn, new, now)?;
    let run = select_run(conn, &new.key)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok((run, created))
}

/// Inserts the run unless its key exists; true if it inserted. Refuses
/// (inserting nothing) a key with orphan step records.
fn insert_run(conn: &Connection, new: &NewRun, now: Timestamp) -> OpResult<bool> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO resumable_runs (run_key, workflow, fingerprint, input, state, epoch, wake_at, \
             executions, created_at, updated_at, deadline) \
             VALUES (?1, ?2, ?3, ?4, 'incomplete', 0, ?5, 0, ?5, ?5, ?6) \
             ON CONFLICT (run_key) DO NOTHING",
        )?
        .execute(params![
            new.key,
            new.workflow,
            new.fingerprint as i64,
            new.input,
            now.0,
            new.deadline.map(|t| t.0),
        ])?;
    if inserted == 1 {
        refuse_orphans(conn, &new.key)?;
    }
    Ok(inserted == 1)
}

/// Refuses the run `key` just inserted if step records no run owns are
/// under its id (SQLite gives a new row the id of the newest one deleted),
/// deleting the row again, so that the refusal leaves nothing changed.
fn refuse_orphans(conn: &Connection, key: &str) -> OpResult<()> {
    let steps = conn
        .prepare_cached(concat!(
            "SELECT step_id FROM resumable_steps WHERE run_id = ",
            run_id!(),
            " LIMIT 5"
        ))?
        .query_map([key], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if steps.is_empty() {
        return Ok(());
    }
    conn.prepare_cached("DELETE FROM resumable_runs WHERE run_key = ?1")?
        .execute([key])?;
    Err(Failure::Refused(Error::OrphanSteps {
        run: key.to_owned(),
        steps,
    }))
}

/// Whether a step was written to run `lease.run_key` under `lease.epoch`.
fn recorded_in_epoch(conn: &Connection, lease: &Lease) -> rusqlite::Result<bool> {
    conn.prepare_cached(concat!(
        "SELECT EXISTS (SELECT 1 FROM resumable_steps WHERE run_id = ",
        run_id!(),
        " AND epoch = ?2)"
    ))?
    .query_row(params![lease.run_key, lease.epoch as i64], |row| row.get(0))
}

/// Leases `run` for `req`, in the database and in `run`.
fn take_lease(conn: &Connection, run: &mut RunRecord, req: &LeaseRequest) -> OpResult<Lease> {
    if let Some(owner) = &run.lease_owner {
        // Taken over from a worker that died: without progress, a failure.
        let previous = Lease {
            run_key: run.key.clone(),
            owner: owner.clone(),
            epoch: run.epoch,
            expires_at: Timestamp(0),
        };
        if !recorded_in_epoch(conn, &previous)? {
            run.failures = run.failures.saturating_add(1);
        }
    }
    run.epoch = next_epoch(run)?;
    run.executions = run.executions.saturating_add(1);
    run.lease_owner = Some(req.owner.clone());
    run.lease_expires_at = Some(req.until);
    run.updated_at = req.now;
    conn.prepare_cached(
        "UPDATE resumable_runs SET epoch = ?2, executions = ?3, lease_owner = ?4, lease_expires_at = ?5, \
         updated_at = ?6, failures = ?7 WHERE run_key = ?1",
    )?
    .execute(params![
        run.key,
        run.epoch as i64,
        run.executions,
        req.owner,
        req.until.0,
        req.now.0,
        run.failures,
    ])?;
    Ok(Lease {
        run_key: run.key.clone(),
        owner: req.owner.clone(),
        epoch: run.epoch,
        expires_at: req.until,
    })
}

/// The epoch after `run`'s: refused, not wrapped, at the top of the range.
fn next_epoch(run: &RunRecord) -> OpResult<u64> {
    run.epoch
        .checked_add(1)
        .filter(|e| *e <= i64::MAX as u64)
        .ok_or_else(|| {
            Failure::Refused(Error::storage(
                BACKEND,
                format!("run {:?} is at the last epoch ({})", run.key, run.epoch),
            ))
        })
}

/// The keys of up to `?2` runs due at `?1`. Not leased means what
/// `RunRecord::is_leased_at` says: no owner, no expiry, or an expiry at or
/// before now. The state is a literal so that the partial index
/// `resumable_runs_due` applies, and the index is named: without statistics
/// (SQLite gathers none unless asked) the planner chose the index of states
/// instead and read every incomplete run, sleeping ones included, at every
/// claim.
/// With `workflows` names, only runs of those (parameters `?3` on).
fn claim_due_query(workflows: usize) -> String {
    let only = match workflows {
        0 => String::new(),
        n => format!(
            " AND workflow IN ({})",
            (3..3 + n)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "SELECT run_key FROM resumable_runs INDEXED BY resumable_runs_due \
         WHERE state = 'incomplete' AND wake_at <= ?1 \
           AND (lease_owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= ?1){only} \
         ORDER BY wake_at, id LIMIT ?2"
    )
}

fn claim_due(
    conn: &Connection,
    req: &LeaseRequest,
    limit: usize,
) -> OpResult<Vec<(RunSnapshot, Lease)>> {
    let names = req.workflows.as_deref().unwrap_or_default();
    if req.workflows.is_some() && names.is_empty() {
        return Ok(Vec::new());
    }
    let mut args: Vec<Value> = vec![Value::Integer(req.now.0), Value::Integer(sql_limit(limit))];
    args.extend(names.iter().map(|n| Value::Text(n.clone())));
    let keys = conn
        .prepare_cached(&claim_due_query(names.len()))?
        .query_map(rusqlite::params_from_iter(args), |row| {
            row.get::<_, String>(0)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut claimed = Vec::with_capacity(keys.len());
    for key in keys {
        // A run whose rows cannot be read is set aside, alone.
        match claim_one(conn, &key, req) {
            Ok(Some(run)) => claimed.push(run),
            Ok(None) => {}
            Err(Failure::Sql(err)) if is_unreadable(&err) => set_aside(conn, &key, &err)?,
            Err(Failure::Refused(err)) => set_aside(conn, &key, &err)?,
            Err(err) => return Err(err),
        }
    }
    Ok(claimed)
}

/// Reads and leases run `key` for `claim_due`.
fn claim_one(
    conn: &Connection,
    key: &str,
    req: &LeaseRequest,
) -> OpResult<Option<(RunSnapshot, Lease)>> {
    let Some(mut run) = select_run(conn, key)? else {
        return Ok(None);
    };
    let steps = select_steps(conn, key)?;
    let lease = take_lease(conn, &mut run, req)?;
    Ok(Some((RunSnapshot { run, steps }, lease)))
}

/// Whether `err` says a row holds what this code cannot read (a tampered or
/// corrupted row), as opposed to the database failing.
fn is_unreadable(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::InvalidColumnType(..)
    )
}

/// Dead-letters run `key`, whose rows cannot be read or leased, with an
/// error naming it, so that claims go on with the other runs.
fn set_aside(conn: &Connection, key: &str, err: &dyn std::fmt::Display) -> OpResult<()> {
    tracing::error!(run = %crate::error::Escaped(key), error = %err, "a run's rows cannot be read; dead-lettered");
    let last_error = super::unreadable(key, err);
    conn.prepare_cached(
        "UPDATE resumable_runs SET state = 'dead_lettered', last_error = ?2, \
         lease_owner = NULL, lease_expires_at = NULL WHERE run_key = ?1",
    )?
    .execute(params![key, last_error])?;
    Ok(())
}

/// Refuses with `LeaseLost` unless `lease` is the run's current epoch, the
/// run is incomplete and its lease was not given back; says whether a
/// cancel is requested.
fn fence(conn: &Connection, lease: &Lease) -> OpResult<Ack> {
    let current: Option<(i64, String, bool, bool)> = conn
        .prepare_cached(
            "SELECT epoch, state, lease_owner IS NOT NULL, cancel_requested_at IS NOT NULL \
             FROM resumable_runs WHERE run_key = ?1",
        )?
        .query_row([&lease.run_key], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .optional()?;
    match current {
        Some((epoch, state, true, cancel_requested))
            if epoch as u64 == lease.epoch && state == RunState::Incomplete.as_str() =>
        {
            Ok(Ack { cancel_requested })
        }
        _ => Err(Failure::Refused(Error::LeaseLost {
            run: lease.run_key.clone(),
            epoch: lease.epoch,
        })),
    }
}

// The two step writes carry their fence in their `WHERE` (run `?1` under
// epoch `?7`, incomplete, its lease not given back, and, unless `?11`, no
// cancel requested), and only ever replace a retrying step: one statement
// each, a second only when refused.

/// A step's output or final error. Without a final error, `last_error`
/// stays as the failed attempts set it.
const RECORD_STEP: &str = "INSERT INTO resumable_steps (run_id, step_id, seq, state, output, \
     attempts, epoch, started_at, updated_at, last_error) \
     SELECT id, ?2, ?3, ?4, ?5, ?6, epoch, ?8, ?9, ?10 FROM resumable_runs \
     WHERE run_key = ?1 AND epoch = ?7 AND state = 'incomplete' AND lease_owner IS NOT NULL \
       AND (cancel_requested_at IS NULL OR ?11) \
     ON CONFLICT (run_id, step_id) DO UPDATE SET seq = excluded.seq, state = excluded.state, \
     output = excluded.output, attempts = excluded.attempts, retry_at = NULL, \
     last_error = COALESCE(?10, last_error), epoch = excluded.epoch, \
     started_at = excluded.started_at, updated_at = excluded.updated_at \
     WHERE resumable_steps.state = 'retrying'";

/// A failed attempt of a step, and when the next is due.
const ATTEMPT_FAILED: &str = "INSERT INTO resumable_steps (run_id, step_id, state, attempts, \
     last_error, retry_at, epoch, started_at, updated_at) \
     SELECT id, ?2, 'retrying', ?4, ?5, ?6, epoch, ?8, ?9 FROM resumable_runs \
     WHERE run_key = ?1 AND epoch = ?7 AND state = 'incomplete' AND lease_owner IS NOT NULL \
       AND (cancel_requested_at IS NULL OR ?11) \
     ON CONFLICT (run_id, step_id) DO UPDATE SET seq = NULL, state = excluded.state, \
     output = NULL, attempts = excluded.attempts, last_error = excluded.last_error, \
     retry_at = excluded.retry_at, epoch = excluded.epoch, started_at = excluded.started_at, \
     updated_at = excluded.updated_at \
     WHERE resumable_steps.state = 'retrying'";

/// Ends a lease: `?1` key, `?2` at, then the change's own parameters.
/// Returns the run's parent if the run is finished now and has one (its
/// trigger told the parent; the caller announces it).
fn end_lease(
    conn: &Connection,
    set: &str,
    args: &[&dyn ToSql],
) -> rusqlite::Result<Option<String>> {
    let sql = format!(
        "UPDATE resumable_runs SET {set}, lease_owner = NULL, lease_expires_at = NULL, \
         updated_at = ?2 WHERE run_key = ?1 \
         RETURNING CASE WHEN state IN {FINISHED} THEN parent END"
    );
    let parent: Option<Option<String>> = conn
        .prepare_cached(&sql)?
        .query_row(args, |row| row.get(0))
        .optional()?;
    Ok(parent.flatten())
}

/// What a lease ends with when its run's cancel was requested.
const CANCELLED: &str = "state = 'cancelled', outcome = NULL";

/// Applies `write`; returns its ack and, if it finished a child run, the
/// parent to announce.
fn write(conn: &Connection, lease: &Lease, write: &Write) -> OpResult<(Ack, Option<String>)> {
    let mut finished_parent = None;
    let ack = apply_write(conn, lease, write, &mut finished_parent)?;
    Ok((ack, finished_parent))
}

fn apply_write(
    conn: &Connection,
    lease: &Lease,
    write: &Write,
    finished_parent: &mut Option<String>,
) -> OpResult<Ack> {
    let key = &lease.run_key;
    let epoch = lease.epoch as i64;
    let mut end_lease = |set: &str, args: &[&dyn ToSql]| -> rusqlite::Result<()> {
        *finished_parent = end_lease(conn, set, args)?;
        Ok(())
    };
    match write {
        Write::StepRecorded {
            step_id,
            seq,
            state,
            output,
            error,
            attempts,
            started_at,
            at,
        } => write_step(conn, lease, step_id, |even_if_cancelled| {
            conn.prepare_cached(RECORD_STEP)?.execute(params![
                key,
                step_id,
                *seq as i64,
                state.as_str(),
                output,
                attempts,
                epoch,
                started_at.0,
                at.0,
                error,
                even_if_cancelled,
            ])
        }),
        Write::AttemptFailed {
            step_id,
            attempts,
            error,
            retry_at,
            started_at,
            at,
        } => write_step(conn, lease, step_id, |even_if_cancelled| {
            conn.prepare_cached(ATTEMPT_FAILED)?.execute(params![
                key,
                step_id,
                None::<i64>,
                attempts,
                error,
                retry_at.map(|t| t.0),
                epoch,
                started_at.0,
                at.0,
                None::<String>,
                even_if_cancelled,
            ])
        }),
        Write::RunFinished { state, outcome, at } => {
            let ack = fence(conn, lease)?;
            if ack.cancel_requested {
                end_lease(CANCELLED, params![key, at.0])?;
            } else {
                end_lease(
                    "state = ?3, outcome = ?4, \
                     last_error = CASE WHEN ?3 = 'completed' THEN NULL ELSE last_error END",
                    params![key, at.0, state.as_str(), outcome],
                )?;
            }
            Ok(ack)
        }
        Write::DeadLetter {
            last_error,
            failures,
            at,
        } => {
            let ack = fence(conn, lease)?;
            let set = match ack.cancel_requested {
                true => "state = 'cancelled', outcome = NULL, last_error = ?3, failures = ?4",
                false => "state = 'dead_lettered', last_error = ?3, failures = ?4",
            };
            end_lease(set, params![key, at.0, last_error, failures])?;
            Ok(ack)
        }
        Write::StartChild {
            step_id,
            seq,
            output,
            child,
            at,
        } => {
            let ack = fence(conn, lease)?;
            let recorded: Option<String> = conn
                .prepare_cached(concat!(
                    "SELECT state FROM resumable_steps WHERE run_id = ",
                    run_id!(),
                    " AND step_id = ?2"
                ))?
                .query_row(params![key, step_id], |row| row.get(0))
                .optional()?;
            if recorded.is_some_and(|s| s != StepState::Retrying.as_str()) {
                return Err(Failure::Refused(Error::StepAlreadyRecorded {
                    run: key.clone(),
                    step: step_id.clone(),
                }));
            }
            if ack.cancel_requested {
                // The parent stops at this boundary: no child starts.
                return Ok(ack);
            }
            if !insert_run(conn, child, *at)? {
                return Err(Failure::Refused(Error::RunExists {
                    run: child.key.clone(),
                }));
            }
            conn.prepare_cached("UPDATE resumable_runs SET parent = ?2 WHERE run_key = ?1")?
                .execute(params![child.key, key])?;
            conn.prepare_cached(RECORD_STEP)?.execute(params![
                key,
                step_id,
                *seq as i64,
                StepState::Completed.as_str(),
                output,
                1,
                epoch,
                at.0,
                at.0,
                None::<String>,
                true,
            ])?;
            Ok(ack)
        }
        Write::EventSet { name, value, at } => {
            let ack = fence(conn, lease)?;
            conn.prepare_cached(
                "INSERT INTO resumable_events (run_id, name, value, updated_at) \
                 SELECT id, ?2, ?3, ?4 FROM resumable_runs WHERE run_key = ?1 \
                 ON CONFLICT (run_id, name) DO UPDATE SET value = excluded.value, \
                 updated_at = excluded.updated_at",
            )?
            .execute(params![key, name, value, at.0])?;
            Ok(ack)
        }
        Write::Pin { fingerprint, at } => {
            let ack = fence(conn, lease)?;
            conn.prepare_cached(
                "UPDATE resumable_runs SET fingerprint = CASE WHEN fingerprint = ?2 THEN ?3 \
                 ELSE fingerprint END, updated_at = ?4 WHERE run_key = ?1",
            )?
            .execute(params![key, UNPINNED as i64, *fingerprint as i64, at.0])?;
            Ok(ack)
        }
        Write::Release {
            last_error,
            wake_at,
            failures,
            wake_on_message,
            at,
        } => {
            let ack = fence(conn, lease)?;
            if ack.cancel_requested {
                let set = "state = 'cancelled', outcome = NULL, last_error = ?3, failures = ?4";
                end_lease(set, params![key, at.0, last_error, failures])?;
                return Ok(ack);
            }
            // Waiting for a message: due now if one came since the run looked.
            let set = "last_error = ?3, failures = ?5, \
                 wake_at = CASE WHEN ?6 IS NOT NULL AND messages_sent > ?6 THEN ?2 ELSE ?4 END, \
                 awaits_message = (?6 IS NOT NULL AND messages_sent <= ?6)";
            let seen = wake_on_message.map(|n| n.min(i64::MAX as u64) as i64);
            end_lease(
                set,
                params![key, at.0, last_error, wake_at.0, failures, seen],
            )?;
            Ok(ack)
        }
    }
}

/// Stores a message unless its idempotency key was sent to the run before;
/// whether it stored it, and whether that woke the run.
fn send_message(conn: &Connection, message: &NewMessage) -> OpResult<(bool, bool)> {
    let run: Option<(i64, bool)> = conn
        .prepare_cached(
            "SELECT id, awaits_message AND state = 'incomplete' FROM resumable_runs \
             WHERE run_key = ?1",
        )?
        .query_row([&message.run_key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((run_id, awaits)) = run else {
        return Err(Failure::Refused(Error::UnknownRun {
            run: message.run_key.clone(),
        }));
    };
    let stored =
        conn.prepare_cached(
            "INSERT INTO resumable_messages (run_id, topic, idempotency_key, value, sent_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (run_id, idempotency_key) DO NOTHING",
        )?
        .execute(params![
            run_id,
            message.topic,
            message.idempotency_key,
            message.value,
            message.at.0
        ])? > 0;
    if stored {
        conn.prepare_cached(
            "UPDATE resumable_runs SET messages_sent = messages_sent + 1, awaits_message = 0, \
             wake_at = CASE WHEN ?2 THEN ?3 ELSE wake_at END WHERE id = ?1",
        )?
        .execute(params![run_id, awaits, message.at.0])?;
    }
    Ok((stored, stored && awaits))
}

/// Takes the run's oldest message on the topic, if any, and records it as
/// the receive's step.
fn receive(conn: &Connection, lease: &Lease, receive: &Receive) -> OpResult<Received> {
    let ack = fence(conn, lease)?;
    let (run_id, sent): (i64, i64) = conn
        .prepare_cached("SELECT id, messages_sent FROM resumable_runs WHERE run_key = ?1")?
        .query_row([&lease.run_key], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let received = |message| Received {
        message,
        sent: sent.max(0) as u64,
        ack,
    };
    let oldest: Option<(i64, Vec<u8>)> = conn
        .prepare_cached(
            // A value of another type (only ever written by hand) is read
            // as bytes, and fails to decode at its receive; a missing one
            // is never taken.
            "SELECT id, CAST(value AS BLOB) FROM resumable_messages \
             INDEXED BY resumable_messages_waiting \
             WHERE run_id = ?1 AND topic = ?2 AND taken_by IS NULL AND value IS NOT NULL \
             ORDER BY id LIMIT 1",
        )?
        .query_row(params![run_id, receive.topic], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let Some((message_id, value)) = oldest else {
        return Ok(received(None));
    };
    let recorded = conn
        .prepare_cached(
            "INSERT INTO resumable_steps (run_id, step_id, seq, state, output, attempts, epoch, \
             started_at, updated_at) VALUES (?1, ?2, ?3, 'completed', ?4, 1, ?5, ?6, ?6) \
             ON CONFLICT (run_id, step_id) DO NOTHING",
        )?
        .execute(params![
            run_id,
            receive.step_id,
            receive.seq.min(i64::MAX as u64) as i64,
            value,
            lease.epoch as i64,
            receive.at.0
        ])?;
    if recorded == 0 {
        return Err(Failure::Refused(Error::StepAlreadyRecorded {
            run: lease.run_key.clone(),
            step: receive.step_id.clone(),
        }));
    }
    conn.prepare_cached("UPDATE resumable_messages SET value = NULL, taken_by = ?2 WHERE id = ?1")?
        .execute(params![message_id, receive.step_id])?;
    Ok(received(Some(value)))
}

/// Runs a step write (`execute(even_if_cancelled)`, the number of rows it
/// wrote). When it wrote nothing, says why: the fence refused it
/// (`LeaseLost`), a cancel is requested (then it is written anyway: the
/// step finished, and the ack stops the run), or the step is already
/// recorded. A refusal changes nothing.
fn write_step(
    conn: &Connection,
    lease: &Lease,
    step_id: &str,
    execute: impl Fn(bool) -> rusqlite::Result<usize>,
) -> OpResult<Ack> {
    if execute(false)? > 0 {
        return Ok(Ack::default());
    }
    let ack = fence(conn, lease)?;
    if ack.cancel_requested && execute(true)? > 0 {
        return Ok(ack);
    }
    Err(Failure::Refused(Error::StepAlreadyRecorded {
        run: lease.run_key.clone(),
        step: step_id.to_owned(),
    }))
}

/// Gives back each lease that still holds its run, in one statement each
/// (as PostgreSQL's does for all): released, due at `at`, one more failure
/// if its epoch recorded no step, cancelled instead if a cancel is
/// requested. Returns the runs given back, and whether each was cancelled.
fn release_leases(
    conn: &Connection,
    leases: &[Lease],
    last_error: &str,
    at: Timestamp,
) -> OpResult<Vec<(String, bool)>> {
    let mut release = conn.prepare_cached(
        "UPDATE resumable_runs SET \
           state = CASE WHEN cancel_requested_at IS NULL THEN state ELSE 'cancelled' END, \
           outcome = NULL, last_error = ?3, wake_at = ?4, lease_owner = NULL, \
           lease_expires_at = NULL, updated_at = ?4, \
           failures = min(failures + NOT EXISTS (SELECT 1 FROM resumable_steps s \
             WHERE s.run_id = resumable_runs.id AND s.epoch = ?2), 2147483647) \
         WHERE run_key = ?1 AND epoch = ?2 AND state = 'incomplete' AND lease_owner IS NOT NULL \
         RETURNING cancel_requested_at IS NOT NULL",
    )?;
    let mut released = Vec::new();
    for lease in leases {
        let args = params![lease.run_key, lease.epoch as i64, last_error, at.0];
        let cancelled = release
            .query_row(args, |row| row.get::<_, bool>(0))
            .optional()?;
        if let Some(cancelled) = cancelled {
            released.push((lease.run_key.clone(), cancelled));
        }
    }
    Ok(released)
}

fn renew(conn: &Connection, lease: &Lease, until: Timestamp) -> OpResult<Lease> {
    fence(conn, lease)?;
    conn.prepare_cached("UPDATE resumable_runs SET lease_expires_at = ?2 WHERE run_key = ?1")?
        .execute(params![lease.run_key, until.0])?;
    Ok(Lease {
        expires_at: until,
        ..lease.clone()
    })
}

/// Applies `command`; returns the run afterwards and the event to announce.
fn command(
    conn: &Connection,
    key: &str,
    command: Command,
    now: Timestamp,
) -> OpResult<Option<(RunRecord, bool, Option<JournalEvent>)>> {
    let Some(run) = select_run(conn, key)? else {
        return Ok(None);
    };
    let update = |set: &str| -> rusqlite::Result<()> {
        let sql = format!("UPDATE resumable_runs SET {set}, updated_at = ?2 WHERE run_key = ?1");
        conn.prepare_cached(&sql)?.execute(params![key, now.0])?;
        Ok(())
    };
    let due = Some(JournalEvent::Due { at: now });
    let mut changed = true;
    let event = match command {
        Command::Cancel if run.state == RunState::Incomplete && run.is_leased_at(now) => {
            changed = run.cancel_requested_at.is_none();
            update("cancel_requested_at = COALESCE(cancel_requested_at, ?2)")?;
            None
        }
        Command::Cancel if !run.state.is_finished() => {
            let epoch = next_epoch(&run)? as i64;
            update(&format!(
                "{CANCELLED}, cancel_requested_at = COALESCE(cancel_requested_at, ?2), \
                 epoch = {epoch}, lease_owner = NULL, lease_expires_at = NULL"
            ))?;
            Some(JournalEvent::Finished {
                key: key.to_owned(),
            })
        }
        Command::Resume if run.state.is_resumable() => {
            update(
                "state = 'incomplete', outcome = NULL, cancel_requested_at = NULL, \
                 deadline = NULL, failures = 0, wake_at = ?2, resumed_at = ?2",
            )?;
            // The steps that failed for good after the last completed one run again.
            conn.prepare_cached(concat!(
                "DELETE FROM resumable_steps WHERE run_id = ",
                run_id!(),
                " AND state = 'failed' AND seq > COALESCE((SELECT max(seq) FROM resumable_steps \
                   WHERE run_id = ",
                run_id!(),
                " AND state = 'completed'), -1)"
            ))?
            .execute([key])?;
            due
        }
        Command::RetryNow if run.state == RunState::Incomplete && !run.is_leased_at(now) => {
            update("wake_at = ?2")?;
            conn.prepare_cached(concat!(
                "UPDATE resumable_steps SET retry_at = NULL WHERE run_id = ",
                run_id!(),
                " AND state = 'retrying'"
            ))?
            .execute([key])?;
            due
        }
        _ => {
            changed = false;
            None
        }
    };
    let run = select_run(conn, key)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok(Some((run, changed, event)))
}

fn fork_run(
    conn: &Connection,
    source: &str,
    new_key: &str,
    steps: u64,
    now: Timestamp,
) -> OpResult<RunRecord> {
    if let Some(existing) = select_run(conn, new_key)? {
        return match existing.forked_from.as_deref() == Some(source) {
            true => Ok(existing),
            false => Err(Failure::Refused(Error::RunExists {
                run: new_key.to_owned(),
            })),
        };
    }
    if select_run(conn, source)?.is_none() {
        return Err(Failure::Refused(Error::UnknownRun {
            run: source.to_owned(),
        }));
    }
    conn.prepare_cached(
        "INSERT INTO resumable_runs (run_key, workflow, fingerprint, input, state, epoch, wake_at, \
         executions, created_at, updated_at, forked_from) \
         SELECT ?2, workflow, 0, input, 'incomplete', 0, ?3, 0, ?3, ?3, run_key \
         FROM resumable_runs WHERE run_key = ?1",
    )?
    .execute(params![source, new_key, now.0])?;
    // Checked once the new run has its id (which may be a deleted run's).
    refuse_orphans(conn, new_key)?;
    conn.prepare_cached(
        "INSERT INTO resumable_steps (run_id, step_id, seq, state, output, attempts, last_error, \
         retry_at, epoch, started_at, updated_at) \
         SELECT (SELECT id FROM resumable_runs WHERE run_key = ?2), step_id, seq, state, output, \
           attempts, last_error, NULL, 0, started_at, updated_at \
         FROM resumable_steps WHERE run_id = (SELECT id FROM resumable_runs WHERE run_key = ?1) \
           AND state IN ('completed', 'failed') AND seq < ?3 \
         ORDER BY seq",
    )?
    .execute(params![source, new_key, steps.min(i64::MAX as u64) as i64])?;
    Ok(select_run(conn, new_key)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?)
}

/// The ids of up to `?2` runs finished before `?1`, oldest first, through
/// the index of finished runs: named, because without statistics the
/// planner read every finished run through the index of states and sorted
/// them, at every batch.
fn purge_batch_query() -> String {
    format!(
        "SELECT id FROM resumable_runs INDEXED BY resumable_runs_finished \
         WHERE state IN {FINISHED} AND updated_at < ?1 ORDER BY updated_at, id LIMIT ?2"
    )
}

fn purge(conn: &Connection, before: Timestamp, limit: usize) -> OpResult<usize> {
    let ids = conn
        .prepare_cached(&format!(
            "DELETE FROM resumable_runs WHERE id IN ({}) RETURNING id",
            purge_batch_query()
        ))?
        .query_map(params![before.0, sql_limit(limit)], |row| {
            row.get::<_, i64>(0)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut delete_steps = conn.prepare_cached("DELETE FROM resumable_steps WHERE run_id = ?1")?;
    let mut delete_events =
        conn.prepare_cached("DELETE FROM resumable_events WHERE run_id = ?1")?;
    let mut delete_messages =
        conn.prepare_cached("DELETE FROM resumable_messages WHERE run_id = ?1")?;
    for id in &ids {
        delete_steps.execute([id])?;
        delete_events.execute([id])?;
        delete_messages.execute([id])?;
    }
    Ok(ids.len())
}

fn load_run(conn: &Connection, key: &str) -> OpResult<Option<RunSnapshot>> {
    let read = || -> rusqlite::Result<Option<RunSnapshot>> {
        let Some(run) = select_run(conn, key)? else {
            return Ok(None);
        };
        let steps = select_steps(conn, key)?;
        Ok(Some(RunSnapshot { run, steps }))
    };
    match read() {
        // A row no code wrote: an error that names the run, for it alone.
        Err(err) if is_unreadable(&err) => Err(Failure::Refused(Error::storage(
            BACKEND,
            super::unreadable(key, &err),
        ))),
        result => Ok(result?),
    }
}

fn list_runs(conn: &Connection, filter: &RunFilter) -> OpResult<Vec<RunRecord>> {
    let (sql, args) = list_query(filter);
    let runs = conn
        .prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(&args), run_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(runs)
}

/// `list_runs`' statement and its parameters. Only the filter's conditions
/// go into the SQL, so that each can use its index; the state is a literal
/// from a fixed list, so that the partial indexes apply.
fn list_query(filter: &RunFilter) -> (String, Vec<Value>) {
    // Leased runs are few: their index, whatever else the filter says (but
    // a lease owner, which has its own). Named, because without statistics
    // the planner read every incomplete run instead.
    let index = match (
        filter.parent.is_some(),
        filter.leased && filter.lease_owner.is_none(),
    ) {
        (true, _) => " INDEXED BY resumable_runs_parent",
        (false, true) => " INDEXED BY resumable_runs_leased",
        (false, false) => "",
    };
    let mut sql = format!("SELECT {RUN_COLUMNS} FROM resumable_runs{index} WHERE 1 = 1");
    let mut args = Vec::new();
    if let Some(state) = filter.state {
        sql.push_str(&format!(" AND state = '{}'", state.as_str()));
    }
    if let Some(workflow) = &filter.workflow {
        sql.push_str(" AND workflow = ?");
        args.push(Value::Text(workflow.clone()));
    }
    if let Some(owner) = &filter.lease_owner {
        sql.push_str(" AND lease_owner = ?");
        args.push(Value::Text(owner.clone()));
    }
    if filter.leased {
        sql.push_str(" AND lease_owner IS NOT NULL");
    }
    if let Some(parent) = &filter.parent {
        sql.push_str(" AND parent = ?");
        args.push(Value::Text(parent.clone()));
    }
    if let Some(before) = filter.created_before {
        sql.push_str(" AND created_at < ?");
        args.push(Value::Integer(before.0));
    }
    if let Some(after) = filter.created_after {
        sql.push_str(" AND created_at >= ?");
        args.push(Value::Integer(after.0));
    }
    if let Some(key) = &filter.after {
        // No run with that key: no page after it.
        sql.push_str(
            " AND id > COALESCE((SELECT id FROM resumable_runs WHERE run_key = ?), 9223372036854775807)",
        );
        args.push(Value::Text(key.clone()));
    }
    sql.push_str(" ORDER BY id LIMIT ?");
    args.push(Value::Integer(filter.limit.map_or(i64::MAX, sql_limit)));
    (sql, args)
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn select_run(conn: &Connection, key: &str) -> rusqlite::Result<Option<RunRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM resumable_runs WHERE run_key = ?1"
    ))?
    .query_row([key], run_from_row)
    .optional()
}

fn select_steps(conn: &Connection, key: &str) -> rusqlite::Result<Vec<StepRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {STEP_COLUMNS} FROM resumable_steps WHERE run_id = {} ORDER BY rowid",
        run_id!()
    ))?
    .query_map([key], step_from_row)?
    .collect()
}

// u64 values (fingerprint, epoch, seq) are stored as i64 with the same bits.

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<RunRecord> {
    let time = |idx: usize| -> rusqlite::Result<Option<Timestamp>> {
        Ok(row.get::<_, Option<i64>>(idx)?.map(Timestamp))
    };
    Ok(RunRecord {
        key: row.get(0)?,
        workflow: row.get(1)?,
        fingerprint: row.get::<_, i64>(2)? as u64,
        input: row.get(3)?,
        state: parsed(row, 4, RunState::parse)?,
        outcome: row.get(5)?,
        epoch: row.get::<_, i64>(6)? as u64,
        lease_owner: row.get(7)?,
        lease_expires_at: time(8)?,
        wake_at: Timestamp(row.get(9)?),
        // A counter out of range (a tampered row) is clamped, not refused.
        executions: clamped(row, 10)?,
        last_error: row.get(11)?,
        created_at: Timestamp(row.get(12)?),
        updated_at: Timestamp(row.get(13)?),
        deadline: time(14)?,
        cancel_requested_at: time(15)?,
        failures: clamped(row, 16)?,
        resumed_at: time(17)?,
        forked_from: row.get(18)?,
        parent: row.get(19)?,
    })
}

fn step_from_row(row: &Row<'_>) -> rusqlite::Result<StepRecord> {
    Ok(StepRecord {
        step_id: row.get(0)?,
        seq: row.get::<_, Option<i64>>(1)?.map(|s| s as u64),
        state: parsed(row, 2, StepState::parse)?,
        output: row.get(3)?,
        attempts: clamped(row, 4)?,
        last_error: row.get(5)?,
        retry_at: row.get::<_, Option<i64>>(6)?.map(Timestamp),
        epoch: row.get::<_, i64>(7)? as u64,
        started_at: Timestamp(row.get(8)?),
        updated_at: Timestamp(row.get(9)?),
    })
}

/// A counter column as a `u32`, clamped into its range.
fn clamped(row: &Row<'_>, idx: usize) -> rusqlite::Result<u32> {
    Ok(row.get::<_, i64>(idx)?.clamp(0, i64::from(u32::MAX)) as u32)
}

/// A text column parsed with `parse`, such as a state name.
fn parsed<T>(row: &Row<'_>, idx: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    parse(&text).ok_or_else(|| {
        let err = format!("unknown state {text:?} in the journal");
        rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, err.into())
    })
}

impl SqliteJournal {
    /// A child of `parent` finished (and sent it a message, which may have
    /// made it due).
    fn announce_parent(&self, parent: String) {
        self.events.send(JournalEvent::Due {
            at: Timestamp::now(),
        });
        self.events.send(JournalEvent::Message { key: parent });
    }
}

#[async_trait]
impl Journal for SqliteJournal {
    async fn open_run(&self, run: NewRun, lease: LeaseRequest) -> Result<Opened> {
        self.call(move |conn| open_run(conn, &run, &lease)).await
    }

    async fn create_run(&self, run: NewRun, now: Timestamp) -> Result<(RunRecord, bool)> {
        let created = self.call(move |conn| create_run(conn, &run, now)).await?;
        if created.1 {
            self.events.send(JournalEvent::Due { at: now });
        }
        Ok(created)
    }

    async fn claim_due(
        &self,
        lease: LeaseRequest,
        limit: usize,
    ) -> Result<Vec<(RunSnapshot, Lease)>> {
        self.call(move |conn| claim_due(conn, &lease, limit)).await
    }

    async fn write(&self, lease: &Lease, change: Write) -> Result<Ack> {
        // Both possible announcements, before `change` moves to the writer.
        let events = [false, true].map(|cancel_requested| {
            JournalEvent::announced_by(&lease.run_key, &change, Ack { cancel_requested })
        });
        let lease = lease.clone();
        let (ack, parent) = self.call(move |conn| write(conn, &lease, &change)).await?;
        if let Some(parent) = parent {
            self.announce_parent(parent);
        }
        let [plain, cancelled] = events;
        if let Some(event) = if ack.cancel_requested {
            cancelled
        } else {
            plain
        } {
            self.events.send(event);
        }
        Ok(ack)
    }

    async fn release_leases(
        &self,
        leases: &[Lease],
        last_error: &str,
        at: Timestamp,
    ) -> Result<usize> {
        let leases = leases.to_vec();
        let last_error = last_error.to_owned();
        let released = self
            .call(move |conn| release_leases(conn, &leases, &last_error, at))
            .await?;
        for (key, cancelled) in &released {
            self.events.send(match cancelled {
                true => JournalEvent::Finished { key: key.clone() },
                false => JournalEvent::Due { at },
            });
        }
        Ok(released.len())
    }

    async fn renew(&self, lease: &Lease, until: Timestamp) -> Result<Lease> {
        let lease = lease.clone();
        self.call(move |conn| renew(conn, &lease, until)).await
    }

    async fn command(
        &self,
        key: &str,
        cmd: Command,
        now: Timestamp,
    ) -> Result<Option<(RunRecord, bool)>> {
        let key = key.to_owned();
        let Some((run, changed, event)) =
            self.call(move |conn| command(conn, &key, cmd, now)).await?
        else {
            return Ok(None);
        };
        if let Some(event) = event {
            self.events.send(event);
        }
        if changed
            && run.state.is_finished()
            && let Some(parent) = run.parent.clone()
        {
            self.announce_parent(parent);
        }
        Ok(Some((run, changed)))
    }

    async fn fork_run(
        &self,
        source: &str,
        new_key: &str,
        steps: u64,
        now: Timestamp,
    ) -> Result<RunRecord> {
        let (source, new_key) = (source.to_owned(), new_key.to_owned());
        let run = self
            .call(move |conn| fork_run(conn, &source, &new_key, steps, now))
            .await?;
        self.events.send(JournalEvent::Due { at: now });
        Ok(run)
    }

    async fn purge(&self, before: Timestamp, limit: usize) -> Result<usize> {
        self.call(move |conn| purge(conn, before, limit)).await
    }

    async fn load_run(&self, key: &str) -> Result<Option<RunSnapshot>> {
        let key = key.to_owned();
        self.read(move |conn| load_run(conn, &key)).await
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let filter = filter.clone();
        self.read(move |conn| list_runs(conn, &filter)).await
    }

    async fn get_event(&self, key: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let (key, name) = (key.to_owned(), name.to_owned());
        self.read(move |conn| {
            let value = conn
                .prepare_cached(concat!(
                    "SELECT value FROM resumable_events WHERE run_id = ",
                    run_id!(),
                    " AND name = ?2"
                ))?
                .query_row(params![key, name], |row| row.get(0))
                .optional()?;
            Ok(value)
        })
        .await
    }

    async fn send_message(&self, message: NewMessage) -> Result<bool> {
        let (key, at) = (message.run_key.clone(), message.at);
        let (stored, woken) = self.call(move |conn| send_message(conn, &message)).await?;
        if woken {
            self.events.send(JournalEvent::Due { at });
        }
        if stored {
            self.events.send(JournalEvent::Message { key });
        }
        Ok(stored)
    }

    async fn receive(&self, lease: &Lease, request: Receive) -> Result<Received> {
        let lease = lease.clone();
        self.call(move |conn| receive(conn, &lease, &request)).await
    }

    fn subscribe(&self) -> Option<Subscription> {
        Some(self.events.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;

    fn new_run(key: &str) -> NewRun {
        NewRun {
            key: key.to_owned(),
            workflow: "wf".to_owned(),
            fingerprint: 1,
            input: b"input".to_vec(),
            deadline: None,
        }
    }

    fn request(owner: &str, now: i64, until: i64) -> LeaseRequest {
        LeaseRequest {
            owner: owner.to_owned(),
            now: Timestamp(now),
            until: Timestamp(until),
            workflows: None,
        }
    }

    // The suite is compiled only with the `conformance` feature.
    #[cfg(feature = "conformance")]
    async fn conforms(durability: Durability) {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::builder(dir.path().join("journal.db"))
            .durability(durability)
            .open()
            .await
            .unwrap();
        crate::conformance::run_all(Arc::new(journal)).await;
    }

    #[cfg(feature = "conformance")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conforms_with_power_loss_durability() {
        conforms(Durability::PowerLoss).await;
    }

    #[cfg(feature = "conformance")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conforms_with_process_crash_durability() {
        conforms(Durability::ProcessCrash).await;
    }

    #[tokio::test]
    async fn durability_sets_wal_and_synchronous() {
        let dir = tempfile::tempdir().unwrap();
        for (durability, synchronous) in [(Durability::PowerLoss, 2), (Durability::ProcessCrash, 1)]
        {
            let path = dir.path().join(format!("{durability:?}.db"));
            let journal = SqliteJournal::builder(&path)
                .durability(durability)
                .open()
                .await
                .unwrap();
            let (mode, sync) = journal
                .call(|conn| {
                    let mode: String =
                        conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
                    let sync: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
                    Ok((mode, sync))
                })
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            assert_eq!(sync, synchronous, "{durability:?}");
        }
    }

    #[tokio::test]
    async fn reopening_keeps_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let journal = SqliteJournal::open(&path).await.unwrap();
        let opened = journal
            .open_run(new_run("kept"), request("w", 0, 1_000))
            .await
            .unwrap();
        let lease = opened.lease.unwrap();
        let step = Write::StepRecorded {
            step_id: "a#0".into(),
            seq: 0,
            state: StepState::Completed,
            output: b"out".to_vec(),
            error: None,
            attempts: 1,
            started_at: Timestamp(1),
            at: Timestamp(2),
        };
        journal.write(&lease, step).await.unwrap();
        journal
            .open_run(new_run("open"), request("w", 0, 1_000))
            .await
            .unwrap();
        let before = journal.list_runs(&RunFilter::default()).await.unwrap();
        let kept = journal.load_run("kept").await.unwrap().unwrap();
        drop(journal);

        let journal = SqliteJournal::open(&path).await.unwrap();
        assert_eq!(
            journal.list_runs(&RunFilter::default()).await.unwrap(),
            before
        );
        assert_eq!(journal.load_run("kept").await.unwrap().unwrap(), kept);
        // The old lease still fences: the run's epoch survived the reopen.
        journal.renew(&lease, Timestamp(2_000)).await.unwrap();
        let version: i64 = journal
            .call(|conn| Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    /// A file written by the first version (schema 1) is migrated when
    /// opened: its runs keep their data and gain the lifecycle's columns,
    /// and their steps move to the table that refers to runs by id.
    #[tokio::test]
    async fn a_version_1_file_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(V1).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO resumable_runs (run_key, workflow, fingerprint, input, state, epoch, \
                 wake_at, executions, created_at, updated_at) \
                 VALUES ('old', 'wf', 1, x'01', 'incomplete', 3, 0, 3, 0, 0)",
                [],
            )
            .unwrap();
            // Two steps of the run, recorded out of id order, and one of a
            // run that no longer exists.
            conn.execute_batch(
                "INSERT INTO resumable_steps (run_key, step_id, seq, state, output, attempts, \
                   epoch, started_at, updated_at) VALUES \
                 ('old', 'b#0', 0, 'completed', x'0b', 1, 3, 0, 0), \
                 ('old', 'a#0', 1, 'completed', x'0a', 2, 3, 0, 0), \
                 ('gone', 'a#0', 0, 'completed', x'00', 1, 1, 0, 0);",
            )
            .unwrap();
        }
        let journal = SqliteJournal::open(&path).await.unwrap();
        let snapshot = journal.load_run("old").await.unwrap().unwrap();
        let steps: Vec<_> = snapshot
            .steps
            .iter()
            .map(|s| (s.step_id.as_str(), s.seq, s.output.clone(), s.attempts))
            .collect();
        assert_eq!(
            steps,
            [
                ("b#0", Some(0), Some(vec![0x0b]), 1),
                ("a#0", Some(1), Some(vec![0x0a]), 2)
            ],
            "steps keep their data and their order"
        );
        let left: i64 = journal
            .call(|conn| {
                Ok(conn.query_row("SELECT count(*) FROM resumable_steps", [], |r| r.get(0))?)
            })
            .await
            .unwrap();
        assert_eq!(
            left, 2,
            "the step of a run that no longer exists is not carried over"
        );
        let run = snapshot.run;
        assert_eq!((run.epoch, run.executions, run.failures), (3, 3, 0));
        assert_eq!((run.deadline, run.cancel_requested_at), (None, None));
        let opened = journal
            .open_run(new_run("old"), request("w", 10, 1_000))
            .await
            .unwrap();
        assert_eq!(
            opened.lease.unwrap().epoch,
            4,
            "the old run is leased as before"
        );
        let version: i64 = journal
            .call(|conn| Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        match SqliteJournal::open(&path).await {
            Err(Error::SchemaVersion {
                found: 99,
                supported,
            }) => assert_eq!(supported, SCHEMA_VERSION),
            other => panic!("expected Error::SchemaVersion, got {other:?}"),
        }
        // Refused before anything changed: not even the journal mode.
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
    }

    #[tokio::test]
    async fn non_database_file_is_a_storage_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-db");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let err = SqliteJournal::open(&path).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Storage {
                    backend: "sqlite",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// Two journals on one file behave like two processes: two connections
    /// whose IMMEDIATE transactions serialise `claim_due`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_journals_on_one_file_never_claim_the_same_run() {
        const RUNS: usize = 200;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        let a: Arc<dyn Journal> = Arc::new(SqliteJournal::open(&path).await.unwrap());
        let b: Arc<dyn Journal> = Arc::new(SqliteJournal::open(&path).await.unwrap());
        for i in 0..RUNS {
            // Created with a lease that has already expired at claim time.
            let journal = if i % 2 == 0 { &a } else { &b };
            journal
                .open_run(new_run(&format!("run-{i}")), request("creator", 0, 1))
                .await
                .unwrap();
        }
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..8 {
            let journal = if w % 2 == 0 { a.clone() } else { b.clone() };
            tasks.spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let claimed = journal
                        .claim_due(request(&format!("worker-{w}"), 10, 100_000), 4)
                        .await
                        .unwrap();
                    if claimed.is_empty() {
                        return mine;
                    }
                    mine.extend(claimed.into_iter().map(|(_, lease)| lease));
                }
            });
        }
        let mut seen = HashSet::new();
        while let Some(leases) = tasks.join_next().await {
            for lease in leases.unwrap() {
                assert_eq!(lease.epoch, 2);
                assert!(
                    seen.insert(lease.run_key.clone()),
                    "{} claimed twice",
                    lease.run_key
                );
            }
        }
        assert_eq!(seen.len(), RUNS);
    }

    /// Many concurrent writers share batches; every write must land once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_are_all_committed() {
        const RUNS: usize = 32;
        const STEPS: u64 = 25;
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(
            SqliteJournal::open(dir.path().join("stress.db"))
                .await
                .unwrap(),
        );
        let mut tasks = tokio::task::JoinSet::new();
        for r in 0..RUNS {
            let journal = journal.clone();
            tasks.spawn(async move {
                let key = format!("stress-{r}");
                let opened = journal
                    .open_run(new_run(&key), request("w", 0, 1_000_000))
                    .await
                    .unwrap();
                let lease = opened.lease.unwrap();
                for seq in 0..STEPS {
                    let write = Write::StepRecorded {
                        step_id: format!("s#{seq}"),
                        seq,
                        state: StepState::Completed,
                        output: seq.to_le_bytes().to_vec(),
                        error: None,
                        attempts: 1,
                        started_at: Timestamp(1),
                        at: Timestamp(2),
                    };
                    journal.write(&lease, write).await.unwrap();
                }
                key
            });
        }
        while let Some(key) = tasks.join_next().await {
            let snapshot = journal.load_run(&key.unwrap()).await.unwrap().unwrap();
            assert_eq!(snapshot.steps.len(), STEPS as usize);
            for step in &snapshot.steps {
                assert_eq!(step.output, Some(step.seq.unwrap().to_le_bytes().to_vec()));
            }
        }
    }

    /// A job that fails with an SQL error, for the batch tests.
    fn failing_job() -> (Box<dyn Job>, oneshot::Receiver<Result<()>>) {
        job(|conn: &Connection| {
            conn.execute("INSERT INTO no_such_table VALUES (1)", [])?;
            Ok(())
        })
    }

    fn job<T: Send + 'static>(
        op: impl FnMut(&Connection) -> OpResult<T> + Send + 'static,
    ) -> (Box<dyn Job>, oneshot::Receiver<Result<T>>) {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Call {
            op,
            outcome: None,
            reply,
        });
        (job, answer)
    }

    fn open_job(key: &'static str, now: i64) -> (Box<dyn Job>, oneshot::Receiver<Result<Opened>>) {
        job(move |conn| open_run(conn, &new_run(key), &request("w", now, now + 1_000)))
    }

    #[test]
    fn an_sql_error_fails_only_its_own_request() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&SqliteJournal::builder(dir.path().join("batch.db"))).unwrap();
        let (first, first_answer) = open_job("first", 0);
        let (bad, bad_answer) = failing_job();
        let (second, second_answer) = open_job("second", 0);
        run_batch(&mut conn, vec![first, bad, second], &Counters::default());
        assert!(first_answer.blocking_recv().unwrap().unwrap().created);
        assert!(second_answer.blocking_recv().unwrap().unwrap().created);
        let err = bad_answer.blocking_recv().unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                Error::Storage {
                    backend: "sqlite",
                    ..
                }
            ),
            "{err:?}"
        );
        let (load, loaded) = job(|conn| load_run(conn, "first"));
        run_batch(&mut conn, vec![load], &Counters::default());
        // Once, not twice: the retry re-ran it after the rollback.
        assert_eq!(
            loaded.blocking_recv().unwrap().unwrap().unwrap().run.epoch,
            1
        );
    }

    /// Reads do not wait for the writer: a load and a listing finish while
    /// the writer is busy in a long transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_never_wait_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(
            SqliteJournal::open(dir.path().join("journal.db"))
                .await
                .unwrap(),
        );
        journal
            .open_run(new_run("r"), request("w", 0, 1_000))
            .await
            .unwrap();
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = std::sync::Mutex::new(release_rx);
        let busy = tokio::spawn({
            let journal = journal.clone();
            async move {
                journal
                    .call(move |conn| {
                        // A write in the writer's transaction, held open.
                        conn.execute("UPDATE resumable_runs SET updated_at = 7", [])?;
                        let _ = started_tx.send(());
                        let _ = release_rx.lock().unwrap().recv();
                        Ok(())
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        // The writer holds its transaction until released: these must not wait for it.
        // (Bounded, so that a regression fails instead of hanging.)
        let reads = async {
            let loaded = journal.load_run("r").await.unwrap().unwrap();
            let listed = journal.list_runs(&RunFilter::default()).await.unwrap();
            (loaded, listed)
        };
        let (loaded, listed) = tokio::time::timeout(Duration::from_secs(30), reads)
            .await
            .expect("reads must not wait for the writer");
        assert_eq!(
            loaded.run.updated_at,
            Timestamp(0),
            "the uncommitted write is not seen"
        );
        assert_eq!(listed.len(), 1);
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        let loaded = journal.load_run("r").await.unwrap().unwrap();
        assert_eq!(
            loaded.run.updated_at,
            Timestamp(7),
            "the committed write is seen"
        );
    }

    /// Every statement on a hot or operator path finds its rows through the
    /// index made for it, without statistics (SQLite gathers none unless
    /// asked) and with them, whatever the history holds (5,000 runs of 10
    /// steps, 2 % incomplete; `RESUMABLE_PLAN_RUNS` for more). With `RESUMABLE_PLAN_ANALYZE=1` it prints each plan and how
    /// long the statement took: BENCHMARKS.md keeps that output at a
    /// million runs.
    #[test]
    fn statements_use_indexes_not_scans() {
        let dir = tempfile::tempdir().unwrap();
        let conn = connect(&SqliteJournal::builder(dir.path().join("plans.db"))).unwrap();
        // Some history; statistics come after the first round of checks.
        let runs: u64 = std::env::var("RESUMABLE_PLAN_RUNS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(5_000);
        let analyze = std::env::var_os("RESUMABLE_PLAN_ANALYZE").is_some();
        conn.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {runs})
             INSERT INTO resumable_runs (run_key, workflow, fingerprint, input, state, epoch,
               wake_at, executions, created_at, updated_at)
             SELECT 'run-' || i, 'wf-' || (i % 7), 1, x'00',
               CASE WHEN i % 50 = 0 THEN 'incomplete' ELSE 'completed' END, 1, i, 1, i, i
             FROM n;
             WITH RECURSIVE s(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM s WHERE j < 9)
             INSERT INTO resumable_steps (run_id, step_id, seq, state, output, attempts, epoch,
               started_at, updated_at)
             SELECT id, 'add#' || j, j, 'completed', x'00', 1, 1, id, id FROM resumable_runs, s;",
        ))
        .unwrap();
        let plan = |sql: &str, args: &[Value]| -> String {
            let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = statement
                .query_map(rusqlite::params_from_iter(args), |row| {
                    row.get::<_, String>(3)
                })
                .unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join(" | ")
        };
        let key = || Some("run-100".to_owned());
        let page = Some(100);
        let filters = [
            (
                "list 100 runs",
                RunFilter {
                    limit: page,
                    ..RunFilter::default()
                },
            ),
            (
                "list 100 incomplete runs",
                RunFilter {
                    state: Some(RunState::Incomplete),
                    limit: page,
                    ..RunFilter::default()
                },
            ),
            (
                "list dead letters after a key",
                RunFilter {
                    state: Some(RunState::DeadLettered),
                    after: key(),
                    limit: page,
                    ..RunFilter::default()
                },
            ),
            (
                "list 100 of a workflow's runs after a key",
                RunFilter {
                    workflow: Some("wf-3".into()),
                    after: key(),
                    limit: page,
                    ..RunFilter::default()
                },
            ),
            (
                "a worker's leases",
                RunFilter {
                    lease_owner: Some("worker".into()),
                    ..RunFilter::default()
                },
            ),
            (
                "list 50 runs after a key",
                RunFilter {
                    after: key(),
                    limit: Some(50),
                    ..RunFilter::default()
                },
            ),
            (
                "leased runs",
                RunFilter {
                    state: Some(RunState::Incomplete),
                    leased: true,
                    ..RunFilter::default()
                },
            ),
        ];
        let mut statements: Vec<(&str, String, Vec<Value>)> = filters
            .iter()
            .map(|(label, filter)| {
                let (sql, args) = list_query(filter);
                (*label, sql, args)
            })
            .collect();
        statements.push((
            "claim 16 due runs",
            claim_due_query(0),
            vec![Value::Integer(i64::MAX), Value::Integer(16)],
        ));
        statements.push((
            "claim 16 due runs of two workflows",
            claim_due_query(2),
            vec![
                Value::Integer(i64::MAX),
                Value::Integer(16),
                Value::Text("wf-1".into()),
                Value::Text("wf-2".into()),
            ],
        ));
        statements.push((
            "runs to purge",
            purge_batch_query(),
            vec![Value::Integer(2000), Value::Integer(1000)],
        ));
        statements.push((
            "a run's steps",
            format!(
                "SELECT {STEP_COLUMNS} FROM resumable_steps WHERE run_id = {} ORDER BY rowid",
                run_id!()
            ),
            vec![Value::Text("run-1".into())],
        ));
        statements.push((
            "a run",
            format!("SELECT {RUN_COLUMNS} FROM resumable_runs WHERE run_key = ?1"),
            vec![Value::Text("run-1".into())],
        ));
        // The index each statement must use (`SCAN` alone: the table in id
        // order, stopping at the limit, for a listing without a filter).
        let expected = |label: &str| match label {
            "list 100 runs" => "SCAN resumable_runs",
            "list 100 incomplete runs" | "list dead letters after a key" => "resumable_runs_state",
            "list 100 of a workflow's runs after a key" => "resumable_runs_workflow",
            "a worker's leases" => "resumable_runs_lease_owner",
            "leased runs" => "resumable_runs_leased",
            "list 50 runs after a key" => "INTEGER PRIMARY KEY",
            "claim 16 due runs" | "claim 16 due runs of two workflows" => "resumable_runs_due",
            "runs to purge" => "resumable_runs_finished",
            "a run's steps" => "sqlite_autoindex_resumable_steps_1",
            "a run" => "sqlite_autoindex_resumable_runs_1",
            other => panic!("no expected plan for {other}"),
        };
        for statistics in [false, true] {
            if statistics {
                conn.execute_batch("ANALYZE").unwrap();
            }
            for (label, sql, args) in &statements {
                let plan = plan(sql, args);
                let first = plan.split(" | ").next().unwrap_or_default();
                assert!(
                    first.contains(expected(label)),
                    "{label} (statistics: {statistics}) uses another plan: {plan}"
                );
                if analyze && statistics {
                    let mut statement = conn.prepare(sql).unwrap();
                    let started = std::time::Instant::now();
                    let rows = statement
                        .query_map(rusqlite::params_from_iter(args), |_| Ok(()))
                        .unwrap()
                        .count();
                    let took = started.elapsed();
                    println!("| {label} | {rows} | {took:.1?} | `{plan}` |");
                }
            }
        }
    }

    /// A request that panics fails alone; the writer thread lives on.
    #[test]
    fn a_panicking_request_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&SqliteJournal::builder(dir.path().join("batch.db"))).unwrap();
        let (first, first_answer) = open_job("first", 0);
        let (bad, bad_answer) = job(|_: &Connection| -> OpResult<()> { panic!("tampered row") });
        let (second, second_answer) = open_job("second", 0);
        run_batch(&mut conn, vec![first, bad, second], &Counters::default());
        assert!(first_answer.blocking_recv().unwrap().unwrap().created);
        assert!(second_answer.blocking_recv().unwrap().unwrap().created);
        let err = bad_answer.blocking_recv().unwrap().unwrap_err();
        assert!(err.to_string().contains("panicked: tampered row"), "{err}");
        let (load, loaded) = job(|conn| load_run(conn, "first"));
        run_batch(&mut conn, vec![load], &Counters::default());
        assert!(loaded.blocking_recv().unwrap().unwrap().is_some());
    }

    /// A run at the last epoch is refused, not wrapped, and the journal
    /// keeps serving other runs.
    #[tokio::test]
    async fn epoch_arithmetic_never_overflows() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(dir.path().join("journal.db"))
            .await
            .unwrap();
        journal
            .open_run(new_run("top"), request("w", 0, 1))
            .await
            .unwrap();
        journal
            .call(|conn| {
                conn.execute(
                    "UPDATE resumable_runs SET epoch = -1 WHERE run_key = 'top'",
                    [],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let err = journal
            .open_run(new_run("top"), request("w", 10, 1_000))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("last epoch"), "{err}");
        let cancel = journal.command("top", Command::Cancel, Timestamp(20)).await;
        assert!(cancel.is_err(), "cancelling must not wrap the epoch either");
        let opened = journal
            .open_run(new_run("other"), request("w", 10, 1_000))
            .await
            .unwrap();
        assert!(opened.lease.is_some(), "other runs are served");
    }

    #[test]
    fn a_refused_write_does_not_affect_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&SqliteJournal::builder(dir.path().join("batch.db"))).unwrap();
        let (open, opened) = open_job("run", 0);
        run_batch(&mut conn, vec![open], &Counters::default());
        let lease = opened.blocking_recv().unwrap().unwrap().lease.unwrap();
        let stale = Lease {
            epoch: 7,
            ..lease.clone()
        };
        let release = Write::Release {
            last_error: Some("stopped".into()),
            wake_at: Timestamp(50),
            failures: 0,
            wake_on_message: None,
            at: Timestamp(5),
        };
        let (refused, refused_answer) = job(move |conn| write(conn, &stale, &release));
        let (other, other_answer) = open_job("other", 0);
        let (renewal, renewed) = job(move |conn| renew(conn, &lease, Timestamp(9_000)));
        run_batch(
            &mut conn,
            vec![refused, other, renewal],
            &Counters::default(),
        );
        assert!(matches!(
            refused_answer.blocking_recv().unwrap(),
            Err(Error::LeaseLost { epoch: 7, .. })
        ));
        assert!(other_answer.blocking_recv().unwrap().unwrap().created);
        assert_eq!(
            renewed.blocking_recv().unwrap().unwrap().expires_at,
            Timestamp(9_000)
        );
    }

    #[tokio::test]
    async fn dropping_the_journal_ends_the_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(dir.path().join("journal.db"))
            .await
            .unwrap();
        let SqliteJournal {
            requests,
            _writer: mut writer,
            ..
        } = journal;
        let thread = writer.0.take().unwrap();
        drop(requests);
        for _ in 0..500 {
            if thread.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            thread.is_finished(),
            "closing the channel must end the writer thread"
        );
        thread.join().unwrap();
    }
}
