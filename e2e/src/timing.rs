//! Timing checks that hold on a loaded two-core machine: properties judged
//! on the median of several samples, never on one, and deadline bounds whose
//! slack is generous but smaller than the deadline (a call that waited out
//! the deadline twice still fails).

use std::time::Duration;

/// The median of `samples` (the upper one of an even count); zero when empty.
pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// `p50 X ms (min Y, max Z, n=N)` of `samples`, for a test's report line.
pub fn p50_summary(samples: &[Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (min, max) = (samples.iter().min().copied().unwrap_or_default(), samples.iter().max().copied().unwrap_or_default());
    format!("{:.1} ms (min {:.1}, max {:.1}, n={})", ms(median(samples)), ms(min), ms(max), samples.len())
}

/// The longest a call bounded by `deadline` may take to answer here: the
/// deadline plus half of it (at least 2 s) for scheduling on a busy machine.
pub fn deadline_bound(deadline: Duration) -> Duration {
    deadline + (deadline / 2).max(Duration::from_secs(2)).min(deadline)
}

/// Panics unless `took` stays within [`deadline_bound`] of `deadline`.
#[track_caller]
pub fn assert_within_deadline(what: &str, took: Duration, deadline: Duration) {
    let bound = deadline_bound(deadline);
    assert!(took < bound, "{what} answered after {took:?}: its deadline is {deadline:?} (bound {bound:?})");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_doubled_deadline_is_out_of_bounds() {
        for secs in [1, 2, 8, 15] {
            let deadline = Duration::from_secs(secs);
            assert!(deadline_bound(deadline) > deadline);
            assert!(deadline_bound(deadline) <= deadline * 2, "{secs} s");
        }
        assert_eq!(deadline_bound(Duration::from_secs(8)), Duration::from_secs(12));
    }

    #[test]
    fn median_of_samples() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect::<Vec<_>>();
        assert_eq!(median(&ms(&[30, 10, 20])), Duration::from_millis(20));
        assert_eq!(median(&ms(&[])), Duration::ZERO);
        assert_eq!(p50_summary(&ms(&[30, 10, 20])), "20.0 ms (min 10.0, max 30.0, n=3)");
    }
}
