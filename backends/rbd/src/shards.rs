//! A pool's layout (docs/rbd-state.md): the object `swell.layout` records
//! its shard count ([`crate::layout`]), so changes of different volumes
//! rarely meet on one object.
//!
//! A pool whose state is still the one object `swell.state` of earlier
//! releases is migrated the first time a controller touches it: every
//! shard, then the budget ([`crate::budget`]), then the layout object are
//! made with exclusive creates from that object's entries, and the object
//! is emptied last but for a total no release can parse, so a controller
//! of an earlier release left running fails instead of writing there. Each step is decided by the old object alone, so a
//! migration killed anywhere is completed by the next one, and two
//! controllers migrating at once make the same objects (the second's
//! creates find them made). A client that may not write (the webhook's
//! read-only user) reads the old object until a controller migrated it.

use std::collections::{BTreeMap, BTreeSet};

use crate::budget;
use crate::errors::RbdError;
use crate::ffi::{Errno, IoCtx, ReadOp, WriteOp};
use crate::layout::{Layout, STATE_OBJECT};
use crate::state::{self, GRANT_KEY, Key, PENDING_KEY, Stored, TOTAL_KEY};

/// The object recording a pool's layout.
pub(crate) const LAYOUT_OBJECT: &str = "swell.layout";
/// Its omap key holding the shard count.
const SHARDS_KEY: &str = "shards";
/// Shards of a pool laid out by this release.
pub(crate) const SHARDS: u32 = 16;
/// What the old object's `total` holds once moved.
const FENCE: &str = "moved into shards (swell.layout): this release cannot use it";
/// Entries of the old object read per page while migrating.
const PAGE: u64 = 1024;

/// Whether this client may read the pool's state. A cephx user kept to its
/// own pools (`osd 'profile rbd pool=<pool>'`, as deploy/ documents) gets
/// EPERM from every other pool, where it can have no volume either; any
/// other answer is left to the read that follows.
pub(crate) fn readable(io: &IoCtx) -> bool {
    let mut op = ReadOp::default();
    op.omap_get(&[SHARDS_KEY.to_owned()]);
    !matches!(op.operate(io, LAYOUT_OBJECT), Err(Errno::EPERM))
}

/// The recorded layout, `None` when the pool has none yet.
fn recorded(io: &IoCtx) -> Result<Option<Layout>, RbdError> {
    let mut op = ReadOp::default();
    op.omap_get(&[SHARDS_KEY.to_owned()]);
    let raw = match op.operate(io, LAYOUT_OBJECT) {
        Ok(mut out) => out.omaps.pop().unwrap_or_default().entries.into_iter().next().map(|(_, raw)| raw),
        Err(Errno::ENOENT) => None,
        Err(e) => return Err(RbdError::osd(format!("read {LAYOUT_OBJECT}"), e, None)),
    };
    match raw {
        None => Ok(None),
        Some(raw) => match state::decode_total(&raw)? {
            count @ 1..=4096 => Ok(Some(Layout::Sharded(count as u32))),
            other => Err(state::corrupt("the shard count", other)),
        },
    }
}

/// The pool's layout, migrating its state first when it is still the one
/// object of earlier releases (see the module doc). `stop_after` ends a
/// migration after that many shards, as a kill would (tests only).
pub(crate) fn open(io: &IoCtx, stop_after: Option<u32>) -> Result<Layout, RbdError> {
    if let Some(layout) = recorded(io)? {
        return Ok(layout);
    }
    match migrate(io, Layout::Sharded(SHARDS), stop_after) {
        Ok(layout) => Ok(layout),
        // A client that may not write reads the old object meanwhile.
        Err(RbdError::Ceph(failure)) if failure.errno == Errno::EPERM => Ok(Layout::Unsharded),
        Err(err) => Err(err),
    }
}

/// The entries, the entries with work left and the promised bytes of one
/// shard-to-be.
#[derive(Default)]
struct ShardContent {
    keys: Vec<(String, Vec<u8>)>,
    pending: BTreeSet<String>,
    promised: u64,
}

/// Moves the old object's entries into `layout`'s shards (see the module doc).
fn migrate(io: &IoCtx, layout: Layout, stop_after: Option<u32>) -> Result<Layout, RbdError> {
    let failed = |step: &str, errno: Errno| RbdError::osd(format!("migrate {STATE_OBJECT}: {step}"), errno, None);
    let mut shards: BTreeMap<u32, ShardContent> = (0..layout.count()).map(|n| (n, ShardContent::default())).collect();
    let (mut after, mut old_keys) = (String::new(), Vec::new());
    loop {
        let mut op = ReadOp::default();
        op.omap_page(&after, "", PAGE).map_err(|e| failed("page", e))?;
        let page = match op.operate(io, STATE_OBJECT) {
            Ok(mut out) => out.omaps.pop().unwrap_or_default(),
            Err(Errno::ENOENT) => Default::default(),
            Err(e) => return Err(failed("read", e)),
        };
        for (name, raw) in &page.entries {
            old_keys.push(name.clone());
            let Some(key) = Key::of_stored(name) else { continue };
            let shard = shards.entry(layout.shard_of(key.name())).or_default();
            if name == &key.entry() {
                shard.promised = shard.promised.saturating_add(Stored::decode(&key, raw)?.promised());
                shard.keys.push((name.clone(), raw.clone()));
            } else {
                // A pending mark: the shard lists the entry instead.
                shard.pending.insert(key.entry());
            }
        }
        match page.entries.last() {
            Some((last, _)) if page.more => after = last.clone(),
            _ => break,
        }
    }
    let mut grants = Vec::new();
    for (n, content) in &shards {
        if stop_after.is_some_and(|stop| *n >= stop) {
            return Err(failed("stopped (test)", Errno::EINTR));
        }
        let grant = budget::Grant { bytes: content.promised, epoch: 1 };
        let mut op = WriteOp::default();
        op.create(true).omap_set(&content.keys).omap_set(&[
            (TOTAL_KEY, content.promised.to_string().into_bytes()),
            (GRANT_KEY, grant.encode()),
            (PENDING_KEY, state::encode_pending(&content.pending)),
        ]);
        match op.operate(io, &layout.object(*n)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(failed("write a shard", e)),
        }
        grants.push((*n, grant));
    }
    match budget::create(io, &grants) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(failed("write the budget", e)),
    }
    let Layout::Sharded(count) = layout else { unreachable!("migrating into shards") };
    let mut op = WriteOp::default();
    op.create(true).omap_set(&[(SHARDS_KEY, count.to_string())]);
    match op.operate(io, LAYOUT_OBJECT) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(failed("write the layout", e)),
    }
    // The old object keeps only a total no release can read: a controller
    // of an earlier release still running fails every change there
    // instead of writing where nothing reads any more.
    let mut op = WriteOp::default();
    op.create(false).omap_rm(&old_keys).omap_set(&[(TOTAL_KEY, FENCE)]);
    if let Err(e) = op.operate(io, STATE_OBJECT) {
        return Err(failed("fence the old object", e));
    }
    let moved: usize = shards.values().map(|c| c.keys.len() + c.pending.len()).sum();
    if moved > 0 {
        tracing::info!(keys = moved, shards = count, "moved the pool's state from {STATE_OBJECT} into shards");
    }
    // The layout recorded first (by another controller) is the one to use.
    Ok(recorded(io)?.unwrap_or(layout))
}
