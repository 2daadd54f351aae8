//! One volume as the operator sees it: the size the claim requests, the size
//! Swell was last asked for, the size the backend holds now, and the state of
//! its expansion with the reason, decided from those alone (pure).

use std::time::Duration;

use serde::Serialize;
use swell_storage::ExpansionRecord;
use swell_storage::auto_grow::{AutoGrowPolicy, AutoGrowRecord, GRANULARITY, Growth, Usage};

/// What Kubernetes says about a volume's claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Claim {
    /// The PersistentVolume.
    pub pv: String,
    /// The claim, `namespace/name`, if the PV is bound.
    pub claim: Option<String>,
    /// The claim's storage request.
    pub requested_bytes: Option<u64>,
    /// The claim's status capacity: what kubelet reported once the node
    /// grew the filesystem.
    pub capacity_bytes: Option<u64>,
    /// The resize status kubelet and the resizer left (`allocatedResourceStatuses`).
    pub resize_status: Option<String>,
    /// The claim's conditions, e.g. `FileSystemResizePending`, with their messages.
    pub conditions: Vec<String>,
}

/// Where a volume's expansion stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum State {
    /// Nothing is pending.
    Settled,
    /// The backend is short of the size last asked for.
    Growing,
    /// Growing for longer than the stuck threshold.
    Stuck,
    /// The backend grew; the volume's clients are still to be told.
    Announcing,
    /// The claim requests more than Swell was asked for: the resizer has not
    /// called yet (or was refused).
    WaitingForResizer,
    /// The backend holds the size; kubelet has not reported the filesystem grown yet.
    NodeExpanding,
    /// An expansion record without a volume at the backend.
    Missing,
    /// An expansion record that cannot be read: neither finished nor
    /// dropped until an operator repairs or removes it.
    Unreadable,
}

impl State {
    /// The name the table shows.
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Settled => "settled",
            State::Growing => "growing",
            State::Stuck => "stuck",
            State::Announcing => "announcing",
            State::WaitingForResizer => "waiting for resizer",
            State::NodeExpanding => "node expanding",
            State::Missing => "missing",
            State::Unreadable => "unreadable record",
        }
    }
}

/// One volume, every field read just now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct VolumeView {
    /// The CSI volume id.
    pub volume_id: String,
    /// Its backend (`local`, `rbd`).
    pub backend: String,
    /// The claim's requested size, when Kubernetes was asked.
    pub requested_bytes: Option<u64>,
    /// The size Swell was last asked for (its expansion record).
    pub desired_bytes: Option<u64>,
    /// The backend's size now; `None` when the backend has no such volume.
    pub current_bytes: Option<u64>,
    /// Whether `current_bytes` is the size the volume's record last saw
    /// rather than one read now (a listing of a backend that lists recorded
    /// sizes, such as RBD; the reconciler's sweep catches a drift).
    pub current_is_recorded: bool,
    /// Where the expansion stands.
    pub state: State,
    /// How long the backend has been short of the desired size.
    pub pending_secs: Option<u64>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// The expansion record as stored.
    pub record: Option<ExpansionRecord>,
    /// The claim, when Kubernetes was asked and knows the volume.
    pub kubernetes: Option<Claim>,
    /// Its auto-grow policy and claim, as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_grow: Option<AutoGrowRecord>,
    /// Its node's last usage reading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// When auto-grow next asks for more, with a policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_grow: Option<NextGrow>,
}

/// When auto-grow next raises a volume's claim, from its stored policy and
/// its node's last reading. The claim's annotations, which only the
/// controller reads, may make it later, smaller, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "when")]
pub(crate) enum NextGrow {
    /// Off unless the claim turns it on.
    Off,
    /// Its node has reported no reading (not staged, or not yet).
    NoReading,
    /// Its node reads no usage of it (a block volume).
    Skipped,
    /// At its limit: it grows no more.
    AtLimit,
    /// Once more than `used_bytes` are used, to `to_bytes`.
    Above { used_bytes: u64, to_bytes: u64 },
    /// Across its threshold now: to `to_bytes` at the controller's next look.
    Now { to_bytes: u64 },
}

impl NextGrow {
    /// For a volume of `size` bytes (the larger of the backend's size and
    /// the claim's request, as the controller steps from) under `policy`.
    fn of(policy: &AutoGrowPolicy, usage: Option<&Usage>, size: u64) -> NextGrow {
        if !policy.on {
            return NextGrow::Off;
        }
        let Some(usage) = usage else { return NextGrow::NoReading };
        if usage.skipped.is_some() {
            return NextGrow::Skipped;
        }
        let Growth::To(to_bytes) = policy.growth(size, GRANULARITY) else { return NextGrow::AtLimit };
        if policy.crossed(usage).is_some() {
            return NextGrow::Now { to_bytes };
        }
        NextGrow::Above { used_bytes: usage.bytes_total.saturating_sub(policy.free_below.of(usage.bytes_total)), to_bytes }
    }
}

impl VolumeView {
    /// The view of a volume from what was read: its backend's size now
    /// (`None`: missing), its record, its claim, at `now` (seconds since the
    /// epoch), with growing longer than `stuck_after` counted as stuck.
    pub(crate) fn new(
        volume_id: String,
        backend: &str,
        current: Option<u64>,
        record: Option<ExpansionRecord>,
        kubernetes: Option<Claim>,
        now: u64,
        stuck_after: Duration,
    ) -> Self {
        let waiting = record.as_ref().and_then(|r| r.waiting_for(now));
        let requested = kubernetes.as_ref().and_then(|k| k.requested_bytes);
        let reported = kubernetes.as_ref().and_then(|k| k.capacity_bytes);
        let state = match (current, waiting) {
            (None, _) => State::Missing,
            (Some(_), Some(waited)) if waited >= stuck_after => State::Stuck,
            (Some(_), Some(_)) => State::Growing,
            (Some(_), None) if record.as_ref().is_some_and(ExpansionRecord::announcement_owed) => State::Announcing,
            (Some(size), None) if requested.is_some_and(|r| r > size) => State::WaitingForResizer,
            (Some(size), None) if reported.is_some_and(|r| r < size) => State::NodeExpanding,
            (Some(_), None) => State::Settled,
        };
        VolumeView {
            volume_id,
            backend: backend.to_owned(),
            requested_bytes: requested,
            desired_bytes: record.as_ref().map(|r| r.desired_bytes),
            current_bytes: current,
            current_is_recorded: false,
            state,
            pending_secs: waiting.map(|w| w.as_secs()),
            last_error: record.as_ref().and_then(|r| r.last_error.clone()),
            record,
            kubernetes,
            auto_grow: None,
            usage: None,
            next_grow: None,
        }
    }
}

impl VolumeView {
    /// The same view, its record found but not read, for `reason`.
    pub(crate) fn unreadable(mut self, reason: String) -> Self {
        self.state = State::Unreadable;
        self.last_error = Some(reason);
        self
    }

    /// The same view with its auto-grow record, last usage reading, and
    /// when it next grows.
    pub(crate) fn growing_by_itself(mut self, auto_grow: Option<AutoGrowRecord>, usage: Option<Usage>) -> Self {
        let size = self.current_bytes.max(self.requested_bytes).unwrap_or(0);
        self.next_grow = auto_grow.as_ref().map(|record| NextGrow::of(&record.policy, usage.as_ref(), size));
        self.auto_grow = auto_grow;
        self.usage = usage;
        self
    }

    /// The same view, its current size as the record last saw it.
    pub(crate) fn recorded(mut self) -> Self {
        self.current_is_recorded = true;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use swell_storage::auto_grow::{Amount, Skipped};
    use swell_storage::units::{GIB, MIB};
    const NOW: u64 = 1_000_000;
    const STUCK: Duration = Duration::from_secs(600);

    fn record(current: u64, desired: u64, since: u64) -> ExpansionRecord {
        let id = "local:aa".parse().unwrap();
        ExpansionRecord { desired_since_unix: since, ..ExpansionRecord::new(&id, current, desired) }
    }

    fn claim(requested: u64, capacity: u64) -> Claim {
        Claim { pv: "pv".into(), requested_bytes: Some(requested), capacity_bytes: Some(capacity), ..Default::default() }
    }

    fn state(current: Option<u64>, record: Option<ExpansionRecord>, claim: Option<Claim>) -> (State, Option<u64>) {
        let view = VolumeView::new("local:aa".into(), "local", current, record, claim, NOW, STUCK);
        (view.state, view.pending_secs)
    }

    #[test]
    fn each_state_follows_from_the_sizes_read() {
        assert_eq!(state(Some(GIB), None, None), (State::Settled, None));
        assert_eq!(state(Some(GIB), Some(record(GIB, 2 * GIB, NOW - 30)), None), (State::Growing, Some(30)));
        assert_eq!(state(Some(GIB), Some(record(GIB, 2 * GIB, NOW - 601)), None), (State::Stuck, Some(601)));
        let unheard = record(GIB, 2 * GIB, NOW).reached(2 * GIB, None, None);
        assert_eq!(state(Some(2 * GIB), Some(unheard), None), (State::Announcing, None));
        assert_eq!(state(Some(GIB), None, Some(claim(2 * GIB, GIB))), (State::WaitingForResizer, None));
        let grown = record(GIB, 2 * GIB, NOW).reached(2 * GIB, Some(2 * GIB), None);
        assert_eq!(state(Some(2 * GIB), Some(grown.clone()), Some(claim(2 * GIB, GIB))), (State::NodeExpanding, None));
        assert_eq!(state(Some(2 * GIB), Some(grown.clone()), Some(claim(2 * GIB, 2 * GIB))), (State::Settled, None));
        assert_eq!(state(None, Some(grown), None), (State::Missing, None));
    }

    #[test]
    fn the_next_grow_follows_from_the_policy_the_reading_and_the_size() {
        let policy =
            AutoGrowPolicy { on: true, free_below: Amount::Percent(30), inodes_free_below_percent: None, step: Amount::Percent(50), limit_bytes: 640 * MIB };
        let reading = |used| Usage { bytes_used: used, bytes_total: 300 * MIB, inodes_used: 1, inodes_total: 100, read_unix: 0, skipped: None };
        let next = |p: &AutoGrowPolicy, usage: Option<Usage>, size| NextGrow::of(p, usage.as_ref(), size);
        assert_eq!(next(&policy, Some(reading(100 * MIB)), 320 * MIB), NextGrow::Above { used_bytes: 210 * MIB, to_bytes: 480 * MIB });
        assert_eq!(next(&policy, Some(reading(211 * MIB)), 320 * MIB), NextGrow::Now { to_bytes: 480 * MIB });
        assert_eq!(next(&policy, Some(reading(100 * MIB)), 480 * MIB), NextGrow::Above { used_bytes: 210 * MIB, to_bytes: 640 * MIB }, "only to the limit");
        assert_eq!(next(&policy, Some(reading(299 * MIB)), 640 * MIB), NextGrow::AtLimit);
        assert_eq!(next(&policy, None, 320 * MIB), NextGrow::NoReading);
        assert_eq!(next(&policy, Some(Usage::skipped(Skipped::BlockVolume, 0)), 320 * MIB), NextGrow::Skipped);
        assert_eq!(next(&AutoGrowPolicy { on: false, ..policy }, Some(reading(299 * MIB)), 320 * MIB), NextGrow::Off);
        let record = AutoGrowRecord { policy, claim: None };
        let claimed = VolumeView::new("local:aa".into(), "local", Some(320 * MIB), None, Some(claim(480 * MIB, 320 * MIB)), NOW, STUCK);
        let view = claimed.growing_by_itself(Some(record), Some(reading(100 * MIB)));
        assert_eq!(view.next_grow, Some(NextGrow::Above { used_bytes: 210 * MIB, to_bytes: 640 * MIB }), "steps from the claim's larger request");
    }
}
