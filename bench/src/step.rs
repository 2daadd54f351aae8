//! How a benchmark step that failed is told: a sentence naming the step.

/// A bench step that failed, with what it was doing.
pub(crate) type BenchResult<T> = Result<T, String>;

/// Wraps an error with the step it interrupted.
pub(crate) fn at<E: std::fmt::Display>(step: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{step}: {e}")
}
