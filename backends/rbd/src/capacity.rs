//! The RBD capacity policy, as pure functions over what the monitor reports:
//! `ceph df` (per-pool `stored` and `max_avail`), `osd pool ls detail`
//! (quota, `full` / `full_quota` flags), the bytes promised and the
//! over-provisioning ratio.
//!
//! total = min(quota if set, (max_avail + stored) × ratio);
//! available = total − max(promised, stored) (saturating), 0 when full.
//!
//! `promised` is what Swell promised in the pool (its running total), plus
//! the sizes of other clients' images when the operator asks for them to
//! count. Bytes other clients really wrote count either way: they are in
//! `stored`, and a pool that stores more than Swell promised holds that
//! much that is not Swell's. A thin foreign image that holds nothing does
//! not block Swell (docs/rbd-capacity.md).
//!
//! A full pool is detected here, before acting, because librbd does not say
//! so: on a full pool a grow or create just hangs until the op timeout
//! (docs/ceph-client.md), never returning EDQUOT.

use std::collections::HashMap;

use serde::Deserialize;
use swell_storage::Capacity;

/// One pool's usage from `ceph df`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PoolUsage {
    /// Logical bytes stored.
    pub stored: u64,
    /// Logical bytes the pool can still take before an OSD is full.
    pub max_avail: u64,
}

/// One pool's settings from `osd pool ls detail`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct PoolSettings {
    /// The byte quota, 0 for none.
    pub quota_max_bytes: u64,
    /// Flags such as `full`, `full_quota`, `nearfull`.
    pub flags: Vec<String>,
}

/// A pool's room under the policy, and why it is full if it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolRoom {
    /// What GetCapacity reports.
    pub capacity: Capacity,
    /// Why nothing may be created or grown at all, if so.
    pub full: Option<String>,
}

#[derive(Deserialize)]
struct Df {
    pools: Vec<DfPool>,
}

#[derive(Deserialize)]
struct DfPool {
    name: String,
    stats: DfStats,
}

#[derive(Deserialize)]
struct DfStats {
    #[serde(default)]
    stored: u64,
    #[serde(default)]
    bytes_used: u64,
    max_avail: u64,
}

#[derive(Deserialize)]
struct PoolDetail {
    pool_name: String,
    #[serde(default)]
    quota_max_bytes: u64,
    #[serde(default)]
    flags_names: String,
}

/// Parses `{"prefix":"df","format":"json"}` output: each pool's usage.
pub(crate) fn parse_df(json: &[u8]) -> Result<HashMap<String, PoolUsage>, serde_json::Error> {
    let df: Df = serde_json::from_slice(json)?;
    Ok(df
        .pools
        .into_iter()
        .map(|p| {
            // Older releases report only bytes_used (raw); `stored` is logical.
            let stored = if p.stats.stored > 0 { p.stats.stored } else { p.stats.bytes_used };
            (p.name, PoolUsage { stored, max_avail: p.stats.max_avail })
        })
        .collect())
}

/// Parses `{"prefix":"osd pool ls","detail":"detail","format":"json"}`
/// output: each pool's quota and flags.
pub(crate) fn parse_pool_details(json: &[u8]) -> Result<HashMap<String, PoolSettings>, serde_json::Error> {
    let pools: Vec<PoolDetail> = serde_json::from_slice(json)?;
    Ok(pools
        .into_iter()
        .map(|p| {
            let flags = p.flags_names.split(',').filter(|f| !f.is_empty()).map(str::to_owned).collect();
            (p.pool_name, PoolSettings { quota_max_bytes: p.quota_max_bytes, flags })
        })
        .collect())
}

/// The pool's room under the policy, with `promised` bytes promised in it.
pub(crate) fn room(usage: PoolUsage, settings: &PoolSettings, promised: u64, ratio: f64) -> PoolRoom {
    let raw = usage.max_avail.saturating_add(usage.stored);
    let scaled = scale(raw, ratio);
    let total = match settings.quota_max_bytes {
        0 => scaled,
        quota => scaled.min(quota),
    };
    let full = if settings.flags.iter().any(|f| f == "full_quota") {
        Some("the pool's quota is reached (flag full_quota)".to_owned())
    } else if settings.flags.iter().any(|f| f == "full") {
        Some("the pool is full (flag full)".to_owned())
    } else if settings.quota_max_bytes > 0 && usage.stored >= settings.quota_max_bytes {
        Some(format!("the pool stores {} bytes, at its quota of {} bytes", usage.stored, settings.quota_max_bytes))
    } else if usage.max_avail == 0 {
        Some("the pool's OSDs have no room left (max_avail 0)".to_owned())
    } else {
        None
    };
    let available = if full.is_some() { 0 } else { total.saturating_sub(promised.max(usage.stored)) };
    PoolRoom { capacity: Capacity { total_bytes: total, available_bytes: available }, full }
}

/// `bytes × ratio`, saturating; a ratio that is not a positive number counts as 1.
fn scale(bytes: u64, ratio: f64) -> u64 {
    let ratio = if ratio.is_finite() && ratio > 0.0 { ratio } else { 1.0 };
    let scaled = bytes as f64 * ratio;
    if scaled >= u64::MAX as f64 { u64::MAX } else { scaled as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    use swell_storage::units::GIB;

    fn usage(stored: u64, max_avail: u64) -> PoolUsage {
        PoolUsage { stored, max_avail }
    }

    fn no_quota() -> PoolSettings {
        PoolSettings::default()
    }

    #[test]
    fn total_is_stored_plus_max_avail_scaled() {
        let r = room(usage(2 * GIB, 8 * GIB), &no_quota(), 3 * GIB, 1.0);
        assert_eq!(r.capacity, Capacity { total_bytes: 10 * GIB, available_bytes: 7 * GIB });
        let r = room(usage(2 * GIB, 8 * GIB), &no_quota(), 3 * GIB, 2.5);
        assert_eq!(r.capacity, Capacity { total_bytes: 25 * GIB, available_bytes: 22 * GIB });
        assert_eq!(r.full, None);
    }

    #[test]
    fn bytes_others_wrote_count_but_their_empty_promises_do_not() {
        // 6 GiB stored, of which Swell promised only 2: at least 4 are someone else's.
        let r = room(usage(6 * GIB, 4 * GIB), &no_quota(), 2 * GIB, 1.0);
        assert_eq!(r.capacity, Capacity { total_bytes: 10 * GIB, available_bytes: 4 * GIB });
        // Swell's own written bytes are not counted twice.
        let r = room(usage(2 * GIB, 8 * GIB), &no_quota(), 3 * GIB, 1.0);
        assert_eq!(r.capacity.available_bytes, 7 * GIB);
    }

    #[test]
    fn a_quota_caps_the_total() {
        let quota = PoolSettings { quota_max_bytes: 4 * GIB, flags: vec![] };
        let r = room(usage(GIB, 100 * GIB), &quota, 3 * GIB, 3.0);
        assert_eq!(r.capacity, Capacity { total_bytes: 4 * GIB, available_bytes: GIB });
    }

    #[test]
    fn over_promised_pools_have_nothing_available_not_an_underflow() {
        let r = room(usage(0, GIB), &no_quota(), 5 * GIB, 1.0);
        assert_eq!(r.capacity.available_bytes, 0);
        assert_eq!(room(usage(u64::MAX, u64::MAX), &no_quota(), 0, 10.0).capacity.total_bytes, u64::MAX);
    }

    #[test]
    fn bad_ratios_count_as_one() {
        for ratio in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(room(usage(GIB, GIB), &no_quota(), 0, ratio).capacity.total_bytes, 2 * GIB, "{ratio}");
        }
    }

    #[test]
    fn full_pools_are_detected_from_flags_quota_and_max_avail() {
        let flagged = |flag: &str| PoolSettings { quota_max_bytes: 0, flags: vec!["hashpspool".into(), flag.into()] };
        for settings in [flagged("full"), flagged("full_quota")] {
            let r = room(usage(GIB, 10 * GIB), &settings, 0, 1.0);
            assert!(r.full.is_some(), "{settings:?}");
            assert_eq!(r.capacity.available_bytes, 0);
        }
        assert!(room(usage(GIB, 10 * GIB), &flagged("nearfull"), 0, 1.0).full.is_none());
        // The quota is soft: stored may pass it before the monitor sets the flag.
        let quota = PoolSettings { quota_max_bytes: GIB, flags: vec![] };
        assert!(room(usage(GIB + 1, 10 * GIB), &quota, 0, 1.0).full.unwrap().contains("quota"));
        assert!(room(usage(GIB, 0), &no_quota(), 0, 1.0).full.unwrap().contains("max_avail"));
    }

    #[test]
    fn parses_what_ceph_16_prints() {
        let df = br#"{"stats":{"total_bytes":64424509440},"pools":[
            {"name":"rbd","id":1,"stats":{"stored":19,"objects":1,"kb_used":12,"bytes_used":12288,"percent_used":2.0e-07,"max_avail":20096731136}},
            {"name":"device_health_metrics","id":2,"stats":{"stored":0,"objects":0,"kb_used":0,"bytes_used":0,"percent_used":0,"max_avail":20096731136}}]}"#;
        let pools = parse_df(df).unwrap();
        assert_eq!(pools.get("rbd"), Some(&usage(19, 20096731136)));
        assert_eq!(pools.get("nope"), None);
        let detail = br#"[{"pool_id":1,"pool_name":"rbd","flags":8193,"flags_names":"hashpspool,selfmanaged_snaps,full_quota","quota_max_bytes":1048576,"quota_max_objects":0}]"#;
        let details = parse_pool_details(detail).unwrap();
        assert_eq!(details["rbd"].quota_max_bytes, 1 << 20);
        assert!(details["rbd"].flags.contains(&"full_quota".to_owned()));
        assert!(!details.contains_key("other"));
        assert!(parse_df(b"not json").is_err());
    }
}
