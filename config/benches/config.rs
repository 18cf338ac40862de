//! Config parse and validate: `cascadia_config::parse_with_models` (TOML → raw serde structs →
//! validated `Config`) over the text of `config/examples/demo.toml` and `multi-region.toml`,
//! against a baseline of `toml::from_str::<toml::Value>` of the same text (syntax only, no
//! types, no checks).
//!
//! The text is embedded, so no file I/O is measured. demo.toml has a cascade route: its model
//! loader parses `phishing-lr.json` from memory, as `load_file` does after reading it, so the
//! model's validation is part of the measured work; hashing the file is not.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const DEMO: &str = include_str!("../examples/demo.toml");
const MULTI_REGION: &str = include_str!("../examples/multi-region.toml");
const PHISHING_MODEL: &str = include_str!("../examples/phishing-lr.json");

fn load_model(path: &str) -> Result<String, String> {
    match path {
        "phishing-lr.json" => Ok(PHISHING_MODEL.to_owned()),
        other => Err(format!("no model {other:?} in this bench")),
    }
}

fn parse_and_validate(c: &mut Criterion) {
    for (name, text) in [("demo.toml", DEMO), ("multi-region.toml", MULTI_REGION)] {
        let config = cascadia_config::parse_with_models(text, &mut load_model)
            .unwrap_or_else(|e| panic!("{name} must be valid: {e}"));
        assert!(!config.routes.is_empty());

        let mut group = c.benchmark_group(format!("config/{name}"));
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function("baseline-toml::from_str::<Value>", |b| {
            b.iter(|| toml::from_str::<toml::Value>(black_box(text)).unwrap())
        });
        group.bench_function("parse_with_models", |b| {
            b.iter(|| cascadia_config::parse_with_models(black_box(text), &mut load_model).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, parse_and_validate);
criterion_main!(benches);
