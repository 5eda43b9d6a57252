//! Journals that misbehave on purpose, shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use resumable::journal::{
    Lease, LeaseRequest, NewRun, Opened, RunFilter, RunRecord, RunSnapshot, Timestamp, Write,
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

/// Fails every write after the first `budget` ones, like a database that goes away.
#[derive(Debug)]
pub struct FaultyJournal<J> {
    pub inner: J,
    budget: AtomicUsize,
}

impl<J> FaultyJournal<J> {
    pub fn new(inner: J, budget: usize) -> Self {
        FaultyJournal {
            inner,
            budget: AtomicUsize::new(budget),
        }
    }

    fn spend(&self) -> Result<(), Error> {
        self.budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .map(drop)
            .map_err(|_| Error::storage("faulty", "injected write failure"))
    }
}

#[async_trait]
impl<J: Journal> Journal for FaultyJournal<J> {
    async fn open_run(&self, run: NewRun, lease: LeaseRequest) -> resumable::Result<Opened> {
        self.spend()?;
        self.inner.open_run(run, lease).await
    }
    async fn claim_due(
        &self,
        lease: LeaseRequest,
        limit: usize,
    ) -> resumable::Result<Vec<(RunSnapshot, Lease)>> {
        self.inner.claim_due(lease, limit).await
    }
    async fn write(&self, lease: &Lease, write: Write) -> resumable::Result<()> {
        self.spend()?;
        self.inner.write(lease, write).await
    }
    async fn renew(&self, lease: &Lease, until: Timestamp) -> resumable::Result<Lease> {
        self.inner.renew(lease, until).await
    }
    async fn load_run(&self, key: &str) -> resumable::Result<Option<RunSnapshot>> {
        self.inner.load_run(key).await
    }
    async fn list_runs(&self, filter: &RunFilter) -> resumable::Result<Vec<RunRecord>> {
        self.inner.list_runs(filter).await
    }
}

/// Hands out damaged copies of what the inner journal stores.
#[derive(Debug)]
pub struct TamperingJournal<J> {
    pub inner: J,
    pub tamper: fn(&mut RunSnapshot),
}

#[async_trait]
impl<J: Journal> Journal for TamperingJournal<J> {
    async fn open_run(&self, run: NewRun, lease: LeaseRequest) -> resumable::Result<Opened> {
        let mut opened = self.inner.open_run(run, lease).await?;
        (self.tamper)(&mut opened.snapshot);
        Ok(opened)
    }
    async fn claim_due(
        &self,
        lease: LeaseRequest,
        limit: usize,
    ) -> resumable::Result<Vec<(RunSnapshot, Lease)>> {
        self.inner.claim_due(lease, limit).await
    }
    async fn write(&self, lease: &Lease, write: Write) -> resumable::Result<()> {
        self.inner.write(lease, write).await
    }
    async fn renew(&self, lease: &Lease, until: Timestamp) -> resumable::Result<Lease> {
        self.inner.renew(lease, until).await
    }
    async fn load_run(&self, key: &str) -> resumable::Result<Option<RunSnapshot>> {
        self.inner.load_run(key).await
    }
    async fn list_runs(&self, filter: &RunFilter) -> resumable::Result<Vec<RunRecord>> {
        self.inner.list_runs(filter).await
    }
}
