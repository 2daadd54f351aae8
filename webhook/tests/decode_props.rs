//! Property tests over the decode path: no input panics it, every cut or
//! damaged review is refused with a reason, and reviews of random sizes get
//! the verdict of a plain model of the rules. Runs in a few seconds, so it
//! runs in every test run (and CI).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use proptest::prelude::*;
use serde_json::{Value, json};
use swell_k8s::quantity;
use swell_storage::VolumeId;
use swell_webhook::decode;
use swell_webhook::{FAILED, IN_PROGRESS, VolumeState};
use swell_webhook::{FactsError, VolumeFacts};
use swell_webhook::{PersistentVolumes, PvError};
use swell_webhook::{Policy, Verdict, Webhook};

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Every PV is a Swell volume; every volume is 1 TiB-roomy and at its size.
struct Roomy;

#[async_trait::async_trait]
impl PersistentVolumes for Roomy {
    async fn get(&self, name: &str) -> Result<Option<PersistentVolume>, PvError> {
        Ok(Some(
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"csi": {"driver": "swell.csi.storage", "volumeHandle": "local:aa"}}})).unwrap(),
        ))
    }
}

#[async_trait::async_trait]
impl VolumeFacts for Roomy {
    async fn read(&self, id: &VolumeId) -> Result<VolumeState, FactsError> {
        Ok(VolumeState { volume_id: id.to_string(), size_bytes: Some(0), recorded_desired: None, available_bytes: u64::MAX, unusable: None })
    }
}

fn webhook() -> Webhook {
    Webhook {
        driver_name: "swell.csi.storage".into(),
        deadline: Duration::from_secs(1),
        policy: Policy::default(),
        volumes: Arc::new(Roomy),
        facts: Arc::new(Roomy),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
}

fn with_sizes(old: &str, new: &str, capacity: &str, status: Option<&str>) -> Value {
    let mut review = fixture("resize-bound");
    for (object, request) in [("oldObject", old), ("object", new)] {
        let claim = &mut review["request"][object];
        claim["spec"]["resources"]["requests"]["storage"] = json!(request);
        claim["status"]["capacity"]["storage"] = json!(capacity);
        claim["status"]["allocatedResourceStatuses"] = status.map(|s| json!({"storage": s})).unwrap_or(json!({}));
    }
    review
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn a_cut_review_is_refused_with_a_reason(cut in 0usize..10_000) {
        let body = serde_json::to_vec(&fixture("resize-bound")).unwrap();
        let cut = cut % body.len();
        let err = decode(&body[..cut]).unwrap_err();
        prop_assert!(err.to_string().starts_with("malformed AdmissionReview"), "{}", err);
    }

    #[test]
    fn damaged_reviews_never_panic_the_whole_path(position in 0usize..10_000, byte in any::<u8>()) {
        let mut body = serde_json::to_vec(&fixture("resize-bound")).unwrap();
        let position = position % body.len();
        body[position] = byte;
        let _ = runtime().block_on(webhook().review(&body));
    }

    #[test]
    fn any_text_as_a_size_never_panics(text in "\\PC{0,24}", old in "[0-9]{1,3}(Ki|Mi|Gi|)") {
        let _ = quantity::bytes(&k8s_openapi::apimachinery::pkg::api::resource::Quantity(text.clone()));
        let review = with_sizes(&old, &text, "1Gi", None);
        let _ = runtime().block_on(webhook().review(&serde_json::to_vec(&review).unwrap()));
    }

    #[test]
    fn verdicts_follow_the_rules(old in 1u64..64, new in 1u64..64, capacity in 1u64..64, status in 0usize..6) {
        const STATUSES: [Option<&str>; 6] = [None, Some(IN_PROGRESS[0]), Some(IN_PROGRESS[1]), Some(IN_PROGRESS[2]), Some(FAILED[0]), Some(FAILED[1])];
        let status = STATUSES[status];
        // Sizes in Mi on one side and in bytes on the other: compared as numbers.
        let review = with_sizes(&format!("{old}Mi"), &(new << 20).to_string(), &format!("{capacity}Mi"), status);
        let decoded = decode(&serde_json::to_vec(&review).unwrap()).unwrap();
        let verdict = runtime().block_on(webhook().verdict(&decoded));
        let in_flight = old > capacity || status.is_some_and(|s| IN_PROGRESS.contains(&s));
        let failed = status.is_some_and(|s| FAILED.contains(&s));
        let expected_allowed = new == old || (new >= capacity && if new < old { failed } else { !in_flight });
        prop_assert_eq!(matches!(verdict, Verdict::Allow { .. }), expected_allowed, "{:?}", verdict);
    }
}
