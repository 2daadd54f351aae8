//! How a failed RPC is logged: once, where it is answered, at the level its
//! status code means. An answer the caller expects and retries (ABORTED for
//! a busy volume) or that only reports the request's own fault (NOT_FOUND,
//! INVALID_ARGUMENT, OUT_OF_RANGE) is not an operator's problem; a fault of
//! the backend or the host (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL) is.

use tonic::{Code, Status};

/// Logs a failed answer in the current span (the RPC's, with its volume).
pub fn log_answer(status: &Status) {
    let (code, message) = (status.code(), status.message());
    match code {
        Code::Ok => {}
        Code::Aborted | Code::Unimplemented | Code::Cancelled => tracing::debug!(?code, message, "answered"),
        Code::NotFound | Code::InvalidArgument | Code::AlreadyExists | Code::OutOfRange | Code::FailedPrecondition => {
            tracing::info!(?code, message, "answered")
        }
        Code::ResourceExhausted | Code::Unavailable | Code::DeadlineExceeded => tracing::warn!(?code, message, "failed"),
        Code::Internal | Code::Unknown | Code::DataLoss | Code::PermissionDenied | Code::Unauthenticated => tracing::error!(?code, message, "failed"),
    }
}
