//! Property test of storage quantities: every byte count formats to a
//! quantity that parses back to the same count.
#![allow(clippy::unwrap_used)]

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use proptest::prelude::*;
use swell_k8s::quantity;

proptest! {
    #[test]
    fn sizes_format_and_parse_back(bytes in any::<u64>()) {
        let text = quantity::format(bytes);
        prop_assert_eq!(quantity::bytes(&Quantity(text)).unwrap(), bytes);
    }
}
