//! Helpers shared by the fuzz targets: the fixed stage-1 model and the
//! checks every decoded inference request goes through, as the cascade
//! (`cascadia::cascade`) runs them.

use cascadia_cascade::rows::{self, Layout};
use cascadia_cascade::LogisticModel;
use cascadia_oip::json::InferRequest;

/// A two-feature logistic model, as a cascade's model artifact. The
/// `config_parse` target's model loader returns it too.
pub const MODEL_JSON: &str = r#"{"name":"fuzz-lr","version":"v1","features":["a","b"],"coefficients":[0.5,-0.25],"intercept":0.1,"mean":[1.0,2.0],"scale":[2.0,4.0],"classes":[0,1]}"#;

/// [`MODEL_JSON`], parsed.
pub fn model() -> LogisticModel {
    LogisticModel::from_json(MODEL_JSON).expect("the fixed model artifact is valid")
}

/// The cascade's default batch limit (`cascade.max_batch`).
pub const MAX_BATCH: usize = 1024;

/// The bytes as text: all of them when they are UTF-8, else the longest
/// valid prefix, so no input is wasted.
pub fn utf8_prefix(data: &[u8]) -> &str {
    match std::str::from_utf8(data) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).expect("valid up to here"),
    }
}

/// Runs a decoded request through what stage 1 does with it: feature
/// extraction in each layout, scoring every row, selecting rows for
/// stage 2, reading an entity-key column and converting the escalation to
/// gRPC. Panics (the fuzzer's finding) if an invariant breaks:
/// - extracted features are exactly `rows × width` values, all finite,
///   with `rows <= max_batch`;
/// - every score is a probability in `[0, 1]`;
/// - the stage-2 sub-request of all rows keeps the request's inputs;
/// - the request serialises back to JSON.
pub fn check_request(request: &InferRequest, model: &LogisticModel) {
    let width = model.width();
    let layouts = [
        Layout {
            matrix_input: Some("x"),
            max_batch: MAX_BATCH,
            default: None,
        },
        Layout {
            matrix_input: None,
            max_batch: MAX_BATCH,
            default: None,
        },
        Layout {
            matrix_input: None,
            max_batch: MAX_BATCH,
            default: Some(0.0),
        },
    ];
    for layout in layouts {
        let Ok(features) = rows::features(request, model, layout) else {
            continue;
        };
        assert!(features.rows <= layout.max_batch, "batch limit not applied");
        assert_eq!(
            features.data.len(),
            features.rows * width,
            "features are not rows × width"
        );
        assert!(
            features.data.iter().all(|v| v.is_finite()),
            "a non-finite feature got through"
        );
        for i in 0..features.rows {
            let p = model.score(features.row(i));
            assert!((0.0..=1.0).contains(&p), "score {p} is not a probability");
        }
        // Escalate every row, then every other row, as a decision might.
        let all: Vec<usize> = (0..features.rows).collect();
        let sub = rows::select_rows(request, features.rows, &all);
        assert_eq!(sub.inputs.len(), request.inputs.len());
        let odd: Vec<usize> = (0..features.rows).filter(|r| r % 2 == 1).collect();
        let sub = rows::select_rows(request, features.rows, &odd);
        let grpc = cascadia_cascade::grpc::to_grpc_request(&sub, "stage2", "1");
        assert_eq!(grpc.inputs.len(), request.inputs.len());
    }
    // Every feature from the feature store: the request only sets the batch.
    let layout = Layout {
        matrix_input: None,
        max_batch: MAX_BATCH,
        default: None,
    };
    if let Ok(features) = rows::features_named(request, &[], layout) {
        assert!(features.rows <= MAX_BATCH);
        assert!(features.data.is_empty());
    }
    let _ = rows::string_column(request, "a");
    let _ = rows::string_column(request, "user");
    serde_json::to_vec(request).expect("a decoded request serialises");
}
