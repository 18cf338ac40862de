//! TLS to upstream endpoints: a rustls client config per backend, from its
//! `[backends.tls]` (CA bundle, client certificate for mTLS, SNI name).
//! Certificates are verified unless the config turns that off, which is
//! logged as a warning whenever a client is built with it (at start-up,
//! and when the backend's TLS settings change).

use std::sync::Arc;

use cascadia_config::{UpstreamProtocol, UpstreamTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How one backend's connections speak TLS.
#[derive(Clone)]
pub struct UpstreamTlsConnector {
    /// `Err`: the settings could not be made into a client config (only a
    /// config built in code can get here: `load_file` checks the files),
    /// and every connect fails with why. Never plaintext instead.
    connector: Result<(tokio_rustls::TlsConnector, Option<ServerName<'static>>), String>,
    /// The settings it was built from, to tell whether a reload changed them.
    settings: UpstreamTls,
}

impl std::fmt::Debug for UpstreamTlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsConnector")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl UpstreamTlsConnector {
    /// Builds the client config for `backend`'s settings; the ALPN offer
    /// follows the protocol (`h2` for `h2c`'s framing, `http/1.1` else).
    pub fn new(backend: &str, tls: &UpstreamTls, protocol: UpstreamProtocol) -> Self {
        let connector = Self::build(backend, tls, protocol);
        if let Err(error) = &connector {
            tracing::error!(backend, %error, "cannot set up TLS to this backend; its connects will fail");
        }
        Self {
            connector,
            settings: tls.clone(),
        }
    }

    /// Checks that `tls` makes a usable client config (`cascadia check`).
    pub fn check(tls: &UpstreamTls, protocol: UpstreamProtocol) -> Result<(), String> {
        Self::build("", tls, protocol).map(|_| ())
    }

    #[allow(clippy::type_complexity)]
    fn build(
        backend: &str,
        tls: &UpstreamTls,
        protocol: UpstreamProtocol,
    ) -> Result<(tokio_rustls::TlsConnector, Option<ServerName<'static>>), String> {
        let provider = cascadia_config::tls::provider();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if tls.insecure_skip_verify {
            tracing::warn!(
                backend,
                "TLS certificates of this backend are NOT verified (insecure_skip_verify = true): \
                 anyone on the path can impersonate it"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        } else {
            let roots = match &tls.ca_pem {
                Some(pem) => cascadia_config::tls::root_store(pem)?,
                None => system_roots(),
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match (&tls.cert_pem, &tls.key_pem) {
            (Some(cert), Some(key)) => {
                let chain = cascadia_config::tls::certificates(cert)?;
                let key = cascadia_config::tls::private_key(key.expose())?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = match protocol {
            UpstreamProtocol::H2c => vec![b"h2".to_vec()],
            UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        };
        let server_name = tls
            .server_name
            .as_deref()
            .map(|name| {
                ServerName::try_from(name.to_owned())
                    .map_err(|e| format!("server_name {name:?}: {e}"))
            })
            .transpose()?;
        Ok((
            tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        ))
    }

    /// The settings this connector was built from.
    pub fn settings(&self) -> &UpstreamTls {
        &self.settings
    }

    /// The TLS handshake over a connected `stream` to `host`.
    pub(crate) async fn connect(
        &self,
        host: &str,
        stream: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let (connector, server_name) = self
            .connector
            .as_ref()
            .map_err(|e| std::io::Error::other(e.clone()))?;
        let name = match server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            )
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        };
        connector.connect(name, stream).await
    }
}

/// The system's trusted CAs; empty (every handshake then fails, loudly)
/// when none can be read.
fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "cannot read some of the system's CA certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no system CA certificates found: set ca_file in [backends.tls]");
    }
    roots
}

/// `insecure_skip_verify`: any certificate is taken, but the handshake's
/// signatures are still checked, so the session is at least with whoever
/// holds the presented certificate's key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An upstream connection: plain TCP, or TLS over it.
#[derive(Debug)]
pub(crate) enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

macro_rules! delegate {
    ($self:ident, $stream:ident => $call:expr) => {
        match $self.get_mut() {
            UpstreamStream::Plain($stream) => {
                let $stream = std::pin::Pin::new($stream);
                $call
            }
            UpstreamStream::Tls($stream) => {
                let $stream = std::pin::Pin::new(&mut **$stream);
                $call
            }
        }
    };
}

impl tokio::io::AsyncRead for UpstreamStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, stream => stream.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for UpstreamStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, stream => stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, stream => stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(stream) => stream.is_write_vectored(),
            UpstreamStream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, stream => stream.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, stream => stream.poll_shutdown(cx))
    }
}
