//! Durable races (`race!`): branches run concurrently, the first to finish
//! wins, and which one won is journaled (`race:<name>#<n>`), so a replay
//! runs the recorded winner's branch only, whatever would finish first this
//! time.
//!
//! The losers are dropped when the winner finishes: a step executing in a
//! losing branch is abandoned (its attempt may or may not have had its
//! effect), and what a losing branch had journaled — a step, a sleep, a
//! message it took — stays in the journal but is never replayed or given
//! back.

use crate::codec::Codec;
use crate::context::Ctx;
use crate::error::Error;
use crate::journal::StepState;
use crate::step::{ErrorCodec, Prepared, Settled, Step, StepSite};
use crate::workflow::{BoxFuture, WorkflowError};

/// One race at `site` over `branches` (each with the scope its journaled
/// calls are numbered in); used by generated code. Returns the winner's
/// value.
#[doc(hidden)]
pub async fn race<C: Codec, T, E: WorkflowError>(
    ctx: &Ctx,
    site: &'static StepSite,
    branches: Vec<(Ctx, BoxFuture<'_, T>)>,
    errors: &ErrorCodec<E>,
) -> T {
    let mut step = Step::new(ctx, site, None, errors);
    let run = step.run();
    let (scopes, mut futures): (Vec<Ctx>, Vec<BoxFuture<'_, T>>) = branches.into_iter().unzip();
    if let Some(record) = run.take_recorded(&step.id()) {
        let winner = match record.state {
            StepState::Completed => run
                .envelope
                .open::<C, u32>(
                    &run.run_key,
                    || step.slot(),
                    record.output.as_deref().unwrap_or_default(),
                )
                .map(|w| w as usize),
            _ => Err(Error::NonDeterminism {
                run: run.run_key.clone(),
                expected: format!("{} (a step that failed)", step.id()),
                found: format!("{} (a race)", step.id()),
                location: site.location,
            }),
        };
        let winner = match winner {
            Ok(winner) if winner < futures.len() => winner,
            Ok(winner) => {
                let err = Error::NonDeterminism {
                    run: run.run_key.clone(),
                    expected: format!("{} won by its branch {}", step.id(), winner + 1),
                    found: format!("{} with {} branches", step.id(), futures.len()),
                    location: site.location,
                };
                return step.abort(err).await;
            }
            Err(err) => return step.abort(err).await,
        };
        forget_losers(&scopes, winner);
        return futures.swap_remove(winner).await;
    }
    let (value, winner, losers) = futures_util::future::select_all(futures).await;
    drop(losers);
    forget_losers(&scopes, winner);
    match step.prepare::<C, u32>().await {
        Prepared::Attempt => match step.settle::<C, u32>(Ok(Ok(winner as u32)), false).await {
            Settled::Done(_) => value,
            // A value always settles as done (or aborts the run).
            Settled::Retry | Settled::Failed(_) => std::future::pending().await,
        },
        // Only this call records the race's id.
        Prepared::Replayed(_) => value,
    }
}

/// The journaled calls of every branch but `winner` will not replay.
fn forget_losers(scopes: &[Ctx], winner: usize) {
    for (i, scope) in scopes.iter().enumerate() {
        if i != winner {
            scope.run.forget_scope(scope.scope_path());
        }
    }
}
