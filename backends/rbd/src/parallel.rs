//! Background work a few items at a time within one call's deadline: what
//! is not started before the deadline waits for the next pass.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Runs `work` on each of `items`, `concurrency` at a time, starting none
/// once less than `op_timeout` is left before `deadline` (the rest wait for
/// the next pass).
pub(crate) fn in_parallel<T: Sync>(items: &[T], concurrency: usize, deadline: Instant, op_timeout: Duration, work: impl Fn(&T) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..concurrency.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                while let Some(item) = items.get(next.fetch_add(1, Ordering::SeqCst)) {
                    if deadline.saturating_duration_since(Instant::now()) < op_timeout {
                        return;
                    }
                    work(item);
                }
            });
        }
    });
}
