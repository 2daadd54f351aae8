//! What the monitor says about the cluster's pools (usage, quota, flags),
//! read with two monitor commands that answer in about a millisecond each
//! whatever the pools hold, shared by concurrent callers and reused for at
//! most `max_age` (a second by default). Only the pool's usage may be that
//! old: the bytes Swell promised are read exactly, in the same atomic step
//! that admits a change ([`super::commit`]).
//!
//! Also the bytes other clients' images are provisioned with, per pool,
//! for operators who want those counted: summed with librbd's pool stats
//! (which reads every image header, so it grows with the pool) by the
//! background housekeeping, never on a request.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use swell_storage::{BackendError, Capacity};

use crate::capacity::{self, PoolRoom, PoolSettings, PoolUsage};
use crate::coalesce::{Coalescer, Missed};
use crate::connection::Connection;
use crate::errors::RbdError;
use crate::shards;

/// Every pool's usage and settings at one moment.
#[derive(Debug)]
pub(crate) struct ClusterReading {
    usage: HashMap<String, PoolUsage>,
    settings: HashMap<String, PoolSettings>,
}

/// One pool's share of a reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolReading {
    /// `ceph df`'s stored and max_avail.
    pub usage: PoolUsage,
    /// Quota and flags.
    pub settings: PoolSettings,
}

impl PoolReading {
    /// The pool's room with `promised` bytes promised in it.
    pub(crate) fn room(&self, promised: u64, ratio: f64) -> PoolRoom {
        capacity::room(self.usage, &self.settings, promised, ratio)
    }
}

/// Readings of one cluster.
pub(crate) struct Readings {
    coalescer: Coalescer<ClusterReading, RbdError>,
    max_age: Duration,
    op_timeout: Duration,
    foreign: Mutex<HashMap<String, (u64, Instant)>>,
}

/// How often other clients' image sizes are summed again: the sum reads
/// every image header in the pool, so it is kept off requests and rare.
const FOREIGN_REFRESH: Duration = Duration::from_secs(60);

/// A pool that does not exist, as a StorageClass parameter error.
/// A missing pool, or (`namespace` not empty) a pool without that RBD
/// namespace: a StorageClass or install error, said precisely.
pub(crate) fn missing_pool(pool: &str, namespace: &str) -> RbdError {
    let reason = match namespace {
        "" => format!("pool {pool:?} does not exist"),
        namespace => format!("pool {pool:?} does not exist or has no RBD namespace {namespace:?} (made with: rbd namespace create {pool}/{namespace})"),
    };
    RbdError::Refused(BackendError::InvalidParameter { name: "pool".into(), reason })
}

fn bad_json(step: &str, err: impl std::fmt::Display) -> RbdError {
    RbdError::Refused(BackendError::Unavailable { step: step.into(), reason: format!("unexpected monitor output: {err}") })
}

impl Readings {
    /// Readings reused for `max_age`; a caller waits for another's reading
    /// no longer than `op_timeout`.
    pub(crate) fn new(max_age: Duration, op_timeout: Duration) -> Self {
        Readings { coalescer: Coalescer::default(), max_age, op_timeout, foreign: Mutex::default() }
    }

    fn read_cluster(conn: &Connection) -> Result<ClusterReading, RbdError> {
        let df = conn.mon_command("ceph df", r#"{"prefix":"df","format":"json"}"#)?;
        let detail = conn.mon_command("osd pool ls detail", r#"{"prefix":"osd pool ls","detail":"detail","format":"json"}"#)?;
        Ok(ClusterReading {
            usage: capacity::parse_df(&df).map_err(|e| bad_json("ceph df", e))?,
            settings: capacity::parse_pool_details(&detail).map_err(|e| bad_json("osd pool ls detail", e))?,
        })
    }

    /// `pool` as read at most `max_age` ago (`fresh`: read after this call).
    pub(crate) fn pool(&self, conn: &Connection, pool: &str, fresh: bool) -> Result<PoolReading, RbdError> {
        let now = Instant::now();
        let not_before = if fresh { now } else { now.checked_sub(self.max_age).unwrap_or(now) };
        let reading = self.coalescer.read("cluster", not_before, now + self.op_timeout, || Self::read_cluster(conn), RbdError::duplicate).map_err(
            |missed| match missed {
                Missed::Failed(err) => err,
                Missed::Deadline => RbdError::Refused(BackendError::Timeout { step: "read pool usage".into(), after: self.op_timeout }),
            },
        )?;
        match (reading.usage.get(pool), reading.settings.get(pool)) {
            (Some(usage), Some(settings)) => Ok(PoolReading { usage: *usage, settings: settings.clone() }),
            _ => Err(missing_pool(pool, "")),
        }
    }

    /// The room `pool` has with `swell` bytes promised by Swell, counting
    /// other clients' images when `count_foreign`.
    pub(crate) fn room(&self, conn: &Connection, pool: &str, swell: u64, ratio: f64, count_foreign: bool) -> Result<PoolRoom, RbdError> {
        let foreign = if count_foreign { self.foreign(pool) } else { 0 };
        Ok(self.pool(conn, pool, false)?.room(swell.saturating_add(foreign), ratio))
    }

    /// The capacity GetCapacity reports for `pool`.
    pub(crate) fn capacity(&self, conn: &Connection, pool: &str, swell: u64, ratio: f64, count_foreign: bool) -> Result<Capacity, RbdError> {
        self.room(conn, pool, swell, ratio, count_foreign).map(|r| r.capacity)
    }

    /// Bytes other clients' images are provisioned with in `pool`, as last
    /// summed by [`Readings::note_foreign`] (0 before the first sum).
    pub(crate) fn foreign(&self, pool: &str) -> u64 {
        self.foreign.lock().get(pool).map_or(0, |(bytes, _)| *bytes)
    }

    /// Whether `pool`'s foreign sum is missing or older than a minute.
    pub(crate) fn foreign_due(&self, pool: &str) -> bool {
        self.foreign.lock().get(pool).is_none_or(|(_, at)| at.elapsed() >= FOREIGN_REFRESH)
    }

    /// Records the sum of every image's size in `pool` (librbd's pool
    /// stats) against Swell's own promised total.
    pub(crate) fn note_foreign(&self, pool: &str, all_images: u64, swell: u64) {
        self.foreign.lock().insert(pool.to_owned(), (all_images.saturating_sub(swell), Instant::now()));
    }

    /// The pools named in the last reading that this client may read, for
    /// the listings and the housekeeping.
    pub(crate) fn pools(&self, conn: &Connection) -> Result<Vec<String>, RbdError> {
        let reading = self.coalescer.read(
            "cluster",
            Instant::now().checked_sub(self.max_age).unwrap_or_else(Instant::now),
            Instant::now() + self.op_timeout,
            || Self::read_cluster(conn),
            RbdError::duplicate,
        );
        let pools: Vec<String> = match reading {
            Ok(reading) => reading.usage.keys().cloned().collect(),
            Err(Missed::Failed(err)) => return Err(err),
            Err(Missed::Deadline) => return Err(RbdError::Refused(BackendError::Timeout { step: "list pools".into(), after: self.op_timeout })),
        };
        // Only those this client may read: listing the others fails with
        // EPERM for a user kept to its pools, and can find nothing of its own.
        let mut readable = Vec::with_capacity(pools.len());
        for pool in pools {
            match conn.pool(&pool)? {
                Some(io) if shards::readable(&io) => readable.push(pool),
                Some(_) => tracing::debug!(pool, "this client may not read the pool; not listing it"),
                None => {}
            }
        }
        Ok(readable)
    }
}
