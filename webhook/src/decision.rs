//! The decision: a size change of a Swell claim, plus the backend's facts
//! read now, gives allow or deny with a message a user can act on. Pure
//! functions, so every rule has a unit test; fetching the facts is
//! [`crate::facts`]'s job and wrapping the answer [`crate::review`]'s.
//!
//! The rules, in order:
//! 1. (in [`crate::claim`]) other provisioners and unchanged requests pass untouched;
//! 2. a request below `status.capacity` is denied (volumes never shrink);
//! 3. while a resize is in flight (old request above capacity, a resize
//!    status in progress, or an open record at the backend) an increase is
//!    denied, and so is a decrease unless the resize failed
//!    (`*ResizeInfeasible`): lowering a failed request, still at or above
//!    capacity, is KEP-1790's recovery and is allowed. Lowering one that
//!    still runs is refused so that two racing patches cannot both pass
//!    (the API server re-reviews the loser against the winner's result);
//! 4. an increase the backend cannot serve now (volume missing, pool unable
//!    to serve I/O, not enough room under the capacity policy) is denied;
//! 5. facts not read in time get the configured policy.

use crate::claim::SizeChange;
use swell_k8s::quantity::format;

/// Resize states of `status.allocatedResourceStatuses` meaning "in flight".
pub const IN_PROGRESS: [&str; 3] = ["ControllerResizeInProgress", "NodeResizePending", "NodeResizeInProgress"];
/// Resize states meaning "failed": the request may be lowered (KEP-1790).
pub const FAILED: [&str; 2] = ["ControllerResizeInfeasible", "NodeResizeInfeasible"];

/// The answer for one update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through; a warning is shown to the user if set.
    Allow {
        /// Shown by kubectl as `Warning: ...`.
        warning: Option<String>,
    },
    /// Refuse it with this message.
    Deny(String),
}

impl Verdict {
    /// Allowed without remark.
    pub const ALLOW: Verdict = Verdict::Allow { warning: None };
}

/// The first step's outcome: decided from the claim alone, or the backend
/// must be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Decided without the backend.
    Decided(Verdict),
    /// An increase of a volume at rest: ask the backend.
    AskBackend,
}

/// What the backend says about the claim's volume, read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeState {
    /// Swell's volume id (the PV's CSI volume handle).
    pub volume_id: String,
    /// The size the backend reports; `None` when the volume is missing.
    pub size_bytes: Option<u64>,
    /// The desired size of the volume's expansion record, if one is open.
    pub recorded_desired: Option<u64>,
    /// Bytes the pool can still promise under Swell's capacity policy.
    pub available_bytes: u64,
    /// Why the pool cannot serve I/O now, if it cannot.
    pub unusable: Option<String>,
}

/// The facts for the second step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Facts {
    /// Read in time.
    Read(VolumeState),
    /// The PV is not a Swell CSI volume (another driver, or no CSI source).
    NotSwellVolume(String),
    /// The claim's PV does not exist; the text says which.
    Missing(String),
    /// Could not be read in time or at all; the text says why.
    Unchecked(String),
}

/// What to do when the facts could not be read in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// Allow (with a warning) instead of denying.
    pub allow_unchecked: bool,
}

/// Rules 2 and 3: what the claim alone decides.
pub fn judge_claim(change: &SizeChange) -> Step {
    let label = change.volume_label();
    let (Some(capacity), Some(_)) = (change.capacity, &change.volume_name) else {
        // Not bound yet: nothing to grow; the API server's own validation applies.
        return Step::Decided(Verdict::ALLOW);
    };
    let (old, new) = (change.old_request, change.new_request);
    if new < capacity {
        return Step::Decided(Verdict::Deny(format!(
            "volume {label} holds {}; {} is below that and volumes never shrink: request {} or more",
            format(capacity),
            format(new),
            format(capacity)
        )));
    }
    let status = change.resize_status.as_deref();
    let state = status.map(|s| format!(" ({s})")).unwrap_or_default();
    let failed = status.is_some_and(|s| FAILED.contains(&s));
    if new < old {
        if failed {
            // KEP-1790: a failed request lowered, still at or above capacity.
            return Step::Decided(Verdict::ALLOW);
        }
        return Step::Decided(Verdict::Deny(format!(
            "volume {label} is still growing from {} to {}{state}; lowering the request to {} is refused while that runs: wait for it \
             to finish (a failed expansion may be lowered, KEP-1790)",
            format(capacity),
            format(old),
            format(new)
        )));
    }
    if failed && old > capacity {
        return Step::Decided(Verdict::Deny(format!(
            "the expansion of volume {label} from {} to {} failed{state}; {} cannot be asked for on top of it: lower the request to a \
             size above {} to retry smaller (KEP-1790)",
            format(capacity),
            format(old),
            format(new),
            format(capacity)
        )));
    }
    if old > capacity || status.is_some_and(|s| IN_PROGRESS.contains(&s)) {
        return Step::Decided(Verdict::Deny(in_flight(label, capacity, old.max(capacity), new, &state)));
    }
    Step::AskBackend
}

/// Rules 3 (the backend's record), 4 and 5.
pub fn judge_facts(change: &SizeChange, facts: &Facts, policy: Policy) -> Verdict {
    let label = change.volume_label();
    let new = change.new_request;
    let capacity = change.capacity.unwrap_or(change.old_request);
    let state = match facts {
        Facts::Read(state) => state,
        Facts::Missing(what) => return Verdict::Deny(missing(label, what, new)),
        Facts::NotSwellVolume(why) => return Verdict::Allow { warning: Some(format!("volume {label} was not checked by Swell: {why}")) },
        Facts::Unchecked(why) if policy.allow_unchecked => {
            return Verdict::Allow { warning: Some(format!("volume {label} was not checked before growing to {}: {why}", format(new))) };
        }
        Facts::Unchecked(why) => {
            return Verdict::Deny(format!(
                "volume {label} cannot be checked now ({why}); growing it from {} to {} is refused until it can: retry in a minute",
                format(capacity),
                format(new)
            ));
        }
    };
    if let Some(reason) = &state.unusable {
        return Verdict::Deny(format!(
            "the backend of volume {label} cannot serve I/O now ({reason}); growing it from {} to {} would hang: retry once it is healthy",
            format(capacity),
            format(new)
        ));
    }
    let Some(size) = state.size_bytes else {
        return Verdict::Deny(missing(label, &format!("{} is not at the backend", state.volume_id), new));
    };
    if let Some(desired) = state.recorded_desired.filter(|&d| d > size) {
        return Verdict::Deny(in_flight(label, size, desired, new, " (recorded at the backend)"));
    }
    let growth = new.saturating_sub(size);
    if growth > state.available_bytes {
        return Verdict::Deny(format!(
            "volume {label} holds {}; growing it to {} needs {} more, but its pool can promise only {} more under Swell's capacity policy: request at most {}",
            format(size),
            format(new),
            format(growth),
            format(state.available_bytes),
            format(size.saturating_add(state.available_bytes))
        ));
    }
    Verdict::ALLOW
}

fn missing(label: &str, what: &str, asked: u64) -> String {
    format!("volume {label} does not exist ({what}); it cannot grow to {}", format(asked))
}

/// The denial of an increase while the volume grows from `from` to `to`.
fn in_flight(label: &str, from: u64, to: u64, asked: u64, state: &str) -> String {
    format!(
        "volume {label} is still growing from {} to {}{state}; {} cannot be asked for until that finishes: wait for it",
        format(from),
        format(to),
        format(asked)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use swell_storage::units::GIB as GI;

    fn change(old: u64, new: u64, capacity: u64, status: Option<&str>) -> SizeChange {
        SizeChange {
            claim: "apps/data".into(),
            volume_name: Some("pvc-1".into()),
            old_request: old * GI,
            new_request: new * GI,
            capacity: Some(capacity * GI),
            resize_status: status.map(str::to_owned),
        }
    }

    fn state(size: u64, available: u64) -> VolumeState {
        VolumeState { volume_id: "local:v1".into(), size_bytes: Some(size * GI), recorded_desired: None, available_bytes: available * GI, unusable: None }
    }

    fn denial(verdict: Verdict) -> String {
        match verdict {
            Verdict::Deny(message) => message,
            allowed => panic!("expected a denial, got {allowed:?}"),
        }
    }

    fn denied(step: Step) -> String {
        match step {
            Step::Decided(verdict) => denial(verdict),
            Step::AskBackend => panic!("expected a denial, got AskBackend"),
        }
    }

    #[test]
    fn a_request_below_capacity_is_denied() {
        let message = denied(judge_claim(&change(10, 5, 10, None)));
        assert_eq!(message, "volume pvc-1 holds 10Gi; 5Gi is below that and volumes never shrink: request 10Gi or more");
        // Even during a failed expansion: recovery may not go below capacity.
        assert!(denied(judge_claim(&change(20, 8, 10, Some("ControllerResizeInfeasible")))).contains("never shrink"));
    }

    #[test]
    fn a_failed_request_may_be_lowered_a_running_one_may_not() {
        for failed in FAILED {
            assert_eq!(judge_claim(&change(100, 15, 10, Some(failed))), Step::Decided(Verdict::ALLOW), "{failed}");
            assert_eq!(judge_claim(&change(100, 10, 10, Some(failed))), Step::Decided(Verdict::ALLOW), "at capacity is no shrink");
        }
        let message = denied(judge_claim(&change(100, 15, 10, Some("ControllerResizeInProgress"))));
        assert_eq!(
            message,
            "volume pvc-1 is still growing from 10Gi to 100Gi (ControllerResizeInProgress); lowering the request to 15Gi is refused while \
             that runs: wait for it to finish (a failed expansion may be lowered, KEP-1790)"
        );
        // Not picked up by the resizer yet: still running (a racing patch looks like this).
        assert!(denied(judge_claim(&change(3, 2, 1, None))).contains("lowering the request to 2Gi is refused"));
    }

    #[test]
    fn an_increase_while_the_claim_shows_a_resize_in_flight_is_denied() {
        let message = denied(judge_claim(&change(20, 30, 10, None)));
        assert_eq!(message, "volume pvc-1 is still growing from 10Gi to 20Gi; 30Gi cannot be asked for until that finishes: wait for it");
        for status in IN_PROGRESS {
            // The request already reached capacity, the node step still runs.
            let message = denied(judge_claim(&change(20, 30, 20, Some(status))));
            assert!(message.contains(&format!("from 20Gi to 20Gi ({status})")), "{message}");
        }
        let message = denied(judge_claim(&change(20, 30, 10, Some("ControllerResizeInfeasible"))));
        assert_eq!(
            message,
            "the expansion of volume pvc-1 from 10Gi to 20Gi failed (ControllerResizeInfeasible); 30Gi cannot be asked for on top of it: \
             lower the request to a size above 10Gi to retry smaller (KEP-1790)"
        );
    }

    #[test]
    fn an_increase_at_rest_asks_the_backend_and_unbound_claims_pass() {
        assert_eq!(judge_claim(&change(10, 20, 10, None)), Step::AskBackend);
        // A failed resize whose request is back at capacity is at rest.
        assert_eq!(judge_claim(&change(10, 20, 10, Some("ControllerResizeInfeasible"))), Step::AskBackend);
        let unbound = SizeChange { capacity: None, volume_name: None, ..change(10, 20, 10, None) };
        assert_eq!(judge_claim(&unbound), Step::Decided(Verdict::ALLOW));
    }

    #[test]
    fn room_under_the_capacity_policy_is_checked() {
        let c = change(10, 20, 10, None);
        assert_eq!(judge_facts(&c, &Facts::Read(state(10, 10)), Policy::default()), Verdict::ALLOW);
        let message = denial(judge_facts(&c, &Facts::Read(state(10, 4)), Policy::default()));
        assert_eq!(
            message,
            "volume pvc-1 holds 10Gi; growing it to 20Gi needs 10Gi more, but its pool can promise only 4Gi more under Swell's capacity \
             policy: request at most 14Gi"
        );
        // The backend already past the request (a grow the PVC has not seen yet) needs no room.
        assert_eq!(judge_facts(&c, &Facts::Read(state(20, 0)), Policy::default()), Verdict::ALLOW);
    }

    #[test]
    fn a_missing_volume_or_a_pool_that_cannot_serve_io_is_denied() {
        let c = change(10, 20, 10, None);
        let missing = VolumeState { size_bytes: None, ..state(10, 100) };
        assert_eq!(
            denial(judge_facts(&c, &Facts::Read(missing), Policy::default())),
            "volume pvc-1 does not exist (local:v1 is not at the backend); it cannot grow to 20Gi"
        );
        let no_pv = denial(judge_facts(&c, &Facts::Missing("there is no PersistentVolume pvc-1".into()), Policy::default()));
        assert_eq!(no_pv, "volume pvc-1 does not exist (there is no PersistentVolume pvc-1); it cannot grow to 20Gi");
        let paused = VolumeState { unusable: Some("placement groups not active: 32 of 32".into()), size_bytes: None, ..state(10, 100) };
        let message = denial(judge_facts(&c, &Facts::Read(paused), Policy { allow_unchecked: true }));
        assert!(message.contains("cannot serve I/O now (placement groups not active: 32 of 32)") && message.contains("from 10Gi to 20Gi"), "{message}");
    }

    #[test]
    fn a_pending_record_at_the_backend_is_a_resize_in_flight() {
        let c = change(10, 20, 10, None);
        let pending = VolumeState { recorded_desired: Some(15 * GI), ..state(10, 100) };
        let message = denial(judge_facts(&c, &Facts::Read(pending), Policy::default()));
        assert!(message.starts_with("volume pvc-1 is still growing from 10Gi to 15Gi (recorded at the backend); 20Gi cannot"), "{message}");
        // A record the backend has already reached is closed in all but name.
        let reached = VolumeState { recorded_desired: Some(15 * GI), ..state(15, 100) };
        assert_eq!(judge_facts(&c, &Facts::Read(reached), Policy::default()), Verdict::ALLOW);
    }

    #[test]
    fn unchecked_facts_follow_the_policy() {
        let c = change(10, 20, 10, None);
        let why = Facts::Unchecked("the backend did not answer within 5s".into());
        let message = denial(judge_facts(&c, &why, Policy::default()));
        assert_eq!(
            message,
            "volume pvc-1 cannot be checked now (the backend did not answer within 5s); growing it from 10Gi to 20Gi is refused until it can: \
             retry in a minute"
        );
        let Verdict::Allow { warning: Some(warning) } = judge_facts(&c, &why, Policy { allow_unchecked: true }) else { panic!("not allowed") };
        assert!(warning.contains("not checked before growing to 20Gi"), "{warning}");
        let foreign = judge_facts(&c, &Facts::NotSwellVolume("driver ebs.csi.aws.com".into()), Policy::default());
        assert!(matches!(foreign, Verdict::Allow { warning: Some(_) }));
    }
}
