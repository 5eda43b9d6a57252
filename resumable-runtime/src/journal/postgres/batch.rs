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
//! Writes whose writers are gone are dropped rather than written.

use std::collections::HashSet;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool_postgres::Object;
use futures_util::future::join_all;
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;

// `Reconnect` and `pool_error` are used by `with_client!`.
use super::{
    BACKEND, PostgresJournal, Reconnect, Unavailable, attempts_i32, get, is_connection_lost,
    pool_error, query,
};
use crate::error::{Error, Result};
use crate::journal::{Ack, Lease, Write};

/// The most steps written in one statement.
const MAX_BATCH: usize = 256;
/// The most output bytes written in one statement (a larger output is
/// written alone), well under the server's 1 GB message limit.
const MAX_BATCH_BYTES: usize = 16 << 20;

/// Step writes waiting for a leader.
#[derive(Debug, Default)]
pub(super) struct StepWrites {
    queued: Mutex<Vec<Queued>>,
    leader: tokio::sync::Mutex<()>,
    /// Statements that wrote more than one step, for tests.
    #[cfg(test)]
    batches: AtomicU64,
}

#[derive(Debug)]
struct Queued {
    lease: Lease,
    /// Always a [`Write::StepRecorded`].
    write: Write,
    /// A batch holding it was dropped in flight: it may have taken effect.
    retry: bool,
    /// Until when it may be retried after lost connections: the journal's
    /// reconnect timeout from when it was queued, however long it waited.
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<Ack>>,
}

impl Queued {
    /// The step's id and output (a queued write is always a `StepRecorded`).
    fn step(&self) -> (&str, &[u8]) {
        match &self.write {
            Write::StepRecorded {
                step_id, output, ..
            } => (step_id, output),
            _ => ("", &[]),
        }
    }
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

    /// Up to [`MAX_BATCH`] queued writes and [`MAX_BATCH_BYTES`] of output
    /// (but at least one write), at most one per step: a statement cannot
    /// write one row twice. Others wait for the next batch. Writes nobody
    /// waits for any more (their runs' executions were dropped) are dropped:
    /// their runs resume from what is recorded.
    fn take_batch(&self) -> Vec<Queued> {
        let mut queued = self.queued();
        queued.retain(|q| !q.reply.is_closed());
        if queued.len() <= 1 {
            return std::mem::take(&mut *queued);
        }
        let mut steps = HashSet::new();
        let mut bytes = 0;
        let mut batch = Vec::new();
        let mut rest = Vec::new();
        for q in queued.drain(..) {
            let (step_id, output) = q.step();
            let fits = batch.is_empty()
                || (batch.len() < MAX_BATCH && bytes + output.len() <= MAX_BATCH_BYTES);
            if fits && steps.insert((q.lease.run_key.clone(), step_id.to_owned())) {
                bytes += output.len();
                batch.push(q);
            } else {
                rest.push(q);
            }
        }
        *queued = rest;
        batch
    }
}

/// A batch being written. Dropped unanswered, it goes back to the queue.
struct InFlight<'a> {
    writes: &'a StepWrites,
    batch: Vec<Queued>,
}

impl InFlight<'_> {
    fn answer(mut self, results: Vec<Result<Ack>>) {
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
    pub(super) async fn record_step(&self, lease: &Lease, write: Write) -> Result<Ack> {
        let (reply, mut answer) = oneshot::channel();
        self.step_writes.queued().push(Queued {
            lease: lease.clone(),
            write,
            retry: false,
            deadline: Instant::now().checked_add(self.reconnect_timeout),
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
    async fn write_batch(&self, batch: &[Queued]) -> Vec<Result<Ack>> {
        // Retried no longer than the earliest writer was promised.
        let timeout = batch
            .iter()
            .filter_map(|q| q.deadline)
            .min()
            .map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
        if let [q] = batch {
            let written = with_client!(self, timeout, |client, retry| self.write_once(
                client,
                &q.lease,
                &q.write,
                retry || q.retry
            ));
            return vec![written];
        }
        let err = match with_client!(self, timeout, |client, retry| self
            .write_batch_once(client, batch, retry))
        {
            Ok(results) => return results,
            Err(err) => err,
        };
        if is_connection_lost(&err) {
            // Out of time: every writer gets the lost connection.
            return batch
                .iter()
                .map(|_| Err(Error::storage(BACKEND, Unavailable(err.to_string()))))
                .collect();
        }
        // The server refused the statement: write each step alone, so that
        // each gets its own answer and a step it refuses fails alone. An
        // attempt of the batch may have taken effect before it failed.
        join_all(batch.iter().map(|q| async move {
            with_client!(self, timeout, |client, _retry| self
                .write_once(client, &q.lease, &q.write, true))
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
    ) -> Result<Vec<Result<Ack>>> {
        let mut columns = Columns::default();
        for q in batch {
            columns.push(q);
        }
        let rows = query(client, &self.sql.step_recorded_batch, &columns.args()).await?;
        #[cfg(test)]
        self.step_writes.batches.fetch_add(1, Ordering::Relaxed);
        let mut written = HashSet::with_capacity(rows.len());
        for row in &rows {
            written.insert((get::<String>(row, 0)?, get::<String>(row, 1)?));
        }
        let mut results = Vec::with_capacity(batch.len());
        for q in batch {
            let (step_id, _) = q.step();
            if written.contains(&(q.lease.run_key.clone(), step_id.to_owned())) {
                results.push(Ok(Ack::default()));
                continue;
            }
            // Refused (a lost lease, a step recorded already, a cancel
            // requested): written alone, which says why.
            match self
                .write_once(client, &q.lease, &q.write, retry || q.retry)
                .await
            {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{StepState, Timestamp};

    /// A queued write of step `step` of run `run` with `bytes` of output,
    /// and the receiver its writer would wait on.
    fn queued(run: &str, step: &str, bytes: usize) -> (Queued, oneshot::Receiver<Result<Ack>>) {
        let (reply, answer) = oneshot::channel();
        let q = Queued {
            lease: Lease {
                run_key: run.to_owned(),
                owner: "w".to_owned(),
                epoch: 1,
                expires_at: Timestamp(0),
            },
            write: Write::StepRecorded {
                step_id: step.to_owned(),
                seq: 0,
                state: StepState::Completed,
                output: vec![0; bytes],
                error: None,
                attempts: 1,
                started_at: Timestamp(0),
                at: Timestamp(0),
            },
            retry: false,
            deadline: None,
            reply,
        };
        (q, answer)
    }

    fn ids(batch: &[Queued]) -> Vec<(String, String)> {
        batch
            .iter()
            .map(|q| (q.lease.run_key.clone(), q.step().0.to_owned()))
            .collect()
    }

    fn pair(run: &str, step: &str) -> (String, String) {
        (run.to_owned(), step.to_owned())
    }

    #[test]
    fn a_batch_writes_each_step_once_within_its_limits_and_skips_abandoned_writes() {
        let writes = StepWrites::default();
        let mut waiting = Vec::new();
        for (run, step, bytes) in [
            ("a", "s#0", 10),
            ("b", "s#0", 10),
            ("a", "s#0", 10),              // the same step again: the next batch
            ("c", "s#0", MAX_BATCH_BYTES), // too big to join: the next batch
        ] {
            let (q, answer) = queued(run, step, bytes);
            writes.queued().push(q);
            waiting.push(answer);
        }
        let (abandoned, answer) = queued("d", "s#0", 10);
        writes.queued().push(abandoned);
        drop(answer);

        assert_eq!(
            ids(&writes.take_batch()),
            [pair("a", "s#0"), pair("b", "s#0")]
        );
        assert_eq!(ids(&writes.take_batch()), [pair("a", "s#0")]);
        // A batch always takes at least one write, however large.
        assert_eq!(ids(&writes.take_batch()), [pair("c", "s#0")]);
        assert!(
            writes.take_batch().is_empty(),
            "the abandoned write was dropped"
        );
        drop(waiting);
    }
}
