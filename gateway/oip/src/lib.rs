//! Open Inference Protocol (KServe V2) wire types: REST paths and JSON, gRPC messages and framing.
//!
//! # Layout
//! - [`path`]: classify a REST path (`/v2/models/{name}/infer`, ...) without allocating, and
//!   rebuild one for an upstream whose model is named differently.
//! - [`json`]: serde types for the REST bodies (inference request/response, metadata, errors).
//! - [`grpc`]: the `inference.GRPCInferenceService` messages (hand-written prost, field numbers
//!   as in KServe's `grpc_predict_v2.proto`), gRPC length-prefix framing, zero-copy
//!   model-name peeking/rewriting for the router, and a small tonic client.

pub mod grpc;
pub mod json;
pub mod path;
