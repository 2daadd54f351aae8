//! One long-lived librados connection per cluster, made on first use and
//! shared by every call, and the one way to run Ceph calls: on a blocking
//! thread, under Swell's own deadline, with a bound on how many may be
//! outstanding.
//!
//! librados reconnects to a restarted monitor by itself; a connection whose
//! calls show it is dead (blocklisted, disconnected, monitor commands timing
//! out) is dropped and the next call makes a new one, so Swell survives a
//! monitor restart without restarting. A dropped connection is shut down
//! only when the last call still using it returns (it is reference counted),
//! never under a thread that is blocked in it.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};
use swell_storage::CephAccess;

use swell_storage::BackendError;
use tokio::sync::Semaphore;

use crate::errors::RbdError;
use crate::ffi::{Cluster, Errno, IoCtx};

/// How long a health check waits for one already running before calling
/// it stuck: against a cluster that answers, a check takes milliseconds.
const HEALTH_WAIT: Duration = Duration::from_secs(1);

/// How to reach a cluster.
#[derive(Debug, Clone)]
pub(crate) struct ConnectSettings {
    /// The cluster and the user to connect as.
    pub access: CephAccess,
    /// The RADOS namespace every io context is in (empty: the default one).
    pub namespace: String,
    /// `rados_osd_op_timeout`, `rados_mon_op_timeout` and `client_mount_timeout`.
    pub op_timeout: Duration,
}

/// A connected cluster handle and its io contexts, one per pool, all in
/// one RADOS namespace.
pub(crate) struct Connection {
    cluster: Arc<Cluster>,
    namespace: String,
    pools: Mutex<HashMap<String, Arc<IoCtx>>>,
}

/// The client settings Swell sets before connecting, over ceph.conf.
///
/// The op timeouts stop librbd hanging on inactive PGs or a frozen monitor.
/// They also hide a lagging op from the objecter, which asks the monitors for
/// a newer OSD map only for ops older than `objecter_timeout` (10 s by
/// default): cancelled at 3 s, no op ever got that old, so after OSDs came
/// back on new addresses the client kept sending to the old ones (measured:
/// still timing out 30 s after the cluster was clean again). So an op counts
/// as laggy a second before it is cancelled, checked every second.
fn client_options(settings: &ConnectSettings) -> Vec<(&'static str, String)> {
    let secs = settings.op_timeout.as_secs().max(1);
    vec![
        ("keyring", settings.access.keyring.to_string_lossy().into_owned()),
        ("rados_osd_op_timeout", secs.to_string()),
        ("rados_mon_op_timeout", secs.to_string()),
        ("client_mount_timeout", secs.to_string()),
        ("objecter_tick_interval", "1".to_owned()),
        ("objecter_timeout", (secs - 1).max(1).to_string()),
    ]
}

impl Connection {
    fn open(settings: &ConnectSettings) -> Result<Self, RbdError> {
        let cluster = Cluster::create(&settings.access.user).map_err(|e| RbdError::connect("rados_create", e))?;
        cluster.read_conf_file(&settings.access.ceph_conf).map_err(|e| RbdError::connect(format!("read {}", settings.access.ceph_conf.display()), e))?;
        for (option, value) in client_options(settings) {
            cluster.conf_set(option, &value).map_err(|e| RbdError::connect(format!("set {option}"), e))?;
        }
        cluster.connect().map_err(|e| RbdError::connect("rados_connect", e))?;
        Ok(Connection { cluster: Arc::new(cluster), namespace: settings.namespace.clone(), pools: Mutex::new(HashMap::new()) })
    }

    /// The io context of `pool`, in this connection's namespace; `None`
    /// when the pool does not exist or has no such RBD namespace (so a
    /// pool without it holds none of this install's volumes).
    pub(crate) fn pool(&self, pool: &str) -> Result<Option<Arc<IoCtx>>, RbdError> {
        let mut pools = self.pools.lock();
        if let Some(io) = pools.get(pool) {
            return Ok(Some(Arc::clone(io)));
        }
        let io = match self.cluster.ioctx(pool, &self.namespace) {
            Ok(io) => io,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(RbdError::osd(format!("open pool {pool}"), e, None)),
        };
        if !self.namespace.is_empty() {
            match io.rbd_namespace_exists(&self.namespace) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                // A user whose caps end at the namespace may not read the
                // pool's list of namespaces; its own calls will say more.
                Err(Errno::EPERM | Errno::EACCES) => {}
                Err(e) => return Err(RbdError::osd(format!("look up RBD namespace {} in pool {pool}", self.namespace), e, None)),
            }
        }
        let io = Arc::new(io);
        pools.insert(pool.to_owned(), Arc::clone(&io));
        Ok(Some(io))
    }

    /// Runs a monitor command (JSON), returning its output.
    pub(crate) fn mon_command(&self, step: &str, command: &str) -> Result<Vec<u8>, RbdError> {
        self.mon_command_raw(command).map_err(|(errno, status)| RbdError::monitor(step, errno, status))
    }

    /// Runs a monitor command (JSON); on failure the errno and what the monitor said.
    pub(crate) fn mon_command_raw(&self, command: &str) -> Result<Vec<u8>, (Errno, String)> {
        self.cluster.mon_command(command)
    }

    /// This client's address(es), as `rados_getaddrs` prints them.
    pub(crate) fn addrs(&self) -> Result<String, Errno> {
        self.cluster.addrs()
    }

    /// How this client appears in `rbd status` and blocklists:
    /// `client.N at ADDR`.
    pub(crate) fn describe(&self) -> String {
        format!("client.{} at {}", self.cluster.instance_id(), self.addrs().unwrap_or_else(|e| format!("(address unknown: errno {e})")))
    }

    /// This client's entity name (`client.N`), as lock holders are listed.
    pub(crate) fn entity(&self) -> String {
        format!("client.{}", self.cluster.instance_id())
    }
}

/// Hands out the shared connection and runs calls on it.
#[derive(Clone)]
pub(crate) struct Connector {
    settings: Arc<ConnectSettings>,
    current: Arc<Mutex<Option<Arc<Connection>>>>,
    permits: Arc<Semaphore>,
    max_outstanding: usize,
    /// The health check's own slot: a probe polled fast, or stuck in
    /// librados, never takes one of `permits` from CSI calls.
    health: Arc<Semaphore>,
    deadline: Duration,
}

impl Connector {
    /// A connector that connects on first use. At most `max_outstanding`
    /// calls may be running (or stuck) at once; each gets `deadline`.
    pub(crate) fn new(settings: ConnectSettings, max_outstanding: usize, deadline: Duration) -> Self {
        Connector {
            settings: Arc::new(settings),
            current: Arc::default(),
            permits: Arc::new(Semaphore::new(max_outstanding)),
            max_outstanding,
            health: Arc::new(Semaphore::new(1)),
            deadline,
        }
    }

    /// How long a call may run before Swell answers Timeout.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The shared connection, made now if there is none. Holding the lock
    /// while connecting keeps concurrent first calls from making several;
    /// connecting is bounded by `client_mount_timeout`.
    fn connection(&self) -> Result<Arc<Connection>, RbdError> {
        let mut current = self.current.lock();
        if let Some(conn) = current.as_ref() {
            return Ok(Arc::clone(conn));
        }
        let started = Instant::now();
        let conn = Arc::new(Connection::open(&self.settings)?);
        tracing::info!(conf = %self.settings.access.ceph_conf.display(), user = %self.settings.access.user, client = conn.describe(), took = ?started.elapsed(), "connected to Ceph");
        *current = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Drops `conn` as the shared connection (if it still is), so the next
    /// call connects anew.
    fn forget(&self, conn: &Arc<Connection>) {
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *current = None;
            tracing::warn!("dropping the Ceph connection; the next call reconnects");
        }
    }

    /// Runs `work` on a blocking thread with the shared connection and the
    /// instant by which it must be done. A call still running at the
    /// deadline is answered with Timeout; its thread finishes (librados's
    /// own timeouts end it) holding one of the permits, and when none is
    /// left new calls are answered Unavailable at once.
    pub(crate) async fn run<T, F>(&self, step: &str, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, Instant) -> Result<T, RbdError> + Send + 'static,
    {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            return Err(BackendError::Unavailable {
                step: step.to_owned(),
                reason: format!(
                    "all {} slots for Ceph calls are taken by calls still running or stuck in librados \
                     (the cluster may not be answering); retry later",
                    self.max_outstanding
                ),
            });
        };
        self.run_holding(permit, step, work).await
    }

    /// Like [`run`](Self::run), in the health check's own slot: one check
    /// at a time, never one of the slots CSI calls run in.
    pub(crate) async fn run_health<T, F>(&self, step: &str, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, Instant) -> Result<T, RbdError> + Send + 'static,
    {
        // Two admission reviews at once each ask (racing patches of one
        // claim): the second waits for the first's slot, briefly, instead of
        // taking a check that is merely running for a stuck one.
        let Ok(Ok(permit)) = tokio::time::timeout(HEALTH_WAIT, Arc::clone(&self.health).acquire_owned()).await else {
            return Err(BackendError::Unavailable {
                step: step.to_owned(),
                reason: "the previous health check is still running or stuck in librados (the cluster may not be answering)".into(),
            });
        };
        self.run_holding(permit, step, work).await
    }

    async fn run_holding<T, F>(&self, permit: tokio::sync::OwnedSemaphorePermit, step: &str, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, Instant) -> Result<T, RbdError> + Send + 'static,
    {
        let connector = self.clone();
        let deadline = Instant::now() + self.deadline;
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = connector.connection()?;
            let result = work(&conn, deadline);
            if let Err(err) = &result
                && err.kills_connection()
            {
                connector.forget(&conn);
            }
            result
        });
        match tokio::time::timeout(self.deadline, task).await {
            Err(_) => Err(BackendError::Timeout { step: step.to_owned(), after: self.deadline }),
            Ok(Err(join)) => Err(BackendError::io(step, std::io::Error::other(join.to_string()))),
            Ok(Ok(result)) => result.map_err(|e| e.into_backend(self.settings.op_timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster whose monitor address answers nothing: connecting blocks
    /// until `client_mount_timeout`.
    fn nowhere(dir: &std::path::Path) -> ConnectSettings {
        let conf = dir.join("ceph.conf");
        std::fs::write(&conf, "[global]\nmon host = v2:127.0.0.1:9\nauth client required = none\n").unwrap();
        ConnectSettings { access: CephAccess::new("nowhere", conf, dir.join("keyring")), namespace: String::new(), op_timeout: Duration::from_secs(1) }
    }

    #[test]
    fn a_lagging_op_asks_for_a_new_osd_map_before_it_is_cancelled() {
        for op_secs in [1u64, 3, 5] {
            let settings = ConnectSettings {
                access: CephAccess { user: "u".into(), ..CephAccess::new("c", "c", "k") },
                namespace: String::new(),
                op_timeout: Duration::from_secs(op_secs),
            };
            let options: HashMap<_, _> = client_options(&settings).into_iter().collect();
            let secs = |key: &str| options[key].parse::<u64>().unwrap();
            assert_eq!(secs("rados_osd_op_timeout"), op_secs);
            assert!(secs("objecter_timeout") + secs("objecter_tick_interval") <= op_secs.max(2), "{options:?}");
            assert_eq!(options["keyring"], "k");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_cluster_fails_in_time_and_saturation_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let connector = Connector::new(nowhere(dir.path()), 1, Duration::from_secs(10));
        let first = {
            let connector = connector.clone();
            tokio::spawn(async move { connector.run("probe", |conn, _| conn.mon_command("df", r#"{"prefix":"df"}"#)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = connector.run("probe", |conn, _| conn.mon_command("df", r#"{"prefix":"df"}"#)).await;
        assert!(matches!(&second, Err(BackendError::Unavailable { reason, .. }) if reason.contains("slots for Ceph calls")), "{second:?}");
        // Refused at once: while the first call still holds the only slot.
        assert!(!first.is_finished(), "the first call must still be running for the refusal to mean anything");
        let first = first.await.unwrap();
        assert!(matches!(first, Err(BackendError::Timeout { .. }) | Err(BackendError::Unavailable { .. })), "{first:?}");
        // The permit came back with the thread: the next call tries again.
        let third = connector.run("probe", |_, _| Ok(())).await;
        assert!(!matches!(&third, Err(BackendError::Unavailable { reason, .. }) if reason.contains("slots for Ceph calls")), "{third:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_checks_never_take_a_slot_of_csi_calls() {
        let dir = tempfile::tempdir().unwrap();
        // Stuck for 5 s: longer than the polls below, each waiting HEALTH_WAIT.
        let settings = ConnectSettings { op_timeout: Duration::from_secs(5), ..nowhere(dir.path()) };
        let connector = Connector::new(settings, 1, Duration::from_secs(10));
        let df = |conn: &Connection, _| conn.mon_command("df", r#"{"prefix":"df"}"#);
        // Health checks stuck on a cluster that does not answer, polled again and again.
        let stuck = {
            let connector = connector.clone();
            tokio::spawn(async move { connector.run_health("health check", df).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..3 {
            let again = connector.run_health("health check", df).await;
            assert!(matches!(&again, Err(BackendError::Unavailable { reason, .. }) if reason.contains("previous health check")), "{again:?}");
        }
        assert!(!stuck.is_finished(), "the first check must still be running for this to mean anything");
        // The only CSI slot is still free: a CSI call runs (and fails on its own).
        let call = connector.run("create volume", |_, _| Ok(())).await;
        assert!(!matches!(&call, Err(BackendError::Unavailable { reason, .. }) if reason.contains("slots for Ceph calls")), "{call:?}");
        // And a CSI call stuck in librados leaves the health check its slot.
        stuck.await.unwrap().unwrap_err();
        let csi = {
            let connector = connector.clone();
            tokio::spawn(async move { connector.run("grow volume", df).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let check = connector.run_health("health check", |_, _| Ok(())).await;
        assert!(!matches!(&check, Err(BackendError::Unavailable { .. })), "{check:?}");
        csi.await.unwrap().unwrap_err();
    }
}
