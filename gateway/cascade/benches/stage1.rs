//! Stage-1 scoring: `LogisticModel::score` over 32 and 100 features, one row and a batch of 64
//! rows, against a baseline of a plain dot product + sigmoid written inline here (and against
//! BENCHMARKING.md's 14–27 ns for a 32–100 feature logistic regression on this machine).
//!
//! The baseline does the same f64 arithmetic as the model (weights with the standardization
//! folded in, one multiply-add per feature), so the ratio is the cost of the model's own code
//! path. An f32 variant of the baseline is there for comparison with the documented figure.

use std::hint::black_box;

use cascadia_cascade::LogisticModel;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Rows in the batch case: the gateway scores a whole OIP batch in one go.
const BATCH: usize = 64;

/// A deterministic pseudo-random stream in [-1, 1), so every run scores the same numbers.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

/// The parameters of a `width`-feature model, standardization included.
struct Params {
    coefficients: Vec<f64>,
    intercept: f64,
    mean: Vec<f64>,
    scale: Vec<f64>,
}

impl Params {
    fn random(width: usize, rng: &mut Lcg) -> Self {
        Self {
            coefficients: (0..width).map(|_| rng.next()).collect(),
            intercept: -0.25,
            mean: (0..width).map(|_| rng.next()).collect(),
            scale: (0..width).map(|_| 0.5 + rng.next().abs()).collect(),
        }
    }

    /// The artifact as `tools/export_logistic.py` writes it.
    fn artifact(&self) -> String {
        let list = |values: &[f64]| {
            values
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let names = (0..self.coefficients.len())
            .map(|i| format!("\"f{i}\""))
            .collect::<Vec<_>>()
            .join(",");
        format!(
            r#"{{"name":"bench","features":[{names}],"coefficients":[{}],"intercept":{},
                "mean":[{}],"scale":[{}],"classes":[0,1]}}"#,
            list(&self.coefficients),
            self.intercept,
            list(&self.mean),
            list(&self.scale),
        )
    }
}

/// The baseline: `sigmoid(bias + w · x)` inline, with the standardization folded into `w` and
/// `bias` once, as the model's documented formula allows.
struct Inline {
    weights: Vec<f64>,
    bias: f64,
}

impl Inline {
    fn of(p: &Params) -> Self {
        let weights: Vec<f64> = p
            .coefficients
            .iter()
            .zip(&p.scale)
            .map(|(w, s)| w / s)
            .collect();
        let bias = p.intercept - weights.iter().zip(&p.mean).map(|(w, m)| w * m).sum::<f64>();
        Self { weights, bias }
    }

    #[inline]
    fn score(&self, row: &[f64]) -> f64 {
        let mut z = self.bias;
        for (w, x) in self.weights.iter().zip(row) {
            z += w * x;
        }
        1.0 / (1.0 + (-z).exp())
    }
}

/// The baseline in f32, the precision BENCHMARKING.md's figure was taken at.
#[inline]
fn inline_f32(weights: &[f32], bias: f32, row: &[f32]) -> f32 {
    let mut z = bias;
    for (w, x) in weights.iter().zip(row) {
        z += w * x;
    }
    1.0 / (1.0 + (-z).exp())
}

fn scoring(c: &mut Criterion) {
    let mut rng = Lcg(0x5eed);
    for width in [32usize, 100] {
        let params = Params::random(width, &mut rng);
        let model = LogisticModel::from_json(&params.artifact()).expect("valid artifact");
        let inline = Inline::of(&params);
        let rows: Vec<f64> = (0..BATCH * width).map(|_| rng.next() * 3.0).collect();
        // The baseline must compute what the model computes, or the comparison is void.
        for row in rows.chunks_exact(width) {
            assert!((model.score(row) - inline.score(row)).abs() < 1e-9);
        }
        let weights32: Vec<f32> = inline.weights.iter().map(|w| *w as f32).collect();
        let bias32 = inline.bias as f32;
        let rows32: Vec<f32> = rows.iter().map(|x| *x as f32).collect();
        let row = &rows[..width];
        let row32 = &rows32[..width];

        let mut group = c.benchmark_group(format!("stage1/{width}-features/1-row"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("baseline-inline-f64", |b| {
            b.iter(|| inline.score(black_box(row)))
        });
        group.bench_function("LogisticModel::score", |b| {
            b.iter(|| model.score(black_box(row)))
        });
        group.bench_function("inline-f32", |b| {
            b.iter(|| inline_f32(&weights32, bias32, black_box(row32)))
        });
        group.finish();

        // The batch writes into a reused buffer, so both sides measure scoring, not allocation.
        let mut out = vec![0.0f64; BATCH];
        let mut group = c.benchmark_group(format!("stage1/{width}-features/{BATCH}-rows"));
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(BenchmarkId::new("baseline-inline-f64", BATCH), |b| {
            b.iter(|| {
                for (o, row) in out.iter_mut().zip(black_box(&rows).chunks_exact(width)) {
                    *o = inline.score(row);
                }
                black_box(&out);
            })
        });
        group.bench_function(BenchmarkId::new("LogisticModel::score", BATCH), |b| {
            b.iter(|| {
                for (o, row) in out.iter_mut().zip(black_box(&rows).chunks_exact(width)) {
                    *o = model.score(row);
                }
                black_box(&out);
            })
        });
        group.finish();
    }
}

criterion_group!(benches, scoring);
criterion_main!(benches);
