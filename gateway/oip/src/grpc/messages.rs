//! Hand-written prost messages for `inference.GRPCInferenceService` (no `protoc` needed).
//!
//! Field numbers and types follow KServe's `docs/predict-api/v2/grpc_predict_v2.proto`
//! exactly; a wrong number here silently corrupts traffic, so the tests below pin the wire
//! bytes of the fields the router depends on.

use std::collections::HashMap;

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ServerLiveRequest {}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ServerLiveResponse {
    #[prost(bool, tag = "1")]
    pub live: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ServerReadyRequest {}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ServerReadyResponse {
    #[prost(bool, tag = "1")]
    pub ready: bool,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ModelReadyRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ModelReadyResponse {
    #[prost(bool, tag = "1")]
    pub ready: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ServerMetadataRequest {}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ServerMetadataResponse {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(string, repeated, tag = "3")]
    pub extensions: Vec<String>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ModelMetadataRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ModelMetadataResponse {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub versions: Vec<String>,
    #[prost(string, tag = "3")]
    pub platform: String,
    #[prost(message, repeated, tag = "4")]
    pub inputs: Vec<model_metadata_response::TensorMetadata>,
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<model_metadata_response::TensorMetadata>,
}

/// Nested messages of [`ModelMetadataResponse`].
pub mod model_metadata_response {
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct TensorMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub datatype: String,
        /// `-1` marks a variable-size dimension.
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInferRequest {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "2")]
    pub model_version: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
    #[prost(message, repeated, tag = "5")]
    pub inputs: Vec<model_infer_request::InferInputTensor>,
    #[prost(message, repeated, tag = "6")]
    pub outputs: Vec<model_infer_request::InferRequestedOutputTensor>,
    /// One entry per input, in `inputs` order, when raw contents are used instead of
    /// `InferInputTensor::contents`.
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub raw_input_contents: Vec<Vec<u8>>,
}

/// Nested messages of [`ModelInferRequest`].
pub mod model_infer_request {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferInputTensor {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub datatype: String,
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
        #[prost(map = "string, message", tag = "4")]
        pub parameters: HashMap<String, super::InferParameter>,
        #[prost(message, optional, tag = "5")]
        pub contents: Option<super::InferTensorContents>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferRequestedOutputTensor {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(map = "string, message", tag = "2")]
        pub parameters: HashMap<String, super::InferParameter>,
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInferResponse {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "2")]
    pub model_version: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<model_infer_response::InferOutputTensor>,
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub raw_output_contents: Vec<Vec<u8>>,
}

/// Nested messages of [`ModelInferResponse`].
pub mod model_infer_response {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferOutputTensor {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub datatype: String,
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
        #[prost(map = "string, message", tag = "4")]
        pub parameters: HashMap<String, super::InferParameter>,
        #[prost(message, optional, tag = "5")]
        pub contents: Option<super::InferTensorContents>,
    }
}

/// A named request/tensor parameter: a bool, an int64 or a string.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct InferParameter {
    #[prost(oneof = "infer_parameter::ParameterChoice", tags = "1, 2, 3")]
    pub parameter_choice: Option<infer_parameter::ParameterChoice>,
}

/// The oneof of [`InferParameter`].
pub mod infer_parameter {
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum ParameterChoice {
        #[prost(bool, tag = "1")]
        BoolParam(bool),
        #[prost(int64, tag = "2")]
        Int64Param(i64),
        #[prost(string, tag = "3")]
        StringParam(String),
    }
}

/// Typed tensor contents; only the field matching the tensor's datatype is set.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferTensorContents {
    #[prost(bool, repeated, tag = "1")]
    pub bool_contents: Vec<bool>,
    /// INT8, INT16 and INT32.
    #[prost(int32, repeated, tag = "2")]
    pub int_contents: Vec<i32>,
    #[prost(int64, repeated, tag = "3")]
    pub int64_contents: Vec<i64>,
    /// UINT8, UINT16 and UINT32.
    #[prost(uint32, repeated, tag = "4")]
    pub uint_contents: Vec<u32>,
    #[prost(uint64, repeated, tag = "5")]
    pub uint64_contents: Vec<u64>,
    #[prost(float, repeated, tag = "6")]
    pub fp32_contents: Vec<f32>,
    #[prost(double, repeated, tag = "7")]
    pub fp64_contents: Vec<f64>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub bytes_contents: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn infer_request_field_numbers_on_the_wire() {
        let req = ModelInferRequest {
            model_name: "m".into(),
            model_version: "v".into(),
            id: "i".into(),
            raw_input_contents: vec![vec![9]],
            ..Default::default()
        };
        // key = tag << 3 | wire type 2 (length-delimited).
        assert_eq!(
            req.encode_to_vec(),
            vec![0x0a, 1, b'm', 0x12, 1, b'v', 0x1a, 1, b'i', 0x3a, 1, 9]
        );
    }

    #[test]
    fn tensor_contents_field_numbers_on_the_wire() {
        let c = InferTensorContents {
            fp32_contents: vec![1.0],
            ..Default::default()
        };
        // Packed repeated float, field 6: key 0x32, length 4, little-endian 1.0f32.
        assert_eq!(c.encode_to_vec(), vec![0x32, 4, 0, 0, 0x80, 0x3f]);
    }

    #[test]
    fn infer_request_round_trips() {
        let mut params = HashMap::new();
        params.insert(
            "priority".to_owned(),
            InferParameter {
                parameter_choice: Some(infer_parameter::ParameterChoice::Int64Param(2)),
            },
        );
        let req = ModelInferRequest {
            model_name: "fraud".into(),
            parameters: params,
            inputs: vec![model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![1, 3],
                contents: Some(InferTensorContents {
                    fp32_contents: vec![1.0, 2.0, 3.0],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let back = ModelInferRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, req);
    }
}
