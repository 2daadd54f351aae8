//! Growing volumes, for ControllerExpandVolume and for the reconciler alike:
//! hold the volume, read the backend's real size, decide, record the wish
//! durably, grow, read back, record the outcome. Nothing here trusts a size
//! it did not just read, and nothing here knows where the records live: each
//! backend's [`ExpansionStore`] does (files for the local backend, the Ceph
//! pool for RBD).

use std::sync::Arc;

use swell_storage::inflight::InFlight;
use swell_storage::{Backend, BackendError, ExpansionRecord, ExpansionStore, Hold, VolumeId};

use swell_backends::{Backends, CallError};

use crate::error::ControllerError;
use crate::sizing::{Expansion, plan_expansion};
use crate::validate::SizeRange;

/// Grows volumes.
#[derive(Clone)]
pub struct Expander {
    backends: Backends,
    /// Volumes the reconciler works on in this process now; a user's call
    /// waits for such an attempt (bounded by its deadline) instead of being
    /// answered ABORTED, which the resizer would back off from for longer.
    reconciling: Arc<InFlight<VolumeId>>,
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

fn out_of_range(id: &VolumeId, err: impl std::fmt::Display) -> ControllerError {
    ControllerError::OutOfRange(format!("volume {id}: {err}"))
}

fn contended(id: &VolumeId, step: &str) -> ControllerError {
    let reason = "this controller's hold on the volume ran out (its lease expired); another operation may own it now".into();
    ControllerError::Backend { volume: id.to_string(), step: "check hold", source: BackendError::Contended { step: step.to_owned(), reason } }
}

/// A volume held for one operation, with its backend and store.
struct Held<'a> {
    id: &'a VolumeId,
    backend: Arc<dyn Backend>,
    store: Arc<dyn ExpansionStore>,
    hold: Hold,
}

impl Expander {
    /// An expander over `backends`.
    pub fn new(backends: Backends) -> Self {
        Expander { backends, reconciling: Arc::default() }
    }

    /// The backends it grows volumes on.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// The record of `id`, read now; `None` for a volume of no backend here.
    pub async fn record(&self, id: &VolumeId) -> Result<Option<ExpansionRecord>, ControllerError> {
        Ok(self.backends.record(id).await?)
    }

    /// Holds `id`; `None` when another operation has it.
    async fn hold<'a>(&self, id: &'a VolumeId) -> Result<Option<Held<'a>>, ControllerError> {
        let backend = Arc::clone(self.backends.for_volume(id).ok_or_else(|| ControllerError::NotFound(id.to_string()))?);
        let store = backend.expansion_store();
        let hold = self.backends.call("hold volume", &id.to_string(), store.hold(id)).await?;
        Ok(hold.map(|hold| Held { id, backend, store, hold }))
    }

    /// Holds `id` for a caller's RPC: fails fast (ABORTED) when another
    /// operation has it, except the reconciler's attempt in this process,
    /// which ends within one backend deadline and is waited for once.
    async fn hold_for_call<'a>(&self, id: &'a VolumeId) -> Result<Held<'a>, ControllerError> {
        if let Some(held) = self.hold(id).await? {
            return Ok(held);
        }
        if !self.reconciling.wait(id, self.backends.deadline()).await {
            return Err(ControllerError::Pending(id.to_string()));
        }
        self.hold(id).await?.ok_or_else(|| ControllerError::Pending(id.to_string()))
    }

    /// Deletes `id` under its hold, then its record (with the hold).
    pub async fn delete(&self, id: &VolumeId) -> Result<(), ControllerError> {
        let held = self.hold_for_call(id).await?;
        let key = id.to_string();
        if let Err(err) = self.backends.call("delete volume", &key, held.backend.delete_volume(id)).await {
            held.hold.release().await;
            return Err(err.into());
        }
        let Held { store, hold, .. } = held;
        Ok(self.backends.call("remove expansion record", &key, store.forget(hold, id)).await?)
    }

    /// Grows `id` to satisfy `range` and returns the size the backend reports.
    pub async fn expand(&self, id: &VolumeId, range: SizeRange) -> Result<u64, ControllerError> {
        let held = match self.hold_for_call(id).await {
            Ok(held) => held,
            // A pool that takes no writes (full) cannot hold a volume (a
            // lock is a write) nor grow it; a request the volume already
            // satisfies is still answered from a fresh read.
            Err(err @ ControllerError::Backend { source: BackendError::NoSpace { .. }, .. }) => return self.already_done(id, range, err).await,
            Err(err) => return Err(err),
        };
        let result = self.expand_held(&held, range).await;
        held.hold.release().await;
        result
    }

    /// The volume's size if it already satisfies `range`, else `refused`.
    async fn already_done(&self, id: &VolumeId, range: SizeRange, refused: ControllerError) -> Result<u64, ControllerError> {
        let backend = self.backends.for_volume(id).ok_or_else(|| ControllerError::NotFound(id.to_string()))?;
        let current = self.backends.call("read volume before expanding", &id.to_string(), backend.volume(id)).await?;
        let current = current.ok_or_else(|| ControllerError::NotFound(id.to_string()))?.size_bytes;
        match plan_expansion(current, range, 0) {
            Ok(Expansion::AlreadyDone { current }) => Ok(current),
            _ => Err(refused),
        }
    }

    async fn expand_held(&self, held: &Held<'_>, range: SizeRange) -> Result<u64, ControllerError> {
        let id = held.id;
        // Two independent reads under the hold: asked together, they cost
        // one round trip to the engine, not two.
        let (current, record) = tokio::join!(self.fresh_size(held, "read volume before expanding"), self.read_record(held));
        let current = current?.ok_or_else(|| ControllerError::NotFound(id.to_string()))?;
        let record = record?;
        match plan_expansion(current, range, u64::MAX).map_err(|e| out_of_range(id, e))? {
            Expansion::AlreadyDone { current } => {
                self.settle(held, record, current).await?;
                Ok(current)
            }
            Expansion::Grow { .. } => {
                // Judged against the room of the volume's own pool first, so
                // a size it cannot hold is refused before anything is recorded.
                let room = self.backends.call("read pool capacity", &id.to_string(), held.backend.room_for(id)).await?;
                match plan_expansion(current, range, room.available_bytes).map_err(|e| out_of_range(id, e))? {
                    Expansion::Grow { target, .. } => self.grow(held, record, current, target).await,
                    Expansion::AlreadyDone { current } => Ok(current),
                }
            }
        }
    }

    /// Finishes whatever the record of `id` still wants, judged against the
    /// backend's size read now (a record that claims "done" is not believed).
    pub async fn reconcile(&self, id: &VolumeId) -> Result<Reconciled, ControllerError> {
        let _attempt = self.reconciling.begin(id.clone());
        self.reconcile_once(id).await
    }

    async fn reconcile_once(&self, id: &VolumeId) -> Result<Reconciled, ControllerError> {
        let Some(held) = self.hold(id).await? else { return Ok(Reconciled::Busy) };
        let result = self.reconcile_held(&held).await;
        match result {
            Ok(Reconciled::Gone) => {
                let Held { store, hold, .. } = held;
                self.backends.call("drop record of a deleted volume", &id.to_string(), store.forget(hold, id)).await?;
                Ok(Reconciled::Gone)
            }
            other => {
                held.hold.release().await;
                other
            }
        }
    }

    async fn reconcile_held(&self, held: &Held<'_>) -> Result<Reconciled, ControllerError> {
        let Some(record) = self.read_record(held).await? else { return Ok(Reconciled::Gone) };
        let Some(current) = self.fresh_size(held, "read volume to reconcile").await? else { return Ok(Reconciled::Gone) };
        if current >= record.desired_bytes {
            self.settle(held, Some(record), current).await?;
            return Ok(Reconciled::Settled { size: current });
        }
        let desired = record.desired_bytes;
        let to = self.grow(held, Some(record), current, desired).await?;
        Ok(Reconciled::Completed { from: current, to })
    }

    async fn fresh_size(&self, held: &Held<'_>, step: &'static str) -> Result<Option<u64>, ControllerError> {
        let info = self.backends.call(step, &held.id.to_string(), held.backend.volume(held.id)).await?;
        Ok(info.map(|v| v.size_bytes))
    }

    async fn read_record(&self, held: &Held<'_>) -> Result<Option<ExpansionRecord>, ControllerError> {
        Ok(self.backends.call("read expansion record", &held.id.to_string(), held.store.record(held.id)).await?)
    }

    async fn write(&self, held: &Held<'_>, step: &'static str, record: ExpansionRecord) -> Result<ExpansionRecord, ControllerError> {
        if !held.hold.still_held() {
            return Err(contended(held.id, step));
        }
        Ok(self.backends.call(step, &held.id.to_string(), held.store.write(&held.hold, record)).await?)
    }

    /// Records the wish, grows, reads back, records the outcome.
    async fn grow(&self, held: &Held<'_>, record: Option<ExpansionRecord>, current: u64, target: u64) -> Result<u64, ControllerError> {
        let id = held.id;
        let base = record.unwrap_or_else(|| ExpansionRecord::new(id, current, current));
        // A store that keeps the capacity ledger admits the bytes here: a
        // size the pool cannot hold is refused before the backend is asked.
        let wish = self.write(held, "record desired size", base.wishing(current, target)).await.map_err(|err| match err {
            ControllerError::Backend { source: BackendError::NoSpace { requested, available }, .. } => {
                out_of_range(id, format!("growing by {requested} bytes needs more than the {available} bytes the pool can still give"))
            }
            other => other,
        })?;
        tracing::info!(volume.id = %id, current, target, "growing volume");
        if !held.hold.still_held() {
            return Err(contended(id, "grow volume"));
        }
        // The backend reads the size back from the engine after growing (the
        // trait's contract) and tells the volume's clients.
        let grown = match self.backends.call("grow volume", &id.to_string(), held.backend.grow_volume(id, target)).await {
            // The engine holds more than the size read a moment ago: that
            // read lagged. The request is not infeasible; retry on a fresh read.
            Err(CallError { volume, source: BackendError::Shrink { current: holds, .. }, .. }) => Err(ControllerError::Backend {
                volume,
                step: "grow volume",
                source: BackendError::Unavailable {
                    step: "grow volume".into(),
                    reason: format!("the engine holds {holds} bytes, more than the {current} just read; the read was stale"),
                },
            }),
            other => other.map_err(ControllerError::from),
        };
        // An engine may acknowledge a size it has not reached (Longhorn
        // 13379), so its answer is checked against a read of its own.
        let after = match grown {
            Ok(answered) => self.fresh_size(held, "read volume after growing").await.map(|read| answered.min(read.unwrap_or(0))),
            Err(err) => Err(err),
        };
        let after = match after {
            Ok(after) => after,
            Err(err) => {
                self.write(held, "record failed attempt", wish.reached(current, None, Some(err.to_string()))).await?;
                return Err(err);
            }
        };
        if after < target {
            let message = format!("backend reports {after} bytes after growing to {target}");
            self.write(held, "record short growth", wish.reached(after, Some(after), Some(message.clone()))).await?;
            return Err(ControllerError::Backend {
                volume: id.to_string(),
                step: "verify grown size",
                source: BackendError::Unavailable { step: "grow volume".into(), reason: message },
            });
        }
        self.write(held, "record reached size", wish.reached(after, Some(after), None)).await?;
        Ok(after)
    }

    /// Brings a record up to date when the backend already holds the size
    /// (an earlier attempt finished after its caller gave up). The desired
    /// size is kept: a stale smaller request must not cancel a larger wish.
    /// A size the volume's clients may not have heard of (the grow was cut
    /// off before telling them, or no record proves they were told) is
    /// announced before the record says done; if that fails, the record
    /// stays pending and the reconciler tries again.
    async fn settle(&self, held: &Held<'_>, record: Option<ExpansionRecord>, current: u64) -> Result<(), ControllerError> {
        let id = held.id;
        let record = record.unwrap_or_else(|| ExpansionRecord { announced_bytes: 0, ..ExpansionRecord::new(id, current, current) });
        let unheard = current > record.announced_bytes;
        if !unheard && record.current_bytes == current && record.last_error.is_none() {
            return Ok(());
        }
        if unheard {
            tracing::info!(volume.id = %id, announced = record.announced_bytes, current, "the backend holds a size its clients may not have heard of; announcing it");
            self.backends.call("announce size", &id.to_string(), held.backend.announce_size(id)).await?;
        }
        self.write(held, "settle record", record.reached(current, Some(current), None)).await?;
        Ok(())
    }
}
