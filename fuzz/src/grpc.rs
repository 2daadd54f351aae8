//! What every CSI target checks of an answer.

use std::fmt::Debug;

use prost::Message;
use tonic::{Code, Status};

/// Asserts that a refusal is precise: one of the codes `allowed`, with a
/// message. `rpc` (its name or request) is formatted only on failure.
pub(crate) fn precise(rpc: &dyn Debug, answer: Result<(), Status>, allowed: &[Code]) {
    if let Err(status) = answer {
        assert!(allowed.contains(&status.code()), "{rpc:?} answered {:?} ({}), not one of {allowed:?}", status.code(), status.message());
        assert!(!status.message().is_empty(), "{rpc:?} answered {:?} without a message", status.code());
    }
}

/// Decodes `bytes` as `M`; `None` when they are not one (the gRPC layer
/// answers those before Swell sees them).
pub(crate) fn request<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}
