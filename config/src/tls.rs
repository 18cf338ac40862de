//! PEM certificates and keys for TLS, read and checked the same way
//! wherever they are used (the listener, upstreams, `cascadia check`), so
//! that a config `check` accepts cannot fail at `run`.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The crypto provider every TLS config of the gateway uses: ring, which
/// builds without cmake on a fresh machine.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file, in order; an error when there is none.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".to_owned());
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    // The error text never quotes the file: it is a secret.
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| "holds no PEM private key".to_owned())
}

/// A certificate chain with its key, checked to belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsFileError> {
    let chain = certificates(cert_pem).map_err(TlsFileError::Cert)?;
    let key = private_key(key_pem).map_err(TlsFileError::Key)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        TlsFileError::Key(format!(
            "does not match the certificate or is unusable: {e}"
        ))
    })
}

/// A root store of the CA certificates in a PEM file.
pub fn root_store(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(pem)? {
        roots
            .add(cert)
            .map_err(|e| format!("holds a certificate that is not a usable CA: {e}"))?;
    }
    Ok(roots)
}

/// A field of `[gateway.tls]` and what is wrong with it.
pub type FieldError = (&'static str, String);

/// The listener's certificate and key, read and checked to belong
/// together, with the bytes they were made from.
pub fn listener_pair(
    tls: &crate::model::ListenerTls,
) -> Result<(CertifiedKey, Vec<u8>, Vec<u8>), FieldError> {
    let cert = read(&tls.cert_file).map_err(|m| ("cert_file", m))?;
    let key = read(&tls.key_file).map_err(|m| ("key_file", m))?;
    let pair = certified_key(&cert, &key).map_err(|e| match e {
        TlsFileError::Cert(m) => ("cert_file", format!("{}: {m}", tls.cert_file.display())),
        TlsFileError::Key(m) => ("key_file", format!("{}: {m}", tls.key_file.display())),
    })?;
    Ok((pair, cert, key))
}

/// The CAs client certificates must chain to; `None` without
/// `client_ca_file`.
pub fn client_roots(
    tls: &crate::model::ListenerTls,
) -> Result<Option<rustls::RootCertStore>, FieldError> {
    let Some(path) = &tls.client_ca_file else {
        return Ok(None);
    };
    let pem = read(path).map_err(|m| ("client_ca_file", m))?;
    root_store(&pem)
        .map(Some)
        .map_err(|m| ("client_ca_file", format!("{}: {m}", path.display())))
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
    crate::load::read_input(path, crate::load::MAX_CA_BYTES)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Which of the pair is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFileError {
    Cert(String),
    Key(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_pem_blocks_are_refused_with_the_file_named() {
        assert!(certificates(b"")
            .unwrap_err()
            .contains("no PEM certificate"));
        assert!(private_key(b"not a key")
            .unwrap_err()
            .contains("no PEM private key"));
        assert!(root_store(b"hello").is_err());
        assert!(matches!(
            certified_key(b"", b""),
            Err(TlsFileError::Cert(_))
        ));
    }
}
