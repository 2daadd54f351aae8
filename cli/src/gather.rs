//! Reading every volume and its expansion record as the controller reads
//! them: the backends opened from the controller's own flags
//! ([`swell_backends::open`]), each record from its backend's store, each
//! call under the backends' deadline. Nothing is written.

use std::collections::HashMap;
use std::path::Path;

use swell_backends::{BackendArgs, Backends, CallError};
use swell_storage::auto_grow::{AutoGrowRecord, Usage};
use swell_storage::{BackendError, ExpansionRecord, VolumeId, VolumeInfo};

use crate::error::CliError;

/// Records read per call to a store.
const PAGE: usize = 500;

/// Auto-grow states read at once while listing (one read per volume).
const AUTO_GROW_READS: usize = 8;

/// A volume's auto-grow record and its node's last usage reading.
pub(crate) type AutoGrowState = (Option<AutoGrowRecord>, Option<Usage>);

/// One volume as [`Reader::one`] read it.
pub(crate) struct One {
    pub kind: &'static str,
    pub size: Option<u64>,
    pub record: Option<ExpansionRecord>,
    pub auto_grow: Option<AutoGrowRecord>,
    pub usage: Option<Usage>,
}

/// The controller's backends and records, opened read-only.
pub(crate) struct Reader {
    backends: Backends,
}

/// What a look at every volume found.
#[derive(Default)]
pub(crate) struct Everything {
    /// Each backend's volumes, with the backend's kind.
    pub volumes: Vec<(&'static str, VolumeInfo)>,
    /// Every expansion record, by volume id.
    pub records: HashMap<VolumeId, ExpansionRecord>,
    /// Every record found but not read, by volume id, with why.
    pub unreadable: HashMap<VolumeId, String>,
    /// The kinds of the backends whose listed sizes are the ones their
    /// records last saw ([`swell_storage::Backend::lists_recorded_sizes`]).
    pub recorded_sizes: Vec<&'static str>,
    /// What could not be read, and why.
    pub problems: Vec<String>,
}

impl Reader {
    /// Opens the backends and records `args` name; refuses state
    /// directories that do not exist rather than creating them.
    pub(crate) fn open(args: &BackendArgs) -> Result<Self, CliError> {
        for (flag, dir) in [("--state-dir", &args.state_dir), ("--local-state-dir", &args.local_state_dir)] {
            if !Path::new(dir).is_dir() {
                return Err(CliError::NoDirectory { flag, dir: dir.clone() });
            }
        }
        let mut config = args.config();
        // `swell` only reads: it never locks or writes the controller's files.
        config.local.read_only = true;
        Ok(Reader { backends: swell_backends::open(&config)? })
    }

    /// Every volume and every record, backend by backend; `step` is told
    /// what is being read.
    pub(crate) async fn everything(&self, step: impl Fn(String)) -> Everything {
        let mut found = Everything::default();
        for backend in self.backends.all() {
            let kind = backend.kind();
            if backend.lists_recorded_sizes() {
                found.recorded_sizes.push(kind);
            }
            // A page a call, so each call's deadline covers a page, not every volume.
            let mut after: Option<VolumeId> = None;
            loop {
                step(format!("listing {kind} volumes ({} so far)", found.volumes.len()));
                match self.backends.call("list volumes", kind, backend.list_volumes(after.as_ref(), PAGE)).await {
                    Ok(volumes) => {
                        let last = volumes.last().map(|v| v.id.clone());
                        let full = volumes.len() >= PAGE;
                        found.volumes.extend(volumes.into_iter().map(|v| (kind, v)));
                        match last {
                            Some(last) if full => after = Some(last),
                            _ => break,
                        }
                    }
                    Err(err) => {
                        found.problems.push(format!("{kind} volumes: {err}"));
                        break;
                    }
                }
            }
        }
        for (kind, store) in self.backends.stores() {
            let mut after: Option<VolumeId> = None;
            loop {
                step(format!("reading {kind} expansion records ({} so far)", found.records.len()));
                let page = match self.backends.call("list expansion records", kind, store.page(after.as_ref(), PAGE)).await {
                    Ok(page) => page,
                    Err(err) => {
                        found.problems.push(format!("{kind} expansion records: {err}"));
                        break;
                    }
                };
                let last = page.last().cloned();
                let full = page.len() == PAGE;
                found.unreadable.extend(page.unreadable.into_iter().map(|u| (u.volume, u.reason)));
                found.records.extend(page.readable.into_iter().map(|r| (r.volume_id.clone(), r)));
                match last {
                    Some(last) if full => after = Some(last),
                    _ => break,
                }
            }
        }
        found
    }

    /// The auto-grow state of each of `ids` whose backend keeps one: one
    /// read per volume, [`AUTO_GROW_READS`] at a time, each under the
    /// backends' deadline. A read that fails is a problem; its volume is
    /// shown without.
    pub(crate) async fn auto_grow_states(&self, ids: Vec<VolumeId>, problems: &mut Vec<String>) -> HashMap<VolumeId, AutoGrowState> {
        let mut ids = ids.into_iter().filter_map(|id| self.backends.for_volume(&id).filter(|b| b.keeps_auto_grow()).map(|b| (id, b.clone())));
        let mut reads = tokio::task::JoinSet::new();
        let mut states = HashMap::new();
        loop {
            while reads.len() < AUTO_GROW_READS
                && let Some((id, backend)) = ids.next()
            {
                let backends = self.backends.clone();
                reads.spawn(async move {
                    let state = backends.call("read auto-grow state", &id.to_string(), backend.auto_grow(&id)).await;
                    (id, state)
                });
            }
            match reads.join_next().await {
                None => return states,
                Some(Ok((id, Ok(state)))) => {
                    states.insert(id, state);
                }
                Some(Ok((id, Err(err)))) => problems.push(format!("auto-grow state of {id}: {err}")),
                Some(Err(join)) => problems.push(format!("reading an auto-grow state: {join}")),
            }
        }
    }

    /// One volume, read now: its backend's kind, its size (`None`: the
    /// backend has no such volume), its record, and its auto-grow record
    /// and last usage reading (docs/auto-grow.md).
    pub(crate) async fn one(&self, id: &VolumeId) -> Result<One, CliError> {
        let backend = self.backends.for_volume(id).ok_or_else(|| CliError::NoBackend { volume: id.clone() })?;
        let key = id.to_string();
        let (size, record) = tokio::join!(self.backends.call("read volume", &key, backend.volume(id)), self.backends.record(id));
        let size = size?.map(|v| v.size_bytes);
        let record = match record {
            Ok(record) => record,
            // A store that answers for known volumes only (RBD's pool state).
            Err(CallError { source: BackendError::NotFound(_), .. }) => None,
            Err(err) => return Err(err.into()),
        };
        let (auto_grow, usage) = self.backends.call("read auto-grow state", &key, backend.auto_grow(id)).await?;
        Ok(One { kind: backend.kind(), size, record, auto_grow, usage })
    }
}
