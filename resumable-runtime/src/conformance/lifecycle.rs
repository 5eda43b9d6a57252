//! The run lifecycle's part of the contract: runs created without a lease,
//! cancels, resumes, retries now, dead letters, forks, purges, leases given
//! back together, failure counts, deadlines and paging.

use super::{
    OWNER, at, expect_lease_lost, finished, load, new_run, open_leased, release, request,
    step_completed, unique,
};
use crate::error::Error;
use crate::journal::{
    Command, Journal, JournalEvent, Lease, NewMessage, NewRun, Receive, RunFilter, RunRecord,
    RunState, StepState, Timestamp, Write,
};

/// `create_run` records a new run due at `now` without leasing it (no
/// execution, epoch 0) and announces it due; on an existing key it changes
/// nothing and says it created nothing. The deadline is stored.
pub async fn create_run_does_not_lease(journal: &dyn Journal) {
    let key = unique("create");
    let t = Timestamp::now();
    let mut events = journal.subscribe();
    let new = NewRun {
        deadline: Some(at(t, 60_000)),
        ..new_run(&key, b"input")
    };
    let (run, created) = journal
        .create_run(new.clone(), t)
        .await
        .unwrap_or_else(|e| panic!("create_run failed: {e}"));
    assert!(created, "create_run on a new key must create it");
    assert_eq!(
        (
            run.state,
            run.epoch,
            run.executions,
            run.lease_owner.as_deref()
        ),
        (RunState::Incomplete, 0, 0, None),
        "create_run must not lease the run nor count an execution"
    );
    assert_eq!(run.wake_at, t, "a created run is due at once");
    assert_eq!(
        run.deadline,
        Some(at(t, 60_000)),
        "the deadline must be stored"
    );
    if let Some(events) = &mut events {
        super::expect_event(events, &JournalEvent::Due { at: t }, "create_run").await;
    }
    let other = NewRun {
        input: b"other".to_vec(),
        ..new
    };
    let (again, created) = journal.create_run(other, at(t, 5)).await.unwrap();
    assert!(!created, "create_run on an existing key must not create");
    assert_eq!(again.input, b"input", "create_run must never change a run");
    let (_, lease) = open_leased(journal, new_run(&key, b"input"), at(t, 10), at(t, 60_000)).await;
    assert_eq!(
        lease.epoch, 1,
        "the first lease of a created run is epoch 1"
    );
    assert_eq!(load(journal, &key).await.run.executions, 1);
}

/// `Command::Cancel`: a run no live worker holds is finished as cancelled
/// at once with its epoch raised (a worker whose lease expired cannot write);
/// a run a live worker holds gets a request that every later write of that
/// worker acknowledges, steps still recorded, and its outcome, its release
/// or its dead-lettering becomes cancelled; a finished run is left alone.
pub async fn cancel_stops_runs_durably(journal: &dyn Journal) {
    let t = Timestamp::now();
    assert!(
        journal
            .command(&unique("nobody"), Command::Cancel, t)
            .await
            .unwrap()
            .is_none(),
        "a command on an unknown key must return None"
    );

    // Not held: cancelled at once.
    let idle = unique("cancel-idle");
    journal.create_run(new_run(&idle, b"i"), t).await.unwrap();
    let run = command(journal, &idle, Command::Cancel, at(t, 1)).await;
    assert_eq!(
        run.state,
        RunState::Cancelled,
        "an unheld run is cancelled at once"
    );
    assert_eq!(run.updated_at, at(t, 1));
    assert_eq!(run.cancel_requested_at, Some(at(t, 1)));
    let opened = journal
        .open_run(
            new_run(&idle, b"i"),
            request(OWNER, at(t, 2), at(t, 60_000)),
        )
        .await
        .unwrap();
    assert!(opened.lease.is_none(), "a cancelled run is never leased");

    // Held by a worker whose lease expired: cancelled now, and fenced.
    let expired = unique("cancel-expired");
    let (_, stale) = open_leased(journal, new_run(&expired, b"i"), t, at(t, 10)).await;
    let run = command(journal, &expired, Command::Cancel, at(t, 20)).await;
    assert_eq!(run.state, RunState::Cancelled);
    let late = journal
        .write(&stale, step_completed("late#0", 0, vec![1], at(t, 21)))
        .await;
    expect_lease_lost(
        late,
        &stale,
        "a write under an expired lease of a cancelled run",
    );

    // Held by a live worker: a request, acknowledged by its writes.
    let live = unique("cancel-live");
    let (_, lease) = open_leased(journal, new_run(&live, b"i"), t, at(t, 60_000)).await;
    let ack = journal
        .write(&lease, step_completed("a#0", 0, vec![1], at(t, 1)))
        .await
        .unwrap();
    assert!(!ack.cancel_requested, "no cancel requested yet");
    let run = command(journal, &live, Command::Cancel, at(t, 2)).await;
    assert_eq!(
        (run.state, run.cancel_requested_at),
        (RunState::Incomplete, Some(at(t, 2))),
        "a run held by a live worker gets a cancel request"
    );
    assert_eq!(
        run.lease_owner.as_deref(),
        Some(OWNER),
        "the worker keeps its lease"
    );
    let ack = journal
        .write(&lease, step_completed("b#0", 1, vec![2], at(t, 3)))
        .await
        .unwrap_or_else(|e| panic!("a step finished after a cancel request must be recorded: {e}"));
    assert!(
        ack.cancel_requested,
        "a step write must acknowledge the cancel request"
    );
    let ack = journal
        .write(&lease, super::step_failed("c#0", 1, "boom", at(t, 4)))
        .await
        .unwrap();
    assert!(
        ack.cancel_requested,
        "a failed attempt must acknowledge the cancel request"
    );
    let steps = load(journal, &live).await.steps;
    assert!(
        steps
            .iter()
            .any(|s| s.step_id == "b#0" && s.state == StepState::Completed),
        "the step must be recorded"
    );
    // Its outcome, recorded after the cancel, is the cancel.
    let ack = journal.write(&lease, finished(at(t, 5))).await.unwrap();
    assert!(
        ack.cancel_requested,
        "RunFinished must acknowledge the cancel request"
    );
    let run = load(journal, &live).await.run;
    assert_eq!(
        (run.state, run.lease_owner.as_deref()),
        (RunState::Cancelled, None),
        "a run finished after a cancel request is cancelled instead"
    );
    // Finished: a cancel changes nothing.
    let again = command(journal, &live, Command::Cancel, at(t, 6)).await;
    assert_eq!(
        (again.state, again.updated_at),
        (RunState::Cancelled, at(t, 5))
    );

    // A release or a dead letter after a cancel request cancels too.
    for (label, write) in [
        ("release", release(at(t, 50), at(t, 9))),
        (
            "dead-letter",
            Write::DeadLetter {
                last_error: "poison".into(),
                failures: 1,
                at: at(t, 9),
            },
        ),
    ] {
        let key = unique(&format!("cancel-{label}"));
        let (_, lease) = open_leased(journal, new_run(&key, b"i"), t, at(t, 60_000)).await;
        command(journal, &key, Command::Cancel, at(t, 8)).await;
        let ack = journal.write(&lease, write).await.unwrap();
        assert!(
            ack.cancel_requested,
            "{label} must acknowledge the cancel request"
        );
        assert_eq!(
            load(journal, &key).await.run.state,
            RunState::Cancelled,
            "a {label} after a cancel request cancels the run"
        );
    }

    // A finished run is left as it is.
    let done = unique("cancel-done");
    let (_, lease) = open_leased(journal, new_run(&done, b"i"), t, at(t, 60_000)).await;
    journal.write(&lease, finished(at(t, 1))).await.unwrap();
    let run = command(journal, &done, Command::Cancel, at(t, 2)).await;
    assert_eq!(
        (run.state, run.cancel_requested_at),
        (RunState::Completed, None),
        "cancelling a finished run changes nothing"
    );
}

/// `DeadLetter` sets a run aside with its error and failure count;
/// `claim_due` and `open_run` leave it alone; `Command::Resume` makes it
/// incomplete and due again with no failures, recording when.
pub async fn dead_letters_wait_for_an_operator(journal: &dyn Journal) {
    let key = unique("dead");
    let t = Timestamp::now();
    let (_, lease) = open_leased(journal, new_run(&key, b"i"), t, at(t, 60_000)).await;
    let write = Write::DeadLetter {
        last_error: "panicked: poison".into(),
        failures: 3,
        at: at(t, 1),
    };
    let ack = journal.write(&lease, write).await.unwrap();
    assert!(!ack.cancel_requested);
    let run = load(journal, &key).await.run;
    assert_eq!(
        (
            run.state,
            run.failures,
            run.last_error.as_deref(),
            run.lease_owner.as_deref()
        ),
        (RunState::DeadLettered, 3, Some("panicked: poison"), None),
        "DeadLetter must set the run aside with its error and failures, released"
    );
    let late = journal.write(&lease, finished(at(t, 2))).await;
    expect_lease_lost(late, &lease, "a write after DeadLetter");
    let opened = journal
        .open_run(new_run(&key, b"i"), request(OWNER, at(t, 3), at(t, 60_000)))
        .await
        .unwrap();
    assert!(
        opened.lease.is_none(),
        "open_run must not lease a dead-lettered run"
    );
    let filter = RunFilter {
        state: Some(RunState::DeadLettered),
        ..RunFilter::default()
    };
    let listed = journal.list_runs(&filter).await.unwrap();
    assert!(
        listed.iter().any(|r| r.key == key),
        "dead letters must be listed by state"
    );

    let run = command(journal, &key, Command::Resume, at(t, 5)).await;
    assert_eq!(
        (run.state, run.failures, run.resumed_at, run.wake_at),
        (RunState::Incomplete, 0, Some(at(t, 5)), at(t, 5)),
        "Resume must make the run incomplete and due now, with no failures"
    );
    let (_, lease) = open_leased(journal, new_run(&key, b"i"), at(t, 6), at(t, 60_000)).await;
    journal.write(&lease, finished(at(t, 7))).await.unwrap();
}

/// `Command::Resume` of a failed run forgets the steps that failed for
/// good after its last completed step (they run again), keeps the rest,
/// and clears its outcome, cancel request and deadline; on an incomplete
/// or completed run it changes nothing.
pub async fn resume_reopens_a_failed_run(journal: &dyn Journal) {
    let key = unique("resume");
    let t = Timestamp::now();
    let new = NewRun {
        deadline: Some(at(t, 1)),
        ..new_run(&key, b"i")
    };
    let (_, lease) = open_leased(journal, new, t, at(t, 60_000)).await;
    let fail = |id: &str, seq| Write::StepRecorded {
        step_id: id.to_owned(),
        seq,
        state: StepState::Failed,
        output: b"err".to_vec(),
        error: Some("declined".into()),
        attempts: 1,
        started_at: t,
        at: t,
    };
    // A failure handled by the workflow, then the one that ended it.
    journal.write(&lease, fail("early#0", 0)).await.unwrap();
    journal
        .write(&lease, step_completed("ok#0", 1, vec![1], t))
        .await
        .unwrap();
    journal.write(&lease, fail("last#0", 2)).await.unwrap();
    let ended = Write::RunFinished {
        state: RunState::Failed,
        outcome: b"failed".to_vec(),
        at: at(t, 1),
    };
    journal.write(&lease, ended).await.unwrap();

    let unchanged = unique("resume-incomplete");
    journal
        .create_run(new_run(&unchanged, b"i"), t)
        .await
        .unwrap();
    let run = command(journal, &unchanged, Command::Resume, at(t, 2)).await;
    assert_eq!(
        (run.state, run.resumed_at),
        (RunState::Incomplete, None),
        "resuming an incomplete run changes nothing"
    );

    let run = command(journal, &key, Command::Resume, at(t, 3)).await;
    assert_eq!(
        (run.state, run.outcome, run.deadline),
        (RunState::Incomplete, None, None),
        "Resume must clear the outcome and the deadline"
    );
    let mut ids: Vec<String> = load(journal, &key)
        .await
        .steps
        .into_iter()
        .map(|s| s.step_id)
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["early#0", "ok#0"],
        "Resume must forget only the failures after the last completed step"
    );
    let (_, lease) = open_leased(journal, new_run(&key, b"i"), at(t, 4), at(t, 60_000)).await;
    journal.write(&lease, finished(at(t, 5))).await.unwrap();
    let run = command(journal, &key, Command::Resume, at(t, 6)).await;
    assert_eq!(
        run.state,
        RunState::Completed,
        "resuming a completed run changes nothing"
    );
}

/// `Command::RetryNow` makes an incomplete run no live worker holds due now
/// and clears its steps' retry delays; a held run is left alone.
pub async fn retry_now_makes_a_run_due(journal: &dyn Journal) {
    let key = unique("retry-now");
    let t = Timestamp::now();
    let (_, lease) = open_leased(journal, new_run(&key, b"i"), t, at(t, 60_000)).await;
    let held = command(journal, &key, Command::RetryNow, at(t, 1)).await;
    assert_eq!(held.wake_at, t, "a run held by a live worker is left alone");
    journal
        .write(&lease, super::step_failed("s#0", 1, "timeout", at(t, 2)))
        .await
        .unwrap();
    journal
        .write(&lease, release(at(t, 600_000), at(t, 3)))
        .await
        .unwrap();
    let run = command(journal, &key, Command::RetryNow, at(t, 4)).await;
    assert_eq!(run.wake_at, at(t, 4), "RetryNow must make the run due now");
    let step = load(journal, &key).await.steps.remove(0);
    assert_eq!(
        (step.state, step.retry_at),
        (StepState::Retrying, None),
        "RetryNow must clear the steps' retry delays"
    );
    super::retire(journal, &key, at(t, 5)).await;
}

/// `fork_run` creates a run with the source's workflow and input, unpinned,
/// no deadline, due now, and copies of its recorded steps below `steps`;
/// the source is untouched; a retry returns the fork; an existing key is
/// `RunExists`, an unknown source `UnknownRun`.
pub async fn fork_copies_the_first_steps(journal: &dyn Journal) {
    let source = unique("fork-source");
    let t = Timestamp::now();
    let (_, lease) = open_leased(journal, new_run(&source, b"input"), t, at(t, 60_000)).await;
    for (seq, id) in ["a#0", "b#0", "c#0"].into_iter().enumerate() {
        let write = step_completed(id, seq as u64, vec![seq as u8], t);
        journal.write(&lease, write).await.unwrap();
    }
    journal.write(&lease, finished(at(t, 1))).await.unwrap();
    let before = load(journal, &source).await;

    let fork = unique("fork");
    let run = journal
        .fork_run(&source, &fork, 2, at(t, 2))
        .await
        .unwrap_or_else(|e| panic!("fork_run failed: {e}"));
    assert_eq!(
        (run.state, run.fingerprint, run.epoch, run.executions),
        (RunState::Incomplete, crate::journal::UNPINNED, 0, 0),
        "a fork is a new, unpinned, unleased run"
    );
    assert_eq!(
        (
            run.input.as_slice(),
            run.workflow.as_str(),
            run.forked_from.as_deref()
        ),
        (
            b"input".as_slice(),
            before.run.workflow.as_str(),
            Some(source.as_str())
        ),
    );
    assert_eq!(run.wake_at, at(t, 2), "a fork is due at once");
    let steps = load(journal, &fork).await.steps;
    let copied: Vec<(&str, Option<u64>, &[u8])> = steps
        .iter()
        .map(|s| {
            (
                s.step_id.as_str(),
                s.seq,
                s.output.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        copied,
        [
            ("a#0", Some(0), [0u8].as_slice()),
            ("b#0", Some(1), [1u8].as_slice())
        ],
        "a fork holds copies of the source's first steps"
    );
    assert_eq!(
        load(journal, &source).await,
        before,
        "the source is untouched"
    );
    let again = journal.fork_run(&source, &fork, 2, at(t, 3)).await.unwrap();
    assert_eq!(again, run, "a retried fork returns the fork it made");
    match journal.fork_run(&source, &source, 1, at(t, 3)).await {
        Err(Error::RunExists { run }) if run == source => {}
        other => panic!("forking onto an existing key must be RunExists, got {other:?}"),
    }
    let missing = unique("fork-missing");
    match journal.fork_run(&missing, &unique("fork-new"), 1, t).await {
        Err(Error::UnknownRun { run }) if run == missing => {}
        other => panic!("forking an unknown run must be UnknownRun, got {other:?}"),
    }
    let (_, lease) = open_leased(journal, new_run(&fork, b"input"), at(t, 4), at(t, 60_000)).await;
    assert_eq!(lease.epoch, 1);
    journal.write(&lease, finished(at(t, 5))).await.unwrap();
}

/// `purge` deletes finished runs that last changed before `before`, at most
/// `limit` per call, with all their records; unfinished and dead-lettered
/// runs stay, whatever their age.
pub async fn purge_deletes_old_finished_runs(journal: &dyn Journal) {
    // Timestamps from the first second of 1970, which no other test uses.
    let t = Timestamp(fastrand::i64(1..400));
    let mut old = Vec::new();
    for i in 0..3 {
        let key = unique(&format!("purge-old-{i}"));
        let (_, lease) = open_leased(journal, new_run(&key, b"i"), t, at(t, 60_000)).await;
        journal
            .write(&lease, step_completed("a#0", 0, vec![1], t))
            .await
            .unwrap();
        let event = Write::EventSet {
            name: "e".into(),
            value: vec![1],
            at: t,
        };
        journal.write(&lease, event).await.unwrap();
        let message = NewMessage {
            run_key: key.clone(),
            topic: "left".into(),
            value: vec![1],
            idempotency_key: "m".into(),
            at: t,
        };
        journal.send_message(message).await.unwrap();
        journal.write(&lease, finished(at(t, i))).await.unwrap();
        old.push(key);
    }
    let young = unique("purge-young");
    let (_, lease) = open_leased(journal, new_run(&young, b"i"), t, at(t, 60_000)).await;
    journal.write(&lease, finished(at(t, 500))).await.unwrap();
    let unfinished = unique("purge-unfinished");
    journal
        .create_run(new_run(&unfinished, b"i"), t)
        .await
        .unwrap();
    let dead = unique("purge-dead");
    let (_, lease) = open_leased(journal, new_run(&dead, b"i"), t, at(t, 60_000)).await;
    let write = Write::DeadLetter {
        last_error: "x".into(),
        failures: 1,
        at: t,
    };
    journal.write(&lease, write).await.unwrap();
    // A run created before the purge, and one after it, of one workflow.
    let workflow = unique("purge-order");
    let of_workflow = |key: &str| NewRun {
        workflow: workflow.clone(),
        ..new_run(key, b"i")
    };
    let earlier = unique("purge-earlier");
    journal.create_run(of_workflow(&earlier), t).await.unwrap();

    let before = at(t, 100);
    assert_eq!(
        journal.purge(before, 2).await.unwrap(),
        2,
        "purge must respect its limit"
    );
    assert_eq!(journal.purge(before, 2).await.unwrap(), 1);
    assert_eq!(journal.purge(before, 2).await.unwrap(), 0);
    // Creation order survives purging: the later run lists after the earlier.
    let later = unique("purge-later");
    journal.create_run(of_workflow(&later), t).await.unwrap();
    let listed: Vec<String> = journal
        .list_runs(&RunFilter {
            workflow: Some(workflow.clone()),
            ..RunFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(
        listed,
        [earlier.clone(), later.clone()],
        "runs list in creation order after a purge"
    );
    for key in &old {
        assert!(
            journal.load_run(key).await.unwrap().is_none(),
            "an old finished run must be purged"
        );
        // Its key is free again, without its old steps.
        let (snapshot, lease) =
            open_leased(journal, new_run(key, b"i"), at(t, 600), at(t, 60_000)).await;
        assert!(snapshot.steps.is_empty(), "purge must delete a run's steps");
        assert_eq!(
            journal.get_event(key, "e").await.unwrap(),
            None,
            "purge must delete a run's events"
        );
        let receive = Receive {
            step_id: "recv:left#0".into(),
            seq: 0,
            topic: "left".into(),
            at: at(t, 600),
        };
        let found = journal.receive(&lease, receive).await.unwrap();
        assert_eq!(
            (found.message, found.sent),
            (None, 0),
            "purge must delete a run's messages"
        );
        journal.write(&lease, finished(at(t, 601))).await.unwrap();
    }
    for key in [&young, &unfinished, &dead] {
        assert!(
            journal.load_run(key).await.unwrap().is_some(),
            "purge must keep '{key}'"
        );
    }
    for key in [&unfinished, &earlier, &later] {
        super::retire(journal, key, Timestamp::now()).await;
    }
}

/// `release_leases` gives back the leases that still hold their runs, in
/// one call, and skips the others; an execution that recorded no step
/// counts as a failure, one that did does not. Taking over an expired lease
/// counts the same way.
pub async fn leases_given_back_together_count_failures(journal: &dyn Journal) {
    let t = Timestamp::now();
    let idle = unique("release-many-idle");
    let busy = unique("release-many-busy");
    let gone = unique("release-many-gone");
    let (_, idle_lease) = open_leased(journal, new_run(&idle, b"i"), t, at(t, 60_000)).await;
    let (_, busy_lease) = open_leased(journal, new_run(&busy, b"i"), t, at(t, 60_000)).await;
    journal
        .write(&busy_lease, step_completed("a#0", 0, vec![1], t))
        .await
        .unwrap();
    let (_, gone_lease) = open_leased(journal, new_run(&gone, b"i"), t, at(t, 60_000)).await;
    journal
        .write(&gone_lease, finished(at(t, 1)))
        .await
        .unwrap();
    let stale = Lease {
        epoch: idle_lease.epoch + 7,
        ..idle_lease.clone()
    };
    let leases = [idle_lease.clone(), busy_lease, gone_lease, stale];
    let released = journal
        .release_leases(&leases, "worker died", at(t, 2))
        .await
        .unwrap_or_else(|e| panic!("release_leases failed: {e}"));
    assert_eq!(
        released, 2,
        "only the leases that still hold their runs are given back"
    );
    let idle_run = load(journal, &idle).await.run;
    assert_eq!(
        (
            idle_run.lease_owner.as_deref(),
            idle_run.wake_at,
            idle_run.last_error.as_deref()
        ),
        (None, at(t, 2), Some("worker died")),
    );
    assert_eq!(
        idle_run.failures, 1,
        "a dead execution without progress is a failure"
    );
    assert_eq!(
        load(journal, &busy).await.run.failures,
        0,
        "one with progress is not"
    );

    // An expired lease taken over: the same count.
    let expired = unique("takeover");
    open_leased(journal, new_run(&expired, b"i"), t, at(t, 10)).await;
    let (snapshot, lease) =
        open_leased(journal, new_run(&expired, b"i"), at(t, 20), at(t, 60_000)).await;
    assert_eq!(
        snapshot.run.failures, 1,
        "taking over an expired lease that recorded no step counts a failure"
    );
    let write = Write::Release {
        last_error: Some("panicked".into()),
        wake_at: at(t, 30),
        failures: 4,
        wake_on_message: None,
        at: at(t, 30),
    };
    journal.write(&lease, write).await.unwrap();
    assert_eq!(
        load(journal, &expired).await.run.failures,
        4,
        "Release sets failures"
    );
    for key in [&idle, &busy, &expired] {
        super::retire(journal, key, Timestamp::now()).await;
    }
}

/// `list_runs` filters by creation time and pages after a key, in creation
/// order; a page after an unknown key is empty.
pub async fn list_runs_pages(journal: &dyn Journal) {
    let workflow = unique("paging-workflow");
    let t = Timestamp::now();
    let mut keys = Vec::new();
    for i in 0..5 {
        let key = unique(&format!("page-{i}"));
        let new = NewRun {
            workflow: workflow.clone(),
            ..new_run(&key, b"i")
        };
        journal.create_run(new, at(t, i * 10)).await.unwrap();
        keys.push(key);
    }
    let page = |after: Option<&String>, limit| RunFilter {
        workflow: Some(workflow.clone()),
        after: after.cloned(),
        limit: Some(limit),
        ..RunFilter::default()
    };
    let listed = |runs: Vec<RunRecord>| runs.into_iter().map(|r| r.key).collect::<Vec<_>>();
    let first = listed(journal.list_runs(&page(None, 2)).await.unwrap());
    assert_eq!(first, keys[..2]);
    let second = listed(journal.list_runs(&page(first.last(), 2)).await.unwrap());
    assert_eq!(second, keys[2..4], "a page starts after the given key");
    let last = listed(journal.list_runs(&page(second.last(), 2)).await.unwrap());
    assert_eq!(last, keys[4..]);
    let unknown = unique("page-unknown");
    assert!(
        journal
            .list_runs(&page(Some(&unknown), 2))
            .await
            .unwrap()
            .is_empty()
    );
    let window = RunFilter {
        workflow: Some(workflow.clone()),
        created_after: Some(at(t, 10)),
        created_before: Some(at(t, 40)),
        ..RunFilter::default()
    };
    assert_eq!(
        listed(journal.list_runs(&window).await.unwrap()),
        keys[1..4],
        "created_after is inclusive, created_before exclusive"
    );
    // Only leased runs: the one a worker took (its lease expired already).
    let held = NewRun {
        workflow: workflow.clone(),
        ..new_run(&keys[2], b"i")
    };
    open_leased(journal, held, at(t, -2_000), at(t, -1_000)).await;
    let leased = RunFilter {
        workflow: Some(workflow.clone()),
        leased: true,
        ..RunFilter::default()
    };
    assert_eq!(
        listed(journal.list_runs(&leased).await.unwrap()),
        keys[2..3],
        "leased lists only runs with a lease"
    );
    for key in &keys {
        super::retire(journal, key, Timestamp::now()).await;
    }
}

/// The run after `command`, checking that the command says it changed the
/// run exactly when its state or times show it did.
async fn command(journal: &dyn Journal, key: &str, command: Command, now: Timestamp) -> RunRecord {
    let before = load(journal, key).await.run;
    let (run, changed) = journal
        .command(key, command, now)
        .await
        .unwrap_or_else(|e| panic!("{command:?} of '{key}' failed: {e}"))
        .unwrap_or_else(|| panic!("{command:?} of '{key}' found no run"));
    let expected = run.state != before.state
        || run.cancel_requested_at != before.cancel_requested_at
        || run.wake_at != before.wake_at
        || run.resumed_at != before.resumed_at;
    assert_eq!(
        changed, expected,
        "{command:?} of '{key}' must say whether it changed the run: before {before:?}, after {run:?}"
    );
    run
}

/// `EventSet` publishes a value under a name, replacing the last one, fenced
/// like every write; `get_event` reads the latest, or `None` for a name or
/// run without one. Events are the run's own: another run's are apart.
pub async fn events_keep_the_last_published_value(journal: &dyn Journal) {
    let key = unique("events");
    let other = unique("events-other");
    let t = Timestamp::now();
    let (_, lease) = open_leased(journal, new_run(&key, b"i"), t, at(t, 60_000)).await;
    let (_, other_lease) = open_leased(journal, new_run(&other, b"i"), t, at(t, 60_000)).await;
    let set = |value: &[u8], ms| Write::EventSet {
        name: "status".into(),
        value: value.to_vec(),
        at: at(t, ms),
    };
    assert_eq!(journal.get_event(&key, "status").await.unwrap(), None);
    journal.write(&lease, set(b"shipped", 1)).await.unwrap();
    journal.write(&other_lease, set(b"other", 1)).await.unwrap();
    assert_eq!(
        journal.get_event(&key, "status").await.unwrap().as_deref(),
        Some(&b"shipped"[..])
    );
    journal.write(&lease, set(b"delivered", 2)).await.unwrap();
    assert_eq!(
        journal.get_event(&key, "status").await.unwrap().as_deref(),
        Some(&b"delivered"[..]),
        "a new value replaces the last"
    );
    assert_eq!(
        journal
            .get_event(&other, "status")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"other"[..]),
        "each run has its own events"
    );
    assert_eq!(journal.get_event(&key, "eta").await.unwrap(), None);
    assert_eq!(
        journal
            .get_event(&unique("events-none"), "status")
            .await
            .unwrap(),
        None
    );
    // Given back, the lease publishes no more.
    let release = Write::Release {
        last_error: None,
        wake_at: at(t, 3),
        failures: 0,
        wake_on_message: None,
        at: at(t, 3),
    };
    journal.write(&lease, release).await.unwrap();
    let late = journal.write(&lease, set(b"late", 4)).await;
    expect_lease_lost(late, &lease, "publishing under a lease that was given back");
    assert_eq!(
        journal.get_event(&key, "status").await.unwrap().as_deref(),
        Some(&b"delivered"[..])
    );
}
