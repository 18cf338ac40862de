//! Serde types for the OIP REST bodies: inference request/response, model metadata, errors.
//!
//! Tensor `data` stays a [`serde_json::Value`]: the gateway forwards bodies it does not need
//! to understand, and OIP allows both flat and nested (row-major) arrays.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v2/models/{m}/infer` request body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<InferInputTensor>,
    /// Which outputs to return; `None` means all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// One input tensor of an [`InferRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferInputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// Row-major tensor contents, flat or nested. `Null` when absent (binary extension).
    #[serde(default)]
    pub data: Value,
}

/// An output the client asks for by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
}

/// `POST /v2/models/{m}/infer` response body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    pub outputs: Vec<InferOutputTensor>,
}

/// One output tensor of an [`InferResponse`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferOutputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default)]
    pub data: Value,
}

/// `GET /v2/models/{m}[/versions/{v}]` response body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    #[serde(default)]
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// Name, type and shape of one model input or output; `-1` marks a variable dimension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// The OIP error body: `{"error": "..."}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Flattens a (possibly nested) array of numbers into row-major `f32`s.
///
/// A bare number counts as a one-element tensor. Returns `None` if anything other than
/// numbers and arrays is found (strings, bools, objects, null).
pub fn flatten_f32(data: &Value) -> Option<Vec<f32>> {
    fn walk(v: &Value, out: &mut Vec<f32>) -> bool {
        match v {
            Value::Number(n) => match n.as_f64() {
                Some(x) => {
                    out.push(x as f32);
                    true
                }
                None => false,
            },
            Value::Array(items) => items.iter().all(|item| walk(item, out)),
            _ => false,
        }
    }
    let mut out = Vec::new();
    walk(data, &mut out).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_round_trips_and_skips_absent_options() {
        let body = json!({
            "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}]
        });
        let req: InferRequest = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(req.inputs[0].shape, vec![2, 2]);
        assert_eq!(req.id, None);
        assert_eq!(serde_json::to_value(&req).unwrap(), body);
    }

    #[test]
    fn response_serializes_version_and_id_when_present() {
        let resp = InferResponse {
            model_name: "fraud".into(),
            model_version: Some("1".into()),
            id: Some("abc".into()),
            parameters: None,
            outputs: vec![InferOutputTensor {
                name: "probability".into(),
                shape: vec![1, 1],
                datatype: "FP32".into(),
                parameters: None,
                data: json!([0.5]),
            }],
        };
        let v = serde_json::to_value(&resp).unwrap();
        assert_eq!(v["model_version"], "1");
        assert_eq!(v["id"], "abc");
        assert!(v.get("parameters").is_none());
    }

    #[test]
    fn flatten_handles_flat_nested_and_rejects_non_numbers() {
        assert_eq!(flatten_f32(&json!([1, 2.5])), Some(vec![1.0, 2.5]));
        assert_eq!(
            flatten_f32(&json!([[1, 2], [3, 4]])),
            Some(vec![1.0, 2.0, 3.0, 4.0])
        );
        assert_eq!(flatten_f32(&json!(3)), Some(vec![3.0]));
        assert_eq!(flatten_f32(&json!([])), Some(vec![]));
        assert_eq!(flatten_f32(&json!([1, "2"])), None);
        assert_eq!(flatten_f32(&json!([true])), None);
        assert_eq!(flatten_f32(&Value::Null), None);
    }
}

/// Why a Triton binary request could not be rewritten as JSON.
#[derive(Debug, PartialEq, Eq)]
pub enum BinaryError {
    /// The body is not a valid binary-extension request; the text says why
    /// (it describes the client's payload).
    Invalid(String),
    /// The JSON would be longer than the limit (binary tensors expand:
    /// a 1-byte BOOL becomes `false,`).
    TooLarge { limit: usize },
}

impl From<String> for BinaryError {
    fn from(message: String) -> Self {
        Self::Invalid(message)
    }
}

/// Triton's binary tensor extension, which `tritonclient` uses by default:
/// the body is a JSON header of `json_len` bytes followed by raw tensors,
/// each input naming its size in `parameters.binary_data_size`. Model
/// servers that only speak plain OIP JSON (MLServer) refuse it, so the
/// gateway rewrites it as plain JSON, asks for JSON outputs, and drops the
/// extension's parameters.
///
/// The JSON is written straight from the raw bytes into one buffer that
/// may not pass `max_json` bytes: no value per element is ever built, so
/// memory stays within the limit however much the tensors expand.
pub fn binary_request_to_json(
    body: &[u8],
    json_len: usize,
    max_json: usize,
) -> Result<Vec<u8>, BinaryError> {
    let header = body
        .get(..json_len)
        .ok_or_else(|| format!("inference header length {json_len} is past the end of the body"))?;
    let mut request: Value =
        serde_json::from_slice(header).map_err(|e| format!("invalid inference header: {e}"))?;
    let mut rest = &body[json_len..];
    // Each binary input's data is a placeholder in the header, replaced by
    // the written array afterwards.
    let mut tensors: Vec<(String, &[u8])> = Vec::new();
    if let Some(inputs) = request.get_mut("inputs").and_then(Value::as_array_mut) {
        for input in inputs {
            let size = input
                .pointer("/parameters/binary_data_size")
                .and_then(Value::as_u64);
            let Some(size) = size else { continue };
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            let bytes = rest
                .get(..size)
                .ok_or_else(|| "binary input data is shorter than declared".to_owned())?;
            rest = &rest[size..];
            let datatype = input
                .get("datatype")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let placeholder = format!("\u{0}cascadia-binary-{}\u{0}", tensors.len());
            input["data"] = Value::String(placeholder);
            if let Some(parameters) = input.get_mut("parameters").and_then(Value::as_object_mut) {
                parameters.remove("binary_data_size");
            }
            tensors.push((datatype, bytes));
        }
    }
    if !rest.is_empty() {
        return Err("binary data left over after the declared inputs"
            .to_owned()
            .into());
    }
    if let Some(outputs) = request.get_mut("outputs").and_then(Value::as_array_mut) {
        for output in outputs {
            if let Some(parameters) = output.get_mut("parameters").and_then(Value::as_object_mut) {
                parameters.remove("binary_data");
            }
        }
    }
    if let Some(parameters) = request.get_mut("parameters").and_then(Value::as_object_mut) {
        parameters.remove("binary_data_output");
    }
    let skeleton = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    let too_large = BinaryError::TooLarge { limit: max_json };
    // Refused before any element is written when even the shortest
    // spelling of every element would not fit: a 4 MB BOOL tensor is at
    // least 20 MB of JSON, and writing it out first would cost the worker
    // tens of milliseconds per request.
    let least = tensors
        .iter()
        .map(|(datatype, bytes)| least_json_len(datatype, bytes.len()))
        .fold(skeleton.len(), usize::saturating_add);
    if least > max_json {
        return Err(too_large);
    }
    let mut out = Vec::with_capacity(skeleton.len().min(max_json));
    let mut written = 0;
    for (i, (datatype, bytes)) in tensors.iter().enumerate() {
        let marker = format!("\"\\u0000cascadia-binary-{i}\\u0000\"");
        let at = find(&skeleton[written..], marker.as_bytes())
            .map(|at| written + at)
            .ok_or_else(|| "binary input could not be placed".to_owned())?;
        // A header that spells a marker itself would move the data.
        if find(&skeleton[at + marker.len()..], marker.as_bytes()).is_some() {
            return Err("invalid inference header".to_owned().into());
        }
        out.extend_from_slice(&skeleton[written..at]);
        write_raw(datatype, bytes, &mut out, max_json)?;
        written = at + marker.len();
    }
    out.extend_from_slice(&skeleton[written..]);
    if out.len() > max_json {
        return Err(too_large);
    }
    Ok(out)
}

/// The fewest JSON bytes `len` bytes of binary `datatype` can become: each
/// element at its shortest (`true` for BOOL, one digit for an integer,
/// `0.0` for a float), with the commas and brackets. 0 for BYTES, whose
/// element count is not known without reading them, and unknown types.
fn least_json_len(datatype: &str, len: usize) -> usize {
    let (width, shortest) = match datatype {
        "BOOL" => (1, 4),
        "UINT8" | "INT8" => (1, 1),
        "UINT16" | "INT16" => (2, 1),
        "UINT32" | "INT32" => (4, 1),
        "UINT64" | "INT64" => (8, 1),
        "FP32" => (4, 3),
        "FP64" => (8, 3),
        _ => return 0,
    };
    let elements = len / width;
    // `[` `]`, the elements, and a comma between each two.
    2 + elements * shortest + elements.saturating_sub(1)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes little-endian raw tensor bytes as a JSON array into `out`,
/// failing as soon as `out` passes `max` bytes.
fn write_raw(
    datatype: &str,
    bytes: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), BinaryError> {
    let undecodable = || {
        BinaryError::Invalid(format!(
            "binary input of datatype {datatype:?} cannot be decoded"
        ))
    };
    let width = match datatype {
        "BOOL" | "UINT8" | "INT8" => 1,
        "UINT16" | "INT16" => 2,
        "UINT32" | "INT32" | "FP32" => 4,
        "UINT64" | "INT64" | "FP64" => 8,
        "BYTES" => 0,
        _ => return Err(undecodable()),
    };
    if width > 0 && bytes.len() % width != 0 {
        return Err(undecodable());
    }
    out.push(b'[');
    let mut first = true;
    let mut element =
        |out: &mut Vec<u8>, write: &dyn Fn(&mut Vec<u8>)| -> Result<(), BinaryError> {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            write(out);
            if out.len() > max {
                return Err(BinaryError::TooLarge { limit: max });
            }
            Ok(())
        };
    let number = |out: &mut Vec<u8>, value: Value| {
        let _ = serde_json::to_writer(out, &value);
    };
    if width == 0 {
        let mut rest = bytes;
        while rest.len() >= 4 {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            let data = rest.get(4..4 + len).ok_or_else(undecodable)?;
            let text = String::from_utf8_lossy(data);
            element(out, &|out| {
                let _ = serde_json::to_writer(out, text.as_ref());
            })?;
            rest = &rest[4 + len..];
        }
        if !rest.is_empty() {
            return Err(undecodable());
        }
    } else {
        for c in bytes.chunks_exact(width) {
            let value = match datatype {
                "BOOL" => Value::from(c[0] != 0),
                "UINT8" => Value::from(c[0]),
                "INT8" => Value::from(c[0] as i8),
                "UINT16" => Value::from(u16::from_le_bytes([c[0], c[1]])),
                "INT16" => Value::from(i16::from_le_bytes([c[0], c[1]])),
                "UINT32" => Value::from(u32::from_le_bytes(c.try_into().expect("4 bytes"))),
                "INT32" => Value::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))),
                "FP32" => Value::from(f64::from(f32::from_le_bytes(
                    c.try_into().expect("4 bytes"),
                ))),
                "UINT64" => Value::from(u64::from_le_bytes(c.try_into().expect("8 bytes"))),
                "INT64" => Value::from(i64::from_le_bytes(c.try_into().expect("8 bytes"))),
                _ => Value::from(f64::from_le_bytes(c.try_into().expect("8 bytes"))),
            };
            element(out, &|out| number(out, value.clone()))?;
        }
    }
    out.push(b']');
    Ok(())
}

#[cfg(test)]
mod binary_tests {
    use super::*;

    #[test]
    fn triton_binary_requests_become_plain_json() {
        let header = br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP64","parameters":{"binary_data_size":16}}],"outputs":[{"name":"p","parameters":{"binary_data":true}}]}"#;
        let mut body = header.to_vec();
        body.extend(1.5f64.to_le_bytes());
        body.extend(2.5f64.to_le_bytes());
        let json: Value =
            serde_json::from_slice(&binary_request_to_json(&body, header.len(), 1 << 20).unwrap())
                .unwrap();
        assert_eq!(json["inputs"][0]["data"], serde_json::json!([1.5, 2.5]));
        assert!(json["inputs"][0]["parameters"]
            .get("binary_data_size")
            .is_none());
        assert!(json["outputs"][0]["parameters"]
            .get("binary_data")
            .is_none());
        let request: InferRequest = serde_json::from_value(json).unwrap();
        assert_eq!(request.inputs[0].shape, vec![1, 2]);
    }

    #[test]
    fn short_or_long_binary_data_is_refused() {
        let header = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        assert!(binary_request_to_json(header, header.len(), 1 << 20).is_err());
        let mut long = header.to_vec();
        long.extend([0u8; 8]);
        assert!(binary_request_to_json(&long, header.len(), 1 << 20).is_err());
        assert!(binary_request_to_json(header, header.len() + 10, 1 << 20).is_err());
    }

    #[test]
    fn expansion_past_the_limit_is_refused_before_it_is_built() {
        // 1,000 BOOLs: 1 KB of binary, about 6 KB of JSON.
        let header = br#"{"inputs":[{"name":"b","shape":[1000],"datatype":"BOOL","parameters":{"binary_data_size":1000}}]}"#;
        let mut body = header.to_vec();
        body.extend([0u8; 1000]);
        assert_eq!(
            binary_request_to_json(&body, header.len(), 4096),
            Err(BinaryError::TooLarge { limit: 4096 })
        );
        let json = binary_request_to_json(&body, header.len(), 16 * 1024).unwrap();
        let parsed: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(parsed["inputs"][0]["data"].as_array().unwrap().len(), 1000);
        assert_eq!(parsed["inputs"][0]["data"][0], false);
    }

    #[test]
    fn the_least_json_length_never_exceeds_the_real_one() {
        for datatype in [
            "BOOL", "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64",
            "FP32", "FP64",
        ] {
            for (fill, len) in [(0u8, 0usize), (0, 8), (1, 8), (0, 64), (0x3f, 64)] {
                let bytes = vec![fill; len];
                let mut out = Vec::new();
                write_raw(datatype, &bytes, &mut out, usize::MAX).unwrap();
                let least = least_json_len(datatype, len);
                assert!(
                    least <= out.len(),
                    "{datatype} x{len} ({fill}): least {least} > real {}",
                    out.len()
                );
            }
        }
        // The shortest spellings are met exactly: `true` and `0`.
        let mut out = Vec::new();
        write_raw("BOOL", &[1; 10], &mut out, usize::MAX).unwrap();
        assert_eq!(least_json_len("BOOL", 10), out.len());
    }

    #[test]
    fn every_datatype_and_bytes_round_trip() {
        let header = br#"{"inputs":[{"name":"i","shape":[2],"datatype":"INT16","parameters":{"binary_data_size":4}},{"name":"s","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":13}},{"name":"f","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        let mut body = header.to_vec();
        body.extend((-3i16).to_le_bytes());
        body.extend(7i16.to_le_bytes());
        for s in ["ab", "c\"d"] {
            body.extend((s.len() as u32).to_le_bytes());
            body.extend(s.as_bytes());
        }
        body.extend(0.1f32.to_le_bytes());
        let parsed: Value =
            serde_json::from_slice(&binary_request_to_json(&body, header.len(), 1 << 20).unwrap())
                .unwrap();
        assert_eq!(parsed["inputs"][0]["data"], serde_json::json!([-3, 7]));
        assert_eq!(
            parsed["inputs"][1]["data"],
            serde_json::json!(["ab", "c\"d"])
        );
        assert_eq!(parsed["inputs"][2]["data"][0], f64::from(0.1f32));
    }
}
