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
