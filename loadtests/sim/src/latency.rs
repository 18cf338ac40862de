//! The simulated service time: none, fixed, or lognormal from a p50 and a p99.
//!
//! Lognormal because real model-server latency is right-skewed with a long tail; giving it
//! as p50/p99 keeps test configs readable. sigma = (ln p99 − ln p50) / z₀.₉₉ with
//! z₀.₉₉ = 2.3263, so the configured percentiles are the distribution's percentiles.

use std::time::Duration;

/// The 99th percentile of the standard normal distribution.
const Z_P99: f64 = 2.3263;

/// Samples above this are clamped, so a typo'd p99 cannot hang a test for hours.
const MAX_SAMPLE: Duration = Duration::from_secs(60);

/// How long the simulator waits before answering a data-plane request.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum LatencyModel {
    /// Answer at once (the default).
    #[default]
    None,
    /// Always wait exactly this long.
    Fixed(Duration),
    /// Lognormal with these percentiles. A p99 below the p50 is treated as equal to it
    /// (no spread).
    LogNormal { p50: Duration, p99: Duration },
}

impl LatencyModel {
    /// Draws one delay, seeding a fresh generator from fastrand's thread-local one.
    pub fn sample(&self) -> Duration {
        self.sample_with(&mut fastrand::Rng::new())
    }

    /// Draws one delay from `rng` (seed it for reproducible tests).
    pub fn sample_with(&self, rng: &mut fastrand::Rng) -> Duration {
        match *self {
            LatencyModel::None => Duration::ZERO,
            LatencyModel::Fixed(d) => d,
            LatencyModel::LogNormal { p50, p99 } => {
                if p50.is_zero() {
                    return Duration::ZERO;
                }
                let mu = p50.as_secs_f64().ln();
                let sigma = ((p99.as_secs_f64().ln() - mu) / Z_P99).max(0.0);
                let secs = (mu + sigma * standard_normal(rng)).exp();
                Duration::try_from_secs_f64(secs)
                    .unwrap_or(MAX_SAMPLE)
                    .min(MAX_SAMPLE)
            }
        }
    }
}

/// Box–Muller: one standard normal from two uniforms. `1 - u` keeps `ln` away from zero.
fn standard_normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = 1.0 - rng.f64();
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn percentile(sorted: &[Duration], q: f64) -> Duration {
        sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
    }

    #[test]
    fn none_and_fixed() {
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(LatencyModel::None.sample_with(&mut rng), Duration::ZERO);
        let d = Duration::from_millis(7);
        assert_eq!(LatencyModel::Fixed(d).sample_with(&mut rng), d);
    }

    #[test]
    fn lognormal_hits_its_percentiles() {
        let model = LatencyModel::LogNormal {
            p50: Duration::from_millis(10),
            p99: Duration::from_millis(100),
        };
        let mut rng = fastrand::Rng::with_seed(42);
        let mut samples: Vec<_> = (0..50_000).map(|_| model.sample_with(&mut rng)).collect();
        samples.sort();
        let p50 = percentile(&samples, 0.50).as_secs_f64() * 1e3;
        let p99 = percentile(&samples, 0.99).as_secs_f64() * 1e3;
        assert!((9.0..11.0).contains(&p50), "p50 = {p50}ms");
        assert!((85.0..115.0).contains(&p99), "p99 = {p99}ms");
    }

    #[test]
    fn degenerate_lognormal_is_safe() {
        let mut rng = fastrand::Rng::with_seed(3);
        let zero = LatencyModel::LogNormal {
            p50: Duration::ZERO,
            p99: Duration::from_millis(5),
        };
        assert_eq!(zero.sample_with(&mut rng), Duration::ZERO);
        let inverted = LatencyModel::LogNormal {
            p50: Duration::from_millis(5),
            p99: Duration::from_millis(1),
        };
        let d = inverted.sample_with(&mut rng);
        assert!((d.as_secs_f64() - 0.005).abs() < 1e-9, "{d:?}");
    }
}
