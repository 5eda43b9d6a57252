//! How runs recover: failed steps replay as their error, retries keep their
//! schedule across workers, abandoned executions hand their lease back, and
//! a worker that cannot renew its lease stops.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::{Misbehaving, memory_runtime};
use resumable::journal::{RunSnapshot, StepState, Timestamp};
use resumable::{
    Classify, Error, MemoryJournal, RetryPolicy, RunStatus, Runtime, StepStatus, resumable, step,
};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
enum PayError {
    #[error("card declined")]
    Declined,
    #[error("gateway timeout")]
    Timeout,
}

impl Classify for PayError {
    fn is_terminal(&self) -> bool {
        matches!(self, PayError::Declined)
    }
}

#[derive(Default)]
struct Saga {
    charges: AtomicU32,
    notices: AtomicU32,
    crash: AtomicBool,
    hang: AtomicBool,
    attempts_at: std::sync::Mutex<Vec<Timestamp>>,
}

impl Saga {
    /// A saga: a declined charge is handled, not propagated.
    #[resumable]
    async fn checkout(&self, amount: u64) -> Result<String, PayError> {
        let charged = async {
            Ok::<_, PayError>(step!("charge", {
                self.charges.fetch_add(1, Ordering::SeqCst);
                if amount > 100 {
                    Err(PayError::Declined)?;
                }
                amount
            }))
        }
        .await;
        let message = step!("notify", {
            self.notices.fetch_add(1, Ordering::SeqCst);
            match &charged {
                Ok(n) => format!("charged {n}"),
                Err(e) => format!("not charged: {e}"),
            }
        });
        if self.crash.load(Ordering::SeqCst) {
            panic!("crash before the outcome");
        }
        Ok(message)
    }

    #[resumable(retry = RetryPolicy::exponential(3).initial_delay(Duration::from_millis(200)).jitter(0.0))]
    async fn flaky(&self) -> Result<u32, PayError> {
        let n = step!("call", {
            self.attempts_at.lock().unwrap().push(Timestamp::now());
            if self.charges.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(PayError::Timeout)?;
            }
            7
        });
        Ok(n)
    }

    #[resumable]
    async fn hangs(&self) -> Result<(), PayError> {
        step!("wait", {
            while self.hang.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Ok(())
    }
}

#[tokio::test]
async fn a_step_that_failed_for_good_replays_as_its_error() {
    let (rt, _) = memory_runtime();
    let saga = Saga::default();
    saga.crash.store(true, Ordering::SeqCst);
    rt.run("c", saga.checkout(500)).await.unwrap_err();
    let info = rt.run_info("c").await.unwrap().unwrap();
    let charge = info.step("charge@0#0").unwrap();
    assert_eq!((charge.status, charge.attempts), (StepStatus::Failed, 1));
    assert_eq!(charge.last_error.as_deref(), Some("card declined"));

    saga.crash.store(false, Ordering::SeqCst);
    let out = rt.run("c", saga.checkout(500)).await.unwrap();
    assert_eq!(out, Ok("not charged: card declined".to_string()));
    assert_eq!(
        saga.charges.load(Ordering::SeqCst),
        1,
        "a failed step never runs again"
    );
    assert_eq!(saga.notices.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_retry_keeps_its_schedule_when_another_execution_resumes_it() {
    let (rt, _) = memory_runtime();
    let saga = Saga::default();
    // The first attempt fails; the execution is abandoned during the backoff.
    let abandoned =
        tokio::time::timeout(Duration::from_millis(50), rt.run("f", saga.flaky())).await;
    assert!(
        abandoned.is_err(),
        "the run should still be waiting out its retry delay"
    );
    let retry_at = wait_for_release(&rt, "f")
        .await
        .step("call#0")
        .unwrap()
        .retry_at
        .unwrap();

    assert_eq!(rt.run("f", saga.flaky()).await.unwrap(), Ok(7));
    let attempts = saga.attempts_at.lock().unwrap().clone();
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts[1].to_system_time() >= retry_at,
        "the second attempt ran before its retry was due"
    );
}

/// The run an abandoned execution held, once its lease is handed back.
async fn wait_for_release(rt: &Runtime, key: &str) -> resumable::RunInfo {
    for _ in 0..1000 {
        let info = rt.run_info(key).await.unwrap().unwrap();
        if info.lease_owner.is_none() {
            return info;
        }
        tokio::task::yield_now().await;
    }
    panic!("the abandoned execution never handed its lease back");
}

#[tokio::test]
async fn a_dropped_execution_hands_its_lease_back() {
    let (rt, _) = memory_runtime();
    let saga = Saga::default();
    saga.hang.store(true, Ordering::SeqCst);
    let dropped = tokio::time::timeout(Duration::from_millis(30), rt.run("h", saga.hangs())).await;
    assert!(dropped.is_err());
    let info = wait_for_release(&rt, "h").await;
    assert_eq!(info.status, RunStatus::Pending);
    assert!(info.last_error.unwrap().contains("interrupted"));
    // Resumable at once, not after the 30 s lease.
    saga.hang.store(false, Ordering::SeqCst);
    assert_eq!(rt.run("h", saga.hangs()).await.unwrap(), Ok(()));
}

#[tokio::test]
async fn absurd_counters_in_the_journal_do_not_panic() {
    fn absurd(snapshot: &mut RunSnapshot) {
        for step in &mut snapshot.steps {
            step.attempts = u32::MAX;
            if step.state == StepState::Completed {
                step.seq = Some(u64::MAX);
            }
        }
    }
    let rt = common::runtime(Misbehaving::new(MemoryJournal::new()).tampering(absurd));
    let saga = Saga::default();
    saga.crash.store(true, Ordering::SeqCst);
    rt.run("a", saga.checkout(5)).await.unwrap_err();
    saga.crash.store(false, Ordering::SeqCst);
    assert_eq!(
        rt.run("a", saga.checkout(5)).await.unwrap(),
        Ok("charged 5".into())
    );
}

#[tokio::test]
async fn a_worker_whose_lease_expires_unrenewed_stops() {
    let rt = Runtime::builder(Misbehaving::new(MemoryJournal::new()).unrenewable())
        .lease_duration(Duration::from_millis(60))
        .build();
    let saga = Arc::new(Saga::default());
    saga.hang.store(true, Ordering::SeqCst); // the step never finishes by itself
    let err = rt.run("u", saga.hangs()).await.unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
}

#[tokio::test]
async fn retrying_right_after_giving_up_is_not_busy() {
    let (rt, _) = memory_runtime();
    let saga = Saga::default();
    saga.hang.store(true, Ordering::SeqCst);
    let gave_up = tokio::time::timeout(Duration::from_millis(20), rt.run("r", saga.hangs())).await;
    assert!(gave_up.is_err());
    saga.hang.store(false, Ordering::SeqCst);
    // No wait in between: the hand-back of the dropped execution completes first.
    assert_eq!(rt.run("r", saga.hangs()).await.unwrap(), Ok(()));
}
