//! gRPC length-prefixed framing: 1 byte compressed flag, 4 bytes big-endian length, message.

use bytes::{BufMut, Bytes, BytesMut};

/// Size of the gRPC message prefix.
pub const PREFIX_LEN: usize = 5;

/// Why a buffer is not exactly one gRPC frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer than 5 bytes, or fewer message bytes than the prefix announces.
    #[error("incomplete gRPC frame: need {needed} bytes, have {have}")]
    Incomplete { needed: usize, have: usize },
    /// Bytes after the first frame; unary calls carry exactly one message.
    #[error("{extra} bytes after the gRPC frame")]
    Trailing { extra: usize },
    /// The compressed flag was neither 0 nor 1.
    #[error("invalid gRPC compressed flag {0}")]
    BadFlag(u8),
}

/// Splits `buf`, which must hold exactly one complete frame, into (compressed, message).
pub fn decode_frame(buf: &[u8]) -> Result<(bool, &[u8]), FrameError> {
    if buf.len() < PREFIX_LEN {
        return Err(FrameError::Incomplete {
            needed: PREFIX_LEN,
            have: buf.len(),
        });
    }
    let compressed = match buf[0] {
        0 => false,
        1 => true,
        other => return Err(FrameError::BadFlag(other)),
    };
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    let body = &buf[PREFIX_LEN..];
    if body.len() < len {
        return Err(FrameError::Incomplete {
            needed: PREFIX_LEN + len,
            have: buf.len(),
        });
    }
    if body.len() > len {
        return Err(FrameError::Trailing {
            extra: body.len() - len,
        });
    }
    Ok((compressed, body))
}

/// Frames `msg` uncompressed.
///
/// # Panics
/// If `msg` is 4 GiB or larger, which the gRPC prefix cannot express.
pub fn encode_frame(msg: &[u8]) -> Bytes {
    let len = u32::try_from(msg.len()).expect("gRPC message larger than 4 GiB");
    let mut out = BytesMut::with_capacity(PREFIX_LEN + msg.len());
    out.put_u8(0);
    out.put_u32(len);
    out.put_slice(msg);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let framed = encode_frame(b"hello");
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5]);
        assert_eq!(decode_frame(&framed), Ok((false, &b"hello"[..])));
        assert_eq!(decode_frame(&encode_frame(b"")), Ok((false, &b""[..])));
    }

    #[test]
    fn compressed_flag_is_reported() {
        assert_eq!(decode_frame(&[1, 0, 0, 0, 1, 7]), Ok((true, &[7u8][..])));
        assert_eq!(decode_frame(&[2, 0, 0, 0, 0]), Err(FrameError::BadFlag(2)));
    }

    #[test]
    fn rejects_short_and_trailing() {
        assert_eq!(
            decode_frame(&[0, 0, 0]),
            Err(FrameError::Incomplete { needed: 5, have: 3 })
        );
        assert_eq!(
            decode_frame(&[0, 0, 0, 0, 2, 1]),
            Err(FrameError::Incomplete { needed: 7, have: 6 })
        );
        assert_eq!(
            decode_frame(&[0, 0, 0, 0, 1, 1, 0]),
            Err(FrameError::Trailing { extra: 1 })
        );
    }
}
