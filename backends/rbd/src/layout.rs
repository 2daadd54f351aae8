//! Which object holds a pool's entry (docs/rbd-state.md): the shard
//! `swell.state.<n>` its name hashes to, `n` below the pool's shard count,
//! or, in a pool not yet moved into shards, the one `swell.state` of
//! earlier releases ([`crate::shards`] moves it).

use crate::errors::RbdError;

/// The pool's state object before it was sharded, and the shards' prefix.
pub(crate) const STATE_OBJECT: &str = "swell.state";

/// Where a pool's entries are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// All in `swell.state`, as before sharding (read-only: only a client
    /// that may not migrate it sees this).
    Unsharded,
    /// In `swell.state.<n>`, `n` below the count.
    Sharded(u32),
}

impl Layout {
    /// The shard holding the entry of `name` (an image, a snapshot key).
    pub(crate) fn shard_of(&self, name: &str) -> u32 {
        match self {
            Layout::Unsharded => 0,
            Layout::Sharded(count) => (stable_hash(name) % u64::from(*count)) as u32,
        }
    }

    /// The object of shard `shard`.
    pub(crate) fn object(&self, shard: u32) -> String {
        match self {
            Layout::Unsharded => STATE_OBJECT.to_owned(),
            Layout::Sharded(_) => format!("{STATE_OBJECT}.{shard}"),
        }
    }

    /// The object holding the entry of `name`.
    pub(crate) fn object_of(&self, name: &str) -> String {
        self.object(self.shard_of(name))
    }

    /// Shards of the layout.
    pub(crate) fn count(&self) -> u32 {
        match self {
            Layout::Unsharded => 1,
            Layout::Sharded(count) => *count,
        }
    }

    /// Runs `read` on every shard object at once (one thread each, so a
    /// listing costs one round trip, not one per shard), results in shard
    /// order.
    pub(crate) fn each_object<T: Send>(&self, read: impl Fn(&str) -> Result<T, RbdError> + Sync) -> Vec<Result<T, RbdError>> {
        let objects: Vec<String> = (0..self.count()).map(|n| self.object(n)).collect();
        if objects.len() == 1 {
            return vec![read(&objects[0])];
        }
        std::thread::scope(|scope| {
            let read = &read;
            let running: Vec<_> = objects.iter().map(|oid| scope.spawn(move || read(oid))).collect();
            running.into_iter().map(|t| t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
        })
    }
}

/// FNV-1a: a hash that every release and machine computes alike, which is
/// all a shard choice needs (names are already hashes of CO names).
fn stable_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_chosen_alike_everywhere_and_spread_evenly() {
        let layout = Layout::Sharded(16);
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325, "FNV-1a's offset basis");
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a of \"a\" as published");
        let mut counts = [0usize; 16];
        for i in 0..16_000 {
            let image = swell_storage::rbd_volume::image_name(&format!("pvc-{i}"));
            counts[layout.shard_of(&image) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        assert_eq!(layout.object(3), "swell.state.3");
        assert_eq!(Layout::Unsharded.object_of("snap-1"), "swell.state");
        assert_eq!(Layout::Sharded(1).object_of("snap-1"), "swell.state.0");
    }
}
