//! What [`Runtime::run_info`](crate::Runtime::run_info) reports about a run and its steps.

use std::time::SystemTime;

use crate::journal::{RunSnapshot, RunState, StepState, Timestamp};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// A worker holds its lease and is executing it.
    Running,
    /// A step is waiting out a retry delay, or the run stopped with an error
    /// and waits out its backoff before a completer takes it again.
    WaitingToRetry,
    /// Incomplete and not executing: new, interrupted, or its worker died.
    /// A completer takes it (once its lease, if any, expires).
    Pending,
    /// Finished with `Ok`.
    Completed,
    /// Finished with a terminal `Err`.
    Failed,
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// Its output is journaled; it never runs again.
    Completed,
    /// It failed for good (terminal, or out of attempts); the error is
    /// journaled and it never runs again.
    Failed,
    /// An attempt failed; no output yet.
    Retrying,
}

/// A run as [`Runtime::run_info`](crate::Runtime::run_info) reports it.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The run key.
    pub key: String,
    /// The workflow's name.
    pub workflow: String,
    /// Where it is.
    pub status: RunStatus,
    /// How many times a worker took it.
    pub executions: u32,
    /// The error that last interrupted it.
    pub last_error: Option<String>,
    /// The worker holding its lease, if any.
    pub lease_owner: Option<String>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it or one of its steps last changed (for a run listed without
    /// its steps, when the run itself last changed: leased, given back, finished).
    pub updated_at: SystemTime,
    /// Its steps, ordered by completion, then retrying ones.
    pub steps: Vec<StepInfo>,
}

/// A step as [`Runtime::run_info`](crate::Runtime::run_info) reports it.
#[derive(Debug, Clone)]
pub struct StepInfo {
    /// `name#occurrence`.
    pub id: String,
    /// Where it is.
    pub status: StepStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
    /// When its first attempt started.
    pub started_at: SystemTime,
    /// When it was recorded (completed steps) or last failed.
    pub updated_at: SystemTime,
    /// When the next attempt is due, while retrying.
    pub retry_at: Option<SystemTime>,
}

impl RunInfo {
    pub(crate) fn from_snapshot(snapshot: RunSnapshot) -> Self {
        let RunSnapshot { run, mut steps } = snapshot;
        let now = Timestamp::now();
        let step_waiting = steps
            .iter()
            .any(|s| s.state == StepState::Retrying && s.retry_at.is_some_and(|t| t > now));
        let status = match run.state {
            RunState::Completed => RunStatus::Completed,
            RunState::Failed => RunStatus::Failed,
            RunState::Incomplete if run.is_leased_at(now) && step_waiting => {
                RunStatus::WaitingToRetry
            }
            RunState::Incomplete if run.is_leased_at(now) => RunStatus::Running,
            RunState::Incomplete if run.wake_at > now => RunStatus::WaitingToRetry,
            RunState::Incomplete => RunStatus::Pending,
        };
        steps.sort_by_key(|s| (s.seq.is_none(), s.seq, s.started_at));
        RunInfo {
            key: run.key,
            workflow: run.workflow,
            status,
            executions: run.executions,
            last_error: run.last_error,
            lease_owner: run
                .lease_owner
                .filter(|_| run.lease_expires_at.is_some_and(|t| t > now)),
            created_at: run.created_at.to_system_time(),
            // The run's row is not rewritten per step: its latest change may be a step's.
            updated_at: steps
                .iter()
                .map(|s| s.updated_at)
                .fold(run.updated_at, Timestamp::max)
                .to_system_time(),
            steps: steps
                .into_iter()
                .map(|s| StepInfo {
                    id: s.step_id,
                    status: match s.state {
                        StepState::Completed => StepStatus::Completed,
                        StepState::Failed => StepStatus::Failed,
                        StepState::Retrying => StepStatus::Retrying,
                    },
                    attempts: s.attempts,
                    last_error: s.last_error,
                    started_at: s.started_at.to_system_time(),
                    updated_at: s.updated_at.to_system_time(),
                    retry_at: s.retry_at.map(Timestamp::to_system_time),
                })
                .collect(),
        }
    }

    /// The step with id `id` (`name#occurrence`).
    pub fn step(&self, id: &str) -> Option<&StepInfo> {
        self.steps.iter().find(|s| s.id == id)
    }
}
