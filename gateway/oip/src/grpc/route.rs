//! Read and rewrite a request's model name (field 1) and version (field 2) on the raw bytes.
//!
//! `ModelInferRequest`, `ModelReadyRequest` and `ModelMetadataRequest` all keep the model
//! name in field 1 and the version in field 2, so one scanner serves all three.
//!
//! # How it works
//! A protobuf message is a flat sequence of `key, value` fields. We walk the top level only:
//! fields 1 and 2 are read (as UTF-8 strings), every other field is skipped by its wire type
//! — a length-delimited field (tensors, raw contents) costs one varint read, never a copy or
//! a parse. Rewriting writes the new fields 1/2 first and then copies every other field's
//! bytes verbatim, so unknown and future fields survive untouched.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

const NAME: u32 = 1;
const VERSION: u32 = 2;

/// One top-level field: its number, the whole encoded field (key included) and the bytes
/// after the key (for a string: length varint + UTF-8).
struct Field<'a> {
    tag: u32,
    wire_type: WireType,
    raw: &'a [u8],
    value: &'a [u8],
}

/// Walks the top-level fields of `msg`, calling `f` for each. prost's `skip_field` does the
/// bounds checks, so a length running past the end is prost's own underflow error.
fn for_each_field<'a>(
    msg: &'a [u8],
    mut f: impl FnMut(Field<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut rest = msg;
    while !rest.is_empty() {
        let start = rest;
        let (tag, wire_type) = encoding::decode_key(&mut rest)?;
        let after_key = rest;
        encoding::skip_field(wire_type, tag, &mut rest, DecodeContext::default())?;
        let field_len = start.len() - rest.len();
        let value_len = after_key.len() - rest.len();
        f(Field {
            tag,
            wire_type,
            raw: &start[..field_len],
            value: &after_key[..value_len],
        })?;
    }
    Ok(())
}

/// Decodes field 1/2 as a string; prost checks the wire type and the UTF-8.
fn string_field(field: &Field<'_>) -> Result<String, DecodeError> {
    let mut out = String::new();
    let mut buf = field.value;
    encoding::string::merge(
        field.wire_type,
        &mut out,
        &mut buf,
        DecodeContext::default(),
    )?;
    Ok(out)
}

/// Returns (model name, model version) — fields 1 and 2 — of a raw request message.
///
/// Absent and empty fields both come back as `None` (proto3 cannot tell them apart). If a
/// field occurs more than once the last occurrence wins, as in any protobuf decoder.
pub fn peek_model(msg: &[u8]) -> Result<(Option<String>, Option<String>), DecodeError> {
    let mut name = None;
    let mut version = None;
    for_each_field(msg, |field| {
        match field.tag {
            NAME => name = Some(string_field(&field)?),
            VERSION => version = Some(string_field(&field)?),
            _ => {}
        }
        Ok(())
    })?;
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok((non_empty(name), non_empty(version)))
}

/// Replaces fields 1 and/or 2 of a raw request message; `None` keeps that field as it is.
///
/// Replaced fields are written first (an empty string is omitted, which is how proto3
/// encodes it); all other fields are copied byte-for-byte in their original order. The input
/// is fully validated, so a malformed message is an error rather than a corrupted output.
pub fn rewrite_model(
    msg: &[u8],
    name: Option<&str>,
    version: Option<&str>,
) -> Result<Bytes, DecodeError> {
    let extra = [name, version]
        .iter()
        .flatten()
        .map(|s| 1 + encoding::encoded_len_varint(s.len() as u64) + s.len())
        .sum::<usize>();
    let mut out = BytesMut::with_capacity(msg.len() + extra);
    for (tag, value) in [(NAME, name), (VERSION, version)] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            encoding::encode_key(tag, WireType::LengthDelimited, &mut out);
            encoding::encode_varint(value.len() as u64, &mut out);
            out.put_slice(value.as_bytes());
        }
    }
    for_each_field(msg, |field| {
        let replaced = match field.tag {
            NAME => name.is_some(),
            VERSION => version.is_some(),
            _ => false,
        };
        if replaced {
            // Still validate what we drop: the upstream would have rejected it too.
            string_field(&field)?;
        } else {
            out.put_slice(field.raw);
        }
        Ok(())
    })?;
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::super::messages::*;
    use super::*;
    use prost::Message;

    fn infer_request() -> ModelInferRequest {
        ModelInferRequest {
            model_name: "fraud".into(),
            model_version: "1".into(),
            id: "req-7".into(),
            inputs: vec![model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![2, 3],
                contents: Some(InferTensorContents {
                    fp32_contents: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            raw_input_contents: vec![vec![0u8; 300]],
            ..Default::default()
        }
    }

    #[test]
    fn peek_reads_name_and_version() {
        let bytes = infer_request().encode_to_vec();
        assert_eq!(
            peek_model(&bytes).unwrap(),
            (Some("fraud".into()), Some("1".into()))
        );
        let ready = ModelReadyRequest {
            name: "m".into(),
            version: String::new(),
        };
        assert_eq!(
            peek_model(&ready.encode_to_vec()).unwrap(),
            (Some("m".into()), None)
        );
        assert_eq!(peek_model(&[]).unwrap(), (None, None));
    }

    #[test]
    fn peek_finds_fields_written_after_others_and_last_wins() {
        let mut bytes = ModelInferRequest {
            id: "x".into(),
            ..Default::default()
        }
        .encode_to_vec();
        bytes.extend(
            ModelMetadataRequest {
                name: "first".into(),
                version: String::new(),
            }
            .encode_to_vec(),
        );
        bytes.extend(
            ModelMetadataRequest {
                name: "second".into(),
                version: "9".into(),
            }
            .encode_to_vec(),
        );
        assert_eq!(
            peek_model(&bytes).unwrap(),
            (Some("second".into()), Some("9".into()))
        );
        // prost agrees.
        let decoded = ModelInferRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.model_name, "second");
    }

    #[test]
    fn rewrite_replaces_both_and_keeps_everything_else() {
        let original = infer_request();
        let bytes = original.encode_to_vec();
        let out = rewrite_model(&bytes, Some("fraud-xgb"), Some("42")).unwrap();
        let decoded = ModelInferRequest::decode(out.clone()).unwrap();
        let mut expected = original.clone();
        expected.model_name = "fraud-xgb".into();
        expected.model_version = "42".into();
        assert_eq!(decoded, expected);
        assert_eq!(
            peek_model(&out).unwrap(),
            (Some("fraud-xgb".into()), Some("42".into()))
        );
    }

    #[test]
    fn rewrite_name_only_keeps_version_and_inserts_when_absent() {
        let original = ModelInferRequest {
            id: "a".into(),
            model_version: "3".into(),
            ..Default::default()
        };
        let out = rewrite_model(&original.encode_to_vec(), Some("m2"), None).unwrap();
        let decoded = ModelInferRequest::decode(out).unwrap();
        assert_eq!(decoded.model_name, "m2");
        assert_eq!(decoded.model_version, "3");
        assert_eq!(decoded.id, "a");
    }

    #[test]
    fn rewrite_to_empty_clears_the_field() {
        let bytes = ModelReadyRequest {
            name: "m".into(),
            version: "1".into(),
        }
        .encode_to_vec();
        let out = rewrite_model(&bytes, None, Some("")).unwrap();
        let decoded = ModelReadyRequest::decode(out).unwrap();
        assert_eq!(decoded.name, "m");
        assert_eq!(decoded.version, "");
    }

    #[test]
    fn rewrite_without_changes_is_byte_identical() {
        let bytes = infer_request().encode_to_vec();
        assert_eq!(&rewrite_model(&bytes, None, None).unwrap()[..], &bytes[..]);
    }

    #[test]
    fn unknown_fields_survive_byte_for_byte() {
        let mut bytes = ModelMetadataRequest {
            name: "m".into(),
            version: String::new(),
        }
        .encode_to_vec();
        // Field 99 varint, field 100 fixed32, field 101 fixed64.
        let unknown = [
            0x98, 0x06, 0x2a, 0xa5, 0x06, 1, 2, 3, 4, 0xa9, 0x06, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        bytes.extend_from_slice(&unknown);
        let out = rewrite_model(&bytes, Some("n"), None).unwrap();
        assert_eq!(&out[..3], &[0x0a, 1, b'n']);
        assert_eq!(&out[3..], &unknown[..]);
    }

    #[test]
    fn malformed_messages_are_errors() {
        // Length runs past the end.
        assert!(peek_model(&[0x0a, 5, b'a']).is_err());
        assert!(rewrite_model(&[0x2a, 5, 1], Some("m"), None).is_err());
        // Field 1 with varint wire type.
        assert!(peek_model(&[0x08, 1]).is_err());
        // Invalid UTF-8 in the name.
        assert!(peek_model(&[0x0a, 1, 0xff]).is_err());
        assert!(rewrite_model(&[0x0a, 1, 0xff], Some("m"), None).is_err());
        // Truncated key.
        assert!(peek_model(&[0x80]).is_err());
    }
}
