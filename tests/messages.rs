//! Messages: `recv!` and `Client::send` on every journal. A message sent
//! before the receive is kept; each is taken once, journaled as it is
//! taken, and replayed; a receive with nothing to take gives the run back
//! (no lease, no worker) until a message comes or its time limit passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

mod common;

use common::every_journal;
use resumable::{
    Client, Completer, Error, Journal, RunState, RunStatus, Runtime, WorkflowRef, recv, resumable,
    sleep, step, workflow,
};

#[derive(Default)]
struct Desk {
    paid: AtomicU32,
}

const APPROVE: WorkflowRef<(u64,), Result<String, String>> =
    WorkflowRef::named("messages::Desk::approve");
const TWICE: WorkflowRef<(), Result<(u32, u32), String>> =
    WorkflowRef::named("messages::Desk::twice");

impl Desk {
    /// Waits for an approval, then pays.
    #[resumable(name = "messages::Desk::approve")]
    async fn approve(&self, order: u64) -> Result<String, String> {
        let approved: bool = recv!("approval");
        if !approved {
            return Ok(format!("order {order} refused"));
        }
        let n = step!("pay", { self.paid.fetch_add(1, Ordering::SeqCst) + 1 });
        Ok(format!("order {order} paid ({n})"))
    }

    /// Two receives on one topic, with a long sleep between them (the run
    /// is given back and replays the first receive).
    #[resumable(name = "messages::Desk::twice")]
    async fn twice(&self) -> Result<(u32, u32), String> {
        let first: u32 = recv!("n");
        sleep!("between", Duration::from_millis(1_500));
        let second: u32 = recv!("n");
        Ok((first, second))
    }

    /// A receive with a time limit.
    #[resumable(name = "messages::Desk::limited")]
    async fn limited(&self, limit_ms: u64) -> Result<Option<u32>, String> {
        let got: Option<u32> = recv!("n", timeout = Duration::from_millis(limit_ms));
        Ok(got)
    }
}

fn completer(rt: &Runtime, desk: &Arc<Desk>) -> Completer {
    Completer::new(rt)
        .register(workflow!(Desk::approve), desk.clone())
        .unwrap()
        .register(workflow!(Desk::twice), desk.clone())
        .unwrap()
        .register(workflow!(Desk::limited), desk.clone())
        .unwrap()
}

fn waiting<T: std::fmt::Debug>(result: resumable::Result<T>, journal: &str) -> (String, String) {
    match result {
        Err(Error::WaitingForMessage { step, topic, .. }) => (step, topic),
        other => panic!("{journal}: expected Error::WaitingForMessage, got {other:?}"),
    }
}

#[tokio::test]
async fn a_message_sent_before_the_receive_is_kept_and_journaled() {
    for (name, journal) in every_journal("messages_before").await.0 {
        let rt = Runtime::new(journal);
        let desk = Desk::default();
        let client = rt.client();
        client.submit(&APPROVE, "o1", (1,)).await.unwrap();
        assert!(
            client
                .send(&APPROVE, "o1", "approval", &true, "ok")
                .await
                .unwrap()
        );
        let out = rt.run("o1", desk.approve(1)).await.unwrap();
        assert_eq!(out.as_deref(), Ok("order 1 paid (1)"), "{name}");
        let info = rt.run_info("o1").await.unwrap().unwrap();
        let ids: Vec<_> = info.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["recv:approval#0", "pay#0"], "{name}");
        // Run again: replayed, nothing taken or paid again.
        assert_eq!(
            rt.run("o1", desk.approve(1)).await.unwrap().as_deref(),
            Ok("order 1 paid (1)"),
            "{name}"
        );
        assert_eq!(desk.paid.load(Ordering::SeqCst), 1, "{name}");
    }
}

#[tokio::test]
async fn a_receive_with_nothing_to_take_gives_the_run_back_until_a_message_comes() {
    for (name, journal) in every_journal("messages_wait").await.0 {
        let rt = Runtime::new(journal.clone());
        let desk = Arc::new(Desk::default());
        let (step, topic) = waiting(rt.run("o2", desk.approve(2)).await, name);
        assert_eq!(
            (step.as_str(), topic.as_str()),
            ("recv:approval#0", "approval"),
            "{name}"
        );
        let info = rt.run_info("o2").await.unwrap().unwrap();
        assert_eq!(info.status, RunStatus::Waiting, "{name}");
        let run = journal.load_run("o2").await.unwrap().unwrap().run;
        assert!(
            run.lease_owner.is_none(),
            "{name}: a waiting run holds no lease"
        );
        assert!(run.last_error.is_none(), "{name}: waiting is no error");
        // Nothing is due: a completer has nothing to do.
        let report = completer(&rt, &desk).run_until_idle().await.unwrap();
        assert_eq!((report.finished, report.waiting), (0, 0), "{name}");

        let client = rt.client();
        assert!(
            client
                .send(&APPROVE, "o2", "approval", &true, "ok")
                .await
                .unwrap()
        );
        // Retried by the sender: one message.
        assert!(
            !client
                .send(&APPROVE, "o2", "approval", &true, "ok")
                .await
                .unwrap()
        );
        let report = completer(&rt, &desk).run_until_idle().await.unwrap();
        assert_eq!(report.finished, 1, "{name}");
        assert_eq!(
            client.outcome(&APPROVE, "o2").await.unwrap(),
            Some(Ok("order 2 paid (1)".to_string())),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_running_completer_delivers_a_message_to_a_waiting_run() {
    for (name, journal) in every_journal("messages_completer").await.0 {
        let rt = Runtime::new(journal);
        let desk = Arc::new(Desk::default());
        let client = rt.client();
        let handle = completer(&rt, &desk)
            .poll_interval(Duration::from_secs(30))
            .start();
        client.submit(&APPROVE, "o3", (3,)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        client
            .send(&APPROVE, "o3", "approval", &false, "no")
            .await
            .unwrap();
        let out = tokio::time::timeout(Duration::from_secs(20), client.wait(&APPROVE, "o3"))
            .await
            .unwrap_or_else(|_| panic!("{name}: the message was not delivered"))
            .unwrap();
        assert_eq!(out.as_deref(), Ok("order 3 refused"), "{name}");
        handle.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_replayed_receive_returns_the_message_it_took_and_takes_no_other() {
    for (name, journal) in every_journal("messages_replay").await.0 {
        let rt = Runtime::new(journal);
        let desk = Arc::new(Desk::default());
        let client = rt.client();
        client.submit(&TWICE, "t", ()).await.unwrap();
        for (n, key) in [(1u32, "a"), (2, "b"), (3, "c")] {
            assert!(client.send(&TWICE, "t", "n", &n, key).await.unwrap());
        }
        // Takes 1, then sleeps and is given back.
        match rt.run("t", desk.twice()).await {
            Err(Error::Sleeping { .. }) => {}
            other => panic!("{name}: expected the run to sleep, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(1_700)).await;
        completer(&rt, &desk).run_until_idle().await.unwrap();
        assert_eq!(
            client.outcome(&TWICE, "t").await.unwrap(),
            Some(Ok((1, 2))),
            "{name}: the replay returns the first message, the next receive takes the second"
        );
    }
}

#[tokio::test]
async fn a_receive_times_out_once_and_the_timeout_is_journaled() {
    for (name, journal) in every_journal("messages_timeout").await.0 {
        let rt = Runtime::new(journal);
        let desk = Arc::new(Desk::default());
        // A short limit waits in place and ends with nothing.
        assert_eq!(
            rt.run("short", desk.limited(50)).await.unwrap(),
            Ok(None),
            "{name}"
        );
        let info = rt.run_info("short").await.unwrap().unwrap();
        let ids: Vec<_> = info.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["recv-deadline:n#0", "recv:n#0"], "{name}");
        // A long one gives the run back, due at its deadline at the latest.
        let (_, _) = waiting(rt.run("long", desk.limited(2_500)).await, name);
        let client = rt.client();
        const LIMITED: WorkflowRef<(u64,), Result<Option<u32>, String>> =
            WorkflowRef::named("messages::Desk::limited");
        tokio::time::sleep(Duration::from_millis(2_700)).await;
        completer(&rt, &desk).run_until_idle().await.unwrap();
        assert_eq!(
            client.outcome(&LIMITED, "long").await.unwrap(),
            Some(Ok(None)),
            "{name}"
        );
        // A message after the time limit stays unread.
        assert!(
            client
                .send(&LIMITED, "long", "n", &5u32, "late")
                .await
                .unwrap()
        );
        assert_eq!(
            rt.run("long", desk.limited(2_500)).await.unwrap(),
            Ok(None),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_waiting_run_can_be_cancelled() {
    for (name, journal) in every_journal("messages_cancel").await.0 {
        let rt = Runtime::new(journal);
        let desk = Arc::new(Desk::default());
        waiting(rt.run("c", desk.approve(4)).await, name);
        rt.runs().cancel("c").await.unwrap();
        let client = rt.client();
        client
            .send(&APPROVE, "c", "approval", &true, "late")
            .await
            .unwrap();
        completer(&rt, &desk).run_until_idle().await.unwrap();
        assert!(
            matches!(
                client.outcome(&APPROVE, "c").await,
                Err(Error::Cancelled { .. })
            ),
            "{name}"
        );
        assert_eq!(desk.paid.load(Ordering::SeqCst), 0, "{name}");
    }
}

#[tokio::test]
async fn a_deadline_reaches_a_run_waiting_for_a_message() {
    for (name, journal) in every_journal("messages_deadline").await.0 {
        let rt = Runtime::new(journal);
        let desk = Arc::new(Desk::default());
        let client = rt.client();
        let deadline = std::time::SystemTime::now() + Duration::from_millis(1_500);
        client
            .submit_with_deadline(&APPROVE, "d", (5,), Some(deadline))
            .await
            .unwrap();
        waiting(rt.run("d", desk.approve(5)).await, name);
        // Due at its deadline, though it waits for a message without a limit.
        let due = rt.run_info("d").await.unwrap().unwrap().due_at.unwrap();
        assert!(due <= deadline, "{name}");
        tokio::time::sleep(Duration::from_millis(1_700)).await;
        completer(&rt, &desk).run_until_idle().await.unwrap();
        assert!(
            matches!(
                client.outcome(&APPROVE, "d").await,
                Err(Error::DeadlineExceeded { .. })
            ),
            "{name}"
        );
    }
}

#[tokio::test]
async fn bad_sends_are_refused_with_typed_errors() {
    let rt = Runtime::new(resumable::MemoryJournal::new());
    let client: Client = rt.client();
    assert!(matches!(
        client
            .send(&APPROVE, "nobody", "approval", &true, "k")
            .await,
        Err(Error::UnknownRun { .. })
    ));
    client.submit(&APPROVE, "o", (1,)).await.unwrap();
    for (topic, key) in [("", "k"), ("a#b", "k"), ("approval", "")] {
        assert!(
            matches!(
                client.send(&APPROVE, "o", topic, &true, key).await,
                Err(Error::InvalidMessage { .. })
            ),
            "topic {topic:?}, key {key:?}"
        );
    }
}

#[tokio::test]
async fn a_message_of_another_type_stops_the_run_with_a_decode_error() {
    let rt = Runtime::new(resumable::MemoryJournal::new());
    let desk = Desk::default();
    let client = rt.client();
    client.submit(&APPROVE, "o", (1,)).await.unwrap();
    client
        .send(
            &APPROVE,
            "o",
            "approval",
            "a very long text that is no bool",
            "k",
        )
        .await
        .unwrap();
    match rt.run("o", desk.approve(1)).await {
        Err(err @ (Error::Decode { .. } | Error::Corrupted { .. })) => {
            assert!(err.to_string().contains("recv:approval#0"), "{err}")
        }
        other => panic!("expected a decode error naming the receive, got {other:?}"),
    }
    let state = client.status("o").await.unwrap();
    assert_eq!(state, Some(RunState::Incomplete));
}
