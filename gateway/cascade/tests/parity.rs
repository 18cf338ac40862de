//! Parity with scikit-learn: the gateway's stage-1 probabilities equal
//! `predict_proba` within 1e-9 on the breast-cancer dataset shipped with
//! scikit-learn, through the export tool.
//!
//! The fixture in `tests/fixtures/` is written by
//! `tools/export_logistic.py --breast-cancer DIR`. CI regenerates it in a
//! Python venv and points `CASCADIA_PARITY_DIR` at the fresh copy, so the
//! test checks the tool and scikit-learn as they are today.

use std::path::PathBuf;

use cascadia_cascade::LogisticModel;

#[derive(serde::Deserialize)]
struct Expected {
    inputs: Vec<Vec<f64>>,
    probabilities: Vec<f64>,
}

#[test]
fn stage1_matches_scikit_learn_predict_proba() {
    let dir = std::env::var_os("CASCADIA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    let model_text =
        std::fs::read_to_string(dir.join("breast_cancer_model.json")).expect("model fixture");
    let expected: Expected = serde_json::from_str(
        &std::fs::read_to_string(dir.join("breast_cancer_expected.json"))
            .expect("expected fixture"),
    )
    .expect("expected JSON");
    let model = LogisticModel::from_json(&model_text).expect("valid model");
    assert_eq!(model.width(), 30);
    assert_eq!(expected.inputs.len(), 569);

    let worst = expected
        .inputs
        .iter()
        .zip(&expected.probabilities)
        .map(|(row, p)| (model.score(row) - p).abs())
        .fold(0.0f64, f64::max);
    assert!(
        worst <= 1e-9,
        "largest difference from scikit-learn: {worst:e}"
    );
}
