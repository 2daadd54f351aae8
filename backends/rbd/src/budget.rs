//! The pool's budget: how the promise stays exact when the entries are
//! spread over shards (docs/rbd-state.md). The object `swell.budget`
//! grants each shard a number of bytes (`g.<n>`, with an epoch) and keeps
//! their sum (`sum`); the grants together never pass what the capacity
//! policy allows. Each shard keeps its own copy of its grant (`grant`), and
//! a change in the shard is admitted against that alone, so most changes
//! write one shard and nothing else. Only a shard whose grant runs out
//! raises it here, in large steps; a shard's unused grant goes back when
//! another shard needs it and the pool has no other room.
//!
//! A grant moves in two writes, the budget's and the shard's, so the two
//! copies carry epochs: a raise writes the budget first (epoch + 1), a give
//! back writes the shard first, and whoever finds the two copies at
//! different epochs makes the older copy the newer one. So the shard's
//! grant never passes the budget's, and a controller killed between the
//! two writes leaves only a grant larger than the shard uses, which the
//! next raise or give back of that shard settles.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use swell_storage::BackendError;

use crate::capacity::PoolRoom;
use crate::errors::RbdError;
use crate::ffi::{Errno, IoCtx, WriteOp};
use crate::layout::Layout;
use crate::state::{self, GRANT_KEY, GRANT_RAISED_AT_KEY, TOTAL_KEY};

/// The pool's budget object.
pub(crate) const BUDGET_OBJECT: &str = "swell.budget";
/// Its omap key holding the sum of the grants.
const SUM_KEY: &str = "sum";
/// Rounds of a raise before its caller is told to retry.
const ATTEMPTS: usize = 16;
/// How long a raised grant is left to the change it was raised for, until
/// that change uses it (and removes the stamp, [`crate::commit`]): a give
/// back by another shard's raise in between would take the bytes that
/// change was admitted against, and refuse it while the pool has room.
const RAISED_GRANT_KEPT: Duration = Duration::from_secs(2);
/// Times a raise gathers unused grants before it is refused: twice, as a
/// concurrent raise may take a step (or a give back may miss a shard being
/// written) between this raise's first gather and its next read.
const GATHERS: usize = 2;

/// A shard's grant: bytes and the epoch of its last move.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Grant {
    pub bytes: u64,
    pub epoch: u64,
}

impl Grant {
    /// The stored form, `<bytes>/<epoch>`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        format!("{}/{}", self.bytes, self.epoch).into_bytes()
    }

    /// Parses a stored grant (absent: nothing granted, epoch 0).
    pub(crate) fn decode(raw: &[u8]) -> Result<Grant, RbdError> {
        if raw.is_empty() {
            return Ok(Grant::default());
        }
        let parsed =
            std::str::from_utf8(raw).ok().and_then(|s| s.split_once('/')).and_then(|(b, e)| Some(Grant { bytes: b.parse().ok()?, epoch: e.parse().ok()? }));
        parsed.ok_or_else(|| state::corrupt("a grant", String::from_utf8_lossy(raw)))
    }
}

/// The sum of the shards' grants, read now.
pub(crate) fn granted(io: &IoCtx) -> Result<u64, RbdError> {
    match state::read_raw(io, BUDGET_OBJECT, &[SUM_KEY.to_owned()])?.into_iter().next() {
        Some((_, raw)) => state::decode_total(&raw),
        None => Ok(0),
    }
}

fn grant_key(shard: u32) -> String {
    format!("g.{shard}")
}

/// Makes the budget object with `grants` (a migration's first budget).
pub(crate) fn create(io: &IoCtx, grants: &[(u32, Grant)]) -> Result<(), Errno> {
    let sum: u64 = grants.iter().map(|(_, g)| g.bytes).sum();
    let mut keys: Vec<(String, Vec<u8>)> = grants.iter().map(|(n, g)| (grant_key(*n), g.encode())).collect();
    keys.push((SUM_KEY.to_owned(), sum.to_string().into_bytes()));
    let mut op = WriteOp::default();
    op.create(true).omap_set(&keys);
    op.operate(io, BUDGET_OBJECT)
}

/// One shard's grant as both copies hold it, with the shard's total.
struct Copies {
    /// The shard's `grant` as stored, and parsed.
    shard_raw: Vec<u8>,
    shard: Grant,
    /// The shard's `total` as stored, and parsed.
    total_raw: Vec<u8>,
    total: u64,
    /// When the shard's grant was last raised, if it says.
    raised_at: Option<Duration>,
    /// The budget's `sum` and `g.<n>` as stored, and parsed.
    sum_raw: Vec<u8>,
    sum: u64,
    budget_raw: Vec<u8>,
    budget: Grant,
}

fn read(io: &IoCtx, layout: &Layout, shard: u32) -> Result<Copies, RbdError> {
    let value = |pairs: &[(String, Vec<u8>)], key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_default();
    let in_shard = state::read_raw(io, &layout.object(shard), &[GRANT_KEY.to_owned(), TOTAL_KEY.to_owned(), GRANT_RAISED_AT_KEY.to_owned()])?;
    let in_budget = state::read_raw(io, BUDGET_OBJECT, &[SUM_KEY.to_owned(), grant_key(shard)])?;
    let (shard_raw, total_raw) = (value(&in_shard, GRANT_KEY), value(&in_shard, TOTAL_KEY));
    let (sum_raw, budget_raw) = (value(&in_budget, SUM_KEY), value(&in_budget, &grant_key(shard)));
    Ok(Copies {
        shard: Grant::decode(&shard_raw)?,
        total: state::decode_total(&total_raw)?,
        // Only a hint for give backs: unreadable is as good as absent.
        raised_at: std::str::from_utf8(&value(&in_shard, GRANT_RAISED_AT_KEY)).ok().and_then(|ms| ms.parse().ok()).map(Duration::from_millis),
        sum: state::decode_total(&sum_raw)?,
        budget: Grant::decode(&budget_raw)?,
        shard_raw,
        total_raw,
        sum_raw,
        budget_raw,
    })
}

fn write_error(step: &str, errno: Errno) -> RbdError {
    RbdError::osd(format!("{step} in {BUDGET_OBJECT}"), errno, None)
}

/// Writes `grant` as the budget's copy of `shard`'s grant, adjusting the
/// sum, if neither changed since `copies` was read. ECANCELED otherwise.
fn write_budget(io: &IoCtx, shard: u32, copies: &Copies, grant: Grant) -> Result<(), Errno> {
    let sum = copies.sum.saturating_sub(copies.budget.bytes).saturating_add(grant.bytes);
    let mut op = WriteOp::default();
    op.create(false).omap_cmp_eq(SUM_KEY, &copies.sum_raw).omap_cmp_eq(&grant_key(shard), &copies.budget_raw);
    op.omap_set(&[(SUM_KEY.to_owned(), sum.to_string().into_bytes()), (grant_key(shard), grant.encode())]);
    op.operate(io, BUDGET_OBJECT)
}

/// How a shard write of a grant came about.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ShardWrite {
    /// A raise of this writer: stamped with the time.
    Raise,
    /// Settling the copies after another writer's move.
    Settle,
    /// A give back: only if no change was admitted since the read.
    GiveBack,
}

/// Writes `grant` as the shard's copy, if its grant (and, for a give back,
/// its total) did not change since `copies` was read.
fn write_shard(io: &IoCtx, layout: &Layout, shard: u32, copies: &Copies, grant: Grant, why: ShardWrite) -> Result<(), Errno> {
    let mut op = WriteOp::default();
    op.create(false).omap_cmp_eq(GRANT_KEY, &copies.shard_raw);
    if why == ShardWrite::GiveBack {
        op.omap_cmp_eq(TOTAL_KEY, &copies.total_raw);
    }
    let mut keys = vec![(GRANT_KEY.to_owned(), grant.encode())];
    if why == ShardWrite::Raise {
        keys.push((GRANT_RAISED_AT_KEY.to_owned(), since_epoch().as_millis().to_string().into_bytes()));
    }
    op.omap_set(&keys);
    op.operate(io, &layout.object(shard))
}

fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Whether a grant raised at `raised_at` is still kept for its change at
/// `now`. A stamp further ahead than that is a clock apart from ours, and
/// keeps nothing.
fn kept_for_its_change(raised_at: Option<Duration>, now: Duration) -> bool {
    raised_at.is_some_and(|at| at.abs_diff(now) < RAISED_GRANT_KEPT)
}

/// Makes the older copy of the shard's grant the newer one. Returns
/// whether the copies already agreed.
fn settle(io: &IoCtx, layout: &Layout, shard: u32, copies: &Copies) -> Result<bool, RbdError> {
    let (s, b) = (copies.shard, copies.budget);
    let written = if s.epoch < b.epoch {
        // A raise whose shard write did not happen (yet).
        write_shard(io, layout, shard, copies, b, ShardWrite::Settle)
    } else if s.bytes > b.bytes {
        // The budget's copy is never below the shard's: only a damaged
        // object gets here, and promising more would pass the room.
        return Err(state::corrupt(&format!("grant of shard {shard}"), format!("{} bytes in the shard, {} in the budget", s.bytes, b.bytes)));
    } else if s.epoch > b.epoch || s.bytes < b.bytes {
        // A give back whose budget write did not happen (yet), or a raise
        // and a give back that crossed: the shard's copy is what it uses.
        write_budget(io, shard, copies, Grant { bytes: s.bytes, epoch: s.epoch.max(b.epoch) })
    } else {
        return Ok(true);
    };
    match written {
        Ok(()) | Err(Errno::ECANCELED) => Ok(false),
        Err(e) => Err(write_error(&format!("settle the grant of shard {shard}"), e)),
    }
}

/// What a raise got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Raised {
    /// The shard's grant covers the total asked for.
    Enough,
    /// It could not: the pool has this many bytes left beyond the shard's
    /// grant (0 when full).
    Short { room_left: u64 },
}

/// The pool's room when Swell's grants sum to the argument.
pub(crate) type RoomFn<'a> = dyn Fn(u64) -> Result<PoolRoom, RbdError> + 'a;

/// Raises `shard`'s grant so it covers `wanted` promised bytes, taking from
/// the pool's room (and, when that is short, from other shards' unused
/// grants), by more than asked so the next changes need not come back.
pub(crate) fn raise(io: &IoCtx, layout: &Layout, shard: u32, wanted: u64, room: &RoomFn<'_>, deadline: Instant) -> Result<Raised, RbdError> {
    let mut gathers = 0;
    for _ in 0..ATTEMPTS {
        if Instant::now() >= deadline {
            break;
        }
        let copies = read(io, layout, shard)?;
        if !settle(io, layout, shard, &copies)? {
            continue;
        }
        let room = room(copies.sum)?;
        if room.full.is_some() {
            return Ok(Raised::Short { room_left: 0 });
        }
        // The room shrank below the grants since they were given.
        let over = copies.sum > room.capacity.total_bytes;
        if copies.shard.bytes >= wanted && !over {
            return Ok(Raised::Enough);
        }
        let need = wanted.saturating_sub(copies.shard.bytes);
        let available = room.capacity.available_bytes;
        if over || need > available {
            if gathers == GATHERS {
                return Ok(Raised::Short { room_left: available });
            }
            give_back_all(io, layout, deadline);
            gathers += 1;
            continue;
        }
        let step = step(available - need, need, layout.count());
        let grant = Grant { bytes: copies.shard.bytes + need + step, epoch: copies.budget.epoch + 1 };
        match write_budget(io, shard, &copies, grant) {
            Ok(()) => {}
            Err(Errno::ECANCELED) => continue,
            Err(e) => return Err(write_error(&format!("raise the grant of shard {shard}"), e)),
        }
        // A failed shard write is settled by the next round's read.
        match write_shard(io, layout, shard, &copies, grant, ShardWrite::Raise) {
            Ok(()) | Err(Errno::ECANCELED) => {}
            Err(e) => return Err(write_error(&format!("take the grant into shard {shard}"), e)),
        }
    }
    Err(RbdError::Refused(BackendError::Contended {
        step: format!("raise the grant of shard {shard}"),
        reason: format!("{BUDGET_OBJECT} kept changing under other writers"),
    }))
}

/// A raise's step beyond what it needs: a share of the room left, but none
/// when that share is smaller than the need itself. In a tight pool a step
/// would hold room that a concurrent raise of another shard needs, and that
/// raise, having gathered already, would be refused while the pool has room.
fn step(spare: u64, need: u64, shards: u32) -> u64 {
    let share = spare / (2 * u64::from(shards.max(1)));
    if share >= need { share } else { 0 }
}

/// Gives every shard's unused grant back to the pool. A shard that cannot
/// be read, is changing or was raised moments ago keeps its grant; this is
/// a best effort before a refusal.
fn give_back_all(io: &IoCtx, layout: &Layout, deadline: Instant) {
    for shard in 0..layout.count() {
        if Instant::now() >= deadline {
            return;
        }
        if let Err(err) = give_back(io, layout, shard) {
            tracing::debug!(shard, error = ?err, "a shard kept its unused grant");
        }
    }
}

/// Lowers `shard`'s grant to what its entries promise: the shard first
/// (compared with its total, so no change is admitted against the bytes
/// taken), then the budget.
fn give_back(io: &IoCtx, layout: &Layout, shard: u32) -> Result<(), RbdError> {
    let copies = read(io, layout, shard)?;
    if !settle(io, layout, shard, &copies)? || copies.shard.bytes <= copies.total || kept_for_its_change(copies.raised_at, since_epoch()) {
        return Ok(());
    }
    let lowered = Grant { bytes: copies.total, epoch: copies.shard.epoch + 1 };
    match write_shard(io, layout, shard, &copies, lowered, ShardWrite::GiveBack) {
        Ok(()) => {}
        Err(Errno::ECANCELED) => return Ok(()),
        Err(e) => return Err(write_error(&format!("give back the grant of shard {shard}"), e)),
    }
    let copies = read(io, layout, shard)?;
    settle(io, layout, shard, &copies).map(drop)
}

/// Adds settled `entries` promising `bytes` to `shard` and raises its
/// grant by as much, budget first, with no room check: how tests and
/// benchmarks seed a pool with volumes made long ago (one writer only).
#[cfg(feature = "test-util")]
pub(crate) fn seed(io: &IoCtx, layout: &Layout, shard: u32, entries: &[(String, Vec<u8>)], bytes: u64) -> Result<(), Errno> {
    let copies = read(io, layout, shard).map_err(|_| Errno::EIO)?;
    let grant = Grant { bytes: copies.shard.bytes.max(copies.budget.bytes) + bytes, epoch: copies.budget.epoch.max(copies.shard.epoch) + 1 };
    write_budget(io, shard, &copies, grant)?;
    let mut op = WriteOp::default();
    op.create(false).omap_set(entries);
    op.omap_set(&[(TOTAL_KEY.to_owned(), (copies.total + bytes).to_string().into_bytes()), (GRANT_KEY.to_owned(), grant.encode())]);
    op.operate(io, &layout.object(shard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raise_steps_beyond_its_need_only_when_the_room_can_spare_it() {
        let mib = 1 << 20;
        // Plenty of room: a sixteenth-shard's share of what is left.
        assert_eq!(step(32 * 1024 * mib, 32 * mib, 16), 1024 * mib);
        // Tight room (two 32 MiB creates, 64 MiB free): exactly the need.
        assert_eq!(step(32 * mib, 32 * mib, 16), 0);
        assert_eq!(step(0, 32 * mib, 16), 0);
        assert_eq!(step(10, 0, 0), 5);
    }

    #[test]
    fn a_grant_raised_moments_ago_is_kept_and_a_stamp_from_another_clock_keeps_nothing() {
        let now = Duration::from_secs(1_000_000);
        assert!(kept_for_its_change(Some(now - Duration::from_millis(300)), now));
        assert!(!kept_for_its_change(Some(now - Duration::from_secs(3)), now));
        assert!(!kept_for_its_change(None, now));
        // A raiser whose clock runs ahead by a little, and by an hour.
        assert!(kept_for_its_change(Some(now + Duration::from_millis(500)), now));
        assert!(!kept_for_its_change(Some(now + Duration::from_secs(3600)), now));
    }

    #[test]
    fn grants_parse_strictly_and_absent_ones_are_empty() {
        assert_eq!(Grant::decode(b"").unwrap(), Grant::default());
        let grant = Grant { bytes: 1 << 40, epoch: 7 };
        assert_eq!(Grant::decode(&grant.encode()).unwrap(), grant);
        for bad in [&b"5"[..], b"5/", b"/1", b"-1/2", b"1/2/3", b"a/b"] {
            assert!(Grant::decode(bad).is_err(), "{bad:?}");
        }
    }
}
