//! Route matching: the gateway's match phase over a `RouteTable` of 10 and 200 routes, by OIP
//! model name (REST path), by gRPC model name (framed `ModelInferRequest`) and by path prefix,
//! against a baseline of a `HashMap<String, usize>` lookup of the model name.
//!
//! Each variant does what `cascadia::proxy` does for that kind of request:
//! - OIP REST: `cascadia_oip::path::parse`, then `RouteTable::by_model`; and the proxy's
//!   whole match phase, `cascadia::proxy::match_request` (path checks included).
//! - gRPC: `decode_frame` and `peek_model` on the buffered body (a 1×32 FP32 request), then
//!   `RouteTable::by_model`.
//! - Path prefix: `RouteTable::by_path`, on a hit in the middle of the prefixes and on a miss
//!   (which scans all of them, as every unmatched request does).
//!
//! Half the routes match by model and half by path prefix; every prefix has the same length,
//! so the table's longest-first order is the config order and the "middle" hit is the middle.

use std::collections::HashMap;
use std::fmt::Write;
use std::hint::black_box;

use cascadia::routing::{RouteRuntimes, RouteTable};
use cascadia_oip::grpc::{
    decode_frame, encode_frame, model_infer_request, peek_model, InferTensorContents,
    ModelInferRequest,
};
use criterion::{criterion_group, criterion_main, Criterion};
use prost::Message;

/// A config with `n` routes, `n / 2` by model (`model-000`, ...) and `n / 2` by path prefix
/// (`/api/svc-000`, ...), all on one backend.
fn config(n: usize) -> String {
    let mut text =
        String::from("[[backends]]\nname = \"b\"\nregion = \"r\"\nendpoints = [\"127.0.0.1:1\"]\n");
    for i in 0..n / 2 {
        write!(
            text,
            "\n[[routes]]\nname = \"model-{i:03}\"\nmatch = {{ model = \"model-{i:03}\" }}\n\
             backends = [\"b\"]\n\
             \n[[routes]]\nname = \"prefix-{i:03}\"\nmatch = {{ path_prefix = \"/api/svc-{i:03}\" }}\n\
             backends = [\"b\"]\n"
        )
        .expect("write to a String");
    }
    text
}

fn table(n: usize) -> RouteTable {
    let config = cascadia_config::parse(&config(n)).expect("valid config");
    let registry = cascadia_backends::Registry::new();
    RouteTable::build(
        &config,
        &registry.build(&config),
        None,
        &RouteRuntimes::default(),
    )
}

/// A framed gRPC `ModelInferRequest` for `model` with one 1×32 FP32 tensor, as the proxy
/// buffers it.
fn grpc_body(model: &str) -> bytes::Bytes {
    let request = ModelInferRequest {
        model_name: model.to_owned(),
        id: "bench".to_owned(),
        inputs: vec![model_infer_request::InferInputTensor {
            name: "features".to_owned(),
            datatype: "FP32".to_owned(),
            shape: vec![1, 32],
            contents: Some(InferTensorContents {
                fp32_contents: (0..32).map(|i| i as f32 * 0.25).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    encode_frame(&request.encode_to_vec())
}

fn matching(c: &mut Criterion) {
    for n in [10usize, 200] {
        let table = table(n);
        let models = n / 2;
        let target = models / 2;
        let model = format!("model-{target:03}");
        let baseline: HashMap<String, usize> =
            (0..models).map(|i| (format!("model-{i:03}"), i)).collect();
        let oip_path = format!("/v2/models/{model}/infer");
        let body = grpc_body(&model);
        let prefix_hit = format!("/api/svc-{target:03}/predict");
        let prefix_miss = "/api/unknown/predict";

        // Every variant must find what it is meant to find.
        assert_eq!(baseline.get(model.as_str()), Some(&target));
        assert_eq!(table.by_model(&model).unwrap().name.as_ref(), model);
        let name = |path: &str| table.by_path(path).map(|r| r.name.to_string());
        assert_eq!(name(&prefix_hit), Some(format!("prefix-{target:03}")));
        assert_eq!(name(prefix_miss), None);

        let mut group = c.benchmark_group(format!("route/{n}-routes"));
        group.bench_function("baseline-HashMap<String,usize>::get", |b| {
            b.iter(|| baseline.get(black_box(model.as_str())).copied())
        });
        group.bench_function("by_model", |b| {
            b.iter(|| table.by_model(black_box(model.as_str())).is_some())
        });
        group.bench_function("oip-rest:path::parse+by_model", |b| {
            b.iter(|| {
                let path = cascadia_oip::path::parse(black_box(oip_path.as_str())).unwrap();
                table.by_model(path.model.unwrap()).is_some()
            })
        });
        group.bench_function("oip-rest:proxy::match_request", |b| {
            b.iter(|| {
                matches!(
                    cascadia::proxy::match_request(&table, black_box(oip_path.as_str())),
                    Ok(cascadia::proxy::Matched::Route { .. })
                )
            })
        });
        group.bench_function("grpc:decode_frame+peek_model+by_model", |b| {
            b.iter(|| {
                let (_, message) = decode_frame(black_box(&body)).unwrap();
                let (model, _) = peek_model(message).unwrap();
                table.by_model(&model.unwrap()).is_some()
            })
        });
        group.bench_function("by_path-hit-middle", |b| {
            b.iter(|| table.by_path(black_box(prefix_hit.as_str())).is_some())
        });
        group.bench_function("by_path-miss", |b| {
            b.iter(|| table.by_path(black_box(prefix_miss)).is_some())
        });
        group.finish();
    }
}

criterion_group!(benches, matching);
criterion_main!(benches);
