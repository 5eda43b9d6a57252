//! What the integration tests share: fast retry policies, every journal to
//! run a scenario on, and a journal that misbehaves on purpose.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use resumable::journal::{
    Ack, Command, Lease, LeaseRequest, NewMessage, NewRun, Opened, Receive, Received, RunFilter,
    RunRecord, RunSnapshot, Timestamp, Write,
};
use resumable::{Error, Journal, MemoryJournal, RetryPolicy, Runtime};

/// Retries without waiting, so tests do not sleep.
pub const FAST: RetryPolicy = RetryPolicy::exponential(3).initial_delay(Duration::ZERO);

pub fn runtime(journal: impl Journal) -> Runtime {
    Runtime::builder(journal).default_retry(FAST).build()
}

pub fn memory_runtime() -> (Runtime, Arc<MemoryJournal>) {
    let journal = Arc::new(MemoryJournal::new());
    (runtime(journal.clone()), journal)
}

/// Wraps a journal and breaks it in the ways a test asks for: writes that
/// fail after a budget (a database that goes away), damaged copies of what
/// it stores, or lease renewals that fail (a network partition).
#[derive(Debug)]
pub struct Misbehaving<J> {
    inner: J,
    write_budget: Option<AtomicUsize>,
    tamper: Option<fn(&mut RunSnapshot)>,
    renewals_fail: bool,
}

impl<J> Misbehaving<J> {
    pub fn new(inner: J) -> Self {
        Misbehaving {
            inner,
            write_budget: None,
            tamper: None,
            renewals_fail: false,
        }
    }

    /// Opening runs and writing fail once `budget` of them succeeded.
    pub fn failing_after(mut self, budget: usize) -> Self {
        self.write_budget = Some(AtomicUsize::new(budget));
        self
    }

    /// Runs are handed out after `tamper` changed them.
    pub fn tampering(mut self, tamper: fn(&mut RunSnapshot)) -> Self {
        self.tamper = Some(tamper);
        self
    }

    /// Lease renewals fail as if the journal were unreachable.
    pub fn unrenewable(mut self) -> Self {
        self.renewals_fail = true;
        self
    }

    fn spend(&self) -> Result<(), Error> {
        let Some(budget) = &self.write_budget else {
            return Ok(());
        };
        budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .map(drop)
            .map_err(|_| Error::storage("misbehaving", "injected write failure"))
    }
}

#[async_trait]
impl<J: Journal> Journal for Misbehaving<J> {
    async fn open_run(&self, run: NewRun, lease: LeaseRequest) -> resumable::Result<Opened> {
        self.spend()?;
        let mut opened = self.inner.open_run(run, lease).await?;
        if let Some(tamper) = self.tamper {
            tamper(&mut opened.snapshot);
        }
        Ok(opened)
    }
    async fn claim_due(
        &self,
        lease: LeaseRequest,
        limit: usize,
    ) -> resumable::Result<Vec<(RunSnapshot, Lease)>> {
        self.inner.claim_due(lease, limit).await
    }
    async fn create_run(
        &self,
        run: NewRun,
        now: Timestamp,
    ) -> resumable::Result<(RunRecord, bool)> {
        self.spend()?;
        self.inner.create_run(run, now).await
    }
    async fn write(&self, lease: &Lease, write: Write) -> resumable::Result<Ack> {
        self.spend()?;
        self.inner.write(lease, write).await
    }
    async fn release_leases(
        &self,
        leases: &[Lease],
        last_error: &str,
        at: Timestamp,
    ) -> resumable::Result<usize> {
        self.spend()?;
        self.inner.release_leases(leases, last_error, at).await
    }
    async fn command(
        &self,
        key: &str,
        command: Command,
        now: Timestamp,
    ) -> resumable::Result<Option<(RunRecord, bool)>> {
        self.inner.command(key, command, now).await
    }
    async fn fork_run(
        &self,
        source: &str,
        new_key: &str,
        steps: u64,
        now: Timestamp,
    ) -> resumable::Result<RunRecord> {
        self.inner.fork_run(source, new_key, steps, now).await
    }
    async fn purge(&self, before: Timestamp, limit: usize) -> resumable::Result<usize> {
        self.inner.purge(before, limit).await
    }
    async fn renew(&self, lease: &Lease, until: Timestamp) -> resumable::Result<Lease> {
        if self.renewals_fail {
            return Err(Error::storage("misbehaving", "connection refused"));
        }
        self.inner.renew(lease, until).await
    }
    async fn load_run(&self, key: &str) -> resumable::Result<Option<RunSnapshot>> {
        self.inner.load_run(key).await
    }
    async fn list_runs(&self, filter: &RunFilter) -> resumable::Result<Vec<RunRecord>> {
        self.inner.list_runs(filter).await
    }
    async fn get_event(&self, key: &str, name: &str) -> resumable::Result<Option<Vec<u8>>> {
        self.inner.get_event(key, name).await
    }
    async fn send_message(&self, message: NewMessage) -> resumable::Result<bool> {
        self.spend()?;
        self.inner.send_message(message).await
    }
    async fn receive(&self, lease: &Lease, receive: Receive) -> resumable::Result<Received> {
        self.spend()?;
        self.inner.receive(lease, receive).await
    }
}

/// Memory, SQLite and (with `RESUMABLE_TEST_POSTGRES_URL`) PostgreSQL
/// journals for test `test`; the second value keeps the SQLite file and the
/// PostgreSQL schema alive.
pub async fn every_journal(
    test: &str,
) -> (
    Vec<(&'static str, Arc<dyn Journal>)>,
    Box<dyn std::any::Any>,
) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = resumable::SqliteJournal::open(dir.path().join("journal.db"))
        .await
        .unwrap();
    #[allow(unused_mut)]
    let mut list: Vec<(&'static str, Arc<dyn Journal>)> = vec![
        ("memory", Arc::new(MemoryJournal::new())),
        ("sqlite", Arc::new(sqlite)),
    ];
    #[cfg(all(feature = "postgres", feature = "conformance"))]
    let schema = resumable::conformance::postgres::TestSchema::new(test);
    #[cfg(all(feature = "postgres", feature = "conformance"))]
    if let Some(schema) = &schema {
        list.push(("postgres", Arc::new(schema.journal().await)));
    }
    let _ = test;
    #[cfg(all(feature = "postgres", feature = "conformance"))]
    return (list, Box::new((dir, schema)));
    #[cfg(not(all(feature = "postgres", feature = "conformance")))]
    return (list, Box::new(dir));
}
