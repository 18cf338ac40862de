//! Content codings the gateway reads itself: gzip and deflate, always
//! within a byte bound, so a small compressed body can never expand past
//! the limit the uncompressed one would have had (a "zip bomb" is a 413).
//!
//! Used where the gateway must *understand* a body rather than pass it on:
//! a cascade's request, a Triton binary request it rewrites, a gRPC
//! message it routes by, and a stage-2 answer it merges.

use std::io::Read;

use bytes::Bytes;
use http::header::{self, HeaderMap};

use crate::core::errors::GatewayError;

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodingError {
    #[error("content coding {0:?} is not supported")]
    Unsupported(String),
    #[error("decoded body is over {0} bytes")]
    TooLarge(usize),
    #[error("corrupt {coding} body: {detail}")]
    Corrupt { coding: String, detail: String },
}

/// Decodes `bytes` in `coding` (`gzip`, `x-gzip`, `deflate` zlib-wrapped or
/// raw, as some servers send it, or `identity`) into at most `limit` bytes.
pub fn decode(coding: &str, bytes: &[u8], limit: usize) -> Result<Vec<u8>, CodingError> {
    fn read_bounded(reader: impl Read, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        reader.take(limit as u64 + 1).read_to_end(&mut out)?;
        Ok((out.len() <= limit).then_some(out))
    }
    let coding = coding.trim().to_ascii_lowercase();
    let result = match coding.as_str() {
        "identity" => Ok((bytes.len() <= limit).then(|| bytes.to_vec())),
        "gzip" | "x-gzip" => read_bounded(flate2::read::GzDecoder::new(bytes), limit),
        "deflate" => read_bounded(flate2::read::ZlibDecoder::new(bytes), limit)
            .or_else(|_| read_bounded(flate2::read::DeflateDecoder::new(bytes), limit)),
        _ => return Err(CodingError::Unsupported(coding)),
    };
    match result {
        Ok(Some(decoded)) => Ok(decoded),
        Ok(None) => Err(CodingError::TooLarge(limit)),
        Err(error) => Err(CodingError::Corrupt {
            coding,
            detail: error.to_string(),
        }),
    }
}

/// A request body the gateway must read, decoded per its
/// `Content-Encoding` (which is then removed, with the length it no
/// longer matches). Without one, the body is returned as it is.
pub fn decode_request(
    headers: &mut HeaderMap,
    body: Bytes,
    limit: u64,
) -> Result<Bytes, GatewayError> {
    let Some(coding) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(body);
    };
    let coding = coding.to_str().unwrap_or("?").to_owned();
    let limit_bytes = usize::try_from(limit).unwrap_or(usize::MAX);
    let decoded =
        decode(&coding, &body, limit_bytes).map_err(|error| request_error(&error, limit))?;
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    Ok(Bytes::from(decoded))
}

/// How a request body that does not decode is refused.
pub fn request_error(error: &CodingError, limit: u64) -> GatewayError {
    match error {
        CodingError::Unsupported(_) => GatewayError::BadRequest(
            "unsupported content encoding (gzip, deflate and identity are)",
        ),
        CodingError::TooLarge(_) => GatewayError::BodyTooLarge { limit },
        CodingError::Corrupt { .. } => GatewayError::BadRequest("request body does not decode"),
    }
}

/// `bytes` gzipped, for tests here and in the stage-2 exchange.
#[cfg(test)]
pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_and_both_deflates_decode_within_the_limit() {
        let text = b"{\"inputs\":[]}";
        assert_eq!(decode("gzip", &gzip(text), 64).unwrap(), text);
        assert_eq!(decode(" X-Gzip ", &gzip(text), 64).unwrap(), text);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(text).unwrap();
        assert_eq!(
            decode("deflate", &zlib.finish().unwrap(), 64).unwrap(),
            text
        );
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(text).unwrap();
        assert_eq!(decode("deflate", &raw.finish().unwrap(), 64).unwrap(), text);
        assert_eq!(decode("identity", text, 64).unwrap(), text);
    }

    #[test]
    fn a_bomb_an_unknown_coding_and_garbage_are_refused() {
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert!(
            bomb.len() < 16 * 1024,
            "a megabyte of zeros compresses 64-fold or more"
        );
        assert_eq!(
            decode("gzip", &bomb, 1024),
            Err(CodingError::TooLarge(1024))
        );
        assert!(matches!(
            decode("br", b"x", 64),
            Err(CodingError::Unsupported(_))
        ));
        assert!(matches!(
            decode("gzip", b"not gzip", 64),
            Err(CodingError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_decoded_request_loses_its_coding_and_length_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        headers.insert(header::CONTENT_LENGTH, "40".parse().unwrap());
        let body = decode_request(&mut headers, Bytes::from(gzip(b"hello")), 64).unwrap();
        assert_eq!(&body[..], b"hello");
        assert!(headers.is_empty());
        let mut bomb = HeaderMap::new();
        bomb.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        let error = decode_request(&mut bomb, Bytes::from(gzip(&[0; 4096])), 64).unwrap_err();
        assert!(matches!(error, GatewayError::BodyTooLarge { limit: 64 }));
    }
}
