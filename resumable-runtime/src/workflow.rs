//! What `#[resumable]` generates a workflow into: its description
//! ([`WorkflowMeta`]), one call of it ([`Invocation`]), and the resumable form
//! a completer registers ([`Workflow`]).

use std::fmt::{self, Display};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Bincode, Codec};
use crate::context::Ctx;
use crate::error::Location;
use crate::journal::Timestamp;
use crate::retry::{Classify, RetryPolicy};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A workflow's identity and settings, fixed at compile time.
#[derive(Debug, Clone, Copy)]
pub struct WorkflowMeta {
    /// Stable name, stored with each run.
    pub name: &'static str,
    /// Fingerprint of the step structure, input and output types, and codec.
    pub fingerprint: u64,
    /// Fingerprints of earlier versions this code declares it can resume.
    pub compatible: &'static [u64],
    /// Default retry policy of its steps, if the attribute set one.
    pub retry: Option<RetryPolicy>,
    /// Where the function is written.
    pub location: Location,
}

impl WorkflowMeta {
    /// Whether this code may resume a run started with `fingerprint`: its
    /// own, one it declares compatible, or a run a client submitted without
    /// the code ([`UNPINNED`](crate::journal::UNPINNED)), which it then pins.
    pub fn accepts(&self, fingerprint: u64) -> bool {
        fingerprint == self.fingerprint
            || fingerprint == crate::journal::UNPINNED
            || self.compatible.contains(&fingerprint)
    }
}

/// The return type of a `#[resumable]` function: a `Result` whose both sides
/// the journal can store.
#[diagnostic::on_unimplemented(
    message = "a #[resumable] function must return `Result<T, E>`, not `{Self}`",
    label = "the run's outcome is journaled as a `Result`",
    note = "a step can fail, and its error is the workflow's error type `E`"
)]
pub trait WorkflowResult: Send + 'static {
    /// The success type.
    type Ok;
    /// The error type, also the error type of every step body.
    type Err;
    /// Whether this is a success.
    fn is_ok(&self) -> bool;
}

impl<T: Send + 'static, E: Send + 'static> WorkflowResult for Result<T, E> {
    type Ok = T;
    type Err = E;
    fn is_ok(&self) -> bool {
        Result::is_ok(self)
    }
}

/// A value the journal can store: the run's input, a step's output, the outcome.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be journaled",
    label = "this value is written to the journal",
    note = "journaled values must implement `serde::Serialize` and `serde::de::DeserializeOwned` (and `Send + 'static`)"
)]
pub trait Journaled: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Journaled for T {}

/// An error type a step can fail with: shown in the run's status, journaled
/// when it becomes the run's outcome.
#[diagnostic::on_unimplemented(
    message = "the workflow error type `{Self}` must implement `Display`, `Serialize` and `DeserializeOwned`",
    label = "the run's terminal error is journaled and shown as its last error"
)]
pub trait WorkflowError: Display + Journaled {}
impl<T: Display + Journaled> WorkflowError for T {}

/// One call of a `#[resumable]` function: its input and how to start its
/// body. Nothing runs until it is given to [`Runtime::run`](crate::Runtime::run)
/// with a run key.
#[must_use = "a workflow does nothing until it is given to Runtime::run"]
pub struct Invocation<'a, I, R, C = Bincode> {
    pub(crate) meta: WorkflowMeta,
    pub(crate) input: I,
    pub(crate) deadline: Option<Timestamp>,
    pub(crate) start: Box<dyn FnOnce(Ctx, I) -> BoxFuture<'a, R> + Send + 'a>,
    _codec: PhantomData<fn() -> C>,
}

impl<I, R, C> Invocation<'_, I, R, C> {
    /// The workflow's description.
    pub fn meta(&self) -> &WorkflowMeta {
        &self.meta
    }

    /// The input this call will journal.
    pub fn input(&self) -> &I {
        &self.input
    }

    /// Gives a new run a time limit, from now: past it, the run ends with
    /// the stable outcome [`Error::DeadlineExceeded`](crate::Error::DeadlineExceeded)
    /// at its next step boundary (a step already executing finishes), and
    /// no worker takes it again. The limit is journaled when the run is
    /// created; calls that find the run existing keep the journaled one.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use std::time::Duration;
    /// use resumable::{resumable, step, MemoryJournal, Runtime};
    ///
    /// #[resumable]
    /// async fn greet(name: String) -> Result<String, String> {
    ///     let greeting = step!("greet", { format!("hello {name}") });
    ///     Ok(greeting)
    /// }
    ///
    /// let rt = Runtime::new(MemoryJournal::new());
    /// let call = greet("ada".into()).time_limit(Duration::from_secs(60));
    /// assert_eq!(rt.run("greet-ada", call).await?, Ok("hello ada".to_string()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn time_limit(self, limit: std::time::Duration) -> Self {
        self.deadline_at(std::time::SystemTime::now() + limit)
    }

    /// Gives a new run a deadline, as [`time_limit`](Self::time_limit) does.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> resumable::Result<()> {
    /// use std::time::{Duration, SystemTime};
    /// use resumable::{resumable, step, MemoryJournal, Runtime};
    ///
    /// #[resumable]
    /// async fn reply(ticket: u32) -> Result<u32, String> {
    ///     let answered = step!("answer", { ticket });
    ///     Ok(answered)
    /// }
    ///
    /// let rt = Runtime::new(MemoryJournal::new());
    /// // Answered by the end of the hour, or not at all.
    /// let call = reply(9).deadline_at(SystemTime::now() + Duration::from_secs(3600));
    /// rt.submit("reply-9", call).await?;
    /// assert!(rt.run_info("reply-9").await?.unwrap().deadline.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn deadline_at(mut self, deadline: std::time::SystemTime) -> Self {
        self.deadline = Some(Timestamp::from(deadline));
        self
    }
}

impl<I, R, C> fmt::Debug for Invocation<'_, I, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invocation")
            .field("workflow", &self.meta.name)
            .finish_non_exhaustive()
    }
}

/// A `#[resumable]` function in the form a completer can resume: given its
/// dependencies `D` and a journaled input, it starts the body.
/// Get one with [`workflow!`](../resumable/macro.workflow.html).
pub struct Workflow<D, I, R, C = Bincode> {
    pub(crate) meta: WorkflowMeta,
    pub(crate) start: for<'d> fn(&'d D, Ctx, I) -> BoxFuture<'d, R>,
    _codec: PhantomData<fn() -> C>,
}

impl<D, I, R, C> Clone for Workflow<D, I, R, C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D, I, R, C> Copy for Workflow<D, I, R, C> {}

impl<D, I, R, C> fmt::Debug for Workflow<D, I, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workflow")
            .field("meta", &self.meta)
            .finish()
    }
}

impl<D: Sync, I: Send + 'static, R: 'static, C> Workflow<D, I, R, C> {
    /// The workflow's description.
    pub fn meta(&self) -> &WorkflowMeta {
        &self.meta
    }

    /// A call of this workflow with dependencies `deps` and raw `input` (the
    /// tuple of its journaled arguments).
    pub fn invoke<'a>(&self, deps: &'a D, input: I) -> Invocation<'a, I, R, C> {
        let start = self.start;
        Invocation {
            meta: self.meta,
            input,
            deadline: None,
            start: Box::new(move |ctx, input| start(deps, ctx, input)),
            _codec: PhantomData,
        }
    }
}

/// Builds an [`Invocation`]; used by generated code.
#[doc(hidden)]
pub fn invocation<'a, I, R, C, F>(meta: WorkflowMeta, input: I, start: F) -> Invocation<'a, I, R, C>
where
    F: FnOnce(Ctx, I) -> BoxFuture<'a, R> + Send + 'a,
    C: Codec,
{
    Invocation {
        meta,
        input,
        deadline: None,
        start: Box::new(start),
        _codec: PhantomData,
    }
}

/// Builds a [`Workflow`]; used by generated code.
#[doc(hidden)]
pub fn workflow<D, I, R, C: Codec>(
    meta: WorkflowMeta,
    start: for<'d> fn(&'d D, Ctx, I) -> BoxFuture<'d, R>,
) -> Workflow<D, I, R, C> {
    Workflow {
        meta,
        start,
        _codec: PhantomData,
    }
}

/// Picks [`Classify::is_terminal`] when the error type implements it, and
/// "retryable" otherwise (autoref specialisation; used by generated code,
/// where the error type is concrete).
#[doc(hidden)]
pub struct Classifier<'a, E>(pub &'a E);

#[doc(hidden)]
pub trait ViaClassify {
    fn is_terminal(&self) -> bool;
}
impl<E: Classify> ViaClassify for Classifier<'_, E> {
    fn is_terminal(&self) -> bool {
        self.0.is_terminal()
    }
}

#[doc(hidden)]
pub trait ViaDefault {
    fn is_terminal(&self) -> bool;
}
impl<E> ViaDefault for &Classifier<'_, E> {
    fn is_terminal(&self) -> bool {
        false
    }
}

/// Compile-time checks placed by generated code on the user's spans.
#[doc(hidden)]
pub fn assert_journaled<T: Journaled>() {}
#[doc(hidden)]
/// (The error type is checked where the body builds its `ErrorCodec`.)
pub fn assert_workflow_result<R: WorkflowResult>()
where
    R::Ok: Journaled,
{
}

/// A dependency taken by value: each resumed run gets its own clone.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "dependency `{Self}` is taken by value, so it must be `Clone + Send + Sync + 'static`",
    label = "a completer gives each run it resumes its own copy of this dependency",
    note = "take it by reference (`&{Self}`), or wrap it in an `Arc`"
)]
pub trait OwnedDependency: Clone + Send + Sync + 'static {}
impl<T: Clone + Send + Sync + 'static> OwnedDependency for T {}

/// A run's own copy of a dependency taken by value.
#[doc(hidden)]
pub fn clone_dependency<T: OwnedDependency>(dependency: &T) -> T {
    dependency.clone()
}

/// Warns, at the step, when a step's output is a `Result`, whatever its
/// error type: almost always a forgotten `?` inside the body, which would
/// journal an `Err` as the step's success, never retried (autoref
/// specialisation on the concrete types; used by generated code).
#[doc(hidden)]
pub struct OutputCheck<T, E>(std::marker::PhantomData<fn(T, E)>);

impl<T, E> OutputCheck<T, E> {
    #[doc(hidden)]
    pub fn new(_output: &T) -> Self {
        OutputCheck(std::marker::PhantomData)
    }
}

impl<X, F, E> OutputCheck<Result<X, F>, E> {
    #[doc(hidden)]
    #[deprecated(
        note = "this step's output is a `Result`: an `Err` would be journaled as the step's success, replayed as it is and never retried. Add `?` inside the step body so that an error fails the step and is retried (convert it into the workflow's error type with `map_err` if needed); if journaling the `Result` is intended, wrap it in a type of your own, or put `#[allow(deprecated)]` on the statement"
    )]
    pub fn check(&self) {}
}

#[doc(hidden)]
pub trait OutputCheckFallback {
    fn check(&self) {}
}
impl<T, E> OutputCheckFallback for OutputCheck<T, E> {}
