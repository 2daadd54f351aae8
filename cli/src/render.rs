//! How `swell` prints: a table of volumes, one volume in detail, or JSON.

use comfy_table::Table;
use comfy_table::presets::NOTHING;
use swell_k8s::quantity;
use swell_storage::auto_grow::{Amount, AutoGrowPolicy, AutoGrowRecord, Usage};
use swell_storage::expansion::now_unix;

use crate::view::{NextGrow, VolumeView};

/// A size as a Kubernetes quantity (exact: `20Gi`, `1500M`), `-` when unknown.
pub(crate) fn size(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), quantity::format)
}

/// A wait in the largest two units: `45s`, `3m12s`, `2h05m`, `3d04h`.
pub(crate) fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

fn table() -> Table {
    let mut table = Table::new();
    table.load_style(NOTHING);
    table
}

/// The volumes as a table, one row each.
pub(crate) fn volumes(views: &[VolumeView]) -> String {
    let mut table = table();
    table.set_header([
        "VOLUME",
        "BACKEND",
        "CLAIM",
        "REQUESTED",
        "DESIRED",
        "CURRENT",
        "STATE",
        "PENDING FOR",
        "LAST ERROR",
        "AUTO-GROW",
        "USAGE",
        "NEXT GROW",
    ]);
    let now = now_unix();
    let mut recorded = false;
    for v in views {
        let claim = v.kubernetes.as_ref().and_then(|k| k.claim.clone()).unwrap_or_else(|| "-".into());
        let current = if v.current_is_recorded && v.current_bytes.is_some() {
            recorded = true;
            format!("{}*", size(v.current_bytes))
        } else {
            size(v.current_bytes)
        };
        table.add_row([
            v.volume_id.clone(),
            v.backend.clone(),
            claim,
            size(v.requested_bytes),
            size(v.desired_bytes),
            current,
            v.state.name().to_owned(),
            v.pending_secs.map_or_else(|| "-".into(), duration),
            v.last_error.clone().unwrap_or_else(|| "-".into()),
            v.auto_grow.as_ref().map_or_else(|| "-".into(), |r| policy_short(&r.policy)),
            v.usage.as_ref().map_or_else(|| "-".into(), |u| usage_short(u, now)),
            v.next_grow.map_or_else(|| "-".into(), next_grow),
        ]);
    }
    let mut text = table.trim_fmt();
    if recorded {
        text.push_str(RECORDED_NOTE);
    }
    text
}

/// The footnote of a size marked `*`.
pub(crate) const RECORDED_NOTE: &str = "\n* the size the volume's record last saw (listing this backend reads no image); the reconciler's sweep compares \
     it with the volume every --sweep-interval-secs, and `swell volume ID` reads it now";

/// One volume, field by field; `kubernetes` says why the claim is unknown
/// when it is.
pub(crate) fn volume(v: &VolumeView, kubernetes: &str) -> String {
    let mut table = table();
    let mut row = |name: &str, value: String| {
        table.add_row([format!("{name}:"), value]);
    };
    row("Volume", v.volume_id.clone());
    row("Backend", v.backend.clone());
    row("State", v.state.name().to_owned());
    row("Requested", size(v.requested_bytes));
    row("Desired", size(v.desired_bytes));
    row("Current", size(v.current_bytes));
    row("Pending for", v.pending_secs.map_or_else(|| "-".into(), duration));
    row("Last error", v.last_error.clone().unwrap_or_else(|| "-".into()));
    match &v.record {
        Some(r) => {
            row("Announced", size(Some(r.announced_bytes)));
            row("Record", format!("generation {}, desired since {} (unix), updated {} (unix)", r.generation, r.desired_since_unix, r.updated_unix));
        }
        None => row("Record", "none: never expanded through Swell".into()),
    }
    row("Auto-grow", v.auto_grow.as_ref().map_or_else(|| "-".into(), auto_grow));
    row("Usage", v.usage.as_ref().map_or_else(|| "- (no reading)".into(), |u| usage(u, now_unix())));
    match &v.kubernetes {
        Some(k) => {
            row("PersistentVolume", k.pv.clone());
            row("Claim", k.claim.clone().unwrap_or_else(|| "- (not bound)".into()));
            row("Node reported", size(k.capacity_bytes));
            row("Resize status", k.resize_status.clone().unwrap_or_else(|| "-".into()));
            row("Conditions", if k.conditions.is_empty() { "-".into() } else { k.conditions.join("; ") });
        }
        None => row("Kubernetes", kubernetes.to_owned()),
    }
    table.trim_fmt()
}

fn amount(a: Amount) -> String {
    match a {
        Amount::Percent(p) => format!("{p}%"),
        Amount::Bytes(b) => size(Some(b)),
    }
}

/// The policy in one line: `on, below 10% free, by 20%, up to 50Gi, claim db/data`.
fn auto_grow(r: &AutoGrowRecord) -> String {
    let p = &r.policy;
    let inodes = p.inodes_free_below_percent.map(|i| format!(" (or {i}% of inodes)")).unwrap_or_default();
    let claim = r.claim.as_ref().map_or_else(|| "no claim named: cannot grow by itself".to_owned(), |c| format!("claim {}/{}", c.namespace, c.name));
    let on = if p.on { "on" } else { "off unless the claim turns it on" };
    format!("{on}, below {} free{inodes}, by {}, up to {}, {claim}", amount(p.free_below), amount(p.step), size(Some(p.limit_bytes)))
}

/// The policy in a table cell: `on <30% free +50% max 640Mi`.
fn policy_short(p: &AutoGrowPolicy) -> String {
    let inodes = p.inodes_free_below_percent.map(|i| format!(" (<{i}% inodes)")).unwrap_or_default();
    format!("{} <{} free{inodes} +{} max {}", if p.on { "on" } else { "off" }, amount(p.free_below), amount(p.step), size(Some(p.limit_bytes)))
}

/// The last reading in a table cell: `290Mi/300Mi 1m00s ago`.
fn usage_short(u: &Usage, now: u64) -> String {
    let age = duration(u.age_secs(now));
    match u.skipped {
        Some(_) => format!("skipped {age} ago"),
        None => format!("{}/{} {age} ago", size(Some(u.bytes_used)), size(Some(u.bytes_total))),
    }
}

/// When auto-grow next asks: `above 210Mi used: to 480Mi`.
fn next_grow(next: NextGrow) -> String {
    match next {
        NextGrow::Off => "off (claim may turn on)".into(),
        NextGrow::NoReading => "no reading yet".into(),
        NextGrow::Skipped => "never: block volume".into(),
        NextGrow::AtLimit => "never: at limit".into(),
        NextGrow::Above { used_bytes, to_bytes } => format!("above {} used: to {}", size(Some(used_bytes)), size(Some(to_bytes))),
        NextGrow::Now { to_bytes } => format!("now: to {}", size(Some(to_bytes))),
    }
}

/// The last reading and its age at `now`.
fn usage(u: &Usage, now: u64) -> String {
    if let Some(skipped) = u.skipped {
        return format!("none: skipped, {} (reported {} ago)", skipped.reason(), duration(u.age_secs(now)));
    }
    format!(
        "{} of {} used, {} of {} inodes, read {} ago",
        size(Some(u.bytes_used)),
        size(Some(u.bytes_total)),
        u.inodes_used,
        u.inodes_total,
        duration(u.age_secs(now))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_read_in_two_units() {
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(192), "3m12s");
        assert_eq!(duration(2 * 3600 + 5 * 60 + 9), "2h05m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3d04h");
        assert_eq!(size(Some(20 << 30)), "20Gi");
        assert_eq!(size(None), "-");
    }

    #[test]
    fn the_policy_and_the_last_reading_read_in_one_line_each() {
        use swell_storage::auto_grow::{AutoGrowPolicy, ClaimRef};
        let policy = AutoGrowPolicy {
            on: true,
            free_below: Amount::Percent(10),
            inodes_free_below_percent: Some(5),
            step: Amount::Bytes(5 << 30),
            limit_bytes: 50 << 30,
        };
        let record = AutoGrowRecord { policy, claim: Some(ClaimRef { namespace: "db".into(), name: "data".into() }) };
        assert_eq!(auto_grow(&record), "on, below 10% free (or 5% of inodes), by 5Gi, up to 50Gi, claim db/data");
        let reading = Usage { bytes_used: 9 << 30, bytes_total: 10 << 30, inodes_used: 10, inodes_total: 100, read_unix: 1000, skipped: None };
        assert_eq!(usage(&reading, 1192), "9Gi of 10Gi used, 10 of 100 inodes, read 3m12s ago");
        let skipped = Usage::skipped(swell_storage::auto_grow::Skipped::BlockVolume, 1000);
        assert_eq!(usage(&skipped, 1045), "none: skipped, a block volume has no filesystem whose usage its node could read (reported 45s ago)");
        assert_eq!(policy_short(&record.policy), "on <10% free (<5% inodes) +5Gi max 50Gi");
        assert_eq!(usage_short(&reading, 1192), "9Gi/10Gi 3m12s ago");
        assert_eq!(next_grow(NextGrow::Above { used_bytes: 9 << 30, to_bytes: 15 << 30 }), "above 9Gi used: to 15Gi");
    }
}
