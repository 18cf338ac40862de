//! What each request carries: a body, built once (one for all requests, or one per batch of
//! `--rows`), and an optional Zipf-distributed user id.

use bytes::Bytes;
use serde::Serialize;

use crate::rows::{Data, Rows};

/// Feature columns in the `--oip-rows` body; the `fraud` model in `cascadia-sim` takes 32.
pub const OIP_FEATURES: usize = 32;

/// An OIP V2 REST infer body: one FP32 input `features` of shape `[rows, 32]`, filled with
/// pseudo-random values in [-1, 1) from `seed` (the same seed gives the same bytes).
pub fn oip_infer_body(rows: usize, seed: u64) -> Bytes {
    #[derive(Serialize)]
    struct Body {
        inputs: [Input; 1],
    }
    #[derive(Serialize)]
    struct Input {
        name: &'static str,
        shape: [usize; 2],
        datatype: &'static str,
        data: Vec<f32>,
    }
    let data = oip_features(rows, seed);
    let body = Body {
        inputs: [Input {
            name: "features",
            shape: [rows, OIP_FEATURES],
            datatype: "FP32",
            data,
        }],
    };
    serde_json::to_vec(&body)
        .expect("serializing plain structs cannot fail")
        .into()
}

/// An OIP V2 REST infer body carrying `rows` (a `--batch` of `--rows`): one input `input` of
/// shape `[rows, width]` and the rows' datatype. `outputs`, when not empty, asks for those
/// outputs by name; when empty the field is left out, so the server returns all of them.
pub fn rows_infer_body(input: &str, rows: &Rows, outputs: &[String]) -> Bytes {
    #[derive(Serialize)]
    struct Body<'a> {
        inputs: [Input<'a>; 1],
        #[serde(skip_serializing_if = "Vec::is_empty")]
        outputs: Vec<Output<'a>>,
    }
    #[derive(Serialize)]
    struct Input<'a> {
        name: &'a str,
        shape: [usize; 2],
        datatype: &'static str,
        data: &'a Data,
    }
    #[derive(Serialize)]
    struct Output<'a> {
        name: &'a str,
    }
    let body = Body {
        inputs: [Input {
            name: input,
            shape: [rows.len(), rows.width()],
            datatype: rows.datatype().as_str(),
            data: rows.data(),
        }],
        outputs: outputs.iter().map(|name| Output { name }).collect(),
    };
    serde_json::to_vec(&body)
        .expect("serializing plain structs of finite numbers cannot fail")
        .into()
}

/// The `rows × 32` feature values of the OIP bodies (REST and gRPC): pseudo-random in
/// [-1, 1), the same for the same `seed`.
pub fn oip_features(rows: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..rows * OIP_FEATURES)
        .map(|_| rng.f32() * 2.0 - 1.0)
        .collect()
}

/// A raw body of `len` bytes (`x` repeated).
pub fn raw_body(len: usize) -> Bytes {
    Bytes::from(vec![b'x'; len])
}

/// Zipf(s = 1) over ids `1..=n`: id `k` has probability proportional to `1 / k`.
///
/// Sampling is a binary search in a precomputed CDF (8 bytes per id).
#[derive(Clone, Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

/// A Zipf distribution over no ids.
#[derive(Debug, thiserror::Error)]
#[error("the number of user ids must be at least 1")]
pub struct EmptyZipf;

impl Zipf {
    pub fn new(n: u32) -> Result<Self, EmptyZipf> {
        if n == 0 {
            return Err(EmptyZipf);
        }
        let mut sum = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                sum += 1.0 / f64::from(k);
                sum
            })
            .collect();
        for c in &mut cdf {
            *c /= sum;
        }
        Ok(Zipf { cdf })
    }

    /// Maps a uniform `u` in [0, 1) to an id in `1..=n`.
    pub fn id_for(&self, u: f64) -> u32 {
        let index = self.cdf.partition_point(|&c| c <= u);
        // Rounding can leave the last entry a hair below 1.0.
        index.min(self.cdf.len() - 1) as u32 + 1
    }

    pub fn sample(&self, rng: &mut fastrand::Rng) -> u32 {
        self.id_for(rng.f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oip_body_has_the_right_shape() {
        let body = oip_infer_body(3, 7);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let input = &v["inputs"][0];
        assert_eq!(input["name"], "features");
        assert_eq!(input["datatype"], "FP32");
        assert_eq!(input["shape"], serde_json::json!([3, 32]));
        assert_eq!(input["data"].as_array().unwrap().len(), 96);
        assert_eq!(body, oip_infer_body(3, 7), "same seed, same bytes");
    }

    #[test]
    fn rows_body_has_the_input_and_outputs() {
        use crate::rows::Datatype;
        let rows = Rows::parse_csv("1,2,3\n4,5,6\n", Datatype::Fp32).unwrap();
        let body = rows_infer_body("x", &rows, &[]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"inputs": [{
                "name": "x",
                "shape": [2, 3],
                "datatype": "FP32",
                "data": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            }]}),
            "no outputs field unless asked"
        );
        let rows = Rows::parse_csv("7,-8\n", Datatype::Int64).unwrap();
        let outputs = ["proba".to_owned(), "label".to_owned()];
        let body = rows_infer_body("features", &rows, &outputs);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["inputs"][0]["datatype"], "INT64");
        assert_eq!(v["inputs"][0]["shape"], serde_json::json!([1, 2]));
        assert_eq!(v["inputs"][0]["data"], serde_json::json!([7, -8]));
        assert_eq!(
            v["outputs"],
            serde_json::json!([{"name": "proba"}, {"name": "label"}])
        );
        // FP64 values keep their precision; the gateway's OIP types read the body back.
        let rows = Rows::parse_csv("0.1,1e-7\n", Datatype::Fp64).unwrap();
        let body = rows_infer_body("x", &rows, &[]);
        let req: cascadia_oip::json::InferRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(req.inputs[0].data, serde_json::json!([0.1, 1e-7]));
        assert_eq!(req.inputs[0].shape, [1, 2]);
        assert!(req.outputs.is_none());
    }

    #[test]
    fn zipf_bounds_and_skew() {
        let z = Zipf::new(100).unwrap();
        assert_eq!(z.id_for(0.0), 1);
        assert_eq!(z.id_for(0.999_999_999), 100);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut counts = vec![0u32; 101];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        // P(1) = 1 / H(100) ≈ 0.193; P(1) / P(2) = 2.
        let p1 = f64::from(counts[1]) / 100_000.0;
        assert!((p1 - 0.193).abs() < 0.01, "p1 = {p1}");
        let ratio = f64::from(counts[1]) / f64::from(counts[2]);
        assert!((ratio - 2.0).abs() < 0.15, "ratio = {ratio}");
        assert!(Zipf::new(0).is_err());
        assert_eq!(Zipf::new(1).unwrap().id_for(0.5), 1);
    }
}
