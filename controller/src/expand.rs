//! Growing volumes, for ControllerExpandVolume and for the reconciler alike:
//! under the volume's lock, read the backend's real size, decide, record the
//! wish durably, grow, read back, record the outcome. Nothing here trusts a
//! size it did not just read.

use std::sync::Arc;

use swell_storage::locks::{KeyGuard, KeyedLocks};
use swell_storage::{Backend, BackendError, VolumeId};

use crate::backends::Backends;
use crate::error::ControllerError;
use crate::records::{ExpansionRecord, ExpansionRecords};
use crate::sizing::{Expansion, SizeError, plan_expansion};
use crate::validate::SizeRange;

/// Grows volumes.
#[derive(Clone)]
pub struct Expander {
    backends: Backends,
    records: ExpansionRecords,
    locks: KeyedLocks,
}

/// What one reconciliation of a record found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// The backend already holds the desired size; the record now says so.
    Settled {
        /// The backend's size.
        size: u64,
    },
    /// The backend was behind and has been grown.
    Completed {
        /// The size before.
        from: u64,
        /// The size now.
        to: u64,
    },
    /// Another operation holds the volume; try again on the next pass.
    Busy,
    /// The volume no longer exists; its record was dropped.
    Gone,
}

fn out_of_range(id: &VolumeId, err: SizeError) -> ControllerError {
    ControllerError::OutOfRange(format!("volume {id}: {err}"))
}

impl Expander {
    /// An expander sharing the controller's lock set.
    pub fn new(backends: Backends, records: ExpansionRecords, locks: KeyedLocks) -> Self {
        Expander { backends, records, locks }
    }

    /// The backends it grows volumes on.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// The records this expander writes.
    pub fn records(&self) -> &ExpansionRecords {
        &self.records
    }

    fn lock(&self, id: &VolumeId) -> Option<KeyGuard> {
        self.locks.try_acquire(&id.to_string())
    }

    fn backend(&self, id: &VolumeId) -> Result<&Arc<dyn Backend>, ControllerError> {
        self.backends.for_volume(id).ok_or_else(|| ControllerError::NotFound(id.to_string()))
    }

    async fn fresh_size(&self, backend: &Arc<dyn Backend>, id: &VolumeId, step: &'static str) -> Result<Option<u64>, ControllerError> {
        Ok(self.backends.call(step, &id.to_string(), backend.volume(id)).await?.map(|v| v.size_bytes))
    }

    /// Grows `id` to satisfy `range` and returns the size the backend reports.
    pub async fn expand(&self, id: &VolumeId, range: SizeRange) -> Result<u64, ControllerError> {
        let _guard = self.lock(id).ok_or_else(|| ControllerError::Pending(id.to_string()))?;
        let backend = self.backend(id)?;
        let current = self.fresh_size(backend, id, "read volume before expanding").await?.ok_or_else(|| ControllerError::NotFound(id.to_string()))?;
        match plan_expansion(current, range, u64::MAX).map_err(|e| out_of_range(id, e))? {
            Expansion::AlreadyDone { current } => {
                self.settle(backend, id, current).await?;
                Ok(current)
            }
            Expansion::Grow { .. } => {
                let room = self.backends.call("read pool capacity", &id.to_string(), backend.capacity()).await?;
                match plan_expansion(current, range, room.available_bytes).map_err(|e| out_of_range(id, e))? {
                    Expansion::Grow { target, .. } => self.grow_locked(backend, id, current, target).await,
                    Expansion::AlreadyDone { current } => Ok(current),
                }
            }
        }
    }

    /// Finishes whatever the record of `id` still wants, judged against the
    /// backend's size read now (a record that claims "done" is not believed).
    pub async fn reconcile(&self, id: &VolumeId) -> Result<Reconciled, ControllerError> {
        let Some(_guard) = self.lock(id) else { return Ok(Reconciled::Busy) };
        let record = self.read_record(id)?;
        let Some(record) = record else { return Ok(Reconciled::Gone) };
        let backend = self.backend(id)?;
        let Some(current) = self.fresh_size(backend, id, "read volume to reconcile").await? else {
            self.records.remove(id).map_err(|source| record_error(id, "drop record of a deleted volume", source))?;
            return Ok(Reconciled::Gone);
        };
        if current >= record.desired_bytes {
            self.settle(backend, id, current).await?;
            return Ok(Reconciled::Settled { size: current });
        }
        let room = self.backends.call("read pool capacity", &id.to_string(), backend.capacity()).await?;
        let needed = record.desired_bytes - current;
        if needed > room.available_bytes {
            let err = out_of_range(id, SizeError::NoRoom { needed, available: room.available_bytes });
            self.records.finish(record, current, Some(err.to_string())).map_err(|s| record_error(id, "record refusal", s))?;
            return Err(err);
        }
        let to = self.grow_locked(backend, id, current, record.desired_bytes).await?;
        Ok(Reconciled::Completed { from: current, to })
    }

    fn read_record(&self, id: &VolumeId) -> Result<Option<ExpansionRecord>, ControllerError> {
        self.records.get(id).map_err(|source| record_error(id, "read expansion record", source))
    }

    /// Records the wish, grows, reads back, records the outcome. The caller
    /// holds the volume's lock.
    async fn grow_locked(&self, backend: &Arc<dyn Backend>, id: &VolumeId, current: u64, target: u64) -> Result<u64, ControllerError> {
        let record = self.records.begin(id, current, target).map_err(|s| record_error(id, "record desired size", s))?;
        tracing::info!(volume.id = %id, current, target, "growing volume");
        let grown = match self.backends.call("grow volume", &id.to_string(), backend.grow_volume(id, target)).await {
            // The engine holds more than the size read a moment ago: that
            // read lagged. The request is not infeasible; retry on a fresh read.
            Err(ControllerError::Backend { volume, source: BackendError::Shrink { current: held, .. }, .. }) => Err(ControllerError::Backend {
                volume,
                step: "grow volume",
                source: BackendError::Unavailable {
                    step: "grow volume".into(),
                    reason: format!("the engine holds {held} bytes, more than the {current} just read; the read was stale"),
                },
            }),
            other => other,
        };
        // An engine may acknowledge a size it has not reached (Longhorn
        // 13379), so the answer is checked against a read of its own.
        let after = match grown {
            Ok(answered) => self.fresh_size(backend, id, "read volume after growing").await.map(|read| answered.min(read.unwrap_or(0))),
            Err(err) => Err(err),
        };
        let after = match after {
            Ok(after) => after,
            Err(err) => {
                self.records.finish(record, current, Some(err.to_string())).map_err(|s| record_error(id, "record failed attempt", s))?;
                return Err(err);
            }
        };
        if after < target {
            let message = format!("backend reports {after} bytes after growing to {target}");
            self.records.finish(record, after, Some(message.clone())).map_err(|s| record_error(id, "record short growth", s))?;
            return Err(ControllerError::Backend {
                volume: id.to_string(),
                step: "verify grown size",
                source: BackendError::Unavailable { step: "grow volume".into(), reason: message },
            });
        }
        self.records.finish(record, after, None).map_err(|s| record_error(id, "record reached size", s))?;
        Ok(after)
    }

    /// Brings a record up to date when the backend already holds the size
    /// (an earlier attempt finished after its caller gave up). The desired
    /// size is kept: a stale smaller request must not cancel a larger wish.
    /// A size the record never saw arrive may not have reached the volume's
    /// clients either (the grow was cut off before telling them), so they
    /// are told before the record says done; if that fails, the record stays
    /// open and the reconciler tries again.
    async fn settle(&self, backend: &Arc<dyn Backend>, id: &VolumeId, current: u64) -> Result<(), ControllerError> {
        match self.read_record(id)? {
            Some(record) if record.current_bytes != current || record.last_error.is_some() => {
                if current > record.current_bytes {
                    tracing::info!(volume.id = %id, recorded = record.current_bytes, current, "an interrupted grow reached the backend; announcing the size");
                    self.backends.call("announce size", &id.to_string(), backend.announce_size(id)).await?;
                }
                self.records.finish(record, current, None).map_err(|s| record_error(id, "settle record", s))?;
            }
            _ => {}
        }
        Ok(())
    }
}

fn record_error(id: &VolumeId, step: &'static str, source: std::io::Error) -> ControllerError {
    ControllerError::Record { volume: id.to_string(), step, source }
}
