//! TLS on the client listener: rustls, ALPN `h2` and `http/1.1`, optional
//! client certificates, and the certificate and key reloaded when their
//! files change.
//!
//! # Rotation
//! The certificate lives behind an `ArcSwap` that the handshake reads
//! ([`ResolvesServerCert`]); a watch task reads both files every
//! `reload_interval` and swaps in a pair that differs and is valid (the key
//! matches the certificate). Connections already open keep the session
//! they negotiated; new handshakes get the new certificate. A pair that is
//! half-written or does not match is logged once and the old one goes on
//! serving until the files are right, as a Kubernetes secret's
//! `..data` swap or cert-manager's renewal leaves them within a tick.

use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use cascadia_config::ListenerTls;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

/// The TLS side of the listener, shared by every connection.
pub struct TlsListener {
    acceptor: tokio_rustls::TlsAcceptor,
    certificate: Arc<RotatingCertificate>,
    settings: ListenerTls,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Reads the files and builds the server config; `Err` names the field
    /// and the problem (the same check `cascadia check` runs).
    pub fn new(settings: &ListenerTls) -> Result<Arc<Self>, (&'static str, String)> {
        let (key_pair, cert, key) = cascadia_config::tls::listener_pair(settings)?;
        let certificate = Arc::new(RotatingCertificate {
            current: ArcSwap::from_pointee(key_pair),
            seen: Mutex::new((cert, key)),
        });
        let provider = cascadia_config::tls::provider();
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ("cert_file", e.to_string()))?;
        let builder = match cascadia_config::tls::client_roots(settings)? {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if settings.require_client_cert {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| ("client_ca_file", e.to_string()))?,
                )
            }
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&certificate) as _);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            certificate,
            settings: settings.clone(),
        }))
    }

    /// The server side of one connection's handshake.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }

    /// Looks at the files every `reload_interval` until `shutdown`, and
    /// swaps in a changed, valid pair.
    pub async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(self.settings.reload_interval.get());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = super::stopped(&mut shutdown) => return,
            }
            // File reads block: off the runtime's worker threads.
            let this = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || this.look()).await;
        }
    }

    /// One look at the files.
    fn look(&self) {
        let (Ok(cert), Ok(key)) = (
            read(&self.settings.cert_file),
            read(&self.settings.key_file),
        ) else {
            // Mid-swap, or gone: the next tick looks again.
            return;
        };
        let mut seen = self
            .certificate
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if seen.0 == cert && seen.1 == key {
            return;
        }
        match cascadia_config::tls::certified_key(&cert, &key) {
            Ok(pair) => {
                self.certificate.current.store(Arc::new(pair));
                tracing::info!(cert = %self.settings.cert_file.display(), "listener certificate reloaded");
            }
            Err(error) => {
                tracing::warn!(
                    cert = %self.settings.cert_file.display(),
                    error = ?error,
                    "the changed certificate files are not a usable pair; the previous certificate goes on serving"
                );
            }
        }
        // Remembered either way, so a bad pair is reported once, not every tick.
        *seen = (cert, key);
    }
}

/// The certificate the next handshake presents.
#[derive(Debug)]
struct RotatingCertificate {
    current: ArcSwap<CertifiedKey>,
    /// The files' bytes last looked at.
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl ResolvesServerCert for RotatingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    cascadia_config::read_input(path, cascadia_config::MAX_CA_BYTES)
}
