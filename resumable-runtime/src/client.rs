//! The [`Client`]: submits runs and waits for their outcomes, for processes
//! that do not have the workflows' code (a web front end handing work to
//! workers on other machines).

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::codec::{Bincode, Codec, Envelope};
use crate::error::{Error, Result, Slot};
use crate::journal::{
    Command, Journal, JournalEvent, NewMessage, NewRun, RunState, Subscription, Timestamp, UNPINNED,
};
use crate::runs::Runs;
use crate::runtime::{mismatch, outcome_of, validate_key, validate_lookup_key};
use crate::workflow::{Journaled, WorkflowResult};

/// A workflow as a client sees it: its name and its types, without its code.
///
/// `I` is the tuple of the `#[resumable]` function's journaled arguments
/// (its receiver and `#[dep]` arguments excluded), `R` its return type and
/// `C` its codec. For `async fn resize(user: u64, url: String) -> Result<Thumb, Failed>`:
///
/// ```
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Thumb;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Failed;
/// use resumable::WorkflowRef;
///
/// const RESIZE: WorkflowRef<(u64, String), Result<Thumb, Failed>> = WorkflowRef::named("resize");
/// ```
///
/// Runs submitted this way are not tied to a version of the workflow until
/// a worker executes them: the first worker pins the run to its code's
/// fingerprint, and later workers are checked against it as usual.
pub struct WorkflowRef<I, R, C = Bincode> {
    name: &'static str,
    _types: PhantomData<fn(I) -> (R, C)>,
}

impl<I, R, C> WorkflowRef<I, R, C> {
    /// The workflow named `name` (its function's name, or the `name = ".."`
    /// given to `#[resumable]`).
    pub const fn named(name: &'static str) -> Self {
        WorkflowRef {
            name,
            _types: PhantomData,
        }
    }

    /// The workflow's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl<I, R, C> Clone for WorkflowRef<I, R, C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I, R, C> Copy for WorkflowRef<I, R, C> {}

impl<I, R, C> fmt::Debug for WorkflowRef<I, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WorkflowRef").field(&self.name).finish()
    }
}

/// Submits runs for workers ([`Completer`](crate::Completer)s, possibly on
/// other machines) to execute, and waits for their outcomes. Cheap to clone.
///
/// Waiting uses the journal's wake-ups ([`Journal::subscribe`]) when it has
/// them, so an outcome arrives as soon as it is committed, and polls as the
/// fallback.
///
/// ```
/// # #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)] struct Thumb(u32);
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// use resumable::{Client, MemoryJournal, RunState, WorkflowRef};
///
/// const RESIZE: WorkflowRef<(u64,), Result<Thumb, String>> = WorkflowRef::named("resize");
///
/// let client = Client::new(MemoryJournal::new());
/// client.submit(&RESIZE, "resize-7", (7,)).await?;
/// let status = client.status("resize-7").await?.unwrap();
/// assert_eq!(status, RunState::Incomplete); // until a worker runs it
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    journal: Arc<dyn Journal>,
    envelope: Envelope,
    poll_interval: Duration,
}

impl Client {
    /// A client of `journal`.
    pub fn new(journal: impl Journal) -> Self {
        Client {
            journal: Arc::new(journal),
            envelope: Envelope {
                max_payload: 16 << 20,
            },
            poll_interval: Duration::from_secs(1),
        }
    }

    /// A client of a runtime's journal, with its payload limit.
    pub(crate) fn of_runtime(journal: Arc<dyn Journal>, envelope: Envelope) -> Self {
        Client {
            journal,
            envelope,
            poll_interval: Duration::from_secs(1),
        }
    }

    /// How often [`wait`](Self::wait) looks at the run when no wake-up
    /// comes (default 1 s).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// The largest input or outcome it handles, in bytes (default 16 MiB;
    /// keep it equal to the workers').
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.envelope.max_payload = bytes;
        self
    }

    /// Records run `key` of `workflow` with `input`, due at once. Submitting
    /// a key again with the same input is harmless (a run waiting out a
    /// backoff becomes due now); with another input it is
    /// [`Error::InputMismatch`], and under another workflow
    /// [`Error::WorkflowMismatch`].
    pub async fn submit<I, R, C>(
        &self,
        workflow: &WorkflowRef<I, R, C>,
        key: impl Into<String>,
        input: I,
    ) -> Result<()>
    where
        I: Journaled,
        C: Codec,
    {
        self.submit_with_deadline(workflow, key, input, None).await
    }

    /// [`submit`](Self::submit), with a deadline for a new run: past it, the
    /// run ends as [`Error::DeadlineExceeded`] at its next step boundary.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use std::time::{Duration, SystemTime};
    /// use resumable::{Client, MemoryJournal, WorkflowRef};
    ///
    /// const JOB: WorkflowRef<(u32,), Result<u32, String>> = WorkflowRef::named("job");
    /// let client = Client::new(MemoryJournal::new());
    /// let deadline = SystemTime::now() + Duration::from_secs(3600);
    /// client.submit_with_deadline(&JOB, "job-1", (1,), Some(deadline)).await?;
    /// let info = client.runs().info("job-1").await?.unwrap();
    /// assert!(info.deadline.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn submit_with_deadline<I, R, C>(
        &self,
        workflow: &WorkflowRef<I, R, C>,
        key: impl Into<String>,
        input: I,
        deadline: Option<SystemTime>,
    ) -> Result<()>
    where
        I: Journaled,
        C: Codec,
    {
        let key = key.into();
        validate_key(&key)?;
        let input = self.envelope.seal::<C, I>(&key, || Slot::Input, &input)?;
        let deadline = deadline.map(Timestamp::from);
        let new = NewRun {
            key: key.clone(),
            workflow: workflow.name.to_owned(),
            fingerprint: UNPINNED,
            input,
            deadline,
        };
        let (run, created) = self
            .journal
            .create_run(new.clone(), Timestamp::now())
            .await?;
        if let Some(mismatch) = mismatch(&run, &new, None) {
            return Err(mismatch);
        }
        if !created && run.state == RunState::Incomplete {
            // Submitted again: a run waiting out a backoff becomes due now.
            self.journal
                .command(&key, Command::RetryNow, Timestamp::now())
                .await?;
        }
        Ok(())
    }

    /// Waits until run `key` of `workflow` finishes and returns its outcome,
    /// however long that takes (wrap it in `tokio::time::timeout` to bound
    /// it). [`Error::UnknownRun`] if no run has that key.
    pub async fn wait<I, R, C>(&self, workflow: &WorkflowRef<I, R, C>, key: &str) -> Result<R>
    where
        R: WorkflowResult + Journaled,
        C: Codec,
    {
        // Subscribed before looking, so a finish in between is not missed.
        let mut events = self.journal.subscribe();
        loop {
            if let Some(outcome) = self.outcome(workflow, key).await? {
                return Ok(outcome);
            }
            let poll = tokio::time::sleep(self.poll_interval);
            tokio::select! {
                () = poll => {}
                () = finished(&mut events, key) => {}
            }
        }
    }

    /// The value run `key` of `workflow` last published as event `name`
    /// (`set_event!`), decoded with the workflow's codec; waiting up to
    /// `timeout` for one to be published (`Duration::ZERO`: look once).
    /// `Ok(None)` if none was by then (or no run has the key).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use std::time::Duration;
    /// use resumable::{Client, MemoryJournal, WorkflowRef};
    ///
    /// const SHIP: WorkflowRef<(u64,), Result<(), String>> = WorkflowRef::named("ship");
    ///
    /// let client = Client::new(MemoryJournal::new());
    /// let status: Option<String> = client
    ///     .get_event(&SHIP, "ship-7", "status", Duration::from_millis(10))
    ///     .await?;
    /// assert_eq!(status, None); // nothing published
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_event<I, R, C, T>(
        &self,
        workflow: &WorkflowRef<I, R, C>,
        key: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<T>>
    where
        C: Codec,
        T: Journaled,
    {
        let _ = workflow;
        validate_lookup_key(key)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(record) = self.journal.get_event(key, name).await? {
                let slot = || Slot::Event(name.to_owned());
                return self.envelope.open::<C, T>(key, slot, &record).map(Some);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(self.poll_interval.min(Duration::from_millis(250)));
        }
    }

    /// Sends `value` to run `key` of `workflow` on `topic`, for the run's
    /// next `recv!("topic")` to take; returns whether the journal stored it.
    ///
    /// Messages wait until a receive takes them, oldest first per topic,
    /// each taken by exactly one receive. Sending again with an
    /// `idempotency_key` already sent to the run stores nothing (`false`):
    /// a sender that retries after an error or a crash delivers one message.
    /// A run waiting for a message, holding no worker, becomes due at once.
    /// [`Error::UnknownRun`] if no run has the key; a message to a finished
    /// run is kept but taken by nothing unless the run is resumed.
    ///
    /// The value is encoded with the workflow's codec; the receive decodes
    /// it as the type it expects (a message of another type stops the run
    /// with [`Error::Decode`] at that receive). From inside a workflow, send
    /// in a step, with the step's idempotency key: retried or replayed, it
    /// sends once.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{Client, MemoryJournal, WorkflowRef};
    ///
    /// const ORDER: WorkflowRef<(u64,), Result<String, String>> = WorkflowRef::named("order");
    ///
    /// let client = Client::new(MemoryJournal::new());
    /// client.submit(&ORDER, "order-7", (7,)).await?;
    /// assert!(client.send(&ORDER, "order-7", "approval", &true, "approve-7").await?);
    /// // Retried by the sender: stored once.
    /// assert!(!client.send(&ORDER, "order-7", "approval", &true, "approve-7").await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send<I, R, C, T>(
        &self,
        workflow: &WorkflowRef<I, R, C>,
        key: &str,
        topic: &str,
        value: &T,
        idempotency_key: &str,
    ) -> Result<bool>
    where
        C: Codec,
        T: serde::Serialize + ?Sized,
    {
        let _ = workflow;
        send::<C, T>(
            &*self.journal,
            &self.envelope,
            key,
            topic,
            value,
            idempotency_key,
        )
        .await
    }

    /// Run `key`'s outcome, decoded, if it has finished: `Ok(None)` while it
    /// is incomplete, [`Error::UnknownRun`] if no run has the key, and the
    /// lifecycle's errors ([`Error::Cancelled`], [`Error::DeadlineExceeded`],
    /// [`Error::DeadLettered`]) as [`wait`](Self::wait) returns them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{Client, MemoryJournal, WorkflowRef};
    ///
    /// const RESIZE: WorkflowRef<(u64,), Result<u32, String>> = WorkflowRef::named("resize");
    ///
    /// let client = Client::new(MemoryJournal::new());
    /// client.submit(&RESIZE, "resize-7", (7,)).await?;
    /// assert_eq!(client.outcome(&RESIZE, "resize-7").await?, None); // not run yet
    /// client.runs().cancel("resize-7").await?;
    /// assert!(matches!(
    ///     client.outcome(&RESIZE, "resize-7").await,
    ///     Err(resumable::Error::Cancelled { .. })
    /// ));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn outcome<I, R, C>(
        &self,
        workflow: &WorkflowRef<I, R, C>,
        key: &str,
    ) -> Result<Option<R>>
    where
        R: WorkflowResult + Journaled,
        C: Codec,
    {
        validate_lookup_key(key)?;
        let run = self
            .journal
            .load_run(key)
            .await?
            .ok_or_else(|| Error::UnknownRun {
                run: key.to_owned(),
            })?
            .run;
        if run.workflow != workflow.name {
            return Err(Error::WorkflowMismatch {
                run: key.to_owned(),
                journaled: run.workflow,
                requested: workflow.name.to_owned(),
            });
        }
        match run.state {
            RunState::Incomplete => Ok(None),
            _ => outcome_of::<R, C>(&self.envelope, &run).map(Some),
        }
    }

    /// [`submit`](Self::submit), then [`wait`](Self::wait).
    pub async fn run<I, R, C>(
        &self,
        workflow: &WorkflowRef<I, R, C>,
        key: impl Into<String>,
        input: I,
    ) -> Result<R>
    where
        I: Journaled,
        R: WorkflowResult + Journaled,
        C: Codec,
    {
        let key = key.into();
        self.submit(workflow, key.clone(), input).await?;
        self.wait(workflow, &key).await
    }

    /// The runs of this client's journal, to look at and steer: cancel,
    /// resume, retry now, fork, dead letters, purge.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use resumable::{Client, MemoryJournal};
    ///
    /// let client = Client::new(MemoryJournal::new());
    /// assert!(client.runs().info("report-3").await?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn runs(&self) -> Runs {
        Runs::new(self.journal.clone())
    }

    /// Where run `key` is, if it exists.
    pub async fn status(&self, key: &str) -> Result<Option<RunState>> {
        validate_lookup_key(key)?;
        Ok(self.journal.load_run(key).await?.map(|s| s.run.state))
    }
}

/// Returns when `events` says run `key` finished, or that events were
/// missed; never, if there are no events.
async fn finished(events: &mut Option<Subscription>, key: &str) {
    while let Some(subscription) = events {
        match subscription.next().await {
            Some(JournalEvent::Finished { key: k }) if k == key => return,
            Some(JournalEvent::Resync) => return,
            Some(_) => {}
            None => *events = None,
        }
    }
    std::future::pending().await
}

/// The longest topic or idempotency key a message may have, in bytes.
const MAX_MESSAGE_KEY: usize = 512;

/// Checks and seals a message for run `key`, and stores it in `journal`.
pub(crate) async fn send<C: Codec, T: serde::Serialize + ?Sized>(
    journal: &dyn Journal,
    envelope: &Envelope,
    key: &str,
    topic: &str,
    value: &T,
    idempotency_key: &str,
) -> Result<bool> {
    validate_lookup_key(key)?;
    let reason = if topic.is_empty() || topic.contains('#') || topic.contains('@') {
        Some("a topic must be a non-empty name without `#` or `@`")
    } else if idempotency_key.is_empty() {
        Some("an idempotency key must not be empty")
    } else if topic.len() > MAX_MESSAGE_KEY || idempotency_key.len() > MAX_MESSAGE_KEY {
        Some("a topic and an idempotency key must be at most 512 bytes")
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(Error::InvalidMessage {
            run: key.to_owned(),
            reason,
        });
    }
    let value = envelope.seal::<C, T>(key, || Slot::Message(topic.to_owned()), value)?;
    let message = NewMessage {
        run_key: key.to_owned(),
        topic: topic.to_owned(),
        value,
        idempotency_key: idempotency_key.to_owned(),
        at: Timestamp::now(),
    };
    journal.send_message(message).await
}
