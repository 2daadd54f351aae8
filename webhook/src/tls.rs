//! The serving certificate, reloaded when its files change (cert-manager
//! rotates them by swapping a Secret volume's files) without a restart: each
//! new TLS handshake takes the key pair current at that moment, and
//! connections already open keep theirs, so no request is dropped.
//!
//! The files are polled (a read of two small files per interval) rather than
//! watched: Secret volumes change through symlink swaps that file watches
//! see unreliably. A pair that does not load (a half-written rotation, a key
//! that does not match the certificate) leaves the previous one serving
//! and is retried at the next poll.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::Duration;

use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};

/// Why a certificate/key pair cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PEM holds no usable certificate or key.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key does not fit the certificate, or TLS cannot use them.
    #[error("certificate {cert} with key {key}: {source}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
}

/// The certificate and key files, and the pair loaded from them.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file contents `current` was loaded from, to notice changes.
    loaded_from: Mutex<(Vec<u8>, Vec<u8>)>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

impl ReloadingCert {
    /// Loads the pair; fails if it cannot be served.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let (cert_pem, key_pem) = (read(cert_path)?, read(key_path)?);
        let pair = parse(cert_path, &cert_pem, key_path, &key_pem)?;
        Ok(Arc::new(ReloadingCert {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Arc::new(pair)),
            loaded_from: Mutex::new((cert_pem, key_pem)),
        }))
    }

    /// Loads the files again if their contents changed; `Ok(true)` when a
    /// new pair now serves. On an error the old pair keeps serving.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = (read(&self.cert_path)?, read(&self.key_path)?);
        let mut loaded_from = self.loaded_from.lock();
        if loaded_from.0 == cert_pem && loaded_from.1 == key_pem {
            return Ok(false);
        }
        let pair = parse(&self.cert_path, &cert_pem, &self.key_path, &key_pem)?;
        *self.current.write() = Arc::new(pair);
        *loaded_from = (cert_pem, key_pem);
        Ok(true)
    }

    /// Polls the files every `interval` until `stop` resolves.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut failing = false;
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(interval) => {}
            }
            let this = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || this.reload_if_changed()).await {
                Ok(Ok(true)) => {
                    failing = false;
                    tracing::info!(cert = %self.cert_path.display(), "serving a new certificate");
                }
                Ok(Ok(false)) => failing = false,
                // Logged once per failing streak: a rotation in progress fails once.
                Ok(Err(err)) if !failing => {
                    failing = true;
                    tracing::warn!(error = %err, "certificate files changed but cannot be loaded; the previous pair keeps serving");
                }
                Ok(Err(_)) => {}
                Err(err) => tracing::error!(error = %err, "certificate reload task failed"),
            }
        }
    }

    /// A TLS server configuration serving the current pair, speaking HTTP/2
    /// and HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

fn parse(cert_path: &Path, cert_pem: &[u8], key_path: &Path, key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let pem_error = |path: &Path, reason: String| TlsError::Pem { path: path.to_owned(), reason };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>().map_err(|e| pem_error(cert_path, format!("bad certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(pem_error(cert_path, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_error(key_path, format!("no usable private key: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|source| TlsError::Pair { cert: cert_path.to_owned(), key: key_path.to_owned(), source })
}
