//! Reading a config file from disk: the one place this crate does file I/O,
//! kept apart so the binary decides when it happens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{ConfigError, ConfigErrors};
use crate::model::Config;

/// A validated config together with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// Behind an `Arc` so the gateway can publish it with one atomic store.
    pub config: Arc<Config>,
    /// SHA-256 of the file's bytes, lowercase hex. Lets a reload skip a file
    /// whose content did not change (watchers fire on `touch`, and on the
    /// gateway's own reads on some platforms) and tells operators which
    /// version is live.
    pub hash: String,
    /// The path it was read from, as given.
    pub source: PathBuf,
    /// The admin API's bearer token, read from its file or variable.
    pub admin_token: Option<crate::model::Secret>,
}

/// Why a file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(ConfigErrors),
}

/// Checks an upstream's TLS files, already read into `tls`.
fn check_upstream_tls(tls: &crate::model::UpstreamTls) -> Result<(), (&'static str, String)> {
    if let Some(pem) = &tls.ca_pem {
        crate::tls::root_store(pem).map_err(|m| ("ca_file", m))?;
    }
    if let (Some(cert), Some(key)) = (&tls.cert_pem, &tls.key_pem) {
        crate::tls::certified_key(cert, key.expose()).map_err(|e| match e {
            crate::tls::TlsFileError::Cert(m) => ("cert_file", m),
            crate::tls::TlsFileError::Key(m) => ("key_file", m),
        })?;
    }
    Ok(())
}

/// Reads, hashes, parses and validates the file at `path`.
///
/// The hash is of exactly the bytes that were parsed, so it always describes
/// the config returned, even if the file changes again meanwhile.
pub fn load_file(path: &Path) -> Result<LoadedConfig, LoadError> {
    let bytes = read_input(path, MAX_CONFIG_BYTES).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        LoadError::Invalid(ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("file is not valid UTF-8: {e}"),
        }]))
    })?;
    // Cascade models and the admin token are part of the config: they are
    // read here, relative to the config file, and their bytes go into the
    // hash, so a changed model or a rotated token is a changed config.
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let mut parts: Vec<(String, Vec<u8>)> = Vec::new();
    let mut load_model = |model_path: &str| {
        let full = base.join(model_path);
        let model_bytes = read_input(&full, MAX_MODEL_BYTES)
            .map_err(|e| format!("cannot read {}: {e}", full.display()))?;
        let text = std::str::from_utf8(&model_bytes)
            .map_err(|e| format!("not UTF-8: {e}"))?
            .to_owned();
        parts.push((model_path.to_owned(), model_bytes));
        Ok(text)
    };
    let mut config = crate::parse_with_models(text, &mut load_model).map_err(LoadError::Invalid)?;
    // Recorded traffic goes beside the config, like everything it names.
    for route in &mut config.routes {
        if let Some(record) = route.cascade.as_mut().and_then(|c| c.record.as_mut()) {
            if let crate::model::RecordSink::File(file) = &mut record.sink {
                *file = base.join(&*file);
            }
        }
    }
    // The Redis CA file is part of the config too.
    if let Some(redis) = config.gateway.redis.as_mut() {
        if let Some(file) = &redis.tls_ca_file {
            let full = base.join(file);
            let pem = read_input(&full, MAX_CA_BYTES).map_err(|e| {
                LoadError::Invalid(ConfigErrors(vec![ConfigError {
                    path: "gateway.redis.tls_ca_file".to_owned(),
                    message: format!("cannot read {}: {e}", full.display()),
                }]))
            })?;
            parts.push(("redis ca".to_owned(), pem.clone()));
            redis.tls_ca_pem = Some(pem);
        }
    }
    if let Some(tracing) = config.gateway.tracing.as_mut() {
        if let Some(file) = &tracing.tls_ca_file {
            let full = base.join(file);
            let invalid = |message: String| {
                LoadError::Invalid(ConfigErrors(vec![ConfigError {
                    path: "gateway.tracing.tls_ca_file".to_owned(),
                    message,
                }]))
            };
            let pem = read_input(&full, MAX_CA_BYTES)
                .map_err(|e| invalid(format!("cannot read {}: {e}", full.display())))?;
            crate::tls::root_store(&pem)
                .map_err(|m| invalid(format!("{}: {m}", full.display())))?;
            parts.push(("tracing ca".to_owned(), pem.clone()));
            tracing.tls_ca_pem = Some(pem);
        }
    }
    // The listener's certificate files are watched by the gateway itself;
    // here they are only placed relative to the config file.
    if let Some(tls) = config.gateway.tls.as_mut() {
        tls.cert_file = base.join(&tls.cert_file);
        tls.key_file = base.join(&tls.key_file);
        if let Some(ca) = tls.client_ca_file.as_mut() {
            *ca = base.join(&*ca);
        }
        crate::tls::listener_pair(tls)
            .and_then(|_| crate::tls::client_roots(tls))
            .map_err(|(field, message)| {
                LoadError::Invalid(ConfigErrors(vec![ConfigError {
                    path: format!("gateway.tls.{field}"),
                    message,
                }]))
            })?;
    }
    // An upstream's TLS files are part of the config, like the Redis CA.
    for (i, backend) in config.backends.iter_mut().enumerate() {
        let Some(tls) = backend.tls.as_mut() else {
            continue;
        };
        let read = |field: &str, file: &str| {
            let full = base.join(file);
            read_input(&full, MAX_CA_BYTES).map_err(|e| {
                LoadError::Invalid(ConfigErrors(vec![ConfigError {
                    path: format!("backends[{i}].tls.{field}"),
                    message: format!("cannot read {}: {e}", full.display()),
                }]))
            })
        };
        if let Some(file) = &tls.ca_file {
            let pem = read("ca_file", file)?;
            parts.push((format!("backend {i} ca"), pem.clone()));
            tls.ca_pem = Some(pem);
        }
        if let Some(file) = &tls.cert_file {
            let pem = read("cert_file", file)?;
            parts.push((format!("backend {i} cert"), pem.clone()));
            tls.cert_pem = Some(pem);
        }
        if let Some(file) = &tls.key_file {
            let pem = read("key_file", file)?;
            let text = String::from_utf8(pem.clone()).map_err(|_| {
                LoadError::Invalid(ConfigErrors(vec![ConfigError {
                    path: format!("backends[{i}].tls.key_file"),
                    message: "is not a PEM file".to_owned(),
                }]))
            })?;
            // Only its digest, mixed with the rest, ever leaves this function.
            parts.push((format!("backend {i} key"), pem));
            tls.key_pem = Some(crate::model::Secret::new(text));
        }
        check_upstream_tls(tls).map_err(|(field, message)| {
            LoadError::Invalid(ConfigErrors(vec![ConfigError {
                path: format!("backends[{i}].tls.{field}"),
                message,
            }]))
        })?;
    }
    let admin_token = match &config.gateway.admin_token {
        None => None,
        Some(source) => Some(read_token(source, base).map_err(|message| {
            let path = match source {
                crate::model::TokenSource::File(_) => "gateway.admin.token_file",
                crate::model::TokenSource::Env(_) => "gateway.admin.token_env",
            };
            LoadError::Invalid(ConfigErrors(vec![ConfigError {
                path: path.to_owned(),
                message,
            }]))
        })?),
    };
    if let Some(token) = &admin_token {
        // Only its digest, mixed with the rest, ever leaves this function.
        parts.push(("admin token".to_owned(), token.expose().to_vec()));
    }
    let hash = if parts.is_empty() {
        hash_bytes(&bytes)
    } else {
        let mut hasher = Sha256::new();
        hasher.update(&bytes);
        for (name, part) in &parts {
            hasher.update(name.as_bytes());
            hasher.update(part);
        }
        hex(&hasher.finalize())
    };
    Ok(LoadedConfig {
        admin_token,
        config: Arc::new(config),
        hash,
        source: path.to_owned(),
    })
}

/// Most bytes of a config file: far above any real one, far below what
/// would hurt to read.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;
/// Most bytes of a stage-1 model artifact.
pub const MAX_MODEL_BYTES: u64 = 16 * 1024 * 1024;
/// Most bytes of a token file.
pub const MAX_TOKEN_BYTES: u64 = 64 * 1024;
/// Most bytes of a CA bundle (a system's whole bundle is about 200 KiB).
pub const MAX_CA_BYTES: u64 = 1024 * 1024;

/// Reads a file the config names: a regular file (never a FIFO, socket or
/// device, which could block the reader forever or never end) of at most
/// `cap` bytes.
pub fn read_input(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    let metadata = std::fs::metadata(path)?;
    if !metadata.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let too_large = |len: u64| {
        Error::new(
            ErrorKind::InvalidData,
            format!("{len} bytes or more, over the limit of {cap}"),
        )
    };
    if metadata.len() > cap {
        return Err(too_large(metadata.len()));
    }
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    // The file may grow between the check and the read.
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// SHA-256 of `bytes` as lowercase hex.
/// Reads the admin token. Too short a token is refused: it would be
/// guessable.
fn read_token(
    source: &crate::model::TokenSource,
    base: &Path,
) -> Result<crate::model::Secret, String> {
    let value = match source {
        crate::model::TokenSource::File(file) => {
            let path = base.join(file);
            let bytes = read_input(&path, MAX_TOKEN_BYTES)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", path.display()))?
        }
        crate::model::TokenSource::Env(name) => {
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?
        }
    };
    let value = value.trim().to_owned();
    if value.len() < 16 {
        return Err("the token must be at least 16 characters".to_owned());
    }
    Ok(crate::model::Secret::new(value))
}

pub fn hash_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_must_be_regular_files_under_their_cap() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_input(&file, 5).unwrap(), b"12345");
        let error = read_input(&file, 4).unwrap_err();
        assert!(error.to_string().contains("over the limit of 4"), "{error}");
        let error = read_input(dir.path(), 100).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
    }

    #[test]
    fn a_rotated_token_file_changes_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[gateway]\nallow_no_routes = true\n[gateway.admin]\ntoken_file = \"token\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("token"), "first-token-0123456789").unwrap();
        let first = load_file(&path).unwrap().hash;
        std::fs::write(dir.path().join("token"), "second-token-0123456789").unwrap();
        let second = load_file(&path).unwrap();
        assert_ne!(first, second.hash);
        assert_eq!(
            second.admin_token.unwrap().expose(),
            b"second-token-0123456789"
        );
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_bytes(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn loads_a_file_and_hashes_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let text = include_str!("../examples/multi-region.toml");
        std::fs::write(&path, text).unwrap();
        let loaded = load_file(&path).unwrap();
        assert_eq!(loaded.hash, hash_bytes(text.as_bytes()));
        assert_eq!(loaded.source, path);
        assert_eq!(loaded.config.routes.len(), 1);
    }

    #[test]
    fn model_files_load_beside_the_config_and_count_in_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.toml");
        let text = include_str!("../examples/demo.toml");
        std::fs::write(&path, text).unwrap();
        let model = include_str!("../examples/phishing-lr.json");
        std::fs::write(dir.path().join("phishing-lr.json"), model).unwrap();
        let loaded = load_file(&path).unwrap();
        assert_eq!(loaded.config.routes.len(), 2);
        assert_ne!(
            loaded.hash,
            hash_bytes(text.as_bytes()),
            "the model is part of the hash"
        );

        // A changed model alone changes the hash.
        std::fs::write(
            dir.path().join("phishing-lr.json"),
            model.replace("\"version\": \"1\"", "\"version\": \"2\""),
        )
        .unwrap();
        assert_ne!(load_file(&path).unwrap().hash, loaded.hash);

        // A missing model is an error at the field that names it.
        std::fs::remove_file(dir.path().join("phishing-lr.json")).unwrap();
        match load_file(&path) {
            Err(LoadError::Invalid(errors)) => {
                assert_eq!(errors.0[0].path, "routes[1].cascade.model")
            }
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let err = load_file(&path).unwrap_err();
        assert!(matches!(err, LoadError::Io { .. }), "{err:?}");
        assert!(err.to_string().starts_with("cannot read "), "{err}");
    }

    #[test]
    fn invalid_file_reports_every_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "[gateway]\nallow_no_routes = true\nlisten = \"nope\"\nadmin_listen = \"x\"\n",
        )
        .unwrap();
        match load_file(&path).unwrap_err() {
            LoadError::Invalid(errors) => assert_eq!(errors.0.len(), 2, "{errors}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn non_utf8_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(matches!(load_file(&path), Err(LoadError::Invalid(_))));
    }
}
