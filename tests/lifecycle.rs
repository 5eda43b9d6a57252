//! Runs under an operator's hand, through the `Runtime`, on the in-memory
//! and SQLite journals: cancel, deadlines, dead letters, resume, retry now,
//! fork, purge, and the answers the runtime gives about them.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::FAST;
use resumable::journal::{LeaseRequest, NewRun};
use resumable::{
    Classify, Client, CommandOutcome, Completer, Error, Journal, MemoryJournal, RetryPolicy,
    RunFilter, RunState, RunStatus, Runtime, SqliteJournal, Timestamp, WorkflowRef, resumable,
    step, workflow,
};
use tokio::sync::Notify;

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
enum ShopError {
    #[error("card declined")]
    Declined,
}

impl Classify for ShopError {
    fn is_terminal(&self) -> bool {
        true
    }
}

/// An order in three steps, each recording that it ran; a test can hold a
/// step (or the end of the workflow) until it says go.
#[derive(Default)]
struct Shop {
    ran: Mutex<Vec<&'static str>>,
    hold: Mutex<Option<&'static str>>,
    held: Notify,
    go: Notify,
    decline: AtomicBool,
    broken: AtomicBool,
}

impl Shop {
    #[resumable]
    async fn order(&self, n: u32) -> Result<u32, ShopError> {
        let reserved = step!("reserve", { self.effect("reserve").await + n });
        let charged = step!("charge", {
            self.effect("charge").await;
            match self.decline.load(Ordering::SeqCst) {
                true => Err(ShopError::Declined)?,
                false => reserved + 1,
            }
        });
        if self.broken.load(Ordering::SeqCst) {
            panic!("bug between the steps");
        }
        let shipped = step!("ship", { self.effect("ship").await + charged + 1 });
        self.pause("end").await;
        Ok(shipped)
    }

    async fn effect(&self, name: &'static str) -> u32 {
        self.ran.lock().unwrap().push(name);
        self.pause(name).await;
        0
    }

    /// Waits for `go` if the test holds `point`.
    async fn pause(&self, point: &'static str) {
        let hold = *self.hold.lock().unwrap() == Some(point);
        if hold {
            self.held.notify_one();
            self.go.notified().await;
        }
    }

    fn hold_at(&self, point: &'static str) {
        *self.hold.lock().unwrap() = Some(point);
    }

    fn ran(&self) -> Vec<&'static str> {
        self.ran.lock().unwrap().clone()
    }
}

/// Keeps a journal's storage (a SQLite file, a PostgreSQL schema) until dropped.
type Guard = Option<Box<dyn std::any::Any>>;

/// The journals every test runs on: in memory, SQLite, and PostgreSQL when
/// the tests are given a server.
async fn journals() -> Vec<(&'static str, Arc<dyn Journal>, Guard)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteJournal::open(dir.path().join("journal.db"))
        .await
        .unwrap();
    #[allow(unused_mut)]
    let mut journals: Vec<(&'static str, Arc<dyn Journal>, Guard)> = vec![
        ("memory", Arc::new(MemoryJournal::new()), None),
        ("sqlite", Arc::new(sqlite), Some(Box::new(dir))),
    ];
    #[cfg(all(feature = "postgres", feature = "conformance"))]
    if let Some(schema) = resumable::conformance::postgres::TestSchema::new("lifecycle") {
        let journal = schema.journal().await;
        journals.push(("postgres", Arc::new(journal), Some(Box::new(schema))));
    }
    journals
}

fn runtime(journal: &Arc<dyn Journal>) -> Runtime {
    builder(journal, Duration::ZERO).build()
}

/// Fast step retries; a run that stops with an error backs off for `backoff`.
fn builder(journal: &Arc<dyn Journal>, backoff: Duration) -> resumable::RuntimeBuilder {
    Runtime::builder(journal.clone())
        .default_retry(FAST)
        .run_backoff(RetryPolicy::exponential(u32::MAX).initial_delay(backoff))
}

fn status(rt: &Runtime, key: &str) -> impl Future<Output = RunStatus> {
    let rt = rt.clone();
    let key = key.to_owned();
    async move { rt.run_info(&key).await.unwrap().unwrap().status }
}

/// Runs `shop.order(1)` as run `o` (with a time limit, if given) in a task,
/// and returns once it reached the point the shop holds.
async fn run_until_held(
    rt: &Runtime,
    shop: &Arc<Shop>,
    limit: Option<Duration>,
) -> tokio::task::JoinHandle<resumable::Result<Result<u32, ShopError>>> {
    let running = tokio::spawn({
        let (rt, shop) = (rt.clone(), shop.clone());
        async move {
            let call = shop.order(1);
            let call = match limit {
                Some(limit) => call.time_limit(limit),
                None => call,
            };
            rt.run("o", call).await
        }
    });
    // Reaching the hold, or a clear failure if the run ended before it
    // (rather than a test that hangs).
    let mut running = running;
    tokio::select! {
        () = shop.held.notified() => running,
        ended = &mut running => panic!("the run ended before reaching its hold: {ended:?}"),
    }
}

#[tokio::test]
async fn a_cancel_stops_a_running_run_at_its_next_step_boundary() {
    for (name, journal, _dir) in journals().await {
        let rt = runtime(&journal);
        let shop = Arc::new(Shop::default());
        shop.hold_at("charge");
        let running = run_until_held(&rt, &shop, None).await;
        assert_eq!(
            rt.runs().cancel("o").await.unwrap(),
            CommandOutcome::Requested,
            "{name}"
        );
        assert_eq!(status(&rt, "o").await, RunStatus::Running, "{name}");
        shop.go.notify_one();
        let outcome = running.await.unwrap();
        assert!(
            matches!(outcome, Err(Error::Cancelled { .. })),
            "{name}: {outcome:?}"
        );
        assert_eq!(
            shop.ran(),
            ["reserve", "charge"],
            "{name}: the step in flight finished, no new one started"
        );
        let info = rt.run_info("o").await.unwrap().unwrap();
        assert_eq!(info.status, RunStatus::Cancelled, "{name}");
        assert!(
            info.step("charge#0").is_some(),
            "{name}: the step in flight was journaled"
        );
        assert!(info.step("ship#0").is_none(), "{name}");
        // Stable: every later call gets the cancel, and no code runs.
        let again = rt.run("o", shop.order(1)).await;
        assert!(matches!(again, Err(Error::Cancelled { .. })), "{name}");
        assert_eq!(shop.ran().len(), 2, "{name}");
        // Cancelling it again says nothing changed.
        assert_eq!(
            rt.runs().cancel("o").await.unwrap(),
            CommandOutcome::Unchanged(RunState::Cancelled),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_cancel_after_the_last_step_but_before_the_outcome_wins() {
    for (name, journal, _dir) in journals().await {
        let rt = runtime(&journal);
        let shop = Arc::new(Shop::default());
        shop.hold_at("end");
        let running = run_until_held(&rt, &shop, None).await;
        assert_eq!(
            rt.runs().cancel("o").await.unwrap(),
            CommandOutcome::Requested
        );
        shop.go.notify_one();
        let outcome = running.await.unwrap();
        assert!(
            matches!(outcome, Err(Error::Cancelled { .. })),
            "{name}: {outcome:?}"
        );
        assert_eq!(shop.ran(), ["reserve", "charge", "ship"], "{name}");
        assert_eq!(status(&rt, "o").await, RunStatus::Cancelled, "{name}");
    }
}

#[tokio::test]
async fn cancelling_a_finished_run_changes_nothing_and_says_so() {
    for (name, journal, _dir) in journals().await {
        let rt = runtime(&journal);
        let shop = Shop::default();
        assert_eq!(rt.run("o", shop.order(1)).await.unwrap(), Ok(3), "{name}");
        assert_eq!(
            rt.runs().cancel("o").await.unwrap(),
            CommandOutcome::Unchanged(RunState::Completed),
            "{name}"
        );
        assert_eq!(rt.run("o", shop.order(1)).await.unwrap(), Ok(3), "{name}");
        let unknown = rt.runs().cancel("nobody").await;
        assert!(matches!(unknown, Err(Error::UnknownRun { .. })), "{name}");
    }
}

/// A cancel requested while a worker held the run outlives that worker: the
/// next worker to take the run cancels it without running any step.
#[tokio::test]
async fn a_cancel_outlives_the_worker_that_did_not_see_it() {
    for (name, journal, _dir) in journals().await {
        let rt = runtime(&journal);
        let shop = Shop::default();
        rt.submit("o", shop.order(1)).await.unwrap();
        // A worker takes it for 200 ms and dies.
        lease_elsewhere(&journal, "o", Duration::from_millis(200)).await;
        assert_eq!(
            rt.runs().cancel("o").await.unwrap(),
            CommandOutcome::Requested
        );
        // The next worker, once the lease expired, cancels it without running code.
        let outcome = rt.run("o", shop.order(1)).await;
        assert!(
            matches!(outcome, Err(Error::Cancelled { .. })),
            "{name}: {outcome:?}"
        );
        assert!(shop.ran().is_empty(), "{name}");
        assert_eq!(status(&rt, "o").await, RunStatus::Cancelled, "{name}");
    }
}

/// Takes run `key`'s lease for `duration` as another worker, `elsewhere`,
/// would, without executing it.
async fn lease_elsewhere(
    journal: &Arc<dyn Journal>,
    key: &str,
    duration: Duration,
) -> resumable::journal::Lease {
    let stored = journal.load_run(key).await.unwrap().unwrap().run;
    let new = NewRun {
        key: key.into(),
        workflow: stored.workflow,
        fingerprint: stored.fingerprint,
        input: stored.input,
        deadline: None,
    };
    let request = LeaseRequest::new("elsewhere", duration);
    journal.open_run(new, request).await.unwrap().lease.unwrap()
}

/// Two runs whose step's next attempt is due at the end of time (a tampered
/// row) never hold a completer's slots: the wait is capped at the policy's
/// longest delay, and a run that must wait longer than a second is given
/// back until then, so the other runs proceed.
#[tokio::test]
async fn a_retry_due_at_the_end_of_time_holds_no_completer_slot() {
    for (name, journal, _dir) in journals().await {
        let rt = runtime(&journal);
        let shop = Arc::new(Shop::default());
        for key in ["far-0", "far-1"] {
            rt.submit(key, shop.order(1)).await.unwrap();
            let lease = lease_elsewhere(&journal, key, Duration::from_secs(60)).await;
            let failed = resumable::journal::Write::AttemptFailed {
                step_id: "reserve#0".into(),
                attempts: 1,
                error: "timeout".into(),
                retry_at: Some(Timestamp(i64::MAX)),
                started_at: Timestamp::now(),
                at: Timestamp::now(),
            };
            journal.write(&lease, failed).await.unwrap();
            let release = resumable::journal::Write::Release {
                last_error: None,
                wake_at: Timestamp::now(),
                failures: 0,
                wake_on_message: None,
                at: Timestamp::now(),
            };
            journal.write(&lease, release).await.unwrap();
        }
        for n in 0..20 {
            rt.submit(format!("good-{n}"), shop.order(n)).await.unwrap();
        }
        let completer = Completer::new(&rt)
            .concurrency(2)
            .register(workflow!(Shop::order), shop.clone())
            .unwrap()
            .run_until_idle();
        let report = tokio::time::timeout(Duration::from_secs(60), completer)
            .await
            .expect("the completer is never stuck")
            .unwrap();
        assert_eq!(report.finished, 20, "{name}: every good run finished");
        for key in ["far-0", "far-1"] {
            let info = rt.run_info(key).await.unwrap().unwrap();
            assert_eq!(
                info.status,
                RunStatus::WaitingToRetry,
                "{name}: {key} is parked"
            );
            assert_eq!(info.lease_owner, None, "{name}: {key} holds no lease");
        }
    }
}

#[tokio::test]
async fn a_run_past_its_deadline_ends_at_its_next_step_boundary() {
    for (name, journal, _dir) in journals().await {
        let rt = runtime(&journal);
        let shop = Arc::new(Shop::default());
        shop.hold_at("charge");
        // Long enough to reach the held step on a loaded machine.
        let limit = Some(Duration::from_millis(1_500));
        let running = run_until_held(&rt, &shop, limit).await;
        let info = rt.run_info("o").await.unwrap().unwrap();
        let deadline = info.deadline.expect("the deadline is journaled");
        if let Ok(left) = deadline.duration_since(std::time::SystemTime::now()) {
            tokio::time::sleep(left + Duration::from_millis(50)).await;
        }
        shop.go.notify_one();
        let outcome = running.await.unwrap();
        assert!(
            matches!(outcome, Err(Error::DeadlineExceeded { .. })),
            "{name}: {outcome:?}"
        );
        assert_eq!(shop.ran(), ["reserve", "charge"], "{name}");
        assert_eq!(
            status(&rt, "o").await,
            RunStatus::DeadlineExceeded,
            "{name}"
        );
        // Stable, and no completer takes it again.
        let report = Completer::new(&rt)
            .register(workflow!(Shop::order), shop.clone())
            .unwrap()
            .run_until_idle()
            .await
            .unwrap();
        assert_eq!((report.finished, report.interrupted), (0, 0), "{name}");
        let again = rt.run("o", shop.order(1)).await;
        assert!(
            matches!(again, Err(Error::DeadlineExceeded { .. })),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_submitted_run_past_its_deadline_runs_no_code() {
    for (name, journal, _dir) in journals().await {
        let rt = runtime(&journal);
        let shop = Arc::new(Shop::default());
        let call = shop.order(1).time_limit(Duration::from_millis(1));
        rt.submit("late", call).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let report = Completer::new(&rt)
            .register(workflow!(Shop::order), shop.clone())
            .unwrap()
            .run_until_idle()
            .await
            .unwrap();
        assert_eq!(report.interrupted, 1, "{name}: its one execution ended it");
        assert!(shop.ran().is_empty(), "{name}");
        assert_eq!(
            status(&rt, "late").await,
            RunStatus::DeadlineExceeded,
            "{name}"
        );
    }
}

/// A run that keeps failing outside its steps is set aside after the
/// configured number of executions; completers leave it alone until an
/// operator resumes it.
#[tokio::test]
async fn a_run_that_keeps_failing_is_dead_lettered_until_resumed() {
    for (name, journal, _dir) in journals().await {
        let rt = builder(&journal, Duration::ZERO)
            .dead_letter_after(3)
            .build();
        let shop = Arc::new(Shop::default());
        shop.broken.store(true, Ordering::SeqCst);
        rt.submit("poison", shop.order(1)).await.unwrap();
        let completer = || {
            Completer::new(&rt)
                .register(workflow!(Shop::order), shop.clone())
                .unwrap()
        };
        for _ in 0..10 {
            completer().run_until_idle().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let info = rt.run_info("poison").await.unwrap().unwrap();
        assert_eq!(info.status, RunStatus::DeadLettered, "{name}");
        assert_eq!(
            info.executions, 3,
            "{name}: dead-lettered after 3 executions"
        );
        assert!(
            info.last_error.unwrap().contains("bug between the steps"),
            "{name}"
        );
        let dead = rt.runs().dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 1, "{name}");
        let err = rt.run("poison", shop.order(1)).await.unwrap_err();
        assert!(matches!(err, Error::DeadLettered { .. }), "{name}: {err}");

        // Fixed and resumed by an operator: a completer finishes it.
        shop.broken.store(false, Ordering::SeqCst);
        assert_eq!(
            rt.runs().resume("poison").await.unwrap(),
            CommandOutcome::Done(RunState::Incomplete),
            "{name}"
        );
        let info = rt.run_info("poison").await.unwrap().unwrap();
        assert!(
            info.resumed_at.is_some(),
            "{name}: the decision is recorded"
        );
        assert_eq!(
            completer().run_until_idle().await.unwrap().finished,
            1,
            "{name}"
        );
        assert_eq!(
            rt.run("poison", shop.order(1)).await.unwrap(),
            Ok(3),
            "{name}"
        );
        assert_eq!(shop.ran(), ["reserve", "charge", "ship"], "{name}");
    }
}

/// Input that cannot be decoded will never run: dead-lettered at once.
#[tokio::test]
async fn an_undecodable_input_is_dead_lettered_at_once() {
    for (name, journal, _dir) in journals().await {
        let rt = runtime(&journal);
        let shop = Arc::new(Shop::default());
        let meta = *workflow!(Shop::order).meta();
        let garbage = NewRun {
            key: "garbage".into(),
            workflow: meta.name.into(),
            fingerprint: meta.fingerprint,
            input: vec![9, 9, 9],
            deadline: None,
        };
        journal.create_run(garbage, Timestamp::now()).await.unwrap();
        Completer::new(&rt)
            .register(workflow!(Shop::order), shop.clone())
            .unwrap()
            .run_until_idle()
            .await
            .unwrap();
        let info = rt.run_info("garbage").await.unwrap().unwrap();
        assert_eq!(
            (info.status, info.executions),
            (RunStatus::DeadLettered, 1),
            "{name}"
        );
        assert!(info.last_error.unwrap().contains("input"), "{name}");
    }
}

#[tokio::test]
async fn a_failed_run_resumed_by_an_operator_runs_its_failed_step_again() {
    for (name, journal, _dir) in journals().await {
        let rt = runtime(&journal);
        let shop = Shop::default();
        shop.decline.store(true, Ordering::SeqCst);
        assert_eq!(
            rt.run("o", shop.order(1)).await.unwrap(),
            Err(ShopError::Declined),
            "{name}"
        );
        assert_eq!(status(&rt, "o").await, RunStatus::Failed, "{name}");
        // Resuming a run that is not failed changes nothing.
        rt.submit("other", shop.order(2)).await.unwrap();
        assert_eq!(
            rt.runs().resume("other").await.unwrap(),
            CommandOutcome::Unchanged(RunState::Incomplete),
            "{name}"
        );
        shop.decline.store(false, Ordering::SeqCst);
        assert_eq!(
            rt.runs().resume("o").await.unwrap(),
            CommandOutcome::Done(RunState::Incomplete),
            "{name}"
        );
        assert_eq!(rt.run("o", shop.order(1)).await.unwrap(), Ok(3), "{name}");
        assert_eq!(
            shop.ran(),
            ["reserve", "charge", "charge", "ship"],
            "{name}: the recorded step replayed, the failed one ran again"
        );
    }
}

#[tokio::test]
async fn retry_now_ends_a_backoff() {
    for (name, journal, _dir) in journals().await {
        let rt = builder(&journal, Duration::from_secs(3600)).build();
        let shop = Arc::new(Shop::default());
        shop.broken.store(true, Ordering::SeqCst);
        rt.run("o", shop.order(1)).await.unwrap_err();
        assert_eq!(status(&rt, "o").await, RunStatus::BackingOff, "{name}");
        shop.broken.store(false, Ordering::SeqCst);
        let completer = || {
            Completer::new(&rt)
                .register(workflow!(Shop::order), shop.clone())
                .unwrap()
        };
        assert_eq!(
            completer().run_until_idle().await.unwrap().finished,
            0,
            "{name}"
        );
        assert_eq!(
            rt.runs().retry_now("o").await.unwrap(),
            CommandOutcome::Done(RunState::Incomplete),
            "{name}"
        );
        assert_eq!(status(&rt, "o").await, RunStatus::Pending, "{name}");
        assert_eq!(
            completer().run_until_idle().await.unwrap().finished,
            1,
            "{name}"
        );
        assert_eq!(
            rt.runs().retry_now("o").await.unwrap(),
            CommandOutcome::Unchanged(RunState::Completed),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_fork_replays_the_first_steps_and_runs_the_rest_with_the_current_code() {
    for (name, journal, _dir) in journals().await {
        let rt = runtime(&journal);
        let shop = Shop::default();
        assert_eq!(rt.run("o", shop.order(1)).await.unwrap(), Ok(3), "{name}");
        let source = rt.run_info("o").await.unwrap().unwrap();
        let fork = rt.runs().fork("o", 2, "o-again").await.unwrap();
        assert_eq!(fork.forked_from.as_deref(), Some("o"), "{name}");
        assert_eq!(fork.status, RunStatus::Pending, "{name}");
        assert_eq!(
            rt.run("o-again", shop.order(1)).await.unwrap(),
            Ok(3),
            "{name}"
        );
        assert_eq!(
            shop.ran(),
            ["reserve", "charge", "ship", "ship"],
            "{name}: the fork replayed 2 steps and ran the third"
        );
        let after = rt.run_info("o").await.unwrap().unwrap();
        assert_eq!(
            (after.executions, after.steps.len(), after.updated_at),
            (source.executions, source.steps.len(), source.updated_at),
            "{name}: the source is untouched"
        );
        let taken = rt.runs().fork("o", 1, "o").await;
        assert!(matches!(taken, Err(Error::RunExists { .. })), "{name}");
        let blank = rt.runs().fork("o", 1, " ").await;
        assert!(matches!(blank, Err(Error::InvalidRunKey { .. })), "{name}");
    }
}

#[tokio::test]
async fn run_keys_that_name_nothing_are_refused_everywhere() {
    const REF: WorkflowRef<(u32,), Result<u32, ShopError>> = WorkflowRef::named("order");
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let rt = runtime(&journal);
    let client = Client::new(journal.clone());
    let shop = Shop::default();
    for key in ["", "   ", "\t\n", "order\n7", "order\u{7}", "a\u{0}b"] {
        let refused = |r: Result<(), Error>, what: &str| match r {
            Err(Error::InvalidRunKey { .. }) => {}
            other => panic!("{what} with key {key:?}: {other:?}"),
        };
        refused(rt.run(key, shop.order(1)).await.map(drop), "run");
        refused(rt.submit(key, shop.order(1)).await, "submit");
        refused(client.submit(&REF, key, (1,)).await, "Client::submit");
    }
    assert!(
        journal
            .list_runs(&RunFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(shop.ran().is_empty());
}

#[tokio::test]
async fn status_counts_executions_as_users_understand_them() {
    for (name, journal, _dir) in journals().await {
        let rt = runtime(&journal);
        let shop = Arc::new(Shop::default());
        rt.submit("o", shop.order(1)).await.unwrap();
        let info = rt.run_info("o").await.unwrap().unwrap();
        assert_eq!(
            (info.status, info.executions),
            (RunStatus::Pending, 0),
            "{name}: a submit is not an execution"
        );
        // An execution that fails outside its steps, then one that completes.
        shop.broken.store(true, Ordering::SeqCst);
        rt.run("o", shop.order(1)).await.unwrap_err();
        let info = rt.run_info("o").await.unwrap().unwrap();
        assert_eq!((info.executions, info.failures), (1, 1), "{name}");
        assert!(info.last_error.is_some(), "{name}");
        shop.broken.store(false, Ordering::SeqCst);
        // Held while running: the lease holder and its expiry are shown.
        shop.hold_at("ship");
        let running = run_until_held(&rt, &shop, None).await;
        let info = rt.run_info("o").await.unwrap().unwrap();
        assert_eq!(info.status, RunStatus::Running, "{name}");
        assert_eq!(info.lease_owner.as_deref(), Some(rt.worker_id()), "{name}");
        assert!(info.lease_expires_at.is_some(), "{name}");
        shop.go.notify_one();
        assert_eq!(running.await.unwrap().unwrap(), Ok(3), "{name}");
        let info = rt.run_info("o").await.unwrap().unwrap();
        assert_eq!(info.executions, 2, "{name}");
        assert_eq!(info.last_error, None, "{name}: cleared by the success");
        assert_eq!(
            (&info.lease_owner, info.lease_expires_at),
            (&None, None),
            "{name}"
        );
        let outcome = info
            .outcome
            .clone()
            .expect("a completed run has an outcome");
        assert_eq!(outcome.codec.as_deref(), Some("bincode2"), "{name}");
        assert!(info.steps.iter().all(|s| s.duration_ms.is_some()), "{name}");
        // Status is Serialize, with stable lower-case state names.
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["status"], "completed", "{name}");
        assert_eq!(json["steps"][0]["status"], "completed", "{name}");
    }
}

#[tokio::test]
async fn runs_are_listed_by_state_and_workflow_in_pages() {
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let rt = runtime(&journal);
    let shop = Shop::default();
    for n in 0..5 {
        rt.submit(format!("o-{n}"), shop.order(n)).await.unwrap();
    }
    rt.run("o-1", shop.order(1)).await.unwrap().unwrap();
    rt.runs().cancel("o-3").await.unwrap();
    let incomplete = RunFilter {
        state: Some(RunState::Incomplete),
        limit: Some(2),
        ..RunFilter::default()
    };
    let keys = |runs: Vec<resumable::RunInfo>| runs.into_iter().map(|r| r.key).collect::<Vec<_>>();
    let page = keys(rt.list_runs(&incomplete).await.unwrap());
    assert_eq!(page, ["o-0", "o-2"]);
    let next = RunFilter {
        after: Some("o-2".into()),
        ..incomplete.clone()
    };
    assert_eq!(keys(rt.list_runs(&next).await.unwrap()), ["o-4"]);
    let cancelled = RunFilter {
        state: Some(RunState::Cancelled),
        workflow: Some(workflow!(Shop::order).meta().name.to_owned()),
        ..RunFilter::default()
    };
    assert_eq!(keys(rt.list_runs(&cancelled).await.unwrap()), ["o-3"]);
    // By status, which for incomplete runs depends on leases and times.
    let shop = Shop::default();
    shop.broken.store(true, Ordering::SeqCst);
    let slow = builder(&journal, Duration::from_secs(3600)).build();
    slow.run("o-2", shop.order(2)).await.unwrap_err();
    let all = RunFilter::default();
    let by_status = |status| {
        let rt = rt.clone();
        let all = all.clone();
        async move { keys(rt.runs().list_with_status(status, &all).await.unwrap()) }
    };
    assert_eq!(by_status(RunStatus::Pending).await, ["o-0", "o-4"]);
    assert_eq!(by_status(RunStatus::BackingOff).await, ["o-2"]);
    assert_eq!(by_status(RunStatus::Completed).await, ["o-1"]);
    assert_eq!(by_status(RunStatus::Cancelled).await, ["o-3"]);
    assert!(by_status(RunStatus::Running).await.is_empty());
    let first = RunFilter {
        limit: Some(1),
        ..RunFilter::default()
    };
    let pending = rt
        .runs()
        .list_with_status(RunStatus::Pending, &first)
        .await
        .unwrap();
    assert_eq!(keys(pending), ["o-0"]);
}

/// A purge running beside busy workers deletes only finished runs: every
/// run completes, and each is either purged after it finished or still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_beside_busy_workers_loses_no_unfinished_run() {
    const RUNS: u32 = 200;
    for (name, journal, _dir) in journals().await {
        let rt = runtime(&journal);
        let shop = Arc::new(Shop::default());
        for n in 0..RUNS {
            rt.submit(format!("o-{n}"), shop.order(n)).await.unwrap();
        }
        let completer = Completer::new(&rt)
            .concurrency(8)
            .register(workflow!(Shop::order), shop.clone())
            .unwrap()
            .start();
        let purged = Arc::new(AtomicU32::new(0));
        let purging = tokio::spawn({
            let (rt, purged) = (rt.clone(), purged.clone());
            async move {
                loop {
                    let n = rt.runs().purge(Duration::ZERO).await.unwrap();
                    purged.fetch_add(n as u32, Ordering::SeqCst);
                    let left = rt
                        .list_runs(&RunFilter {
                            state: Some(RunState::Incomplete),
                            ..RunFilter::default()
                        })
                        .await
                        .unwrap();
                    if left.is_empty() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), purging)
            .await
            .expect("every run finishes")
            .unwrap();
        completer.shutdown().await.unwrap();
        let ships = shop.ran().iter().filter(|s| **s == "ship").count() as u32;
        assert_eq!(ships, RUNS, "{name}: every run completed, none was lost");
        let left = rt.list_runs(&RunFilter::default()).await.unwrap();
        assert!(
            left.iter().all(|r| r.status == RunStatus::Completed),
            "{name}: only completed runs are left"
        );
        assert_eq!(
            purged.load(Ordering::SeqCst) + left.len() as u32,
            RUNS,
            "{name}: each run was purged or is still there"
        );
    }
}

mod email {
    pub struct Sender;
    impl Sender {
        #[resumable::resumable]
        pub async fn process(&self, to: u32) -> Result<String, String> {
            let sent = resumable::step!("send", { format!("email to {to}") });
            Ok(sent)
        }
    }
}

mod sms {
    pub struct Sender;
    impl Sender {
        #[resumable::resumable]
        pub async fn process(&self, to: u32) -> Result<String, String> {
            let sent = resumable::step!("send", { format!("sms to {to}") });
            Ok(sent)
        }
    }

    /// Another type with a `process` method, in the same module.
    pub struct Pager;
    impl Pager {
        #[resumable::resumable]
        pub async fn process(&self, to: u32) -> Result<String, String> {
            let sent = resumable::step!("send", { format!("page to {to}") });
            Ok(sent)
        }
    }
}

/// Two `process` methods with the same steps and types, on two types in two
/// modules or in one, are two workflows: none adopts another's runs.
#[tokio::test]
async fn a_workflow_never_adopts_the_runs_of_another_with_the_same_name() {
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let rt = runtime(&journal);
    let email = workflow!(email::Sender::process).meta().name;
    let sms = workflow!(sms::Sender::process).meta().name;
    let pager = workflow!(sms::Pager::process).meta().name;
    assert_eq!(email, "lifecycle::email::Sender::process");
    assert_eq!(sms, "lifecycle::sms::Sender::process");
    assert_eq!(pager, "lifecycle::sms::Pager::process");
    let sent = rt.run("notify-7", email::Sender.process(7)).await.unwrap();
    assert_eq!(sent.as_deref(), Ok("email to 7"));
    let sent = rt.run("page-7", sms::Sender.process(7)).await.unwrap();
    assert_eq!(sent.as_deref(), Ok("sms to 7"));
    let refused = [
        (
            "notify-7",
            rt.run("notify-7", sms::Sender.process(7)).await,
            email,
            sms,
        ),
        (
            "page-7",
            rt.run("page-7", sms::Pager.process(7)).await,
            sms,
            pager,
        ),
    ];
    for (key, outcome, owner, other) in refused {
        match outcome {
            Err(Error::WorkflowMismatch {
                run,
                journaled,
                requested,
            }) => {
                assert_eq!((run.as_str(), journaled.as_str()), (key, owner));
                assert_eq!(requested, other);
            }
            other => panic!("the wrong workflow must be refused, got {other:?}"),
        }
    }
}

/// Step records left without a run record (rows deleted or written by
/// hand) are never adopted by a new run. Steps refer to their run by id:
/// SQLite may give a new run the id of the newest run deleted, so it
/// refuses a new run that finds steps under its id; PostgreSQL never reuses
/// an id, so a new run of the key starts from its first step.
#[tokio::test]
async fn orphan_step_records_are_never_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let sqlite: Arc<dyn Journal> = Arc::new(SqliteJournal::open(&path).await.unwrap());
    {
        // Under the id the first run will take.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO resumable_steps (run_id, step_id, seq, state, output, attempts, epoch, \
             started_at, updated_at) VALUES (1, 'reserve#0', 0, 'completed', x'00', 1, 1, 0, 0)",
            [],
        )
        .unwrap();
    }
    let rt = runtime(&sqlite);
    let shop = Shop::default();
    for attempt in [
        rt.run("o", shop.order(1)).await.map(drop),
        rt.submit("o", shop.order(1)).await,
    ] {
        match attempt {
            Err(Error::OrphanSteps { run, steps }) => {
                assert_eq!((run.as_str(), steps), ("o", vec!["reserve#0".to_owned()]));
            }
            other => panic!("orphan steps must be refused, got {other:?}"),
        }
    }
    assert!(shop.ran().is_empty());
    assert!(
        sqlite.load_run("o").await.unwrap().is_none(),
        "no run was created"
    );
    // A fork is a new run too: it does not adopt them either. The orphans
    // cleared, a source run takes id 1; new orphans wait under id 2.
    let by_hand = |sql: &str| {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(sql).unwrap();
    };
    by_hand("DELETE FROM resumable_steps");
    rt.run("source", shop.order(1)).await.unwrap().unwrap();
    by_hand(
        "INSERT INTO resumable_steps (run_id, step_id, seq, state, output, attempts, epoch, \
         started_at, updated_at) VALUES (2, 'reserve#0', 0, 'completed', x'00', 1, 1, 0, 0)",
    );
    match rt.runs().fork("source", 1, "copy").await {
        Err(Error::OrphanSteps { run, .. }) => assert_eq!(run, "copy"),
        other => panic!("orphan steps must be refused to a fork, got {other:?}"),
    }
    assert!(sqlite.load_run("copy").await.unwrap().is_none());

    #[cfg(all(feature = "postgres", feature = "conformance"))]
    if let Some(schema) = resumable::conformance::postgres::TestSchema::new("orphan_steps") {
        let journal: Arc<dyn Journal> = Arc::new(schema.journal().await);
        let rt = runtime(&journal);
        let shop = Shop::default();
        assert_eq!(rt.run("o", shop.order(1)).await.unwrap().unwrap(), 3);
        // The run row deleted by hand: its steps stay behind.
        let sql = format!(
            "DELETE FROM \"{}\".resumable_runs WHERE run_key = 'o'",
            schema.name()
        );
        schema.connect().await.batch_execute(&sql).await.unwrap();
        assert_eq!(rt.run("o", shop.order(1)).await.unwrap().unwrap(), 3);
        assert_eq!(
            shop.ran(),
            ["reserve", "charge", "ship", "reserve", "charge", "ship"],
            "the new run ran every step again"
        );
        let steps = journal.load_run("o").await.unwrap().unwrap().steps;
        assert_eq!(steps.len(), 3, "{steps:?}");
    }
}

/// A client without the workflow's code cancels a run and sees the cancel
/// as the run's outcome.
#[tokio::test]
async fn a_client_cancels_and_waits_for_the_cancel() {
    const ORDER: WorkflowRef<(u32,), Result<u32, ShopError>> = WorkflowRef::named("order");
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let client = Client::new(journal);
    client.submit(&ORDER, "o", (1,)).await.unwrap();
    assert_eq!(
        client.runs().cancel("o").await.unwrap(),
        CommandOutcome::Done(RunState::Cancelled)
    );
    let outcome = client.wait(&ORDER, "o").await;
    assert!(
        matches!(outcome, Err(Error::Cancelled { .. })),
        "{outcome:?}"
    );
    assert_eq!(client.status("o").await.unwrap(), Some(RunState::Cancelled));
}

/// A run key never reaches an error message raw: control characters are
/// escaped, and a lookup with an oversized key is refused with a short error.
#[tokio::test]
async fn run_keys_are_escaped_and_bounded_in_errors() {
    let forged = "o\nERROR forged log line\u{1b}[31m";
    let message = Error::Cancelled {
        run: forged.to_owned(),
    }
    .to_string();
    assert!(
        !message.contains('\n') && !message.contains('\u{1b}'),
        "{message}"
    );
    assert!(
        message.contains("\\n") && message.contains("\\u{1b}"),
        "{message}"
    );

    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let rt = runtime(&journal);
    let client = Client::new(journal.clone());
    let huge = "k".repeat(1 << 20);
    for err in [
        rt.run_info(&huge).await.map(drop).unwrap_err(),
        rt.runs().cancel(&huge).await.map(drop).unwrap_err(),
        client.status(&huge).await.map(drop).unwrap_err(),
    ] {
        assert!(matches!(err, Error::InvalidRunKey { .. }), "{err}");
        assert!(err.to_string().len() < 200, "the error stays short");
    }
}

/// Runs whose first step is held at a gate, counting how often their
/// second step ran.
struct Gated {
    open: tokio::sync::watch::Receiver<bool>,
    waiting: AtomicU32,
    seconds: AtomicU32,
}

impl Gated {
    #[resumable(name = "gated")]
    async fn two_steps(&self, n: u32) -> Result<u32, ShopError> {
        let first = step!("first", {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let mut open = self.open.clone();
            open.wait_for(|open| *open).await.unwrap();
            n
        });
        let second = step!("second", {
            self.seconds.fetch_add(1, Ordering::SeqCst);
            first + 1
        });
        Ok(second)
    }
}

/// Many runs write their steps at the same moment (PostgreSQL writes them
/// in one statement); those whose cancel was requested meanwhile still get
/// their step recorded, then stop, and the others complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancels_reach_runs_whose_steps_are_written_together() {
    const RUNS: u32 = 32;
    for (name, journal, _dir) in journals().await {
        let rt = runtime(&journal);
        let (gate, open) = tokio::sync::watch::channel(false);
        let gated = Arc::new(Gated {
            open,
            waiting: AtomicU32::new(0),
            seconds: AtomicU32::new(0),
        });
        let mut runs = tokio::task::JoinSet::new();
        for n in 0..RUNS {
            let (rt, gated) = (rt.clone(), gated.clone());
            runs.spawn(async move { (n, rt.run(format!("g-{n}"), gated.two_steps(n)).await) });
        }
        while gated.waiting.load(Ordering::SeqCst) < RUNS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for n in (0..RUNS).step_by(2) {
            let outcome = rt.runs().cancel(&format!("g-{n}")).await.unwrap();
            assert_eq!(outcome, CommandOutcome::Requested, "{name}");
        }
        gate.send(true).unwrap();
        while let Some(joined) = runs.join_next().await {
            let (n, outcome) = joined.unwrap();
            match n % 2 {
                0 => assert!(
                    matches!(outcome, Err(Error::Cancelled { .. })),
                    "{name} {n}: {outcome:?}"
                ),
                _ => assert_eq!(outcome.unwrap(), Ok(n + 1), "{name} {n}"),
            }
            let info = rt.run_info(&format!("g-{n}")).await.unwrap().unwrap();
            assert!(
                info.step("first#0").is_some(),
                "{name} {n}: the step in flight was recorded"
            );
        }
        assert_eq!(gated.seconds.load(Ordering::SeqCst), RUNS / 2, "{name}");
    }
}
