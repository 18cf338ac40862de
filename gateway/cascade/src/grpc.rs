//! OIP gRPC messages to and from the JSON request model the cascade works
//! on, so REST and gRPC share one row split, decision and merge.
//!
//! Tensors may arrive as typed contents or as `raw_input_contents`
//! (little-endian, one buffer per input); both become JSON numbers here.
//! Escalations go out with typed contents.

use cascadia_oip::grpc::{
    infer_parameter::ParameterChoice, model_infer_request, model_infer_response, InferParameter,
    InferTensorContents, ModelInferRequest, ModelInferResponse,
};
use cascadia_oip::json::{InferInputTensor, InferOutputTensor, InferRequest, InferResponse};
use serde_json::Value;

use crate::rows::PayloadError;

/// How many values the request's tensors hold (an upper bound for BYTES),
/// counted without decoding: what [`to_json_request`] would expand into
/// one JSON value each, so the caller can refuse a message that is small
/// on the wire (packed BOOLs: one byte a value) but huge once expanded.
pub fn value_count(request: &ModelInferRequest) -> usize {
    let typed: usize = request
        .inputs
        .iter()
        .filter_map(|input| input.contents.as_ref())
        .map(|c| {
            c.bool_contents.len()
                + c.int_contents.len()
                + c.int64_contents.len()
                + c.uint_contents.len()
                + c.uint64_contents.len()
                + c.fp32_contents.len()
                + c.fp64_contents.len()
                + c.bytes_contents.len()
        })
        .sum();
    let raw: usize = request
        .inputs
        .iter()
        .zip(&request.raw_input_contents)
        .map(|(input, bytes)| {
            let width = match input.datatype.as_str() {
                "BOOL" | "UINT8" | "INT8" => 1,
                "UINT16" | "INT16" | "FP16" => 2,
                "UINT64" | "INT64" | "FP64" => 8,
                // FP32, the 32-bit integers, and BYTES (a 4-byte length each).
                _ => 4,
            };
            bytes.len() / width
        })
        .sum();
    typed + raw
}

/// The request as the JSON model.
pub fn to_json_request(request: &ModelInferRequest) -> Result<InferRequest, PayloadError> {
    let raw = !request.raw_input_contents.is_empty();
    let inputs = request
        .inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let data = if raw {
                let bytes = request
                    .raw_input_contents
                    .get(i)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                raw_values(&input.name, &input.datatype, bytes)?
            } else {
                typed_values(input.contents.as_ref())
            };
            Ok(InferInputTensor {
                name: input.name.clone(),
                shape: input.shape.clone(),
                datatype: input.datatype.clone(),
                parameters: None,
                data: Value::Array(data),
            })
        })
        .collect::<Result<Vec<_>, PayloadError>>()?;
    let outputs = (!request.outputs.is_empty()).then(|| {
        request
            .outputs
            .iter()
            .map(|o| cascadia_oip::json::RequestedOutput {
                name: o.name.clone(),
                parameters: None,
            })
            .collect()
    });
    Ok(InferRequest {
        id: (!request.id.is_empty()).then(|| request.id.clone()),
        parameters: None,
        inputs,
        outputs,
    })
}

fn typed_values(contents: Option<&InferTensorContents>) -> Vec<Value> {
    let Some(c) = contents else { return Vec::new() };
    let mut out: Vec<Value> = Vec::new();
    out.extend(c.bool_contents.iter().map(|v| Value::from(*v)));
    out.extend(c.int_contents.iter().map(|v| Value::from(*v)));
    out.extend(c.int64_contents.iter().map(|v| Value::from(*v)));
    out.extend(c.uint_contents.iter().map(|v| Value::from(*v)));
    out.extend(c.uint64_contents.iter().map(|v| Value::from(*v)));
    out.extend(c.fp32_contents.iter().map(|v| Value::from(f64::from(*v))));
    out.extend(c.fp64_contents.iter().map(|v| Value::from(*v)));
    out.extend(
        c.bytes_contents
            .iter()
            .map(|v| Value::from(String::from_utf8_lossy(v).into_owned())),
    );
    out
}

fn raw_values(name: &str, datatype: &str, bytes: &[u8]) -> Result<Vec<Value>, PayloadError> {
    fn chunks<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> Value) -> Option<Vec<Value>> {
        (bytes.len() % N == 0).then(|| {
            bytes
                .chunks_exact(N)
                .map(|c| f(c.try_into().expect("exact chunk")))
                .collect()
        })
    }
    let values = match datatype {
        "BOOL" => chunks::<1>(bytes, |b| Value::from(b[0] != 0)),
        "UINT8" => chunks::<1>(bytes, |b| Value::from(b[0])),
        "INT8" => chunks::<1>(bytes, |b| Value::from(b[0] as i8)),
        "UINT16" => chunks::<2>(bytes, |b| Value::from(u16::from_le_bytes(b))),
        "INT16" => chunks::<2>(bytes, |b| Value::from(i16::from_le_bytes(b))),
        "UINT32" => chunks::<4>(bytes, |b| Value::from(u32::from_le_bytes(b))),
        "INT32" => chunks::<4>(bytes, |b| Value::from(i32::from_le_bytes(b))),
        "FP32" => chunks::<4>(bytes, |b| Value::from(f64::from(f32::from_le_bytes(b)))),
        "UINT64" => chunks::<8>(bytes, |b| Value::from(u64::from_le_bytes(b))),
        "INT64" => chunks::<8>(bytes, |b| Value::from(i64::from_le_bytes(b))),
        "FP64" => chunks::<8>(bytes, |b| Value::from(f64::from_le_bytes(b))),
        "BYTES" => Some(length_prefixed(bytes)),
        other => {
            return Err(PayloadError::Datatype {
                input: name.to_owned(),
                datatype: other.to_owned(),
            })
        }
    };
    values.ok_or_else(|| PayloadError::NotNumeric {
        input: name.to_owned(),
    })
}

/// BYTES raw contents: each element is a 4-byte little-endian length and
/// that many bytes.
fn length_prefixed(mut bytes: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        let Some(element) = bytes.get(4..4 + len) else {
            break;
        };
        out.push(Value::from(String::from_utf8_lossy(element).into_owned()));
        bytes = &bytes[4 + len..];
    }
    out
}

/// A JSON request (e.g. the escalated rows) as a gRPC request with typed
/// contents, addressed to `model_name`/`model_version`.
pub fn to_grpc_request(
    request: &InferRequest,
    model_name: &str,
    model_version: &str,
) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model_name.to_owned(),
        model_version: model_version.to_owned(),
        id: request.id.clone().unwrap_or_default(),
        inputs: request
            .inputs
            .iter()
            .map(|input| model_infer_request::InferInputTensor {
                name: input.name.clone(),
                datatype: input.datatype.clone(),
                shape: input.shape.clone(),
                parameters: Default::default(),
                contents: Some(typed_contents(&input.datatype, &input.data)),
            })
            .collect(),
        // The client's requested outputs go along, or the model server would
        // answer with its default output instead.
        outputs: request
            .outputs
            .iter()
            .flatten()
            .map(|o| model_infer_request::InferRequestedOutputTensor {
                name: o.name.clone(),
                parameters: Default::default(),
            })
            .collect(),
        ..Default::default()
    }
}

fn typed_contents(datatype: &str, data: &Value) -> InferTensorContents {
    let mut leaves = Vec::new();
    flatten(data, &mut leaves);
    let numbers = || leaves.iter().filter_map(Value::as_f64);
    let mut c = InferTensorContents::default();
    match datatype {
        "BOOL" => {
            c.bool_contents = leaves
                .iter()
                .map(|v| v.as_bool().unwrap_or(v.as_f64() != Some(0.0)))
                .collect()
        }
        "INT8" | "INT16" | "INT32" => c.int_contents = numbers().map(|v| v as i32).collect(),
        "INT64" => c.int64_contents = numbers().map(|v| v as i64).collect(),
        "UINT8" | "UINT16" | "UINT32" => c.uint_contents = numbers().map(|v| v as u32).collect(),
        "UINT64" => c.uint64_contents = numbers().map(|v| v as u64).collect(),
        "FP64" => c.fp64_contents = numbers().collect(),
        "BYTES" => {
            c.bytes_contents = leaves
                .iter()
                .map(|v| {
                    v.as_str()
                        .map_or_else(|| v.to_string().into_bytes(), |s| s.as_bytes().to_vec())
                })
                .collect()
        }
        _ => c.fp32_contents = numbers().map(|v| v as f32).collect(),
    }
    c
}

fn flatten(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        other => out.push(other.clone()),
    }
}

/// A gRPC response as the JSON model (typed or raw outputs).
pub fn to_json_response(response: &ModelInferResponse) -> Result<InferResponse, PayloadError> {
    let raw = !response.raw_output_contents.is_empty();
    let outputs = response
        .outputs
        .iter()
        .enumerate()
        .map(|(i, output)| {
            let data = if raw {
                let bytes = response
                    .raw_output_contents
                    .get(i)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                raw_values(&output.name, &output.datatype, bytes)?
            } else {
                typed_values(output.contents.as_ref())
            };
            Ok(InferOutputTensor {
                name: output.name.clone(),
                shape: output.shape.clone(),
                datatype: output.datatype.clone(),
                parameters: None,
                data: Value::Array(data),
            })
        })
        .collect::<Result<Vec<_>, PayloadError>>()?;
    Ok(InferResponse {
        model_name: response.model_name.clone(),
        model_version: (!response.model_version.is_empty()).then(|| response.model_version.clone()),
        id: (!response.id.is_empty()).then(|| response.id.clone()),
        parameters: None,
        outputs,
    })
}

/// A JSON response (the cascade's answer) as a gRPC response. Outputs go
/// in `raw_output_contents`, as Triton and MLServer send them: Triton's
/// clients read only the raw form.
pub fn to_grpc_response(response: &InferResponse) -> ModelInferResponse {
    ModelInferResponse {
        model_name: response.model_name.clone(),
        model_version: response.model_version.clone().unwrap_or_default(),
        id: response.id.clone().unwrap_or_default(),
        parameters: response
            .parameters
            .iter()
            .flatten()
            .filter_map(|(name, value)| Some((name.clone(), parameter(value)?)))
            .collect(),
        outputs: response
            .outputs
            .iter()
            .map(|output| model_infer_response::InferOutputTensor {
                name: output.name.clone(),
                datatype: output.datatype.clone(),
                shape: output.shape.clone(),
                parameters: Default::default(),
                contents: None,
            })
            .collect(),
        raw_output_contents: response
            .outputs
            .iter()
            .map(|output| raw_bytes(&output.datatype, &output.data))
            .collect(),
    }
}

/// A JSON parameter as gRPC's: a bool, an integer or a string (the only
/// kinds OIP's `InferParameter` holds); anything else is left out.
fn parameter(value: &Value) -> Option<InferParameter> {
    let choice = match value {
        Value::Bool(b) => ParameterChoice::BoolParam(*b),
        Value::Number(n) => ParameterChoice::Int64Param(n.as_i64()?),
        Value::String(s) => ParameterChoice::StringParam(s.clone()),
        _ => return None,
    };
    Some(InferParameter {
        parameter_choice: Some(choice),
    })
}

/// Little-endian raw bytes of a tensor's values (numbers as the datatype
/// says; anything else as FP32).
fn raw_bytes(datatype: &str, data: &Value) -> Vec<u8> {
    let mut leaves = Vec::new();
    flatten(data, &mut leaves);
    let numbers = leaves.iter().filter_map(Value::as_f64);
    match datatype {
        "FP64" => numbers.flat_map(f64::to_le_bytes).collect(),
        "INT64" => numbers.flat_map(|v| (v as i64).to_le_bytes()).collect(),
        "INT32" => numbers.flat_map(|v| (v as i32).to_le_bytes()).collect(),
        _ => numbers.flat_map(|v| (v as f32).to_le_bytes()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_and_raw_inputs_read_the_same() {
        let typed = ModelInferRequest {
            inputs: vec![model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![2, 2],
                contents: Some(InferTensorContents {
                    fp32_contents: vec![1.0, 2.0, 3.0, 4.0],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut raw = typed.clone();
        raw.inputs[0].contents = None;
        raw.raw_input_contents = vec![[1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()];
        let a = to_json_request(&typed).unwrap();
        let b = to_json_request(&raw).unwrap();
        assert_eq!(a.inputs[0].data, json!([1.0, 2.0, 3.0, 4.0]));
        assert_eq!(a.inputs[0].data, b.inputs[0].data);
    }

    #[test]
    fn requests_and_responses_round_trip_through_typed_contents() {
        let json_request: InferRequest = serde_json::from_value(json!({"id":"r","inputs":[
            {"name":"x","shape":[1,2],"datatype":"FP64","data":[0.5,1.5]},
            {"name":"k","shape":[1],"datatype":"BYTES","data":["acme"]}
        ]}))
        .unwrap();
        let grpc = to_grpc_request(&json_request, "fraud", "2");
        assert_eq!(grpc.model_name, "fraud");
        assert_eq!(
            grpc.inputs[0].contents.as_ref().unwrap().fp64_contents,
            vec![0.5, 1.5]
        );
        assert_eq!(
            to_json_request(&grpc).unwrap().inputs[1].data,
            json!(["acme"])
        );

        let json_response: InferResponse =
            serde_json::from_value(json!({"model_name":"fraud","outputs":[
                {"name":"probability","shape":[1,1],"datatype":"FP32","data":[0.25]}
            ]}))
            .unwrap();
        let back = to_json_response(&to_grpc_response(&json_response)).unwrap();
        assert_eq!(back.outputs[0].data, json!([0.25]));

        // FP64 answers travel as raw f64, bit for bit, with the provenance.
        let p = 0.1f64 + 0.2;
        let fp64: InferResponse = serde_json::from_value(json!({
            "model_name": "fraud",
            "parameters": {"cascadia_rows": "ls", "cascadia_rows_local": 1},
            "outputs": [{"name":"p","shape":[1,1],"datatype":"FP64","data":[p]}]
        }))
        .unwrap();
        let grpc = to_grpc_response(&fp64);
        assert_eq!(grpc.raw_output_contents[0], p.to_le_bytes());
        assert_eq!(
            grpc.parameters["cascadia_rows"].parameter_choice,
            Some(ParameterChoice::StringParam("ls".into()))
        );
        assert_eq!(
            grpc.parameters["cascadia_rows_local"].parameter_choice,
            Some(ParameterChoice::Int64Param(1))
        );
    }

    #[test]
    fn values_are_counted_before_they_are_expanded() {
        let request = ModelInferRequest {
            inputs: vec![
                model_infer_request::InferInputTensor {
                    name: "b".into(),
                    datatype: "BOOL".into(),
                    shape: vec![1000],
                    ..Default::default()
                },
                model_infer_request::InferInputTensor {
                    name: "x".into(),
                    datatype: "FP64".into(),
                    shape: vec![2],
                    contents: Some(InferTensorContents {
                        fp64_contents: vec![1.0, 2.0],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            raw_input_contents: vec![vec![1u8; 1000]],
            ..Default::default()
        };
        assert_eq!(value_count(&request), 1002);
    }

    #[test]
    fn raw_buffers_of_the_wrong_size_are_rejected() {
        let request = ModelInferRequest {
            inputs: vec![model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![1, 1],
                ..Default::default()
            }],
            raw_input_contents: vec![vec![0, 0, 0]],
            ..Default::default()
        };
        assert!(matches!(
            to_json_request(&request),
            Err(PayloadError::NotNumeric { .. })
        ));
    }
}
