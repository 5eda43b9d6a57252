//! Retry policies for steps, and how a step error says it is not worth retrying.

use std::time::Duration;

/// How often and how patiently a failing step is retried.
///
/// `max_attempts` counts the first attempt: `max_attempts(1)` never retries.
/// The delay after the n-th failed attempt is `initial_delay * multiplier^(n-1)`,
/// capped at `max_delay`, then reduced by up to `jitter` (a fraction) at random
/// so that many failing runs do not retry in lockstep. No delay follows the
/// last attempt.
///
/// Every constructor is `const`, so a policy can be written in an attribute:
///
/// ```
/// use resumable::RetryPolicy;
/// use std::time::Duration;
/// const PATIENT: RetryPolicy = RetryPolicy::exponential(10)
///     .initial_delay(Duration::from_millis(50))
///     .max_delay(Duration::from_secs(5));
/// assert_eq!(PATIENT.delay_before(2, 0.0), Duration::from_millis(100));
/// assert_eq!(RetryPolicy::never().max_attempts, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay after the first failed attempt.
    pub initial_delay: Duration,
    /// Growth of the delay per further failed attempt.
    pub multiplier: f64,
    /// Upper bound of any delay.
    pub max_delay: Duration,
    /// Fraction (0 to 1) of each delay that is randomised away.
    pub jitter: f64,
}

impl RetryPolicy {
    /// The default: 3 attempts, 100 ms doubling up to 10 s, 50 % jitter.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        initial_delay: Duration::from_millis(100),
        multiplier: 2.0,
        max_delay: Duration::from_secs(10),
        jitter: 0.5,
    };

    /// Exponential backoff with the default delays and `max_attempts` attempts.
    pub const fn exponential(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: if max_attempts == 0 { 1 } else { max_attempts },
            ..Self::DEFAULT
        }
    }

    /// One attempt, no retry.
    pub const fn never() -> Self {
        Self::exponential(1)
    }

    /// Sets the delay after the first failed attempt.
    pub const fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets the cap on every delay.
    pub const fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets the growth factor of the delay.
    pub const fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets the randomised fraction of each delay (clamped to 0..=1).
    pub const fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// Whether another attempt follows `failed_attempts` failures.
    pub const fn allows_retry(&self, failed_attempts: u32) -> bool {
        failed_attempts < self.max_attempts
    }

    /// The delay before attempt `failed_attempts + 1`, for a random `unit` in `0..1`.
    pub fn delay_before(&self, failed_attempts: u32, unit: f64) -> Duration {
        let exponent = failed_attempts.saturating_sub(1).min(64) as i32;
        let base = self.initial_delay.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let capped = base.min(self.max_delay.as_secs_f64());
        let jittered = capped * (1.0 - self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0));
        Duration::try_from_secs_f64(jittered.max(0.0)).unwrap_or(self.max_delay)
    }

    /// [`delay_before`](Self::delay_before) with a fresh random unit.
    pub fn jittered_delay(&self, failed_attempts: u32) -> Duration {
        self.delay_before(failed_attempts, fastrand::f64())
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Lets a workflow's error type say which failures are terminal.
///
/// Step errors are retryable unless the error type implements this trait and
/// [`is_terminal`](Classify::is_terminal) says otherwise. A terminal error is
/// not retried: it ends the step, and, returned from the workflow, becomes the
/// run's stable outcome.
///
/// ```
/// #[derive(Debug)]
/// enum UploadError { Unavailable, TooLarge }
/// impl resumable::Classify for UploadError {
///     fn is_terminal(&self) -> bool {
///         matches!(self, UploadError::TooLarge)
///     }
/// }
/// ```
pub trait Classify {
    /// `true` if retrying cannot help.
    fn is_terminal(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_and_cap() {
        let p = RetryPolicy::exponential(10)
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(350));
        assert_eq!(p.delay_before(1, 0.0), Duration::from_millis(100));
        assert_eq!(p.delay_before(2, 0.0), Duration::from_millis(200));
        assert_eq!(p.delay_before(3, 0.0), Duration::from_millis(350));
        assert_eq!(p.delay_before(40, 0.0), Duration::from_millis(350));
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let p = RetryPolicy::exponential(5).jitter(0.5);
        for unit in [0.0, 0.25, 0.999] {
            let d = p.delay_before(1, unit);
            assert!(
                d <= Duration::from_millis(100) && d >= Duration::from_millis(50),
                "{d:?}"
            );
        }
    }

    #[test]
    fn attempts_include_the_first() {
        let p = RetryPolicy::exponential(3);
        assert!(p.allows_retry(1) && p.allows_retry(2) && !p.allows_retry(3));
        assert!(!RetryPolicy::never().allows_retry(1));
        assert_eq!(RetryPolicy::exponential(0).max_attempts, 1);
    }
}
