//! The [`Completer`]: a background worker that finds incomplete runs nobody
//! is executing, claims them, and drives them to completion.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::journal::{JournalEvent, Lease, RunSnapshot, Subscription, Timestamp};
use crate::runtime::{Ended, PastExecutions, Runtime};
use crate::workflow::{BoxFuture, Journaled, Workflow, WorkflowResult};

/// Finds runs that are incomplete, unleased (or whose lease expired) and due,
/// claims them under a lease, and resumes them with the registered workflow
/// code, the journaled input and the dependencies given at registration.
/// It claims only runs of the workflows registered with it: workers with
/// different workflows can share one journal, each taking its own runs.
///
/// Concurrency is bounded; a run that stops with an error is given back with
/// the error as its last error and taken again after a growing backoff.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use resumable::{Completer, MemoryJournal, Runtime};
/// let rt = Runtime::new(MemoryJournal::new());
/// let report = Completer::new(&rt).run_until_idle().await.unwrap();
/// assert_eq!(report.finished, 0);
/// # }
/// ```
pub struct Completer {
    rt: Runtime,
    registry: HashMap<&'static str, Arc<dyn Resume>>,
    concurrency: usize,
    poll_interval: Duration,
    shutdown_grace: Duration,
}

impl std::fmt::Debug for Completer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completer")
            .field("workflows", &self.registry.keys().collect::<Vec<_>>())
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// What a completer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompleterReport {
    /// Runs it drove to an outcome (success or terminal failure).
    pub finished: u64,
    /// Executions that stopped with an error (the runs were given back).
    pub interrupted: u64,
    /// Executions that ended waiting, in a durable sleep (`sleep!`) or for a
    /// message (`recv!`): the runs were given back until the sleep is due or
    /// the message comes.
    pub waiting: u64,
}

trait Resume: Send + Sync {
    fn resume(
        &self,
        rt: Runtime,
        snapshot: RunSnapshot,
        lease: Lease,
    ) -> BoxFuture<'static, Result<()>>;
}

struct Registered<D, I, R, C> {
    workflow: Workflow<D, I, R, C>,
    deps: Arc<D>,
}

impl<D, I, R, C> Resume for Registered<D, I, R, C>
where
    D: Send + Sync + 'static,
    I: Journaled,
    R: WorkflowResult + Journaled,
    C: Codec,
{
    fn resume(
        &self,
        rt: Runtime,
        snapshot: RunSnapshot,
        lease: Lease,
    ) -> BoxFuture<'static, Result<()>> {
        let deps = self.deps.clone();
        let workflow = self.workflow;
        Box::pin(async move {
            let start = |ctx, input| (workflow.start)(&*deps, ctx, input);
            rt.execute::<I, R, C>(workflow.meta, snapshot, lease, start, Some(PARK_AFTER))
                .await
                .map(drop)
        })
    }
}

#[derive(Default)]
struct Counters {
    finished: AtomicU64,
    interrupted: AtomicU64,
    waiting: AtomicU64,
}

impl Completer {
    /// A completer using `rt`'s journal and settings, with no workflows yet.
    pub fn new(rt: &Runtime) -> Self {
        Completer {
            rt: rt.clone(),
            registry: HashMap::new(),
            concurrency: 16,
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// Registers a workflow (from `workflow!(path::to::function)`) with the
    /// dependencies its runs are resumed with: the receiver of a method,
    /// or its `#[dep]` arguments.
    pub fn register<D, I, R, C>(
        mut self,
        workflow: Workflow<D, I, R, C>,
        deps: impl Into<Arc<D>>,
    ) -> Result<Self>
    where
        D: Send + Sync + 'static,
        I: Journaled,
        R: WorkflowResult + Journaled,
        C: Codec,
    {
        let name = workflow.meta.name;
        if self.registry.contains_key(name) {
            return Err(Error::DuplicateWorkflow {
                workflow: name.to_owned(),
            });
        }
        let registered = Registered {
            workflow,
            deps: deps.into(),
        };
        self.registry.insert(name, Arc::new(registered));
        Ok(self)
    }

    /// How many runs execute at once (default 16).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How often to look for due runs when idle (default 1 s). With a
    /// journal that pushes wake-ups ([`Journal::subscribe`](crate::Journal::subscribe)),
    /// submitted and given-back runs are claimed as soon as they are due;
    /// polling still finds runs whose lease expired.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// How long [`CompleterHandle::shutdown`] lets executing runs finish before
    /// interrupting them (default 10 s).
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }

    /// Starts the completer as a tokio task.
    pub fn start(self) -> CompleterHandle {
        let stop = Arc::new(Notify::new());
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(self.work(Some(stop.clone()), counters.clone()));
        CompleterHandle {
            stop,
            task,
            counters,
        }
    }

    /// Completes every run that is due now (and those that become due while
    /// it works), then returns. Runs waiting out a backoff are left alone.
    pub async fn run_until_idle(self) -> Result<CompleterReport> {
        let counters = Arc::new(Counters::default());
        self.work(None, counters.clone()).await?;
        Ok(counters.report())
    }

    async fn work(self, stop: Option<Arc<Notify>>, counters: Arc<Counters>) -> Result<()> {
        let Completer {
            rt,
            registry,
            concurrency,
            poll_interval,
            shutdown_grace,
        } = self;
        let registry = Arc::new(registry);
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut tasks = JoinSet::new();
        let stopped = async {
            match &stop {
                Some(stop) => stop.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stopped);
        let mut events = rt.journal().subscribe();
        let mut due_times = DueTimes::default();
        // Runs left leased by worker processes on this machine that died
        // are taken at once, at start and then now and then.
        let mut next_recovery = tokio::time::Instant::now();
        'work: loop {
            if tokio::time::Instant::now() >= next_recovery {
                if let Err(err) = rt.recover_gone_workers().await {
                    tracing::warn!(error = %err, "completer could not look for runs of dead workers");
                }
                next_recovery = tokio::time::Instant::now() + RECOVERY_INTERVAL;
            }
            let free = slots.available_permits();
            let mut claimed = 0;
            if free > 0 {
                // Only runs it has the code for: another worker's are its own.
                let request = rt.lease_request().of_workflows(registry.keys().copied());
                match rt.journal().claim_due(request, free).await {
                    Ok(runs) => {
                        claimed = runs.len();
                        for (snapshot, lease) in runs {
                            let permit = slots
                                .clone()
                                .acquire_owned()
                                .await
                                .expect("semaphore is never closed");
                            let rt = rt.clone();
                            let registry = registry.clone();
                            let counters = counters.clone();
                            tasks.spawn(async move {
                                let outcome = resume(&rt, &registry, snapshot, lease).await;
                                let counter = match outcome {
                                    Ok(()) => &counters.finished,
                                    Err(
                                        Error::Sleeping { .. } | Error::WaitingForMessage { .. },
                                    ) => &counters.waiting,
                                    Err(_) => &counters.interrupted,
                                };
                                counter.fetch_add(1, Ordering::Relaxed);
                                drop(permit);
                            });
                        }
                    }
                    Err(err) => {
                        if stop.is_none() {
                            return Err(err);
                        }
                        tracing::warn!(error = %err, "completer could not claim runs; retrying");
                    }
                }
            }
            if stop.is_none() && claimed == 0 && tasks.is_empty() {
                return Ok(());
            }
            // More may be due right away if every free slot was filled.
            if claimed > 0 && claimed == free {
                tokio::task::yield_now().await;
                continue;
            }
            // Idle: wait for a run to finish (a free slot), a wake-up, the
            // next known due time, or the poll interval.
            loop {
                let sleep = due_times.sleep(poll_interval);
                tokio::select! {
                    _ = &mut stopped => break 'work,
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                        // Every other run that finished meanwhile freed its
                        // slot too: one claim for all of them, not one each
                        // (10,000 runs going to sleep at once cost 10,000
                        // claims, seconds of a core, before this).
                        while tasks.try_join_next().is_some() {}
                        break;
                    }
                    () = tokio::time::sleep(sleep) => {
                        due_times.forget_past();
                        break;
                    }
                    at = due_event(&mut events) => {
                        if at <= Timestamp::now() {
                            break;
                        }
                        due_times.insert(at);
                    }
                }
            }
        }
        // Graceful shutdown: let executing runs finish, then interrupt and give back the rest.
        let drained = tokio::time::timeout(shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            // Each interrupted execution hands its run back as it is dropped.
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            rt.finish_handbacks().await;
        }
        Ok(())
    }
}

/// A step whose next attempt is further away than this gives its run (and
/// the completer's slot) back until then, instead of holding the slot.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// How often a running completer looks for runs left leased by worker
/// processes on this machine that died.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// When the next event says a run becomes due (`Timestamp(0)`, that is now,
/// if events were missed). Never returns if the journal has no events.
async fn due_event(events: &mut Option<Subscription>) -> Timestamp {
    while let Some(subscription) = events {
        match subscription.next().await {
            Some(JournalEvent::Due { at }) => return at,
            Some(JournalEvent::Resync) => return Timestamp(0),
            Some(JournalEvent::Finished { .. } | JournalEvent::Message { .. }) => {}
            None => *events = None,
        }
    }
    std::future::pending().await
}

/// When runs given back with a backoff fall due, as the journal announced
/// them: the completer wakes at each, not only at its next poll.
#[derive(Debug, Default)]
struct DueTimes(BTreeSet<Timestamp>);

impl DueTimes {
    /// More are forgotten (polling finds their runs).
    const MAX: usize = 4096;

    fn insert(&mut self, at: Timestamp) {
        self.0.insert(at);
        if self.0.len() > Self::MAX {
            self.0.pop_last();
        }
    }

    /// How long to sleep: until the earliest due time, at most `poll`.
    fn sleep(&self, poll: Duration) -> Duration {
        let now = Timestamp::now();
        match self.0.first() {
            Some(due) => poll.min(Duration::from_millis(
                due.0.saturating_sub(now.0).max(0) as u64
            )),
            None => poll,
        }
    }

    /// Drops the times that have come.
    fn forget_past(&mut self) {
        let now = Timestamp::now();
        while self.0.first().is_some_and(|due| *due <= now) {
            self.0.pop_first();
        }
    }
}

async fn resume(
    rt: &Runtime,
    registry: &HashMap<&'static str, Arc<dyn Resume>>,
    snapshot: RunSnapshot,
    lease: Lease,
) -> Result<()> {
    match registry.get(snapshot.run.workflow.as_str()) {
        Some(workflow) => workflow.resume(rt.clone(), snapshot, lease).await,
        None => {
            let err = Error::UnknownWorkflow {
                run: snapshot.run.key.clone(),
                workflow: snapshot.run.workflow.clone(),
            };
            tracing::warn!(error = %err, "cannot resume run");
            let past = PastExecutions::of(&snapshot.run);
            rt.give_back_after_error(&lease, &err, past, Ended::default())
                .await;
            Err(err)
        }
    }
}

impl Counters {
    fn report(&self) -> CompleterReport {
        CompleterReport {
            finished: self.finished.load(Ordering::Relaxed),
            interrupted: self.interrupted.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }
}

/// A running [`Completer`].
#[derive(Debug)]
pub struct CompleterHandle {
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<Result<()>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.report().fmt(f)
    }
}

impl CompleterHandle {
    /// What it has done so far.
    pub fn report(&self) -> CompleterReport {
        self.counters.report()
    }

    /// Stops claiming runs, lets executing ones finish within the grace
    /// period, gives back the rest for the next worker, and returns what it did.
    pub async fn shutdown(self) -> Result<CompleterReport> {
        self.stop.notify_one();
        match self.task.await {
            Ok(result) => result.map(|()| self.counters.report()),
            Err(join) => Err(Error::storage("completer", join.to_string())),
        }
    }
}
