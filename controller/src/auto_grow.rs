//! The auto-grow policy as users write it: StorageClass parameters, and the
//! claim annotations that override them within the class's bounds
//! (docs/auto-grow.md). Parsed here, once, into the typed
//! [`AutoGrowPolicy`] the backend stores with the volume. Nothing is
//! guessed: a class's bad value fails CreateVolume naming its key, a
//! claim's bad annotation is reported and ignored.

use std::collections::HashMap;

use swell_storage::auto_grow::{Amount, AutoGrowPolicy};

/// The StorageClass keys of the policy.
pub(crate) const ON_KEY: &str = "autoGrow";
pub(crate) const FREE_BELOW_KEY: &str = "autoGrowFreeBelow";
pub(crate) const INODES_FREE_BELOW_KEY: &str = "autoGrowInodesFreeBelow";
pub(crate) const STEP_KEY: &str = "autoGrowStep";
pub(crate) const LIMIT_KEY: &str = "autoGrowLimit";
pub(crate) const KEYS: [&str; 5] = [ON_KEY, FREE_BELOW_KEY, INODES_FREE_BELOW_KEY, STEP_KEY, LIMIT_KEY];

/// The claim annotations, each overriding the class key of the same meaning.
const ANNOTATIONS: [(&str, &str); 5] = [
    ("swell.csi.storage/auto-grow", ON_KEY),
    ("swell.csi.storage/auto-grow-free-below", FREE_BELOW_KEY),
    ("swell.csi.storage/auto-grow-inodes-free-below", INODES_FREE_BELOW_KEY),
    ("swell.csi.storage/auto-grow-step", STEP_KEY),
    ("swell.csi.storage/auto-grow-limit", LIMIT_KEY),
];

/// Grow when less than this is free, unless the class says otherwise.
const DEFAULT_FREE_BELOW: Amount = Amount::Percent(10);
/// Grow by this much each time, unless the class says otherwise.
const DEFAULT_STEP: Amount = Amount::Percent(20);
/// A step above ten times the volume is a typo, not a wish.
const MAX_STEP_PERCENT: u16 = 1000;

/// One value that is not a valid policy value, by the key or annotation it came in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub(crate) struct PolicyError {
    /// The StorageClass key (`parameters.autoGrowLimit`) or the annotation.
    pub key: &'static str,
    /// What is wrong, with the value as received.
    pub reason: String,
}

/// The policy a StorageClass sets: `None` when it names no auto-grow key.
/// A class may set bounds (`autoGrowLimit`) with `autoGrow: "false"`, so
/// its claims can turn auto-grow on for themselves.
pub(crate) fn from_class(raw: &HashMap<String, String>) -> Result<Option<AutoGrowPolicy>, PolicyError> {
    let get = |key: &str| raw.get(key).map(String::as_str);
    if KEYS.iter().all(|key| get(key).is_none()) {
        return Ok(None);
    }
    let field = |key: &'static str| match key {
        ON_KEY => "parameters.autoGrow",
        FREE_BELOW_KEY => "parameters.autoGrowFreeBelow",
        INODES_FREE_BELOW_KEY => "parameters.autoGrowInodesFreeBelow",
        STEP_KEY => "parameters.autoGrowStep",
        _ => "parameters.autoGrowLimit",
    };
    let on = get(ON_KEY).map(on_off).transpose().map_err(|reason| PolicyError { key: field(ON_KEY), reason })?.unwrap_or(false);
    let limit = get(LIMIT_KEY).ok_or_else(|| PolicyError {
        key: field(LIMIT_KEY),
        reason: "required with any autoGrow key: a volume that grows by itself needs a size it never passes".to_owned(),
    })?;
    let mut policy = AutoGrowPolicy {
        on,
        free_below: DEFAULT_FREE_BELOW,
        inodes_free_below_percent: None,
        step: DEFAULT_STEP,
        limit_bytes: limit_bytes(limit).map_err(|reason| PolicyError { key: field(LIMIT_KEY), reason })?,
    };
    for key in [FREE_BELOW_KEY, INODES_FREE_BELOW_KEY, STEP_KEY] {
        if let Some(value) = get(key) {
            set(&mut policy, key, value).map_err(|reason| PolicyError { key: field(key), reason })?;
        }
    }
    Ok(Some(policy))
}

/// The policy a claim's annotations make of its class's (`class`: as
/// stored with the volume), and each annotation ignored, with why. A claim
/// may turn auto-grow on or off and move its thresholds, but not raise the
/// class's limit, nor turn on what its class gave no bounds for.
pub(crate) fn with_claim(class: Option<AutoGrowPolicy>, annotations: &HashMap<String, String>) -> (Option<AutoGrowPolicy>, Vec<PolicyError>) {
    let mut ignored = Vec::new();
    let ours = ANNOTATIONS.iter().filter_map(|(annotation, key)| annotations.get(*annotation).map(|value| (*annotation, *key, value.as_str())));
    let Some(mut policy) = class else {
        ignored.extend(ours.map(|(annotation, _, _)| PolicyError {
            key: annotation,
            reason: format!("the StorageClass sets no {LIMIT_KEY}, so its claims cannot turn auto-grow on"),
        }));
        return (None, ignored);
    };
    for (annotation, key, value) in ours {
        let mut changed = policy;
        let applied = match key {
            ON_KEY => on_off(value).map(|on| changed.on = on),
            LIMIT_KEY => limit_bytes(value).and_then(|limit| {
                if limit > policy.limit_bytes {
                    return Err(format!("{value:?} is above the StorageClass's {LIMIT_KEY} of {} bytes; a claim can only lower it", policy.limit_bytes));
                }
                changed.limit_bytes = limit;
                Ok(())
            }),
            FREE_BELOW_KEY | INODES_FREE_BELOW_KEY => set(&mut changed, key, value).and_then(|()| within_thresholds(&policy, &changed, key, value)),
            _ => set(&mut changed, key, value),
        };
        match applied {
            Ok(()) => policy = changed,
            Err(reason) => ignored.push(PolicyError { key: annotation, reason }),
        }
    }
    (Some(policy), ignored)
}

/// A claim may only lower its class's thresholds: its node measures the
/// volume against the class's and marks it when that one is crossed, and
/// only then is the claim read.
fn within_thresholds(class: &AutoGrowPolicy, claim: &AutoGrowPolicy, key: &str, value: &str) -> Result<(), String> {
    let lower = match key {
        FREE_BELOW_KEY => match (class.free_below, claim.free_below) {
            (Amount::Percent(c), Amount::Percent(n)) => n <= c,
            (Amount::Bytes(c), Amount::Bytes(n)) => n <= c,
            _ => false,
        },
        _ => class.inodes_free_below_percent.zip(claim.inodes_free_below_percent).is_some_and(|(c, n)| n <= c),
    };
    if lower {
        return Ok(());
    }
    let class_value = match key {
        FREE_BELOW_KEY => match class.free_below {
            Amount::Percent(p) => format!("{p}%"),
            Amount::Bytes(b) => format!("{b} bytes"),
        },
        _ => class.inodes_free_below_percent.map_or_else(|| "none".to_owned(), |p| format!("{p}%")),
    };
    Err(format!("{value:?} is not at or below the StorageClass's threshold ({class_value}) in the same unit; a claim can only lower it"))
}

fn set(policy: &mut AutoGrowPolicy, key: &str, value: &str) -> Result<(), String> {
    match key {
        FREE_BELOW_KEY => policy.free_below = amount(value, 99)?,
        INODES_FREE_BELOW_KEY => match amount(value, 99)? {
            Amount::Percent(p) => policy.inodes_free_below_percent = Some(p),
            Amount::Bytes(_) => return Err(format!("{value:?} must be a percent of the inodes, such as \"5%\"")),
        },
        _ => policy.step = amount(value, MAX_STEP_PERCENT)?,
    }
    Ok(())
}

fn on_off(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{other:?} must be \"true\" or \"false\"")),
    }
}

fn limit_bytes(value: &str) -> Result<u64, String> {
    match swell_k8s::quantity::text_bytes(value) {
        Ok(0) => Err(format!("{value:?} must be above zero")),
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(e.to_string()),
    }
}

/// `"N%"` with N from 1 to `max_percent`, or a storage quantity above zero.
fn amount(value: &str, max_percent: u16) -> Result<Amount, String> {
    if let Some(number) = value.strip_suffix('%') {
        return match number.parse::<u16>() {
            Ok(p) if (1..=max_percent).contains(&p) => Ok(Amount::Percent(p)),
            _ => Err(format!("{value:?} must be a whole percent from 1% to {max_percent}%")),
        };
    }
    limit_bytes(value).map(Amount::Bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use swell_storage::units::GIB;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_class_policy_is_parsed_once_with_defaults_for_what_it_leaves_out() {
        assert_eq!(from_class(&map(&[("backend", "local")])), Ok(None), "no auto-grow key: no policy");
        let full = from_class(&map(&[(ON_KEY, "true"), (FREE_BELOW_KEY, "2Gi"), (INODES_FREE_BELOW_KEY, "5%"), (STEP_KEY, "20%"), (LIMIT_KEY, "50Gi")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            full,
            AutoGrowPolicy {
                on: true,
                free_below: Amount::Bytes(2 * GIB),
                inodes_free_below_percent: Some(5),
                step: Amount::Percent(20),
                limit_bytes: 50 * GIB
            }
        );
        let defaults = from_class(&map(&[(ON_KEY, "true"), (LIMIT_KEY, "10Gi")])).unwrap().unwrap();
        assert_eq!((defaults.free_below, defaults.step), (DEFAULT_FREE_BELOW, DEFAULT_STEP));
        let bounds_only = from_class(&map(&[(LIMIT_KEY, "10Gi")])).unwrap().unwrap();
        assert!(!bounds_only.on, "a limit alone sets bounds for claims, not auto-grow");
    }

    #[test]
    fn a_bad_class_value_names_its_key_and_nothing_is_guessed() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case; 8] = [
            (&[(ON_KEY, "yes")], "parameters.autoGrow", "\"yes\""),
            (&[(ON_KEY, "true")], "parameters.autoGrowLimit", "required"),
            (&[(ON_KEY, "true"), (LIMIT_KEY, "0")], "parameters.autoGrowLimit", "above zero"),
            (&[(ON_KEY, "true"), (LIMIT_KEY, "50GB")], "parameters.autoGrowLimit", "unknown suffix"),
            (&[(ON_KEY, "true"), (LIMIT_KEY, "5Gi"), (FREE_BELOW_KEY, "100%")], "parameters.autoGrowFreeBelow", "1% to 99%"),
            (&[(ON_KEY, "true"), (LIMIT_KEY, "5Gi"), (FREE_BELOW_KEY, "ten%")], "parameters.autoGrowFreeBelow", "whole percent"),
            (&[(ON_KEY, "true"), (LIMIT_KEY, "5Gi"), (INODES_FREE_BELOW_KEY, "1Gi")], "parameters.autoGrowInodesFreeBelow", "percent of the inodes"),
            (&[(ON_KEY, "true"), (LIMIT_KEY, "5Gi"), (STEP_KEY, "1001%")], "parameters.autoGrowStep", "1000%"),
        ];
        for (pairs, key, reason) in cases {
            let err = from_class(&map(pairs)).unwrap_err();
            assert_eq!(err.key, key, "{pairs:?}");
            assert!(err.reason.contains(reason), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn a_claim_overrides_within_its_class_bounds_and_a_bad_annotation_is_ignored_alone() {
        let class = from_class(&map(&[(LIMIT_KEY, "10Gi")])).unwrap();
        let (policy, ignored) = with_claim(
            class,
            &map(&[
                ("swell.csi.storage/auto-grow", "true"),
                ("swell.csi.storage/auto-grow-limit", "4Gi"),
                ("swell.csi.storage/auto-grow-step", "1Gi"),
                ("swell.csi.storage/auto-grow-free-below", "lots"),
                ("unrelated/annotation", "x"),
            ]),
        );
        let policy = policy.unwrap();
        assert!(policy.on, "a claim may turn it on within its class's bounds");
        assert_eq!((policy.limit_bytes, policy.step), (4 * GIB, Amount::Bytes(GIB)));
        assert_eq!(policy.free_below, DEFAULT_FREE_BELOW, "the bad annotation left the class's value");
        assert_eq!(ignored.len(), 1);
        assert_eq!(ignored[0].key, "swell.csi.storage/auto-grow-free-below");

        let (raised, ignored) = with_claim(class, &map(&[("swell.csi.storage/auto-grow-limit", "11Gi")]));
        assert_eq!(raised.unwrap().limit_bytes, 10 * GIB, "a claim cannot raise its class's limit");
        assert!(ignored[0].reason.contains("above the StorageClass"), "{ignored:?}");

        let (raised, ignored) =
            with_claim(class, &map(&[("swell.csi.storage/auto-grow-free-below", "20%"), ("swell.csi.storage/auto-grow-inodes-free-below", "5%")]));
        assert_eq!(raised.unwrap().free_below, DEFAULT_FREE_BELOW, "a claim cannot raise its class's threshold");
        assert_eq!(ignored.len(), 2, "nor set one the class has not: {ignored:?}");
        let (lowered, ignored) = with_claim(class, &map(&[("swell.csi.storage/auto-grow-free-below", "5%")]));
        assert_eq!((lowered.unwrap().free_below, ignored), (Amount::Percent(5), vec![]));

        let (none, ignored) = with_claim(None, &map(&[("swell.csi.storage/auto-grow", "true")]));
        assert_eq!(none, None, "no class bounds: a claim cannot turn it on");
        assert_eq!(ignored[0].key, "swell.csi.storage/auto-grow");
        assert!(ANNOTATIONS.iter().all(|(a, _)| a.starts_with("swell.csi.storage/auto-grow")));
    }
}
