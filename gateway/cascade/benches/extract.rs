//! OIP feature extraction: the gateway's path from a request body to stage-1 rows, from a REST
//! JSON infer body (1 and 64 rows × 32 FP32) and from a gRPC `ModelInferRequest` (typed
//! `fp32_contents` and `raw_input_contents`), against a baseline of parsing the same bytes
//! alone: `serde_json::from_slice::<serde_json::Value>` for JSON, `prost::Message::decode` for
//! gRPC.
//!
//! The measured paths are the ones `cascadia::cascade` runs: JSON is
//! `serde_json::from_slice::<InferRequest>` then `rows::features`; gRPC is
//! `ModelInferRequest::decode`, `grpc::to_json_request` then `rows::features`. Intermediate
//! steps are measured too, so the table shows where the time goes.

use std::hint::black_box;

use cascadia_cascade::grpc::to_json_request;
use cascadia_cascade::rows::{self, Layout};
use cascadia_cascade::LogisticModel;
use cascadia_oip::grpc::{model_infer_request, InferTensorContents, ModelInferRequest};
use cascadia_oip::json::InferRequest;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;

const WIDTH: usize = 32;
const INPUT: &str = "features";

/// A deterministic stream of f32 feature values in [-4, 4).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
    }
}

fn model() -> LogisticModel {
    let names = (0..WIDTH)
        .map(|i| format!("\"f{i}\""))
        .collect::<Vec<_>>()
        .join(",");
    let coefficients = vec!["0.1"; WIDTH].join(",");
    LogisticModel::from_json(&format!(
        r#"{{"name":"bench","features":[{names}],"coefficients":[{coefficients}],"intercept":0}}"#
    ))
    .expect("valid artifact")
}

/// The REST body: one `[rows, 32]` FP32 input with flat row-major data. Values are the f64 of
/// an f32, as Python clients send `np.float32` arrays after `.tolist()` (about 17 digits each).
fn json_body(values: &[f32], rows: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": "bench",
        "inputs": [{
            "name": INPUT,
            "shape": [rows, WIDTH],
            "datatype": "FP32",
            "data": values.iter().map(|v| f64::from(*v)).collect::<Vec<_>>(),
        }],
    }))
    .expect("serializable")
}

/// The gRPC message, unframed, with the tensor as typed contents or as raw little-endian bytes.
fn grpc_message(values: &[f32], rows: usize, raw: bool) -> Vec<u8> {
    let mut input = model_infer_request::InferInputTensor {
        name: INPUT.to_owned(),
        datatype: "FP32".to_owned(),
        shape: vec![rows as i64, WIDTH as i64],
        ..Default::default()
    };
    let mut request = ModelInferRequest {
        model_name: "bench".to_owned(),
        id: "bench".to_owned(),
        ..Default::default()
    };
    if raw {
        request.raw_input_contents = vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()];
    } else {
        input.contents = Some(InferTensorContents {
            fp32_contents: values.to_vec(),
            ..Default::default()
        });
    }
    request.inputs = vec![input];
    request.encode_to_vec()
}

/// Every path must read the same rows, or the comparison is void. JSON text may round the last
/// bit (serde_json parses floats fast, not always exactly), hence the tolerance.
fn same(features: &rows::Features, rows: usize, expected: &[f64]) {
    assert_eq!(features.rows, rows);
    assert_eq!(features.data.len(), expected.len());
    for (got, want) in features.data.iter().zip(expected) {
        assert!(
            (got - want).abs() <= 1e-12 * want.abs().max(1.0),
            "{got} != {want}"
        );
    }
}

fn extraction(c: &mut Criterion) {
    let model = model();
    let layout = Layout {
        matrix_input: Some(INPUT),
        max_batch: 256,
        default: None,
    };
    let mut rng = Lcg(0x5eed);
    for rows in [1usize, 64] {
        let values: Vec<f32> = (0..rows * WIDTH).map(|_| rng.next()).collect();
        let expected: Vec<f64> = values.iter().map(|v| f64::from(*v)).collect();

        let body = json_body(&values, rows);
        let parsed: InferRequest = serde_json::from_slice(&body).expect("valid body");
        let features = rows::features(&parsed, &model, layout).expect("valid features");
        same(&features, rows, &expected);

        let mut group = c.benchmark_group(format!("extract/json/{rows}x{WIDTH}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("baseline-from_slice::<Value>", |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap())
        });
        group.bench_function("from_slice::<InferRequest>", |b| {
            b.iter(|| serde_json::from_slice::<InferRequest>(black_box(&body)).unwrap())
        });
        group.bench_function("from_slice+rows::features", |b| {
            b.iter(|| {
                let request: InferRequest = serde_json::from_slice(black_box(&body)).unwrap();
                rows::features(&request, &model, layout).unwrap()
            })
        });
        group.finish();

        for (kind, raw) in [("typed", false), ("raw", true)] {
            let message = grpc_message(&values, rows, raw);
            let decoded = ModelInferRequest::decode(message.as_slice()).expect("valid message");
            let infer = to_json_request(&decoded).expect("numeric tensor");
            let features = rows::features(&infer, &model, layout).expect("valid features");
            same(&features, rows, &expected);

            let mut group = c.benchmark_group(format!("extract/grpc-{kind}/{rows}x{WIDTH}"));
            group.throughput(Throughput::Bytes(message.len() as u64));
            group.bench_function("baseline-decode", |b| {
                b.iter(|| ModelInferRequest::decode(black_box(message.as_slice())).unwrap())
            });
            group.bench_function("decode+to_json_request", |b| {
                b.iter(|| {
                    let request = ModelInferRequest::decode(black_box(message.as_slice())).unwrap();
                    to_json_request(&request).unwrap()
                })
            });
            group.bench_function("decode+to_json_request+rows::features", |b| {
                b.iter(|| {
                    let request = ModelInferRequest::decode(black_box(message.as_slice())).unwrap();
                    let infer = to_json_request(&request).unwrap();
                    rows::features(&infer, &model, layout).unwrap()
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, extraction);
criterion_main!(benches);
