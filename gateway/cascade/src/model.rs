//! The stage-1 model: a logistic regression with optional standardization,
//! loaded from the JSON artifact `tools/export_logistic.py` writes.
//!
//! Scoring is `sigmoid(intercept + Σ coef_i × (x_i − mean_i) / scale_i)` in
//! f64, which matches scikit-learn's `predict_proba` to about 1e-15.
//!
//! The model is identified by the SHA-256 of its artifact's bytes, so a
//! calibration made for one model can be refused for another.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::drift::{RawReference, Reference};

/// A validated logistic-regression model.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticModel {
    /// Model name, reported in `x-cascadia-stage1-model`.
    pub name: String,
    /// Model version, reported with the name.
    pub version: String,
    /// Feature names, in coefficient order.
    pub features: Vec<String>,
    /// Class labels `[negative, positive]`, as exported.
    pub classes: Vec<serde_json::Value>,
    /// Coefficients with the standardization folded in: scoring is one
    /// multiply-add per feature.
    weights: Vec<f64>,
    bias: f64,
    /// Lowercase hex SHA-256 of the artifact text this model was parsed
    /// from.
    pub sha256: String,
    /// Each feature's distribution in the training data, for drift
    /// (PSI); `None` when the export had no training data.
    pub reference: Option<Reference>,
}

/// The artifact as written by the export tool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Artifact {
    name: String,
    #[serde(default = "default_version")]
    version: String,
    features: Vec<String>,
    coefficients: Vec<f64>,
    intercept: f64,
    #[serde(default)]
    mean: Option<Vec<f64>>,
    #[serde(default)]
    scale: Option<Vec<f64>>,
    #[serde(default)]
    classes: Vec<serde_json::Value>,
    #[serde(default)]
    reference: Option<RawReference>,
}

fn default_version() -> String {
    "1".to_owned()
}

/// Why an artifact was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("invalid model JSON: {0}")]
    Json(String),
    #[error("the model has no features")]
    NoFeatures,
    #[error("{field} has {got} entries, features has {expected}")]
    Length {
        field: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("{field}[{index}] is not a finite number")]
    NotFinite { field: &'static str, index: usize },
    #[error("scale[{0}] is zero")]
    ZeroScale(usize),
    #[error("duplicate feature name {0:?}")]
    DuplicateFeature(String),
    #[error("reference: {0}")]
    Reference(String),
}

impl LogisticModel {
    /// Parses and validates an artifact.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let artifact: Artifact =
            serde_json::from_str(text).map_err(|e| ModelError::Json(e.to_string()))?;
        let n = artifact.features.len();
        if n == 0 {
            return Err(ModelError::NoFeatures);
        }
        let mut seen = std::collections::HashSet::new();
        for name in &artifact.features {
            if !seen.insert(name) {
                return Err(ModelError::DuplicateFeature(name.clone()));
            }
        }
        let check = |field: &'static str, values: &[f64]| {
            if values.len() != n {
                return Err(ModelError::Length {
                    field,
                    got: values.len(),
                    expected: n,
                });
            }
            match values.iter().position(|v| !v.is_finite()) {
                Some(index) => Err(ModelError::NotFinite { field, index }),
                None => Ok(()),
            }
        };
        check("coefficients", &artifact.coefficients)?;
        if !artifact.intercept.is_finite() {
            return Err(ModelError::NotFinite {
                field: "intercept",
                index: 0,
            });
        }
        let mean = artifact.mean.unwrap_or_else(|| vec![0.0; n]);
        let scale = artifact.scale.unwrap_or_else(|| vec![1.0; n]);
        check("mean", &mean)?;
        check("scale", &scale)?;
        if let Some(i) = scale.iter().position(|s| *s == 0.0) {
            return Err(ModelError::ZeroScale(i));
        }
        // w_i (x_i − m_i) / s_i = (w_i / s_i) x_i − w_i m_i / s_i
        let weights: Vec<f64> = artifact
            .coefficients
            .iter()
            .zip(&scale)
            .map(|(w, s)| w / s)
            .collect();
        let bias = artifact.intercept - weights.iter().zip(&mean).map(|(w, m)| w * m).sum::<f64>();
        // Finite inputs can still fold to infinities (a tiny scale, a huge
        // mean), which would score every row NaN.
        if let Some(index) = weights.iter().position(|w| !w.is_finite()) {
            return Err(ModelError::NotFinite {
                field: "coefficients / scale",
                index,
            });
        }
        if !bias.is_finite() {
            return Err(ModelError::NotFinite {
                field: "intercept − Σ coefficient × mean / scale",
                index: 0,
            });
        }
        let reference = artifact
            .reference
            .map(|raw| Reference::new(raw, n))
            .transpose()
            .map_err(ModelError::Reference)?;
        Ok(Self {
            sha256: sha256_hex(text.as_bytes()),
            reference,
            name: artifact.name,
            version: artifact.version,
            features: artifact.features,
            classes: artifact.classes,
            weights,
            bias,
        })
    }

    /// Number of features per row.
    pub fn width(&self) -> usize {
        self.features.len()
    }

    /// The positive-class probability of one row (`row.len() == width()`).
    /// NaN when the sum overflows (finite features can still reach
    /// `inf − inf`): never an answer, such a row escalates.
    pub fn score(&self, row: &[f64]) -> f64 {
        debug_assert_eq!(row.len(), self.weights.len());
        let z = self.bias
            + self
                .weights
                .iter()
                .zip(row)
                .map(|(w, x)| w * x)
                .sum::<f64>();
        sigmoid(z)
    }
}

/// Lowercase hex SHA-256 of `bytes`: how artifacts and calibration data
/// are named in a calibration.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The logistic function, stable for large |z|.
fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = r#"{
        "name": "phish", "version": "3",
        "features": ["a", "b"],
        "coefficients": [2.0, -1.0], "intercept": 0.5,
        "mean": [1.0, 0.0], "scale": [2.0, 1.0],
        "classes": [0, 1]
    }"#;

    #[test]
    fn scores_with_standardization() {
        let model = LogisticModel::from_json(MODEL).unwrap();
        // z = 0.5 + 2 (3 - 1)/2 - 1 (1 - 0)/1 = 1.5
        let expected = 1.0 / (1.0 + (-1.5f64).exp());
        assert!((model.score(&[3.0, 1.0]) - expected).abs() < 1e-15);
        assert_eq!(model.version, "3");
        assert_eq!(model.sha256, sha256_hex(MODEL.as_bytes()));
        assert_eq!(model.sha256.len(), 64);
        assert!(model.reference.is_none());
    }

    #[test]
    fn sigmoid_is_stable_at_the_extremes() {
        assert_eq!(sigmoid(1000.0), 1.0);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(0.0), 0.5);
    }

    #[test]
    fn bad_artifacts_are_rejected_with_the_reason() {
        let short = MODEL.replace("[2.0, -1.0]", "[2.0]");
        assert_eq!(
            LogisticModel::from_json(&short).unwrap_err(),
            ModelError::Length {
                field: "coefficients",
                got: 1,
                expected: 2
            }
        );
        let zero = MODEL.replace("[2.0, 1.0]", "[0.0, 1.0]");
        assert_eq!(
            LogisticModel::from_json(&zero).unwrap_err(),
            ModelError::ZeroScale(0)
        );
        // Finite fields whose folded weights are not: 1e300 / 1e-300.
        let overflow = MODEL
            .replace("[2.0, 1.0]", "[1e-300, 1.0]")
            .replace("[2.0, -1.0]", "[1e300, -1.0]");
        assert!(matches!(
            LogisticModel::from_json(&overflow).unwrap_err(),
            ModelError::NotFinite { index: 0, .. }
        ));
        let bias = MODEL
            .replace("[1.0, 0.0]", "[1e308, -1e308]")
            .replace("[2.0, 1.0]", "[0.5, 0.5]");
        assert!(matches!(
            LogisticModel::from_json(&bias).unwrap_err(),
            ModelError::NotFinite { .. }
        ));
        let dup = MODEL.replace(r#"["a", "b"]"#, r#"["a", "a"]"#);
        assert!(matches!(
            LogisticModel::from_json(&dup).unwrap_err(),
            ModelError::DuplicateFeature(_)
        ));
        assert!(matches!(
            LogisticModel::from_json("{").unwrap_err(),
            ModelError::Json(_)
        ));
    }
}
