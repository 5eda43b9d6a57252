//! A conformance suite for [`Journal`] implementations.
//!
//! Each function checks one part of the contract written on the trait's
//! methods and panics, with a message naming the broken rule, when the
//! journal does not keep it. Call [`run_all`] from a backend's tests:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use resumable::MemoryJournal;
//!
//! resumable::conformance::run_all(Arc::new(MemoryJournal::new())).await;
//! # }
//! ```
//!
//! # Sharing one journal
//!
//! Every function uses run keys and workflow names with a random suffix, so
//! all of them can run against one journal that other tests also use. The
//! exception is [`Journal::claim_due`], which has no filter: the claim tests
//! ([`claim_due_selects_due_runs`], [`claim_due_respects_limit`],
//! [`claim_due_is_exclusive`]) work with timestamps before September 2001
//! (below 10¹² ms) and finish every run they create. They need a journal in
//! which no other run is due that early (runs stamped with
//! [`Timestamp::now`] never are) and must not run concurrently with each
//! other on one journal. [`run_all`] runs everything one after another.
//!
//! The functions that test concurrency take an `Arc<dyn Journal>` and spawn
//! tokio tasks; on a multi-threaded runtime those run in parallel.

mod children;
mod lifecycle;
mod messages;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;

pub use children::{
    a_finished_child_tells_its_parent, start_child_creates_the_child_with_its_step,
};
pub use lifecycle::{
    cancel_stops_runs_durably, create_run_does_not_lease, dead_letters_wait_for_an_operator,
    events_keep_the_last_published_value, fork_copies_the_first_steps,
    leases_given_back_together_count_failures, list_runs_pages, purge_deletes_old_finished_runs,
    resume_reopens_a_failed_run, retry_now_makes_a_run_due,
};
pub use messages::{messages_are_taken_once_oldest_first, messages_wake_runs_waiting_for_them};

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::journal::{
    Journal, JournalEvent, Lease, LeaseRequest, NewRun, RunFilter, RunRecord, RunSnapshot,
    RunState, StepRecord, StepState, Subscription, Timestamp, UNPINNED, Write,
};

/// The worker id used for leases in these tests.
const OWNER: &str = "conformance-worker";
/// Another worker, taking over runs whose lease expired.
const OTHER: &str = "conformance-other-worker";
/// Claim tests keep their timestamps below this (2001-09-09), far before any
/// run stamped with the real clock.
const CLAIM_WINDOW_END: i64 = 1_000_000_000_000;

/// Runs every test of the suite against `journal`, one after another.
pub async fn run_all(journal: Arc<dyn Journal>) {
    let j: &dyn Journal = &*journal;
    open_run_creates_and_leases(j).await;
    open_run_is_idempotent(j).await;
    open_run_race(journal.clone()).await;
    finished_run_stays_finished(j).await;
    stale_epoch_is_fenced(j).await;
    step_is_recorded_once(j).await;
    failed_step_is_recorded(j).await;
    step_failures_stay_visible(j).await;
    release_gives_run_back(j).await;
    renew_extends_lease(j).await;
    pin_fixes_an_unpinned_fingerprint(j).await;
    events_announce_due_and_finished_runs(j).await;
    load_run_round_trips(j).await;
    list_runs_filters(j).await;
    claim_due_selects_due_runs(j).await;
    claim_due_respects_limit(j).await;
    claim_due_takes_only_the_workflows_asked_for(j).await;
    claim_due_is_exclusive(journal.clone()).await;
    create_run_does_not_lease(j).await;
    cancel_stops_runs_durably(j).await;
    dead_letters_wait_for_an_operator(j).await;
    resume_reopens_a_failed_run(j).await;
    retry_now_makes_a_run_due(j).await;
    fork_copies_the_first_steps(j).await;
    purge_deletes_old_finished_runs(j).await;
    events_keep_the_last_published_value(j).await;
    leases_given_back_together_count_failures(j).await;
    list_runs_pages(j).await;
    messages_are_taken_once_oldest_first(j).await;
    messages_wake_runs_waiting_for_them(j).await;
    start_child_creates_the_child_with_its_step(j).await;
    a_finished_child_tells_its_parent(j).await;
}

/// `open_run` on a new key creates the run and leases it: `created`, epoch 1,
/// one execution, the lease's owner and expiry recorded, the input, workflow
/// and fingerprint stored as given, no steps, and `created_at` the caller's
/// `now`.
pub async fn open_run_creates_and_leases(journal: &dyn Journal) {
    let key = unique("create");
    let workflow = unique("wf-create");
    let t = Timestamp::now();
    let new = NewRun {
        key: key.clone(),
        workflow: workflow.clone(),
        // The high bit set: a backend storing it as a signed integer must keep every bit.
        fingerprint: 0xFEDC_BA98_7654_3210,
        input: vec![0, 1, 2, 255, 0],
        deadline: None,
    };
    let opened = journal
        .open_run(new, request(OWNER, t, at(t, 30_000)))
        .await
        .unwrap_or_else(|e| panic!("open_run on a new key failed: {e}"));
    assert!(
        opened.created,
        "open_run on a new key must report created = true"
    );
    let lease = opened
        .lease
        .expect("open_run on a new key must lease the run");
    assert_eq!(
        lease,
        Lease {
            run_key: key.clone(),
            owner: OWNER.to_owned(),
            epoch: 1,
            expires_at: at(t, 30_000),
        },
        "the first lease of a new run must have epoch 1, the requested owner and expiry"
    );
    let run = &opened.snapshot.run;
    assert_eq!(run.key, key, "the run must keep its key");
    assert_eq!(
        run.workflow, workflow,
        "the run must keep its workflow name"
    );
    assert_eq!(
        run.fingerprint, 0xFEDC_BA98_7654_3210,
        "the run must keep every bit of its fingerprint"
    );
    assert_eq!(
        run.input,
        vec![0, 1, 2, 255, 0],
        "the run must keep its input bytes"
    );
    assert_eq!(run.state, RunState::Incomplete, "a new run is incomplete");
    assert_eq!(run.outcome, None, "a new run has no outcome");
    assert_eq!(run.epoch, 1, "a new, leased run is at epoch 1");
    assert_eq!(run.executions, 1, "a new, leased run has one execution");
    assert_eq!(
        run.lease_owner.as_deref(),
        Some(OWNER),
        "a new run records its lease owner"
    );
    assert_eq!(
        run.lease_expires_at,
        Some(at(t, 30_000)),
        "a new run records its lease expiry"
    );
    assert!(
        run.is_leased_at(t),
        "a new run is leased at the time it was opened"
    );
    assert!(
        run.wake_at <= t,
        "a new run must be due at once (wake_at <= now), so it is recovered if its worker dies"
    );
    assert_eq!(run.last_error, None, "a new run has no last error");
    assert_eq!(run.created_at, t, "created_at must be the caller's `now`");
    assert!(opened.snapshot.steps.is_empty(), "a new run has no steps");

    let loaded = load(journal, &key).await;
    assert_eq!(
        &loaded.run, run,
        "load_run must return the run open_run returned"
    );
    assert!(loaded.steps.is_empty(), "a new run has no steps");
}

/// Re-opening a run returns it unchanged (its original input, workflow and
/// fingerprint, whatever the new call passes) and does not lease it while a
/// live lease is held. Once that lease has expired (at its `expires_at`, as
/// [`RunRecord::is_leased_at`] defines), re-opening leases it again with the
/// epoch and executions raised by one, and returns the recorded steps.
pub async fn open_run_is_idempotent(journal: &dyn Journal) {
    let key = unique("reopen");
    let t = Timestamp::now();
    let first = NewRun {
        key: key.clone(),
        workflow: unique("wf-reopen"),
        fingerprint: 7,
        input: b"original".to_vec(),
        deadline: None,
    };
    let (_, lease1) = open_leased(journal, first.clone(), t, at(t, 1_000)).await;
    journal
        .write(
            &lease1,
            step_completed("fetch#0", 0, b"fetched".to_vec(), at(t, 10)),
        )
        .await
        .unwrap_or_else(|e| panic!("recording a step under a fresh lease failed: {e}"));

    let other = NewRun {
        key: key.clone(),
        workflow: unique("wf-other"),
        fingerprint: 8,
        input: b"different".to_vec(),
        deadline: None,
    };
    for now in [at(t, 1), at(t, 999)] {
        let opened = journal
            .open_run(other.clone(), request(OTHER, now, at(now, 1_000)))
            .await
            .unwrap_or_else(|e| panic!("re-opening an existing run failed: {e}"));
        assert!(
            !opened.created,
            "re-opening an existing run must report created = false"
        );
        assert!(
            opened.lease.is_none(),
            "open_run must not lease a run whose lease is live (expires at {:?}, now {now:?})",
            lease1.expires_at
        );
        let run = &opened.snapshot.run;
        assert_eq!(
            run.input, first.input,
            "open_run must never change an existing run's input"
        );
        assert_eq!(
            run.workflow, first.workflow,
            "open_run must never change an existing run's workflow"
        );
        assert_eq!(
            run.fingerprint, first.fingerprint,
            "open_run must never change an existing run's fingerprint"
        );
        assert_eq!(
            (run.epoch, run.executions),
            (1, 1),
            "an unleased re-open must not raise epoch or executions"
        );
        assert_eq!(
            run.lease_owner.as_deref(),
            Some(OWNER),
            "an unleased re-open must keep the live lease's owner"
        );
    }

    // The lease expires at its `expires_at`: a worker may take it over from then on.
    let expiry = lease1.expires_at;
    let opened = journal
        .open_run(other.clone(), request(OTHER, expiry, at(expiry, 5_000)))
        .await
        .unwrap_or_else(|e| panic!("re-opening a run with an expired lease failed: {e}"));
    assert!(
        !opened.created,
        "re-opening an existing run must report created = false"
    );
    let lease2 = opened
        .lease
        .expect("open_run must lease an incomplete run whose lease expired (now == expires_at)");
    assert_eq!(
        lease2,
        Lease {
            run_key: key.clone(),
            owner: OTHER.to_owned(),
            epoch: 2,
            expires_at: at(expiry, 5_000),
        },
        "taking over an expired lease must raise the epoch by one"
    );
    let run = &opened.snapshot.run;
    assert_eq!(
        run.input, first.input,
        "open_run must never change an existing run's input"
    );
    assert_eq!(
        (run.epoch, run.executions),
        (2, 2),
        "a re-lease must raise epoch and executions by one"
    );
    assert_eq!(
        run.lease_owner.as_deref(),
        Some(OTHER),
        "a re-lease must record the new owner"
    );
    assert_eq!(
        run.lease_expires_at,
        Some(at(expiry, 5_000)),
        "a re-lease must record the new expiry"
    );
    let step = find_step(&opened.snapshot.steps, "fetch#0").unwrap_or_else(|| {
        panic!("open_run must return the recorded steps when it leases the run")
    });
    assert_eq!(
        step.output.as_deref(),
        Some(&b"fetched"[..]),
        "a recorded step's output must be returned intact"
    );
    assert_eq!(
        load(journal, &key).await.run,
        *run,
        "load_run must agree with open_run"
    );
}

/// Concurrent `open_run` calls for one new key create it once and lease it
/// once; every caller sees the creator's input.
pub async fn open_run_race(journal: Arc<dyn Journal>) {
    let key = unique("race");
    let workflow = unique("wf-race");
    let t = Timestamp::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8u8 {
        let journal = journal.clone();
        let new = NewRun {
            key: key.clone(),
            workflow: workflow.clone(),
            fingerprint: 1,
            input: vec![i],
            deadline: None,
        };
        tasks.spawn(async move {
            let owner = format!("racer-{i}");
            journal
                .open_run(new, request(&owner, t, at(t, 60_000)))
                .await
        });
    }
    let mut opened = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let result = result.unwrap_or_else(|e| panic!("an open_run task panicked: {e}"));
        opened.push(result.unwrap_or_else(|e| panic!("concurrent open_run failed: {e}")));
    }
    let created: Vec<_> = opened.iter().filter(|o| o.created).collect();
    assert_eq!(
        created.len(),
        1,
        "exactly one of 8 concurrent open_run calls must create the run"
    );
    let leased: Vec<_> = opened.iter().filter_map(|o| o.lease.as_ref()).collect();
    assert_eq!(
        leased.len(),
        1,
        "exactly one of 8 concurrent open_run calls must lease the run"
    );
    assert_eq!(
        leased[0].epoch, 1,
        "the only lease of a new run has epoch 1"
    );
    let input = &created[0].snapshot.run.input;
    for o in &opened {
        assert_eq!(
            &o.snapshot.run.input, input,
            "every caller must see the input of the call that created the run"
        );
    }
    let run = load(journal.as_ref(), &key).await.run;
    assert_eq!(
        (run.epoch, run.executions),
        (1, 1),
        "racing open_run calls must lease the run once"
    );
}

/// A finished run (completed or failed) keeps its state and outcome, releases
/// its lease, is never leased again, and refuses every further write or
/// renewal with [`Error::LeaseLost`].
pub async fn finished_run_stays_finished(journal: &dyn Journal) {
    for (state, outcome) in [
        (RunState::Completed, b"ok".to_vec()),
        (RunState::Failed, Vec::new()),
    ] {
        let key = unique("finished");
        let t = Timestamp::now();
        let (_, lease) = open_leased(journal, new_run(&key, b"input"), t, at(t, 60_000)).await;
        let finish = Write::RunFinished {
            state,
            outcome: outcome.clone(),
            at: at(t, 10),
        };
        journal
            .write(&lease, finish)
            .await
            .unwrap_or_else(|e| panic!("finishing a run as {state:?} failed: {e}"));
        let run = load(journal, &key).await.run;
        assert_eq!(run.state, state, "RunFinished must set the run's state");
        assert_eq!(
            run.outcome.as_ref(),
            Some(&outcome),
            "RunFinished must store the outcome (even when empty)"
        );
        assert_eq!(run.lease_owner, None, "RunFinished must release the lease");
        assert_eq!(
            run.lease_expires_at, None,
            "RunFinished must release the lease"
        );
        assert_eq!(
            run.updated_at,
            at(t, 10),
            "RunFinished must set updated_at to its `at`"
        );

        for now in [at(t, 20), at(t, 1_000_000_000)] {
            let opened = journal
                .open_run(
                    new_run(&key, b"other input"),
                    request(OTHER, now, at(now, 1_000)),
                )
                .await
                .unwrap_or_else(|e| panic!("re-opening a finished run failed: {e}"));
            assert!(
                !opened.created,
                "re-opening a finished run must report created = false"
            );
            assert!(
                opened.lease.is_none(),
                "a finished run ({state:?}) must never be leased again"
            );
            assert_eq!(
                opened.snapshot.run, run,
                "re-opening a finished run must not change it"
            );
        }

        let refused = [
            step_completed("late#0", 0, b"x".to_vec(), at(t, 30)),
            step_failed("late#0", 1, "late", at(t, 30)),
            Write::Release {
                last_error: Some("late".into()),
                wake_at: at(t, 30),
                at: at(t, 30),
                failures: 0,
                wake_on_message: None,
            },
            Write::RunFinished {
                state: RunState::Completed,
                outcome: b"second outcome".to_vec(),
                at: at(t, 30),
            },
        ];
        for write in refused {
            let what = format!("{write:?} on a finished run");
            expect_lease_lost(journal.write(&lease, write).await, &lease, &what);
        }
        expect_lease_lost(
            journal.renew(&lease, at(t, 90_000)).await,
            &lease,
            "renew on a finished run",
        );
        assert_eq!(
            load(journal, &key).await.run,
            run,
            "refused writes must not change a finished run"
        );
    }
}

/// A write or renewal under a lease whose epoch is not the run's current one
/// (older, newer, or for an unknown run) fails with [`Error::LeaseLost`]
/// naming that lease, and changes nothing.
pub async fn stale_epoch_is_fenced(journal: &dyn Journal) {
    let key = unique("fenced");
    let t = Timestamp::now();
    let (_, lease1) = open_leased(journal, new_run(&key, b"input"), t, at(t, 1_000)).await;
    journal
        .write(&lease1, step_completed("a#0", 0, b"a".to_vec(), at(t, 1)))
        .await
        .unwrap_or_else(|e| panic!("recording a step under a fresh lease failed: {e}"));
    journal
        .write(&lease1, step_failed("b#0", 1, "first try", at(t, 2)))
        .await
        .unwrap_or_else(|e| panic!("recording a step failure under a fresh lease failed: {e}"));
    let (_, lease2) = open_leased(
        journal,
        new_run(&key, b"input"),
        at(t, 1_000),
        at(t, 60_000),
    )
    .await;
    assert_eq!(
        lease2.epoch, 2,
        "taking over an expired lease must raise the epoch to 2"
    );

    let before = load(journal, &key).await;
    let future = Lease {
        epoch: 3,
        ..lease2.clone()
    };
    let unknown = Lease {
        run_key: unique("fenced-unknown"),
        ..lease2.clone()
    };
    for lease in [&lease1, &future, &unknown] {
        let writes = [
            step_completed("a#0", 0, b"stale".to_vec(), at(t, 2_000)),
            step_completed("c#0", 1, b"stale".to_vec(), at(t, 2_000)),
            step_failed("b#0", 2, "stale", at(t, 2_000)),
            Write::Release {
                last_error: Some("stale".into()),
                wake_at: at(t, 2_000),
                at: at(t, 2_000),
                failures: 0,
                wake_on_message: None,
            },
            Write::RunFinished {
                state: RunState::Completed,
                outcome: b"stale".to_vec(),
                at: at(t, 2_000),
            },
        ];
        for write in writes {
            let what = format!("{write:?} under epoch {} (current epoch 2)", lease.epoch);
            expect_lease_lost(journal.write(lease, write).await, lease, &what);
        }
        let what = format!("renew under epoch {} (current epoch 2)", lease.epoch);
        expect_lease_lost(journal.renew(lease, at(t, 90_000)).await, lease, &what);
    }
    assert_eq!(
        load(journal, &key).await,
        before,
        "a refused write must change nothing"
    );
    assert!(
        journal
            .load_run(&unknown.run_key)
            .await
            .expect("load_run failed")
            .is_none(),
        "a write to an unknown run must not create it"
    );

    journal
        .write(
            &lease2,
            step_completed("c#0", 1, b"current".to_vec(), at(t, 2_000)),
        )
        .await
        .unwrap_or_else(|e| panic!("a write under the current epoch failed: {e}"));
}

/// A step recorded once is never overwritten: a second `StepRecorded` (under
/// the same or a later lease) fails with [`Error::StepAlreadyRecorded`], as
/// does a `AttemptFailed` for it, and the first output stays.
pub async fn step_is_recorded_once(journal: &dyn Journal) {
    let key = unique("once");
    let t = Timestamp::now();
    let (_, lease1) = open_leased(journal, new_run(&key, b"input"), t, at(t, 1_000)).await;
    journal
        .write(
            &lease1,
            step_completed("charge#0", 0, b"first".to_vec(), at(t, 5)),
        )
        .await
        .unwrap_or_else(|e| panic!("recording a step failed: {e}"));
    let recorded = load(journal, &key).await;
    let refuse_both = |lease: Lease| async move {
        let second = journal
            .write(
                &lease,
                step_completed("charge#0", 1, b"second".to_vec(), at(t, 2_000)),
            )
            .await;
        let what = format!("a second StepRecorded (epoch {})", lease.epoch);
        expect_already_recorded(second, &lease.run_key, "charge#0", &what);
        let failed = journal
            .write(&lease, step_failed("charge#0", 2, "late", at(t, 2_000)))
            .await;
        let what = format!(
            "an AttemptFailed for a completed step (epoch {})",
            lease.epoch
        );
        expect_already_recorded(failed, &lease.run_key, "charge#0", &what);
    };
    refuse_both(lease1).await;
    // Under a later lease too: a recorded step never runs again.
    let (_, lease2) = open_leased(
        journal,
        new_run(&key, b"input"),
        at(t, 1_000),
        at(t, 60_000),
    )
    .await;
    refuse_both(lease2).await;
    let after = load(journal, &key).await;
    assert_eq!(
        find_step(&after.steps, "charge#0"),
        find_step(&recorded.steps, "charge#0"),
        "a refused step write must leave the recorded step as it was"
    );
}

/// A step that failed for good is recorded like an output: `StepRecorded`
/// with [`StepState::Failed`] keeps the sealed error as its output and the
/// message as its last error, and later writes for it are refused.
pub async fn failed_step_is_recorded(journal: &dyn Journal) {
    let key = unique("failed-step");
    let t = Timestamp::now();
    let (_, lease) = open_leased(journal, new_run(&key, b"input"), t, at(t, 60_000)).await;
    journal
        .write(&lease, step_failed("pay#0", 1, "card declined", at(t, 1)))
        .await
        .unwrap_or_else(|e| panic!("recording a failed attempt failed: {e}"));
    let write = Write::StepRecorded {
        step_id: "pay#0".into(),
        seq: 0,
        state: StepState::Failed,
        output: b"sealed error".to_vec(),
        error: Some("card declined for good".into()),
        attempts: 2,
        started_at: t,
        at: at(t, 2),
    };
    journal
        .write(&lease, write)
        .await
        .unwrap_or_else(|e| panic!("recording a failed step failed: {e}"));
    let snapshot = load(journal, &key).await;
    let step = find_step(&snapshot.steps, "pay#0").expect("the failed step must be stored");
    assert_eq!(
        (
            step.state,
            step.output.as_deref(),
            step.last_error.as_deref(),
            step.attempts,
            step.seq
        ),
        (
            StepState::Failed,
            Some(&b"sealed error"[..]),
            Some("card declined for good"),
            2,
            Some(0)
        ),
        "a failed step keeps its sealed error, message, attempts and seq"
    );
    let again = journal
        .write(
            &lease,
            step_completed("pay#0", 1, b"late".to_vec(), at(t, 3)),
        )
        .await;
    expect_already_recorded(
        again,
        &key,
        "pay#0",
        "a StepRecorded after the step failed for good",
    );
    let retry = journal
        .write(&lease, step_failed("pay#0", 3, "late", at(t, 3)))
        .await;
    expect_already_recorded(
        retry,
        &key,
        "pay#0",
        "an AttemptFailed after the step failed for good",
    );
    finish(journal, &lease, at(t, 4), &key).await;
}

/// `AttemptFailed` records a retrying step with its attempts, error and
/// `retry_at`; a later failure updates them; a `StepRecorded` then marks it
/// completed with its output and attempts, keeps the last error visible, and
/// clears `retry_at`.
pub async fn step_failures_stay_visible(journal: &dyn Journal) {
    let key = unique("retry");
    let t = Timestamp::now();
    let (_, lease) = open_leased(journal, new_run(&key, b"input"), t, at(t, 60_000)).await;
    let started = at(t, 1);
    let failures = [
        (1, "timeout", at(t, 100)),
        (2, "connection reset", at(t, 300)),
    ];
    for (attempts, error, retry_at) in failures {
        let write = Write::AttemptFailed {
            step_id: "send#0".into(),
            attempts,
            error: error.into(),
            retry_at: Some(retry_at),
            started_at: started,
            at: at(t, i64::from(attempts) * 10),
        };
        journal
            .write(&lease, write)
            .await
            .unwrap_or_else(|e| panic!("recording a step failure failed: {e}"));
        let snapshot = load(journal, &key).await;
        let step =
            find_step(&snapshot.steps, "send#0").expect("AttemptFailed must record the step");
        let expected = StepRecord {
            step_id: "send#0".into(),
            seq: None,
            state: StepState::Retrying,
            output: None,
            attempts,
            last_error: Some(error.into()),
            retry_at: Some(retry_at),
            epoch: lease.epoch,
            started_at: started,
            updated_at: at(t, i64::from(attempts) * 10),
        };
        assert_eq!(
            step, &expected,
            "AttemptFailed (attempt {attempts}) must be visible as a retrying step"
        );
    }

    let write = Write::StepRecorded {
        step_id: "send#0".into(),
        seq: 0,
        state: StepState::Completed,
        output: b"sent".to_vec(),
        error: None,
        attempts: 3,
        started_at: started,
        at: at(t, 400),
    };
    journal
        .write(&lease, write)
        .await
        .unwrap_or_else(|e| panic!("completing a step after failures failed: {e}"));
    let snapshot = load(journal, &key).await;
    let step = find_step(&snapshot.steps, "send#0").expect("StepRecorded must keep the step");
    let expected = StepRecord {
        step_id: "send#0".into(),
        seq: Some(0),
        state: StepState::Completed,
        output: Some(b"sent".to_vec()),
        attempts: 3,
        last_error: Some("connection reset".into()),
        retry_at: None,
        epoch: lease.epoch,
        started_at: started,
        updated_at: at(t, 400),
    };
    assert_eq!(
        step, &expected,
        "StepRecorded after failures must mark the step completed, keep its last error and clear retry_at"
    );
    assert_eq!(
        snapshot.steps.len(),
        1,
        "failures and completion of one step must be one record"
    );
    assert_eq!(
        snapshot.run.state,
        RunState::Incomplete,
        "recording steps must not finish the run"
    );
}

/// `Release` clears the lease, sets `wake_at` and `last_error` (replacing the
/// previous one, also with `None`), and leaves the run incomplete at the same
/// epoch; the released lease writes no more. `open_run` leases a released run at once, whatever its `wake_at`.
pub async fn release_gives_run_back(journal: &dyn Journal) {
    let key = unique("release");
    let t = Timestamp::now();
    let (_, lease1) = open_leased(journal, new_run(&key, b"input"), t, at(t, 60_000)).await;
    let release = Write::Release {
        last_error: Some("database unavailable".into()),
        wake_at: at(t, 30_000),
        at: at(t, 5),
        failures: 0,
        wake_on_message: None,
    };
    journal
        .write(&lease1, release)
        .await
        .unwrap_or_else(|e| panic!("releasing a run failed: {e}"));
    let run = load(journal, &key).await.run;
    assert_eq!(run.lease_owner, None, "Release must clear the lease owner");
    assert_eq!(
        run.lease_expires_at, None,
        "Release must clear the lease expiry"
    );
    assert!(!run.is_leased_at(at(t, 5)), "a released run is not leased");
    assert_eq!(run.wake_at, at(t, 30_000), "Release must set wake_at");
    assert_eq!(
        run.last_error.as_deref(),
        Some("database unavailable"),
        "Release must set last_error"
    );
    assert_eq!(
        run.state,
        RunState::Incomplete,
        "Release must leave the run incomplete"
    );
    assert_eq!(
        (run.epoch, run.executions),
        (1, 1),
        "Release must not change epoch or executions"
    );
    assert_eq!(
        run.updated_at,
        at(t, 5),
        "Release must set updated_at to its `at`"
    );
    // A lease given back writes no more, though no other worker took the run.
    let late = journal
        .write(
            &lease1,
            step_completed("late#0", 0, b"late".to_vec(), at(t, 6)),
        )
        .await;
    expect_lease_lost(late, &lease1, "a write under a lease that was given back");
    let renewed = journal.renew(&lease1, at(t, 90_000)).await;
    expect_lease_lost(renewed, &lease1, "renewing a lease that was given back");

    // open_run is an explicit request for the run: wake_at only paces claim_due.
    let (snapshot, lease2) =
        open_leased(journal, new_run(&key, b"input"), at(t, 10), at(t, 60_000)).await;
    assert_eq!(
        lease2.epoch, 2,
        "re-opening a released run must lease it at the next epoch"
    );
    assert_eq!(
        snapshot.run.executions, 2,
        "re-opening a released run must count an execution"
    );
    assert_eq!(
        snapshot.run.last_error.as_deref(),
        Some("database unavailable"),
        "the last error must stay visible until the next Release"
    );

    let release = Write::Release {
        last_error: None,
        wake_at: at(t, 20),
        at: at(t, 20),
        failures: 0,
        wake_on_message: None,
    };
    journal
        .write(&lease2, release)
        .await
        .unwrap_or_else(|e| panic!("releasing a run failed: {e}"));
    let run = load(journal, &key).await.run;
    assert_eq!(
        run.last_error, None,
        "Release with last_error None must clear the last error"
    );
    assert_eq!(run.wake_at, at(t, 20), "Release must set wake_at");
}

/// `Pin` gives an [`UNPINNED`] run the executing code's fingerprint, fenced
/// like every write; a run already pinned keeps its fingerprint.
pub async fn pin_fixes_an_unpinned_fingerprint(journal: &dyn Journal) {
    let key = unique("pin");
    let t = Timestamp::now();
    let unpinned = NewRun {
        fingerprint: UNPINNED,
        ..new_run(&key, b"input")
    };
    let (snapshot, lease) = open_leased(journal, unpinned, t, at(t, 60_000)).await;
    assert_eq!(
        snapshot.run.fingerprint, UNPINNED,
        "open_run must store the fingerprint as given, UNPINNED too"
    );
    let pin = |fingerprint| Write::Pin {
        fingerprint,
        at: at(t, 5),
    };
    journal
        .write(&lease, pin(7))
        .await
        .unwrap_or_else(|e| panic!("pinning an unpinned run failed: {e}"));
    let run = load(journal, &key).await.run;
    assert_eq!(run.fingerprint, 7, "Pin must set an unpinned fingerprint");
    journal
        .write(&lease, pin(8))
        .await
        .unwrap_or_else(|e| panic!("pinning a pinned run failed: {e}"));
    let run = load(journal, &key).await.run;
    assert_eq!(
        run.fingerprint, 7,
        "Pin must not change a pinned fingerprint"
    );
    let stale = Lease {
        epoch: lease.epoch + 1,
        ..lease.clone()
    };
    expect_lease_lost(
        journal.write(&stale, pin(9)).await,
        &stale,
        "a Pin under a stale epoch",
    );
    finish(journal, &lease, at(t, 10), &key).await;
}

/// A journal whose [`Journal::subscribe`] returns a subscription announces a
/// committed `Release` as [`JournalEvent::Due`] at its `wake_at`, and a
/// committed `RunFinished` as [`JournalEvent::Finished`] with the run key,
/// within a few seconds (other events may come in between). A journal that
/// returns `None` passes.
pub async fn events_announce_due_and_finished_runs(journal: &dyn Journal) {
    let Some(mut events) = journal.subscribe() else {
        return;
    };
    let key = unique("events");
    let t = Timestamp::now();
    let (_, lease1) = open_leased(journal, new_run(&key, b"input"), t, at(t, 60_000)).await;
    let wake_at = at(t, 12_345);
    let release = Write::Release {
        last_error: None,
        wake_at,
        at: at(t, 1),
        failures: 0,
        wake_on_message: None,
    };
    journal
        .write(&lease1, release)
        .await
        .unwrap_or_else(|e| panic!("releasing a run failed: {e}"));
    let due = JournalEvent::Due { at: wake_at };
    expect_event(&mut events, &due, "a committed Release").await;
    let (_, lease2) = open_leased(journal, new_run(&key, b"input"), at(t, 2), at(t, 60_000)).await;
    finish(journal, &lease2, at(t, 3), &key).await;
    let finished = JournalEvent::Finished { key: key.clone() };
    expect_event(&mut events, &finished, "a committed RunFinished").await;
}

async fn expect_event(events: &mut Subscription, expected: &JournalEvent, after: &str) {
    let wait = async {
        while let Some(event) = events.next().await {
            if &event == expected {
                return true;
            }
        }
        false
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), wait).await {
        Ok(true) => {}
        Ok(false) => panic!("the subscription ended before {after} was announced as {expected:?}"),
        Err(_) => panic!("{after} was not announced as {expected:?} within 10 s"),
    }
}

/// `renew` extends the lease to `until` (so the run is not taken over before
/// then) and returns the lease with that expiry; a lease whose epoch is no
/// longer current, or whose run finished, is refused with
/// [`Error::LeaseLost`].
pub async fn renew_extends_lease(journal: &dyn Journal) {
    let key = unique("renew");
    let t = Timestamp::now();
    let (_, lease1) = open_leased(journal, new_run(&key, b"input"), t, at(t, 1_000)).await;
    let renewed = journal
        .renew(&lease1, at(t, 5_000))
        .await
        .unwrap_or_else(|e| panic!("renewing a live lease failed: {e}"));
    assert_eq!(
        renewed,
        Lease {
            expires_at: at(t, 5_000),
            ..lease1.clone()
        },
        "renew must return the same lease with the new expiry"
    );
    let run = load(journal, &key).await.run;
    assert_eq!(
        run.lease_expires_at,
        Some(at(t, 5_000)),
        "renew must store the new expiry"
    );
    assert_eq!(
        run.lease_owner.as_deref(),
        Some(OWNER),
        "renew must keep the owner"
    );
    assert_eq!(run.epoch, 1, "renew must not change the epoch");

    let opened = journal
        .open_run(
            new_run(&key, b"input"),
            request(OTHER, at(t, 2_000), at(t, 9_000)),
        )
        .await
        .unwrap_or_else(|e| panic!("re-opening a run failed: {e}"));
    assert!(
        opened.lease.is_none(),
        "a renewed lease must not be taken over before its new expiry"
    );

    let (_, lease2) =
        open_leased(journal, new_run(&key, b"input"), at(t, 5_000), at(t, 9_000)).await;
    assert_eq!(
        lease2.epoch, 2,
        "an expired renewed lease is taken over at the next epoch"
    );
    expect_lease_lost(
        journal.renew(&renewed, at(t, 20_000)).await,
        &renewed,
        "renew of a taken-over lease",
    );
    let run = load(journal, &key).await.run;
    assert_eq!(
        run.lease_expires_at,
        Some(at(t, 9_000)),
        "a refused renew must not change the lease"
    );

    journal
        .write(&lease2, finished(at(t, 6_000)))
        .await
        .unwrap_or_else(|e| panic!("finishing a run failed: {e}"));
    expect_lease_lost(
        journal.renew(&lease2, at(t, 20_000)).await,
        &lease2,
        "renew of a finished run",
    );
}

/// `load_run` returns `None` for an unknown key, and otherwise the run and its
/// steps with every field intact: the seq and epoch each step was written
/// with, and input, outputs and outcome byte for byte, including empty and
/// 1 MiB ones. `open_run` returns the same steps when it re-leases the run.
pub async fn load_run_round_trips(journal: &dyn Journal) {
    let missing = unique("missing");
    let found = journal
        .load_run(&missing)
        .await
        .expect("load_run of an unknown key failed");
    assert!(
        found.is_none(),
        "load_run of an unknown key must return None"
    );

    let key = unique("roundtrip");
    let t = Timestamp::now();
    let input: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    let new = NewRun {
        key: key.clone(),
        workflow: unique("wf-roundtrip"),
        fingerprint: u64::MAX,
        input: input.clone(),
        deadline: None,
    };
    let (_, lease1) = open_leased(journal, new.clone(), t, at(t, 1_000)).await;
    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let first_epoch = [
        ("empty#0", 0, Vec::new()),
        ("big#0", 1, big.clone()),
        ("zeros#0", u64::from(u32::MAX) + 5, vec![0; 17]),
    ];
    for (step_id, seq, output) in first_epoch.clone() {
        journal
            .write(&lease1, step_completed(step_id, seq, output, at(t, 10)))
            .await
            .unwrap_or_else(|e| panic!("recording step {step_id} failed: {e}"));
    }

    let (snapshot, lease2) = open_leased(journal, new, at(t, 1_000), at(t, 60_000)).await;
    for (step_id, seq, output) in &first_epoch {
        let step = find_step(&snapshot.steps, step_id).unwrap_or_else(|| {
            panic!("open_run must return step {step_id} when it re-leases the run")
        });
        assert_eq!(
            step.output.as_ref(),
            Some(output),
            "open_run must return step {step_id}'s output intact"
        );
        assert_eq!(
            step.seq,
            Some(*seq),
            "open_run must return step {step_id}'s seq"
        );
    }
    journal
        .write(
            &lease2,
            step_completed("later#0", 3, b"later".to_vec(), at(t, 1_010)),
        )
        .await
        .unwrap_or_else(|e| panic!("recording a step failed: {e}"));
    journal
        .write(&lease2, step_failed("flaky#0", 1, "flaked", at(t, 1_020)))
        .await
        .unwrap_or_else(|e| panic!("recording a step failure failed: {e}"));
    let outcome = big.iter().rev().copied().collect::<Vec<u8>>();
    let finish = Write::RunFinished {
        state: RunState::Completed,
        outcome: outcome.clone(),
        at: at(t, 1_030),
    };
    journal
        .write(&lease2, finish)
        .await
        .unwrap_or_else(|e| panic!("finishing with a 1 MiB outcome failed: {e}"));

    let loaded = load(journal, &key).await;
    assert_eq!(
        loaded.run.input, input,
        "load_run must return the input byte for byte"
    );
    assert_eq!(
        loaded.run.fingerprint,
        u64::MAX,
        "load_run must return every bit of the fingerprint"
    );
    assert_eq!(
        loaded.run.outcome.as_ref(),
        Some(&outcome),
        "load_run must return a 1 MiB outcome intact"
    );
    assert_eq!(
        loaded.steps.len(),
        5,
        "load_run must return every step of the run"
    );
    for (step_id, seq, output) in first_epoch {
        let expected = StepRecord {
            step_id: step_id.into(),
            seq: Some(seq),
            state: StepState::Completed,
            output: Some(output),
            attempts: 1,
            last_error: None,
            retry_at: None,
            epoch: 1,
            started_at: at(t, 10),
            updated_at: at(t, 10),
        };
        let step = find_step(&loaded.steps, step_id)
            .unwrap_or_else(|| panic!("load_run lost step {step_id}"));
        assert_eq!(
            step, &expected,
            "load_run must return step {step_id} as written under epoch 1"
        );
    }
    let later = find_step(&loaded.steps, "later#0").expect("load_run lost step later#0");
    assert_eq!(
        (later.seq, later.epoch),
        (Some(3), 2),
        "a step written under epoch 2 must carry epoch 2"
    );
    let flaky = find_step(&loaded.steps, "flaky#0").expect("load_run lost step flaky#0");
    assert_eq!(
        (flaky.state, flaky.epoch, flaky.output.as_ref()),
        (StepState::Retrying, 2, None),
        "a failed step must be retrying, without output, at the epoch it was written under"
    );
}

/// `list_runs` returns the runs matching the filter's state and workflow,
/// oldest first, at most `limit` of them, each as `load_run` returns it.
pub async fn list_runs_filters(journal: &dyn Journal) {
    let wf_a = unique("wf-list-a");
    let wf_b = unique("wf-list-b");
    let t = Timestamp::now();
    let mut keys = HashMap::new();
    for (i, (name, workflow)) in [
        ("a1", &wf_a),
        ("b1", &wf_b),
        ("a2", &wf_a),
        ("a3", &wf_a),
        ("b2", &wf_b),
    ]
    .into_iter()
    .enumerate()
    {
        let key = unique(&format!("list-{name}"));
        let new = NewRun {
            key: key.clone(),
            workflow: workflow.clone(),
            fingerprint: 1,
            input: name.as_bytes().to_vec(),
            deadline: None,
        };
        let now = at(t, i as i64);
        let (_, lease) = open_leased(journal, new, now, at(now, 60_000)).await;
        let state = match name {
            "a2" => Some(RunState::Completed),
            "b2" => Some(RunState::Failed),
            _ => None,
        };
        if let Some(state) = state {
            let write = Write::RunFinished {
                state,
                outcome: Vec::new(),
                at: at(now, 100),
            };
            journal
                .write(&lease, write)
                .await
                .unwrap_or_else(|e| panic!("finishing a run failed: {e}"));
        }
        keys.insert(name, key);
    }
    let names = |runs: &[RunRecord]| -> Vec<&'static str> {
        runs.iter()
            .map(|r| {
                keys.iter()
                    .find(|(_, k)| **k == r.key)
                    .map(|(n, _)| *n)
                    .unwrap_or("<a run of another test>")
            })
            .collect()
    };
    let list = |state: Option<RunState>, workflow: Option<&String>, limit: Option<usize>| {
        let filter = RunFilter {
            state,
            workflow: workflow.cloned(),
            limit,
            ..RunFilter::default()
        };
        async move {
            journal
                .list_runs(&filter)
                .await
                .unwrap_or_else(|e| panic!("list_runs({filter:?}) failed: {e}"))
        }
    };

    let all_a = list(None, Some(&wf_a), None).await;
    assert_eq!(
        names(&all_a),
        ["a1", "a2", "a3"],
        "list_runs by workflow must return its runs, oldest first"
    );
    for run in &all_a {
        assert_eq!(
            run,
            &load(journal, &run.key).await.run,
            "list_runs must return runs as load_run does"
        );
    }
    let cases = [
        (Some(RunState::Incomplete), &wf_a, None, &["a1", "a3"][..]),
        (Some(RunState::Completed), &wf_a, None, &["a2"]),
        (Some(RunState::Failed), &wf_a, None, &[]),
        (Some(RunState::Failed), &wf_b, None, &["b2"]),
        (None, &wf_a, Some(2), &["a1", "a2"]),
        (None, &wf_b, Some(0), &[]),
    ];
    for (state, workflow, limit, expected) in cases {
        let runs = list(state, Some(workflow), limit).await;
        assert_eq!(
            names(&runs),
            expected,
            "list_runs(state {state:?}, limit {limit:?}) returned the wrong runs"
        );
    }
    for (owner, expected) in [(OWNER, &["a1", "a3"][..]), (OTHER, &[])] {
        let filter = RunFilter {
            workflow: Some(wf_a.clone()),
            lease_owner: Some(owner.to_owned()),
            ..RunFilter::default()
        };
        let runs = journal
            .list_runs(&filter)
            .await
            .unwrap_or_else(|e| panic!("list_runs({filter:?}) failed: {e}"));
        assert_eq!(
            names(&runs),
            expected,
            "list_runs by lease owner {owner} must return the runs leased to it"
        );
    }
    let unknown = unique("wf-list-none");
    assert!(
        list(None, Some(&unknown), None).await.is_empty(),
        "list_runs of an unknown workflow must be empty"
    );

    let failed = list(Some(RunState::Failed), None, None).await;
    assert!(
        failed.iter().all(|r| r.state == RunState::Failed),
        "list_runs by state must return only that state"
    );
    assert!(
        names(&failed).contains(&"b2"),
        "list_runs by state must return every run in that state"
    );
    let everything = list(None, None, None).await;
    let ours: Vec<&str> = names(&everything)
        .into_iter()
        .filter(|n| keys.contains_key(n))
        .collect();
    assert_eq!(
        ours,
        ["a1", "b1", "a2", "a3", "b2"],
        "list_runs without a filter must return all runs, oldest first"
    );
    assert_eq!(
        list(None, None, Some(1)).await.len(),
        1,
        "list_runs must respect its limit"
    );
}

/// `claim_due` leases exactly the incomplete runs whose lease is free or
/// expired and whose `wake_at` is at or before `now`, earliest `wake_at`
/// first, with epoch and executions raised, and returns them with their
/// steps. Runs it leased are not claimed again while the lease lives.
pub async fn claim_due_selects_due_runs(journal: &dyn Journal) {
    let base = claim_base();
    let now = at(base, 100);
    let mut keys = HashMap::new();
    // Released runs with chosen wake times, created out of wake order.
    for (name, wake) in [
        ("late", 30),
        ("not-yet", 101),
        ("early", 20),
        ("boundary", 100),
    ] {
        let key = unique(&format!("due-{name}"));
        let (_, lease) = open_leased(journal, new_run(&key, b"input"), base, at(base, 1)).await;
        if name == "early" {
            journal
                .write(
                    &lease,
                    step_completed("first#0", 0, b"kept".to_vec(), at(base, 1)),
                )
                .await
                .unwrap_or_else(|e| panic!("recording a step failed: {e}"));
        }
        journal
            .write(&lease, release(at(base, wake), at(base, 1)))
            .await
            .unwrap_or_else(|e| panic!("releasing a run failed: {e}"));
        keys.insert(name, key);
    }
    // A worker died holding this one: its lease expired, it was never released.
    let crashed = unique("due-crashed");
    open_leased(
        journal,
        new_run(&crashed, b"input"),
        at(base, 10),
        at(base, 40),
    )
    .await;
    keys.insert("crashed", crashed);
    // Leased by a live worker at `now`.
    let busy = unique("due-busy");
    open_leased(journal, new_run(&busy, b"input"), base, at(base, 1_000)).await;
    keys.insert("busy", busy);
    // Finished: never claimed.
    let done = unique("due-done");
    let (_, lease) = open_leased(journal, new_run(&done, b"input"), base, at(base, 1_000)).await;
    journal
        .write(&lease, finished(at(base, 2)))
        .await
        .unwrap_or_else(|e| panic!("finishing a run failed: {e}"));
    keys.insert("done", done);

    let until = at(base, 200);
    let claimed = claim(journal, now, until, 100).await;
    let name_of = |key: &str| -> &'static str {
        keys.iter()
            .find(|(_, k)| k.as_str() == key)
            .map(|(n, _)| *n)
            .unwrap_or_else(|| panic!("{}", foreign_run(key)))
    };
    let claimed_names: HashSet<&str> = claimed.iter().map(|(s, _)| name_of(&s.run.key)).collect();
    let expected: HashSet<&str> = ["early", "late", "boundary", "crashed"].into();
    assert_eq!(
        claimed_names, expected,
        "claim_due must claim exactly the incomplete, unleased or expired runs with wake_at <= now"
    );
    assert_eq!(claimed.len(), 4, "claim_due must not return a run twice");
    let wakes: Vec<Timestamp> = claimed.iter().map(|(s, _)| s.run.wake_at).collect();
    assert!(
        wakes.is_sorted(),
        "claim_due must return runs earliest wake_at first, got {wakes:?}"
    );
    let order: Vec<&str> = claimed
        .iter()
        .map(|(s, _)| name_of(&s.run.key))
        .filter(|n| *n != "crashed")
        .collect();
    assert_eq!(
        order,
        ["early", "late", "boundary"],
        "claim_due must return runs earliest wake_at first"
    );
    for (snapshot, lease) in &claimed {
        let run = &snapshot.run;
        let expected = Lease {
            run_key: run.key.clone(),
            owner: OWNER.to_owned(),
            epoch: 2,
            expires_at: until,
        };
        assert_eq!(
            lease, &expected,
            "claim_due must lease each run at its next epoch"
        );
        assert_eq!(
            (run.epoch, run.executions),
            (2, 2),
            "claim_due must raise epoch and executions"
        );
        assert_eq!(
            run.lease_owner.as_deref(),
            Some(OWNER),
            "claim_due must record the lease owner"
        );
        assert_eq!(
            run.lease_expires_at,
            Some(until),
            "claim_due must record the lease expiry"
        );
        assert_eq!(
            load(journal, &run.key).await.run,
            *run,
            "claim_due's snapshot must be the stored run"
        );
    }
    let early = &claimed
        .iter()
        .find(|(s, _)| name_of(&s.run.key) == "early")
        .expect("early claimed")
        .0;
    let step = find_step(&early.steps, "first#0").expect("claim_due must return the run's steps");
    assert_eq!(
        step.output.as_deref(),
        Some(&b"kept"[..]),
        "claim_due must return step outputs intact"
    );

    let again = claim(journal, now, until, 100).await;
    if let Some((s, _)) = again.first() {
        let name = name_of(&s.run.key);
        panic!("claim_due claimed run '{name}' again while the lease it granted is live");
    }

    for (snapshot, lease) in &claimed {
        finish(journal, lease, at(base, 150), &snapshot.run.key).await;
    }
    retire(journal, &keys["not-yet"], at(base, 150)).await;
    retire(journal, &keys["busy"], at(base, 1_000)).await;
}

/// `claim_due` returns at most `limit` runs (none for 0), taking the earliest
/// `wake_at` first, whatever order the runs were created in.
pub async fn claim_due_respects_limit(journal: &dyn Journal) {
    let base = claim_base();
    let mut by_wake = HashMap::new();
    for wake in [3, 1, 5, 2, 4] {
        let key = unique(&format!("limit-{wake}"));
        let (_, lease) = open_leased(journal, new_run(&key, b"input"), base, at(base, 1)).await;
        journal
            .write(&lease, release(at(base, wake), at(base, 1)))
            .await
            .unwrap_or_else(|e| panic!("releasing a run failed: {e}"));
        by_wake.insert(key, wake);
    }
    let now = at(base, 10);
    let until = at(base, 1_000);
    let wakes = |claimed: &[(RunSnapshot, Lease)]| -> Vec<i64> {
        claimed
            .iter()
            .map(|(s, _)| {
                *by_wake
                    .get(&s.run.key)
                    .unwrap_or_else(|| panic!("{}", foreign_run(&s.run.key)))
            })
            .collect()
    };
    let mut leases = Vec::new();
    for (limit, expected) in [
        (0, &[][..]),
        (2, &[1, 2][..]),
        (10, &[3, 4, 5][..]),
        (10, &[][..]),
    ] {
        let claimed = claim(journal, now, until, limit).await;
        assert_eq!(
            wakes(&claimed),
            expected,
            "claim_due(limit {limit}) must claim at most {limit} runs, earliest wake_at first"
        );
        leases.extend(claimed.into_iter().map(|(_, lease)| lease));
    }
    for lease in &leases {
        finish(journal, lease, at(base, 20), &lease.run_key).await;
    }
}

/// A claim asked for some workflows takes only their due runs, and leaves
/// the others due for the workers that have their code; asked for none, it
/// takes nothing.
pub async fn claim_due_takes_only_the_workflows_asked_for(journal: &dyn Journal) {
    let base = claim_base();
    let (mine, theirs) = (unique("claim-mine"), unique("claim-theirs"));
    let mut keys = HashMap::new();
    for workflow in [&mine, &theirs] {
        let key = unique("claim-of");
        let new = NewRun {
            workflow: workflow.clone(),
            ..new_run(&key, b"input")
        };
        let (_, lease) = open_leased(journal, new, base, at(base, 1)).await;
        journal
            .write(&lease, release(at(base, 2), at(base, 1)))
            .await
            .unwrap_or_else(|e| panic!("releasing a run failed: {e}"));
        keys.insert(workflow.clone(), key);
    }
    let (now, until) = (at(base, 10), at(base, 1_000));
    let claim_of = |workflows: Vec<String>| {
        let req = request(OWNER, now, until).of_workflows(workflows);
        journal.claim_due(req, 10)
    };
    let none = claim_of(Vec::new()).await.unwrap();
    assert!(none.is_empty(), "a claim for no workflow must take nothing");
    let claimed = claim_of(vec![mine.clone()]).await.unwrap();
    let taken: Vec<&str> = claimed.iter().map(|(s, _)| s.run.key.as_str()).collect();
    assert_eq!(
        taken,
        [keys[&mine].as_str()],
        "a claim must take only runs of the workflows it asks for"
    );
    let claimed_theirs = claim_of(vec![theirs.clone(), unique("claim-absent")])
        .await
        .unwrap();
    let taken: Vec<&str> = claimed_theirs
        .iter()
        .map(|(s, _)| s.run.key.as_str())
        .collect();
    assert_eq!(
        taken,
        [keys[&theirs].as_str()],
        "the other workflow's run was left due"
    );
    for (snapshot, lease) in claimed.iter().chain(&claimed_theirs) {
        finish(journal, lease, at(base, 20), &snapshot.run.key).await;
    }
}

/// Eight tasks claiming concurrently from 50 due runs, a few at a time, never
/// get the same run twice, and together claim all 50.
pub async fn claim_due_is_exclusive(journal: Arc<dyn Journal>) {
    const RUNS: usize = 50;
    const WORKERS: usize = 8;
    let base = claim_base();
    let mut ours = HashSet::new();
    for i in 0..RUNS {
        let key = unique(&format!("exclusive-{i}"));
        let (_, lease) =
            open_leased(journal.as_ref(), new_run(&key, b"input"), base, at(base, 1)).await;
        journal
            .write(&lease, release(at(base, 1 + i as i64), at(base, 1)))
            .await
            .unwrap_or_else(|e| panic!("releasing a run failed: {e}"));
        ours.insert(key);
    }
    let now = at(base, 100);
    let until = at(base, 10_000);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let journal = journal.clone();
        tasks.spawn(async move {
            let owner = format!("claimer-{w}");
            let mut mine = Vec::new();
            loop {
                let lease = request(&owner, now, until);
                let claimed = journal.claim_due(lease, 3).await?;
                if claimed.is_empty() {
                    return Ok::<_, Error>(mine);
                }
                mine.extend(claimed.into_iter().map(|(_, lease)| lease));
                tokio::task::yield_now().await;
            }
        });
    }
    let mut leases: Vec<Lease> = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let result = result.unwrap_or_else(|e| panic!("a claiming task panicked: {e}"));
        leases.extend(result.unwrap_or_else(|e| panic!("concurrent claim_due failed: {e}")));
    }
    let mut seen = HashSet::new();
    for lease in &leases {
        assert!(
            ours.contains(&lease.run_key),
            "{}",
            foreign_run(&lease.run_key)
        );
        assert!(
            seen.insert(lease.run_key.clone()),
            "concurrent claim_due calls handed out run '{}' twice",
            lease.run_key
        );
        assert_eq!(lease.epoch, 2, "each run must be leased once, at epoch 2");
    }
    assert_eq!(
        seen.len(),
        RUNS,
        "concurrent claimers together must claim every due run"
    );
    for lease in &leases {
        finish(journal.as_ref(), lease, at(base, 200), &lease.run_key).await;
    }
}

// ---- helpers ----

/// A run key or workflow name no other test (or earlier call) uses.
fn unique(label: &str) -> String {
    format!("conformance-{label}-{:016x}", fastrand::u64(..))
}

/// A random start for a claim test's timestamps, well inside the claim window.
fn claim_base() -> Timestamp {
    Timestamp(fastrand::i64(1_000_000..CLAIM_WINDOW_END - 1_000_000_000))
}

fn at(t: Timestamp, ms: i64) -> Timestamp {
    Timestamp(t.0 + ms)
}

fn request(owner: &str, now: Timestamp, until: Timestamp) -> LeaseRequest {
    LeaseRequest {
        owner: owner.to_owned(),
        now,
        until,
        workflows: None,
    }
}

fn new_run(key: &str, input: &[u8]) -> NewRun {
    NewRun {
        key: key.to_owned(),
        workflow: "conformance-workflow".to_owned(),
        fingerprint: 42,
        input: input.to_vec(),
        deadline: None,
    }
}

fn step_completed(step_id: &str, seq: u64, output: Vec<u8>, when: Timestamp) -> Write {
    Write::StepRecorded {
        step_id: step_id.to_owned(),
        seq,
        state: StepState::Completed,
        output,
        error: None,
        attempts: 1,
        started_at: when,
        at: when,
    }
}

fn step_failed(step_id: &str, attempts: u32, error: &str, when: Timestamp) -> Write {
    Write::AttemptFailed {
        step_id: step_id.to_owned(),
        attempts,
        error: error.to_owned(),
        retry_at: Some(at(when, 1_000)),
        started_at: when,
        at: when,
    }
}

fn release(wake_at: Timestamp, when: Timestamp) -> Write {
    Write::Release {
        last_error: None,
        wake_at,
        at: when,
        failures: 0,
        wake_on_message: None,
    }
}

fn finished(when: Timestamp) -> Write {
    Write::RunFinished {
        state: RunState::Completed,
        outcome: b"done".to_vec(),
        at: when,
    }
}

fn find_step<'a>(steps: &'a [StepRecord], step_id: &str) -> Option<&'a StepRecord> {
    steps.iter().find(|s| s.step_id == step_id)
}

fn foreign_run(key: &str) -> String {
    format!(
        "claim_due returned run '{key}', which this test did not create; the claim tests need a journal \
         with no other run due before 2001-09-09 and no other claim test running at the same time"
    )
}

/// Opens `new` and insists on getting the lease.
async fn open_leased(
    journal: &dyn Journal,
    new: NewRun,
    now: Timestamp,
    until: Timestamp,
) -> (RunSnapshot, Lease) {
    let key = new.key.clone();
    let opened = journal
        .open_run(new, request(OWNER, now, until))
        .await
        .unwrap_or_else(|e| panic!("open_run of '{key}' failed: {e}"));
    match opened.lease {
        Some(lease) => (opened.snapshot, lease),
        None => panic!(
            "open_run must lease run '{key}' (incomplete, lease free or expired at {now:?}), got {:?}",
            opened.snapshot.run
        ),
    }
}

async fn load(journal: &dyn Journal, key: &str) -> RunSnapshot {
    journal
        .load_run(key)
        .await
        .unwrap_or_else(|e| panic!("load_run of '{key}' failed: {e}"))
        .unwrap_or_else(|| panic!("load_run of '{key}' returned None for a run that exists"))
}

async fn claim(
    journal: &dyn Journal,
    now: Timestamp,
    until: Timestamp,
    limit: usize,
) -> Vec<(RunSnapshot, Lease)> {
    journal
        .claim_due(request(OWNER, now, until), limit)
        .await
        .unwrap_or_else(|e| panic!("claim_due failed: {e}"))
}

async fn finish(journal: &dyn Journal, lease: &Lease, when: Timestamp, key: &str) {
    journal
        .write(lease, finished(when))
        .await
        .unwrap_or_else(|e| panic!("finishing run '{key}' failed: {e}"));
}

/// Finishes a run this test left unleased (or leased until before `when`),
/// so that later claim tests do not find it due.
async fn retire(journal: &dyn Journal, key: &str, when: Timestamp) {
    let (_, lease) = open_leased(journal, new_run(key, b"input"), when, at(when, 1)).await;
    finish(journal, &lease, when, key).await;
}

fn expect_lease_lost<T: Debug>(result: Result<T>, lease: &Lease, what: &str) {
    match result {
        Err(Error::LeaseLost { run, epoch }) if run == lease.run_key && epoch == lease.epoch => {}
        other => panic!(
            "{what} must fail with Error::LeaseLost {{ run: {:?}, epoch: {} }}, got {other:?}",
            lease.run_key, lease.epoch
        ),
    }
}

fn expect_already_recorded<T: Debug>(result: Result<T>, key: &str, step_id: &str, what: &str) {
    match result {
        Err(Error::StepAlreadyRecorded { run, step }) if run == key && step == step_id => {}
        other => panic!(
            "{what} must fail with Error::StepAlreadyRecorded {{ run: {key:?}, step: {step_id:?} }}, got {other:?}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::MemoryJournal;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_journal_conforms() {
        super::run_all(Arc::new(MemoryJournal::new())).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn memory_journal_conforms_on_one_thread() {
        super::run_all(Arc::new(MemoryJournal::new())).await;
    }
}
