//! gRPC (Open Inference Protocol over HTTP/2) through the gateway, with a
//! real tonic client.

use cascadia_oip::grpc::client::InferenceClient;
use cascadia_oip::grpc::{
    model_infer_request, InferTensorContents, ModelInferRequest, ServerLiveRequest,
};

use crate::support::{CanaryFixture, GatewayProcess};

fn infer_request(model: &str) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.to_owned(),
        id: "grpc-1".to_owned(),
        inputs: vec![model_infer_request::InferInputTensor {
            name: "features".to_owned(),
            datatype: "FP32".to_owned(),
            shape: vec![2, 4],
            contents: Some(InferTensorContents {
                fp32_contents: vec![0.5, 1.0, -0.5, 2.0, 0.0, 0.0, 0.0, 0.0],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_gets_through_a_grpc_route() {
    let fixture = CanaryFixture::start_h2c().await;
    let gateway = GatewayProcess::start(&fixture.config(0, 100)).await;
    let mut client = InferenceClient::connect(gateway.url(""))
        .await
        .expect("connect");

    let mut request = tonic::Request::new(infer_request("fraud"));
    request
        .metadata_mut()
        .insert("x-request-id", "grpc-req".parse().unwrap());
    let response = client
        .model_infer(request)
        .await
        .expect("ModelInfer succeeds");
    let metadata = response.metadata().clone();
    let reply = response.into_inner();
    assert_eq!(reply.outputs.len(), 1);
    assert_eq!(reply.outputs[0].name, "probability");
    assert_eq!(reply.outputs[0].shape, vec![2, 1]);
    assert_eq!(
        reply.model_version, "2",
        "served by the canary's model version"
    );
    assert_eq!(metadata.get("x-cascadia-version").unwrap(), "canary");
    assert_eq!(metadata.get("x-cascadia-backend").unwrap(), "fraud-v2");
    assert_eq!(metadata.get("x-request-id").unwrap(), "grpc-req");
    // The gateway rewrote model_version in the message to the split's.
    assert_eq!(metadata.get("x-sim-saw-version").unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_errors_are_grpc_statuses() {
    let fixture = CanaryFixture::start_h2c().await;
    let gateway = GatewayProcess::start(&fixture.config(100, 0)).await;
    let mut client = InferenceClient::connect(gateway.url(""))
        .await
        .expect("connect");

    let status = client
        .model_infer(infer_request("unknown"))
        .await
        .expect_err("no such model");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(!status.message().contains("127.0.0.1"));

    let mut forced = tonic::Request::new(infer_request("fraud"));
    forced
        .metadata_mut()
        .insert("x-cascadia-version", "nope".parse().unwrap());
    let status = client
        .model_infer(forced)
        .await
        .expect_err("unknown version");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // No h2c backend: gRPC cannot be carried, and says so.
    let http1 = CanaryFixture::start().await;
    let gateway_h1 = GatewayProcess::start(&http1.config(100, 0)).await;
    let mut client_h1 = InferenceClient::connect(gateway_h1.url(""))
        .await
        .expect("connect");
    let status = client_h1
        .model_infer(infer_request("fraud"))
        .await
        .expect_err("no h2c backend");
    assert_eq!(status.code(), tonic::Code::Unavailable);

    // The gateway answers ServerLive itself.
    let live = client
        .server_live(ServerLiveRequest {})
        .await
        .expect("ServerLive");
    assert!(live.into_inner().live);
}
