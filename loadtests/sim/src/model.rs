//! The simulated model: a fixed logistic regression, so every response is deterministic and
//! tests can check exact outputs.

/// Name of the single output tensor.
pub const OUTPUT: &str = "probability";

/// Weight of feature `i`: cycles through −0.3, −0.2, …, 0.3 so any input width works.
pub fn weight(i: usize) -> f32 {
    ((i % 7) as f32 - 3.0) * 0.1
}

/// p = sigmoid(Σ xᵢ·wᵢ) for one row.
pub fn score_row(row: &[f32]) -> f32 {
    let z: f32 = row.iter().enumerate().map(|(i, x)| x * weight(i)).sum();
    1.0 / (1.0 + (-z).exp())
}

/// Why a tensor cannot be scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    /// Only `[n]` (one row) and `[rows, n]` are supported.
    Rank(usize),
    /// A negative dimension.
    Negative,
    /// The element count does not match the shape.
    Count { expected: usize, got: usize },
}

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShapeError::Rank(r) => write!(f, "input tensor must have rank 1 or 2, got {r}"),
            ShapeError::Negative => f.write_str("input tensor shape has a negative dimension"),
            ShapeError::Count { expected, got } => write!(
                f,
                "input tensor shape needs {expected} elements, data has {got}"
            ),
        }
    }
}

/// Scores every row of a row-major tensor with `shape` `[n]` or `[rows, n]`.
pub fn score(shape: &[i64], data: &[f32]) -> Result<Vec<f32>, ShapeError> {
    let dims = shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| ShapeError::Negative))
        .collect::<Result<Vec<_>, _>>()?;
    let (rows, cols) = match dims[..] {
        [n] => (1, n),
        [rows, n] => (rows, n),
        _ => return Err(ShapeError::Rank(dims.len())),
    };
    let expected = rows.saturating_mul(cols);
    if expected != data.len() {
        return Err(ShapeError::Count {
            expected,
            got: data.len(),
        });
    }
    if cols == 0 {
        return Ok(vec![score_row(&[]); rows]);
    }
    Ok(data.chunks_exact(cols).map(score_row).collect())
}

/// True for the OIP datatypes the simulator can read as numbers.
pub fn is_numeric(datatype: &str) -> bool {
    matches!(
        datatype,
        "FP16"
            | "FP32"
            | "FP64"
            | "INT8"
            | "INT16"
            | "INT32"
            | "INT64"
            | "UINT8"
            | "UINT16"
            | "UINT32"
            | "UINT64"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_cycle() {
        let w: Vec<f32> = (0..8).map(weight).collect();
        let expected = [-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, -0.3];
        for (a, b) in w.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn scores_rows() {
        let out = score(&[2, 3], &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]).unwrap();
        assert_eq!(out.len(), 2);
        assert!((out[0] - 0.5).abs() < 1e-6);
        // z = -0.3 - 0.2 - 0.1 = -0.6
        assert!((out[1] - 1.0 / (1.0 + 0.6f32.exp())).abs() < 1e-6);
        assert_eq!(score(&[3], &[0.0; 3]).unwrap().len(), 1);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert_eq!(
            score(&[2, 2], &[0.0; 3]),
            Err(ShapeError::Count {
                expected: 4,
                got: 3
            })
        );
        assert_eq!(score(&[1, 1, 1], &[0.0]), Err(ShapeError::Rank(3)));
        assert_eq!(score(&[-1, 2], &[0.0; 2]), Err(ShapeError::Negative));
    }
}
