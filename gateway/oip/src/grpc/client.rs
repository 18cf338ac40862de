//! A small tonic client for `inference.GRPCInferenceService`, shaped like tonic-build output.
//!
//! Written by hand because there is no `protoc` in the build; each method waits for the
//! transport to be ready, then sends one unary call with `tonic_prost::ProstCodec`.

use tonic::codegen::{http, Body, Bytes, StdError};

use super::messages::*;

/// A client for the OIP gRPC service over any tonic transport (`Channel` by default).
#[derive(Debug, Clone)]
pub struct InferenceClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl InferenceClient<tonic::transport::Channel> {
    /// Connects to `dst` (e.g. `"http://127.0.0.1:8001"`).
    pub async fn connect<D>(dst: D) -> Result<Self, tonic::transport::Error>
    where
        D: TryInto<tonic::transport::Endpoint>,
        D::Error: Into<StdError>,
    {
        let conn = tonic::transport::Endpoint::new(dst)?.connect().await?;
        Ok(Self::new(conn))
    }
}

impl<T> InferenceClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    /// Wraps an existing transport.
    pub fn new(inner: T) -> Self {
        Self {
            inner: tonic::client::Grpc::new(inner),
        }
    }

    async fn unary<M1, M2>(
        &mut self,
        request: tonic::Request<M1>,
        path: &'static str,
    ) -> Result<tonic::Response<M2>, tonic::Status>
    where
        M1: prost::Message + Send + Sync + 'static,
        M2: prost::Message + Default + Send + Sync + 'static,
    {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {}", e.into())))?;
        let codec = tonic_prost::ProstCodec::<M1, M2>::default();
        let path = http::uri::PathAndQuery::from_static(path);
        self.inner.unary(request, path, codec).await
    }

    pub async fn server_live(
        &mut self,
        request: impl tonic::IntoRequest<ServerLiveRequest>,
    ) -> Result<tonic::Response<ServerLiveResponse>, tonic::Status> {
        self.unary(request.into_request(), super::methods::SERVER_LIVE)
            .await
    }

    pub async fn server_ready(
        &mut self,
        request: impl tonic::IntoRequest<ServerReadyRequest>,
    ) -> Result<tonic::Response<ServerReadyResponse>, tonic::Status> {
        self.unary(request.into_request(), super::methods::SERVER_READY)
            .await
    }

    pub async fn model_ready(
        &mut self,
        request: impl tonic::IntoRequest<ModelReadyRequest>,
    ) -> Result<tonic::Response<ModelReadyResponse>, tonic::Status> {
        self.unary(request.into_request(), super::methods::MODEL_READY)
            .await
    }

    pub async fn model_metadata(
        &mut self,
        request: impl tonic::IntoRequest<ModelMetadataRequest>,
    ) -> Result<tonic::Response<ModelMetadataResponse>, tonic::Status> {
        self.unary(request.into_request(), super::methods::MODEL_METADATA)
            .await
    }

    pub async fn model_infer(
        &mut self,
        request: impl tonic::IntoRequest<ModelInferRequest>,
    ) -> Result<tonic::Response<ModelInferResponse>, tonic::Status> {
        self.unary(request.into_request(), super::methods::MODEL_INFER)
            .await
    }
}
