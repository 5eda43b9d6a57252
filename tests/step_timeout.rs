//! A step's time limit per attempt: `step!("name", timeout = …, { … })`. An
//! attempt that runs past it is dropped and counts as a failed attempt under
//! the retry policy; a step that times out on every attempt leaves the run
//! incomplete, as a panic on every attempt does.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use resumable::{Error, MemoryJournal, RetryPolicy, RunStatus, Runtime, resumable, step};

const FAST: RetryPolicy = RetryPolicy::exponential(3).initial_delay(Duration::from_millis(1));

#[derive(Default)]
struct Gateway {
    calls: AtomicU32,
    /// The first this many calls hang.
    hanging: u32,
}

impl Gateway {
    async fn charge(&self) -> u32 {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call <= self.hanging {
            std::future::pending::<()>().await;
        }
        call
    }

    #[resumable(retry = FAST)]
    async fn pay(&self) -> Result<u32, String> {
        let call = step!("charge", timeout = Duration::from_millis(100), {
            self.charge().await
        });
        Ok(call)
    }
}

#[tokio::test]
async fn an_attempt_past_the_limit_is_a_failed_attempt_and_is_retried() {
    let rt = Runtime::new(MemoryJournal::new());
    let gateway = Gateway {
        hanging: 1,
        ..Gateway::default()
    };
    assert_eq!(rt.run("p", gateway.pay()).await.unwrap(), Ok(2));
    let info = rt.run_info("p").await.unwrap().unwrap();
    let step = info.step("charge#0").unwrap();
    assert_eq!(step.attempts, 2, "the timed-out attempt counts");
}

#[tokio::test]
async fn a_step_that_times_out_on_every_attempt_leaves_the_run_incomplete() {
    let rt = Runtime::new(MemoryJournal::new());
    let gateway = Gateway {
        hanging: u32::MAX,
        ..Gateway::default()
    };
    match rt.run("p", gateway.pay()).await {
        Err(Error::StepTimedOut {
            run,
            step,
            attempts,
            limit,
        }) => {
            assert_eq!(
                (run.as_str(), step.as_str(), attempts),
                ("p", "charge#0", 3)
            );
            assert_eq!(limit, Duration::from_millis(100));
        }
        other => panic!("expected Error::StepTimedOut, got {other:?}"),
    }
    assert_eq!(gateway.calls.load(Ordering::SeqCst), 3);
    let info = rt.run_info("p").await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::BackingOff);
    let error = info.last_error.unwrap();
    assert!(error.contains("timed out on attempt 3"), "{error}");
}
