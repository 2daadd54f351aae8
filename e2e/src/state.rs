//! Expansion state as a controller leaves it, written and read through the
//! backend's own store (files for the local backend, the pool's state
//! object for RBD): the one place tests build such a state by hand.

use swell_storage::{ExpansionRecord, ExpansionStore, VolumeId};

/// Leaves the state of a controller that recorded a wish for `desired`
/// bytes while the backend had `current`, and, with `reached`, also
/// recorded that size as reached (and announced) before it stopped.
pub async fn leave_wish(store: &dyn ExpansionStore, id: &VolumeId, current: u64, desired: u64, reached: Option<u64>) -> ExpansionRecord {
    let hold = store.hold(id).await.expect("hold volume").expect("volume not held by anyone else");
    let base = store.record(id).await.expect("read record").unwrap_or_else(|| ExpansionRecord::new(id, current, current));
    let mut record = store.write(&hold, base.wishing(current, desired)).await.expect("record the wish");
    if let Some(size) = reached {
        record = store.write(&hold, record.reached(size, Some(size), None)).await.expect("record the size reached");
    }
    hold.release().await;
    record
}

/// The record of `id`, read now.
pub async fn record_of(store: &dyn ExpansionStore, id: &VolumeId) -> Option<ExpansionRecord> {
    store.record(id).await.expect("read record")
}
