//! A journal in PostgreSQL, for many workers on many machines sharing one
//! database. PostgreSQL is the coordinator: runs are claimed with
//! `FOR UPDATE SKIP LOCKED`, every write is fenced by the run's epoch under
//! the run row's lock, and `LISTEN/NOTIFY` wakes idle workers.
//!
//! Connections come from a [deadpool](https://docs.rs/deadpool-postgres)
//! pool of [tokio-postgres](https://docs.rs/tokio-postgres) clients (prepared
//! statements cached per connection). A call that loses its connection is
//! retried on a fresh one until [`reconnect_timeout`]; every operation is
//! written so that a retry after a lost reply has the effect of one call.
//!
//! Lease expiry compares the workers' clocks (as with every journal, times
//! come from the caller), so keep them synchronised (NTP) to well within the
//! lease duration. Fencing does not depend on clocks: a worker whose lease
//! was taken over cannot write, whatever its clock says.
//!
//! [`reconnect_timeout`]: PostgresJournalBuilder::reconnect_timeout

mod listener;
mod schema;
mod sql;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, NoTls, Row};

use self::schema::{check_schema_name, migrate};
use self::sql::Statements;
use super::events::released_due;
use super::{
    Ack, Command, EventSender, Journal, Lease, LeaseRequest, NewMessage, NewRun, Opened, Receive,
    Received, RunFilter, RunRecord, RunSnapshot, RunState, StepRecord, StepState, Subscription,
    Timestamp, Write,
};
use crate::error::{Error, Result};

/// The backend's name in [`Error::Storage`].
const BACKEND: &str = "postgres";

/// A [`Journal`] in a PostgreSQL schema: for workers on many machines.
///
/// Opening it creates the schema and its tables, or upgrades them, with
/// versioned migrations ([`Error::SchemaVersion`] if the schema is newer
/// than this code), and starts a listener connection for wake-ups.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// use resumable::{PostgresJournal, Runtime};
///
/// let journal = PostgresJournal::builder("postgres://postgres@127.0.0.1/app")
///     .schema("workflows")
///     .pool_size(32)
///     .open()
///     .await?;
/// let rt = Runtime::new(journal);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PostgresJournal {
    pool: Pool,
    sql: Statements,
    schema_name: String,
    channel: String,
    events: EventSender,
    reconnect_timeout: Duration,
    step_writes: batch::StepWrites,
    _listener: Option<AbortOnDrop>,
}

/// Settings for a [`PostgresJournal`], from [`PostgresJournal::builder`].
/// Its `Debug` shows the URL without its password.
#[derive(Clone)]
pub struct PostgresJournalBuilder {
    url: String,
    schema: String,
    pool_size: usize,
    application_name: String,
    connect_timeout: Duration,
    reconnect_timeout: Duration,
    notifications: bool,
}

/// One lease of a run's history, from [`PostgresJournal::lease_history`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The run's epoch under this lease.
    pub epoch: u64,
    /// The worker that held it.
    pub owner: String,
    /// When it was granted (the worker's clock).
    pub acquired_at: Timestamp,
    /// When it expired, as last renewed.
    pub expires_at: Timestamp,
    /// When its holder gave it back or finished the run, if it did.
    pub released_at: Option<Timestamp>,
}

/// Runs `$body` (an `async` block using `$client`, a pooled connection)
/// and, if the connection is lost, runs it again on a new one with backoff
/// until the reconnect timeout. `$retry` tells the body whether an earlier
/// attempt may have taken effect with its reply lost.
macro_rules! with_client {
    ($journal:expr, |$client:ident, $retry:ident| $body:expr) => {
        with_client!($journal, $journal.reconnect_timeout, |$client, $retry| {
            $body
        })
    };
    ($journal:expr, $timeout:expr, |$client:ident, $retry:ident| $body:expr) => {{
        let journal: &PostgresJournal = $journal;
        let mut reconnect = Reconnect::new($timeout);
        loop {
            #[allow(unused_variables)]
            let $retry = reconnect.retrying();
            let result = match journal.pool.get().await {
                Ok(conn) => {
                    let $client: &Object = &conn;
                    $body.await
                }
                Err(err) => Err(pool_error(err)),
            };
            if let Some(done) = reconnect.settle(result).await {
                break done;
            }
        }
    }};
}

// After `with_client!`, which it uses.
mod batch;

/// The retry schedule of one call of [`with_client!`].
struct Reconnect {
    deadline: Instant,
    backoff: Duration,
    attempts: u32,
}

impl Reconnect {
    fn new(timeout: Duration) -> Self {
        Reconnect {
            // No deadline to speak of if it overflows (`Duration::MAX`).
            deadline: Instant::now()
                .checked_add(timeout)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400)),
            backoff: Duration::from_millis(20),
            attempts: 0,
        }
    }

    fn retrying(&self) -> bool {
        self.attempts > 0
    }

    /// `Some(result)` to return it, or `None` (after a backoff) to try again.
    async fn settle<T>(&mut self, result: Result<T>) -> Option<Result<T>> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match result {
            Err(err) if is_connection_lost(&err) && !left.is_zero() => {
                tracing::debug!(error = %err, "lost the PostgreSQL connection; retrying on a new one");
                tokio::time::sleep(self.backoff.min(left)).await;
                if Instant::now() >= self.deadline {
                    return Some(Err(err));
                }
                self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
                self.attempts += 1;
                None
            }
            done => Some(done),
        }
    }
}

impl PostgresJournal {
    /// Opens the journal at `url` (`postgres://user:password@host:port/db`,
    /// or `host=… user=…`) in schema `resumable`, with default settings.
    pub async fn open(url: &str) -> Result<Self> {
        Self::builder(url).open().await
    }

    /// Settings for the journal at `url`; finish with
    /// [`open`](PostgresJournalBuilder::open).
    pub fn builder(url: impl Into<String>) -> PostgresJournalBuilder {
        PostgresJournalBuilder {
            url: url.into(),
            schema: "resumable".to_owned(),
            pool_size: 16,
            application_name: "resumable".to_owned(),
            connect_timeout: Duration::from_secs(10),
            reconnect_timeout: Duration::from_secs(30),
            notifications: true,
        }
    }

    /// The schema holding the journal's tables.
    pub fn schema(&self) -> &str {
        &self.schema_name
    }

    /// Every lease `run_key` has had, oldest first: who held each epoch,
    /// from when, and until when. For operators, and for checking that no
    /// two workers ever held a run at once.
    pub async fn lease_history(&self, run_key: &str) -> Result<Vec<LeaseRecord>> {
        with_client!(self, |client, retry| async {
            let rows = query(client, &self.sql.lease_history, &[&run_key]).await?;
            rows.iter()
                .map(|row| {
                    Ok(LeaseRecord {
                        epoch: get::<i64>(row, 0)? as u64,
                        owner: get(row, 1)?,
                        acquired_at: Timestamp(get(row, 2)?),
                        expires_at: Timestamp(get(row, 3)?),
                        released_at: get::<Option<i64>>(row, 4)?.map(Timestamp),
                    })
                })
                .collect()
        })
    }

    async fn load_steps(&self, client: &Object, key: &str) -> Result<Vec<StepRecord>> {
        let rows = query(client, &self.sql.select_steps, &[&key]).await?;
        rows.iter().map(|row| step_from_row(row, 0)).collect()
    }

    /// Takes the lease of an existing run if it is free.
    async fn take_lease(
        &self,
        client: &Object,
        key: &str,
        req: &LeaseRequest,
        token: i64,
    ) -> Result<Option<RunRecord>> {
        let args: [&(dyn ToSql + Sync); 5] = [&key, &req.owner, &req.until.0, &token, &req.now.0];
        let rows = query(client, &self.sql.take_lease, &args).await?;
        rows.first().map(run_from_row).transpose()
    }

    /// The run `key` as `open_run` returns it, if the lease request marked
    /// `token` (an earlier attempt of this call) leased it.
    async fn opened_by(
        &self,
        client: &Object,
        key: &str,
        token: i64,
        req: &LeaseRequest,
    ) -> Result<Option<Opened>> {
        let rows = query(client, &self.sql.run_leased_by_token, &[&key, &token]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let run = run_from_row(row)?;
        // Only an insert takes epoch 1: the earlier attempt created the run.
        let created = run.epoch == 1;
        let steps = self.load_steps(client, key).await?;
        Ok(Some(opened(run, steps, req, created)))
    }

    /// The error for a new run `key` that was neither created nor found:
    /// another process purged it between the two statements.
    fn vanished(key: &str) -> Error {
        Error::storage(
            "postgres",
            format!("run {key:?} was purged while it was being opened; try again"),
        )
    }

    /// Notifies the journal's channel with `payload`.
    async fn notify(&self, client: &Object, payload: &str) -> Result<()> {
        query(
            client,
            "SELECT pg_notify($1, $2)",
            &[&self.channel, &payload],
        )
        .await?;
        Ok(())
    }

    /// Whether `lease` was given back at `at`: a retried `Release` whose
    /// first attempt took effect (and someone may have taken the run since).
    async fn released_at(&self, client: &Object, lease: &Lease, at: Timestamp) -> Result<bool> {
        let epoch = lease.epoch as i64;
        let rows = query(client, &self.sql.released_at, &[&lease.run_key, &epoch]).await?;
        match rows.first() {
            Some(row) => Ok(get::<Option<i64>>(row, 0)? == Some(at.0)),
            None => Ok(false),
        }
    }

    /// Refuses with `LeaseLost` unless `lease` still holds its run; says
    /// whether a cancel is requested.
    async fn fence(&self, client: &Object, lease: &Lease) -> Result<Ack> {
        let epoch = lease.epoch as i64;
        let rows = query(client, &self.sql.fence_holds, &[&lease.run_key, &epoch]).await?;
        match rows.first() {
            Some(row) => Ok(Ack {
                cancel_requested: get(row, 0)?,
            }),
            None => Err(lease_lost(lease)),
        }
    }

    /// Why a step write under a lease that holds changed nothing: the step
    /// is already recorded, or (after a retry) the lost first attempt
    /// recorded it, with `already_done`'s state and output.
    async fn already_recorded(
        &self,
        client: &Object,
        lease: &Lease,
        step_id: &str,
        already_done: Option<(StepState, &[u8])>,
    ) -> Result<()> {
        let rows = query(client, &self.sql.select_step, &[&lease.run_key, &step_id]).await?;
        if let (Some(row), Some((state, output))) = (rows.first(), already_done) {
            let recorded_state = parse_state(row, 0, StepState::parse)?;
            let epoch = get::<i64>(row, 1)? as u64;
            let recorded_output: Option<Vec<u8>> = get(row, 2)?;
            if recorded_state == state
                && epoch == lease.epoch
                && recorded_output.as_deref() == Some(output)
            {
                return Ok(());
            }
        }
        Err(Error::StepAlreadyRecorded {
            run: lease.run_key.clone(),
            step: step_id.to_owned(),
        })
    }

    /// Ends `lease` with `statement` (see `end_lease` in `sql.rs`) and its
    /// own `args`; `due` is the payload to announce unless cancelled. `None`
    /// if the lease no longer held its run.
    async fn end_lease(
        &self,
        client: &Object,
        statement: &str,
        lease: &Lease,
        at: Timestamp,
        due: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Ack>> {
        let epoch = lease.epoch as i64;
        let finished = format!("{}{}", listener::FINISHED, lease.run_key);
        let mut all: Vec<&(dyn ToSql + Sync)> = vec![
            &lease.run_key,
            &epoch,
            &at.0,
            &self.channel,
            &due,
            &finished,
        ];
        all.extend_from_slice(args);
        let row = query_one(client, statement, &all).await?;
        Ok((get::<i64>(&row, 0)? > 0).then(|| Ack {
            cancel_requested: get(&row, 1).unwrap_or(false),
        }))
    }

    async fn write_once(
        &self,
        client: &Object,
        lease: &Lease,
        write: &Write,
        retry: bool,
    ) -> Result<Ack> {
        let key = &lease.run_key;
        let epoch = lease.epoch as i64;
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
            } => {
                let seq = *seq as i64;
                let attempts = attempts_i32(*attempts);
                let done = retry.then_some((*state, output.as_slice()));
                let sql = &self.sql.step_recorded;
                self.write_step(client, lease, step_id, done, move |force| async move {
                    query(
                        client,
                        sql,
                        &[
                            key,
                            &epoch,
                            step_id,
                            &seq,
                            &state.as_str(),
                            output,
                            &attempts,
                            &started_at.0,
                            &at.0,
                            error,
                            force,
                        ],
                    )
                    .await
                })
                .await
            }
            Write::AttemptFailed {
                step_id,
                attempts,
                error,
                retry_at,
                started_at,
                at,
            } => {
                let attempts = attempts_i32(*attempts);
                let retry_at = retry_at.map(|t| t.0);
                let sql = &self.sql.attempt_failed;
                self.write_step(client, lease, step_id, None, move |force| async move {
                    query(
                        client,
                        sql,
                        &[
                            key,
                            &epoch,
                            step_id,
                            &attempts,
                            error,
                            &retry_at,
                            &started_at.0,
                            &at.0,
                            force,
                        ],
                    )
                    .await
                })
                .await
            }
            Write::RunFinished { state, outcome, at } => {
                let finished = format!("{}{key}", listener::FINISHED);
                let args: [&(dyn ToSql + Sync); 2] = [&state.as_str(), outcome];
                let sql = &self.sql.run_finished;
                match self
                    .end_lease(client, sql, lease, *at, &finished, &args)
                    .await?
                {
                    Some(ack) => Ok(ack),
                    None if retry => self.finished_as(client, lease, *state, outcome).await,
                    None => Err(lease_lost(lease)),
                }
            }
            Write::DeadLetter {
                last_error,
                failures,
                at,
            } => {
                let failures = attempts_i32(*failures);
                let args: [&(dyn ToSql + Sync); 2] = [last_error, &failures];
                let sql = &self.sql.dead_letter;
                let finished = format!("{}{key}", listener::FINISHED);
                match self
                    .end_lease(client, sql, lease, *at, &finished, &args)
                    .await?
                {
                    Some(ack) => Ok(ack),
                    None if retry && self.released_at(client, lease, *at).await? => {
                        Ok(Ack::default())
                    }
                    None => Err(lease_lost(lease)),
                }
            }
            Write::StartChild {
                step_id,
                seq,
                output,
                child,
                at,
            } => {
                let seq = *seq as i64;
                let fingerprint = child.fingerprint as i64;
                let deadline = child.deadline.map(|t| t.0);
                let due = format!("{}{}", listener::DUE, at.0);
                let args: [&(dyn ToSql + Sync); 13] = [
                    key,
                    &epoch,
                    step_id,
                    &seq,
                    &child.key,
                    &child.workflow,
                    &fingerprint,
                    &child.input,
                    &at.0,
                    &deadline,
                    output,
                    &self.channel,
                    &due,
                ];
                let rows = query(client, &self.sql.start_child, &args).await?;
                let Some(row) = rows.first() else {
                    return Err(lease_lost(lease));
                };
                let ack = Ack {
                    cancel_requested: get(row, 0)?,
                };
                let already: Option<Vec<u8>> = get(row, 1)?;
                let recorded: bool = get(row, 2)?;
                match already {
                    // This call's lost first attempt recorded it.
                    Some(done) if retry && done == *output => return Ok(ack),
                    Some(_) => {
                        return Err(Error::StepAlreadyRecorded {
                            run: key.clone(),
                            step: step_id.clone(),
                        });
                    }
                    None => {}
                }
                if recorded {
                    return Ok(ack);
                }
                if ack.cancel_requested {
                    // The parent stops at this boundary: no child starts.
                    return Ok(ack);
                }
                Err(Error::RunExists {
                    run: child.key.clone(),
                })
            }
            Write::EventSet { name, value, at } => {
                let args: [&(dyn ToSql + Sync); 5] = [key, &epoch, name, value, &at.0];
                match query(client, &self.sql.set_event, &args).await?.first() {
                    Some(row) => Ok(Ack {
                        cancel_requested: get(row, 0)?,
                    }),
                    None => Err(lease_lost(lease)),
                }
            }
            Write::Pin { fingerprint, at } => {
                let fingerprint = *fingerprint as i64;
                let rows =
                    query(client, &self.sql.pin, &[key, &epoch, &fingerprint, &at.0]).await?;
                match rows.first() {
                    Some(row) => Ok(Ack {
                        cancel_requested: get(row, 0)?,
                    }),
                    None => Err(lease_lost(lease)),
                }
            }
            Write::Release {
                last_error,
                wake_at,
                failures,
                wake_on_message,
                at,
            } => {
                let due = format!("{}{}", listener::DUE, released_due(write).0);
                let failures = attempts_i32(*failures);
                let seen = wake_on_message.map(|n| n.min(i64::MAX as u64) as i64);
                let args: [&(dyn ToSql + Sync); 4] = [last_error, &wake_at.0, &failures, &seen];
                let sql = &self.sql.release;
                match self.end_lease(client, sql, lease, *at, &due, &args).await? {
                    Some(ack) => Ok(ack),
                    None if retry && self.released_at(client, lease, *at).await? => {
                        Ok(Ack::default())
                    }
                    None => Err(lease_lost(lease)),
                }
            }
        }
    }

    /// Runs a step write (`execute(even_if_cancelled)`, returning the rows
    /// it wrote). When it wrote nothing, says why: the fence refused it
    /// (`LeaseLost`), a cancel is requested (then it is written anyway: the
    /// step finished, and the ack stops the run), or the step is already
    /// recorded (by this call's lost first attempt, when `already_done`
    /// matches, which is success).
    async fn write_step<'a, F, Fut>(
        &self,
        client: &Object,
        lease: &Lease,
        step_id: &str,
        already_done: Option<(StepState, &[u8])>,
        execute: F,
    ) -> Result<Ack>
    where
        F: Fn(&'a bool) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Row>>>,
    {
        if !execute(&false).await?.is_empty() {
            return Ok(Ack::default());
        }
        let ack = self.fence(client, lease).await?;
        if ack.cancel_requested && !execute(&true).await?.is_empty() {
            return Ok(ack);
        }
        self.already_recorded(client, lease, step_id, already_done)
            .await
            .map(|()| ack)
    }

    /// Whether the run was already finished under `lease` with `outcome`
    /// (by a first attempt whose reply was lost).
    async fn receive_once(
        &self,
        client: &Object,
        lease: &Lease,
        receive: &Receive,
        retry: bool,
    ) -> Result<Received> {
        let epoch = lease.epoch as i64;
        let seq = receive.seq.min(i64::MAX as u64) as i64;
        let args: [&(dyn ToSql + Sync); 6] = [
            &lease.run_key,
            &epoch,
            &receive.topic,
            &receive.step_id,
            &seq,
            &receive.at.0,
        ];
        let rows = query(client, &self.sql.receive, &args).await?;
        let Some(row) = rows.first() else {
            return Err(lease_lost(lease));
        };
        let ack = Ack {
            cancel_requested: get(row, 0)?,
        };
        let sent = get::<i64>(row, 1)?.max(0) as u64;
        let message: Option<Vec<u8>> = get(row, 2)?;
        let recorded: bool = get(row, 3)?;
        if message.is_none() || recorded {
            if message.is_none() && retry {
                // The lost first attempt may have taken the message.
                if let Some(taken) = self.recorded_receive(client, lease, receive).await? {
                    return Ok(Received {
                        message: Some(taken),
                        sent,
                        ack,
                    });
                }
            }
            return Ok(Received { message, sent, ack });
        }
        // The step is recorded already: by this call's lost first attempt
        // (then that is the message it took), or by another.
        match self.recorded_receive(client, lease, receive).await? {
            Some(taken) if retry => Ok(Received {
                message: Some(taken),
                sent,
                ack,
            }),
            _ => Err(Error::StepAlreadyRecorded {
                run: lease.run_key.clone(),
                step: receive.step_id.clone(),
            }),
        }
    }

    /// The message receive `receive` recorded under `lease`'s epoch, if it did.
    async fn recorded_receive(
        &self,
        client: &Object,
        lease: &Lease,
        receive: &Receive,
    ) -> Result<Option<Vec<u8>>> {
        let rows = query(
            client,
            &self.sql.select_step,
            &[&lease.run_key, &receive.step_id],
        )
        .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let epoch: i64 = get(row, 1)?;
        (epoch as u64 == lease.epoch)
            .then(|| get(row, 2))
            .transpose()
    }

    async fn finished_as(
        &self,
        client: &Object,
        lease: &Lease,
        state: RunState,
        outcome: &[u8],
    ) -> Result<Ack> {
        let rows = query(client, &self.sql.select_run, &[&lease.run_key]).await?;
        let run = rows.first().map(run_from_row).transpose()?;
        match run {
            Some(run) if run.epoch == lease.epoch && run.state == state => {
                match run.outcome.as_deref() == Some(outcome) {
                    true => Ok(Ack::default()),
                    false => Err(lease_lost(lease)),
                }
            }
            // The lost first attempt found a cancel requested.
            Some(run) if run.epoch == lease.epoch && run.state == RunState::Cancelled => Ok(Ack {
                cancel_requested: true,
            }),
            _ => Err(lease_lost(lease)),
        }
    }
}

impl std::fmt::Debug for PostgresJournalBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresJournalBuilder")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_timeout", &self.reconnect_timeout)
            .field("notifications", &self.notifications)
            .finish()
    }
}

impl PostgresJournalBuilder {
    /// The schema holding the journal's tables (default `resumable`): lower-case
    /// letters, digits and `_`, at most 48 bytes. Journals in different
    /// schemas of one database are independent.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most connections the pool opens (default 16), besides the one
    /// listening for notifications.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// The `application_name` of its connections, as `pg_stat_activity`
    /// shows it (default `resumable`), unless the URL sets one.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// How long opening one connection may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a call keeps retrying on new connections after losing its
    /// connection, before failing with [`Error::Storage`] (default 30 s).
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// Whether to listen for notifications (default true). Without them,
    /// completers and waiting clients only poll.
    pub fn notifications(mut self, on: bool) -> Self {
        self.notifications = on;
        self
    }

    /// Connects, creates or migrates the schema, and starts listening.
    ///
    /// Fails with [`Error::InvalidSetting`] for a malformed URL or schema
    /// name, [`Error::SchemaVersion`] if the schema was migrated by a newer
    /// version of this library, and [`Error::Storage`] if the server cannot
    /// be reached.
    pub async fn open(self) -> Result<PostgresJournal> {
        check_schema_name(&self.schema).map_err(|reason| Error::InvalidSetting {
            setting: "PostgreSQL schema name",
            value: self.schema.clone(),
            reason: reason.to_owned(),
        })?;
        let mut config: Config =
            self.url
                .parse()
                .map_err(|err: tokio_postgres::Error| Error::InvalidSetting {
                    setting: "PostgreSQL URL",
                    // A string that did not parse is never echoed: where its
                    // password is cannot be known.
                    value: "(not shown: it may hold a password)".to_owned(),
                    reason: err.to_string(),
                })?;
        if config.get_application_name().is_none() {
            config.application_name(&self.application_name);
        }
        // A silently dead server or network is noticed within about 30 s:
        // by keepalives on an idle connection, and by the user timeout on
        // one waiting for an acknowledgement. What the URL sets wins.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect_timeout);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        if config.get_keepalives_idle() == Config::new().get_keepalives_idle() {
            config
                .keepalives_idle(Duration::from_secs(15))
                .keepalives_interval(Duration::from_secs(5))
                .keepalives_retries(3);
        }
        {
            let (mut client, connection) = config.connect(NoTls).await.map_err(pg_error)?;
            let driver = tokio::spawn(connection);
            let migrated = migrate(&mut client, &self.schema).await;
            drop(client);
            let _ = driver.await;
            migrated?;
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(self.connect_timeout))
            .build()
            .map_err(|err| Error::storage(BACKEND, err))?;
        let channel = listener::channel(&self.schema);
        let events = EventSender::new();
        let mut listener = None;
        if self.notifications {
            let (ready, listening) = tokio::sync::oneshot::channel();
            let task = listener::listen(config, channel.clone(), events.clone(), ready);
            listener = Some(AbortOnDrop(tokio::spawn(task)));
            // So that nothing committed after `open` returns goes unheard.
            if tokio::time::timeout(self.connect_timeout, listening)
                .await
                .is_err()
            {
                tracing::warn!(
                    channel,
                    "not yet listening for notifications; polling until then"
                );
            }
        }
        Ok(PostgresJournal {
            pool,
            sql: Statements::new(&self.schema),
            schema_name: self.schema,
            channel,
            events,
            reconnect_timeout: self.reconnect_timeout,
            step_writes: batch::StepWrites::default(),
            _listener: listener,
        })
    }
}

/// The connection string without its password, for `Debug`: the URL's
/// user info (however many slashes follow the scheme), and every
/// `password` value, in any case, of a query string (up to `&`) or of a
/// `key = value` string (quoted, or up to white space).
fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    let url_form = url_scheme_end(&out);
    if let Some(start) = url_form {
        // The user info ends at the last `@` before the path.
        let authority_end = out[start..].find('/').map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..authority_end].rfind('@')
            && let Some(colon) = out[start..start + at].find(':')
        {
            out.replace_range(start + colon + 1..start + at, "***");
        }
    }
    let mut from = 0;
    loop {
        // ASCII lower-casing keeps every byte where it is.
        let lower = out.to_ascii_lowercase();
        let Some(found) = lower[from..].find("password") else {
            break;
        };
        let mut start = from + found + "password".len();
        let rest = &out[start..];
        let Some(eq) = rest.trim_start().strip_prefix('=') else {
            from = start;
            continue;
        };
        start += rest.len() - eq.len();
        let value = eq.trim_start();
        start += eq.len() - value.len();
        let len = match value.strip_prefix('\'') {
            // Up to the closing quote; `\'` inside is an escaped quote.
            Some(quoted) => {
                let mut end = None;
                let mut escaped = false;
                for (i, c) in quoted.char_indices() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '\'' if !escaped => {
                            end = Some(i + 2);
                            break;
                        }
                        _ => escaped = false,
                    }
                }
                end.unwrap_or(value.len())
            }
            // In a URL's query, `&` ends the value; in `key=value` form only
            // white space does (`&` may be part of the password).
            None => value
                .find(|c: char| (url_form.is_some() && c == '&') || c.is_whitespace())
                .unwrap_or(value.len()),
        };
        out.replace_range(start..start + len, "***");
        from = start + 3;
    }
    out
}

/// Where the authority of a URL-form connection string starts (after
/// `scheme:` and any slashes), if it is one.
fn url_scheme_end(url: &str) -> Option<usize> {
    let colon = url.find(':')?;
    let scheme = &url[..colon];
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+')
    {
        return None;
    }
    let slashes = url[colon + 1..].len() - url[colon + 1..].trim_start_matches('/').len();
    Some(colon + 1 + slashes)
}

/// Aborts the listener task when the journal is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl Journal for PostgresJournal {
    async fn open_run(&self, run: NewRun, req: LeaseRequest) -> Result<Opened> {
        // Marks the lease this call takes, so that a retry after a lost
        // reply finds it instead of taking another.
        let token = fastrand::i64(..);
        let fingerprint = run.fingerprint as i64;
        with_client!(self, |client, retry| async {
            if retry && let Some(found) = self.opened_by(client, &run.key, token, &req).await? {
                return Ok(found);
            }
            let deadline = run.deadline.map(|t| t.0);
            let args: [&(dyn ToSql + Sync); 9] = [
                &run.key,
                &run.workflow,
                &fingerprint,
                &run.input,
                &req.owner,
                &req.until.0,
                &token,
                &req.now.0,
                &deadline,
            ];
            if let Some(row) = query(client, &self.sql.insert_run, &args).await?.first() {
                return Ok(opened(run_from_row(row)?, Vec::new(), &req, true));
            }
            if let Some(taken) = self.take_lease(client, &run.key, &req, token).await? {
                let steps = self.load_steps(client, &run.key).await?;
                return Ok(opened(taken, steps, &req, false));
            }
            // A lost first attempt may still have been running when this one
            // looked; having waited for the row's lock, it is visible now.
            if retry && let Some(found) = self.opened_by(client, &run.key, token, &req).await? {
                return Ok(found);
            }
            let rows = query(client, &self.sql.select_run, &[&run.key]).await?;
            let Some(row) = rows.first() else {
                return Err(Self::vanished(&run.key));
            };
            Ok(Opened {
                snapshot: RunSnapshot {
                    run: run_from_row(row)?,
                    steps: Vec::new(),
                },
                lease: None,
                created: false,
            })
        })
    }

    async fn claim_due(
        &self,
        req: LeaseRequest,
        limit: usize,
    ) -> Result<Vec<(RunSnapshot, Lease)>> {
        let token = fastrand::i64(..);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        with_client!(self, |client, retry| async {
            let mut rows = Vec::new();
            if retry {
                rows = query(client, &self.sql.leased_by_token, &[&token]).await?;
            }
            if rows.is_empty() {
                let args: [&(dyn ToSql + Sync); 6] = [
                    &req.now.0,
                    &req.owner,
                    &req.until.0,
                    &token,
                    &limit,
                    &req.workflows,
                ];
                rows = query(client, &self.sql.claim, &args).await?;
            }
            // A run whose rows cannot be read is set aside, alone.
            let mut unreadable: Vec<(String, Error)> = Vec::new();
            let mut runs = Vec::with_capacity(rows.len());
            for row in &rows {
                match run_from_row(row) {
                    Ok(run) => runs.push(run),
                    Err(err) => unreadable.push((get(row, 0)?, err)),
                }
            }
            let keys: Vec<&str> = runs.iter().map(|r| r.key.as_str()).collect();
            let mut steps: HashMap<String, Vec<StepRecord>> = HashMap::new();
            if !keys.is_empty() {
                for row in query(client, &self.sql.select_steps_of, &[&keys]).await? {
                    let key: String = get(&row, 0)?;
                    match step_from_row(&row, 1) {
                        Ok(step) => steps.entry(key).or_default().push(step),
                        Err(err) => unreadable.push((key, err)),
                    }
                }
            }
            for (key, err) in &unreadable {
                tracing::error!(run = %crate::error::Escaped(key), error = %err, "a run's rows cannot be read; dead-lettered");
                let last_error = super::unreadable(key, err);
                query(client, &self.sql.set_aside, &[key, &last_error]).await?;
            }
            Ok(runs
                .into_iter()
                .filter(|run| !unreadable.iter().any(|(key, _)| *key == run.key))
                .map(|run| {
                    let lease = lease_of(&run, &req);
                    let steps = steps.remove(&run.key).unwrap_or_default();
                    (RunSnapshot { run, steps }, lease)
                })
                .collect())
        })
    }

    async fn create_run(&self, run: NewRun, now: Timestamp) -> Result<(RunRecord, bool)> {
        let fingerprint = run.fingerprint as i64;
        let deadline = run.deadline.map(|t| t.0);
        let due = format!("{}{}", listener::DUE, now.0);
        with_client!(self, |client, retry| async {
            let args: [&(dyn ToSql + Sync); 6] = [
                &run.key,
                &run.workflow,
                &fingerprint,
                &run.input,
                &now.0,
                &deadline,
            ];
            if let Some(row) = query(client, &self.sql.create_run, &args).await?.first() {
                self.notify(client, &due).await?;
                return Ok((run_from_row(row)?, true));
            }
            match query(client, &self.sql.select_run, &[&run.key])
                .await?
                .first()
            {
                Some(row) => Ok((run_from_row(row)?, false)),
                None => Err(Self::vanished(&run.key)),
            }
        })
    }

    async fn write(&self, lease: &Lease, write: Write) -> Result<Ack> {
        if let Write::StepRecorded { .. } = write {
            return self.record_step(lease, write).await;
        }
        with_client!(self, |client, retry| self
            .write_once(client, lease, &write, retry))
    }

    async fn release_leases(
        &self,
        leases: &[Lease],
        last_error: &str,
        at: Timestamp,
    ) -> Result<usize> {
        if leases.is_empty() {
            return Ok(0);
        }
        let keys: Vec<&str> = leases.iter().map(|l| l.run_key.as_str()).collect();
        let epochs: Vec<i64> = leases.iter().map(|l| l.epoch as i64).collect();
        let due = format!("{}{}", listener::DUE, at.0);
        with_client!(self, |client, retry| async {
            let args: [&(dyn ToSql + Sync); 7] = [
                &keys,
                &epochs,
                &last_error,
                &at.0,
                &self.channel,
                &due,
                &listener::FINISHED,
            ];
            Ok(query(client, &self.sql.release_many, &args).await?.len())
        })
    }

    async fn command(
        &self,
        key: &str,
        command: Command,
        now: Timestamp,
    ) -> Result<Option<(RunRecord, bool)>> {
        let (sql, payload) = match command {
            Command::Cancel => (&self.sql.cancel, format!("{}{key}", listener::FINISHED)),
            Command::Resume => (&self.sql.resume, format!("{}{}", listener::DUE, now.0)),
            Command::RetryNow => (&self.sql.retry_now, format!("{}{}", listener::DUE, now.0)),
        };
        with_client!(self, |client, retry| async {
            let row = query_one(client, sql, &[&key, &now.0, &self.channel, &payload]).await?;
            let changed = get::<i64>(&row, 0)? > 0;
            let rows = query(client, &self.sql.select_run, &[&key]).await?;
            Ok(rows
                .first()
                .map(run_from_row)
                .transpose()?
                .map(|run| (run, changed)))
        })
    }

    async fn fork_run(
        &self,
        source: &str,
        new_key: &str,
        steps: u64,
        now: Timestamp,
    ) -> Result<RunRecord> {
        let below = steps.min(i64::MAX as u64) as i64;
        let due = format!("{}{}", listener::DUE, now.0);
        with_client!(self, |client, retry| async {
            let args: [&(dyn ToSql + Sync); 6] =
                [&source, &new_key, &below, &now.0, &self.channel, &due];
            query(client, &self.sql.fork, &args).await?;
            if let Some(row) = query(client, &self.sql.select_run, &[&new_key])
                .await?
                .first()
            {
                let run = run_from_row(row)?;
                return match run.forked_from.as_deref() == Some(source) {
                    true => Ok(run),
                    false => Err(Error::RunExists {
                        run: new_key.to_owned(),
                    }),
                };
            }
            if query(client, &self.sql.select_run, &[&source])
                .await?
                .is_empty()
            {
                return Err(Error::UnknownRun {
                    run: source.to_owned(),
                });
            }
            Err(Self::vanished(new_key))
        })
    }

    async fn purge(&self, before: Timestamp, limit: usize) -> Result<usize> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        with_client!(self, |client, retry| async {
            let row = query_one(client, &self.sql.purge, &[&before.0, &limit]).await?;
            Ok(get::<i64>(&row, 0)?.max(0) as usize)
        })
    }

    async fn renew(&self, lease: &Lease, until: Timestamp) -> Result<Lease> {
        let epoch = lease.epoch as i64;
        // Retrying past the lease's expiry is pointless: the heartbeat must
        // learn in time that the run may have been taken over.
        let left = Duration::from_millis(
            lease.expires_at.0.saturating_sub(Timestamp::now().0).max(0) as u64,
        );
        with_client!(
            self,
            self.reconnect_timeout.min(left),
            |client, retry| async {
                let row =
                    query_one(client, &self.sql.renew, &[&lease.run_key, &epoch, &until.0]).await?;
                if get::<i64>(&row, 0)? == 0 {
                    return Err(lease_lost(lease));
                }
                Ok(Lease {
                    expires_at: until,
                    ..lease.clone()
                })
            }
        )
    }

    async fn load_run(&self, key: &str) -> Result<Option<RunSnapshot>> {
        with_client!(self, |client, retry| async {
            let rows = query(client, &self.sql.select_run, &[&key]).await?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let read = async {
                let run = run_from_row(row)?;
                let steps = self.load_steps(client, key).await?;
                Ok(Some(RunSnapshot { run, steps }))
            };
            read.await.map_err(|err: Error| match err {
                err if is_connection_lost(&err) => err,
                Error::Storage { source, .. } => {
                    Error::storage(BACKEND, super::unreadable(key, &source))
                }
                err => err,
            })
        })
    }

    async fn send_message(&self, message: NewMessage) -> Result<bool> {
        let NewMessage {
            run_key,
            topic,
            value,
            idempotency_key,
            at,
        } = &message;
        let payload = format!("{}{run_key}", listener::MESSAGE);
        let due = format!("{}{}", listener::DUE, at.0);
        let row = with_client!(self, |client, retry| async {
            let args: [&(dyn ToSql + Sync); 8] = [
                run_key,
                topic,
                idempotency_key,
                value,
                &at.0,
                &self.channel,
                &payload,
                &due,
            ];
            query_one(client, &self.sql.send_message, &args).await
        })?;
        if get::<i64>(&row, 0)? == 0 {
            return Err(Error::UnknownRun {
                run: run_key.clone(),
            });
        }
        Ok(get::<i64>(&row, 1)? > 0)
    }

    async fn receive(&self, lease: &Lease, receive: Receive) -> Result<Received> {
        with_client!(self, |client, retry| self
            .receive_once(client, lease, &receive, retry))
    }

    async fn get_event(&self, key: &str, name: &str) -> Result<Option<Vec<u8>>> {
        with_client!(self, |client, retry| async {
            let rows = query(client, &self.sql.get_event, &[&key, &name]).await?;
            rows.first().map(|row| get(row, 0)).transpose()
        })
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let limit = filter
            .limit
            .map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let sql = self.sql.list_runs(filter);
        let before = filter.created_before.map(|t| t.0);
        let after = filter.created_after.map(|t| t.0);
        with_client!(self, |client, retry| async {
            let mut args: Vec<&(dyn ToSql + Sync)> = Vec::new();
            if let Some(parent) = &filter.parent {
                args.push(parent);
            }
            if let Some(workflow) = &filter.workflow {
                args.push(workflow);
            }
            if let Some(owner) = &filter.lease_owner {
                args.push(owner);
            }
            if let Some(before) = &before {
                args.push(before);
            }
            if let Some(after) = &after {
                args.push(after);
            }
            if let Some(key) = &filter.after {
                args.push(key);
            }
            args.push(&limit);
            let rows = query(client, &sql, &args).await?;
            rows.iter().map(run_from_row).collect()
        })
    }

    fn subscribe(&self) -> Option<Subscription> {
        self._listener.as_ref().map(|_| self.events.subscribe())
    }
}

// ---- rows and errors ----

async fn query(client: &Object, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
    let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.query(&stmt, args).await.map_err(pg_error)
}

async fn query_one(client: &Object, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Row> {
    let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.query_one(&stmt, args).await.map_err(pg_error)
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T> {
    row.try_get(idx).map_err(pg_error)
}

fn parse_state<T>(row: &Row, idx: usize, parse: fn(&str) -> Option<T>) -> Result<T> {
    let text: String = get(row, idx)?;
    parse(&text)
        .ok_or_else(|| Error::storage(BACKEND, format!("unknown state {text:?} in the journal")))
}

/// Attempt counts are stored as `INTEGER`.
fn attempts_i32(attempts: u32) -> i32 {
    i32::try_from(attempts).unwrap_or(i32::MAX)
}

fn lease_of(run: &RunRecord, req: &LeaseRequest) -> Lease {
    Lease {
        run_key: run.key.clone(),
        owner: req.owner.clone(),
        epoch: run.epoch,
        expires_at: req.until,
    }
}

/// What `open_run` returns for a run it leased.
fn opened(run: RunRecord, steps: Vec<StepRecord>, req: &LeaseRequest, created: bool) -> Opened {
    let lease = lease_of(&run, req);
    Opened {
        snapshot: RunSnapshot { run, steps },
        lease: Some(lease),
        created,
    }
}

fn lease_lost(lease: &Lease) -> Error {
    Error::LeaseLost {
        run: lease.run_key.clone(),
        epoch: lease.epoch,
    }
}

// u64 values (fingerprint, epoch, seq) are stored as BIGINT with the same bits.

fn run_from_row(row: &Row) -> Result<RunRecord> {
    Ok(RunRecord {
        key: get(row, 0)?,
        workflow: get(row, 1)?,
        fingerprint: get::<i64>(row, 2)? as u64,
        input: get(row, 3)?,
        state: parse_state(row, 4, RunState::parse)?,
        outcome: get(row, 5)?,
        epoch: get::<i64>(row, 6)? as u64,
        lease_owner: get(row, 7)?,
        lease_expires_at: get::<Option<i64>>(row, 8)?.map(Timestamp),
        wake_at: Timestamp(get(row, 9)?),
        executions: get::<i32>(row, 10)?.max(0) as u32,
        last_error: get(row, 11)?,
        created_at: Timestamp(get(row, 12)?),
        updated_at: Timestamp(get(row, 13)?),
        deadline: get::<Option<i64>>(row, 14)?.map(Timestamp),
        cancel_requested_at: get::<Option<i64>>(row, 15)?.map(Timestamp),
        failures: get::<i32>(row, 16)?.max(0) as u32,
        resumed_at: get::<Option<i64>>(row, 17)?.map(Timestamp),
        forked_from: get(row, 18)?,
        parent: get(row, 19)?,
    })
}

/// A step from `row`, whose step columns start at `first`.
fn step_from_row(row: &Row, first: usize) -> Result<StepRecord> {
    let c = |i: usize| first + i;
    Ok(StepRecord {
        step_id: get(row, c(0))?,
        seq: get::<Option<i64>>(row, c(1))?.map(|s| s as u64),
        state: parse_state(row, c(2), StepState::parse)?,
        output: get(row, c(3))?,
        attempts: get::<i32>(row, c(4))?.max(0) as u32,
        last_error: get(row, c(5))?,
        retry_at: get::<Option<i64>>(row, c(6))?.map(Timestamp),
        epoch: get::<i64>(row, c(7))? as u64,
        started_at: Timestamp(get(row, c(8))?),
        updated_at: Timestamp(get(row, c(9))?),
    })
}

fn pg_error(err: tokio_postgres::Error) -> Error {
    Error::storage(BACKEND, PgError(err))
}

/// A driver error whose message includes the server's (tokio-postgres says
/// only "db error").
#[derive(Debug)]
struct PgError(tokio_postgres::Error);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(
                f,
                "{} {}: {}",
                db.severity(),
                db.code().code(),
                db.message()
            ),
            None => self.0.fmt(f),
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The pool could not hand out a connection now (timed out, or the server
/// is unreachable): worth retrying.
#[derive(Debug, thiserror::Error)]
#[error("no PostgreSQL connection available: {0}")]
struct Unavailable(String);

fn pool_error(err: PoolError) -> Error {
    match err {
        PoolError::Backend(err) => pg_error(err),
        PoolError::Timeout(_) => Error::storage(BACKEND, Unavailable(err.to_string())),
        other => Error::storage(BACKEND, other),
    }
}

/// Whether `err` says the connection (not the statement) failed: retrying
/// on a new connection may succeed.
fn is_connection_lost(err: &Error) -> bool {
    let Error::Storage { source, .. } = err else {
        return false;
    };
    if source.is::<Unavailable>() {
        return true;
    }
    let Some(PgError(err)) = source.downcast_ref::<PgError>() else {
        return false;
    };
    if err.is_closed() {
        return true;
    }
    match err.code() {
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::T_R_DEADLOCK_DETECTED,
                ]
                .contains(code)
        }
        // No SQL state: the socket failed, or connecting did.
        None => std::error::Error::source(err).is_some_and(|cause| cause.is::<std::io::Error>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "conformance")]
    mod server {
        use std::sync::Arc;

        use super::super::schema::SCHEMA_VERSION;
        use super::*;
        use crate::conformance::postgres::TestSchema;

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conforms() {
            let Some(schema) = TestSchema::new("postgres::conforms") else {
                return;
            };
            crate::conformance::run_all(Arc::new(schema.journal().await)).await;
        }

        /// Renewing a lease, the most frequent change to a run row, touches
        /// no indexed column: PostgreSQL makes it a HOT update (no new index
        /// entries, and the page's free space reused without a vacuum).
        #[tokio::test]
        async fn lease_renewals_are_hot_updates() {
            let Some(schema) = TestSchema::new("postgres::hot") else {
                return;
            };
            let journal = schema.journal().await;
            let new = NewRun {
                key: "r".to_owned(),
                workflow: "w".to_owned(),
                fingerprint: 7,
                input: vec![1],
                deadline: None,
            };
            let request = LeaseRequest::new("worker", Duration::from_secs(60));
            let mut lease = journal.open_run(new, request).await.unwrap().lease.unwrap();
            const RENEWALS: i64 = 20;
            for _ in 0..RENEWALS {
                let until = Timestamp(lease.expires_at.0 + 1_000);
                lease = journal.renew(&lease, until).await.unwrap();
            }
            // Its connections close, and with them report their statistics.
            drop(journal);
            let client = schema.connect().await;
            let sql = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
                       WHERE schemaname = $1 AND relname = 'resumable_runs'";
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let (updates, hot) = loop {
                client
                    .batch_execute("SELECT pg_stat_clear_snapshot()")
                    .await
                    .unwrap();
                let row = client.query_one(sql, &[&schema.name()]).await.unwrap();
                let (updates, hot): (i64, i64) = (row.get(0), row.get(1));
                if updates >= RENEWALS || std::time::Instant::now() > deadline {
                    break (updates, hot);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(updates, RENEWALS, "the renewals, and no other update");
            assert_eq!(hot, RENEWALS, "every renewal a HOT update");
        }

        /// Steps written at once share a statement, and each is still
        /// fenced and refused on its own.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn steps_written_together_are_batched_and_fenced_each() {
            let Some(schema) = TestSchema::new("postgres::batched_steps") else {
                return;
            };
            let journal = schema.journal().await;
            let mut leases = Vec::new();
            for run in ["r0", "r1", "r2", "r3"] {
                let new = NewRun {
                    key: run.to_owned(),
                    workflow: "w".to_owned(),
                    fingerprint: 7,
                    input: vec![1],
                    deadline: None,
                };
                let request = LeaseRequest::new("worker", Duration::from_secs(60));
                let opened = journal.open_run(new, request).await.unwrap();
                leases.push(opened.lease.unwrap());
            }
            let step = |id: &str, seq: u64, output: u8| Write::StepRecorded {
                step_id: id.to_owned(),
                seq,
                state: StepState::Completed,
                output: vec![output],
                error: None,
                attempts: 1,
                started_at: Timestamp(1),
                at: Timestamp(2),
            };
            journal.write(&leases[2], step("a#0", 0, 9)).await.unwrap();
            let stale = Lease {
                epoch: leases[3].epoch + 1,
                ..leases[3].clone()
            };
            let writes = [
                (&leases[0], step("a#0", 0, 1)),
                (&leases[1], step("a#0", 0, 2)),
                (&leases[2], step("a#0", 1, 3)),
                (&stale, step("a#0", 0, 4)),
                (&leases[0], step("b#0", 1, 5)),
                (&leases[1], step("b#0", 1, 6)),
            ];
            let results = futures_util::future::join_all(
                writes
                    .into_iter()
                    .map(|(lease, write)| journal.write(lease, write)),
            )
            .await;
            assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
            assert!(
                matches!(results[2], Err(Error::StepAlreadyRecorded { .. })),
                "{results:?}"
            );
            assert!(
                matches!(results[3], Err(Error::LeaseLost { .. })),
                "{results:?}"
            );
            assert!(results[4].is_ok() && results[5].is_ok(), "{results:?}");
            let outputs = |snapshot: RunSnapshot| -> Vec<(String, Vec<u8>)> {
                snapshot
                    .steps
                    .into_iter()
                    .map(|s| (s.step_id, s.output.unwrap()))
                    .collect()
            };
            let loaded = |key: &'static str| journal.load_run(key);
            assert_eq!(
                outputs(loaded("r0").await.unwrap().unwrap()),
                [("a#0".to_owned(), vec![1]), ("b#0".to_owned(), vec![5])]
            );
            assert_eq!(
                outputs(loaded("r2").await.unwrap().unwrap()),
                [("a#0".to_owned(), vec![9])]
            );
            assert!(loaded("r3").await.unwrap().unwrap().steps.is_empty());
            assert!(
                journal.step_writes.batches() > 0,
                "the writes that queued behind the first should have shared a statement"
            );
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn workers_starting_together_migrate_once() {
            let Some(schema) = TestSchema::new("postgres::migrate_once") else {
                return;
            };
            let opens = (0..4).map(|_| schema.journal());
            let journals = futures_util::future::join_all(opens).await;
            let client = schema.connect().await;
            let versions: Vec<i64> = client
                .query(
                    &format!(
                        "SELECT version FROM \"{}\".resumable_migrations",
                        schema.name()
                    ),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect();
            assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
            drop(journals);
        }

        /// A schema at version 2 moves its steps and lease history to the
        /// tables that refer to runs by id, keeping their data and dropping
        /// only rows whose run no longer exists.
        #[tokio::test]
        async fn a_version_2_schema_is_migrated() {
            let Some(schema) = TestSchema::new("postgres::v2") else {
                return;
            };
            let mut client = schema.connect().await;
            super::super::schema::migrate_to(&mut client, schema.name(), 2)
                .await
                .unwrap();
            let s = schema.name();
            client
                .batch_execute(&format!(
                    "INSERT INTO \"{s}\".resumable_runs (run_key, workflow, fingerprint, input,
                       state, epoch, wake_at, executions, created_at, updated_at)
                     VALUES ('other', 'wf', 1, '\\x01', 'completed', 1, 0, 1, 0, 0),
                       ('old', 'wf', 1, '\\x01', 'incomplete', 3, 0, 3, 0, 0);
                     INSERT INTO \"{s}\".resumable_steps (run_key, step_id, seq, state, output,
                       attempts, epoch, started_at, updated_at)
                     VALUES ('old', 'b#0', 0, 'completed', '\\x0b', 1, 3, 0, 0),
                       ('old', 'a#0', 1, 'completed', '\\x0a', 2, 3, 0, 0),
                       ('gone', 'a#0', 0, 'completed', '\\x00', 1, 1, 0, 0);
                     INSERT INTO \"{s}\".resumable_leases (run_key, epoch, owner, acquired_at,
                       expires_at, released_at)
                     VALUES ('old', 3, 'w0', 5, 6, 7), ('gone', 1, 'w0', 1, 2, 3);"
                ))
                .await
                .unwrap();
            let journal = schema.journal().await;
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
                ]
            );
            assert!(
                journal
                    .load_run("other")
                    .await
                    .unwrap()
                    .unwrap()
                    .steps
                    .is_empty()
            );
            let left: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM \"{s}\".resumable_steps"),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                left, 2,
                "the step of a run that no longer exists is not carried over"
            );
            // The run goes on under its old epoch's successor.
            let request = LeaseRequest::new("w", std::time::Duration::from_secs(60));
            let claimed = journal.claim_due(request, 10).await.unwrap();
            assert_eq!(claimed.len(), 1);
            assert_eq!((claimed[0].1.epoch, claimed[0].0.steps.len()), (4, 2));
            let history: Vec<_> = journal
                .lease_history("old")
                .await
                .unwrap()
                .into_iter()
                .map(|l| (l.epoch, l.owner))
                .collect();
            assert_eq!(history, [(3, "w0".to_owned()), (4, "w".to_owned())]);
        }

        #[tokio::test]
        async fn newer_schema_is_refused_before_anything_changes() {
            let Some(schema) = TestSchema::new("postgres::newer_schema") else {
                return;
            };
            drop(schema.journal().await);
            let client = schema.connect().await;
            let table = format!("\"{}\".resumable_migrations", schema.name());
            client
                .execute(
                    &format!("INSERT INTO {table} (version, description) VALUES (99, 'future')"),
                    &[],
                )
                .await
                .unwrap();
            match schema.builder().open().await {
                Err(Error::SchemaVersion {
                    found: 99,
                    supported,
                }) => {
                    assert_eq!(supported, SCHEMA_VERSION)
                }
                other => panic!("expected Error::SchemaVersion, got {other:?}"),
            }
            let count: i64 = client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(count, SCHEMA_VERSION + 1);
        }

        /// Every statement on a hot or operator path finds its rows through
        /// an index, in custom and in generic plans, on a schema holding
        /// 100,000 runs (a million steps; `RESUMABLE_PLAN_RUNS` for more),
        /// 1 % of them incomplete, whose statistics were never gathered
        /// (this server runs without autovacuum). With
        /// `RESUMABLE_PLAN_ANALYZE=1` it also executes each plan
        /// (`EXPLAIN ANALYZE`, rolled back) and prints what it did and how
        /// long it took: BENCHMARKS.md keeps that output at a million runs.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn plans_use_indexes_without_fresh_statistics() {
            let Some(schema) = TestSchema::new("postgres::plans") else {
                return;
            };
            let journal = schema.journal().await;
            let client = schema.connect().await;
            let s = schema.name();
            let runs: u64 = std::env::var("RESUMABLE_PLAN_RUNS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(100_000);
            let analyze = std::env::var_os("RESUMABLE_PLAN_ANALYZE").is_some();
            client
                .batch_execute(&format!(
                    "INSERT INTO \"{s}\".resumable_runs (run_key, workflow, fingerprint, input,
                       state, outcome, epoch, wake_at, executions, created_at, updated_at)
                     SELECT 'run-' || i, 'wf-' || (i % 7), 1, '\\x00',
                       CASE WHEN i % 100 = 0 THEN 'incomplete' ELSE 'completed' END,
                       '\\x00', 1, i, 1, i, i
                     FROM generate_series(1, {runs}) AS i;
                     INSERT INTO \"{s}\".resumable_steps (run_id, step_id, seq, state, output,
                       attempts, epoch, started_at, updated_at)
                     SELECT r.id, 'add#' || j, j, 'completed', '\\x00', 1, 1, r.id, r.id
                     FROM \"{s}\".resumable_runs r, generate_series(0, 9) AS j;"
                ))
                .await
                .unwrap();
            let sql = &journal.sql;
            let filter = |f: RunFilter| sql.list_runs(&f);
            // Each statement, with one literal per parameter.
            let statements: Vec<(&str, String, Vec<&str>)> = vec![
                (
                    "claim 16 due runs",
                    sql.claim.clone(),
                    vec!["9000000000", "w", "9000000060", "1", "16", "{wf-1,wf-2}"],
                ),
                (
                    "the claimed runs' steps",
                    sql.select_steps_of.clone(),
                    vec!["{run-100,run-200}"],
                ),
                ("a run's steps", sql.select_steps.clone(), vec!["run-100"]),
                ("a run", sql.select_run.clone(), vec!["run-100"]),
                ("purge 1,000 runs", sql.purge.clone(), vec!["2000", "1000"]),
                (
                    "record a step",
                    sql.step_recorded.clone(),
                    vec![
                        "run-100",
                        "1",
                        "s#0",
                        "0",
                        "completed",
                        "\\x00",
                        "1",
                        "0",
                        "0",
                        "",
                        "false",
                    ],
                ),
                (
                    "list 100 incomplete runs",
                    filter(RunFilter {
                        state: Some(RunState::Incomplete),
                        limit: Some(100),
                        ..RunFilter::default()
                    }),
                    vec!["100"],
                ),
                (
                    "list 100 of a workflow's runs after a key",
                    filter(RunFilter {
                        workflow: Some("wf-3".into()),
                        after: Some("run-500".into()),
                        limit: Some(100),
                        ..RunFilter::default()
                    }),
                    vec!["wf-3", "run-500", "100"],
                ),
                (
                    "a worker's leases",
                    filter(RunFilter {
                        state: Some(RunState::Incomplete),
                        lease_owner: Some("w".into()),
                        ..RunFilter::default()
                    }),
                    vec!["w", "9223372036854775807"],
                ),
                (
                    "leased runs",
                    filter(RunFilter {
                        state: Some(RunState::Incomplete),
                        leased: true,
                        ..RunFilter::default()
                    }),
                    vec!["9223372036854775807"],
                ),
            ];
            for (i, (label, statement, args)) in statements.iter().enumerate() {
                let statement = statement.replace("{s}", s);
                client
                    .batch_execute(&format!("PREPARE p{i} AS {statement}"))
                    .await
                    .unwrap_or_else(|e| panic!("{statement}: {e}"));
                let args: Vec<String> = args
                    .iter()
                    .map(|a| format!("'{}'", a.replace('\'', "''")))
                    .collect();
                for mode in ["force_custom_plan", "force_generic_plan"] {
                    let explain = format!(
                        "SET plan_cache_mode = {mode}; EXPLAIN EXECUTE p{i}({})",
                        args.join(", ")
                    );
                    let plan = first_column(&client, &explain).await.join("\n");
                    // (The lease history is a few rows here: a scan is right.)
                    assert!(
                        !plan.contains("Seq Scan on resumable_runs")
                            && !plan.contains("Seq Scan on resumable_steps"),
                        "{mode} of {statement}\n{plan}"
                    );
                    if analyze {
                        let analyzed = explain_analyze(&client, i, mode, &args).await;
                        println!("| {label} | {} | {analyzed} |", &mode[6..]);
                    }
                }
            }
        }

        /// The first column of every row `sql` (simple statements) returns.
        async fn first_column(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
            client
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                })
                .collect()
        }

        /// Executes prepared statement `p{i}` under `EXPLAIN ANALYZE` in a
        /// transaction rolled back: its execution time, and the scans it made.
        async fn explain_analyze(
            client: &tokio_postgres::Client,
            i: usize,
            mode: &str,
            args: &[String],
        ) -> String {
            let explain = format!(
                "BEGIN; SET LOCAL plan_cache_mode = {mode}; \
                 EXPLAIN (ANALYZE, TIMING OFF) EXECUTE p{i}({}); ROLLBACK",
                args.join(", ")
            );
            let lines = first_column(client, &explain).await;
            let time = lines
                .iter()
                .find_map(|l| l.trim().strip_prefix("Execution Time: "))
                .unwrap_or("?");
            let mut scans: Vec<String> = lines
                .iter()
                .filter(|l| l.contains(" on resumable_"))
                .map(|l| {
                    let l = l.trim().trim_start_matches("-> ");
                    l.split("  (").next().unwrap_or(l).to_owned()
                })
                .collect();
            scans.dedup();
            format!("{time} | {}", scans.join("; "))
        }

        #[tokio::test]
        async fn bad_settings_are_typed_errors() {
            let Some(schema) = TestSchema::new("postgres::bad_settings") else {
                return;
            };
            let err = schema
                .builder()
                .schema("Bad-Name")
                .open()
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Error::InvalidSetting { value, .. } if value == "Bad-Name"),
                "{err:?}"
            );
            let err = PostgresJournal::open("postgres://u:pw@127.0.0.1:5432/db?sslmode=bogus")
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Error::InvalidSetting { value, .. } if !value.contains("pw")),
                "{err:?}"
            );
            // Nothing listens on port 1: a storage error, not a hang or a panic.
            let err = PostgresJournal::builder("postgres://postgres@127.0.0.1:1/test")
                .connect_timeout(Duration::from_secs(2))
                .open()
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Storage {
                        backend: "postgres",
                        ..
                    }
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn urls_in_errors_hide_the_password() {
        assert_eq!(
            redact("postgres://app:s3cret@db.example:5432/x"),
            "postgres://app:***@db.example:5432/x"
        );
        assert_eq!(redact("host=db user=app"), "host=db user=app");
        assert_eq!(
            redact("host=db password=s3cret sslmode=bogus"),
            "host=db password=*** sslmode=bogus"
        );
        assert_eq!(
            redact("postgres://app@db/x?password=s3cret&sslmode=bogus"),
            "postgres://app@db/x?password=***&sslmode=bogus"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(
            redact("host=db password = s3cret user=app"),
            "host=db password = *** user=app"
        );
        assert_eq!(
            redact(r"host=db password='s3 c\'ret' user=app"),
            "host=db password=*** user=app"
        );
        assert_eq!(redact("passwordless=1"), "passwordless=1");
        // Upper case, one slash, `&` inside a key=value password.
        assert_eq!(
            redact("host=db PASSWORD=s3cret user=app"),
            "host=db PASSWORD=*** user=app"
        );
        assert_eq!(redact("postgres:/u:pw@host/x"), "postgres:/u:***@host/x");
        assert_eq!(redact("postgresql:u:pw@host"), "postgresql:u:***@host");
        assert_eq!(
            redact("host=db password=a&b user=app"),
            "host=db password=*** user=app"
        );
        assert_eq!(
            redact("postgres://u:p@ss@host/x?Password=a&sslmode=x"),
            "postgres://u:***@host/x?Password=***&sslmode=x"
        );
        // The builder's Debug shows no password either.
        let builder = PostgresJournal::builder("postgres://app:s3cret@db/x");
        let shown = format!("{builder:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("app:***@db"),
            "{shown}"
        );
    }

    #[test]
    fn statement_errors_are_not_connection_losses() {
        let err = Error::storage(BACKEND, "syntax error");
        assert!(!is_connection_lost(&err));
        assert!(is_connection_lost(&Error::storage(
            BACKEND,
            Unavailable("timeout".into())
        )));
        assert!(!is_connection_lost(&Error::LeaseLost {
            run: "r".into(),
            epoch: 1
        }));
    }
}
