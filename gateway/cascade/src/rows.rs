//! OIP V2 requests as rows of features, the sub-request that carries only
//! the escalated rows to stage 2, and the merge of both stages' answers back
//! into one response in the original row order.

use cascadia_oip::json::{InferInputTensor, InferOutputTensor, InferRequest, InferResponse};
use serde_json::Value;

use crate::model::LogisticModel;

/// A request's features, row-major, in the model's feature order.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub rows: usize,
    /// `rows × model.width()` values.
    pub data: Vec<f64>,
    /// Some feature was absent from the request and took its default.
    pub defaulted: bool,
}

impl Features {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        let width = self.data.len() / self.rows.max(1);
        &self.data[i * width..(i + 1) * width]
    }
}

/// The string values of a BYTES (or any) input, one per row: the entity
/// keys of a batch.
pub fn string_column(request: &InferRequest, name: &str) -> Option<Vec<String>> {
    let input = request.inputs.iter().find(|i| i.name == name)?;
    let mut leaves = Vec::new();
    leaves_of(&input.data, &mut leaves);
    leaves
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .collect()
}

/// What is wrong with a request body. The message is shown to the client:
/// it describes their payload, never the gateway.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PayloadError {
    #[error("request has no inputs")]
    NoInputs,
    #[error("input {input:?}: shape {shape:?} holds {expected} values but data has {got}")]
    ShapeMismatch {
        input: String,
        shape: Vec<i64>,
        expected: usize,
        got: usize,
    },
    #[error("input {input:?}: invalid shape {shape:?}")]
    BadShape { input: String, shape: Vec<i64> },
    #[error("input {input:?}: unsupported datatype {datatype:?} (expected a numeric type)")]
    Datatype { input: String, datatype: String },
    #[error("input {input:?}: data must be numbers")]
    NotNumeric { input: String },
    #[error("input {input:?}: value {index} is NaN or infinite")]
    NotFinite { input: String, index: usize },
    #[error("input {input:?}: rows have {got} features, the model takes {expected}")]
    Width {
        input: String,
        expected: usize,
        got: usize,
    },
    #[error("batch of {rows} rows is over the limit of {max}")]
    BatchTooLarge { rows: usize, max: usize },
    #[error("inputs disagree on the batch size ({0} vs {1} rows)")]
    RowMismatch(usize, usize),
    #[error("missing feature {0:?}")]
    MissingFeature(String),
}

const NUMERIC: [&str; 12] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64",
];

/// How features are laid out in the request.
#[derive(Debug, Clone, Copy)]
pub struct Layout<'a> {
    /// A matrix input `[N, width]` (or `[width]` for one row) holding every
    /// feature in model order. `None`: one input per feature, named after it.
    pub matrix_input: Option<&'a str>,
    /// Most rows per request.
    pub max_batch: usize,
    /// Value for a feature column the request does not carry; `None` makes
    /// a missing feature an error.
    pub default: Option<f64>,
}

/// Reads the features of every row.
pub fn features(
    request: &InferRequest,
    model: &LogisticModel,
    layout: Layout<'_>,
) -> Result<Features, PayloadError> {
    features_named(request, &model.features, layout)
}

/// Reads the features called `names`, in that order, from every row (the
/// request's part of the model's features when others come from a store).
pub fn features_named(
    request: &InferRequest,
    names: &[String],
    layout: Layout<'_>,
) -> Result<Features, PayloadError> {
    if request.inputs.is_empty() {
        return Err(PayloadError::NoInputs);
    }
    let width = names.len();
    let features = match layout.matrix_input {
        Some(name) => {
            let input = request
                .inputs
                .iter()
                .find(|i| i.name == name)
                .ok_or_else(|| PayloadError::MissingFeature(name.to_owned()))?;
            let (rows, cols, data) = numeric(input)?;
            // A 1-D input is a single row.
            let (rows, cols) = if input.shape.len() == 1 {
                (1, data.len())
            } else {
                (rows, cols)
            };
            if cols != width {
                return Err(PayloadError::Width {
                    input: input.name.clone(),
                    expected: width,
                    got: cols,
                });
            }
            Features {
                rows,
                data,
                defaulted: false,
            }
        }
        None => {
            let mut rows = None;
            let mut columns = Vec::with_capacity(width);
            let mut defaulted = false;
            for name in names {
                match request.inputs.iter().find(|i| &i.name == name) {
                    Some(input) => {
                        let (n, _, data) = numeric(input)?;
                        let n = if input.shape.len() == 1 {
                            data.len()
                        } else {
                            n
                        };
                        if data.len() != n {
                            return Err(PayloadError::Width {
                                input: input.name.clone(),
                                expected: 1,
                                got: data.len() / n.max(1),
                            });
                        }
                        match rows {
                            Some(r) if r != n => return Err(PayloadError::RowMismatch(r, n)),
                            _ => rows = Some(n),
                        }
                        columns.push(Some(data));
                    }
                    None if layout.default.is_some() => {
                        defaulted = true;
                        columns.push(None);
                    }
                    None => return Err(PayloadError::MissingFeature(name.clone())),
                }
            }
            let rows = match (rows, names.first()) {
                (Some(rows), _) => rows,
                (None, Some(first)) => return Err(PayloadError::MissingFeature(first.clone())),
                // Every feature comes from the store: the batch size is the
                // first input's.
                (None, None) => request.inputs[0]
                    .shape
                    .first()
                    .map_or(1, |d| (*d).max(0) as usize),
            };
            let default = layout.default.unwrap_or(0.0);
            let mut data = Vec::with_capacity(rows * width);
            for r in 0..rows {
                for column in &columns {
                    data.push(column.as_ref().map_or(default, |c| c[r]));
                }
            }
            Features {
                rows,
                data,
                defaulted,
            }
        }
    };
    if features.rows > layout.max_batch {
        return Err(PayloadError::BatchTooLarge {
            rows: features.rows,
            max: layout.max_batch,
        });
    }
    Ok(features)
}

/// A numeric tensor as (rows, columns, row-major values).
fn numeric(input: &InferInputTensor) -> Result<(usize, usize, Vec<f64>), PayloadError> {
    if !NUMERIC.contains(&input.datatype.as_str()) {
        return Err(PayloadError::Datatype {
            input: input.name.clone(),
            datatype: input.datatype.clone(),
        });
    }
    if input.shape.is_empty() || input.shape.iter().any(|d| *d < 0) {
        return Err(PayloadError::BadShape {
            input: input.name.clone(),
            shape: input.shape.clone(),
        });
    }
    let mut data = Vec::new();
    if !flatten(&input.data, &mut data) {
        return Err(PayloadError::NotNumeric {
            input: input.name.clone(),
        });
    }
    // Checked: a client's shape can multiply past usize (found by the
    // oip_json and oip_grpc fuzz targets), which panicked in debug builds
    // and wrapped around to a wrong count in release builds.
    let expected = input.shape.iter().try_fold(1usize, |product, dim| {
        usize::try_from(*dim)
            .ok()
            .and_then(|dim| product.checked_mul(dim))
    });
    let Some(expected) = expected else {
        return Err(PayloadError::BadShape {
            input: input.name.clone(),
            shape: input.shape.clone(),
        });
    };
    if expected != data.len() {
        return Err(PayloadError::ShapeMismatch {
            input: input.name.clone(),
            shape: input.shape.clone(),
            expected,
            got: data.len(),
        });
    }
    if let Some(index) = data.iter().position(|v| !v.is_finite()) {
        return Err(PayloadError::NotFinite {
            input: input.name.clone(),
            index,
        });
    }
    let rows = input.shape[0] as usize;
    let cols = data.len().checked_div(rows).unwrap_or(0);
    Ok((rows, cols, data))
}

fn flatten(value: &Value, out: &mut Vec<f64>) -> bool {
    match value {
        Value::Number(n) => n.as_f64().map(|x| out.push(x)).is_some(),
        Value::Bool(b) => {
            out.push(if *b { 1.0 } else { 0.0 });
            true
        }
        Value::Array(items) => items.iter().all(|item| flatten(item, out)),
        _ => false,
    }
}

/// The request with only `rows` (indexes, ascending) of every batched
/// input, for stage 2. Inputs whose first dimension is not the batch are
/// passed unchanged.
pub fn select_rows(request: &InferRequest, batch: usize, rows: &[usize]) -> InferRequest {
    let mut sub = request.clone();
    for input in &mut sub.inputs {
        if input.shape.first().map(|d| *d as usize) != Some(batch) || batch == 0 {
            continue;
        }
        let mut leaves = Vec::new();
        leaves_of(&input.data, &mut leaves);
        let stride = leaves.len() / batch;
        let picked: Vec<Value> = rows
            .iter()
            .flat_map(|r| leaves[r * stride..(r + 1) * stride].iter().cloned())
            .collect();
        input.shape[0] = rows.len() as i64;
        input.data = Value::Array(picked);
    }
    sub
}

fn leaves_of(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| leaves_of(item, out)),
        other => out.push(other.clone()),
    }
}

/// The positive-class probability per row from a stage-2 response: the
/// output named `output`, one value per row (the last column when there
/// are several, i.e. the positive class of a `[rows, 2]` probability).
pub fn stage2_scores(
    response: &InferResponse,
    output: &str,
    rows: usize,
) -> Option<(Vec<f64>, String)> {
    let tensor = response.outputs.iter().find(|o| o.name == output)?;
    let mut values = Vec::new();
    if !flatten(&tensor.data, &mut values)
        || rows == 0
        || values.is_empty()
        || values.len() % rows != 0
    {
        return None;
    }
    let stride = values.len() / rows;
    Some((
        (0..rows).map(|r| values[r * stride + stride - 1]).collect(),
        tensor.datatype.clone(),
    ))
}

/// The client's response: one probability per row, in request order, as a
/// `[rows, 1]` tensor (or `[rows, 2]` of `[1 − p, p]` with `columns == 2`)
/// named like stage 2's output.
pub fn response(
    model_name: &str,
    model_version: Option<String>,
    id: Option<String>,
    output: &str,
    datatype: &str,
    scores: &[f64],
    columns: usize,
) -> InferResponse {
    let data: Vec<Value> = if columns == 2 {
        scores
            .iter()
            .flat_map(|p| [Value::from(1.0 - p), Value::from(*p)])
            .collect()
    } else {
        scores.iter().map(|s| Value::from(*s)).collect()
    };
    InferResponse {
        model_name: model_name.to_owned(),
        model_version,
        id,
        parameters: None,
        outputs: vec![InferOutputTensor {
            name: output.to_owned(),
            shape: vec![scores.len() as i64, columns as i64],
            datatype: datatype.to_owned(),
            parameters: None,
            data: Value::Array(data),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn model() -> LogisticModel {
        LogisticModel::from_json(
            r#"{"name":"m","features":["a","b"],"coefficients":[1.0,1.0],"intercept":0.0}"#,
        )
        .unwrap()
    }

    fn request(value: Value) -> InferRequest {
        serde_json::from_value(value).unwrap()
    }

    const MATRIX: Layout<'static> = Layout {
        matrix_input: Some("x"),
        max_batch: 8,
        default: None,
    };

    #[test]
    fn a_shape_whose_size_overflows_is_a_bad_shape_not_a_panic() {
        // From the fuzz targets' reproducers: 2^32 × 2^32 overflows a
        // 64-bit count; 2 × (2^63 + 1) would wrap to 2 in a release build.
        for shape in [
            json!([4294967296u64, 4294967296u64]),
            json!([2, 9223372036854775807i64]),
        ] {
            let request = request(
                json!({"inputs":[{"name":"x","shape":shape,"datatype":"FP32","data":[1.0,2.0]}]}),
            );
            let layout = Layout {
                matrix_input: Some("x"),
                max_batch: 64,
                default: None,
            };
            let error = features_named(&request, &["a".to_owned(), "b".to_owned()], layout)
                .expect_err("rejected");
            assert!(
                matches!(
                    error,
                    PayloadError::BadShape { .. } | PayloadError::ShapeMismatch { .. }
                ),
                "{error}"
            );
        }
    }
    #[test]
    fn reads_a_matrix_input_row_major() {
        let req = request(
            json!({"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}]}),
        );
        let f = features(&req, &model(), MATRIX).unwrap();
        assert_eq!(f.rows, 2);
        assert_eq!(f.row(1), &[3.0, 4.0]);
        let one =
            request(json!({"inputs":[{"name":"x","shape":[2],"datatype":"INT64","data":[5,6]}]}));
        assert_eq!(
            features(&one, &model(), MATRIX).unwrap().row(0),
            &[5.0, 6.0]
        );
    }

    #[test]
    fn reads_named_columns_with_defaults() {
        let layout = Layout {
            matrix_input: None,
            max_batch: 8,
            default: Some(0.5),
        };
        let req =
            request(json!({"inputs":[{"name":"b","shape":[3],"datatype":"FP64","data":[1,2,3]}]}));
        let f = features(&req, &model(), layout).unwrap();
        assert_eq!(f.rows, 3);
        assert_eq!(f.row(2), &[0.5, 3.0]);
        assert!(f.defaulted);
        let strict = Layout {
            default: None,
            ..layout
        };
        assert_eq!(
            features(&req, &model(), strict).unwrap_err(),
            PayloadError::MissingFeature("a".into())
        );
    }

    #[test]
    fn malformed_payloads_say_what_is_wrong() {
        let cases = [
            (
                json!({"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3]}]}),
                "holds 4 values but data has 3",
            ),
            (
                json!({"inputs":[{"name":"x","shape":[1,2],"datatype":"STRING","data":[1,2]}]}),
                "unsupported datatype",
            ),
            (
                json!({"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}),
                "rows have 3 features, the model takes 2",
            ),
            (
                json!({"inputs":[{"name":"x","shape":[9,2],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}]}),
                "over the limit of 8",
            ),
            (
                json!({"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":["a","b"]}]}),
                "must be numbers",
            ),
            (json!({"inputs":[]}), "no inputs"),
        ];
        for (body, message) in cases {
            let error = features(&request(body), &model(), MATRIX)
                .unwrap_err()
                .to_string();
            assert!(error.contains(message), "{error:?} lacks {message:?}");
        }
    }

    #[test]
    fn selects_rows_and_merges_back_in_order() {
        let req = request(json!({"id":"r","inputs":[
            {"name":"x","shape":[3,2],"datatype":"FP32","data":[[1,2],[3,4],[5,6]]},
            {"name":"tag","shape":[3],"datatype":"BYTES","data":["p","q","r"]}
        ]}));
        let sub = select_rows(&req, 3, &[0, 2]);
        assert_eq!(sub.inputs[0].shape, vec![2, 2]);
        assert_eq!(sub.inputs[0].data, json!([1, 2, 5, 6]));
        assert_eq!(sub.inputs[1].data, json!(["p", "r"]));
        assert_eq!(sub.id.as_deref(), Some("r"));

        let stage2: InferResponse = serde_json::from_value(json!({"model_name":"m","outputs":[
            {"name":"probability","shape":[2,2],"datatype":"FP32","data":[0.8,0.2,0.3,0.7]}
        ]}))
        .unwrap();
        let (scores, datatype) = stage2_scores(&stage2, "probability", 2).unwrap();
        assert_eq!(scores, vec![0.2, 0.7]);
        assert_eq!(datatype, "FP32");
        assert!(stage2_scores(&stage2, "other", 2).is_none());
        let empty: InferResponse = serde_json::from_value(json!({"model_name":"m","outputs":[
            {"name":"probability","shape":[0],"datatype":"FP32","data":[]}
        ]}))
        .unwrap();
        assert!(
            stage2_scores(&empty, "probability", 2).is_none(),
            "an empty output is no answer, not a panic"
        );
    }
}
