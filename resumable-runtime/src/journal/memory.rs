//! A journal in memory: for tests and examples. Nothing survives the process.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    EventSender, Journal, JournalEvent, Lease, LeaseRequest, NewRun, Opened, RunFilter, RunRecord,
    RunSnapshot, RunState, StepRecord, StepState, Subscription, Timestamp, UNPINNED, Write,
};
use crate::error::{Error, Result};

/// A [`Journal`] kept in a mutex-guarded map.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use resumable_runtime::{Journal, MemoryJournal, RunFilter};
/// let journal = MemoryJournal::new();
/// assert!(journal.list_runs(&RunFilter::default()).await.unwrap().is_empty());
/// # }
/// ```
#[derive(Debug, Default)]
pub struct MemoryJournal {
    runs: Mutex<HashMap<String, StoredRun>>,
    events: EventSender,
}

#[derive(Debug)]
struct StoredRun {
    record: RunRecord,
    steps: Steps,
    order: u64,
}

/// A run's step records in the order they were first written (which is
/// `seq` order but for steps that failed attempts first), with an index by id.
#[derive(Debug, Default)]
struct Steps {
    records: Vec<StepRecord>,
    by_id: HashMap<String, usize>,
}

impl Steps {
    /// Writes `record` as its step's record. If the step has one already,
    /// `replace` sees both first: it may refuse (changing nothing) or carry
    /// something over into `record`.
    fn put(
        &mut self,
        mut record: StepRecord,
        replace: impl FnOnce(&StepRecord, &mut StepRecord) -> Result<()>,
    ) -> Result<()> {
        match self.by_id.get(&record.step_id) {
            Some(&i) => {
                let current = &mut self.records[i];
                replace(current, &mut record)?;
                *current = record;
            }
            None => {
                self.by_id
                    .insert(record.step_id.clone(), self.records.len());
                self.records.push(record);
            }
        }
        Ok(())
    }
}

impl StoredRun {
    /// The run and its steps, these ordered by `seq` as the other journals load them.
    fn snapshot(&self) -> RunSnapshot {
        let records = &self.steps.records;
        let steps = if records.is_sorted_by_key(|s| s.seq) {
            records.clone()
        } else {
            let mut sorted: Vec<&StepRecord> = records.iter().collect();
            sorted.sort_by_key(|s| s.seq);
            sorted.into_iter().cloned().collect()
        };
        RunSnapshot {
            run: self.record.clone(),
            steps,
        }
    }

    fn take_lease(&mut self, req: &LeaseRequest) -> Lease {
        let r = &mut self.record;
        r.epoch += 1;
        r.executions += 1;
        r.lease_owner = Some(req.owner.clone());
        r.lease_expires_at = Some(req.until);
        r.updated_at = req.now;
        Lease {
            run_key: r.key.clone(),
            owner: req.owner.clone(),
            epoch: r.epoch,
            expires_at: req.until,
        }
    }
}

impl MemoryJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    fn fenced<'a>(
        runs: &'a mut HashMap<String, StoredRun>,
        lease: &Lease,
    ) -> Result<&'a mut StoredRun> {
        match runs.get_mut(&lease.run_key) {
            Some(run)
                if run.record.epoch == lease.epoch
                    && run.record.state == RunState::Incomplete
                    && run.record.lease_owner.is_some() =>
            {
                Ok(run)
            }
            _ => Err(Error::LeaseLost {
                run: lease.run_key.clone(),
                epoch: lease.epoch,
            }),
        }
    }
}

fn refuse_if_recorded(step: &StepRecord, lease: &Lease) -> Result<()> {
    if step.state.is_recorded() {
        return Err(Error::StepAlreadyRecorded {
            run: lease.run_key.clone(),
            step: step.step_id.clone(),
        });
    }
    Ok(())
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn open_run(&self, new: NewRun, req: LeaseRequest) -> Result<Opened> {
        let mut runs = self.runs.lock().unwrap();
        let order = runs.len() as u64;
        let mut created = false;
        let run = runs.entry(new.key.clone()).or_insert_with(|| {
            created = true;
            StoredRun {
                record: RunRecord {
                    key: new.key,
                    workflow: new.workflow,
                    fingerprint: new.fingerprint,
                    input: new.input,
                    state: RunState::Incomplete,
                    outcome: None,
                    epoch: 0,
                    lease_owner: None,
                    lease_expires_at: None,
                    wake_at: req.now,
                    executions: 0,
                    last_error: None,
                    created_at: req.now,
                    updated_at: req.now,
                },
                steps: Steps::default(),
                order,
            }
        });
        let lease = (run.record.state == RunState::Incomplete && !run.record.is_leased_at(req.now))
            .then(|| run.take_lease(&req));
        let mut snapshot = run.snapshot();
        if lease.is_none() {
            snapshot.steps.clear();
        }
        Ok(Opened {
            snapshot,
            lease,
            created,
        })
    }

    async fn claim_due(
        &self,
        req: LeaseRequest,
        limit: usize,
    ) -> Result<Vec<(RunSnapshot, Lease)>> {
        let mut runs = self.runs.lock().unwrap();
        let mut due: Vec<&mut StoredRun> = runs
            .values_mut()
            .filter(|r| {
                r.record.state == RunState::Incomplete
                    && !r.record.is_leased_at(req.now)
                    && r.record.wake_at <= req.now
            })
            .collect();
        due.sort_by_key(|r| (r.record.wake_at, r.order));
        Ok(due
            .into_iter()
            .take(limit)
            .map(|run| {
                let lease = run.take_lease(&req);
                (run.snapshot(), lease)
            })
            .collect())
    }

    async fn write(&self, lease: &Lease, write: Write) -> Result<()> {
        let mut runs = self.runs.lock().unwrap();
        let run = Self::fenced(&mut runs, lease)?;
        if let Some(event) = JournalEvent::announced_by(&lease.run_key, &write) {
            self.events.send(event);
        }
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
                let record = StepRecord {
                    step_id,
                    seq: Some(seq),
                    state,
                    output: Some(output),
                    attempts,
                    last_error: error,
                    retry_at: None,
                    epoch: lease.epoch,
                    started_at,
                    updated_at: at,
                };
                run.steps.put(record, |retrying, record| {
                    refuse_if_recorded(retrying, lease)?;
                    // Without a final error, the failed attempts' last error stays.
                    if record.last_error.is_none() {
                        record.last_error.clone_from(&retrying.last_error);
                    }
                    Ok(())
                })?;
            }
            Write::AttemptFailed {
                step_id,
                attempts,
                error,
                retry_at,
                started_at,
                at,
            } => {
                let record = StepRecord {
                    step_id,
                    seq: None,
                    state: StepState::Retrying,
                    output: None,
                    attempts,
                    last_error: Some(error),
                    retry_at,
                    epoch: lease.epoch,
                    started_at,
                    updated_at: at,
                };
                run.steps
                    .put(record, |current, _| refuse_if_recorded(current, lease))?;
            }
            Write::RunFinished { state, outcome, at } => {
                let r = &mut run.record;
                r.state = state;
                r.outcome = Some(outcome);
                r.lease_owner = None;
                r.lease_expires_at = None;
                r.updated_at = at;
            }
            Write::Pin { fingerprint, at } => {
                let r = &mut run.record;
                if r.fingerprint == UNPINNED {
                    r.fingerprint = fingerprint;
                }
                r.updated_at = at;
            }
            Write::Release {
                last_error,
                wake_at,
                at,
            } => {
                let r = &mut run.record;
                r.last_error = last_error;
                r.wake_at = wake_at;
                r.lease_owner = None;
                r.lease_expires_at = None;
                r.updated_at = at;
            }
        }
        Ok(())
    }

    async fn renew(&self, lease: &Lease, until: Timestamp) -> Result<Lease> {
        let mut runs = self.runs.lock().unwrap();
        let run = Self::fenced(&mut runs, lease)?;
        run.record.lease_expires_at = Some(until);
        Ok(Lease {
            expires_at: until,
            ..lease.clone()
        })
    }

    async fn load_run(&self, key: &str) -> Result<Option<RunSnapshot>> {
        Ok(self.runs.lock().unwrap().get(key).map(StoredRun::snapshot))
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let runs = self.runs.lock().unwrap();
        let mut found: Vec<&StoredRun> = runs
            .values()
            .filter(|r| filter.state.is_none_or(|s| r.record.state == s))
            .filter(|r| {
                filter
                    .workflow
                    .as_ref()
                    .is_none_or(|w| &r.record.workflow == w)
            })
            .filter(|r| {
                filter
                    .lease_owner
                    .as_ref()
                    .is_none_or(|o| r.record.lease_owner.as_ref() == Some(o))
            })
            .collect();
        found.sort_by_key(|r| r.order);
        Ok(found
            .into_iter()
            .take(filter.limit.unwrap_or(usize::MAX))
            .map(|r| r.record.clone())
            .collect())
    }

    fn subscribe(&self) -> Option<Subscription> {
        Some(self.events.subscribe())
    }
}
