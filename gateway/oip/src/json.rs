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

/// Triton's binary tensor extension, which `tritonclient` uses by default:
/// the body is a JSON header of `json_len` bytes followed by raw tensors,
/// each input naming its size in `parameters.binary_data_size`. Model
/// servers that only speak plain OIP JSON (MLServer) refuse it, so the
/// gateway rewrites it as plain JSON, asks for JSON outputs, and drops the
/// extension's parameters.
pub fn binary_request_to_json(body: &[u8], json_len: usize) -> Result<Vec<u8>, String> {
    let header = body
        .get(..json_len)
        .ok_or_else(|| format!("inference header length {json_len} is past the end of the body"))?;
    let mut request: Value =
        serde_json::from_slice(header).map_err(|e| format!("invalid inference header: {e}"))?;
    let mut rest = &body[json_len..];
    if let Some(inputs) = request.get_mut("inputs").and_then(Value::as_array_mut) {
        for input in inputs {
            let size = input
                .pointer("/parameters/binary_data_size")
                .and_then(Value::as_u64);
            let Some(size) = size else { continue };
            let size = size as usize;
            let bytes = rest
                .get(..size)
                .ok_or_else(|| "binary input data is shorter than declared".to_owned())?;
            rest = &rest[size..];
            let datatype = input.get("datatype").and_then(Value::as_str).unwrap_or("");
            let values = decode_raw(datatype, bytes).ok_or_else(|| {
                format!("binary input of datatype {datatype:?} cannot be decoded")
            })?;
            input["data"] = Value::Array(values);
            if let Some(parameters) = input.get_mut("parameters").and_then(Value::as_object_mut) {
                parameters.remove("binary_data_size");
            }
        }
    }
    if !rest.is_empty() {
        return Err("binary data left over after the declared inputs".to_owned());
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
    serde_json::to_vec(&request).map_err(|e| e.to_string())
}

/// Little-endian raw tensor bytes as JSON values.
fn decode_raw(datatype: &str, bytes: &[u8]) -> Option<Vec<Value>> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> Value) -> Option<Vec<Value>> {
        (bytes.len() % N == 0).then(|| {
            bytes
                .chunks_exact(N)
                .map(|c| f(c.try_into().expect("exact chunk")))
                .collect()
        })
    }
    match datatype {
        "BOOL" => each::<1>(bytes, |b| Value::from(b[0] != 0)),
        "UINT8" => each::<1>(bytes, |b| Value::from(b[0])),
        "INT8" => each::<1>(bytes, |b| Value::from(b[0] as i8)),
        "UINT16" => each::<2>(bytes, |b| Value::from(u16::from_le_bytes(b))),
        "INT16" => each::<2>(bytes, |b| Value::from(i16::from_le_bytes(b))),
        "UINT32" => each::<4>(bytes, |b| Value::from(u32::from_le_bytes(b))),
        "INT32" => each::<4>(bytes, |b| Value::from(i32::from_le_bytes(b))),
        "FP32" => each::<4>(bytes, |b| Value::from(f64::from(f32::from_le_bytes(b)))),
        "UINT64" => each::<8>(bytes, |b| Value::from(u64::from_le_bytes(b))),
        "INT64" => each::<8>(bytes, |b| Value::from(i64::from_le_bytes(b))),
        "FP64" => each::<8>(bytes, |b| Value::from(f64::from_le_bytes(b))),
        "BYTES" => {
            let mut out = Vec::new();
            let mut rest = bytes;
            while rest.len() >= 4 {
                let len = u32::from_le_bytes(rest[..4].try_into().ok()?) as usize;
                let element = rest.get(4..4 + len)?;
                out.push(Value::from(String::from_utf8_lossy(element).into_owned()));
                rest = &rest[4 + len..];
            }
            rest.is_empty().then_some(out)
        }
        _ => None,
    }
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
            serde_json::from_slice(&binary_request_to_json(&body, header.len()).unwrap()).unwrap();
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
        assert!(binary_request_to_json(header, header.len()).is_err());
        let mut long = header.to_vec();
        long.extend([0u8; 8]);
        assert!(binary_request_to_json(&long, header.len()).is_err());
        assert!(binary_request_to_json(header, header.len() + 10).is_err());
    }
}
