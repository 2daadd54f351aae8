//! The one way a backend runs blocking work (file system calls, librados)
//! from async code: on a blocking thread, under a deadline, so a wedged disk
//! or cluster answers Timeout instead of wedging the RPC that asked. The
//! thread itself goes on until its own calls return.

use std::time::Duration;

use crate::error::BackendError;

/// Runs `work` on a blocking thread; Timeout after `deadline`, an I/O error
/// naming `step` if the thread panicked.
pub async fn run<T, F>(step: &str, deadline: Duration, work: F) -> Result<T, BackendError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, BackendError> + Send + 'static,
{
    match tokio::time::timeout(deadline, tokio::task::spawn_blocking(work)).await {
        Err(_) => Err(BackendError::Timeout { step: step.to_owned(), after: deadline }),
        Ok(Err(join)) => Err(BackendError::io(step, std::io::Error::other(join.to_string()))),
        Ok(Ok(result)) => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_past_its_deadline_answers_timeout_and_a_panic_an_error() {
        let slow = run("sleep", Duration::from_millis(20), || {
            std::thread::sleep(Duration::from_millis(500));
            Ok(())
        });
        assert!(matches!(slow.await, Err(BackendError::Timeout { step, .. }) if step == "sleep"));
        let panicked = run::<(), _>("panic", Duration::from_secs(5), || panic!("boom"));
        assert!(matches!(panicked.await, Err(BackendError::Io { step, .. }) if step == "panic"));
        assert_eq!(run("ok", Duration::from_secs(5), || Ok(7)).await.unwrap(), 7);
    }
}
