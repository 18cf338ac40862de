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

pub(crate) fn flatten(value: &Value, out: &mut Vec<f64>) -> bool {
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

/// Appends the scalars of a (possibly nested) tensor array to `out`, in
/// row-major order.
pub fn leaves_into(value: &Value, out: &mut Vec<Value>) {
    leaves_of(value, out);
}

fn leaves_of(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| leaves_of(item, out)),
        other => out.push(other.clone()),
    }
}

/// Which stage answered a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowStage {
    /// Stage 1 was confident.
    Local,
    /// Stage 2 answered the escalated row.
    Stage2,
    /// Stage 1 answered a row it would have escalated, because stage 2 was
    /// unavailable or out of time (`on_unavailable = "degrade"`).
    Degraded,
}

impl RowStage {
    /// The row's letter in the `cascadia_rows` parameter.
    pub fn code(self) -> char {
        match self {
            Self::Local => 'l',
            Self::Stage2 => 's',
            Self::Degraded => 'd',
        }
    }
}

/// How many rows each stage answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageCounts {
    pub local: usize,
    pub stage2: usize,
    pub degraded: usize,
}

impl StageCounts {
    pub fn of(stages: &[RowStage]) -> Self {
        let mut counts = Self::default();
        for stage in stages {
            match stage {
                RowStage::Local => counts.local += 1,
                RowStage::Stage2 => counts.stage2 += 1,
                RowStage::Degraded => counts.degraded += 1,
            }
        }
        counts
    }
}

/// The datatype of a cascade route's probability output: one per route,
/// whichever stage answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProbabilityType {
    /// What scikit-learn's `predict_proba` gives. The default.
    #[default]
    Fp64,
    /// Rounded to the nearest f32, for clients that want half the bytes.
    Fp32,
}

impl ProbabilityType {
    /// Parses an OIP datatype name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "FP64" => Some(Self::Fp64),
            "FP32" => Some(Self::Fp32),
            _ => None,
        }
    }

    /// The OIP datatype name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp64 => "FP64",
            Self::Fp32 => "FP32",
        }
    }

    /// `value` as this type holds it.
    pub fn round(self, value: f64) -> f64 {
        match self {
            Self::Fp64 => value,
            Self::Fp32 => f64::from(value as f32),
        }
    }
}

/// What goes into the client's answer.
#[derive(Debug, Clone)]
pub struct Answer<'a> {
    pub model_name: &'a str,
    pub model_version: Option<String>,
    pub id: Option<String>,
    /// The output's name, as stage 2 names it.
    pub output: &'a str,
    pub datatype: ProbabilityType,
    /// 1 (the positive class) or 2 (`[1 − p, p]`).
    pub columns: usize,
    /// One probability per row, in request order.
    pub scores: &'a [f64],
    /// Who answered each row, in request order.
    pub stages: &'a [RowStage],
}

/// Response parameter: one letter per row, in row order, saying who
/// answered it (`l` stage 1, `s` stage 2, `d` stage 1 standing in for
/// stage 2).
pub const ROWS_PARAMETER: &str = "cascadia_rows";

/// The client's response. The output's shape is always `[rows, columns]`,
/// whatever shape the input had (a `[F]` input is one row), and its
/// datatype is the route's. The response's `parameters` carry the
/// provenance: [`ROWS_PARAMETER`] and the counts `cascadia_rows_local`,
/// `cascadia_rows_stage2` and `cascadia_rows_degraded` (OIP parameters are
/// scalars, hence a string rather than a list).
pub fn response(answer: Answer<'_>) -> InferResponse {
    let round = |p: f64| Value::from(answer.datatype.round(p));
    let data: Vec<Value> = if answer.columns == 2 {
        answer
            .scores
            .iter()
            .flat_map(|p| [round(1.0 - p), round(*p)])
            .collect()
    } else {
        answer.scores.iter().map(|p| round(*p)).collect()
    };
    let counts = StageCounts::of(answer.stages);
    let mut parameters = serde_json::Map::new();
    parameters.insert(
        ROWS_PARAMETER.to_owned(),
        Value::from(answer.stages.iter().map(|s| s.code()).collect::<String>()),
    );
    for (name, count) in [
        ("cascadia_rows_local", counts.local),
        ("cascadia_rows_stage2", counts.stage2),
        ("cascadia_rows_degraded", counts.degraded),
    ] {
        parameters.insert(name.to_owned(), Value::from(count));
    }
    InferResponse {
        model_name: answer.model_name.to_owned(),
        model_version: answer.model_version,
        id: answer.id,
        parameters: Some(parameters),
        outputs: vec![InferOutputTensor {
            name: answer.output.to_owned(),
            shape: vec![answer.scores.len() as i64, answer.columns as i64],
            datatype: answer.datatype.as_str().to_owned(),
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
    }

    #[test]
    fn the_answer_has_one_datatype_one_shape_and_says_who_answered_each_row() {
        let stages = [RowStage::Local, RowStage::Stage2, RowStage::Degraded];
        let scores = [0.1, 0.7, 1.0 / 3.0];
        let answer = |datatype, columns| {
            response(Answer {
                model_name: "m",
                model_version: None,
                id: Some("r".into()),
                output: "predict_proba",
                datatype,
                columns,
                scores: &scores,
                stages: &stages,
            })
        };
        let fp64 = answer(ProbabilityType::Fp64, 2);
        let output = &fp64.outputs[0];
        assert_eq!(output.shape, vec![3, 2]);
        assert_eq!(output.datatype, "FP64");
        assert_eq!(output.data[5], json!(1.0 / 3.0));
        let parameters = fp64.parameters.unwrap();
        assert_eq!(parameters[ROWS_PARAMETER], "lsd");
        assert_eq!(parameters["cascadia_rows_stage2"], 1);
        let fp32 = answer(ProbabilityType::Fp32, 1);
        assert_eq!(fp32.outputs[0].shape, vec![3, 1]);
        assert_eq!(fp32.outputs[0].datatype, "FP32");
        assert_eq!(
            fp32.outputs[0].data[2],
            json!(f64::from((1.0f64 / 3.0) as f32))
        );
    }
}
