//! Group commit for step writes: steps that runs record at the same time
//! share one statement, so one round trip and one commit.
//!
//! A writer queues its step, then either receives its answer or becomes the
//! leader: the one task at a time that takes everything queued, writes it
//! (one multi-row statement, fenced run by run under the runs' row locks,
//! taken in key order so that batches never deadlock), and answers every
//! writer. A step written while no other is in flight is its own batch,
//! written at once with the single-step statement: a lone run pays nothing.
//!
//! A leader dropped mid-batch (its run's execution was dropped) puts the
//! batch back for the next leader, marked as possibly written: the retry
//! recognises a step its lost attempt recorded, as after a lost reply.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use futures_util::future::join_all;
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;

use deadpool_postgres::Object;

// `Reconnect` and `pool_error` are used by `with_client!`.
use super::{
    BACKEND, PostgresJournal, Reconnect, attempts_i32, get, is_connection_lost, pool_error, query,
};
use crate::error::{Error, Result};
use crate::journal::{Lease, Write};

/// The most steps written in one statement.
const MAX_BATCH: usize = 256;

/// Step writes waiting for a leader.
#[derive(Debug, Default)]
pub(super) struct StepWrites {
    queued: Mutex<Vec<Queued>>,
    leader: tokio::sync::Mutex<()>,
    /// Statements that wrote more than one step, for tests.
    batches: AtomicU64,
}

#[derive(Debug)]
struct Queued {
    lease: Lease,
    /// Always a [`Write::StepRecorded`].
    write: Write,
    /// A batch holding it was dropped in flight: it may have taken effect.
    retry: bool,
    reply: oneshot::Sender<Result<()>>,
}

impl StepWrites {
    /// How many statements wrote more than one step.
    #[cfg(test)]
    pub(super) fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    fn queued(&self) -> MutexGuard<'_, Vec<Queued>> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up to [`MAX_BATCH`] queued writes, at most one per step: a statement
    /// cannot write one row twice. Others wait for the next batch.
    fn take_batch(&self) -> Vec<Queued> {
        let mut queued = self.queued();
        if queued.len() <= 1 {
            return std::mem::take(&mut *queued);
        }
        let mut steps = HashSet::new();
        let mut batch = Vec::new();
        let mut rest = Vec::new();
        for q in queued.drain(..) {
            if batch.len() < MAX_BATCH && steps.insert(step_key(&q)) {
                batch.push(q);
            } else {
                rest.push(q);
            }
        }
        *queued = rest;
        batch
    }
}

fn step_key(q: &Queued) -> (String, String) {
    let step = match &q.write {
        Write::StepRecorded { step_id, .. } => step_id.clone(),
        _ => String::new(),
    };
    (q.lease.run_key.clone(), step)
}

/// A batch being written. Dropped unanswered, it goes back to the queue.
struct InFlight<'a> {
    writes: &'a StepWrites,
    batch: Vec<Queued>,
}

impl InFlight<'_> {
    fn answer(mut self, results: Vec<Result<()>>) {
        for (q, result) in self.batch.drain(..).zip(results) {
            // The writer may have stopped waiting (its run was dropped).
            let _ = q.reply.send(result);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut queued = self.writes.queued();
        for mut q in self.batch.drain(..) {
            q.retry = true;
            queued.push(q);
        }
    }
}

impl PostgresJournal {
    /// Writes a [`Write::StepRecorded`], in a batch with the steps other
    /// runs record at the same time.
    pub(super) async fn record_step(&self, lease: &Lease, write: Write) -> Result<()> {
        let (reply, mut answer) = oneshot::channel();
        self.step_writes.queued().push(Queued {
            lease: lease.clone(),
            write,
            retry: false,
            reply,
        });
        loop {
            tokio::select! {
                biased;
                answer = &mut answer => {
                    return answer.unwrap_or_else(|_| {
                        Err(Error::storage(BACKEND, "a step write was abandoned unanswered"))
                    });
                }
                _leader = self.step_writes.leader.lock() => {
                    let batch = self.step_writes.take_batch();
                    if !batch.is_empty() {
                        let flight = InFlight { writes: &self.step_writes, batch };
                        let results = self.write_batch(&flight.batch).await;
                        flight.answer(results);
                    }
                }
            }
        }
    }

    /// One result per write, in order.
    async fn write_batch(&self, batch: &[Queued]) -> Vec<Result<()>> {
        if batch.len() > 1 {
            let written = with_client!(self, |client, retry| self
                .write_batch_once(client, batch, retry));
            if let Ok(results) = written {
                return results;
            }
            // The statement failed for good: write each step alone, so that
            // each gets its own error (and a step the server refuses fails alone).
        }
        join_all(batch.iter().map(|q| async move {
            with_client!(self, |client, retry| self.write_once(
                client,
                &q.lease,
                &q.write,
                retry || q.retry
            ))
        }))
        .await
    }

    /// One attempt at writing `batch` in one statement. `Err` only if the
    /// connection was lost, so that the whole batch is tried again.
    async fn write_batch_once(
        &self,
        client: &Object,
        batch: &[Queued],
        retry: bool,
    ) -> Result<Vec<Result<()>>> {
        let mut columns = Columns::default();
        for q in batch {
            columns.push(q);
        }
        let rows = query(client, &self.sql.step_recorded_batch, &columns.args()).await?;
        self.step_writes.batches.fetch_add(1, Ordering::Relaxed);
        let mut written = HashSet::with_capacity(rows.len());
        for row in &rows {
            written.insert((get::<String>(row, 0)?, get::<String>(row, 1)?));
        }
        let mut results = Vec::with_capacity(batch.len());
        for q in batch {
            let Write::StepRecorded {
                step_id,
                state,
                output,
                ..
            } = &q.write
            else {
                results.push(Err(Error::storage(BACKEND, "not a step write")));
                continue;
            };
            if written.contains(&(q.lease.run_key.clone(), step_id.clone())) {
                results.push(Ok(()));
                continue;
            }
            let done = (retry || q.retry).then_some((*state, output.as_slice()));
            match self.refused_step(client, &q.lease, step_id, done).await {
                Err(err) if is_connection_lost(&err) => return Err(err),
                result => results.push(result),
            }
        }
        Ok(results)
    }
}

/// The batch as the statement's array parameters, one element per step.
#[derive(Default)]
struct Columns<'a> {
    run_keys: Vec<&'a str>,
    epochs: Vec<i64>,
    step_ids: Vec<&'a str>,
    seqs: Vec<i64>,
    states: Vec<&'static str>,
    outputs: Vec<&'a [u8]>,
    attempts: Vec<i32>,
    started_at: Vec<i64>,
    updated_at: Vec<i64>,
    errors: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, q: &'a Queued) {
        let Write::StepRecorded {
            step_id,
            seq,
            state,
            output,
            error,
            attempts,
            started_at,
            at,
        } = &q.write
        else {
            return;
        };
        self.run_keys.push(&q.lease.run_key);
        self.epochs.push(q.lease.epoch as i64);
        self.step_ids.push(step_id);
        self.seqs.push(*seq as i64);
        self.states.push(state.as_str());
        self.outputs.push(output);
        self.attempts.push(attempts_i32(*attempts));
        self.started_at.push(started_at.0);
        self.updated_at.push(at.0);
        self.errors.push(error.as_deref());
    }

    /// In the order of `step_recorded_batch`'s parameters.
    fn args(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.run_keys,
            &self.epochs,
            &self.step_ids,
            &self.seqs,
            &self.states,
            &self.outputs,
            &self.attempts,
            &self.started_at,
            &self.updated_at,
            &self.errors,
        ]
    }
}
