//! `--grpc`: OIP gRPC `ModelInfer` over h2c, built from `cascadia-oip`'s prost messages.
//!
//! # How it works
//! The request message is encoded and framed once (once per distinct batch for `--rows`),
//! like the REST body, and sent on the same hyper h2 connections as `--http2` (no tonic
//! `Channel`: its buffer task would add a hop and CPU to every request, and the run already
//! owns its connections). A call succeeds when the HTTP status is 200 and `grpc-status` is
//! 0, read from the trailers or, for a trailers-only response, from the headers. Any other
//! `grpc-status` counts like a non-2xx response; a response with no `grpc-status` or a
//! malformed frame is a transport (protocol) error.

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Body;
use prost::Message;

use cascadia_oip::grpc::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use cascadia_oip::grpc::{
    decode_frame, encode_frame, methods, InferTensorContents, ModelInferRequest,
};

use crate::payload::{oip_features, OIP_FEATURES};
use crate::rows::{Data, Rows};
use crate::run::BoxError;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// A framed `ModelInferRequest` for `model`: one FP32 input `features` of shape `[rows, 32]`
/// with the same values as the REST body for the same `seed`.
pub fn model_infer_body(model: &str, rows: usize, seed: u64) -> Bytes {
    let request = ModelInferRequest {
        model_name: model.to_owned(),
        inputs: vec![InferInputTensor {
            name: "features".to_owned(),
            datatype: "FP32".to_owned(),
            shape: vec![rows as i64, OIP_FEATURES as i64],
            contents: Some(InferTensorContents {
                fp32_contents: oip_features(rows, seed),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    encode_frame(&request.encode_to_vec())
}

/// A framed `ModelInferRequest` for `model` carrying `rows` (a `--batch` of `--rows`): one
/// input `input` of shape `[rows, width]`, its values in the typed contents field for the
/// datatype (`fp64_contents`, `fp32_contents`, `int64_contents` or `int_contents`), not in
/// `raw_input_contents`, like the REST body carries them in JSON. `outputs`, when not empty,
/// asks for those outputs by name.
pub fn model_infer_rows_body(model: &str, input: &str, rows: &Rows, outputs: &[String]) -> Bytes {
    let mut contents = InferTensorContents::default();
    match rows.data() {
        Data::Fp64(v) => contents.fp64_contents.clone_from(v),
        Data::Fp32(v) => contents.fp32_contents.clone_from(v),
        Data::Int64(v) => contents.int64_contents.clone_from(v),
        Data::Int32(v) => contents.int_contents.clone_from(v),
    }
    let request = ModelInferRequest {
        model_name: model.to_owned(),
        inputs: vec![InferInputTensor {
            name: input.to_owned(),
            datatype: rows.datatype().as_str().to_owned(),
            shape: vec![rows.len() as i64, rows.width() as i64],
            contents: Some(contents),
            ..Default::default()
        }],
        outputs: outputs
            .iter()
            .map(|name| InferRequestedOutputTensor {
                name: name.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    encode_frame(&request.encode_to_vec())
}

/// The headers every gRPC call carries.
pub fn default_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    headers
}

/// The method path the calls go to.
pub fn path() -> &'static str {
    methods::MODEL_INFER
}

/// Reads a gRPC response to the end. `Ok(true)` for `grpc-status: 0`, `Ok(false)` for any
/// other status (or a non-200 HTTP status), `Err` when the response is not valid gRPC.
pub async fn read_response<B>(response: http::Response<B>) -> Result<bool, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let status = response.status();
    let trailers_only = grpc_status(response.headers());
    let collected = response.into_body().collect().await.map_err(Into::into)?;
    if status != StatusCode::OK {
        return Ok(false);
    }
    let code = match trailers_only {
        Some(code) => code,
        None => collected
            .trailers()
            .and_then(grpc_status)
            .ok_or("gRPC response without grpc-status")?,
    };
    if code != 0 {
        return Ok(false);
    }
    let body = collected.to_bytes();
    decode_frame(&body)?;
    Ok(true)
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::body::Frame;

    #[test]
    fn body_is_one_framed_infer_request() {
        let body = model_infer_body("fraud", 2, 7);
        let (compressed, msg) = decode_frame(&body).unwrap();
        assert!(!compressed);
        let req = ModelInferRequest::decode(msg).unwrap();
        assert_eq!(req.model_name, "fraud");
        let input = &req.inputs[0];
        assert_eq!(
            (input.name.as_str(), input.datatype.as_str()),
            ("features", "FP32")
        );
        assert_eq!(input.shape, [2, 32]);
        let values = &input.contents.as_ref().unwrap().fp32_contents;
        assert_eq!(values, &oip_features(2, 7));
        assert_eq!(path(), "/inference.GRPCInferenceService/ModelInfer");
    }

    #[test]
    fn rows_body_has_typed_contents() {
        use crate::rows::Datatype;
        let decode = |body: &Bytes| {
            let (compressed, msg) = decode_frame(body).unwrap();
            assert!(!compressed);
            ModelInferRequest::decode(msg).unwrap()
        };
        let rows = Rows::parse_csv("1,2.5\n3,4\n", Datatype::Fp64).unwrap();
        let req = decode(&model_infer_rows_body("fraud", "x", &rows, &[]));
        assert_eq!(req.model_name, "fraud");
        assert!(req.outputs.is_empty() && req.raw_input_contents.is_empty());
        let input = &req.inputs[0];
        assert_eq!(
            (input.name.as_str(), input.datatype.as_str()),
            ("x", "FP64")
        );
        assert_eq!(input.shape, [2, 2]);
        let want = InferTensorContents {
            fp64_contents: vec![1.0, 2.5, 3.0, 4.0],
            ..Default::default()
        };
        assert_eq!(input.contents.as_ref(), Some(&want));

        let typed = |datatype| {
            let rows = Rows::parse_csv("5,-6\n", datatype).unwrap();
            let outputs = ["proba".to_owned()];
            let req = decode(&model_infer_rows_body("m", "features", &rows, &outputs));
            assert_eq!(req.outputs.len(), 1);
            assert_eq!(req.outputs[0].name, "proba");
            assert_eq!(req.inputs[0].datatype, datatype.as_str());
            assert_eq!(req.inputs[0].shape, [1, 2]);
            req.inputs[0].contents.clone().unwrap()
        };
        assert_eq!(typed(Datatype::Fp32).fp32_contents, [5.0, -6.0]);
        assert_eq!(typed(Datatype::Int64).int64_contents, [5, -6]);
        let int32 = typed(Datatype::Int32);
        assert_eq!(int32.int_contents, [5, -6]);
        assert!(int32.int64_contents.is_empty() && int32.fp64_contents.is_empty());
    }

    fn response(status: u16, headers: &[(&str, &str)], body: Bytes) -> http::Response<Full<Bytes>> {
        let mut r = http::Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(Full::new(body)).unwrap()
    }

    /// A body that yields its frames in order: a data frame, then trailers.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn with_trailers(code: &str) -> http::Response<Frames> {
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, HeaderValue::from_str(code).unwrap());
        let frames = [
            Frame::data(encode_frame(b"\x0a\x05fraud")),
            Frame::trailers(trailers),
        ];
        http::Response::new(Frames(frames.into()))
    }

    #[tokio::test]
    async fn classifies_responses() {
        assert!(read_response(with_trailers("0")).await.unwrap());
        assert!(!read_response(with_trailers("14")).await.unwrap());
        // Trailers-only error.
        let r = response(200, &[("grpc-status", "5")], Bytes::new());
        assert!(!read_response(r).await.unwrap());
        assert!(!read_response(response(503, &[], Bytes::new()))
            .await
            .unwrap());
        // No grpc-status at all is a protocol error.
        let r = response(200, &[], encode_frame(b""));
        assert!(read_response(r).await.is_err());
    }
}
