//! The state of one executing run: what the journal recorded, which steps the
//! code has asked for, and how an infrastructure failure stops the workflow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures_util::task::AtomicWaker;

use crate::codec::Envelope;
use crate::error::{Error, Location};
use crate::journal::{Journal, Lease, RunSnapshot, StepRecord, StepState, Timestamp};
use crate::retry::RetryPolicy;

/// A handle on the executing run, given to the workflow body by `#[resumable]`.
/// Cheap to clone; not meant to be used directly.
///
/// It also names the *scope* the code runs in: the workflow body, or one of
/// the `async` blocks in it that contain steps. Step ids count occurrences
/// per scope, and a block's scope is numbered when the block is created, so
/// ids do not depend on the order in which concurrent blocks run.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub(crate) run: Arc<RunCtx>,
    scope: Arc<Scope>,
}

#[derive(Debug, Default)]
struct Scope {
    /// Empty for the workflow body, else `2` or `2.1` (child 1 of child 2).
    path: String,
    children: AtomicU32,
    occurrences: Mutex<HashMap<&'static str, u32>>,
}

impl Ctx {
    pub(crate) fn root(run: Arc<RunCtx>) -> Self {
        Ctx {
            run,
            scope: Arc::default(),
        }
    }

    /// The context of an `async` block created in this scope (used by generated code).
    pub fn child(&self) -> Ctx {
        let n = self.scope.children.fetch_add(1, Ordering::Relaxed);
        let path = if self.scope.path.is_empty() {
            n.to_string()
        } else {
            format!("{}.{n}", self.scope.path)
        };
        Ctx {
            run: self.run.clone(),
            scope: Arc::new(Scope {
                path,
                ..Scope::default()
            }),
        }
    }

    /// The id of the next call of step `name` in this scope: `name#3` in the
    /// workflow body, `name@2.1#0` in a concurrent block.
    pub(crate) fn next_step_id(&self, name: &'static str) -> String {
        let mut occurrences = self
            .scope
            .occurrences
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = occurrences.entry(name).or_insert(0);
        let occurrence = *n;
        *n = n.saturating_add(1);
        if self.scope.path.is_empty() {
            format!("{name}#{occurrence}")
        } else {
            format!("{name}@{}#{occurrence}", self.scope.path)
        }
    }
}

#[derive(Debug)]
pub(crate) struct RunCtx {
    pub run_key: String,
    pub workflow: &'static str,
    /// Shared, so a step's write does not copy the lease's strings.
    lease: Mutex<Arc<Lease>>,
    pub journal: Arc<dyn Journal>,
    pub envelope: Envelope,
    pub retry: RetryPolicy,
    state: Mutex<ReplayState>,
    driver: AtomicWaker,
}

/// What a step learns when it first asks the run about itself.
pub(crate) enum Decision {
    /// The journal has its result.
    Replay(StepRecord),
    /// It must run; earlier failed attempts, the first start time, and when
    /// the next attempt is due, from the journal.
    Execute {
        attempts: u32,
        started_at: Timestamp,
        retry_at: Option<Timestamp>,
    },
}

#[derive(Debug, Default)]
struct ReplayState {
    /// Recorded steps the code has not asked for yet.
    recorded: HashMap<String, StepRecord>,
    /// Steps with failed attempts and nothing recorded.
    retrying: HashMap<String, StepRecord>,
    next_seq: u64,
    issued: u64,
    executing: usize,
    /// New steps held back until every recorded step is replayed (see `decide`).
    gated: HashMap<String, Gated>,
    abort: Option<Error>,
}

#[derive(Debug)]
struct Gated {
    issued: u64,
    location: Location,
    waker: Waker,
}

impl RunCtx {
    pub fn new(
        snapshot: &mut RunSnapshot,
        lease: Lease,
        journal: Arc<dyn Journal>,
        envelope: Envelope,
        retry: RetryPolicy,
        workflow: &'static str,
    ) -> Self {
        let mut state = ReplayState {
            recorded: HashMap::with_capacity(snapshot.steps.len()),
            ..ReplayState::default()
        };
        for step in snapshot.steps.drain(..) {
            match step.state {
                StepState::Completed | StepState::Failed => {
                    let after = step.seq.unwrap_or(0).saturating_add(1);
                    state.next_seq = state.next_seq.max(after);
                    state.recorded.insert(step.step_id.clone(), step);
                }
                StepState::Retrying => {
                    state.retrying.insert(step.step_id.clone(), step);
                }
            }
        }
        RunCtx {
            run_key: snapshot.run.key.clone(),
            workflow,
            lease: Mutex::new(Arc::new(lease)),
            journal,
            envelope,
            retry,
            state: Mutex::new(state),
            driver: AtomicWaker::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, ReplayState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn lease(&self) -> Arc<Lease> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_lease(&self, lease: Lease) {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(lease);
    }

    pub fn next_seq(&self) -> u64 {
        let mut st = self.state();
        let seq = st.next_seq;
        st.next_seq = seq.saturating_add(1);
        seq
    }

    /// Decides whether step `id` replays or runs.
    ///
    /// A step the journal did not record must wait while recorded steps remain
    /// unreplayed: if the code is deterministic, no recorded step depends on a
    /// step that never completed, so those are all reached without it. If they
    /// are not reached, the workflow stalls and the driver reports
    /// [`Error::NonDeterminism`] instead of running a step out of order.
    pub fn decide(&self, id: &str, location: Location, cx: &mut Context<'_>) -> Poll<Decision> {
        let mut st = self.state();
        if st.abort.is_some() {
            // The run is stopping: start nothing more.
            return Poll::Pending;
        }
        if let Some(record) = st.recorded.remove(id) {
            st.gated.remove(id);
            if st.recorded.is_empty() {
                for (_, gated) in st.gated.drain() {
                    gated.waker.wake();
                }
            }
            return Poll::Ready(Decision::Replay(record));
        }
        if !st.recorded.is_empty() {
            let issued = st.issued;
            match st.gated.get_mut(id) {
                Some(g) => g.waker.clone_from(cx.waker()),
                None => {
                    st.issued += 1;
                    st.gated.insert(
                        id.to_owned(),
                        Gated {
                            issued,
                            location,
                            waker: cx.waker().clone(),
                        },
                    );
                }
            }
            return Poll::Pending;
        }
        st.gated.remove(id);
        st.executing += 1;
        let decision = match st.retrying.remove(id) {
            Some(r) => Decision::Execute {
                attempts: r.attempts,
                started_at: r.started_at,
                retry_at: r.retry_at,
            },
            None => Decision::Execute {
                attempts: 0,
                started_at: Timestamp::now(),
                retry_at: None,
            },
        };
        Poll::Ready(decision)
    }

    /// A step that was executing has finished or was dropped.
    pub fn step_done(&self) {
        let mut st = self.state();
        st.executing = st.executing.saturating_sub(1);
    }

    /// A gated step future was dropped before it was released.
    pub fn forget_gated(&self, id: &str) {
        self.state().gated.remove(id);
    }

    /// Stops the workflow with `err`; the driver returns it at its next check.
    pub fn abort(&self, err: Error) {
        let mut st = self.state();
        if st.abort.is_none() {
            st.abort = Some(err);
        }
        drop(st);
        self.driver.wake();
    }

    pub fn register_driver(&self, waker: &Waker) {
        self.driver.register(waker);
    }

    /// The error a step stopped the run with, if any.
    pub fn take_abort(&self) -> Option<Error> {
        self.state().abort.take()
    }

    /// If the replay is stalled — no step is executing, and every step that
    /// waits does so for recorded steps nobody asks for — the error saying so.
    pub fn stall(&self) -> Option<Error> {
        let st = self.state();
        if st.executing > 0 || st.gated.is_empty() || st.recorded.is_empty() {
            return None;
        }
        let (found, gated) = st.gated.iter().min_by_key(|(_, g)| g.issued)?;
        Some(Error::NonDeterminism {
            run: self.run_key.clone(),
            expected: earliest(&st.recorded),
            found: found.clone(),
            location: gated.location,
        })
    }

    /// At the end of the workflow: the first recorded step never asked for, if any.
    pub fn unreplayed(&self) -> Option<String> {
        let st = self.state();
        (!st.recorded.is_empty()).then(|| earliest(&st.recorded))
    }
}

fn earliest(recorded: &HashMap<String, StepRecord>) -> String {
    recorded
        .values()
        .min_by_key(|r| (r.seq, r.step_id.as_str()))
        .map(|r| r.step_id.clone())
        .unwrap_or_default()
}

/// Turns a panic payload into its message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}
