//! The state of one executing run: what the journal recorded, which steps the
//! code has asked for, and how an infrastructure failure stops the workflow.

use std::collections::HashMap;
use std::fmt::Write as _;
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
    ids: Mutex<StepIds>,
}

/// What a scope needs to name its steps.
#[derive(Debug, Default)]
struct StepIds {
    /// How often each step name was reached in this scope. A workflow has
    /// few step names: a list is quicker than hashing each name.
    occurrences: Vec<(&'static str, u32)>,
    /// Where an id is written before it is copied into its own allocation.
    buffer: String,
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

    /// The scope's path: empty for the workflow body, else `2` or `2.1`.
    pub(crate) fn scope_path(&self) -> &str {
        &self.scope.path
    }

    /// The id of the next call of step `name` in this scope: `name#3` in the
    /// workflow body, `name@2.1#0` in a concurrent block.
    pub(crate) fn next_step_id(&self, name: &'static str) -> Arc<str> {
        let mut ids = self.scope.ids.lock().unwrap_or_else(|p| p.into_inner());
        let StepIds {
            occurrences,
            buffer: id,
        } = &mut *ids;
        let occurrence = match occurrences.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => {
                let occurrence = *count;
                *count = count.saturating_add(1);
                occurrence
            }
            None => {
                occurrences.push((name, 1));
                0
            }
        };
        let path = &self.scope.path;
        id.clear();
        id.push_str(name);
        if !path.is_empty() {
            id.push('@');
            id.push_str(path);
        }
        id.push('#');
        // Writing to a String cannot fail.
        let _ = write!(id, "{occurrence}");
        Arc::from(id.as_str())
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
    /// When the run must have finished: no step starts after it.
    deadline: Option<Timestamp>,
    /// A step whose next attempt is further away than this stops the run
    /// (to be taken again when the attempt is due) instead of holding its
    /// worker while it waits; `None`: it waits in place.
    pub park_after: Option<std::time::Duration>,
    /// How long a durable wait keeps its worker (see
    /// `RuntimeBuilder::hold_waits`).
    pub hold_waits: std::time::Duration,
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
    recorded: Recorded,
    /// Steps with failed attempts and nothing recorded.
    retrying: HashMap<String, StepRecord>,
    next_seq: u64,
    issued: u64,
    executing: usize,
    /// New steps held back until every recorded step is replayed (see `decide`).
    gated: HashMap<String, Gated>,
    abort: Option<Error>,
    /// Whether this execution has recorded a step.
    progressed: bool,
    /// Why the run is stopping at a step boundary (a cancel, its deadline):
    /// no new step starts, and once no step executes the driver stops it.
    stop: Option<Error>,
    /// Durable waits going on now: sleeps, and receives waiting for a message.
    waiting: Vec<Waiter>,
    /// Once the run is suspended while receives wait: the fewest messages
    /// any of them saw sent to the run.
    suspended_awaiting: Option<u64>,
}

/// A durable wait going on in the run: a sleep (`sleep!`) or a receive
/// waiting for a message (`recv!`).
#[derive(Debug, Clone)]
pub(crate) struct Waiter {
    /// The sleep's or the receive's id.
    pub id: Arc<str>,
    /// When it ends by itself: a sleep's wake time, a receive's deadline
    /// (`None`: it waits for a message only).
    pub until: Option<Timestamp>,
    /// Until then it keeps its worker: the execution is not ended (a sleep
    /// due soon, a message that may come soon).
    pub holds_until: Timestamp,
    /// A receive's topic; `None` for a sleep.
    pub topic: Option<Arc<str>>,
    /// For a receive, how many messages had been sent to the run when it
    /// last looked for one.
    pub seen: u64,
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
        park_after: Option<std::time::Duration>,
    ) -> Self {
        let deadline = snapshot.run.deadline;
        let mut state = ReplayState::default();
        // In place: a long run's steps are a large allocation, not to be copied.
        let mut recorded = std::mem::take(&mut snapshot.steps);
        recorded.retain(|step| match step.state {
            StepState::Completed | StepState::Failed => {
                let after = step.seq.unwrap_or(0).saturating_add(1);
                state.next_seq = state.next_seq.max(after);
                true
            }
            StepState::Retrying => {
                // Rare: a step whose earlier attempts failed.
                state.retrying.insert(step.step_id.clone(), step.clone());
                false
            }
        });
        state.recorded = Recorded::new(recorded);
        RunCtx {
            run_key: snapshot.run.key.clone(),
            workflow,
            lease: Mutex::new(Arc::new(lease)),
            journal,
            envelope,
            retry,
            deadline,
            park_after,
            hold_waits: crate::drive::HOLD,
            state: Mutex::new(state),
            driver: AtomicWaker::new(),
        }
    }

    /// With durable waits keeping their worker for `hold`.
    pub fn holding_waits(mut self, hold: std::time::Duration) -> Self {
        self.hold_waits = hold;
        self
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

    /// The recording order of the next step record written.
    pub fn next_seq(&self) -> u64 {
        let mut st = self.state();
        let seq = st.next_seq;
        st.next_seq = seq.saturating_add(1);
        seq
    }

    /// Gives back `seq` (a receive found no message, so recorded nothing
    /// under it), if no later one was handed out meanwhile.
    pub fn unused_seq(&self, seq: u64) {
        let mut st = self.state();
        if st.next_seq == seq.saturating_add(1) {
            st.next_seq = seq;
        }
    }

    /// This execution recorded a step.
    pub fn recorded(&self) {
        self.state().progressed = true;
    }

    /// Whether this execution has recorded a step.
    pub fn progressed(&self) -> bool {
        self.state().progressed
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
        if let Some(record) = st.recorded.take(id) {
            if !st.gated.is_empty() {
                st.gated.remove(id);
            }
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
        if !st.gated.is_empty() {
            st.gated.remove(id);
        }
        // A step boundary: a stopping run starts nothing new.
        if st.stop.is_none() && self.deadline.is_some_and(|d| Timestamp::now() >= d) {
            st.stop = Some(Error::DeadlineExceeded {
                run: self.run_key.clone(),
            });
        }
        if st.stop.is_some() {
            drop(st);
            self.driver.wake();
            return Poll::Pending;
        }
        st.executing += 1;
        let retrying = if st.retrying.is_empty() {
            None
        } else {
            st.retrying.remove(id)
        };
        let decision = match retrying {
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

    /// A receive that waited for a message executes again (to look for
    /// one), unless the run is stopping; whether it may.
    pub fn step_resumed(&self) -> bool {
        let mut st = self.state();
        if st.abort.is_some() || st.stop.is_some() {
            return false;
        }
        st.executing += 1;
        true
    }

    /// Step `id`'s record, if the journal has it and no code took it yet;
    /// unlike [`decide`](Self::decide), never waits (a race looks for its
    /// recorded winner before its branches replay).
    pub fn take_recorded(&self, id: &str) -> Option<StepRecord> {
        let mut st = self.state();
        let record = st.recorded.take(id)?;
        if st.recorded.is_empty() {
            for (_, gated) in st.gated.drain() {
                gated.waker.wake();
            }
        }
        Some(record)
    }

    /// Forgets what the journal recorded in scope `path` and the scopes in
    /// it (a race's losing branch, which will not run again to replay it).
    pub fn forget_scope(&self, path: &str) {
        let mut st = self.state();
        st.recorded.forget(|id| in_scope(id, path));
        st.retrying.retain(|id, _| !in_scope(id, path));
        if st.recorded.is_empty() {
            for (_, gated) in st.gated.drain() {
                gated.waker.wake();
            }
        }
    }

    /// A step that was executing has finished or was dropped.
    pub fn step_done(&self) {
        let mut st = self.state();
        st.executing = st.executing.saturating_sub(1);
        let stop_now = st.executing == 0 && st.stop.is_some();
        drop(st);
        if stop_now {
            self.driver.wake();
        }
    }

    /// Stops the run at its next step boundary with `reason`
    /// ([`Error::Cancelled`] or [`Error::DeadlineExceeded`]): steps already
    /// executing finish and are journaled, no new one starts.
    pub fn stop_at_boundary(&self, reason: Error) {
        let mut st = self.state();
        if st.stop.is_none() {
            st.stop = Some(reason);
        }
        drop(st);
        self.driver.wake();
    }

    /// Whether the run is stopping at a step boundary.
    pub fn stopping(&self) -> bool {
        self.state().stop.is_some()
    }

    /// Why the run stopped, once it is stopping and no step executes.
    pub fn take_stop(&self) -> Option<Error> {
        let mut st = self.state();
        if st.executing > 0 {
            return None;
        }
        st.stop.take()
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

    /// A durable wait starts.
    pub fn wait_started(&self, waiter: Waiter) {
        self.state().waiting.push(waiter);
        // Its branch may be the last one still going: the driver looks.
        self.driver.wake();
    }

    /// A durable wait `id` ended (it is due, got its message, or was dropped).
    pub fn wait_ended(&self, id: &str) {
        self.state().waiting.retain(|w| &*w.id != id);
    }

    /// If the run was suspended while receives waited: the fewest messages
    /// any of them had seen sent to the run (given back, the run is woken
    /// by any message sent since that look).
    pub fn awaited_messages(&self) -> Option<u64> {
        self.state().suspended_awaiting
    }

    /// If nothing but durable waits keeps the run from going on — no step
    /// executes, at least one wait goes on, and none keeps its worker any
    /// longer — the reason to end the execution and give the run back until
    /// the earliest ends by itself (or, for a receive, a message comes).
    pub fn suspension(&self) -> Option<Error> {
        let mut st = self.state();
        if st.executing > 0 || st.abort.is_some() || st.stop.is_some() || st.waiting.is_empty() {
            return None;
        }
        let now = Timestamp::now();
        if st.waiting.iter().any(|w| w.holds_until > now) {
            return None;
        }
        let first = st
            .waiting
            .iter()
            .min_by_key(|w| w.until.unwrap_or(Timestamp(i64::MAX)))?;
        let run = self.run_key.clone();
        let step = first.id.to_string();
        let (topic, until) = (first.topic.clone(), first.until);
        st.suspended_awaiting = st
            .waiting
            .iter()
            .filter(|w| w.topic.is_some())
            .map(|w| w.seen)
            .min();
        Some(match (topic, until) {
            (None, Some(until)) => Error::Sleeping {
                run,
                step,
                until: until.to_system_time(),
            },
            (topic, until) => Error::WaitingForMessage {
                run,
                step,
                topic: topic.as_deref().unwrap_or_default().to_owned(),
                until: until.map(Timestamp::to_system_time),
            },
        })
    }

    /// If the replay is stalled — no step is executing, no wait goes on, and
    /// every step that waits does so for recorded steps nobody asks for —
    /// the error saying so.
    pub fn stall(&self) -> Option<Error> {
        let st = self.state();
        if st.executing > 0
            || st.gated.is_empty()
            || st.recorded.is_empty()
            || !st.waiting.is_empty()
        {
            return None;
        }
        let (found, gated) = st.gated.iter().min_by_key(|(_, g)| g.issued)?;
        Some(Error::NonDeterminism {
            run: self.run_key.clone(),
            expected: st.recorded.earliest(),
            found: found.clone(),
            location: gated.location,
        })
    }

    /// At the end of the workflow: the first recorded step never asked for, if any.
    pub fn unreplayed(&self) -> Option<String> {
        let st = self.state();
        (!st.recorded.is_empty()).then(|| st.recorded.earliest())
    }
}

/// The recorded steps not yet replayed, in the order they were recorded.
///
/// Code that replays asks for its steps in the order it recorded them, but
/// for concurrent branches: the next one in order is found by comparing one
/// id, and an index by id is built only when a step is asked for out of order.
#[derive(Debug, Default)]
struct Recorded {
    /// Ordered by `(seq, step_id)`; `None` once replayed.
    steps: Vec<Option<StepRecord>>,
    /// Steps before this position have all been replayed.
    next: usize,
    left: usize,
    by_id: Option<HashMap<String, usize>>,
}

impl Recorded {
    fn new(mut steps: Vec<StepRecord>) -> Self {
        let order = |a: &StepRecord, b: &StepRecord| (a.seq, &a.step_id).cmp(&(b.seq, &b.step_id));
        // Journals load steps in this order already; sorting would move every record.
        if !steps.is_sorted_by(|a, b| order(a, b).is_le()) {
            steps.sort_by(order);
        }
        Recorded {
            left: steps.len(),
            steps: steps.into_iter().map(Some).collect(),
            next: 0,
            by_id: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// Takes step `id`'s record, if it is recorded and not yet replayed.
    fn take(&mut self, id: &str) -> Option<StepRecord> {
        if self.left == 0 {
            return None;
        }
        while matches!(self.steps.get(self.next), Some(None)) {
            self.next += 1;
        }
        let position = match self.steps.get(self.next) {
            Some(Some(next)) if next.step_id == id => self.next,
            _ => {
                let steps = &self.steps;
                let by_id = self.by_id.get_or_insert_with(|| {
                    steps
                        .iter()
                        .enumerate()
                        .filter_map(|(i, s)| Some((s.as_ref()?.step_id.clone(), i)))
                        .collect()
                });
                by_id.remove(id)?
            }
        };
        let record = self.steps[position].take()?;
        self.left -= 1;
        Some(record)
    }

    /// Forgets the steps not yet replayed whose id `matches`.
    fn forget(&mut self, matches: impl Fn(&str) -> bool) {
        for slot in &mut self.steps[self.next..] {
            if slot.as_ref().is_some_and(|r| matches(&r.step_id)) {
                *slot = None;
                self.left -= 1;
            }
        }
        self.by_id = None;
    }

    /// The first recorded step not yet replayed (empty if none).
    fn earliest(&self) -> String {
        self.steps[self.next..]
            .iter()
            .flatten()
            .next()
            .map(|r| r.step_id.clone())
            .unwrap_or_default()
    }
}

/// Whether step id `id` (`name@2.1#0`) is in scope `path` or one inside it.
fn in_scope(id: &str, path: &str) -> bool {
    let Some((named, _occurrence)) = id.rsplit_once('#') else {
        return false;
    };
    let Some((_, scope)) = named.rsplit_once('@') else {
        return false;
    };
    scope == path
        || scope
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('.'))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(ids: &[&str]) -> Recorded {
        let steps = ids
            .iter()
            .enumerate()
            .map(|(seq, id)| StepRecord {
                step_id: (*id).to_owned(),
                seq: Some(seq as u64),
                state: StepState::Completed,
                output: Some(Vec::new()),
                attempts: 1,
                last_error: None,
                retry_at: None,
                epoch: 1,
                started_at: Timestamp(0),
                updated_at: Timestamp(0),
            })
            // Loaded in another order than recorded.
            .rev()
            .collect();
        Recorded::new(steps)
    }

    #[test]
    fn forgotten_scopes_are_a_scope_and_those_inside_it() {
        assert!(in_scope("a@2#0", "2"));
        assert!(in_scope("a@2.1#3", "2"));
        assert!(!in_scope("a@21#0", "2"));
        assert!(!in_scope("a#0", "2"));
        assert!(!in_scope("a@1.2#0", "2"));
        let mut steps = recorded(&["a#0", "b@2#0", "c@2.0#0", "d@3#0"]);
        steps.forget(|id| in_scope(id, "2"));
        assert_eq!(steps.earliest(), "a#0");
        assert!(steps.take("b@2#0").is_none() && steps.take("c@2.0#0").is_none());
        assert!(steps.take("a#0").is_some() && steps.take("d@3#0").is_some());
        assert!(steps.is_empty());
    }

    #[test]
    fn recorded_steps_are_found_in_order_and_out_of_order() {
        let mut steps = recorded(&["a#0", "b#0", "c#0", "d#0"]);
        assert_eq!(steps.earliest(), "a#0");
        assert_eq!(steps.take("a#0").unwrap().step_id, "a#0");
        // Out of order, as concurrent branches may ask.
        assert_eq!(steps.take("c#0").unwrap().step_id, "c#0");
        assert!(steps.take("c#0").is_none(), "a step is replayed once");
        assert!(steps.take("x#0").is_none());
        assert_eq!(steps.earliest(), "b#0");
        assert_eq!(steps.take("b#0").unwrap().step_id, "b#0");
        assert!(!steps.is_empty());
        assert_eq!(steps.take("d#0").unwrap().step_id, "d#0");
        assert!(steps.is_empty());
        assert_eq!(steps.earliest(), "");
    }
}
