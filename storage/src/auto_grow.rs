//! Auto-grow: the typed policy a volume keeps with it (docs/auto-grow.md),
//! the usage its node reports, and the pure decisions made from the two:
//! whether the volume crossed its threshold and what size it grows to.
//!
//! The policy is parsed once, from the StorageClass (and, later, the
//! claim's annotations), by the controller; what is stored is this typed
//! value, so the node and the controller read the same thresholds.

use serde::{Deserialize, Serialize};

/// Where an RBD volume keeps its auto-grow state: the controller (librbd)
/// and the node (the `rbd` and `rados` CLIs) both read these names.
pub mod rbd {
    /// The image metadata key holding the volume's [`AutoGrowRecord`](super::AutoGrowRecord), as JSON.
    pub const RECORD_META: &str = "swell.auto-grow";
    /// The image metadata key holding the [`Usage`](super::Usage) its node last read, as JSON.
    pub const USAGE_META: &str = "swell.auto-grow.usage";
    /// The object, one per pool and RADOS namespace, whose omap keys are
    /// the images marked as wanting to grow (the value: when the reading
    /// that marked it was read). Apart from the state shards, so listing
    /// the marks costs what is marked, not the pool's volume count.
    pub const WANTED_OBJECT: &str = "swell.auto-grow.wanted";
}

/// Sizes auto-grow asks for are whole multiples of this (a MiB, as
/// CreateVolume allocates): the controller's steps, and what `swell` says
/// the next step will be.
pub const GRANULARITY: u64 = crate::units::MIB;

/// A share of a total, in whole percent, or a byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Amount {
    /// Percent of the volume's total (1 to 100 for thresholds, 1 to 1000 for steps).
    Percent(u16),
    /// Bytes.
    Bytes(u64),
}

impl Amount {
    /// The amount in bytes of `total` (a percent of it, rounded down).
    pub fn of(self, total: u64) -> u64 {
        match self {
            Amount::Percent(p) => u64::try_from(u128::from(total) * u128::from(p) / 100).unwrap_or(u64::MAX),
            Amount::Bytes(b) => b,
        }
    }
}

/// When and how far a volume grows by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoGrowPolicy {
    /// Whether the volume grows by itself; off, the rest are the bounds a
    /// claim may turn it on within.
    pub on: bool,
    /// Grow when the filesystem's free bytes fall below this.
    pub free_below: Amount,
    /// Grow when the free inodes fall below this percent, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes_free_below_percent: Option<u16>,
    /// How much one grow adds: a percent of the current size, or bytes.
    pub step: Amount,
    /// The size the volume never grows past, in bytes.
    pub limit_bytes: u64,
}

/// The PersistentVolumeClaim a volume was made for, as the
/// external-provisioner names it in CreateVolume (`--extra-create-metadata`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// What a volume keeps for auto-grow: its class's policy and its claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoGrowRecord {
    /// The StorageClass's policy (the claim's annotations may override it).
    pub policy: AutoGrowPolicy,
    /// The claim to patch; `None` when CreateVolume did not name it, and
    /// then the volume cannot grow by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<ClaimRef>,
}

/// A staged filesystem's usage, as its node read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes in use.
    pub bytes_used: u64,
    /// Bytes the filesystem holds in all.
    pub bytes_total: u64,
    /// Inodes in use (0 with `inodes_total` 0 where the filesystem has no fixed count).
    pub inodes_used: u64,
    /// Inodes in all.
    pub inodes_total: u64,
    /// When it was read, seconds since the epoch.
    pub read_unix: u64,
    /// Set when the node can read no usage of the volume (the counts are
    /// then 0): why, so the controller tells the claim instead of waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<Skipped>,
}

/// Why a volume's node reports no usage of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skipped {
    /// A raw block volume: no filesystem whose usage the node could read.
    BlockVolume,
}

impl Skipped {
    /// Why, in words, for the claim's Event and `swell volume`.
    pub fn reason(self) -> &'static str {
        match self {
            Skipped::BlockVolume => "a block volume has no filesystem whose usage its node could read",
        }
    }
}

impl Usage {
    /// The report of a volume whose usage its node cannot read, at `read_unix`.
    pub fn skipped(why: Skipped, read_unix: u64) -> Usage {
        Usage { bytes_used: 0, bytes_total: 0, inodes_used: 0, inodes_total: 0, read_unix, skipped: Some(why) }
    }

    /// Free bytes.
    pub fn bytes_free(&self) -> u64 {
        self.bytes_total.saturating_sub(self.bytes_used)
    }

    /// How old the reading is at `now` (seconds since the epoch); a reading
    /// from the future (clocks apart) counts as fresh.
    pub fn age_secs(&self, now: u64) -> u64 {
        now.saturating_sub(self.read_unix)
    }
}

/// Why a volume needs to grow, or `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossed {
    /// Free bytes fell below the threshold.
    Bytes,
    /// Free inodes fell below the threshold.
    Inodes,
}

/// What one auto-grow of a volume does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// Grow to this many bytes (at most the limit).
    To(u64),
    /// The volume is at its limit already.
    AtLimit,
}

impl AutoGrowPolicy {
    /// Whether `usage` crossed the policy's threshold, and which one;
    /// never while the policy is off.
    pub fn crossed(&self, usage: &Usage) -> Option<Crossed> {
        if !self.on {
            return None;
        }
        if usage.bytes_total > 0 && usage.bytes_free() < self.free_below.of(usage.bytes_total) {
            return Some(Crossed::Bytes);
        }
        let inodes_low = self.inodes_free_below_percent.is_some_and(|p| {
            usage.inodes_total > 0 && u128::from(usage.inodes_total.saturating_sub(usage.inodes_used)) * 100 < u128::from(usage.inodes_total) * u128::from(p)
        });
        inodes_low.then_some(Crossed::Inodes)
    }

    /// The size a volume of `current` bytes grows to: one step, rounded up
    /// to `granularity` (the backend's; 0 or 1 for none), but never past
    /// the limit, and a step that rounds to nothing still adds one unit.
    pub fn growth(&self, current: u64, granularity: u64) -> Growth {
        let granularity = granularity.max(1);
        // The limit, rounded down: a grow never passes it.
        let limit = self.limit_bytes / granularity * granularity;
        if current >= limit {
            return Growth::AtLimit;
        }
        let step = self.step.of(current).max(1);
        let wanted = current.saturating_add(step).checked_next_multiple_of(granularity).unwrap_or(u64::MAX);
        Growth::To(wanted.min(limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{GIB, MIB};

    fn usage(bytes_used: u64, bytes_total: u64) -> Usage {
        Usage { bytes_used, bytes_total, inodes_used: 10, inodes_total: 1000, read_unix: 0, skipped: None }
    }

    fn policy(free_below: Amount, step: Amount, limit_bytes: u64) -> AutoGrowPolicy {
        AutoGrowPolicy { on: true, free_below, inodes_free_below_percent: None, step, limit_bytes }
    }

    #[test]
    fn a_volume_crosses_when_free_bytes_or_free_inodes_fall_below_the_threshold() {
        let p = policy(Amount::Percent(10), Amount::Percent(20), 10 * GIB);
        assert_eq!(p.crossed(&usage(89 * MIB, 100 * MIB)), None, "11% free");
        assert_eq!(p.crossed(&usage(90 * MIB, 100 * MIB)), None, "exactly 10% free is not below");
        assert_eq!(p.crossed(&usage(91 * MIB, 100 * MIB)), Some(Crossed::Bytes));
        let bytes = policy(Amount::Bytes(2 * GIB), Amount::Percent(20), 10 * GIB);
        assert_eq!(bytes.crossed(&usage(7 * GIB, 10 * GIB)), None);
        assert_eq!(bytes.crossed(&usage(9 * GIB, 10 * GIB)), Some(Crossed::Bytes));
        let inodes = AutoGrowPolicy { inodes_free_below_percent: Some(5), ..p };
        let few_inodes = Usage { inodes_used: 960, ..usage(0, 100 * MIB) };
        assert_eq!(inodes.crossed(&few_inodes), Some(Crossed::Inodes));
        assert_eq!(p.crossed(&few_inodes), None, "no inode threshold set");
        let no_inode_count = Usage { inodes_used: 0, inodes_total: 0, ..usage(0, 100 * MIB) };
        assert_eq!(inodes.crossed(&no_inode_count), None, "btrfs has no fixed inode count");
        assert_eq!(p.crossed(&Usage { bytes_total: 0, ..usage(0, 0) }), None, "an empty reading decides nothing");
        assert_eq!(inodes.crossed(&Usage::skipped(Skipped::BlockVolume, 0)), None, "no reading crosses nothing");
        assert_eq!(AutoGrowPolicy { on: false, ..p }.crossed(&usage(99 * MIB, 100 * MIB)), None, "off: never crossed");
    }

    #[test]
    fn a_grow_adds_one_rounded_step_and_stops_at_the_limit() {
        let p = policy(Amount::Percent(10), Amount::Percent(20), 2 * GIB);
        assert_eq!(p.growth(GIB, MIB), Growth::To(GIB + 205 * MIB), "20% of 1 GiB rounded up to a MiB");
        assert_eq!(p.growth(1900 * MIB, MIB), Growth::To(2 * GIB), "only to the limit");
        assert_eq!(p.growth(2 * GIB, MIB), Growth::AtLimit);
        assert_eq!(p.growth(3 * GIB, MIB), Growth::AtLimit, "already past a limit lowered later");
        let bytes = policy(Amount::Percent(10), Amount::Bytes(100), 2 * GIB);
        assert_eq!(bytes.growth(GIB, MIB), Growth::To(GIB + MIB), "a tiny step still grows one unit");
        let odd_limit = policy(Amount::Percent(10), Amount::Percent(50), GIB + MIB / 2);
        assert_eq!(odd_limit.growth(GIB, MIB), Growth::AtLimit, "the limit rounds down to the granularity");
        assert_eq!(Amount::Percent(1000).of(u64::MAX), u64::MAX, "no overflow");
    }

    #[test]
    fn the_stored_policy_reads_back_as_written() {
        let p = AutoGrowPolicy { inodes_free_below_percent: Some(5), ..policy(Amount::Bytes(GIB), Amount::Percent(20), 50 * GIB) };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"on":true,"free_below":{"bytes":1073741824},"inodes_free_below_percent":5,"step":{"percent":20},"limit_bytes":53687091200}"#);
        assert_eq!(serde_json::from_str::<AutoGrowPolicy>(&json).unwrap(), p);
        let skipped = serde_json::to_string(&Usage::skipped(Skipped::BlockVolume, 7)).unwrap();
        assert!(skipped.ends_with(r#""read_unix":7,"skipped":"block_volume"}"#), "{skipped}");
        let reading = r#"{"bytes_used":1,"bytes_total":2,"inodes_used":3,"inodes_total":4,"read_unix":5}"#;
        assert_eq!(serde_json::from_str::<Usage>(reading).unwrap().skipped, None, "a reading stored before skips existed reads back");
    }
}
