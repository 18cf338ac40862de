//! Feature drift: how far the traffic's distribution of each feature has
//! moved from the training data's, as the population stability index (PSI).
//!
//! The export tool stores each feature's training deciles (`edges`) and the
//! share of training rows in each bin (`shares`) in the model artifact. The
//! gateway counts the rows it scores into the same bins and, over a sliding
//! window of rows, computes `PSI = Σ (a − e) · ln(a / e)` per feature, `a`
//! the window's share of a bin and `e` the training share. PSI above 0.2 is
//! the usual "the distribution has moved" line (Evidently's default): the
//! calibration's guarantee assumes traffic like the calibration data, so a
//! drifted feature is a reason to recalibrate.

use std::collections::VecDeque;

use serde::Deserialize;

/// Shares below this are raised to it, so an empty bin on either side
/// gives a large but finite term (the usual PSI convention).
const MIN_SHARE: f64 = 1e-4;
/// Most bins a feature may have: the export writes deciles (10).
const MAX_BINS: usize = 100;

/// `reference` as the export tool writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReference {
    rows: u64,
    edges: Vec<Vec<f64>>,
    shares: Vec<Vec<f64>>,
}

/// Each feature's training distribution, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// Training rows the shares were counted on.
    pub rows: u64,
    features: Vec<FeatureReference>,
}

#[derive(Debug, Clone, PartialEq)]
struct FeatureReference {
    /// Interior bin edges, strictly ascending: a value's bin is the number
    /// of edges at or below it.
    edges: Vec<f64>,
    /// Training share of each bin (`edges.len() + 1` of them).
    shares: Vec<f64>,
}

impl Reference {
    /// Checks `raw` against a model of `width` features.
    pub fn new(raw: RawReference, width: usize) -> Result<Self, String> {
        if raw.edges.len() != width || raw.shares.len() != width {
            return Err(format!(
                "edges and shares need one entry per feature ({width}), have {} and {}",
                raw.edges.len(),
                raw.shares.len()
            ));
        }
        let mut features = Vec::with_capacity(width);
        for (i, (edges, shares)) in raw.edges.into_iter().zip(raw.shares).enumerate() {
            if shares.len() != edges.len() + 1 || shares.len() > MAX_BINS {
                return Err(format!(
                    "feature {i}: {} edges need {} shares (at most {MAX_BINS}), have {}",
                    edges.len(),
                    edges.len() + 1,
                    shares.len()
                ));
            }
            if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!(
                    "feature {i}: edges must be finite and strictly ascending"
                ));
            }
            let sum: f64 = shares.iter().sum();
            if shares.iter().any(|s| !(0.0..=1.0).contains(s)) || (sum - 1.0).abs() > 1e-6 {
                return Err(format!(
                    "feature {i}: shares must be within 0..=1 and sum to 1 (sum {sum})"
                ));
            }
            features.push(FeatureReference { edges, shares });
        }
        Ok(Self {
            rows: raw.rows,
            features,
        })
    }

    /// Number of features.
    pub fn width(&self) -> usize {
        self.features.len()
    }

    /// Bins of every feature, in order: the layout of a count vector.
    fn offsets(&self) -> Vec<usize> {
        let mut at = 0;
        self.features
            .iter()
            .map(|f| {
                let start = at;
                at += f.shares.len();
                start
            })
            .collect()
    }

    fn total_bins(&self) -> usize {
        self.features.iter().map(|f| f.shares.len()).sum()
    }

    /// PSI of one feature given the window's `counts` per bin.
    fn psi(&self, feature: usize, counts: &[u64]) -> f64 {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        self.features[feature]
            .shares
            .iter()
            .zip(counts)
            .map(|(&expected, &count)| {
                let e = expected.max(MIN_SHARE);
                let a = (count as f64 / total as f64).max(MIN_SHARE);
                (a - e) * (a / e).ln()
            })
            .sum()
    }
}

/// Counts of rows per feature bin over a sliding window, and the PSI of
/// the last full window. The window is `slices` slices of `slice_rows`
/// rows; each full slice moves it on by one, so the PSI is refreshed every
/// `slice_rows` rows over the last `slices × slice_rows`.
#[derive(Debug)]
pub struct DriftWindow {
    reference: Reference,
    offsets: Vec<usize>,
    slice_rows: u64,
    slices: usize,
    current: Vec<u64>,
    current_rows: u64,
    full: VecDeque<Vec<u64>>,
    psi: Option<Vec<f64>>,
    /// Rows whose value for a feature was not a number: not binned.
    pub skipped: u64,
}

impl DriftWindow {
    pub fn new(reference: Reference, slice_rows: u64, slices: usize) -> Self {
        let bins = reference.total_bins();
        Self {
            offsets: reference.offsets(),
            reference,
            slice_rows: slice_rows.max(1),
            slices: slices.max(1),
            current: vec![0; bins],
            current_rows: 0,
            full: VecDeque::new(),
            psi: None,
            skipped: 0,
        }
    }

    /// Counts one scored row (`row.len()` is the model's width). Returns
    /// true when the row completed a window and the PSI was refreshed.
    pub fn record(&mut self, row: &[f64]) -> bool {
        for (i, (&x, feature)) in row.iter().zip(&self.reference.features).enumerate() {
            if x.is_nan() {
                self.skipped += 1;
                continue;
            }
            let bin = feature.edges.partition_point(|&e| e <= x);
            self.current[self.offsets[i] + bin] += 1;
        }
        self.current_rows += 1;
        if self.current_rows < self.slice_rows {
            return false;
        }
        let bins = self.current.len();
        let slice = std::mem::replace(&mut self.current, vec![0; bins]);
        self.current_rows = 0;
        self.full.push_back(slice);
        if self.full.len() > self.slices {
            self.full.pop_front();
        }
        if self.full.len() < self.slices {
            return false;
        }
        let mut window = vec![0u64; bins];
        for slice in &self.full {
            for (w, c) in window.iter_mut().zip(slice) {
                *w += c;
            }
        }
        let psi = (0..self.reference.width())
            .map(|f| {
                let start = self.offsets[f];
                let end = start + self.reference.features[f].shares.len();
                self.reference.psi(f, &window[start..end])
            })
            .collect();
        self.psi = Some(psi);
        true
    }

    /// PSI per feature over the last full window; `None` before one.
    pub fn psi(&self) -> Option<&[f64]> {
        self.psi.as_deref()
    }

    /// Rows in a full window.
    pub fn window_rows(&self) -> u64 {
        self.slice_rows * self.slices as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One feature uniform on 0..10 in training: deciles at 1..9.
    fn uniform_reference() -> Reference {
        let raw = RawReference {
            rows: 1000,
            edges: vec![(1..10).map(f64::from).collect()],
            shares: vec![vec![0.1; 10]],
        };
        Reference::new(raw, 1).unwrap()
    }

    #[test]
    fn the_same_distribution_has_a_small_psi_and_a_shifted_one_a_large_one() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut same = DriftWindow::new(uniform_reference(), 500, 4);
        for _ in 0..2000 {
            same.record(&[10.0 * rng.f64()]);
        }
        let psi = same.psi().unwrap()[0];
        assert!(psi < 0.02, "{psi}");

        // Shifted by three bins: 30% of the mass leaves, 30% piles up.
        let mut shifted = DriftWindow::new(uniform_reference(), 500, 4);
        for _ in 0..2000 {
            shifted.record(&[3.0 + 10.0 * rng.f64()]);
        }
        let psi = shifted.psi().unwrap()[0];
        assert!(psi > 0.2, "{psi}");
    }

    #[test]
    fn the_window_slides_by_one_slice() {
        let mut window = DriftWindow::new(uniform_reference(), 10, 2);
        for _ in 0..19 {
            assert!(!window.record(&[0.5]));
        }
        assert!(window.psi().is_none());
        assert!(
            window.record(&[0.5]),
            "the second full slice fills the window"
        );
        let all_in_one_bin = window.psi().unwrap()[0];
        // Two slices later the window holds only values spread evenly.
        for i in 0..20 {
            window.record(&[f64::from(i % 10) + 0.5]);
        }
        assert!(window.psi().unwrap()[0] < 1e-9);
        assert!(all_in_one_bin > 2.0, "{all_in_one_bin}");
        assert_eq!(window.window_rows(), 20);
    }

    #[test]
    fn a_value_on_an_edge_goes_to_the_bin_above_and_nan_is_skipped() {
        let mut window = DriftWindow::new(uniform_reference(), 1, 1);
        window.record(&[1.0]);
        assert_eq!(window.full[0][1], 1, "bin = edges at or below the value");
        window.record(&[f64::NAN]);
        assert_eq!(window.skipped, 1);
    }

    #[test]
    fn bad_references_are_refused() {
        let raw = |edges: Vec<f64>, shares: Vec<f64>| RawReference {
            rows: 1,
            edges: vec![edges],
            shares: vec![shares],
        };
        assert!(Reference::new(raw(vec![1.0], vec![0.5, 0.5]), 2).is_err());
        assert!(Reference::new(raw(vec![1.0], vec![1.0]), 1).is_err());
        assert!(Reference::new(raw(vec![2.0, 1.0], vec![0.3, 0.3, 0.4]), 1).is_err());
        assert!(Reference::new(raw(vec![1.0], vec![0.6, 0.6]), 1).is_err());
        assert!(Reference::new(raw(vec![f64::NAN], vec![0.5, 0.5]), 1).is_err());
        assert!(Reference::new(raw(vec![1.0], vec![0.5, 0.5]), 1).is_ok());
    }
}
