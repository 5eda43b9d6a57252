//! Driving one execution of a workflow body: polling it, stopping it when a
//! step aborts the run or the replay stalls, and keeping its lease alive.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;

use crate::context::{RunCtx, panic_message};
use crate::error::{Error, Escaped, Result};
use crate::journal::Timestamp;
use crate::workflow::BoxFuture;

/// How long a durable wait keeps its worker by default
/// (`RuntimeBuilder::hold_waits`): a sleep due within this is slept in
/// place; a longer one, once nothing else goes on, ends the execution and
/// gives the run back until it is due. A receive waits this long in place
/// for its message before it gives the run back the same way.
pub(crate) const HOLD: Duration = Duration::from_secs(1);

/// Polls the workflow body, and stops it as soon as a step aborts the run or
/// the replay stalls, or it only waits in durable waits that no longer
/// keep their worker (see `RuntimeBuilder::hold_waits`). A panic outside steps stops it too.
pub(crate) struct Drive<'a, 'r, R> {
    body: BoxFuture<'a, R>,
    run: &'r RunCtx,
    /// The waker the body is polled with: notes whether the body was woken
    /// since the last stall check.
    body_waker: Arc<BodyWaker>,
    waker: Waker,
    stall_timeout: Duration,
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

#[derive(Default)]
struct BodyWaker {
    woken: AtomicBool,
    driver: AtomicWaker,
}

impl Wake for BodyWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.driver.wake();
    }
}

impl<'a, 'r, R> Drive<'a, 'r, R> {
    pub(crate) fn new(body: BoxFuture<'a, R>, run: &'r RunCtx, stall_timeout: Duration) -> Self {
        let body_waker = Arc::new(BodyWaker::default());
        Drive {
            body,
            run,
            waker: Waker::from(body_waker.clone()),
            body_waker,
            stall_timeout,
            stalled_since: None,
        }
    }
}

impl<R> Future for Drive<'_, '_, R> {
    type Output = Result<R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        this.run.register_driver(cx.waker());
        this.body_waker.driver.register(cx.waker());
        if let Some(err) = this.run.take_abort() {
            return Poll::Ready(Err(err));
        }
        let mut body_cx = Context::from_waker(&this.waker);
        let polled =
            std::panic::catch_unwind(AssertUnwindSafe(|| this.body.as_mut().poll(&mut body_cx)));
        // A step's abort wins over whatever the body did in the same poll:
        // an infrastructure error is never hidden behind an outcome.
        if let Some(err) = this.run.take_abort() {
            return Poll::Ready(Err(err));
        }
        match polled {
            Err(payload) => Poll::Ready(Err(Error::WorkflowPanicked {
                run: this.run.run_key.clone(),
                message: panic_message(&*payload),
            })),
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Ok(Poll::Pending) => match this.run.take_stop() {
                Some(reason) => Poll::Ready(Err(reason)),
                None => match this.run.suspension() {
                    Some(sleeping) => Poll::Ready(Err(sleeping)),
                    None => this.check_stall(cx),
                },
            },
        }
    }
}

impl<R> Drive<'_, '_, R> {
    /// On replay, a step the journal did not record waits until every
    /// recorded step is replayed. If nothing is executing and the body is not
    /// woken for the whole stall timeout, no recorded step is coming: the
    /// code took another path than the one journaled.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<Result<R>> {
        // Any wake of the body since the last check is progress (a branch
        // awaiting a channel or a timer): the stall clock starts again.
        let woken = self.body_waker.woken.swap(false, Ordering::AcqRel);
        let Some(err) = self.run.stall() else {
            self.stalled_since = None;
            return Poll::Pending;
        };
        if woken {
            self.stalled_since = None;
            return Poll::Pending;
        }
        let timeout = self.stall_timeout;
        let timer = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Renews the run's lease every third of its duration until dropped. A lost
/// lease aborts the run; so does a lease that expired while the journal could
/// not be reached, since another worker may take the run from then on.
pub(crate) struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    pub(crate) fn start(run: Arc<RunCtx>, duration: Duration) -> Self {
        Heartbeat(tokio::spawn(async move {
            loop {
                tokio::time::sleep(duration / 3).await;
                let lease = run.lease();
                let renewed = run
                    .journal
                    .renew(&lease, Timestamp::now().after(duration))
                    .await;
                match renewed {
                    Ok(renewed) => run.set_lease(renewed),
                    Err(err @ Error::LeaseLost { .. }) => {
                        tracing::warn!(run = %Escaped(&lease.run_key), epoch = lease.epoch, "lease lost: another worker took the run");
                        return run.abort(err);
                    }
                    Err(_) if lease.expires_at <= Timestamp::now() => {
                        return run.abort(Error::LeaseLost {
                            run: lease.run_key.clone(),
                            epoch: lease.epoch,
                        });
                    }
                    Err(err) => {
                        tracing::warn!(run = %Escaped(&lease.run_key), error = %err, "lease renewal failed; retrying")
                    }
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}
