//! A journal in memory: for tests and examples. Nothing survives the process.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    Ack, Command, EventSender, Journal, JournalEvent, Lease, LeaseRequest, NewMessage, NewRun,
    Opened, Receive, Received, RunFilter, RunRecord, RunSnapshot, RunState, StepRecord, StepState,
    Subscription, Timestamp, UNPINNED, Write,
};
use crate::error::{Error, Result};

/// A [`Journal`] kept in a mutex-guarded map.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use resumable::{Journal, MemoryJournal, RunFilter};
/// let journal = MemoryJournal::new();
/// assert!(journal.list_runs(&RunFilter::default()).await.unwrap().is_empty());
/// # }
/// ```
#[derive(Debug, Default)]
pub struct MemoryJournal {
    runs: Mutex<HashMap<String, StoredRun>>,
    /// Runs ever created: each run's creation order, which purging runs
    /// must not reuse.
    created: std::sync::atomic::AtomicU64,
    events: EventSender,
}

#[derive(Debug)]
struct StoredRun {
    record: RunRecord,
    steps: Steps,
    order: u64,
    /// Published events by name.
    events: HashMap<String, Vec<u8>>,
    mailbox: Mailbox,
}

/// The messages sent to a run.
#[derive(Debug, Default)]
struct Mailbox {
    /// In the order sent; taken ones keep their idempotency key.
    messages: Vec<Message>,
    /// Whether the run was given back to wait for a message.
    awaited: bool,
}

#[derive(Debug)]
struct Message {
    topic: String,
    idempotency_key: String,
    /// `None` once a receive took it.
    value: Option<Vec<u8>>,
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

impl Steps {
    /// Forgets the steps that failed for good after the last completed one
    /// (the failure that ended the run), so that a resumed run runs them again.
    fn forget_final_failures(&mut self) {
        let last_completed = self
            .records
            .iter()
            .filter(|s| s.state == StepState::Completed)
            .filter_map(|s| s.seq)
            .max();
        self.records.retain(|s| {
            s.state != StepState::Failed || s.seq.is_some_and(|seq| Some(seq) <= last_completed)
        });
        self.by_id = self
            .records
            .iter()
            .enumerate()
            .map(|(i, s)| (s.step_id.clone(), i))
            .collect();
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

    /// Whether a step was written under the run's current epoch.
    fn recorded_in_epoch(&self) -> bool {
        let epoch = self.record.epoch;
        self.steps.records.iter().any(|s| s.epoch == epoch)
    }

    fn take_lease(&mut self, req: &LeaseRequest) -> Lease {
        self.mailbox.awaited = false;
        // Taken over from a worker that died without recording a step.
        let died_without_progress = self.record.lease_owner.is_some() && !self.recorded_in_epoch();
        let r = &mut self.record;
        r.failures = r.failures.saturating_add(u32::from(died_without_progress));
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

/// The run's record as a new, unleased run.
fn new_record(new: NewRun, now: Timestamp) -> RunRecord {
    RunRecord {
        key: new.key,
        workflow: new.workflow,
        fingerprint: new.fingerprint,
        input: new.input,
        state: RunState::Incomplete,
        outcome: None,
        epoch: 0,
        lease_owner: None,
        lease_expires_at: None,
        wake_at: now,
        executions: 0,
        last_error: None,
        created_at: now,
        updated_at: now,
        deadline: new.deadline,
        cancel_requested_at: None,
        failures: 0,
        resumed_at: None,
        forked_from: None,
        parent: None,
    }
}

/// Ends `r`'s lease. With a cancel requested, the run is cancelled
/// instead of whatever `end` would have made of it.
fn end_lease(r: &mut RunRecord, at: Timestamp, end: impl FnOnce(&mut RunRecord)) {
    if r.cancel_requested_at.is_some() {
        r.state = RunState::Cancelled;
        r.outcome = None;
    } else {
        end(r);
    }
    r.lease_owner = None;
    r.lease_expires_at = None;
    r.updated_at = at;
}

/// Stores `message` for its run unless its idempotency key was sent to
/// the run before; whether it stored it, and whether that woke the run.
fn deliver(runs: &mut HashMap<String, StoredRun>, message: NewMessage) -> Result<(bool, bool)> {
    let run = runs
        .get_mut(&message.run_key)
        .ok_or_else(|| Error::UnknownRun {
            run: message.run_key.clone(),
        })?;
    let mailbox = &mut run.mailbox;
    if mailbox
        .messages
        .iter()
        .any(|m| m.idempotency_key == message.idempotency_key)
    {
        return Ok((false, false));
    }
    mailbox.messages.push(Message {
        topic: message.topic,
        idempotency_key: message.idempotency_key,
        value: Some(message.value),
    });
    let woken = std::mem::take(&mut mailbox.awaited) && run.record.state == RunState::Incomplete;
    if woken {
        run.record.wake_at = message.at;
    }
    Ok((true, woken))
}

/// If run `key` has finished and a parent started it, the message that
/// tells the parent (see [`Write::StartChild`]).
fn finished_child_message(runs: &HashMap<String, StoredRun>, key: &str) -> Option<NewMessage> {
    let r = &runs.get(key)?.record;
    let parent = r.parent.clone().filter(|_| r.state.is_finished())?;
    let mut value = r.state.as_str().as_bytes().to_vec();
    value.push(0);
    value.extend_from_slice(r.outcome.as_deref().unwrap_or_default());
    Some(NewMessage {
        run_key: parent,
        topic: format!("child:{key}"),
        value,
        idempotency_key: format!("finished:{key}#{}", r.epoch),
        at: r.updated_at,
    })
}

impl MemoryJournal {
    /// Tells the parent of run `key`, if it has one and finished.
    fn tell_parent(&self, runs: &mut HashMap<String, StoredRun>, key: &str) {
        let Some(message) = finished_child_message(runs, key) else {
            return;
        };
        let (parent, at) = (message.run_key.clone(), message.at);
        // A parent purged or deleted before its child finished has no one to tell.
        if let Ok((stored, woken)) = deliver(runs, message) {
            self.announce_message(&parent, at, stored, woken);
        }
    }

    /// [`Write::StartChild`]: fenced under the parent's lease.
    #[allow(clippy::too_many_arguments)]
    fn start_child(
        &self,
        runs: &mut HashMap<String, StoredRun>,
        lease: &Lease,
        step_id: String,
        seq: u64,
        output: Vec<u8>,
        child: NewRun,
        at: Timestamp,
    ) -> Result<Ack> {
        let parent = Self::fenced(runs, lease)?;
        let ack = Ack {
            cancel_requested: parent.record.cancel_requested_at.is_some(),
        };
        if let Some(step) = parent.steps.by_id.get(&step_id) {
            refuse_if_recorded(&parent.steps.records[*step], lease)?;
        }
        if ack.cancel_requested {
            // The parent stops at this boundary: no child starts.
            return Ok(ack);
        }
        if runs.contains_key(&child.key) {
            return Err(Error::RunExists { run: child.key });
        }
        let created = self.insert(runs, child, at);
        created.record.parent = Some(lease.run_key.clone());
        self.events.send(JournalEvent::Due { at });
        let parent = Self::fenced(runs, lease)?;
        let record = StepRecord {
            step_id,
            seq: Some(seq),
            state: StepState::Completed,
            output: Some(output),
            attempts: 1,
            last_error: None,
            retry_at: None,
            epoch: lease.epoch,
            started_at: at,
            updated_at: at,
        };
        parent.steps.put(record, |_, _| Ok(()))?;
        Ok(ack)
    }

    fn announce_message(&self, key: &str, at: Timestamp, stored: bool, woken: bool) {
        if woken {
            self.events.send(JournalEvent::Due { at });
        }
        if stored {
            self.events.send(JournalEvent::Message {
                key: key.to_owned(),
            });
        }
    }

    fn insert<'a>(
        &self,
        runs: &'a mut HashMap<String, StoredRun>,
        new: NewRun,
        now: Timestamp,
    ) -> &'a mut StoredRun {
        runs.entry(new.key.clone()).or_insert_with(|| StoredRun {
            record: new_record(new, now),
            steps: Steps::default(),
            order: self.next_order(),
            events: HashMap::new(),
            mailbox: Mailbox::default(),
        })
    }

    /// The creation order of the next run.
    fn next_order(&self) -> u64 {
        self.created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn open_run(&self, new: NewRun, req: LeaseRequest) -> Result<Opened> {
        let mut runs = self.runs.lock().unwrap();
        let created = !runs.contains_key(&new.key);
        let run = self.insert(&mut runs, new, req.now);
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

    async fn create_run(&self, new: NewRun, now: Timestamp) -> Result<(RunRecord, bool)> {
        let mut runs = self.runs.lock().unwrap();
        let created = !runs.contains_key(&new.key);
        let record = self.insert(&mut runs, new, now).record.clone();
        if created {
            self.events.send(JournalEvent::Due { at: now });
        }
        Ok((record, created))
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
                    && req.takes(&r.record.workflow)
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

    async fn write(&self, lease: &Lease, write: Write) -> Result<Ack> {
        let mut runs = self.runs.lock().unwrap();
        if let Write::StartChild {
            step_id,
            seq,
            output,
            child,
            at,
        } = write
        {
            return self.start_child(&mut runs, lease, step_id, seq, output, child, at);
        }
        let run = Self::fenced(&mut runs, lease)?;
        let ack = Ack {
            cancel_requested: run.record.cancel_requested_at.is_some(),
        };
        let event = JournalEvent::announced_by(&lease.run_key, &write, ack);
        // Only these end a lease, and so may finish a child run.
        let ends = matches!(
            write,
            Write::RunFinished { .. } | Write::DeadLetter { .. } | Write::Release { .. }
        );
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
                end_lease(&mut run.record, at, |r| {
                    r.state = state;
                    r.outcome = Some(outcome);
                    if state == RunState::Completed {
                        r.last_error = None;
                    }
                });
            }
            Write::DeadLetter {
                last_error,
                failures,
                at,
            } => {
                end_lease(&mut run.record, at, |r| {
                    r.state = RunState::DeadLettered;
                    r.failures = failures;
                });
                run.record.last_error = Some(last_error);
            }
            Write::Pin { fingerprint, at } => {
                let r = &mut run.record;
                if r.fingerprint == UNPINNED {
                    r.fingerprint = fingerprint;
                }
                r.updated_at = at;
            }
            Write::EventSet { name, value, at: _ } => {
                run.events.insert(name, value);
            }
            Write::StartChild { .. } => unreachable!("handled before the fence"),
            Write::Release {
                last_error,
                wake_at,
                failures,
                wake_on_message,
                at,
            } => {
                let sent = run.mailbox.messages.len() as u64;
                let (wake_at, awaited) = match wake_on_message {
                    Some(seen) if sent > seen => (at, false),
                    Some(_) => (wake_at, true),
                    None => (wake_at, false),
                };
                run.mailbox.awaited = awaited;
                end_lease(&mut run.record, at, |r| {
                    r.wake_at = wake_at;
                    r.failures = failures;
                });
                run.record.last_error = last_error;
            }
        }
        if let Some(event) = event {
            self.events.send(event);
        }
        if ends {
            self.tell_parent(&mut runs, &lease.run_key);
        }
        Ok(ack)
    }

    async fn release_leases(
        &self,
        leases: &[Lease],
        last_error: &str,
        at: Timestamp,
    ) -> Result<usize> {
        let mut runs = self.runs.lock().unwrap();
        let mut released = 0;
        for lease in leases {
            let Ok(run) = Self::fenced(&mut runs, lease) else {
                continue;
            };
            let cancelled = run.record.cancel_requested_at.is_some();
            let died_without_progress = !run.recorded_in_epoch();
            end_lease(&mut run.record, at, |r| {
                r.wake_at = at;
                r.failures = r.failures.saturating_add(u32::from(died_without_progress));
            });
            run.record.last_error = Some(last_error.to_owned());
            released += 1;
            self.tell_parent(&mut runs, &lease.run_key);
            self.events.send(match cancelled {
                true => JournalEvent::Finished {
                    key: lease.run_key.clone(),
                },
                false => JournalEvent::Due { at },
            });
        }
        Ok(released)
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

    async fn command(
        &self,
        key: &str,
        command: Command,
        now: Timestamp,
    ) -> Result<Option<(RunRecord, bool)>> {
        let mut runs = self.runs.lock().unwrap();
        let Some(run) = runs.get_mut(key) else {
            return Ok(None);
        };
        let r = &mut run.record;
        let mut changed = true;
        let event = match command {
            Command::Cancel if r.state == RunState::Incomplete && r.is_leased_at(now) => {
                changed = r.cancel_requested_at.is_none();
                r.cancel_requested_at.get_or_insert(now);
                None
            }
            Command::Cancel if !r.state.is_finished() => {
                r.cancel_requested_at.get_or_insert(now);
                r.epoch += 1;
                end_lease(r, now, |_| {});
                Some(JournalEvent::Finished {
                    key: key.to_owned(),
                })
            }
            Command::Resume if r.state.is_resumable() => {
                r.state = RunState::Incomplete;
                r.outcome = None;
                r.cancel_requested_at = None;
                r.deadline = None;
                r.failures = 0;
                r.wake_at = now;
                r.resumed_at = Some(now);
                r.updated_at = now;
                run.steps.forget_final_failures();
                Some(JournalEvent::Due { at: now })
            }
            Command::RetryNow if r.state == RunState::Incomplete && !r.is_leased_at(now) => {
                r.wake_at = now;
                r.updated_at = now;
                for step in &mut run.steps.records {
                    step.retry_at = None;
                }
                Some(JournalEvent::Due { at: now })
            }
            _ => {
                changed = false;
                None
            }
        };
        let record = run.record.clone();
        if let Some(event) = event {
            self.events.send(event);
        }
        self.tell_parent(&mut runs, key);
        Ok(Some((record, changed)))
    }

    async fn fork_run(
        &self,
        source: &str,
        new_key: &str,
        steps: u64,
        now: Timestamp,
    ) -> Result<RunRecord> {
        let mut runs = self.runs.lock().unwrap();
        if let Some(existing) = runs.get(new_key) {
            return match existing.record.forked_from.as_deref() == Some(source) {
                true => Ok(existing.record.clone()),
                false => Err(Error::RunExists {
                    run: new_key.to_owned(),
                }),
            };
        }
        let from = runs.get(source).ok_or_else(|| Error::UnknownRun {
            run: source.to_owned(),
        })?;
        let mut record = new_record(
            NewRun {
                key: new_key.to_owned(),
                workflow: from.record.workflow.clone(),
                fingerprint: UNPINNED,
                input: from.record.input.clone(),
                deadline: None,
            },
            now,
        );
        record.forked_from = Some(source.to_owned());
        let mut copied = Steps::default();
        for step in from.snapshot().steps {
            if step.state.is_recorded() && step.seq.is_some_and(|seq| seq < steps) {
                copied.put(step, |_, _| Ok(()))?;
            }
        }
        runs.insert(
            new_key.to_owned(),
            StoredRun {
                record: record.clone(),
                steps: copied,
                order: self.next_order(),
                events: HashMap::new(),
                mailbox: Mailbox::default(),
            },
        );
        self.events.send(JournalEvent::Due { at: now });
        Ok(record)
    }

    async fn purge(&self, before: Timestamp, limit: usize) -> Result<usize> {
        let mut runs = self.runs.lock().unwrap();
        let mut old: Vec<(u64, String)> = runs
            .values()
            .filter(|r| r.record.state.is_finished() && r.record.updated_at < before)
            .map(|r| (r.order, r.record.key.clone()))
            .collect();
        old.sort();
        old.truncate(limit);
        for (_, key) in &old {
            runs.remove(key);
        }
        Ok(old.len())
    }

    async fn load_run(&self, key: &str) -> Result<Option<RunSnapshot>> {
        Ok(self.runs.lock().unwrap().get(key).map(StoredRun::snapshot))
    }

    async fn get_event(&self, key: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let runs = self.runs.lock().unwrap();
        Ok(runs.get(key).and_then(|run| run.events.get(name).cloned()))
    }

    async fn send_message(&self, message: NewMessage) -> Result<bool> {
        let mut runs = self.runs.lock().unwrap();
        let (key, at) = (message.run_key.clone(), message.at);
        let (stored, woken) = deliver(&mut runs, message)?;
        drop(runs);
        self.announce_message(&key, at, stored, woken);
        Ok(stored)
    }

    async fn receive(&self, lease: &Lease, receive: Receive) -> Result<Received> {
        let mut runs = self.runs.lock().unwrap();
        let run = Self::fenced(&mut runs, lease)?;
        let ack = Ack {
            cancel_requested: run.record.cancel_requested_at.is_some(),
        };
        let sent = run.mailbox.messages.len() as u64;
        if let Some(step) = run.steps.by_id.get(&receive.step_id) {
            refuse_if_recorded(&run.steps.records[*step], lease)?;
        }
        let waiting = run
            .mailbox
            .messages
            .iter_mut()
            .find(|m| m.value.is_some() && m.topic == receive.topic);
        let Some(value) = waiting.and_then(|m| m.value.take()) else {
            return Ok(Received {
                message: None,
                sent,
                ack,
            });
        };
        let record = StepRecord {
            step_id: receive.step_id,
            seq: Some(receive.seq),
            state: StepState::Completed,
            output: Some(value.clone()),
            attempts: 1,
            last_error: None,
            retry_at: None,
            epoch: lease.epoch,
            started_at: receive.at,
            updated_at: receive.at,
        };
        run.steps.put(record, |_, _| Ok(()))?;
        Ok(Received {
            message: Some(value),
            sent,
            ack,
        })
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let runs = self.runs.lock().unwrap();
        let after = match &filter.after {
            Some(key) => match runs.get(key) {
                Some(run) => Some(run.order),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let mut found: Vec<&StoredRun> = runs
            .values()
            .filter(|r| after.is_none_or(|after| r.order > after))
            .filter(|r| filter.matches(&r.record))
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
