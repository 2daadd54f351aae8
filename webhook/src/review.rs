//! The AdmissionReview envelope: bytes from the API server into a PVC
//! update (or a precise reason why not, answered with HTTP 400), and a
//! [`Verdict`] back into an AdmissionReview response. Nothing here decides.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::decision::Verdict;

/// The only AdmissionReview version served (`admissionReviewVersions: [v1]`).
pub(crate) const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// Why a body is not a review this webhook can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, truncated, or not shaped like an AdmissionReview.
    #[error("malformed AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    /// Another apiVersion or kind than `admission.k8s.io/v1` AdmissionReview.
    #[error("expected apiVersion {REVIEW_API_VERSION} kind AdmissionReview, got apiVersion {api_version:?} kind {kind:?}")]
    Envelope {
        /// The apiVersion received.
        api_version: String,
        /// The kind received.
        kind: String,
    },
    /// An AdmissionReview without a request.
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// A review of something other than a v1 PersistentVolumeClaim.
    #[error("this webhook reviews v1 PersistentVolumeClaims, not {0}")]
    WrongKind(String),
    /// An object that does not read as a PersistentVolumeClaim.
    #[error("{field} is not a PersistentVolumeClaim: {source}")]
    Object {
        /// `object` or `oldObject`.
        field: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// An UPDATE without both objects.
    #[error("an UPDATE review needs both object and oldObject")]
    MissingObject,
}

/// A decoded review of a PVC.
#[derive(Debug)]
pub struct ClaimReview {
    /// The request, kept for the response (uid, apiVersion).
    pub request: AdmissionRequest<DynamicObject>,
    /// For an UPDATE of the claim itself: the old and the new claim.
    pub update: Option<(PersistentVolumeClaim, PersistentVolumeClaim)>,
}

/// Reads an AdmissionReview of a PersistentVolumeClaim.
pub fn decode(body: &[u8]) -> Result<ClaimReview, DecodeError> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    if review.types.api_version != REVIEW_API_VERSION || review.types.kind != "AdmissionReview" {
        return Err(DecodeError::Envelope { api_version: review.types.api_version, kind: review.types.kind });
    }
    let request: AdmissionRequest<DynamicObject> = review.try_into().map_err(|_| DecodeError::NoRequest)?;
    let kind = &request.kind;
    if !(kind.group.is_empty() && kind.version == "v1" && kind.kind == "PersistentVolumeClaim") {
        let group = if kind.group.is_empty() { String::new() } else { format!("{}/", kind.group) };
        return Err(DecodeError::WrongKind(format!("{group}{}/{}", kind.version, kind.kind)));
    }
    // A subresource (status) is written by controllers, never a user's resize.
    if request.operation != Operation::Update || request.sub_resource.is_some() {
        return Ok(ClaimReview { request, update: None });
    }
    let (Some(old), Some(new)) = (&request.old_object, &request.object) else { return Err(DecodeError::MissingObject) };
    let update = (claim(old, "oldObject")?, claim(new, "object")?);
    Ok(ClaimReview { request, update: Some(update) })
}

fn claim(object: &DynamicObject, field: &'static str) -> Result<PersistentVolumeClaim, DecodeError> {
    let value = serde_json::to_value(object).map_err(|source| DecodeError::Object { field, source })?;
    serde_json::from_value(value).map_err(|source| DecodeError::Object { field, source })
}

/// The AdmissionReview answering `request` with `verdict`, as JSON.
pub fn respond(request: &AdmissionRequest<DynamicObject>, verdict: &Verdict) -> Result<Vec<u8>, serde_json::Error> {
    let response = AdmissionResponse::from(request);
    let response = match verdict {
        Verdict::Allow { warning: None } => response,
        Verdict::Allow { warning: Some(warning) } => {
            let mut response = response;
            response.warnings = Some(vec![warning.clone()]);
            response
        }
        Verdict::Deny(message) => response.deny(message),
    };
    serde_json::to_vec(&response.into_review())
}
