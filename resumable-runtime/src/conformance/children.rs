//! Child runs' part of the contract: starting one under the parent's lease
//! with the step that records it, adopting it, refusing another run's key,
//! listing children, and the message a finishing child sends its parent.

use super::messages::receive;
use super::{at, expect_lease_lost, load, new_run, open_leased, unique};
use crate::error::Error;
use crate::journal::{
    Command, Journal, Lease, NewRun, RunFilter, RunState, StepState, Timestamp, Write,
};

fn start(step_id: &str, seq: u64, child: &str, t: Timestamp) -> Write {
    Write::StartChild {
        step_id: step_id.to_owned(),
        seq,
        output: child.as_bytes().to_vec(),
        child: NewRun {
            workflow: "conformance-child".to_owned(),
            ..new_run(child, b"child input")
        },
        at: t,
    }
}

/// [`Write::StartChild`] creates the child (incomplete, due, its parent
/// set, its workflow and input as given) and records the parent's step in
/// one write; listing by parent finds it. A step already recorded is
/// [`Error::StepAlreadyRecorded`]; a key that exists (even this run's own
/// child's) is [`Error::RunExists`], changing nothing; a stale lease is
/// [`Error::LeaseLost`]; with a cancel requested nothing starts.
pub async fn start_child_creates_the_child_with_its_step(journal: &dyn Journal) {
    let parent = unique("parent");
    let child = format!("{parent}/child:c#0");
    let t = Timestamp::now();
    let (_, lease) = open_leased(journal, new_run(&parent, b"input"), t, at(t, 60_000)).await;
    journal
        .write(&lease, start("child:c#0", 0, &child, t))
        .await
        .unwrap_or_else(|e| panic!("StartChild failed: {e}"));
    let made = load(journal, &child).await.run;
    assert_eq!(
        (
            made.state,
            made.parent.as_deref(),
            made.workflow.as_str(),
            made.input.as_slice()
        ),
        (
            RunState::Incomplete,
            Some(parent.as_str()),
            "conformance-child",
            &b"child input"[..]
        ),
        "StartChild must create the child run, incomplete, with its parent, workflow and input"
    );
    assert!(
        made.wake_at <= t && made.lease_owner.is_none(),
        "a new child is due and not leased"
    );
    let steps = load(journal, &parent).await.steps;
    assert_eq!(
        steps
            .iter()
            .map(|s| (s.step_id.as_str(), s.state, s.output.as_deref()))
            .collect::<Vec<_>>(),
        [("child:c#0", StepState::Completed, Some(child.as_bytes()))],
        "StartChild must record the parent's step with its output"
    );
    let listed = journal
        .list_runs(&RunFilter {
            parent: Some(parent.clone()),
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        [child.as_str()],
        "list_runs by parent must find the child"
    );

    match journal
        .write(&lease, start("child:c#0", 1, &child, t))
        .await
    {
        Err(Error::StepAlreadyRecorded { run, step }) if run == parent && step == "child:c#0" => {}
        other => panic!(
            "StartChild under a recorded step must fail with StepAlreadyRecorded, got {other:?}"
        ),
    }
    match journal
        .write(&lease, start("child:again#0", 1, &child, t))
        .await
    {
        Err(Error::RunExists { run }) if run == child => {}
        other => panic!(
            "StartChild of a key that exists (even its own child's) must fail with RunExists, got {other:?}"
        ),
    }

    let stranger = unique("stranger");
    journal
        .create_run(new_run(&stranger, b"x"), t)
        .await
        .unwrap();
    match journal
        .write(&lease, start("child:d#0", 2, &stranger, t))
        .await
    {
        Err(Error::RunExists { run }) if run == stranger => {}
        other => panic!(
            "StartChild of a key another run started must fail with RunExists, got {other:?}"
        ),
    }
    assert!(
        !load(journal, &parent)
            .await
            .steps
            .iter()
            .any(|s| s.step_id == "child:d#0"),
        "a refused StartChild must record nothing"
    );
    let stale = Lease {
        epoch: lease.epoch + 1,
        ..lease.clone()
    };
    expect_lease_lost(
        journal
            .write(&stale, start("child:e#0", 3, &unique("e"), t))
            .await,
        &stale,
        "StartChild under an epoch that is not the run's",
    );
    // A cancel requested: the parent stops at this boundary, no child starts.
    journal.command(&parent, Command::Cancel, t).await.unwrap();
    let late = unique("late");
    let ack = journal
        .write(&lease, start("child:f#0", 3, &late, t))
        .await
        .unwrap_or_else(|e| panic!("StartChild with a cancel requested failed: {e}"));
    assert!(
        ack.cancel_requested,
        "StartChild must say a cancel is requested"
    );
    assert!(
        journal.load_run(&late).await.unwrap().is_none(),
        "no child may start once the parent's cancel is requested"
    );
    for key in [&child, &stranger] {
        journal.command(key, Command::Cancel, t).await.unwrap();
    }
    finish(journal, &lease).await;
}

/// A child that finishes sends its parent a message (topic
/// `child:<key>`, value its state, a zero byte, its outcome) in the same
/// write, and wakes the parent if it waits for messages; so does a child
/// cancelled by a command.
pub async fn a_finished_child_tells_its_parent(journal: &dyn Journal) {
    let parent = unique("parent");
    let t = Timestamp::now();
    let (_, lease) = open_leased(journal, new_run(&parent, b"input"), t, at(t, 60_000)).await;
    let done = format!("{parent}/child:done#0");
    let cancelled = format!("{parent}/child:cancelled#0");
    journal
        .write(&lease, start("child:done#0", 0, &done, t))
        .await
        .unwrap();
    journal
        .write(&lease, start("child:cancelled#1", 1, &cancelled, t))
        .await
        .unwrap();
    // The parent gives itself back to wait, having seen no message.
    let looked = receive(journal, &lease, "probe#0", 2, "nothing").await;
    let far = at(t, 3_600_000);
    let release = Write::Release {
        last_error: None,
        wake_at: far,
        failures: 0,
        wake_on_message: Some(looked.sent),
        at: t,
    };
    journal.write(&lease, release).await.unwrap();

    // The child runs and finishes.
    let (_, child_lease) =
        open_leased(journal, new_run(&done, b"child input"), t, at(t, 60_000)).await;
    let finished_at = at(t, 7);
    let finished = Write::RunFinished {
        state: RunState::Completed,
        outcome: b"sealed outcome".to_vec(),
        at: finished_at,
    };
    journal.write(&child_lease, finished).await.unwrap();
    assert_eq!(
        load(journal, &parent).await.run.wake_at,
        finished_at,
        "a child finishing must make its waiting parent due"
    );
    journal
        .command(&cancelled, Command::Cancel, at(t, 8))
        .await
        .unwrap();

    let (_, lease) =
        open_leased(journal, new_run(&parent, b"input"), at(t, 9), at(t, 60_000)).await;
    let got = receive(
        journal,
        &lease,
        "child-result:done#0",
        2,
        &format!("child:{done}"),
    )
    .await;
    assert_eq!(
        got.message.as_deref(),
        Some(&b"completed\0sealed outcome"[..]),
        "the message of a finished child must be its state, a zero byte, and its outcome"
    );
    let got = receive(
        journal,
        &lease,
        "child-result:cancelled#1",
        3,
        &format!("child:{cancelled}"),
    )
    .await;
    assert_eq!(
        got.message.as_deref(),
        Some(&b"cancelled\0"[..]),
        "a child cancelled by a command must tell its parent, with an empty outcome"
    );
    finish(journal, &lease).await;
}

async fn finish(journal: &dyn Journal, lease: &Lease) {
    let done = Write::RunFinished {
        state: RunState::Completed,
        outcome: Vec::new(),
        at: Timestamp::now(),
    };
    journal.write(lease, done).await.unwrap();
}
