//! Durable sleep: `sleep!` and `sleep_until!` on every journal. A long sleep
//! gives the run back (no lease, no worker) and a completer resumes it when
//! due; the wake time is journaled once; cancels and deadlines reach it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

mod common;

use common::every_journal;
use resumable::{
    CommandOutcome, Completer, Error, RunState, RunStatus, Runtime, resumable, sleep, sleep_until,
    step, workflow,
};

/// A sleep this long gives its run back (a sleep due within a second waits
/// in place), with room for a loaded machine to record it first.
const LONG: Duration = Duration::from_millis(2_500);

#[derive(Default)]
struct Reminder {
    welcomed: AtomicU32,
    reminded: AtomicU32,
    side: AtomicU32,
}

impl Reminder {
    #[resumable]
    async fn remind(&self, pause_ms: u64) -> Result<u32, String> {
        let first = step!("welcome", {
            self.welcomed.fetch_add(1, Ordering::SeqCst) + 1
        });
        sleep!("pause", Duration::from_millis(pause_ms));
        let second = step!("remind", {
            self.reminded.fetch_add(1, Ordering::SeqCst) + 1
        });
        Ok(first * 10 + second)
    }

    /// One branch sleeps while the other records its steps.
    #[resumable]
    async fn branches(&self, pause_ms: u64) -> Result<u32, String> {
        let sleeper = async {
            sleep!("nap", Duration::from_millis(pause_ms));
            Ok::<_, String>(step!("after_nap", {
                self.reminded.fetch_add(1, Ordering::SeqCst) + 1
            }))
        };
        let worker = async {
            let a = step!("side_a", { self.side.fetch_add(1, Ordering::SeqCst) + 1 });
            Ok::<_, String>(step!("side_b", {
                self.side.fetch_add(1, Ordering::SeqCst) + a
            }))
        };
        let (x, y) = futures::join!(sleeper, worker);
        Ok(x? + y?)
    }

    #[resumable]
    async fn until(&self, at: SystemTime) -> Result<u32, String> {
        sleep_until!("opening", at);
        sleep!("none", Duration::ZERO);
        let n = step!("open", { self.reminded.fetch_add(1, Ordering::SeqCst) + 1 });
        Ok(n)
    }
}

/// Completes every run due now.
async fn complete(rt: &Runtime, reminder: &Arc<Reminder>) -> resumable::CompleterReport {
    Completer::new(rt)
        .register(workflow!(Reminder::remind), reminder.clone())
        .unwrap()
        .register(workflow!(Reminder::branches), reminder.clone())
        .unwrap()
        .register(workflow!(Reminder::until), reminder.clone())
        .unwrap()
        .run_until_idle()
        .await
        .unwrap()
}

/// The sleep a run stopped in and when it is due, from `Error::Sleeping`.
fn asleep<T: std::fmt::Debug>(result: resumable::Result<T>, journal: &str) -> (String, SystemTime) {
    match result {
        Err(Error::Sleeping { step, until, .. }) => (step, until),
        other => panic!("{journal}: expected Error::Sleeping, got {other:?}"),
    }
}

/// Waits until `until` has passed.
async fn wait_past(until: SystemTime) {
    if let Ok(left) = until.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_short_sleep_waits_in_place_and_is_journaled() {
    for (name, journal) in every_journal("sleep_short").await.0 {
        let rt = Runtime::new(journal);
        let reminder = Reminder::default();
        let out = rt.run("r", reminder.remind(50)).await.unwrap();
        assert_eq!(out, Ok(11), "{name}");
        let info = rt.run_info("r").await.unwrap().unwrap();
        let ids: Vec<_> = info.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["welcome#0", "pause#0", "remind#0"], "{name}");
    }
}

#[tokio::test]
async fn a_long_sleep_gives_the_run_back_until_a_completer_resumes_it() {
    for (name, journal) in every_journal("sleep_long").await.0 {
        let rt = Runtime::new(journal);
        let reminder = Arc::new(Reminder::default());
        let before = SystemTime::now();
        let (step, until) = asleep(
            rt.run("r", reminder.remind(LONG.as_millis() as u64)).await,
            name,
        );
        assert_eq!(step, "pause#0", "{name}");
        // (Journaled to the millisecond.)
        assert!(until + Duration::from_millis(1) >= before + LONG, "{name}");
        let info = rt.run_info("r").await.unwrap().unwrap();
        assert_eq!(info.status, RunStatus::Waiting, "{name}");
        assert_eq!(
            info.lease_owner, None,
            "{name}: a sleeping run holds no lease"
        );
        assert_eq!(info.last_error, None, "{name}");

        // Not due: a completer leaves it alone, and running it again before
        // it is due neither restarts the clock nor runs a step.
        let report = complete(&rt, &reminder).await;
        assert_eq!((report.finished, report.waiting), (0, 0), "{name}");
        let (_, again) = asleep(
            rt.run("r", reminder.remind(LONG.as_millis() as u64)).await,
            name,
        );
        assert_eq!(again, until, "{name}: the wake time is journaled once");

        // A run a completer takes goes to sleep there the same way.
        rt.submit("s", reminder.remind(60_000)).await.unwrap();
        let report = complete(&rt, &reminder).await;
        assert_eq!((report.finished, report.waiting), (0, 1), "{name}");
        let info = rt.run_info("s").await.unwrap().unwrap();
        assert_eq!(info.status, RunStatus::Waiting, "{name}");

        wait_past(until).await;
        assert_eq!(complete(&rt, &reminder).await.finished, 1, "{name}");
        let info = rt.run_info("r").await.unwrap().unwrap();
        assert_eq!(info.status, RunStatus::Completed, "{name}");
        assert_eq!(
            reminder.welcomed.load(Ordering::SeqCst),
            2,
            "{name}: r and s"
        );
        assert_eq!(reminder.reminded.load(Ordering::SeqCst), 1, "{name}");
        let out = rt.run("r", reminder.remind(LONG.as_millis() as u64)).await;
        assert_eq!(out.unwrap(), Ok(11), "{name}");
    }
}

#[tokio::test]
async fn a_sleep_that_is_due_returns_at_once_and_is_journaled() {
    for (name, journal) in every_journal("sleep_due").await.0 {
        let rt = Runtime::new(journal);
        let reminder = Reminder::default();
        let past = SystemTime::now() - Duration::from_secs(3_600);
        assert_eq!(
            rt.run("r", reminder.until(past)).await.unwrap(),
            Ok(1),
            "{name}"
        );
        let info = rt.run_info("r").await.unwrap().unwrap();
        let ids: Vec<_> = info.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["opening#0", "none#0", "open#0"], "{name}");
    }
}

#[tokio::test]
async fn cancelling_a_sleeping_run_cancels_it_at_once() {
    for (name, journal) in every_journal("sleep_cancel").await.0 {
        let rt = Runtime::new(journal);
        let reminder = Reminder::default();
        asleep(rt.run("r", reminder.remind(60_000)).await, name);
        assert_eq!(
            rt.runs().cancel("r").await.unwrap(),
            CommandOutcome::Done(RunState::Cancelled),
            "{name}"
        );
        let again = rt.run("r", reminder.remind(60_000)).await;
        assert!(
            matches!(again, Err(Error::Cancelled { .. })),
            "{name}: {again:?}"
        );
        assert_eq!(reminder.reminded.load(Ordering::SeqCst), 0, "{name}");
    }
}

#[tokio::test]
async fn a_deadline_before_the_wake_time_ends_the_run() {
    for (name, journal) in every_journal("sleep_deadline").await.0 {
        let rt = Runtime::new(journal);
        let reminder = Arc::new(Reminder::default());
        let call = reminder.remind(60_000).time_limit(LONG);
        let (_, until) = asleep(rt.run("r", call).await, name);
        let info = rt.run_info("r").await.unwrap().unwrap();
        let deadline = info.deadline.unwrap();
        assert!(deadline < until, "{name}");
        wait_past(deadline).await;
        complete(&rt, &reminder).await;
        let info = rt.run_info("r").await.unwrap().unwrap();
        assert_eq!(info.status, RunStatus::DeadlineExceeded, "{name}");
        assert_eq!(reminder.reminded.load(Ordering::SeqCst), 0, "{name}");
    }
}

#[tokio::test]
async fn other_branches_go_on_while_one_sleeps() {
    for (name, journal) in every_journal("sleep_branches").await.0 {
        let rt = Runtime::new(journal);
        let reminder = Arc::new(Reminder::default());
        let (step, until) = asleep(
            rt.run("r", reminder.branches(LONG.as_millis() as u64))
                .await,
            name,
        );
        assert_eq!(step, "nap@0#0", "{name}");
        // The other branch recorded both its steps before the run was given back.
        assert_eq!(reminder.side.load(Ordering::SeqCst), 2, "{name}");
        assert_eq!(reminder.reminded.load(Ordering::SeqCst), 0, "{name}");
        wait_past(until).await;
        assert_eq!(complete(&rt, &reminder).await.finished, 1, "{name}");
        assert_eq!(reminder.side.load(Ordering::SeqCst), 2, "{name}: replayed");
        assert_eq!(reminder.reminded.load(Ordering::SeqCst), 1, "{name}");
    }
}
