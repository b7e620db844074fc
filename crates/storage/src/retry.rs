//! Retries with exponential backoff and full jitter, bounded both in attempts and in time.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::StorageError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No new attempt starts after this much time since the first one.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(8),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (attempts count from 1): a uniform draw, given by
    /// `unit` in [0, 1), below `min(max_delay, base_delay · 2^(attempt − 1))`. Full jitter keeps
    /// many nodes that failed together from retrying together.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// Whether an error may go away by itself: network trouble and server errors may, a missing
/// object or a refused permission will not.
pub fn is_transient(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}

/// A uniform draw in [0, 1) for jitter; it need not be unpredictable, only differ between nodes
/// and attempts.
fn jitter_unit(salt: u64) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = nanos ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id());
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `operation` until it succeeds, fails for good, or the policy's bounds are reached.
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    operation: &'static str,
    key: &str,
    mut attempt_once: F,
) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, object_store::Error>>,
{
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let error = match attempt_once().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if !is_transient(&error) {
            return Err(StorageError::Refused {
                operation,
                key: key.to_string(),
                source: Box::new(error),
            });
        }
        let delay = policy.delay(attempt, jitter_unit(u64::from(attempt)));
        let out_of_time = started.elapsed() + delay >= policy.max_elapsed;
        if attempt >= policy.max_attempts || out_of_time {
            return Err(StorageError::Unavailable {
                operation,
                key: key.to_string(),
                attempts: attempt,
                elapsed: started.elapsed(),
                source: Box::new(error),
            });
        }
        tracing::debug!(operation, key, attempt, ?delay, %error, "retrying");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            max_elapsed: Duration::from_secs(10),
        }
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = policy();
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.delay(3, 1.0), Duration::from_millis(300));
        assert_eq!(p.delay(40, 1.0), Duration::from_millis(300));
        assert_eq!(p.delay(2, 0.5), Duration::from_millis(100));
        assert_eq!(p.delay(2, 0.0), Duration::ZERO);
    }

    fn transient() -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source: "connection refused".into(),
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let value = retry(&policy(), "get", "k", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(transient())
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!((value, calls.load(Ordering::SeqCst)), (7, 3));
    }

    #[tokio::test]
    async fn attempts_are_bounded() {
        let calls = AtomicU32::new(0);
        let err = retry(&policy(), "put", "k", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(transient())
        })
        .await
        .unwrap_err();
        assert!(matches!(err, StorageError::Unavailable { attempts: 4, .. }));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let err = retry(&policy(), "get", "k", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(object_store::Error::NotFound {
                path: "k".into(),
                source: "gone".into(),
            })
        })
        .await
        .unwrap_err();
        assert!(matches!(err, StorageError::Refused { .. }));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn elapsed_time_is_bounded() {
        let p = RetryPolicy {
            max_attempts: 1000,
            max_elapsed: Duration::from_millis(500),
            ..policy()
        };
        let started = Instant::now();
        let err = retry(&p, "get", "k", || async { Err::<(), _>(transient()) })
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Unavailable { .. }));
        assert!(started.elapsed() < Duration::from_millis(900));
    }
}
