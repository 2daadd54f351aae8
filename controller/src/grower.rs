//! Auto-grow's decisions (docs/auto-grow.md): every pass, each volume its
//! node marked as wanting to grow is looked at under the volume's
//! expansion hold (the one every expansion takes, in this process or in
//! another controller replica, so two replicas never both act on one
//! volume), and, when its usage is fresh, still across its threshold and
//! no resize is in flight, its claim's storage request is raised by one
//! step, never past its limit nor the pool's room. The claim's patch goes
//! through the API server like `kubectl patch pvc`, so the admission
//! webhook, the external-resizer, kubelet and quota all apply. Each grow
//! and each refusal is an Event on the claim; a refusal backs off.
//! The cost of a pass follows the volumes marked, not the volumes there are.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use swell_backends::Backends;
use swell_storage::auto_grow::{AutoGrowRecord, Crossed, GRANULARITY, Growth, Usage};
use swell_storage::expansion::now_unix;
use swell_storage::{Backend, VolumeId};

use crate::auto_grow::with_claim;
use crate::claims::{Claims, ClaimsError, EventType, KubeClaims, Regarding};
use crate::error::ControllerError;

/// How auto-grow paces itself.
#[derive(Debug, Clone)]
pub struct AutoGrowConfig {
    /// Time between passes over the marked volumes.
    pub interval: Duration,
    /// A usage reading older than this decides nothing: its node may be gone.
    pub usage_max_age: Duration,
    /// First wait after a refusal or failure; doubles each time.
    pub base_backoff: Duration,
    /// Cap on that wait.
    pub max_backoff: Duration,
}

impl Default for AutoGrowConfig {
    fn default() -> Self {
        AutoGrowConfig {
            interval: Duration::from_secs(5),
            usage_max_age: Duration::from_secs(120),
            base_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(3600),
        }
    }
}

/// What one look at a marked volume decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The claim's request was raised from the first size to the second.
    Grown(u64, u64),
    /// The volume is at its limit: nothing asked.
    AtLimit,
    /// The pool cannot give the next step: nothing asked.
    NoRoom,
    /// The API server (the webhook, quota, RBAC) refused the patch.
    Refused(String),
    /// The API server or the backend did not answer.
    Failed(String),
    /// The usage is older than the bound, or from before the last grow.
    Stale,
    /// A resize of the volume is in flight.
    InFlight,
    /// The usage is no longer across the threshold.
    NotCrossed,
    /// Its node reads no usage of the volume (a block volume); the claim
    /// was told once.
    Skipped,
    /// Auto-grow is off for the volume (its claim turned it off), or the
    /// volume, its record or its claim is gone.
    Off(&'static str),
    /// Another operation (or replica) holds the volume; looked at next pass.
    Busy,
    /// Waiting out the backoff of an earlier refusal.
    BackingOff,
}

impl Outcome {
    /// The metric label of an outcome that is a decision; `None` for a skip.
    fn label(&self) -> Option<&'static str> {
        match self {
            Outcome::Grown(..) => Some("grown"),
            Outcome::AtLimit => Some("at_limit"),
            Outcome::NoRoom => Some("no_room"),
            Outcome::Refused(_) => Some("refused"),
            Outcome::Failed(_) => Some("failed"),
            Outcome::Stale => Some("stale"),
            Outcome::Skipped => Some("skipped"),
            _ => None,
        }
    }

    /// Whether the volume's mark is taken away: its wish was dealt with.
    fn settles(&self) -> bool {
        matches!(self, Outcome::Grown(..) | Outcome::AtLimit | Outcome::NotCrossed | Outcome::Skipped | Outcome::Off(_))
    }

    /// Whether the next look waits out a backoff.
    fn backs_off(&self) -> bool {
        matches!(self, Outcome::NoRoom | Outcome::Refused(_) | Outcome::Failed(_))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Auto-grow's metrics.
#[derive(Clone, Default)]
pub(crate) struct AutoGrowMetrics {
    decisions: Family<OutcomeLabels, Counter>,
    at_limit: Gauge,
}

impl AutoGrowMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "swell_auto_grows",
            "Auto-grow decisions on volumes whose usage crossed their threshold, by outcome (grown, at_limit, no_room, refused, failed, stale, skipped).",
            self.decisions.clone(),
        );
        registry.register("swell_auto_grow_volumes_at_limit", "Volumes across their auto-grow threshold that are at their limit.", self.at_limit.clone());
    }
}

/// What the grower remembers of a volume between passes.
#[derive(Debug, Default)]
struct Memory {
    failures: u32,
    not_before: Option<Instant>,
    /// Events already posted since the last grow: each refusal is told once.
    told: HashSet<String>,
    at_limit: bool,
}

/// The auto-grow task of one controller process.
#[derive(Clone)]
pub struct AutoGrower {
    backends: Backends,
    claims: Arc<dyn Claims>,
    config: AutoGrowConfig,
    memory: Arc<Mutex<HashMap<VolumeId, Memory>>>,
    metrics: AutoGrowMetrics,
}

impl AutoGrower {
    pub(crate) fn new(backends: Backends, client: kube::Client, config: AutoGrowConfig, metrics: AutoGrowMetrics) -> Self {
        AutoGrower { backends, claims: Arc::new(KubeClaims::new(client)), config, memory: Arc::default(), metrics }
    }

    /// Runs passes every interval until `until` completes.
    pub async fn run(self, until: impl Future<Output = ()>) {
        tracing::info!(interval_ms = self.config.interval.as_millis() as u64, "auto-grow running");
        tokio::pin!(until);
        loop {
            tokio::select! {
                () = &mut until => return,
                () = tokio::time::sleep(self.config.interval) => {}
            }
            self.pass().await;
        }
    }

    /// One look at every volume marked as wanting to grow, and what each decided.
    pub async fn pass(&self) -> Vec<(VolumeId, Outcome)> {
        let mut outcomes = Vec::new();
        for backend in self.backends.all() {
            let wanting = match self.backends.call("list volumes wanting to grow", backend.kind(), backend.wanting_to_grow()).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(backend = backend.kind(), error = %e, "auto-grow: cannot list the volumes wanting to grow");
                    continue;
                }
            };
            for id in wanting {
                let outcome = self.look_at(backend, &id).await;
                outcomes.push((id, outcome));
            }
        }
        let at_limit = self.memory.lock().values().filter(|m| m.at_limit).count();
        self.metrics.at_limit.set(i64::try_from(at_limit).unwrap_or(i64::MAX));
        outcomes
    }

    async fn look_at(&self, backend: &Arc<dyn Backend>, id: &VolumeId) -> Outcome {
        if self.memory.lock().get(id).and_then(|m| m.not_before).is_some_and(|t| Instant::now() < t) {
            return Outcome::BackingOff;
        }
        let key = id.to_string();
        let hold = match self.backends.call("hold volume", &key, backend.expansion_store().hold(id)).await {
            Ok(Some(hold)) => hold,
            Ok(None) => return Outcome::Busy,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let outcome = match self.decide(backend, id).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed(e.to_string()),
        };
        if outcome.settles()
            && let Err(e) = self.backends.call("settle auto-grow", &key, backend.settle_auto_grow(id)).await
        {
            tracing::warn!(volume.id = %id, error = %e, "auto-grow: cannot take the volume's mark away; looked at again next pass");
        }
        hold.release().await;
        self.remember(id, &outcome);
        outcome
    }

    fn remember(&self, id: &VolumeId, outcome: &Outcome) {
        if let Some(label) = outcome.label() {
            self.metrics.decisions.get_or_create(&OutcomeLabels { outcome: label }).inc();
        }
        let mut memory = self.memory.lock();
        if matches!(outcome, Outcome::Off(_)) {
            memory.remove(id);
            return;
        }
        let m = memory.entry(id.clone()).or_default();
        m.at_limit = *outcome == Outcome::AtLimit;
        if outcome.backs_off() {
            let wait = self.config.base_backoff.saturating_mul(1 << m.failures.min(16)).min(self.config.max_backoff);
            m.failures = m.failures.saturating_add(1);
            m.not_before = Some(Instant::now() + wait);
        } else if matches!(outcome, Outcome::Grown(..)) {
            *m = Memory::default();
        }
    }

    /// The decision, under the volume's hold.
    async fn decide(&self, backend: &Arc<dyn Backend>, id: &VolumeId) -> Result<Outcome, ControllerError> {
        let key = id.to_string();
        // Another replica may have dealt with it since the listing.
        if !self.backends.call("list volumes wanting to grow", &key, backend.wanting_to_grow()).await?.contains(id) {
            return Ok(Outcome::Off("dealt with meanwhile"));
        }
        let (Some(AutoGrowRecord { policy, claim: Some(claim) }), usage) = self.backends.call("read auto-grow state", &key, backend.auto_grow(id)).await?
        else {
            return Ok(Outcome::Off("no auto-grow record naming a claim"));
        };
        let Some(info) = self.backends.call("read volume", &key, backend.volume(id)).await? else { return Ok(Outcome::Off("volume gone")) };
        let record = self.backends.call("read expansion record", &key, backend.expansion_store().record(id)).await?;
        if record.as_ref().is_some_and(|r| r.pending()) {
            return Ok(Outcome::InFlight);
        }
        let now = now_unix();
        let last_grown = record.as_ref().map_or(0, |r| r.updated_unix);
        // A skip is no reading: it holds until the volume is gone.
        let fresh = |u: &Usage| u.skipped.is_some() || (u.age_secs(now) <= self.config.usage_max_age.as_secs() && u.read_unix >= last_grown);
        let Some(usage) = usage.filter(fresh) else {
            tracing::debug!(volume.id = %id, "auto-grow: no usage reading fresh enough to decide on");
            return Ok(Outcome::Stale);
        };
        let view = match self.claims.get(&claim).await {
            Ok(Some(view)) => view,
            Ok(None) => return Ok(Outcome::Off("claim gone")),
            Err(e) => return Ok(Outcome::Failed(e.to_string())),
        };
        let about = Regarding { claim: &claim, uid: view.uid.as_deref() };
        let (policy, ignored) = with_claim(Some(policy), &view.annotations);
        for bad in ignored {
            let message = format!("annotation {bad}; it is ignored");
            self.tell(id, about, EventType::Warning, "AutoGrowAnnotationIgnored", &message, &message).await;
        }
        let Some(policy) = policy.filter(|p| p.on) else { return Ok(Outcome::Off("auto-grow off for this claim")) };
        if let Some(skipped) = usage.skipped {
            let message = format!("auto-grow skips this volume: {}", skipped.reason());
            self.tell(id, about, EventType::Warning, "AutoGrowSkipped", &message, "skipped").await;
            return Ok(Outcome::Skipped);
        }
        let Some(crossed) = policy.crossed(&usage) else { return Ok(Outcome::NotCrossed) };
        if view.resizing() {
            return Ok(Outcome::InFlight);
        }
        let current = info.size_bytes.max(view.request_bytes.unwrap_or(0));
        let target = match policy.growth(current, GRANULARITY) {
            Growth::AtLimit => {
                let message = format!("{}; the volume is at its limit of {} bytes and grows no more", why(crossed, &usage), policy.limit_bytes);
                self.tell(id, about, EventType::Warning, "AutoGrowAtLimit", &message, "at limit").await;
                return Ok(Outcome::AtLimit);
            }
            Growth::To(target) => target,
        };
        let room = self.backends.call("read pool capacity", &key, backend.room_for(id)).await?;
        let needed = target.saturating_sub(info.size_bytes);
        if needed > room.available_bytes {
            let message = format!("{}; growing to {target} bytes needs {needed} more, and the pool can give {}", why(crossed, &usage), room.available_bytes);
            self.tell(id, about, EventType::Warning, "AutoGrowNoRoom", &message, "no room").await;
            return Ok(Outcome::NoRoom);
        }
        match self.claims.request(&claim, target).await {
            Ok(()) => {
                let message = format!("{}; storage request raised from {current} to {target} bytes (limit {})", why(crossed, &usage), policy.limit_bytes);
                tracing::info!(volume.id = %id, from = current, to = target, "auto-grow: claim's request raised");
                self.post(about, EventType::Normal, "AutoGrow", &message).await;
                Ok(Outcome::Grown(current, target))
            }
            Err(ClaimsError::Refused(reason)) => {
                let message = format!("raising the storage request to {target} bytes was refused: {reason}");
                self.tell(id, about, EventType::Warning, "AutoGrowRefused", &message, &message).await;
                Ok(Outcome::Refused(reason))
            }
            Err(e @ ClaimsError::Unavailable(_)) => Ok(Outcome::Failed(e.to_string())),
        }
    }

    /// Posts a refusal's Event once per `once` until the volume next grows
    /// (the usage in a message changes, the refusal does not).
    async fn tell(&self, id: &VolumeId, about: Regarding<'_>, kind: EventType, reason: &str, message: &str, once: &str) {
        let first = self.memory.lock().entry(id.clone()).or_default().told.insert(format!("{reason}: {once}"));
        if first {
            tracing::warn!(volume.id = %id, reason, message, "auto-grow");
            self.post(about, kind, reason, message).await;
        }
    }

    async fn post(&self, about: Regarding<'_>, kind: EventType, reason: &str, message: &str) {
        if let Err(e) = self.claims.event(about, kind, reason, message).await {
            tracing::warn!(claim.namespace = %about.claim.namespace, claim.name = %about.claim.name, reason, error = %e, "auto-grow: cannot post an Event");
        }
    }
}

fn why(crossed: Crossed, usage: &Usage) -> String {
    match crossed {
        Crossed::Bytes => format!("{} of {} bytes free", usage.bytes_free(), usage.bytes_total),
        Crossed::Inodes => format!("{} of {} inodes free", usage.inodes_total.saturating_sub(usage.inodes_used), usage.inodes_total),
    }
}
