//! ControllerExpandVolume's domain operation: under the volume's lock, read
//! the backend's real size, decide, record the wish durably, grow, read back,
//! and record the outcome. Nothing here trusts a size it did not just read.

use swell_storage::VolumeId;
use swell_storage::locks::KeyedLocks;

use crate::backends::Backends;
use crate::error::ControllerError;
use crate::records::ExpansionRecords;
use crate::sizing::{Expansion, SizeError, plan_expansion};
use crate::validate::SizeRange;

/// Grows volumes.
#[derive(Clone)]
pub struct Expander {
    backends: Backends,
    records: ExpansionRecords,
    locks: KeyedLocks,
}

fn out_of_range(id: &VolumeId, err: SizeError) -> ControllerError {
    ControllerError::OutOfRange(format!("volume {id}: {err}"))
}

impl Expander {
    /// An expander sharing the controller's lock set.
    pub fn new(backends: Backends, records: ExpansionRecords, locks: KeyedLocks) -> Self {
        Expander { backends, records, locks }
    }

    /// Grows `id` to satisfy `range` and returns the size the backend reports.
    pub async fn expand(&self, id: &VolumeId, range: SizeRange) -> Result<u64, ControllerError> {
        let key = id.to_string();
        let _guard = self.locks.try_acquire(&key).ok_or_else(|| ControllerError::Pending(key.clone()))?;
        let backend = self.backends.for_volume(id).ok_or_else(|| ControllerError::NotFound(key.clone()))?;
        let volume = self
            .backends
            .call("read volume before expanding", &key, backend.volume(id))
            .await?
            .ok_or_else(|| ControllerError::NotFound(key.clone()))?;
        let current = volume.size_bytes;

        let target = match plan_expansion(current, range, u64::MAX).map_err(|e| out_of_range(id, e))? {
            Expansion::AlreadyDone { current } => {
                self.note_settled(id, current)?;
                return Ok(current);
            }
            Expansion::Grow { .. } => {
                let room = self.backends.call("read pool capacity", &key, backend.capacity()).await?;
                match plan_expansion(current, range, room.available_bytes).map_err(|e| out_of_range(id, e))? {
                    Expansion::Grow { target, .. } => target,
                    Expansion::AlreadyDone { current } => return Ok(current),
                }
            }
        };

        let record_err = |step| move |source| ControllerError::Record { volume: id.to_string(), step, source };
        let record = self.records.begin(id, current, target).map_err(record_err("record desired size"))?;
        tracing::info!(volume.id = %id, current, target, "growing volume");
        let grown = self.backends.call("grow volume", &key, backend.grow_volume(id, target)).await;
        let reached = match grown {
            Ok(size) => size,
            Err(err) => {
                self.records.finish(record, current, Some(err.to_string())).map_err(record_err("record failed attempt"))?;
                return Err(err);
            }
        };
        // Read back rather than trust the grow call's answer.
        let after = self
            .backends
            .call("read volume after expanding", &key, backend.volume(id))
            .await?
            .map_or(reached, |v| v.size_bytes);
        if after < target {
            let message = format!("backend reports {after} bytes after growing to {target}");
            self.records.finish(record, after, Some(message.clone())).map_err(record_err("record short growth"))?;
            return Err(ControllerError::Backend {
                volume: key,
                step: "verify grown size",
                source: swell_storage::BackendError::Unavailable { step: "grow volume".into(), reason: message },
            });
        }
        self.records.finish(record, after, None).map_err(record_err("record reached size"))?;
        Ok(after)
    }

    /// Brings a pending record up to date when the backend already holds the
    /// size (an earlier attempt finished after its caller gave up).
    fn note_settled(&self, id: &VolumeId, current: u64) -> Result<(), ControllerError> {
        let record_err = |source| ControllerError::Record { volume: id.to_string(), step: "settle record", source };
        match self.records.get(id).map_err(record_err)? {
            Some(record) if record.current_bytes != current || record.last_error.is_some() => {
                self.records.finish(record, current, None).map_err(record_err)?;
            }
            _ => {}
        }
        Ok(())
    }
}
