//! Per-volume holds that hold across controller processes: an exclusive
//! RADOS lock with a lease on a small object per volume
//! (`swell.lock.<image>` in the volume's pool).
//!
//! - Fail fast: a volume another holder has is refused at once (the caller
//!   answers ABORTED and the sidecar retries), never queued.
//! - A holder that dies frees the volume when its lease runs out; a live
//!   one renews the lease in the background while it works.
//! - A holder that was frozen past its lease (SIGSTOP, a paused VM) must not
//!   act on what it decided before: [`VolumeLease::still_held`] turns false
//!   when the lease may have run out by this process's own clock, and every
//!   write it could still make is guarded by a comparison on the stored
//!   value (the record's generation, the header's size), not by the lock.
//! - The lock's cookie is the controller's instance name. A restarted
//!   process (same instance name, new Ceph client) finds its predecessor's
//!   locks and breaks them at once instead of waiting out their lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use swell_storage::RbdVolume;
use swell_storage::expansion::HeldVolume;
use swell_storage::inflight::InFlight;
use swell_storage::locks::KeyGuard;

use crate::connection::{Connection, Connector};
use crate::errors::RbdError;
use crate::ffi::{Errno, IoCtx, LOCK_MUST_RENEW, WriteOp};

/// The lock's name on each volume's lock object.
pub(crate) const LOCK_NAME: &str = "swell";
/// Taken off the lease when judging it locally: the OSD started counting
/// when it granted the lock, a little after this process asked.
const CLOCK_MARGIN: Duration = Duration::from_secs(1);

/// The object holding a volume's lock.
pub(crate) fn lock_object(image: &str) -> String {
    format!("swell.lock.{image}")
}

/// Removes a volume's lock object (and so the lock on it) while this
/// process holds it, so nobody else's lock is removed by mistake.
pub(crate) fn remove_lock_object(io: &IoCtx, volume: &RbdVolume) -> Result<(), RbdError> {
    let mut remove = WriteOp::default();
    remove.remove();
    match remove.operate(io, &lock_object(&volume.image)) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(RbdError::osd("remove lock object", e, Some(&volume.id()))),
    }
}

/// Who asks for locks, and for how long.
#[derive(Debug, Clone)]
pub(crate) struct Leases {
    /// The cookie: this controller's instance name.
    pub(crate) instance: String,
    /// How long a lock outlives a holder that stopped renewing it.
    pub(crate) lease: Duration,
}

/// What a lock attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The lock is ours until the instant given (by this process's clock).
    Held(Instant),
    /// Another holder has it.
    Busy(String),
}

impl Leases {
    fn description(&self) -> String {
        format!("swell-controller {} (pid {})", self.instance, std::process::id())
    }

    /// Takes the lock of `image`, breaking one left by this instance's
    /// previous process.
    pub(crate) fn acquire(&self, conn: &Connection, io: &IoCtx, image: &str) -> Result<Acquired, RbdError> {
        let object = lock_object(image);
        for _ in 0..2 {
            let asked = Instant::now();
            match io.lock_exclusive(&object, LOCK_NAME, &self.instance, &self.description(), self.lease, 0) {
                // EEXIST: this client holds it already (an earlier release
                // that failed); it is ours, and renewing it says so.
                Ok(()) => return Ok(Acquired::Held(self.valid_until(asked))),
                Err(Errno::EEXIST) => return self.renew(io, image).map(Acquired::Held),
                Err(Errno::EBUSY) => {}
                Err(e) => return Err(RbdError::osd(format!("lock {object}"), e, None)),
            }
            let lockers = io.lockers(&object, LOCK_NAME).map_err(|e| RbdError::osd(format!("list lockers of {object}"), e, None))?;
            let own = conn.entity();
            match lockers.iter().find(|l| l.cookie == self.instance && l.client != own) {
                Some(previous) => {
                    tracing::info!(image, client = previous.client, address = previous.address, "breaking the lock this instance held before it restarted");
                    match io.break_lock(&object, LOCK_NAME, previous) {
                        Ok(()) | Err(Errno::ENOENT) => continue,
                        Err(e) => return Err(RbdError::osd(format!("break lock {object}"), e, None)),
                    }
                }
                None => {
                    let by = lockers.iter().map(|l| format!("{} ({} at {})", l.cookie, l.client, l.address)).collect::<Vec<_>>().join(", ");
                    return Ok(Acquired::Busy(if by.is_empty() { "another holder".into() } else { by }));
                }
            }
        }
        Ok(Acquired::Busy(format!("{} (its lock came back after it was broken)", self.instance)))
    }

    /// Extends a lock this client holds; ENOENT (as an error) when it ran
    /// out and someone else took it, or it was broken.
    pub(crate) fn renew(&self, io: &IoCtx, image: &str) -> Result<Instant, RbdError> {
        let object = lock_object(image);
        let asked = Instant::now();
        io.lock_exclusive(&object, LOCK_NAME, &self.instance, &self.description(), self.lease, LOCK_MUST_RENEW)
            .map_err(|e| RbdError::osd(format!("renew lock {object}"), e, None))?;
        Ok(self.valid_until(asked))
    }

    /// Gives the lock back (a lock already gone is no error).
    pub(crate) fn release(&self, io: &IoCtx, image: &str) -> Result<(), RbdError> {
        let object = lock_object(image);
        match io.unlock(&object, LOCK_NAME, &self.instance) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(RbdError::osd(format!("unlock {object}"), e, None)),
        }
    }

    fn valid_until(&self, asked: Instant) -> Instant {
        asked + self.lease.saturating_sub(CLOCK_MARGIN)
    }
}

/// Locks this process keeps a moment after an operation, by volume, so its
/// next operation on the same volume (a retry, the next step of a resize)
/// takes it back without a round trip to Ceph; unlocked when the moment
/// passes unused.
pub(crate) struct Lingering {
    held: Mutex<HashMap<String, VolumeLease>>,
    /// Locks being given back now, by volume: their guard is still taken.
    unlocking: InFlight<String>,
    linger: Duration,
    next_token: AtomicU64,
}

impl Lingering {
    /// Keeps released locks for `linger`.
    pub(crate) fn new(linger: Duration) -> Arc<Self> {
        Arc::new(Lingering { held: Mutex::default(), unlocking: InFlight::default(), linger, next_token: AtomicU64::new(0) })
    }

    /// Waits (at most `limit`) while the lock of `image` in `pool` is being
    /// given back by this process, so the next holder need not be refused.
    pub(crate) async fn wait_unlocked(&self, pool: &str, image: &str, limit: Duration) {
        self.unlocking.wait(&key(pool, image), limit).await;
    }

    /// Gives `lease` back, letting waiters know when it is done.
    async fn unlock(&self, lease: VolumeLease) {
        let _unlocking = self.unlocking.begin(key(&lease.pool, &lease.image));
        lease.unlock().await;
    }

    /// The lock of `image` in `pool` if this process still keeps it with
    /// enough lease left to start an operation; a kept lock too close to
    /// its end is let go (after this call returns, the volume's local
    /// guard is free again).
    pub(crate) async fn take(&self, pool: &str, image: &str) -> Option<VolumeLease> {
        let kept = self.held.lock().remove(&key(pool, image))?;
        if kept.time_left() > CLOCK_MARGIN * 2 {
            return Some(kept);
        }
        self.unlock(kept).await;
        None
    }

    fn keep(self: &Arc<Self>, mut lease: VolumeLease) {
        let token = self.next_token.fetch_add(1, Ordering::SeqCst);
        lease.token = token;
        let at = key(&lease.pool, &lease.image);
        self.held.lock().insert(at.clone(), lease);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(this.linger).await;
            let expired = {
                let mut held = this.held.lock();
                match held.get(&at) {
                    Some(lease) if lease.token == token => held.remove(&at),
                    _ => None,
                }
            };
            if let Some(lease) = expired {
                this.unlock(lease).await;
            }
        });
    }
}

fn key(pool: &str, image: &str) -> String {
    format!("{pool}/{image}")
}

/// A volume held through its lock, renewed in the background until released.
pub(crate) struct VolumeLease {
    connector: Connector,
    leases: Arc<Leases>,
    lingering: Arc<Lingering>,
    pool: String,
    image: String,
    valid_until: Arc<Mutex<Instant>>,
    renewer: tokio::task::JoinHandle<()>,
    token: u64,
    /// Callers in this process are refused before Ceph is asked: they would
    /// share its Ceph client and lock cookie, so Ceph would take them for
    /// this holder. Kept until the lock is really given back.
    _local: KeyGuard,
}

impl VolumeLease {
    /// Wraps a lock just taken, and starts renewing it every third of the lease.
    pub(crate) fn start(
        connector: Connector,
        leases: Arc<Leases>,
        lingering: Arc<Lingering>,
        pool: String,
        image: String,
        valid_until: Instant,
        local: KeyGuard,
    ) -> Self {
        let valid_until = Arc::new(Mutex::new(valid_until));
        let renewer = {
            let (connector, leases, pool, image, valid_until) = (connector.clone(), Arc::clone(&leases), pool.clone(), image.clone(), Arc::clone(&valid_until));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(leases.lease / 3).await;
                    let (l, p, i) = (Arc::clone(&leases), pool.clone(), image.clone());
                    let renewed = connector
                        .run("renew volume lock", move |conn, _| {
                            let io = conn.pool(&p)?.ok_or_else(|| RbdError::osd(format!("open pool {p}"), Errno::ENOENT, None))?;
                            l.renew(&io, &i)
                        })
                        .await;
                    match renewed {
                        Ok(until) => *valid_until.lock() = until,
                        Err(err) => tracing::warn!(pool, image, error = %err, "cannot renew a volume's lock; the operation stops when its lease runs out"),
                    }
                }
            })
        };
        VolumeLease { connector, leases, lingering, pool, image, valid_until, renewer, token: 0, _local: local }
    }

    fn time_left(&self) -> Duration {
        self.valid_until.lock().saturating_duration_since(Instant::now())
    }

    /// Gives the lock back to Ceph, then the volume to this process.
    async fn unlock(self) {
        self.renewer.abort();
        let (leases, pool, image) = (Arc::clone(&self.leases), self.pool.clone(), self.image.clone());
        let (p, i) = (pool.clone(), image.clone());
        let released = self
            .connector
            .run("release volume lock", move |conn, _| match conn.pool(&p)? {
                Some(io) => leases.release(&io, &i),
                None => Ok(()),
            })
            .await;
        if let Err(err) = released {
            tracing::warn!(pool, image, error = %err, "cannot release a volume's lock; it frees itself when its lease runs out");
        }
    }
}

#[async_trait::async_trait]
impl HeldVolume for VolumeLease {
    fn still_held(&self) -> bool {
        self.time_left() > Duration::ZERO
    }

    async fn release(self: Box<Self>) {
        let lingering = Arc::clone(&self.lingering);
        if self.still_held() {
            lingering.keep(*self);
        } else {
            lingering.unlock(*self).await;
        }
    }

    async fn release_deleted(self: Box<Self>) {
        Arc::clone(&self.lingering).unlock(*self).await;
    }
}

impl Drop for VolumeLease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
