//! The stage-2 exchange's pure half: the request the gateway sends for the
//! escalated rows, and the checks an answer must pass before its numbers
//! are merged into a response.
//!
//! The gateway owns this request. Whatever the client asked for, stage 2 is
//! asked for the cascade's output, in plain JSON, one row per `[1, F]` slice:
//! a client's default settings (`Accept-Encoding: gzip`, no `outputs`,
//! Triton's `binary_data` outputs, a `[F]` row) must never change what the
//! gateway has to parse. An answer that fails a check is an error, never a
//! reason to pass stage 1's numbers off as stage 2's.

use cascadia_oip::json::{InferRequest, InferResponse, RequestedOutput};

use crate::rows::{flatten, select_rows};

/// The request for stage 2: the escalated `rows` (ascending indexes into a
/// batch of `batch`) of `request`, with
/// - a 1-D matrix input (`[F]`, one row) reshaped to `[1, F]`, the shape a
///   model server expects of a batch;
/// - `output` among the requested outputs (the client's others kept), with
///   no output asking for Triton's binary form or a classification, which
///   would answer something other than JSON probabilities.
pub fn request(
    request: &InferRequest,
    batch: usize,
    rows: &[usize],
    matrix_input: Option<&str>,
    output: &str,
) -> InferRequest {
    let mut shaped;
    let request = match matrix_input {
        Some(name)
            if request
                .inputs
                .iter()
                .any(|i| i.name == name && i.shape.len() == 1) =>
        {
            shaped = request.clone();
            for input in shaped.inputs.iter_mut().filter(|i| i.name == name) {
                if let [width] = input.shape[..] {
                    input.shape = vec![1, width];
                }
            }
            &shaped
        }
        _ => request,
    };
    let mut sub = if rows.len() == batch {
        request.clone()
    } else {
        select_rows(request, batch, rows)
    };
    let mut outputs = sub.outputs.take().unwrap_or_default();
    for requested in &mut outputs {
        if let Some(parameters) = &mut requested.parameters {
            parameters.remove("binary_data");
            parameters.remove("classification");
            if parameters.is_empty() {
                requested.parameters = None;
            }
        }
    }
    if !outputs.iter().any(|o| o.name == output) {
        outputs.push(RequestedOutput {
            name: output.to_owned(),
            parameters: None,
        });
    }
    sub.outputs = Some(outputs);
    if let Some(parameters) = &mut sub.parameters {
        parameters.remove("binary_data_output");
    }
    sub
}

/// Tells stage 2 how long the gateway will wait and how urgent the rows
/// are, as request `parameters` the way Triton reads them: `timeout` in
/// microseconds (the time left of the client's deadline; the server may
/// drop the request rather than answer late) and `priority`. A client's
/// own values are replaced: the gateway's deadline is the one that holds.
pub fn schedule(
    request: &mut InferRequest,
    remaining: Option<std::time::Duration>,
    priority: Option<u32>,
) {
    if remaining.is_none() && priority.is_none() {
        return;
    }
    let parameters = request.parameters.get_or_insert_with(Default::default);
    if let Some(remaining) = remaining {
        let micros = u64::try_from(remaining.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        parameters.insert("timeout".to_owned(), micros.into());
    }
    if let Some(priority) = priority {
        parameters.insert("priority".to_owned(), priority.into());
    }
}

/// One request for stage 2 made of several requests' escalated rows
/// (micro-batching), in order: every input concatenated along its first
/// dimension. `None` when they cannot be combined without changing what a
/// row means: different input names, datatypes, row shapes, parameters or
/// requested outputs, or an input without a row dimension.
pub fn merge(parts: &[&InferRequest], rows: &[usize]) -> Option<InferRequest> {
    let (first, rest) = parts.split_first()?;
    let same_layout = |other: &InferRequest| {
        other.parameters == first.parameters
            && other.outputs == first.outputs
            && other.inputs.len() == first.inputs.len()
            && other.inputs.iter().zip(&first.inputs).all(|(a, b)| {
                a.name == b.name
                    && a.datatype == b.datatype
                    && a.parameters == b.parameters
                    && a.shape.get(1..) == b.shape.get(1..)
            })
    };
    if !rest.iter().all(|r| same_layout(r)) || parts.len() != rows.len() {
        return None;
    }
    let mut merged = (*first).clone();
    for (i, input) in merged.inputs.iter_mut().enumerate() {
        let mut leaves = Vec::new();
        for (part, &n) in parts.iter().zip(rows) {
            let tensor = &part.inputs[i];
            // Every input must have this request's rows as its first
            // dimension, or concatenating would mix rows up.
            if tensor.shape.first().copied() != Some(n as i64) {
                return None;
            }
            crate::rows::leaves_into(&tensor.data, &mut leaves);
        }
        input.shape[0] = rows.iter().sum::<usize>() as i64;
        input.data = serde_json::Value::Array(leaves);
    }
    merged.id = None;
    Some(merged)
}

/// Why a stage-2 answer cannot be used. The text goes to the log; clients
/// see a generic 502.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AnswerError {
    #[error("stage 2 answered without output {0:?}")]
    MissingOutput(String),
    #[error("output {output:?} has datatype {datatype:?}, not a floating-point probability")]
    Datatype { output: String, datatype: String },
    #[error("output {output:?} has shape {shape:?} and {values} values for {rows} rows")]
    Shape {
        output: String,
        shape: Vec<i64>,
        values: usize,
        rows: usize,
    },
    #[error("output {output:?} row {row} is {value}, not a probability")]
    NotProbability {
        output: String,
        row: usize,
        value: f64,
    },
}

impl AnswerError {
    /// A low-cardinality label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingOutput(_) => "missing_output",
            Self::Datatype { .. } => "datatype",
            Self::Shape { .. } => "shape",
            Self::NotProbability { .. } => "not_probability",
        }
    }
}

/// The positive-class probability of each of `rows` rows in a stage-2
/// answer's `output`: a `[rows]` or `[rows, 1]` tensor of probabilities,
/// or `[rows, 2]` of `[negative, positive]` (scikit-learn's
/// `predict_proba`). Anything else is an [`AnswerError`].
pub fn scores(
    response: &InferResponse,
    output: &str,
    rows: usize,
) -> Result<Vec<f64>, AnswerError> {
    let tensor = response
        .outputs
        .iter()
        .find(|o| o.name == output)
        .ok_or_else(|| AnswerError::MissingOutput(output.to_owned()))?;
    if !matches!(tensor.datatype.as_str(), "FP16" | "FP32" | "FP64") {
        return Err(AnswerError::Datatype {
            output: output.to_owned(),
            datatype: tensor.datatype.clone(),
        });
    }
    let mut values = Vec::with_capacity(rows * 2);
    let numeric = flatten(&tensor.data, &mut values);
    let columns = match tensor.shape[..] {
        [n] if n == rows as i64 => Some(1),
        [n, c @ (1 | 2)] if n == rows as i64 => Some(c as usize),
        _ => None,
    };
    let shape_error = || AnswerError::Shape {
        output: output.to_owned(),
        shape: tensor.shape.clone(),
        values: values.len(),
        rows,
    };
    let columns = columns.ok_or_else(shape_error)?;
    if !numeric || rows == 0 || values.len() != rows * columns {
        return Err(shape_error());
    }
    (0..rows)
        .map(|row| {
            let value = values[row * columns + columns - 1];
            if (0.0..=1.0).contains(&value) {
                Ok(value)
            } else {
                Err(AnswerError::NotProbability {
                    output: output.to_owned(),
                    row,
                    value,
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    fn request(rows: &[[f64; 2]], extra: &str) -> InferRequest {
        serde_json::from_str(&format!(
            r#"{{"inputs":[{{"name":"x","shape":[{},2],"datatype":"FP64","data":{}}}]{extra}}}"#,
            rows.len(),
            serde_json::to_string(rows).unwrap()
        ))
        .unwrap()
    }

    #[test]
    fn requests_of_one_layout_are_concatenated_in_order() {
        let a = request(&[[1.0, 2.0]], "");
        let b = request(&[[3.0, 4.0], [5.0, 6.0]], "");
        let merged = merge(&[&a, &b], &[1, 2]).unwrap();
        assert_eq!(merged.inputs[0].shape, vec![3, 2]);
        assert_eq!(
            merged.inputs[0].data,
            serde_json::json!([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
    }

    #[test]
    fn requests_that_differ_are_not_combined() {
        let a = request(&[[1.0, 2.0]], "");
        let other_params = request(&[[1.0, 2.0]], r#","parameters":{"k":1}"#);
        assert!(merge(&[&a, &other_params], &[1, 1]).is_none());
        let mut other_type = a.clone();
        other_type.inputs[0].datatype = "FP32".into();
        assert!(merge(&[&a, &other_type], &[1, 1]).is_none());
        // The row count must be the first dimension of every input.
        assert!(merge(&[&a, &a], &[1, 2]).is_none());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_deadline_and_priority_go_into_the_parameters_triton_reads() {
        let mut request: InferRequest = serde_json::from_str(
            r#"{"parameters":{"timeout":999999999,"keep":1},"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}]}"#,
        )
        .unwrap();
        schedule(
            &mut request,
            Some(std::time::Duration::from_micros(12_500)),
            Some(2),
        );
        let parameters = request.parameters.clone().unwrap();
        assert_eq!(
            parameters["timeout"], 12_500,
            "the gateway's deadline replaces the client's"
        );
        assert_eq!(parameters["priority"], 2);
        assert_eq!(parameters["keep"], 1);
        let mut plain: InferRequest = serde_json::from_str(
            r#"{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}]}"#,
        )
        .unwrap();
        schedule(&mut plain, None, None);
        assert!(
            plain.parameters.is_none(),
            "nothing added without a deadline or priority"
        );
    }

    use super::*;
    use serde_json::{json, Value};

    fn request_of(value: Value) -> InferRequest {
        serde_json::from_value(value).unwrap()
    }

    fn answer(output: Value) -> InferResponse {
        serde_json::from_value(json!({"model_name": "m", "outputs": [output]})).unwrap()
    }

    #[test]
    fn a_request_without_outputs_asks_for_the_cascade_output() {
        let client = request_of(json!({"inputs":[
            {"name":"x","shape":[2,2],"datatype":"FP64","data":[[1,2],[3,4]]}
        ]}));
        let sub = request(&client, 2, &[1], Some("x"), "predict_proba");
        assert_eq!(sub.inputs[0].shape, vec![1, 2]);
        assert_eq!(sub.inputs[0].data, json!([3, 4]));
        let outputs = sub.outputs.unwrap();
        assert_eq!(outputs.len(), 1);
        assert_eq!(outputs[0].name, "predict_proba");
    }

    #[test]
    fn the_clients_other_outputs_stay_and_binary_forms_go() {
        let client = request_of(json!({
            "parameters": {"binary_data_output": true, "keep": 1},
            "inputs":[{"name":"x","shape":[1,2],"datatype":"FP64","data":[1,2]}],
            "outputs":[
                {"name":"predict","parameters":{"binary_data":true}},
                {"name":"predict_proba","parameters":{"binary_data":true,"classification":2}}
            ]
        }));
        let sub = request(&client, 1, &[0], Some("x"), "predict_proba");
        let outputs = sub.outputs.unwrap();
        assert_eq!(
            outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
            ["predict", "predict_proba"]
        );
        assert!(outputs.iter().all(|o| o.parameters.is_none()));
        let parameters = sub.parameters.unwrap();
        assert!(!parameters.contains_key("binary_data_output"));
        assert_eq!(parameters["keep"], 1);
    }

    #[test]
    fn a_single_row_of_shape_f_goes_out_as_1_by_f() {
        let client = request_of(
            json!({"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2,3]}]}),
        );
        let sub = request(&client, 1, &[0], Some("x"), "p");
        assert_eq!(sub.inputs[0].shape, vec![1, 3]);
        assert_eq!(sub.inputs[0].data, json!([1, 2, 3]));
        // One input per feature: a `[N]` input is N rows, sliced as such.
        let columns = request_of(json!({"inputs":[
            {"name":"a","shape":[3],"datatype":"FP32","data":[1,2,3]}
        ]}));
        let sub = request(&columns, 3, &[2], None, "p");
        assert_eq!(sub.inputs[0].shape, vec![1]);
        assert_eq!(sub.inputs[0].data, json!([3]));
    }

    #[test]
    fn answers_of_every_accepted_shape_give_the_positive_class() {
        for (shape, data) in [
            (json!([2, 2]), json!([0.8, 0.2, 0.3, 0.7])),
            (json!([2, 1]), json!([0.2, 0.7])),
            (json!([2]), json!([[0.2], [0.7]])),
        ] {
            let got = scores(
                &answer(json!({"name":"p","shape":shape,"datatype":"FP64","data":data})),
                "p",
                2,
            );
            assert_eq!(got, Ok(vec![0.2, 0.7]), "{shape}");
        }
    }

    #[test]
    fn unusable_answers_name_the_reason() {
        let cases = [
            (
                json!({"name":"predict","shape":[2],"datatype":"INT64","data":[0,1]}),
                "missing_output",
            ),
            (
                json!({"name":"p","shape":[2],"datatype":"INT64","data":[0,1]}),
                "datatype",
            ),
            (
                json!({"name":"p","shape":[2,3],"datatype":"FP64","data":[0,0,1,0,0,1]}),
                "shape",
            ),
            (
                json!({"name":"p","shape":[3,1],"datatype":"FP64","data":[0,0,1]}),
                "shape",
            ),
            (
                json!({"name":"p","shape":[2,1],"datatype":"FP64","data":[0.5]}),
                "shape",
            ),
            (
                json!({"name":"p","shape":[2],"datatype":"FP32","data":["a","b"]}),
                "shape",
            ),
            (
                json!({"name":"p","shape":[2],"datatype":"FP32","data":[0.5,1.5]}),
                "not_probability",
            ),
            (
                json!({"name":"p","shape":[0],"datatype":"FP32","data":[]}),
                "shape",
            ),
        ];
        for (output, reason) in cases {
            let error = scores(&answer(output.clone()), "p", 2).expect_err("unusable");
            assert_eq!(error.reason(), reason, "{output}: {error}");
        }
    }
}
