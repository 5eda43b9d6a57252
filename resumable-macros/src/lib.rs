//! Procedural macros of [`resumable`](https://docs.rs/resumable): `#[resumable]`,
//! `step!` and `workflow!`. Use them through the `resumable` crate.
//!
//! The attribute does its work in three passes, each its own module:
//! `args` parses the attribute, `ast` parses and validates the function,
//! `steps` finds and checks every `step!` and computes the step structure,
//! and `expand` writes the code.

#![forbid(unsafe_code)]

mod args;
mod ast;
mod checks;
mod errors;
mod expand;
mod fingerprint;
mod steps;

use proc_macro::TokenStream;

/// Turns an `async fn` into a durable workflow.
///
/// The function (a free function or a `&self` method) must return
/// `Result<T, E>`. Its arguments other than the receiver are the run's
/// journaled **input**; the receiver and arguments marked `#[dep]` are
/// **dependencies**, supplied again by whoever resumes the run. Inside it,
/// each `step!("name", { ... })` is a recovery point whose output is
/// journaled before the code after it sees it.
///
/// Calling the function runs nothing: it returns an `Invocation` that
/// `Runtime::run` executes under a run key.
///
/// ```
/// use resumable::{resumable, step, MemoryJournal, Runtime};
///
/// #[resumable(name = "greet")]
/// async fn greet(name: String) -> Result<String, String> {
///     let greeting = step!("compose", { format!("hello {name}") });
///     Ok(greeting)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let rt = Runtime::new(MemoryJournal::new());
/// let out = rt.run("greet-1", greet("Ada".into())).await.unwrap();
/// assert_eq!(out, Ok("hello Ada".to_string()));
/// # }
/// ```
///
/// # Arguments
///
/// - `name = "..."`: the workflow's stable name (default: the function's),
///   stored with each run; keep it when renaming the function.
/// - `retry = <RetryPolicy>`: the default retry policy of its steps.
/// - `codec = <Type>`: a `Codec` instead of `Bincode`.
/// - `compatible = ["<fingerprint>", ...]`: fingerprints of earlier versions
///   whose runs this code can resume (the version mismatch error prints them).
/// - `crate = <path>`: where the `resumable` crate is, if renamed.
///
/// # Equivalent code without `#[resumable]`
///
/// For `async fn greet(&self, name: String) -> Result<String, E>` the macro
/// writes, roughly:
///
/// ```text
/// fn greet<'r>(&'r self, name: String) -> Invocation<'r, (String,), Result<String, E>, Bincode> {
///     // journals `(name,)`, then runs the body below with the decoded input
///     invocation(META, (name,), move |ctx, (name,)| Box::pin(Self::__resumable_body_greet(self, ctx, name)))
/// }
///
/// async fn __resumable_body_greet(&self, ctx: Ctx, name: String) -> Result<String, E> {
///     // each step!("compose", { body }) becomes:
///     let greeting = {
///         let mut step = Step::new(&ctx, &SITE /* "compose", file:line */, None); // id "compose#<n>"
///         loop {
///             if let Replayed(v) = step.prepare().await { break Ok(v) }      // journaled: decode, skip body
///             let result = step.attempt(async { Ok::<_, E>({ body }) }).await; // panics caught
///             match step.settle(result, is_terminal(&result)).await {          // journal, then decode
///                 Done(v) => break Ok(v),
///                 Retry => {}                                                  // after the backoff
///                 Failed(e) => break Err(e),
///             }
///         }
///     }?;
///     Ok(greeting)
/// }
///
/// // For a Completer: `workflow!(Self::greet)` calls this.
/// fn __resumable_workflow_greet() -> Workflow<Self, (String,), Result<String, E>, Bincode> { /* ... */ }
/// ```
#[proc_macro_attribute]
pub fn resumable(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::resumable(args.into(), item.into()).into()
}

/// A journaled recovery point: `step!("name", { body })`,
/// `step!("name", |step| { body })` (the closure form hands the body a
/// `StepContext` with its idempotency key), optionally with
/// `retry = <RetryPolicy>` and `timeout = <Duration>` (each attempt's time
/// limit: an attempt past it is dropped and counts as a failed attempt)
/// before the body.
///
/// Only meaningful inside a `#[resumable]` function, which rewrites it;
/// anywhere else it is a compile error. The body may `.await` and use `?`
/// (its error type is the workflow's); its value must be serializable.
#[proc_macro]
pub fn step(input: TokenStream) -> TokenStream {
    outside_workflow(input, "step!")
}

/// A durable sleep: `sleep!("name", duration)` waits `duration` (a
/// `std::time::Duration`), counted from when the run first reaches it.
///
/// The wake time is journaled like a step's output (as the step
/// `name#<occurrence>`): a run that crashes, or is taken by another
/// process, waits only what is left. A sleep due within a second waits in
/// place; a longer one, once no step of the run is executing, ends the
/// execution and gives the run back, holding no lease, no worker and no
/// memory: a `Completer`, in any process, resumes it when it is due, and
/// `Runtime::run` returns `Error::Sleeping`. A sleep of zero or less returns
/// at once and is still journaled. Cancelling a sleeping run cancels it at
/// once; a deadline that comes first ends it.
///
/// ```
/// use std::time::Duration;
/// use resumable::{resumable, sleep, step, MemoryJournal, Runtime};
///
/// #[resumable]
/// async fn remind(user: String) -> Result<String, String> {
///     let sent = step!("welcome", { format!("welcome, {user}") });
///     sleep!("pause", Duration::from_millis(10));
///     let reminder = step!("reminder", { format!("{sent}; still there?") });
///     Ok(reminder)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let rt = Runtime::new(MemoryJournal::new());
/// let out = rt.run("remind-ada", remind("ada".into())).await.unwrap();
/// assert_eq!(out.unwrap(), "welcome, ada; still there?");
/// # }
/// ```
///
/// Only meaningful inside a `#[resumable]` function, in its own code (not
/// in a step's body); anywhere else it is a compile error.
#[proc_macro]
pub fn sleep(input: TokenStream) -> TokenStream {
    outside_workflow(input, "sleep!")
}

/// A durable sleep until a time: `sleep_until!("name", time)` (a
/// `std::time::SystemTime`); as [`sleep!`](macro@sleep), with the wake time
/// given instead of computed. A time that has passed returns at once.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use resumable::{resumable, sleep_until, MemoryJournal, Runtime};
///
/// #[resumable]
/// async fn open_at(at: SystemTime) -> Result<(), String> {
///     sleep_until!("opening", at);
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let rt = Runtime::new(MemoryJournal::new());
/// let past = SystemTime::now() - Duration::from_secs(60);
/// rt.run("open-1", open_at(past)).await.unwrap().unwrap();
/// # }
/// ```
#[proc_macro]
pub fn sleep_until(input: TokenStream) -> TokenStream {
    outside_workflow(input, "sleep_until!")
}

/// Publishes a value for others to read while the run goes on:
/// `set_event!("status", value)` replaces the run's event `status`, which a
/// `Client` reads with `get_event` (waiting for it if asked).
///
/// The publication is journaled as a step (`set_event:status#<n>`): a
/// replay does not publish an earlier value again. Any number of call sites
/// may publish one event; the latest value wins. The value must be
/// serializable, and is sealed with the workflow's codec.
///
/// ```
/// use std::time::Duration;
/// use resumable::{resumable, set_event, step, Client, MemoryJournal, Runtime, WorkflowRef};
///
/// #[resumable(name = "ship")]
/// async fn ship(order: u64) -> Result<(), String> {
///     set_event!("status", "packing".to_string());
///     step!("pack", { order });
///     set_event!("status", "shipped".to_string());
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// let journal = std::sync::Arc::new(MemoryJournal::new());
/// Runtime::new(journal.clone()).run("ship-7", ship(7)).await?.unwrap();
/// const SHIP: WorkflowRef<(u64,), Result<(), String>> = WorkflowRef::named("ship");
/// let status: Option<String> = Client::new(journal)
///     .get_event(&SHIP, "ship-7", "status", Duration::ZERO)
///     .await?;
/// assert_eq!(status.as_deref(), Some("shipped"));
/// # Ok(())
/// # }
/// ```
#[proc_macro]
pub fn set_event(input: TokenStream) -> TokenStream {
    outside_workflow(input, "set_event!")
}

/// Receives a message sent to the run: `recv!("approval")` waits for the
/// next message on topic `approval`; `recv!("approval", timeout = d)` waits
/// at most `d` (a `std::time::Duration`, counted from when the run first
/// reaches it) and gives `Option<T>` (`None` if none came in time). The
/// message's type is the one the code expects (annotate the binding);
/// others send with `Client::send(&workflow, run_key, "approval", &value,
/// idempotency_key)`.
///
/// A message sent before the run waits for it is kept; each is taken by
/// exactly one receive, oldest first, and journaled as it is taken
/// (`recv:approval#<occurrence>`), so a replay returns the same message and
/// never takes another. A sender that retries with the same idempotency key
/// delivers one message. While no message waits, the receive waits in place
/// for a second, then the execution ends and the run is given back, holding
/// no lease and no worker, until a message is sent to it or its time limit
/// passes: a `Completer`, in any process, resumes it then, and
/// `Runtime::run` returns `Error::WaitingForMessage`. The time limit is
/// journaled too: a resumed run does not restart the clock.
///
/// ```
/// use std::time::Duration;
/// use resumable::{recv, resumable, step, MemoryJournal, Runtime, WorkflowRef};
///
/// #[resumable(name = "refund")]
/// async fn refund(order: u64) -> Result<String, String> {
///     let approved: Option<bool> = recv!("approval", timeout = Duration::from_secs(3600));
///     let done = match approved {
///         Some(true) => step!("pay", { format!("refunded order {order}") }),
///         _ => "refused".to_string(),
///     };
///     Ok(done)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// const REFUND: WorkflowRef<(u64,), Result<String, String>> = WorkflowRef::named("refund");
/// let rt = Runtime::new(MemoryJournal::new());
/// let client = rt.client();
/// client.submit(&REFUND, "refund-7", (7,)).await?;
/// client.send(&REFUND, "refund-7", "approval", &true, "approve-7").await?;
/// let out = rt.run("refund-7", refund(7)).await?;
/// assert_eq!(out.unwrap(), "refunded order 7");
/// # Ok(())
/// # }
/// ```
///
/// Only meaningful inside a `#[resumable]` function, in its own code (not
/// in a step's body or a closure); anywhere else it is a compile error.
#[proc_macro]
pub fn recv(input: TokenStream) -> TokenStream {
    outside_workflow(input, "recv!")
}

/// Starts a child workflow and waits for its outcome:
/// `child!("resize", RESIZE, (image, 256))` runs the workflow `RESIZE` (a
/// `WorkflowRef`) with that input as a run of its own, and evaluates to its
/// return value. The child's key is the parent's key followed by
/// `/child:resize#<occurrence>`, unless given with `key = ..`.
///
/// The start is journaled (`child:resize#<n>`) in the same write that
/// creates the child run: a parent that crashes after starting a child
/// adopts it when it resumes, and never starts a second one. The child runs
/// wherever a `Completer` has its workflow registered (this process or
/// another). The parent waits as for a message, holding no lease once it is
/// given back, and is woken when the child finishes: the journal sends it the
/// child's outcome, which it records (`child-result:resize#<n>`), so a replay
/// does not need the child's run any more. A child that ends cancelled or
/// past its deadline stops the parent with `Error::ChildEnded`.
/// `Runs::cancel` on a parent cancels its children too.
///
/// ```
/// use resumable::{child, resumable, step, Completer, MemoryJournal, Runtime, WorkflowRef, workflow};
///
/// #[resumable(name = "square")]
/// async fn square(n: u64) -> Result<u64, String> {
///     Ok(step!("multiply", { n * n }))
/// }
///
/// const SQUARE: WorkflowRef<(u64,), Result<u64, String>> = WorkflowRef::named("square");
///
/// #[resumable(name = "sum_of_squares")]
/// async fn sum_of_squares(a: u64, b: u64) -> Result<u64, String> {
///     let x = child!("a", SQUARE, (a,))?;
///     let y = child!("b", SQUARE, (b,))?;
///     Ok(x + y)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// let rt = Runtime::new(MemoryJournal::new());
/// let completer = Completer::new(&rt)
///     .register(workflow!(square), ())?
///     .register(workflow!(sum_of_squares), ())?;
/// rt.submit("sum-1", sum_of_squares(3, 4)).await?;
/// completer.run_until_idle().await?;
/// const SUM: WorkflowRef<(u64, u64), Result<u64, String>> = WorkflowRef::named("sum_of_squares");
/// assert_eq!(rt.client().outcome(&SUM, "sum-1").await?, Some(Ok(25)));
/// # Ok(())
/// # }
/// ```
///
/// Only meaningful inside a `#[resumable]` function, in its own code (not
/// in a step's body or a closure); anywhere else it is a compile error.
#[proc_macro]
pub fn child(input: TokenStream) -> TokenStream {
    outside_workflow(input, "child!")
}

/// A durable race: `race!("name", async { .. }, async { .. })` runs the
/// branches (`async` blocks, with steps, sleeps, receives or children in
/// them) concurrently and evaluates to the value of the first to finish.
/// Every branch gives the same type (wrap them in an enum of your own).
///
/// Which branch won is journaled (`race:name#<n>`): a replay runs only the
/// winner's branch, replaying what it recorded, whatever would finish first
/// this time. The losers are dropped when the winner finishes: a step
/// executing in a losing branch is abandoned (its attempt may have had its
/// effect: steps are idempotent), and what a losing branch had journaled —
/// a step, a sleep, a message it took — is never replayed or given back.
///
/// ```
/// use std::time::Duration;
/// use resumable::{race, recv, resumable, sleep, MemoryJournal, Runtime, WorkflowRef};
///
/// #[resumable(name = "checkout")]
/// async fn checkout(order: u64) -> Result<String, String> {
///     let payment = race!(
///         "payment_or_timeout",
///         async {
///             let cents: u64 = recv!("paid");
///             format!("order {order}: paid {cents}")
///         },
///         async {
///             sleep!("payment_window", Duration::from_secs(24 * 3600));
///             format!("order {order}: not paid in time")
///         }
///     );
///     Ok(payment)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> resumable::Result<()> {
/// const CHECKOUT: WorkflowRef<(u64,), Result<String, String>> = WorkflowRef::named("checkout");
/// let rt = Runtime::new(MemoryJournal::new());
/// rt.client().submit(&CHECKOUT, "checkout-1", (1,)).await?;
/// rt.client().send(&CHECKOUT, "checkout-1", "paid", &4200u64, "webhook-1").await?;
/// let out = rt.run("checkout-1", checkout(1)).await?;
/// assert_eq!(out.unwrap(), "order 1: paid 4200");
/// # Ok(())
/// # }
/// ```
///
/// Only meaningful inside a `#[resumable]` function, in its own code (not
/// in a step's body or a closure); anywhere else it is a compile error.
#[proc_macro]
pub fn race(input: TokenStream) -> TokenStream {
    outside_workflow(input, "race!")
}

/// What `step!`, `sleep!` and `sleep_until!` expand to where `#[resumable]`
/// did not rewrite them: nothing for the `@used` marker it leaves behind
/// (so that the user's `use resumable::…;` counts as used), else an error.
fn outside_workflow(input: TokenStream, what: &str) -> TokenStream {
    if input.to_string().replace(' ', "") == "@used" {
        return TokenStream::new();
    }
    let message = format!(
        "`{what}` can only be used inside a `#[resumable]` async function: add `#[resumable]` to the function that contains it"
    );
    quote::quote!(::core::compile_error!(#message)).into()
}

/// The resumable form of a `#[resumable]` function, for registering with a
/// completer: `workflow!(App::upload_profile_image)` or `workflow!(transfer)`.
///
/// ```
/// use resumable::{resumable, workflow, Completer, MemoryJournal, Runtime};
///
/// #[resumable]
/// async fn noop() -> Result<(), String> {
///     Ok(())
/// }
///
/// let rt = Runtime::new(MemoryJournal::new());
/// let completer = Completer::new(&rt).register(workflow!(noop), ()).unwrap();
/// // Its identity: the module path and the function's name.
/// assert!(workflow!(noop).meta().name.ends_with("::noop"));
/// ```
#[proc_macro]
pub fn workflow(input: TokenStream) -> TokenStream {
    expand::workflow_ref(input.into()).into()
}
