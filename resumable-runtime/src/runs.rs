//! [`Runs`]: an operator's hold on a journal's runs — look at them, cancel,
//! resume, retry now, fork, dead letters and purging.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::journal::{Command, Journal, RunFilter, RunRecord, RunSnapshot, RunState, Timestamp};
use crate::runtime::{validate_key, validate_lookup_key};
use crate::status::{RunInfo, RunStatus};

/// How many runs [`Runs::purge`] deletes per journal write.
///
/// ```
/// assert_eq!(resumable::PURGE_BATCH, 1000);
/// ```
pub const PURGE_BATCH: usize = 1000;

/// How many runs [`Runs::list_with_status`] reads per journal call.
const PAGE: usize = 500;

/// What an operator's command did to a run.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// use resumable::{Client, CommandOutcome, MemoryJournal, RunState, WorkflowRef};
///
/// const JOB: WorkflowRef<(u32,), Result<u32, String>> = WorkflowRef::named("job");
/// let client = Client::new(MemoryJournal::new());
/// client.submit(&JOB, "job-1", (1,)).await?;
/// match client.runs().cancel("job-1").await? {
///     CommandOutcome::Done(state) => assert_eq!(state, RunState::Cancelled),
///     CommandOutcome::Requested => println!("its worker stops at the next step"),
///     CommandOutcome::Unchanged(state) => println!("already {state}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "state")]
pub enum CommandOutcome {
    /// Done: the run is now in this state.
    Done(RunState),
    /// A cancel was recorded for a run a worker is executing: the worker
    /// stops it at its next step boundary, and its outcome becomes
    /// `Cancelled`. Durable: if the worker dies first, the next one to take
    /// the run cancels it.
    Requested,
    /// Nothing to do for a run in this state: a finished run is not
    /// cancelled, only a failed, cancelled, timed-out or dead-lettered run
    /// is resumed, and only an incomplete run no live worker holds is made
    /// due now.
    Unchanged(RunState),
}

/// The runs of a journal, as an operator steers them: from
/// [`Runtime::runs`](crate::Runtime::runs), [`Client::runs`](crate::Client::runs)
/// or [`Runs::new`]. Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// use resumable::{resumable, step, CommandOutcome, MemoryJournal, RunState, Runtime};
///
/// #[resumable]
/// async fn ship(order: u64) -> Result<String, String> {
///     let label = step!("label", { format!("label-{order}") });
///     Ok(label)
/// }
///
/// let rt = Runtime::new(MemoryJournal::new());
/// rt.submit("ship-7", ship(7)).await?; // recorded, not executed
/// // Nobody executes it yet: cancelled at once, for good.
/// assert_eq!(rt.runs().cancel("ship-7").await?, CommandOutcome::Done(RunState::Cancelled));
/// assert!(matches!(rt.run("ship-7", ship(7)).await, Err(resumable::Error::Cancelled { .. })));
/// // An operator's decision takes it back: it runs to completion.
/// assert_eq!(rt.runs().resume("ship-7").await?, CommandOutcome::Done(RunState::Incomplete));
/// assert_eq!(rt.run("ship-7", ship(7)).await?, Ok("label-7".to_string()));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Runs {
    journal: Arc<dyn Journal>,
}

impl Runs {
    /// The runs of `journal`, for a tool that has neither a runtime nor a
    /// client.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use std::sync::Arc;
    /// use resumable::{MemoryJournal, RunFilter, Runs};
    ///
    /// let runs = Runs::new(Arc::new(MemoryJournal::new()));
    /// assert!(runs.list(&RunFilter::default()).await?.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(journal: Arc<dyn Journal>) -> Self {
        Runs { journal }
    }

    /// Run `key`'s status and steps, if it exists.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{resumable, step, MemoryJournal, RunStatus, Runtime};
    ///
    /// #[resumable]
    /// async fn label(order: u64) -> Result<String, String> {
    ///     let label = step!("print", { format!("label-{order}") });
    ///     Ok(label)
    /// }
    ///
    /// let rt = Runtime::new(MemoryJournal::new());
    /// rt.run("label-7", label(7)).await?.unwrap();
    /// let info = rt.runs().info("label-7").await?.unwrap();
    /// assert_eq!(info.status, RunStatus::Completed);
    /// assert_eq!(info.step("print#0").unwrap().attempts, 1);
    /// assert!(rt.runs().info("nothing").await?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn info(&self, key: &str) -> Result<Option<RunInfo>> {
        validate_lookup_key(key)?;
        Ok(self
            .journal
            .load_run(key)
            .await?
            .map(RunInfo::from_snapshot))
    }

    /// The child workflows run `key` started (`child!`), in the order it
    /// started them, without their steps.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{MemoryJournal, Runtime};
    ///
    /// let rt = Runtime::new(MemoryJournal::new());
    /// assert!(rt.runs().children("order-7").await?.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn children(&self, key: &str) -> Result<Vec<RunInfo>> {
        validate_lookup_key(key)?;
        let filter = RunFilter {
            parent: Some(key.to_owned()),
            ..RunFilter::default()
        };
        self.list(&filter).await
    }

    /// Runs matching `filter` (without their steps; see [`info`](Self::info)),
    /// in the order they were created. Page with [`RunFilter::after`] set to
    /// the last key of the previous page.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{MemoryJournal, RunFilter, RunState, Runtime};
    ///
    /// let rt = Runtime::new(MemoryJournal::new());
    /// let mut page = RunFilter { state: Some(RunState::Failed), limit: Some(100), ..RunFilter::default() };
    /// loop {
    ///     let runs = rt.runs().list(&page).await?;
    ///     for run in &runs {
    ///         println!("{} failed: {:?}", run.key, run.last_error);
    ///     }
    ///     match runs.last() {
    ///         Some(last) => page.after = Some(last.key.clone()),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list(&self, filter: &RunFilter) -> Result<Vec<RunInfo>> {
        let runs = self.journal.list_runs(filter).await?;
        Ok(runs.into_iter().map(info_without_steps).collect())
    }

    /// Runs whose [`RunStatus`] is `status` and that match `filter` (whose
    /// `state` is replaced by the one `status` implies), in the order they
    /// were created, at most `filter.limit`. The statuses of incomplete runs
    /// depend on leases and times, so they are read page by page from the
    /// incomplete runs; a run that changes while listed may be missed or
    /// listed with its new status.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{MemoryJournal, RunFilter, RunStatus, Runtime};
    ///
    /// let rt = Runtime::new(MemoryJournal::new());
    /// let filter = RunFilter { limit: Some(20), ..RunFilter::default() };
    /// let backing_off = rt.runs().list_with_status(RunStatus::BackingOff, &filter).await?;
    /// assert!(backing_off.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_with_status(
        &self,
        status: RunStatus,
        filter: &RunFilter,
    ) -> Result<Vec<RunInfo>> {
        let state = match status {
            RunStatus::Completed => RunState::Completed,
            RunStatus::Failed => RunState::Failed,
            RunStatus::Cancelled => RunState::Cancelled,
            RunStatus::DeadlineExceeded => RunState::DeadlineExceeded,
            RunStatus::DeadLettered => RunState::DeadLettered,
            RunStatus::Pending
            | RunStatus::Running
            | RunStatus::WaitingToRetry
            | RunStatus::BackingOff
            | RunStatus::Waiting => RunState::Incomplete,
        };
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut page = RunFilter {
            state: Some(state),
            limit: Some(limit.clamp(1, PAGE)),
            ..filter.clone()
        };
        let mut found = Vec::new();
        while found.len() < limit {
            let runs = self.journal.list_runs(&page).await?;
            let full = runs.len() == page.limit.unwrap_or(PAGE);
            page.after = runs.last().map(|r| r.key.clone());
            for run in runs {
                // Only a leased run can wait out a step's retry delay: its steps say.
                let info = match run.is_leased_at(Timestamp::now()) {
                    true => self.info(&run.key).await?,
                    false => Some(info_without_steps(run)),
                };
                if let Some(info) = info.filter(|i| i.status == status) {
                    found.push(info);
                }
            }
            if !full {
                break;
            }
        }
        found.truncate(limit);
        Ok(found)
    }

    /// Dead-lettered runs, oldest first, at most `limit`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{MemoryJournal, Runtime};
    ///
    /// let rt = Runtime::new(MemoryJournal::new());
    /// for run in rt.runs().dead_letters(50).await? {
    ///     println!("{} set aside: {:?}", run.key, run.last_error);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<RunInfo>> {
        let filter = RunFilter {
            state: Some(RunState::DeadLettered),
            limit: Some(limit),
            ..RunFilter::default()
        };
        self.list(&filter).await
    }

    /// Cancels run `key`: a run no live worker holds is cancelled at once;
    /// one a worker is executing stops at its next step boundary (a step
    /// already executing finishes and is journaled, no new one starts), even
    /// if it is past its last step but has not recorded its outcome yet.
    /// Either way its stable outcome is [`Error::Cancelled`]. Cancelling a
    /// finished run changes nothing and says so. [`Error::UnknownRun`] if no
    /// run has the key.
    ///
    /// The run's child workflows (`child!`) that have not finished are
    /// cancelled too, and theirs, down the tree, in the same call (one
    /// command each, after the run's own). If the call fails half-way,
    /// calling it again finishes the job.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{CommandOutcome, MemoryJournal, Runtime};
    ///
    /// let rt = Runtime::new(MemoryJournal::new());
    /// let unknown = rt.runs().cancel("order-7").await;
    /// assert!(matches!(unknown, Err(resumable::Error::UnknownRun { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cancel(&self, key: &str) -> Result<CommandOutcome> {
        let result = self.command(key, Command::Cancel).await?;
        self.cancel_descendants(key).await?;
        Ok(match result {
            (run, true) if run.state == RunState::Incomplete => CommandOutcome::Requested,
            (run, true) => CommandOutcome::Done(run.state),
            (run, false) if run.cancel_requested_at.is_some() && !run.state.is_finished() => {
                CommandOutcome::Requested
            }
            (run, false) => CommandOutcome::Unchanged(run.state),
        })
    }

    /// Resumes run `key` if it failed, was cancelled, ran out of time or was
    /// dead-lettered: an operator's decision, recorded in the run
    /// ([`RunInfo::resumed_at`]). It becomes incomplete and due now, without
    /// its deadline or counted failures; its recorded steps replay, and the
    /// steps whose failure ended it run again. A completer picks it up, or
    /// [`Runtime::run`](crate::Runtime::run) with its key executes it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{resumable, step, CommandOutcome, MemoryJournal, RunState, Runtime};
    ///
    /// #[resumable]
    /// async fn charge(cents: u64) -> Result<u64, String> {
    ///     let charged = step!("charge", { cents });
    ///     Ok(charged)
    /// }
    ///
    /// let rt = Runtime::new(MemoryJournal::new());
    /// rt.run("charge-1", charge(500)).await?.unwrap();
    /// // A completed run is not resumed.
    /// let outcome = rt.runs().resume("charge-1").await?;
    /// assert_eq!(outcome, CommandOutcome::Unchanged(RunState::Completed));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn resume(&self, key: &str) -> Result<CommandOutcome> {
        self.command(key, Command::Resume).await.map(outcome)
    }

    /// Makes run `key` due now if it is incomplete and waits out a backoff
    /// (its own, or a step's retry delay), so that a completer takes it at
    /// once and its retrying steps try again without waiting.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{Client, CommandOutcome, MemoryJournal, RunState, WorkflowRef};
    ///
    /// const JOB: WorkflowRef<(u32,), Result<u32, String>> = WorkflowRef::named("job");
    /// let client = Client::new(MemoryJournal::new());
    /// client.submit(&JOB, "job-1", (1,)).await?;
    /// // Due already: made due now all the same.
    /// let outcome = client.runs().retry_now("job-1").await?;
    /// assert_eq!(outcome, CommandOutcome::Done(RunState::Incomplete));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn retry_now(&self, key: &str) -> Result<CommandOutcome> {
        self.command(key, Command::RetryNow).await.map(outcome)
    }

    /// Starts run `new_key` from run `source`'s journal: the same workflow
    /// and input, with copies of the source's first `steps` recorded steps
    /// (in recording order). Executed with the current code (by a completer,
    /// or by [`Runtime::run`](crate::Runtime::run) with the new key and the
    /// same input), it replays those steps and executes the rest. The source
    /// is untouched. A retried call returns the fork it made;
    /// [`Error::RunExists`] if `new_key` names another run.
    ///
    /// A fork that would keep the start of a child workflow (`child!`) but
    /// not its recorded outcome is refused with [`Error::InvalidFork`]: the
    /// child tells only the run that started it, so the fork would wait for
    /// it forever. Fork before the start, or after the outcome.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{resumable, step, MemoryJournal, Runtime};
    ///
    /// #[resumable]
    /// async fn quote(item: u32) -> Result<u32, String> {
    ///     let price = step!("price", { item * 10 });
    ///     let total = step!("total", { price + 1 });
    ///     Ok(total)
    /// }
    ///
    /// let rt = Runtime::new(MemoryJournal::new());
    /// rt.run("quote-1", quote(4)).await?.unwrap();
    /// // Keep the recorded price, compute the total again with today's code.
    /// let fork = rt.runs().fork("quote-1", 1, "quote-1-again").await?;
    /// assert_eq!(fork.forked_from.as_deref(), Some("quote-1"));
    /// assert_eq!(rt.run("quote-1-again", quote(4)).await?, Ok(41));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fork(&self, source: &str, steps: u64, new_key: &str) -> Result<RunInfo> {
        validate_key(new_key)?;
        validate_lookup_key(source)?;
        if let Some(snapshot) = self.journal.load_run(source).await? {
            let kept = |id: &str| {
                snapshot.steps.iter().any(|s| {
                    s.step_id == id && s.state.is_recorded() && s.seq.is_some_and(|q| q < steps)
                })
            };
            let split = snapshot.steps.iter().find(|s| {
                s.step_id
                    .strip_prefix("child:")
                    .is_some_and(|rest| kept(&s.step_id) && !kept(&format!("child-result:{rest}")))
            });
            if let Some(start) = split {
                return Err(Error::InvalidFork {
                    run: source.to_owned(),
                    reason: format!(
                        "it would keep {} (the start of a child workflow) without its outcome, and wait for that child forever",
                        start.step_id
                    ),
                });
            }
        }
        let run = self
            .journal
            .fork_run(source, new_key, steps, Timestamp::now())
            .await?;
        Ok(info_without_steps(run))
    }

    /// Deletes every finished run (completed, failed, cancelled, past its
    /// deadline) that last changed more than `older_than` ago, with all its
    /// records, in writes of [`PURGE_BATCH`] runs, so that workers are never
    /// held up for long. Unfinished and dead-lettered runs are never
    /// touched. Returns how many runs it deleted.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use std::time::Duration;
    /// use resumable::{MemoryJournal, Runtime};
    ///
    /// let rt = Runtime::new(MemoryJournal::new());
    /// // Keep 30 days of finished runs.
    /// let deleted = rt.runs().purge(Duration::from_secs(30 * 86_400)).await?;
    /// assert_eq!(deleted, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn purge(&self, older_than: Duration) -> Result<u64> {
        let before = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut deleted = 0;
        loop {
            let batch = self.purge_batch(before, PURGE_BATCH).await?;
            deleted += batch as u64;
            if batch < PURGE_BATCH {
                return Ok(deleted);
            }
            // Let workers' writes in between batches.
            tokio::task::yield_now().await;
        }
    }

    /// One write of [`purge`](Self::purge): deletes up to `limit` finished
    /// runs that last changed before `before`; returns how many. For a
    /// loop of your own (a progress bar, a pause between batches).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use std::time::{Duration, SystemTime};
    /// use resumable::{MemoryJournal, Runtime};
    ///
    /// let rt = Runtime::new(MemoryJournal::new());
    /// let before = SystemTime::now() - Duration::from_secs(7 * 86_400);
    /// let mut deleted = 0;
    /// loop {
    ///     let batch = rt.runs().purge_batch(before, 500).await?;
    ///     deleted += batch;
    ///     if batch < 500 {
    ///         break;
    ///     }
    /// }
    /// assert_eq!(deleted, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn purge_batch(&self, before: SystemTime, limit: usize) -> Result<usize> {
        self.journal.purge(Timestamp::from(before), limit).await
    }

    /// Cancels every unfinished run started (directly or not) by run `key`.
    async fn cancel_descendants(&self, key: &str) -> Result<()> {
        let mut parents = vec![key.to_owned()];
        while let Some(parent) = parents.pop() {
            let mut after = None;
            loop {
                let filter = RunFilter {
                    parent: Some(parent.clone()),
                    after: after.take(),
                    limit: Some(PAGE),
                    ..RunFilter::default()
                };
                let children = self.journal.list_runs(&filter).await?;
                for child in &children {
                    if !child.state.is_finished() {
                        self.journal
                            .command(&child.key, Command::Cancel, Timestamp::now())
                            .await?;
                    }
                    parents.push(child.key.clone());
                }
                if children.len() < PAGE {
                    break;
                }
                after = children.last().map(|c| c.key.clone());
            }
        }
        Ok(())
    }

    async fn command(&self, key: &str, command: Command) -> Result<(RunRecord, bool)> {
        validate_lookup_key(key)?;
        self.journal
            .command(key, command, Timestamp::now())
            .await?
            .ok_or_else(|| Error::UnknownRun {
                run: key.to_owned(),
            })
    }
}

fn outcome((run, changed): (RunRecord, bool)) -> CommandOutcome {
    match changed {
        true => CommandOutcome::Done(run.state),
        false => CommandOutcome::Unchanged(run.state),
    }
}

fn info_without_steps(run: RunRecord) -> RunInfo {
    RunInfo::from_snapshot(RunSnapshot {
        run,
        steps: Vec::new(),
    })
}
