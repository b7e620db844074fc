//! Reads that survive a dropped connection. The RPC client reconnects by itself, and requests
//! made while it does wait for the new connection; only a request in flight when the old one
//! dropped fails, with an error that says so. Such a read is simply asked again. (Writes are
//! not retried here: whether a transaction got in before the drop is the chain's to say.)

use std::future::Future;
use std::time::Duration;

/// How many times a read is asked again after a dropped connection.
const RETRIES: u32 = 5;

pub trait Transient: std::fmt::Display {
    /// Whether the request failed only because the connection dropped and is being re-made.
    fn is_transient(&self) -> bool;
}

impl Transient for subxt::Error {
    fn is_transient(&self) -> bool {
        self.is_disconnected_will_reconnect()
    }
}

impl Transient for subxt::ext::subxt_rpcs::Error {
    fn is_transient(&self) -> bool {
        self.is_disconnected_will_reconnect()
    }
}

/// Runs `attempt` until it succeeds, fails for good, or has failed transiently `RETRIES` times.
pub async fn read<T, E, F, Fut>(what: &str, mut attempt: F) -> Result<T, E>
where
    E: Transient,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut retries = 0;
    loop {
        match attempt().await {
            Err(error) if error.is_transient() && retries < RETRIES => {
                retries += 1;
                tracing::warn!(%error, what, retries, "chain connection lost; reading again");
                tokio::time::sleep(Duration::from_millis(250) * retries).await;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[derive(Debug)]
    struct Failure(bool);

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "transient: {}", self.0)
        }
    }

    impl Transient for Failure {
        fn is_transient(&self) -> bool {
            self.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_others_are_not() {
        let calls = Cell::new(0);
        let result = read("test", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 3 { Err(Failure(true)) } else { Ok(n) } }
        })
        .await;
        assert_eq!(result.ok(), Some(3));

        calls.set(0);
        let result: Result<(), _> = read("test", || {
            calls.set(calls.get() + 1);
            async { Err(Failure(false)) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), 1, "a lasting failure is not retried");

        calls.set(0);
        let result: Result<(), _> = read("test", || {
            calls.set(calls.get() + 1);
            async { Err(Failure(true)) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), 1 + RETRIES, "retries are bounded");
    }
}
