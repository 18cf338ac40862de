//! The `inference.GRPCInferenceService` (KServe V2 gRPC) for Cascadia.
//!
//! # Layout
//! - [`messages`]: hand-written prost messages, field numbers as in KServe's
//!   `grpc_predict_v2.proto`; nested messages live in snake_case modules as prost-build
//!   would generate them (`model_infer_request::InferInputTensor`, ...).
//! - [`framing`]: the 5-byte gRPC length prefix.
//! - [`route`]: read and rewrite the model name/version of a raw request message without
//!   decoding its tensors, so the router never copies or parses tensor data.
//! - [`client`]: a small tonic client, shaped like tonic-build's output.

pub mod client;
pub mod framing;
pub mod messages;
pub mod route;

pub use framing::{decode_frame, encode_frame, FrameError};
pub use messages::*;
pub use route::{peek_model, rewrite_model};

/// The fully-qualified gRPC service name; method paths are `/{SERVICE}/{Method}`.
pub const SERVICE: &str = "inference.GRPCInferenceService";

/// Method paths, for routing without string formatting on the hot path.
pub mod methods {
    pub const SERVER_LIVE: &str = "/inference.GRPCInferenceService/ServerLive";
    pub const SERVER_READY: &str = "/inference.GRPCInferenceService/ServerReady";
    pub const SERVER_METADATA: &str = "/inference.GRPCInferenceService/ServerMetadata";
    pub const MODEL_READY: &str = "/inference.GRPCInferenceService/ModelReady";
    pub const MODEL_METADATA: &str = "/inference.GRPCInferenceService/ModelMetadata";
    pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
}

/// gRPC status codes used by Cascadia (a subset of `google.rpc.Code`), for code that sets
/// `grpc-status` by hand rather than through `tonic::Status`.
pub mod status {
    pub const OK: u32 = 0;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_paths_use_the_service_name() {
        for m in [
            methods::SERVER_LIVE,
            methods::SERVER_READY,
            methods::SERVER_METADATA,
            methods::MODEL_READY,
            methods::MODEL_METADATA,
            methods::MODEL_INFER,
        ] {
            assert!(m.starts_with(&format!("/{SERVICE}/")), "{m}");
        }
    }
}
