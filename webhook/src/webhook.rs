//! The webhook: one review in, one answer out. Decodes the review, sorts the
//! update ([`crate::claim`]), decides what the claim alone decides, and only
//! for an increase of a volume at rest reads the PV and the backend, all
//! under one deadline, before the final decision ([`crate::decision`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use swell_storage::VolumeId;

use crate::claim::{SizeChange, Update, read_update};
use crate::decision::{Facts, Policy, Step, Verdict, judge_claim, judge_facts};
use crate::facts::VolumeFacts;
use crate::review::{ClaimReview, DecodeError, decode, respond};
use swell_k8s::volume_handle;

use crate::volumes::PersistentVolumes;

/// Everything a review needs.
#[derive(Clone)]
pub struct Webhook {
    /// The CSI driver name claims are provisioned by.
    pub driver_name: String,
    /// How long reading the PV and the backend may take in all.
    pub deadline: Duration,
    /// What to do when they cannot be read in time.
    pub policy: Policy,
    /// The PVs.
    pub volumes: Arc<dyn PersistentVolumes>,
    /// The backends' facts.
    pub facts: Arc<dyn VolumeFacts>,
}

impl Webhook {
    /// Answers one AdmissionReview body with an AdmissionReview body, or
    /// says why the body is not one (HTTP 400).
    pub async fn review(&self, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let started = Instant::now();
        let review = decode(body)?;
        let verdict = self.verdict(&review).await;
        let request = &review.request;
        match &verdict {
            Verdict::Deny(message) => {
                tracing::info!(uid = request.uid, claim = request.name, namespace = request.namespace, elapsed = ?started.elapsed(), message, "denied")
            }
            Verdict::Allow { warning } => tracing::debug!(uid = request.uid, claim = request.name, elapsed = ?started.elapsed(), ?warning, "allowed"),
        }
        Ok(respond(request, &verdict)?)
    }

    /// The verdict on a decoded review.
    pub async fn verdict(&self, review: &ClaimReview) -> Verdict {
        let Some((old, new)) = &review.update else { return Verdict::ALLOW };
        let change = match read_update(old, new, &self.driver_name) {
            Ok(Update::Untouched(_)) => return Verdict::ALLOW,
            Ok(Update::Resize(change)) => change,
            Err(err) => return Verdict::Deny(format!("claim {}: {err}", review.request.name)),
        };
        match judge_claim(&change) {
            Step::Decided(verdict) => verdict,
            Step::AskBackend => {
                let facts = match tokio::time::timeout(self.deadline, self.read_facts(&change)).await {
                    Ok(facts) => facts,
                    Err(_) => Facts::Unchecked(format!("the PersistentVolume and the backend did not answer within {:?}", self.deadline)),
                };
                judge_facts(&change, &facts, self.policy)
            }
        }
    }

    async fn read_facts(&self, change: &SizeChange) -> Facts {
        let Some(name) = &change.volume_name else { return Facts::Unchecked("the claim is not bound".into()) };
        let pv = match self.volumes.get(name).await {
            Ok(Some(pv)) => pv,
            Ok(None) => return Facts::Missing(format!("there is no PersistentVolume {name}")),
            Err(why) => return Facts::Unchecked(why.to_string()),
        };
        let handle = match volume_handle(&pv, &self.driver_name) {
            Ok(handle) => handle,
            Err(why) => return Facts::NotSwellVolume(why.to_string()),
        };
        let id: VolumeId = match handle.parse() {
            Ok(id) => id,
            Err(err) => return Facts::NotSwellVolume(err.to_string()),
        };
        match self.facts.read(&id).await {
            Ok(state) => Facts::Read(state),
            Err(why) => Facts::Unchecked(why.to_string()),
        }
    }
}
