//! The runtime's contracts, end to end through `#[resumable]`, on the in-memory journal.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use common::{FAST, Misbehaving, memory_runtime, runtime};
use resumable::journal::RunSnapshot;
use resumable::{
    Classify, Error, MemoryJournal, RetryPolicy, RunStatus, Slot, StepStatus, resumable, step,
    workflow,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
enum AppError {
    #[error("temporarily unavailable")]
    Unavailable,
    #[error("invalid: {0}")]
    Invalid(String),
}

impl Classify for AppError {
    fn is_terminal(&self) -> bool {
        matches!(self, AppError::Invalid(_))
    }
}

/// Counts how often each side effect really ran.
#[derive(Default)]
struct Effects {
    log: Mutex<Vec<String>>,
    fail_first: AtomicU32,
    panic_first: AtomicU32,
    left_branch: AtomicBool,
    crash_after_first: AtomicBool,
}

impl Effects {
    fn did(&self, what: impl Into<String>) {
        self.log.lock().unwrap().push(what.into());
    }
    fn count(&self, what: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|w| *w == what)
            .count()
    }
    fn total(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

impl Effects {
    #[resumable]
    async fn three_steps(&self, order: u32) -> Result<String, AppError> {
        let a = step!("reserve", {
            self.did("reserve");
            format!("r{order}")
        });
        if self.crash_after_first.load(Ordering::SeqCst) {
            panic!("simulated crash after the first step");
        }
        let b = step!("charge", {
            self.did("charge");
            format!("{a}-c")
        });
        let c = step!("ship", {
            self.did("ship");
            format!("{b}-s")
        });
        Ok(c)
    }

    #[resumable]
    async fn flaky(&self) -> Result<u32, AppError> {
        let v = step!("flaky", |s| {
            self.did("attempt");
            if self.fail_first.load(Ordering::SeqCst) >= s.attempt() {
                return_err()?;
            }
            s.attempt()
        });
        Ok(v)
    }

    #[resumable]
    async fn invalid(&self, input: String) -> Result<(), AppError> {
        step!("validate", {
            self.did("validate");
            if input.is_empty() {
                Err(AppError::Invalid("empty".into()))?;
            }
        });
        Ok(())
    }

    #[resumable(retry = RetryPolicy::exponential(2).initial_delay(std::time::Duration::ZERO))]
    async fn panicky(&self) -> Result<u32, AppError> {
        let v = step!("panicky", |s| {
            self.did("attempt");
            if self.panic_first.load(Ordering::SeqCst) >= s.attempt() {
                panic!("step blew up on attempt {}", s.attempt());
            }
            7
        });
        Ok(v)
    }

    #[resumable(name = "branching")]
    async fn branching(&self, items: Vec<u32>) -> Result<u32, AppError> {
        let mut total = 0;
        for item in items {
            let doubled = step!("double", {
                self.did(format!("double {item}"));
                item * 2
            });
            total += if doubled > 4 {
                step!("big", { doubled + 1000 })
            } else {
                match doubled {
                    0 => step!("zero", { 0 }),
                    n => n,
                }
            };
        }
        let finished = step!("finish", {
            self.did("finish");
            total
        });
        if self.crash_after_first.load(Ordering::SeqCst) {
            panic!("crash before returning");
        }
        Ok(finished)
    }

    #[resumable(name = "nondeterministic")]
    async fn nondeterministic(&self) -> Result<(), AppError> {
        // Reads state outside any step: exactly what a workflow must not do.
        if self.left_branch.load(Ordering::SeqCst) {
            step!("left", { self.did("left") });
        } else {
            step!("right", { self.did("right") });
        }
        step!("after", {
            self.did("after");
            if self.crash_after_first.load(Ordering::SeqCst) {
                panic!("interrupted");
            }
        });
        Ok(())
    }

    #[resumable]
    async fn concurrent(&self) -> Result<(u32, u32), AppError> {
        let (a, b) = tokio::try_join!(
            async {
                let one = step!("a1", {
                    self.did("a1");
                    1
                });
                let two = step!("a2", {
                    self.did("a2");
                    if self.crash_after_first.load(Ordering::SeqCst) {
                        tokio::task::yield_now().await;
                        panic!("a2 interrupted");
                    }
                    one + 1
                });
                Ok::<_, AppError>(two)
            },
            async {
                let one = step!("b1", {
                    self.did("b1");
                    10
                });
                let two = step!("b2", {
                    self.did("b2");
                    one + 10
                });
                Ok::<_, AppError>(two)
            }
        )?;
        Ok((a, b))
    }

    #[resumable]
    async fn keyed(&self) -> Result<(String, String), AppError> {
        let first = step!("pay", |s| s.idempotency_key());
        if self.crash_after_first.load(Ordering::SeqCst) {
            panic!("crash");
        }
        let second = step!("pay_again", |s| s.idempotency_key());
        Ok((first, second))
    }
}

fn return_err() -> Result<(), AppError> {
    Err(AppError::Unavailable)
}

#[tokio::test]
async fn replay_returns_journaled_values_without_running_bodies() {
    let (rt, _) = memory_runtime();
    let fx = Effects::default();
    fx.crash_after_first.store(true, Ordering::SeqCst);
    let err = rt.run("order-1", fx.three_steps(1)).await.unwrap_err();
    assert!(matches!(err, Error::WorkflowPanicked { .. }), "{err}");
    assert_eq!(fx.count("reserve"), 1);

    let info = rt.run_info("order-1").await.unwrap().unwrap();
    assert_ne!(info.status, RunStatus::Completed);
    assert!(
        info.last_error
            .as_deref()
            .unwrap()
            .contains("simulated crash")
    );

    fx.crash_after_first.store(false, Ordering::SeqCst);
    let out = rt.run("order-1", fx.three_steps(1)).await.unwrap();
    assert_eq!(out, Ok("r1-c-s".to_string()));
    assert_eq!(
        (fx.count("reserve"), fx.count("charge"), fx.count("ship")),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn finished_runs_return_their_outcome_without_running_code() {
    let (rt, _) = memory_runtime();
    let fx = Effects::default();
    assert_eq!(
        rt.run("o", fx.three_steps(5)).await.unwrap(),
        Ok("r5-c-s".into())
    );
    let before = fx.total();
    for _ in 0..3 {
        assert_eq!(
            rt.run("o", fx.three_steps(5)).await.unwrap(),
            Ok("r5-c-s".into())
        );
    }
    assert_eq!(fx.total(), before);
    let info = rt.run_info("o").await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(
        info.steps.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["reserve#0", "charge#0", "ship#0"]
    );
}

#[tokio::test]
async fn same_key_with_other_input_is_an_input_mismatch() {
    let (rt, _) = memory_runtime();
    let fx = Effects::default();
    rt.run("o", fx.three_steps(1)).await.unwrap().unwrap();
    let err = rt.run("o", fx.three_steps(2)).await.unwrap_err();
    assert!(
        matches!(&err, Error::InputMismatch { run } if run == "o"),
        "{err}"
    );
    // Another workflow under the same key is refused as well.
    let err = rt.run("o", fx.flaky()).await.unwrap_err();
    assert!(
        matches!(&err, Error::WorkflowMismatch { journaled, .. } if journaled == "workflows::Effects::three_steps"),
        "{err}"
    );
}

#[tokio::test]
async fn retryable_errors_are_retried_then_succeed() {
    let (rt, _) = memory_runtime();
    let fx = Effects::default();
    fx.fail_first.store(2, Ordering::SeqCst);
    assert_eq!(rt.run("f", fx.flaky()).await.unwrap(), Ok(3));
    assert_eq!(fx.count("attempt"), 3);
    let info = rt.run_info("f").await.unwrap().unwrap();
    let step = info.step("flaky#0").unwrap();
    assert_eq!((step.status, step.attempts), (StepStatus::Completed, 3));
    assert_eq!(step.last_error.as_deref(), Some("temporarily unavailable"));
}

#[tokio::test]
async fn exhausted_retries_fail_the_run_for_good() {
    let (rt, _) = memory_runtime();
    let fx = Effects::default();
    fx.fail_first.store(100, Ordering::SeqCst);
    assert_eq!(
        rt.run("f", fx.flaky()).await.unwrap(),
        Err(AppError::Unavailable)
    );
    assert_eq!(fx.count("attempt"), FAST.max_attempts as usize);
    assert_eq!(
        rt.run("f", fx.flaky()).await.unwrap(),
        Err(AppError::Unavailable)
    );
    assert_eq!(fx.count("attempt"), FAST.max_attempts as usize);
    assert_eq!(
        rt.run_info("f").await.unwrap().unwrap().status,
        RunStatus::Failed
    );
}

#[tokio::test]
async fn terminal_errors_are_not_retried_and_are_stable() {
    let (rt, _) = memory_runtime();
    let fx = Effects::default();
    let expected = Err(AppError::Invalid("empty".into()));
    assert_eq!(
        rt.run("v", fx.invalid(String::new())).await.unwrap(),
        expected
    );
    assert_eq!(fx.count("validate"), 1);
    assert_eq!(
        rt.run("v", fx.invalid(String::new())).await.unwrap(),
        expected
    );
    assert_eq!(fx.count("validate"), 1);
    let info = rt.run_info("v").await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::Failed);
    assert_eq!(
        info.step("validate#0").unwrap().last_error.as_deref(),
        Some("invalid: empty")
    );
}

#[tokio::test]
async fn a_panicking_step_is_a_failed_attempt() {
    let (rt, _) = memory_runtime();
    let fx = Effects::default();
    fx.panic_first.store(1, Ordering::SeqCst);
    assert_eq!(rt.run("p", fx.panicky()).await.unwrap(), Ok(7));
    assert_eq!(fx.count("attempt"), 2);
    let step = rt.run_info("p").await.unwrap().unwrap().steps.remove(0);
    assert!(
        step.last_error
            .unwrap()
            .contains("step blew up on attempt 1")
    );
}

#[tokio::test]
async fn a_step_that_always_panics_leaves_the_run_resumable() {
    let (rt, _) = memory_runtime();
    let fx = Effects::default();
    fx.panic_first.store(u32::MAX, Ordering::SeqCst);
    let err = rt.run("p", fx.panicky()).await.unwrap_err();
    assert!(
        matches!(&err, Error::StepPanicked { step, attempts: 2, .. } if step == "panicky#0"),
        "{err}"
    );
    let info = rt.run_info("p").await.unwrap().unwrap();
    assert!(matches!(
        info.status,
        RunStatus::BackingOff | RunStatus::Pending
    ));
    assert!(info.last_error.unwrap().contains("panicked"));
    // The fix is deployed: the run resumes and completes.
    fx.panic_first.store(0, Ordering::SeqCst);
    assert_eq!(rt.run("p", fx.panicky()).await.unwrap(), Ok(7));
}

#[tokio::test]
async fn loops_and_branches_replay_by_name_and_occurrence() {
    let (rt, _) = memory_runtime();
    let fx = Effects::default();
    fx.crash_after_first.store(true, Ordering::SeqCst);
    rt.run("b", fx.branching(vec![0, 1, 3, 5]))
        .await
        .unwrap_err();
    fx.crash_after_first.store(false, Ordering::SeqCst);
    let out = rt.run("b", fx.branching(vec![0, 1, 3, 5])).await.unwrap();
    assert_eq!(out, Ok(2 + 1006 + 1010));
    for item in [0, 1, 3, 5] {
        assert_eq!(fx.count(&format!("double {item}")), 1);
    }
    assert_eq!(fx.count("finish"), 1);
    let ids: Vec<String> = rt
        .run_info("b")
        .await
        .unwrap()
        .unwrap()
        .steps
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(
        ids,
        [
            "double#0", "zero#0", "double#1", "double#2", "big#0", "double#3", "big#1", "finish#0"
        ]
    );
}

#[tokio::test]
async fn changed_control_flow_is_a_nondeterminism_error_and_leaves_the_journal_alone() {
    let (rt, journal) = memory_runtime();
    let fx = Effects::default();
    fx.left_branch.store(true, Ordering::SeqCst);
    fx.crash_after_first.store(true, Ordering::SeqCst);
    rt.run("n", fx.nondeterministic()).await.unwrap_err();
    let before = resumable::Journal::load_run(&*journal, "n")
        .await
        .unwrap()
        .unwrap()
        .steps;

    fx.left_branch.store(false, Ordering::SeqCst);
    let err = rt.run("n", fx.nondeterministic()).await.unwrap_err();
    match &err {
        Error::NonDeterminism {
            run,
            expected,
            found,
            location,
        } => {
            assert_eq!(
                (run.as_str(), expected.as_str(), found.as_str()),
                ("n", "left#0", "right#0")
            );
            // The `step!` the code asked for instead, by its own line and column.
            let (line, column) = include_str!("workflows.rs")
                .lines()
                .enumerate()
                .find_map(|(i, l)| {
                    l.find("step!(\"right\"")
                        .map(|c| (i as u32 + 1, c as u32 + 1))
                })
                .unwrap();
            assert!(location.file.ends_with("workflows.rs"), "{location}");
            assert_eq!(
                (location.line, location.column),
                (line, column),
                "{location}"
            );
        }
        other => panic!("expected NonDeterminism, got {other}"),
    }
    assert_eq!(fx.count("right"), 0, "the new branch must not run");
    let mut after = resumable::Journal::load_run(&*journal, "n")
        .await
        .unwrap()
        .unwrap()
        .steps;
    let mut before = before;
    before.sort_by(|a, b| a.step_id.cmp(&b.step_id));
    after.sort_by(|a, b| a.step_id.cmp(&b.step_id));
    assert_eq!(before, after);

    // Deterministic again: the run resumes where it was.
    fx.left_branch.store(true, Ordering::SeqCst);
    fx.crash_after_first.store(false, Ordering::SeqCst);
    rt.run("n", fx.nondeterministic()).await.unwrap().unwrap();
    // "after" panicked on each of its attempts, then ran once more to completion.
    assert_eq!(
        (fx.count("left"), fx.count("after")),
        (1, FAST.max_attempts as usize + 1)
    );
}

#[tokio::test]
async fn concurrent_steps_replay_by_identity_not_by_order() {
    let (rt, _) = memory_runtime();
    let fx = Effects::default();
    fx.crash_after_first.store(true, Ordering::SeqCst);
    let err = rt.run("c", fx.concurrent()).await.unwrap_err();
    assert!(matches!(err, Error::StepPanicked { .. }), "{err}");
    fx.crash_after_first.store(false, Ordering::SeqCst);
    assert_eq!(rt.run("c", fx.concurrent()).await.unwrap(), Ok((2, 20)));
    assert_eq!((fx.count("a1"), fx.count("b1"), fx.count("b2")), (1, 1, 1));
}

#[tokio::test]
async fn idempotency_keys_are_stable_across_executions() {
    let (rt, _) = memory_runtime();
    let fx = Effects::default();
    fx.crash_after_first.store(true, Ordering::SeqCst);
    rt.run("pay-1", fx.keyed()).await.unwrap_err();
    fx.crash_after_first.store(false, Ordering::SeqCst);
    let (first, second) = rt.run("pay-1", fx.keyed()).await.unwrap().unwrap();
    assert_eq!(first, "pay-1/pay#0");
    assert_eq!(second, "pay-1/pay_again#0");
}

/// Takes run `key`'s lease as another worker, `someone-else`, would,
/// without executing it.
async fn lease_elsewhere(journal: &MemoryJournal, key: &str) -> resumable::journal::Lease {
    let stored = resumable::Journal::load_run(journal, key)
        .await
        .unwrap()
        .unwrap()
        .run;
    let opened = resumable::Journal::open_run(
        journal,
        resumable::journal::NewRun {
            key: key.into(),
            workflow: stored.workflow,
            fingerprint: stored.fingerprint,
            input: stored.input,
            deadline: None,
        },
        resumable::journal::LeaseRequest::new("someone-else", std::time::Duration::from_secs(60)),
    )
    .await
    .unwrap();
    opened.lease.unwrap()
}

#[tokio::test]
async fn a_run_executing_elsewhere_is_busy_when_not_waiting() {
    let journal = std::sync::Arc::new(MemoryJournal::new());
    let fx = Effects::default();
    let rt = resumable::Runtime::builder(journal.clone())
        .default_retry(FAST)
        .wait_when_busy(false)
        .build();
    rt.submit("busy", fx.flaky()).await.unwrap();
    lease_elsewhere(&journal, "busy").await;
    let err = rt.run("busy", fx.flaky()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Busy { owner, .. } if owner == "someone-else"),
        "{err}"
    );
}

#[tokio::test]
async fn a_run_executing_elsewhere_is_waited_for_and_taken_over_when_given_back() {
    let journal = std::sync::Arc::new(MemoryJournal::new());
    let fx = std::sync::Arc::new(Effects::default());
    let rt = runtime(journal.clone());
    rt.submit("waited", fx.flaky()).await.unwrap();
    let lease = lease_elsewhere(&journal, "waited").await;
    let waiting = tokio::spawn({
        let rt = rt.clone();
        let fx = fx.clone();
        async move { rt.run("waited", fx.flaky()).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        !waiting.is_finished(),
        "run() waits while another worker holds the run"
    );
    // The other worker gives the run back: the waiting call takes it over.
    let release = resumable::journal::Write::Release {
        last_error: None,
        wake_at: resumable::Timestamp::now(),
        failures: 0,
        wake_on_message: None,
        at: resumable::Timestamp::now(),
    };
    resumable::Journal::write(&*journal, &lease, release)
        .await
        .unwrap();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the waiting run() resumes once the lease is free")
        .unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    let info = rt.run_info("waited").await.unwrap().unwrap();
    assert_eq!(
        info.executions, 2,
        "the other worker's lease, then this one"
    );
}

#[tokio::test]
async fn a_worker_that_lost_its_lease_stops_at_its_next_write() {
    let journal = std::sync::Arc::new(MemoryJournal::new());
    let rt = runtime(journal.clone());
    let fx = std::sync::Arc::new(Effects::default());
    let steal = tokio::sync::Notify::new();
    let stolen = tokio::sync::Notify::new();

    struct Slow<'a> {
        steal: &'a tokio::sync::Notify,
        stolen: &'a tokio::sync::Notify,
        fx: &'a Effects,
    }
    impl Slow<'_> {
        #[resumable]
        async fn work(&self) -> Result<(), AppError> {
            step!("first", { self.fx.did("first") });
            step!("slow", {
                self.steal.notify_one();
                self.stolen.notified().await;
                self.fx.did("slow")
            });
            step!("never", { self.fx.did("never") });
            Ok(())
        }
    }
    let slow = Slow {
        steal: &steal,
        stolen: &stolen,
        fx: &fx,
    };
    let thief = async {
        steal.notified().await;
        // Another worker takes the run as if the lease had expired.
        let far = resumable::journal::Timestamp::now().after(std::time::Duration::from_secs(3600));
        let claimed = resumable::Journal::claim_due(
            &*journal,
            resumable::journal::LeaseRequest {
                owner: "thief".into(),
                now: far,
                until: far.after(std::time::Duration::from_secs(60)),
                workflows: None,
            },
            10,
        )
        .await
        .unwrap();
        assert_eq!(claimed.len(), 1);
        stolen.notify_one();
    };
    let (result, ()) = tokio::join!(rt.run("lease", slow.work()), thief);
    let err = result.unwrap_err();
    assert!(matches!(err, Error::LeaseLost { epoch: 1, .. }), "{err}");
    assert_eq!(fx.count("never"), 0);
    let steps = resumable::Journal::load_run(&*journal, "lease")
        .await
        .unwrap()
        .unwrap()
        .steps;
    assert_eq!(
        steps.iter().map(|s| s.step_id.as_str()).collect::<Vec<_>>(),
        ["first#0"]
    );
}

#[tokio::test]
async fn invalid_run_keys_are_refused() {
    let (rt, _) = memory_runtime();
    let fx = Effects::default();
    assert!(matches!(
        rt.run("", fx.flaky()).await,
        Err(Error::InvalidRunKey { .. })
    ));
    let long = "k".repeat(resumable::MAX_RUN_KEY + 1);
    assert!(matches!(
        rt.run(long, fx.flaky()).await,
        Err(Error::InvalidRunKey { .. })
    ));
}

fn corrupt_reserve(snapshot: &mut RunSnapshot) {
    for step in &mut snapshot.steps {
        if step.step_id == "reserve#0" {
            let out = step.output.as_mut().unwrap();
            let last = out.len() - 1;
            out[last] ^= 0xff;
        }
    }
}

fn truncate_reserve(snapshot: &mut RunSnapshot) {
    for step in &mut snapshot.steps {
        if step.step_id == "reserve#0" {
            step.output.as_mut().unwrap().truncate(3);
        }
    }
}

async fn interrupted_after_reserve(tamper: fn(&mut RunSnapshot)) -> Error {
    let journal = Misbehaving::new(MemoryJournal::new()).tampering(tamper);
    let rt = runtime(journal);
    let fx = Effects::default();
    fx.crash_after_first.store(true, Ordering::SeqCst);
    rt.run("t", fx.three_steps(1)).await.unwrap_err();
    fx.crash_after_first.store(false, Ordering::SeqCst);
    rt.run("t", fx.three_steps(1)).await.unwrap_err()
}

#[tokio::test]
async fn corrupted_and_truncated_records_are_typed_errors_naming_run_and_step() {
    for tamper in [corrupt_reserve as fn(&mut RunSnapshot), truncate_reserve] {
        let err = interrupted_after_reserve(tamper).await;
        match &err {
            Error::Corrupted { run, slot, .. } => {
                assert_eq!((run.as_str(), slot), ("t", &Slot::Step("reserve#0".into())));
            }
            other => panic!("expected Corrupted, got {other}"),
        }
        assert!(
            err.to_string().contains("step 'reserve#0' of run \"t\""),
            "{err}"
        );
    }
}

mod changed_types {
    //! Two versions of one workflow whose step output type changed while the
    //! step structure did not: the journaled bytes no longer decode.
    use super::*;

    pub struct V;

    impl V {
        #[resumable(name = "typed")]
        pub async fn v1(&self, fail: bool) -> Result<u8, AppError> {
            let n = step!("count", { 7u64 });
            step!("stop", {
                if fail {
                    panic!("stop here");
                }
            });
            Ok(n as u8)
        }

        #[resumable(name = "typed")]
        pub async fn v2(&self, fail: bool) -> Result<u8, AppError> {
            let n = step!("count", { String::from("seven") });
            step!("stop", {
                if fail {
                    panic!("stop here");
                }
            });
            Ok(n.len() as u8)
        }
    }
}

#[tokio::test]
async fn a_payload_of_the_wrong_type_is_a_decode_error() {
    use changed_types::V;
    assert_eq!(
        workflow!(V::v1).meta().fingerprint,
        workflow!(V::v2).meta().fingerprint
    );
    let (rt, _) = memory_runtime();
    rt.run("w", V.v1(true)).await.unwrap_err();
    let err = rt.run("w", V.v2(true)).await.unwrap_err();
    match &err {
        Error::Decode { run, slot, ty, .. } => {
            assert_eq!(
                (run.as_str(), slot, *ty),
                ("w", &Slot::Step("count#0".into()), "alloc::string::String")
            );
        }
        other => panic!("expected Decode, got {other}"),
    }
}

#[tokio::test]
async fn oversized_outputs_are_refused_before_the_journal() {
    struct Big;
    impl Big {
        #[resumable]
        async fn big(&self) -> Result<usize, AppError> {
            let v = step!("blob", { vec![1u8; 4096] });
            Ok(v.len())
        }
    }
    let rt = resumable::Runtime::builder(MemoryJournal::new())
        .max_payload(1024)
        .build();
    let err = rt.run("big", Big.big()).await.unwrap_err();
    assert!(
        matches!(&err, Error::PayloadTooLarge { slot: Slot::Step(s), limit: 1024, .. } if s == "blob#0"),
        "{err}"
    );
}

mod lossy {
    //! Contract 2: the code after a step sees what the journal holds.
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Cached {
        pub value: u32,
        #[serde(skip)]
        pub cache: Option<u32>,
    }

    pub struct L;

    impl L {
        #[resumable]
        pub async fn lossy(&self) -> Result<(u32, Option<u32>), AppError> {
            let c = step!("load", {
                Cached {
                    value: 1,
                    cache: Some(99),
                }
            });
            Ok((c.value, c.cache))
        }

        #[resumable]
        pub async fn unsupported(&self) -> Result<u32, AppError> {
            // bincode cannot decode self-describing values such as serde_json::Value.
            let v = step!("json", { serde_json::json!({ "a": 1 }) });
            Ok(v["a"].as_u64().unwrap_or_default() as u32)
        }
    }
}

#[tokio::test]
async fn code_after_a_step_sees_the_decoded_journal_value_on_the_first_run() {
    let (rt, _) = memory_runtime();
    assert_eq!(rt.run("l", lossy::L.lossy()).await.unwrap(), Ok((1, None)));
}

#[tokio::test]
async fn a_type_that_does_not_survive_the_codec_fails_on_the_first_run() {
    let (rt, _) = memory_runtime();
    let err = rt.run("u", lossy::L.unsupported()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Decode { slot: Slot::Step(s), .. } if s == "json#0"),
        "{err}"
    );
    // Nothing was recorded for the step: its value never reached the journal.
    let info = rt.run_info("u").await.unwrap().unwrap();
    assert!(info.steps.is_empty(), "{:?}", info.steps);
}

mod json {
    //! The codec is pluggable: the same workflow journaled as JSON.
    use super::*;
    use resumable::{BoxError, Codec};

    pub struct Json;

    impl Codec for Json {
        const NAME: &'static str = "json";
        fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, BoxError> {
            Ok(serde_json::to_vec(value)?)
        }
        fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BoxError> {
            Ok(serde_json::from_slice(bytes)?)
        }
    }

    pub struct J;

    impl J {
        #[resumable(codec = Json)]
        pub async fn as_json(&self, n: u32) -> Result<serde_json::Value, AppError> {
            let v = step!("value", { serde_json::json!({ "n": n }) });
            Ok(v)
        }
    }
}

#[tokio::test]
async fn a_workflow_can_use_another_codec() {
    let (rt, journal) = memory_runtime();
    let out = rt.run("j", json::J.as_json(5)).await.unwrap();
    assert_eq!(out, Ok(serde_json::json!({ "n": 5 })));
    let snapshot = resumable::Journal::load_run(&*journal, "j")
        .await
        .unwrap()
        .unwrap();
    let output = snapshot.steps[0].output.as_ref().unwrap();
    assert_eq!(
        &output[5..],
        br#"json{"n":5}"#,
        "after the 5-byte header, the codec's name, then the JSON payload"
    );
    assert_eq!(
        rt.run("j", json::J.as_json(5)).await.unwrap(),
        Ok(serde_json::json!({ "n": 5 }))
    );
}
