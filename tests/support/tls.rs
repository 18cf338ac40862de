//! Certificates made by the test (rcgen): a CA and the server and client
//! certificates it signs, written to files the gateway reads; and an HTTPS
//! client that trusts the CA, offers ALPN and reports the certificate the
//! server presented.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its own certificate, PEM: what a peer trusts.
    pub pem: String,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), good for both
    /// server and client authentication.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Issued {
    /// Writes `{name}.crt` and `{name}.key` into `dir`, each by rename so a
    /// reader never sees half a file.
    pub fn write(&self, dir: &Path, name: &str) {
        for (ext, text) in [("crt", &self.cert_pem), ("key", &self.key_pem)] {
            let tmp = dir.join(format!(".{name}.{ext}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.join(format!("{name}.{ext}"))).unwrap();
        }
    }

    /// The certificate's DER, to compare with what a server presented.
    pub fn der(&self) -> Vec<u8> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }
}

use rustls::pki_types::pem::PemObject;

/// An HTTPS client for tests, without session resumption.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

/// One open connection, by the protocol ALPN chose.
pub enum TlsConnection {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

impl TlsClient {
    /// Trusts `ca`; offers `alpn` (e.g. `["h2", "http/1.1"]`); presents
    /// `identity` when the server asks for a client certificate.
    pub fn new(ca: &str, alpn: &[&str], identity: Option<&Issued>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some(identity) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        // Every connection a full handshake: a resumed session presents no
        // certificate, so a test could not tell which one the server has.
        config.resumption = rustls::client::Resumption::disabled();
        Self {
            config: Arc::new(config),
            server_name: ServerName::try_from("localhost").unwrap(),
        }
    }

    /// Connects and handshakes; the connection and the certificate the
    /// server presented (DER).
    pub async fn connect(&self, addr: SocketAddr) -> Result<(TlsConnection, Vec<u8>), String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (_, session) = tls.get_ref();
        let presented = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let h2 = session.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let connection = if h2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(connection);
            TlsConnection::Http2(sender)
        } else {
            let (sender, connection) = http1::handshake(io)
                .await
                .map_err(|e| format!("http1 handshake: {e}"))?;
            tokio::spawn(connection);
            TlsConnection::Http1(sender)
        };
        Ok((connection, presented))
    }
}

impl TlsConnection {
    /// One request; the status, the HTTP version it was answered in, and
    /// the body.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: &str,
    ) -> Result<(StatusCode, Version, Bytes), String> {
        let request = Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = match self {
            TlsConnection::Http1(sender) => {
                sender.ready().await.map_err(|e| e.to_string())?;
                let (mut parts, body) = request.into_parts();
                // HTTP/1.1 sends the origin form, with the authority in Host.
                parts.uri = path.parse().unwrap();
                parts.headers.insert("host", "localhost".parse().unwrap());
                sender.send_request(Request::from_parts(parts, body)).await
            }
            TlsConnection::Http2(sender) => {
                sender.ready().await.map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
        }
        .map_err(|e| format!("request: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((parts.status, parts.version, body))
    }
}
