//! Messages' part of the contract: sending (idempotent, to existing runs),
//! taking (once, oldest first per topic, recorded with the taking, fenced),
//! waking a run that waits for one. (Purging them with their run is checked
//! by `purge_deletes_old_finished_runs`.)

use super::{OWNER, at, expect_lease_lost, load, new_run, open_leased, request, unique};
use crate::error::Error;
use crate::journal::{
    Journal, JournalEvent, Lease, NewMessage, Receive, Received, StepState, Timestamp, Write,
};

fn message(
    key: &str,
    topic: &str,
    value: &[u8],
    idempotency_key: &str,
    t: Timestamp,
) -> NewMessage {
    NewMessage {
        run_key: key.to_owned(),
        topic: topic.to_owned(),
        value: value.to_vec(),
        idempotency_key: idempotency_key.to_owned(),
        at: t,
    }
}

async fn send(journal: &dyn Journal, message: NewMessage) -> bool {
    let what = format!("send_message to '{}'", message.run_key);
    journal
        .send_message(message)
        .await
        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

pub(super) async fn receive(
    journal: &dyn Journal,
    lease: &Lease,
    step_id: &str,
    seq: u64,
    topic: &str,
) -> Received {
    journal
        .receive(lease, receive_request(step_id, seq, topic))
        .await
        .unwrap_or_else(|e| panic!("receive of {step_id} on '{}' failed: {e}", lease.run_key))
}

/// Messages are taken oldest first per topic, each by one receive, and
/// recorded as the receive's step (completed, one attempt, the value as
/// sent) in the same write; a receive that finds none records nothing. A
/// send with an idempotency key already sent stores nothing; `sent` counts
/// stored messages on every topic. A send to a run that does not exist is
/// [`Error::UnknownRun`]; a receive under a stale lease is
/// [`Error::LeaseLost`] and takes nothing.
pub async fn messages_are_taken_once_oldest_first(journal: &dyn Journal) {
    let key = unique("messages");
    let t = Timestamp::now();
    let (_, lease) = open_leased(journal, new_run(&key, b"input"), t, at(t, 60_000)).await;
    assert!(send(journal, message(&key, "approval", b"first", "a", t)).await);
    assert!(send(journal, message(&key, "other", b"elsewhere", "b", t)).await);
    assert!(send(journal, message(&key, "approval", b"second", "c", t)).await);
    assert!(
        !send(journal, message(&key, "approval", b"again", "a", t)).await,
        "a send with an idempotency key already sent to the run must store nothing"
    );
    let first = receive(journal, &lease, "recv:approval#0", 0, "approval").await;
    assert_eq!(
        (first.message.as_deref(), first.sent),
        (Some(&b"first"[..]), 3),
        "a receive must take the oldest message on its topic, and count the messages sent"
    );
    let second = receive(journal, &lease, "recv:approval#1", 1, "approval").await;
    assert_eq!(
        second.message.as_deref(),
        Some(&b"second"[..]),
        "a message is taken once: the next receive takes the next one"
    );
    let none = receive(journal, &lease, "recv:approval#2", 2, "approval").await;
    assert_eq!(none.message, None, "no message is left on the topic");
    let steps = load(journal, &key).await.steps;
    let ids: Vec<(&str, StepState, Option<&[u8]>, u32)> = steps
        .iter()
        .map(|s| (s.step_id.as_str(), s.state, s.output.as_deref(), s.attempts))
        .collect();
    assert_eq!(
        ids,
        [
            (
                "recv:approval#0",
                StepState::Completed,
                Some(&b"first"[..]),
                1
            ),
            (
                "recv:approval#1",
                StepState::Completed,
                Some(&b"second"[..]),
                1
            ),
        ],
        "each taken message must be recorded as its receive's step, and a receive that found none must record nothing"
    );
    match journal
        .receive(&lease, receive_request("recv:approval#0", 3, "other"))
        .await
    {
        Err(Error::StepAlreadyRecorded { run, step })
            if run == key && step == "recv:approval#0" => {}
        other => panic!(
            "a receive under a recorded step id must fail with StepAlreadyRecorded, got {other:?}"
        ),
    }
    let other = receive(journal, &lease, "recv:other#0", 3, "other").await;
    assert_eq!(
        other.message.as_deref(),
        Some(&b"elsewhere"[..]),
        "a refused receive must take nothing"
    );

    let stale = Lease {
        epoch: lease.epoch + 1,
        ..lease.clone()
    };
    expect_lease_lost(
        journal
            .receive(&stale, receive_request("recv:approval#3", 4, "approval"))
            .await,
        &stale,
        "a receive under an epoch that is not the run's",
    );
    match journal
        .send_message(message(&unique("nobody"), "approval", b"x", "a", t))
        .await
    {
        Err(Error::UnknownRun { .. }) => {}
        other => {
            panic!("a send to a run that does not exist must fail with UnknownRun, got {other:?}")
        }
    }
}

fn receive_request(step_id: &str, seq: u64, topic: &str) -> Receive {
    Receive {
        step_id: step_id.to_owned(),
        seq,
        topic: topic.to_owned(),
        at: Timestamp::now(),
    }
}

/// A run given back to wait for a message ([`Write::Release`] with
/// `wake_on_message`) is due at `wake_at` unless a message comes: one sent
/// after the release makes it due at the send's time, and one sent between
/// the run's look and its release makes it due at the release's time. A run
/// given back without `wake_on_message` is not woken by a message. Sends are
/// announced ([`JournalEvent::Message`], and [`JournalEvent::Due`] for a run
/// they woke).
pub async fn messages_wake_runs_waiting_for_them(journal: &dyn Journal) {
    let t = Timestamp::now();
    let far = at(t, 3_600_000);
    let release = |seen: Option<u64>| Write::Release {
        last_error: None,
        wake_at: far,
        failures: 0,
        wake_on_message: seen,
        at: t,
    };

    // Woken by a message sent after it was given back.
    let key = unique("wake-after");
    let (_, lease) = open_leased(journal, new_run(&key, b"input"), t, at(t, 60_000)).await;
    let looked = receive(journal, &lease, "recv:go#0", 0, "go").await;
    journal
        .write(&lease, release(Some(looked.sent)))
        .await
        .unwrap();
    assert_eq!(
        load(journal, &key).await.run.wake_at,
        far,
        "a run waiting for a message, none sent since it looked, is due at its wake_at"
    );
    let mut events = journal.subscribe();
    let sent_at = at(t, 5);
    assert!(send(journal, message(&key, "go", b"1", "m1", sent_at)).await);
    assert_eq!(
        load(journal, &key).await.run.wake_at,
        sent_at,
        "a message sent to a run waiting for one must make it due at the send's time"
    );
    if let Some(events) = &mut events {
        // Events of earlier writes (the release's) may still be arriving.
        let expected = [
            JournalEvent::Message { key: key.clone() },
            JournalEvent::Due { at: sent_at },
        ];
        let mut seen = Vec::new();
        while !expected.iter().all(|e| seen.contains(e)) {
            match tokio::time::timeout(std::time::Duration::from_secs(5), events.next()).await {
                Ok(Some(JournalEvent::Resync)) | Ok(None) | Err(_) => break,
                Ok(Some(event)) => seen.push(event),
            }
        }
        for expected in expected {
            assert!(
                seen.contains(&expected),
                "a send that woke a run must announce {expected:?}; got {seen:?}"
            );
        }
    }
    retire(journal, &key).await;

    // A message that came between the look and the release.
    let key = unique("wake-between");
    let (_, lease) = open_leased(journal, new_run(&key, b"input"), t, at(t, 60_000)).await;
    let looked = receive(journal, &lease, "recv:go#0", 0, "go").await;
    assert!(send(journal, message(&key, "go", b"1", "m1", t)).await);
    journal
        .write(&lease, release(Some(looked.sent)))
        .await
        .unwrap();
    assert_eq!(
        load(journal, &key).await.run.wake_at,
        t,
        "a run given back to wait for a message that came since it looked must be due at once"
    );
    retire(journal, &key).await;

    // Not waiting for messages: a message does not wake it.
    let key = unique("no-wake");
    let (_, lease) = open_leased(journal, new_run(&key, b"input"), t, at(t, 60_000)).await;
    journal.write(&lease, release(None)).await.unwrap();
    assert!(send(journal, message(&key, "go", b"1", "m1", t)).await);
    assert_eq!(
        load(journal, &key).await.run.wake_at,
        far,
        "a message must not wake a run given back without waiting for one"
    );
    retire(journal, &key).await;
}

/// Takes run `key` (due or not) and finishes it.
async fn retire(journal: &dyn Journal, key: &str) {
    let now = Timestamp::now();
    let opened = journal
        .open_run(new_run(key, b"input"), request(OWNER, now, at(now, 1_000)))
        .await
        .unwrap_or_else(|e| panic!("open_run of '{key}' failed: {e}"));
    if let Some(lease) = opened.lease {
        let done = Write::RunFinished {
            state: crate::journal::RunState::Completed,
            outcome: Vec::new(),
            at: now,
        };
        journal.write(&lease, done).await.unwrap();
    }
}
