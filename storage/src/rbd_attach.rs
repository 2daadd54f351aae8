//! How a node attaches an RBD volume, as the StorageClass chooses it: the
//! attach mode (`mounter: rbd | rbd-nbd | fuse`; without it the node uses
//! what it detects) and the options handed to the kernel mapper
//! (`mapOptions`, ceph-csi's syntax: `krbd:ms_mode=secure;nbd:io-timeout=30`).
//! The one parser: the controller refuses a bad StorageClass at
//! CreateVolume and puts the canonical form into the volume context; the
//! node reads it back from there at NodeStageVolume.
//!
//! Options are allow-listed, so nothing a StorageClass says can make a
//! mapping that breaks what Swell relies on: read-only or exclusive
//! mappings (the controller's resize must reach the image), another
//! cluster's identity (`fsid`, `ip`), or an rbd-nbd device that does not
//! follow the image's size (`try-netlink`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

/// The StorageClass parameter (and volume context key) naming the mode.
pub const MOUNTER_KEY: &str = "mounter";
/// The StorageClass parameter (and volume context key) of map options.
pub const MAP_OPTIONS_KEY: &str = "mapOptions";
/// The StorageClass parameter (and volume context key) asking for a LUKS2
/// encrypted volume: `"true"` or `"false"` (docs/encryption.md).
pub const ENCRYPTED_KEY: &str = "encrypted";
/// The volume context key (set by the controller only, never a
/// StorageClass parameter) naming the volume an encrypted volume made from
/// a snapshot or a volume copied its wrapped data key from: the key is
/// bound to that volume's id until the first stage binds it to the new one
/// (docs/encryption.md).
pub const KEY_FROM_KEY: &str = "encryptionKeyFrom";
/// The image metadata key that holds an encrypted volume's wrapped data key.
pub const WRAPPED_KEY_META: &str = "swell.encryption.wrapped-key";

/// What krbd gets unless the StorageClass sets `ms_mode`: the kernel client
/// speaks msgr1 by default, which a cluster that binds only msgr2 (the
/// default monitor port 3300 alone) refuses with "failed to get mon
/// address"; `prefer-crc` speaks msgr2 in crc mode, or secure mode where
/// the cluster insists. Clusters reachable only by msgr1 set
/// `krbd:ms_mode=legacy`.
pub const DEFAULT_KRBD_MS_MODE: &str = "prefer-crc";

/// How RBD images are attached on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttachMode {
    /// The kernel's rbd driver: `rbd map` gives /dev/rbdN.
    #[serde(rename = "rbd")]
    Krbd,
    /// The nbd driver served by `rbd-nbd`: /dev/nbdN.
    #[serde(rename = "rbd-nbd")]
    Nbd,
    /// rbd-fuse exposes the image as a file and a loop device makes it a
    /// block device; needs no kernel module beyond fuse and loop.
    #[serde(rename = "fuse")]
    FuseLoop,
}

impl AttachMode {
    /// Every mode, in the order a node prefers them.
    pub const ALL: [AttachMode; 3] = [AttachMode::Krbd, AttachMode::Nbd, AttachMode::FuseLoop];

    /// The `mounter` value that asks for this mode.
    pub fn mounter(self) -> &'static str {
        match self {
            AttachMode::Krbd => "rbd",
            AttachMode::Nbd => "rbd-nbd",
            AttachMode::FuseLoop => "fuse",
        }
    }

    /// The mode a `mounter` value asks for.
    pub fn from_mounter(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.mounter() == value)
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Krbd => "krbd",
            AttachMode::Nbd => "rbd-nbd",
            AttachMode::FuseLoop => "rbd-fuse+loop",
        })
    }
}

/// A parameter that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct InvalidAttach {
    /// `mounter`, `mapOptions` or `encrypted`.
    pub key: &'static str,
    /// What is wrong, naming the offending part.
    pub reason: String,
}

/// The two kernel mappers map options go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mapper {
    Krbd,
    Nbd,
}

impl Mapper {
    fn prefix(self) -> &'static str {
        match self {
            Mapper::Krbd => "krbd",
            Mapper::Nbd => "nbd",
        }
    }

    fn allowed(self) -> &'static [(&'static str, Shape)] {
        match self {
            Mapper::Krbd => KRBD_ALLOWED,
            Mapper::Nbd => NBD_ALLOWED,
        }
    }

    fn refused(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Mapper::Krbd => KRBD_REFUSED,
            Mapper::Nbd => NBD_REFUSED,
        }
    }
}

/// What an option's value may be.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// No value.
    Flag,
    /// A decimal number.
    Number,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A CRUSH location: `type:name` pairs joined by `|`.
    Location,
}

/// The options of rbd(8) "Kernel rbd (krbd) options" Swell lets through.
const KRBD_ALLOWED: &[(&str, Shape)] = &[
    ("ms_mode", Shape::OneOf(&["legacy", "crc", "secure", "prefer-crc", "prefer-secure"])),
    ("queue_depth", Shape::Number),
    ("alloc_size", Shape::Number),
    ("lock_timeout", Shape::Number),
    ("mount_timeout", Shape::Number),
    ("osdkeepalive", Shape::Number),
    ("osd_idle_ttl", Shape::Number),
    ("osd_request_timeout", Shape::Number),
    ("lock_on_read", Shape::Flag),
    ("notrim", Shape::Flag),
    ("abort_on_full", Shape::Flag),
    ("crc", Shape::Flag),
    ("nocrc", Shape::Flag),
    ("tcp_nodelay", Shape::Flag),
    ("notcp_nodelay", Shape::Flag),
    ("cephx_require_signatures", Shape::Flag),
    ("nocephx_require_signatures", Shape::Flag),
    ("cephx_sign_messages", Shape::Flag),
    ("nocephx_sign_messages", Shape::Flag),
    ("rxbounce", Shape::Flag),
    ("rw", Shape::Flag),
    ("read_write", Shape::Flag),
    ("share", Shape::Flag),
    ("noshare", Shape::Flag),
    ("udev", Shape::Flag),
    // For node plugins outside the host's network namespace, where udev's
    // events never arrive; the rbd CLI (16.2+) still checks the device node.
    ("noudev", Shape::Flag),
    ("read_from_replica", Shape::OneOf(&["no", "balance", "localize"])),
    ("compression_hint", Shape::OneOf(&["none", "compressible", "incompressible"])),
    ("crush_location", Shape::Location),
];

/// krbd options that exist but would break what Swell relies on.
const KRBD_REFUSED: &[(&str, &str)] = &[
    ("fsid", "the cluster comes from the node's ceph.conf"),
    ("ip", "the client address comes from the node's ceph.conf"),
    ("ro", "read-only is decided per publish, not per mapping"),
    ("read_only", "read-only is decided per publish, not per mapping"),
    ("exclusive", "an exclusive mapping never releases the image's lock, and the controller's resize needs it"),
];

/// The `rbd-nbd map` options (16.2) Swell lets through, without the dashes.
const NBD_ALLOWED: &[(&str, Shape)] =
    &[("io-timeout", Shape::Number), ("reattach-timeout", Shape::Number), ("max_part", Shape::Number), ("nbds_max", Shape::Number)];

/// rbd-nbd options that exist but would break what Swell relies on.
const NBD_REFUSED: &[(&str, &str)] = &[
    ("read-only", "read-only is decided per publish, not per mapping"),
    ("exclusive", "an exclusive mapping never releases the image's lock, and the controller's resize needs it"),
    ("device", "the node picks the device"),
    ("cookie", "the node identifies its mappings itself"),
    ("show-cookie", "the node reads the device from the map's output"),
    ("encryption-format", "encryption is Swell's own, above the device"),
    ("encryption-passphrase-file", "encryption is Swell's own, above the device"),
    ("quiesce", "quiesce hooks run programs on the node"),
    ("quiesce-hook", "quiesce hooks run programs on the node"),
    ("timeout", "deprecated; use io-timeout"),
    // Measured in the VM lane with rbd-nbd 16.2.15 on Linux 6.1: the device
    // never took an image's new size (its netlink resize fails), so online
    // expansion would never reach the filesystem.
    ("try-netlink", "rbd-nbd does not resize a netlink-attached device when the image grows (16.2)"),
];

/// Validated map options: for each mapper, option name → value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapOptions {
    options: BTreeMap<Mapper, Vec<(String, Option<String>)>>,
}

impl MapOptions {
    /// Parses `krbd:a,b=1;nbd:c`; a group without a prefix goes to the
    /// mapper of `mounter`, which must then be rbd or rbd-nbd.
    pub fn parse(text: &str, mounter: Option<AttachMode>) -> Result<Self, InvalidAttach> {
        let invalid = |reason: String| InvalidAttach { key: MAP_OPTIONS_KEY, reason };
        let mut parsed = MapOptions::default();
        for group in text.split(';').map(str::trim).filter(|g| !g.is_empty()) {
            let (mapper, list) = match group.split_once(':') {
                Some(("krbd", list)) => (Mapper::Krbd, list),
                Some(("nbd", list)) => (Mapper::Nbd, list),
                Some((prefix, _)) if !prefix.contains(['=', ',']) => {
                    return Err(invalid(format!("unknown mapper {prefix:?} in {group:?} (krbd or nbd)")));
                }
                _ => match mounter {
                    Some(AttachMode::Krbd) => (Mapper::Krbd, group),
                    Some(AttachMode::Nbd) => (Mapper::Nbd, group),
                    Some(AttachMode::FuseLoop) => {
                        return Err(invalid(format!("{group:?} has no krbd: or nbd: prefix, and mounter fuse takes no map options")));
                    }
                    None => return Err(invalid(format!("{group:?} has no krbd: or nbd: prefix, and no mounter says which mapper it is for"))),
                },
            };
            let options = parsed.options.entry(mapper).or_default();
            for item in list.split(',').map(str::trim) {
                let (name, value) = parse_option(mapper, item).map_err(|reason| invalid(format!("{}:{item}: {reason}", mapper.prefix())))?;
                if options.iter().any(|(seen, _)| *seen == name) {
                    return Err(invalid(format!("{}:{name} is given twice", mapper.prefix())));
                }
                options.push((name, value));
            }
        }
        Ok(parsed)
    }

    /// Whether no option was given.
    pub fn is_empty(&self) -> bool {
        self.options.values().all(Vec::is_empty)
    }

    /// The `-o` value for `rbd map`: the StorageClass's krbd options, with
    /// [`DEFAULT_KRBD_MS_MODE`] unless they set `ms_mode`.
    pub fn krbd(&self) -> String {
        let given = self.options.get(&Mapper::Krbd).map(Vec::as_slice).unwrap_or_default();
        let mut all: Vec<String> = Vec::new();
        if !given.iter().any(|(name, _)| name == "ms_mode") {
            all.push(format!("ms_mode={DEFAULT_KRBD_MS_MODE}"));
        }
        all.extend(given.iter().map(|(name, value)| match value {
            Some(value) => format!("{name}={value}"),
            None => name.clone(),
        }));
        all.join(",")
    }

    /// The arguments for `rbd-nbd map`: `--name` or `--name value` each.
    pub fn nbd(&self) -> Vec<String> {
        let given = self.options.get(&Mapper::Nbd).map(Vec::as_slice).unwrap_or_default();
        given.iter().flat_map(|(name, value)| std::iter::once(format!("--{name}")).chain(value.clone())).collect()
    }
}

impl fmt::Display for MapOptions {
    /// The canonical form, which parses back to the same options.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups: Vec<String> = self
            .options
            .iter()
            .filter(|(_, options)| !options.is_empty())
            .map(|(mapper, options)| {
                let list: Vec<String> = options
                    .iter()
                    .map(|(name, value)| match value {
                        Some(value) => format!("{name}={value}"),
                        None => name.clone(),
                    })
                    .collect();
                format!("{}:{}", mapper.prefix(), list.join(","))
            })
            .collect();
        f.write_str(&groups.join(";"))
    }
}

/// One `name` or `name=value`, checked against the mapper's allow-list.
fn parse_option(mapper: Mapper, item: &str) -> Result<(String, Option<String>), String> {
    let (name, value) = match item.split_once('=') {
        Some((name, value)) => (name.trim(), Some(value.trim())),
        None => (item, None),
    };
    if name.is_empty() {
        return Err("an empty option".into());
    }
    if let Some((_, why)) = mapper.refused().iter().find(|(refused, _)| *refused == name) {
        return Err(format!("not allowed: {why}"));
    }
    let Some((_, shape)) = mapper.allowed().iter().find(|(allowed, _)| *allowed == name) else {
        let known: Vec<&str> = mapper.allowed().iter().map(|(n, _)| *n).collect();
        return Err(format!("unknown option (allowed: {})", known.join(", ")));
    };
    let value = match (shape, value) {
        (Shape::Flag, None) => None,
        (Shape::Flag, Some(_)) => return Err("takes no value".into()),
        (_, None | Some("")) => return Err("needs a value".into()),
        (Shape::Number, Some(v)) => {
            v.parse::<u32>().map_err(|_| format!("{v:?} is not a whole number"))?;
            Some(v)
        }
        (Shape::OneOf(words), Some(v)) => {
            if !words.contains(&v) {
                return Err(format!("{v:?} is not one of {}", words.join(", ")));
            }
            Some(v)
        }
        (Shape::Location, Some(v)) => {
            let pair_ok = |pair: &str| pair.split_once(':').is_some_and(|(t, n)| is_word(t) && is_word(n));
            if v.len() > 256 || !v.split('|').all(pair_ok) {
                return Err(format!("{v:?} is not a CRUSH location (type:name, joined by |)"));
            }
            Some(v)
        }
    };
    Ok((name.to_owned(), value.map(str::to_owned)))
}

fn is_word(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// How the StorageClass wants its RBD volumes attached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RbdAttach {
    /// The attach mode; `None` lets the node choose what it detects.
    pub mounter: Option<AttachMode>,
    /// Options for the kernel mappers.
    pub map_options: MapOptions,
    /// LUKS2 on the image, opened with the node-stage Secret's key.
    pub encrypted: bool,
}

impl RbdAttach {
    /// Reads `mounter` and `mapOptions` from StorageClass parameters or a
    /// volume context; other keys are the caller's business.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, InvalidAttach> {
        let mounter = match map.get(MOUNTER_KEY).map(|v| v.trim()) {
            None => None,
            Some(value) => Some(
                AttachMode::from_mounter(value)
                    .ok_or_else(|| InvalidAttach { key: MOUNTER_KEY, reason: format!("{value:?} is not one of rbd, rbd-nbd, fuse") })?,
            ),
        };
        let map_options = match map.get(MAP_OPTIONS_KEY) {
            None => MapOptions::default(),
            Some(text) => MapOptions::parse(text, mounter)?,
        };
        let encrypted = match map.get(ENCRYPTED_KEY).map(|v| v.trim()) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(InvalidAttach { key: ENCRYPTED_KEY, reason: format!("{other:?} is not \"true\" or \"false\"") }),
        };
        Ok(RbdAttach { mounter, map_options, encrypted })
    }

    /// Whether the StorageClass said nothing about attaching.
    pub fn is_default(&self) -> bool {
        self.mounter.is_none() && self.map_options.is_empty() && !self.encrypted
    }

    /// The first key set here that only RBD volumes take (`mounter`,
    /// `mapOptions`), to refuse it for others; `encrypted` applies to
    /// local volumes too.
    pub fn rbd_only_key(&self) -> Option<&'static str> {
        if self.mounter.is_some() {
            Some(MOUNTER_KEY)
        } else if !self.map_options.is_empty() {
            Some(MAP_OPTIONS_KEY)
        } else {
            None
        }
    }

    /// The volume context entries that carry this to the node (canonical,
    /// so the node parses exactly what the controller validated).
    pub fn volume_context(&self) -> HashMap<String, String> {
        let mut context = HashMap::new();
        if let Some(mode) = self.mounter {
            context.insert(MOUNTER_KEY.to_owned(), mode.mounter().to_owned());
        }
        if !self.map_options.is_empty() {
            context.insert(MAP_OPTIONS_KEY.to_owned(), self.map_options.to_string());
        }
        if self.encrypted {
            context.insert(ENCRYPTED_KEY.to_owned(), "true".to_owned());
        }
        context
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn refused(pairs: &[(&str, &str)]) -> InvalidAttach {
        RbdAttach::from_map(&params(pairs)).expect_err("refused")
    }

    #[test]
    fn mounter_names_follow_ceph_csi_and_fuse_is_ours() {
        for mode in AttachMode::ALL {
            assert_eq!(AttachMode::from_mounter(mode.mounter()), Some(mode));
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{}\"", mode.mounter()), "records store the mounter name");
        }
        assert_eq!(AttachMode::from_mounter("krbd"), None, "ceph-csi's mounter for krbd is `rbd`");
        let err = refused(&[("mounter", "nbd")]);
        assert_eq!(err.key, MOUNTER_KEY);
        assert!(err.reason.contains("\"nbd\""), "{err}");
    }

    #[test]
    fn krbd_gets_prefer_crc_unless_the_storage_class_sets_ms_mode() {
        assert_eq!(MapOptions::default().krbd(), "ms_mode=prefer-crc");
        let given = RbdAttach::from_map(&params(&[("mapOptions", "krbd:queue_depth=128,lock_on_read")])).unwrap();
        assert_eq!(given.map_options.krbd(), "ms_mode=prefer-crc,queue_depth=128,lock_on_read");
        let legacy = RbdAttach::from_map(&params(&[("mapOptions", "krbd:ms_mode=legacy")])).unwrap();
        assert_eq!(legacy.map_options.krbd(), "ms_mode=legacy");
    }

    #[test]
    fn ceph_csi_syntax_parses_per_mapper_and_unprefixed_groups_follow_the_mounter() {
        let both = RbdAttach::from_map(&params(&[("mapOptions", " krbd:ms_mode=secure,noudev ; nbd:io-timeout=30,reattach-timeout=60 ;")])).unwrap();
        assert_eq!(both.mounter, None);
        assert_eq!(both.map_options.krbd(), "ms_mode=secure,noudev");
        assert_eq!(both.map_options.nbd(), ["--io-timeout", "30", "--reattach-timeout", "60"]);
        let nbd = RbdAttach::from_map(&params(&[("mounter", "rbd-nbd"), ("mapOptions", "io-timeout=30")])).unwrap();
        assert_eq!(nbd.mounter, Some(AttachMode::Nbd));
        assert_eq!(nbd.map_options.nbd(), ["--io-timeout", "30"]);
        let krbd = RbdAttach::from_map(&params(&[("mounter", "rbd"), ("mapOptions", "crush_location=host:a|rack:b")])).unwrap();
        assert_eq!(krbd.map_options.krbd(), "ms_mode=prefer-crc,crush_location=host:a|rack:b");
        // Without a mounter an unprefixed group names no mapper.
        assert!(refused(&[("mapOptions", "lock_on_read")]).reason.contains("no mounter"));
        assert!(refused(&[("mounter", "fuse"), ("mapOptions", "lock_on_read")]).reason.contains("fuse"));
    }

    #[test]
    fn options_outside_the_allow_list_are_refused_with_the_reason() {
        for (text, expected) in [
            ("krbd:exclusive", "controller's resize"),
            ("krbd:ro", "per publish"),
            ("krbd:fsid=abc", "ceph.conf"),
            ("nbd:try-netlink", "does not resize"),
            ("nbd:read-only", "per publish"),
            ("nbd:quiesce-hook=/bin/sh", "run programs"),
            ("krbd:bogus", "unknown option"),
            ("krbd:io-timeout=5", "unknown option"),
            ("nbd:lock_on_read", "unknown option"),
            ("krbd:queue_depth=lots", "not a whole number"),
            ("krbd:queue_depth", "needs a value"),
            ("krbd:notrim=1", "takes no value"),
            ("krbd:ms_mode=fast", "not one of"),
            ("krbd:crush_location=host", "CRUSH location"),
            ("krbd:crush_location=host:a;b", "no krbd: or nbd: prefix"),
            ("krbd:lock_on_read,,notrim", "empty option"),
            ("krbd:lock_on_read,lock_on_read", "twice"),
            ("rbd:lock_on_read", "unknown mapper \"rbd\""),
            ("krbd:ms_mode=crc\n--id=admin", "not one of"),
        ] {
            let err = refused(&[("mapOptions", text)]);
            assert_eq!(err.key, MAP_OPTIONS_KEY, "{text}");
            assert!(err.reason.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn the_volume_context_round_trips_canonically() {
        let given = params(&[("mounter", "rbd-nbd"), ("mapOptions", "io-timeout=30 ; krbd: ms_mode=secure"), ("pool", "x")]);
        let parsed = RbdAttach::from_map(&given).unwrap();
        let context = parsed.volume_context();
        assert_eq!(context.get("mounter").map(String::as_str), Some("rbd-nbd"));
        assert_eq!(context.get("mapOptions").map(String::as_str), Some("krbd:ms_mode=secure;nbd:io-timeout=30"));
        assert_eq!(context.len(), 2, "only what the node needs");
        assert_eq!(parsed.rbd_only_key(), Some(MOUNTER_KEY));
        assert_eq!(RbdAttach::from_map(&context).unwrap(), parsed);
        assert!(RbdAttach::default().volume_context().is_empty());
        assert!(RbdAttach::from_map(&params(&[("mapOptions", "")])).unwrap().is_default());
    }

    #[test]
    fn encrypted_is_true_or_false_and_reaches_the_node_only_when_true() {
        let on = RbdAttach::from_map(&params(&[("encrypted", "true")])).unwrap();
        assert!(on.encrypted && !on.is_default());
        assert_eq!(on.rbd_only_key(), None, "local volumes take it too");
        assert_eq!(on.volume_context().get("encrypted").map(String::as_str), Some("true"));
        assert_eq!(RbdAttach::from_map(&on.volume_context()).unwrap(), on);
        let off = RbdAttach::from_map(&params(&[("encrypted", "false")])).unwrap();
        assert!(off.is_default() && off.volume_context().is_empty());
        let err = RbdAttach::from_map(&params(&[("encrypted", "yes")])).unwrap_err();
        assert_eq!(err.key, ENCRYPTED_KEY);
        assert!(err.reason.contains("yes"), "{err}");
    }
}
