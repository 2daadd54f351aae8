//! The CSI Unix socket. The socket appears at its path only once it listens,
//! with mode 0600 (or 0660 for one named group, so sidecars can connect
//! without being root); a stale path is replaced only when it is a socket (never a
//! file someone mistyped), and the socket is removed again on shutdown.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::Router;
use tonic::transport::{Channel, Endpoint};

use crate::authority::AuthorityFix;

/// Why an endpoint could not be served or reached.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The endpoint string is not `unix:///abs/path` or an absolute path.
    #[error("endpoint {0:?} is not unix:///<absolute path>")]
    Unsupported(String),
    /// Something other than a socket sits at the socket path.
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    /// Preparing or binding the socket failed.
    #[error("{step} {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gRPC server or client failed.
    #[error("gRPC transport on {path}: {source}")]
    Transport {
        /// The socket path.
        path: PathBuf,
        /// The transport error.
        source: tonic::transport::Error,
    },
}

/// Parses `unix:///csi/csi.sock`, `unix:/csi/csi.sock` or `/csi/csi.sock`.
pub fn parse_endpoint(endpoint: &str) -> Result<PathBuf, EndpointError> {
    let path = endpoint.strip_prefix("unix://").or_else(|| endpoint.strip_prefix("unix:")).unwrap_or(endpoint);
    if path.starts_with('/') && path.len() > 1 { Ok(PathBuf::from(path)) } else { Err(EndpointError::Unsupported(endpoint.to_owned())) }
}

/// Refuses to replace anything at `path` but a socket.
fn check_replaceable(path: &Path) -> Result<(), EndpointError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(()),
        Ok(_) => Err(EndpointError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EndpointError::Io { step: "inspect", path: path.to_owned(), source: e }),
    }
}

/// Who may connect to the socket besides its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketAccess {
    /// The owner alone (mode 0600).
    OwnerOnly,
    /// The owner and members of this group (mode 0660): the server must be
    /// allowed to give its socket to the group (root with CAP_CHOWN, or a
    /// member of it).
    Group(u32),
}

/// Binds under a temporary name beside `path` and renames the socket into
/// place once it listens and has its mode: bind(2) creates the file before
/// listen(2) lets it accept, and a client that connects as soon as the file
/// appears would otherwise be refused (ECONNREFUSED).
fn prepare(path: &Path, access: SocketAccess) -> Result<UnixListener, EndpointError> {
    let io = |step, source| EndpointError::Io { step, path: path.to_owned(), source };
    check_replaceable(path)?;
    let file_name = path.file_name().ok_or_else(|| EndpointError::Unsupported(path.display().to_string()))?;
    let binding = path.with_file_name(format!("{}.binding", file_name.to_string_lossy()));
    check_replaceable(&binding)?;
    if let Err(e) = std::fs::remove_file(&binding)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(io("remove stale socket", e));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io("create directory for", e))?;
    }
    let listener = UnixListener::bind(&binding).map_err(|e| io("bind", e))?;
    match access {
        SocketAccess::OwnerOnly => std::fs::set_permissions(&binding, std::fs::Permissions::from_mode(0o600)).map_err(|e| io("chmod 0600", e))?,
        SocketAccess::Group(gid) => {
            std::os::unix::fs::chown(&binding, None, Some(gid)).map_err(|e| io("give the socket to its group", e))?;
            std::fs::set_permissions(&binding, std::fs::Permissions::from_mode(0o660)).map_err(|e| io("chmod 0660", e))?;
        }
    }
    // rename(2) replaces a stale socket atomically.
    std::fs::rename(&binding, path).map_err(|e| io("move the listening socket to", e))?;
    Ok(listener)
}

/// RPCs one connection may have open at once (HTTP/2 streams); the
/// sidecars and kubelet each hold one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// RPCs of one connection handled at once; the rest wait their turn.
pub const MAX_RPCS_PER_CONNECTION: usize = 64;

/// The gRPC server every binary serves CSI with: streams, concurrency and
/// header lists bounded (messages are bounded by tonic's 4 MiB default),
/// so a client on the socket cannot make the server hold without limit.
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .concurrency_limit_per_connection(MAX_RPCS_PER_CONNECTION)
        .http2_max_header_list_size(Some(u32::try_from(crate::authority::MAX_HEADER_LIST).unwrap_or(u32::MAX)))
}

/// Serves `router` on the Unix socket at `path`, for its owner alone, until
/// `shutdown` resolves, then removes the socket. Every connection goes
/// through [`AuthorityFix`], so clients that send the socket path as
/// `:authority` are served too.
pub async fn serve<F>(path: &Path, router: Router, shutdown: F) -> Result<(), EndpointError>
where
    F: Future<Output = ()> + Send,
{
    serve_with(path, SocketAccess::OwnerOnly, router, shutdown).await
}

/// [`serve`] with the socket open to whom `access` says.
pub async fn serve_with<F>(path: &Path, access: SocketAccess, router: Router, shutdown: F) -> Result<(), EndpointError>
where
    F: Future<Output = ()> + Send,
{
    let listener = prepare(path, access)?;
    tracing::info!(socket = %path.display(), "serving CSI");
    let incoming = UnixListenerStream::new(listener).map(|connection| connection.map(AuthorityFix::new));
    let result = router.serve_with_incoming_shutdown(incoming, shutdown).await.map_err(|source| EndpointError::Transport { path: path.to_owned(), source });
    let _ = std::fs::remove_file(path);
    result
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the process is stopped by the default action.
        _ => std::future::pending::<()>().await,
    }
    tracing::info!("shutting down");
}

/// Connects a gRPC channel to the Unix socket at `path`, as the sidecars do.
pub async fn connect(path: &Path) -> Result<Channel, EndpointError> {
    let socket = path.to_owned();
    // The URI is required by tonic but unused: the connector dials the socket.
    let endpoint = Endpoint::from_static("http://localhost");
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .map_err(|source| EndpointError::Transport { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_endpoint_forms_sidecars_use() {
        assert_eq!(parse_endpoint("unix:///csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        assert_eq!(parse_endpoint("unix:/csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        assert_eq!(parse_endpoint("/tmp/x.sock").unwrap(), PathBuf::from("/tmp/x.sock"));
        for bad in ["tcp://127.0.0.1:10000", "unix://relative", "", "unix://"] {
            assert!(parse_endpoint(bad).is_err(), "{bad} accepted");
        }
    }

    #[tokio::test]
    async fn refuses_to_remove_a_regular_file_and_replaces_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(prepare(&file, SocketAccess::OwnerOnly), Err(EndpointError::NotASocket(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

        let sock = dir.path().join("csi.sock");
        drop(prepare(&sock, SocketAccess::OwnerOnly).unwrap());
        let listener = prepare(&sock, SocketAccess::OwnerOnly).expect("stale socket replaced");
        drop(listener);
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// The harness, kubelet-style watchers and sidecars alike connect as soon
    /// as the file is there. Before the socket was renamed into place, about
    /// one start in a few hundred refused such a client.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_sees_the_socket_can_connect_at_once() {
        let dir = tempfile::tempdir().unwrap();
        for attempt in 0..2000 {
            let path = dir.path().join(format!("csi-{attempt}.sock"));
            let watched = path.clone();
            let client = std::thread::spawn(move || {
                let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while !watched.exists() {
                    assert!(std::time::Instant::now() < until, "{} never appeared", watched.display());
                    std::hint::spin_loop();
                }
                std::os::unix::net::UnixStream::connect(&watched)
            });
            let listener = prepare(&path, SocketAccess::OwnerOnly).unwrap();
            let connected = tokio::task::spawn_blocking(move || client.join()).await.unwrap().unwrap();
            connected.unwrap_or_else(|e| panic!("start {attempt}: a client that saw {} was refused: {e}", path.display()));
            assert!(!path.with_file_name(format!("csi-{attempt}.sock.binding")).exists(), "no temporary name left");
            drop(listener);
        }
    }
}
