//! Live settings and counters, shared by the server, the `/sim/*` endpoints and tests.
//!
//! Settings sit in one `ArcSwap` so the request path reads them without a lock, and a
//! control request that changes latency and error rate together lands as one store — a
//! request never sees half of an update. Counters are plain atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::LatencyModel;

/// One consistent snapshot of the tunable behaviour.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub latency: LatencyModel,
    /// Probability in `[0, 1]` that a data-plane request fails with an injected error.
    pub error_rate: f64,
}

/// Runtime control of a running simulator; get it from `SimHandle::control`.
#[derive(Debug)]
pub struct SimControl {
    settings: ArcSwap<Settings>,
    /// Every request except the `/sim/*` control endpoints.
    requests: AtomicU64,
    /// Inference calls (REST and gRPC), including failed and rejected ones.
    infer: AtomicU64,
    /// Responses replaced by an injected failure.
    errors_injected: AtomicU64,
    /// Added to every logit (f32 bits), so one sim can disagree with
    /// another: a stand-in for a different model version.
    bias: std::sync::atomic::AtomicU32,
}

impl SimControl {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings: ArcSwap::from_pointee(Settings {
                error_rate: clamp_rate(settings.error_rate),
                ..settings
            }),
            requests: AtomicU64::new(0),
            infer: AtomicU64::new(0),
            errors_injected: AtomicU64::new(0),
            bias: std::sync::atomic::AtomicU32::new(0f32.to_bits()),
        }
    }

    /// Shifts every answer's logit by `bias` (0 restores the plain model).
    pub fn set_bias(&self, bias: f32) {
        self.bias.store(bias.to_bits(), Ordering::Relaxed);
    }

    /// Applies the bias to scored probabilities.
    pub(crate) fn biased(&self, probabilities: Vec<f32>) -> Vec<f32> {
        let bias = f32::from_bits(self.bias.load(Ordering::Relaxed));
        if bias == 0.0 {
            return probabilities;
        }
        probabilities
            .into_iter()
            .map(|p| {
                let logit = (p / (1.0 - p)).ln() + bias;
                1.0 / (1.0 + (-logit).exp())
            })
            .collect()
    }

    /// Replaces the latency model for requests that start from now on.
    pub fn set_latency(&self, latency: LatencyModel) {
        self.settings.rcu(|cur| Settings { latency, ..**cur });
    }

    /// Sets the injected failure probability; clamped to `[0, 1]`, NaN counts as 0.
    pub fn set_error_rate(&self, rate: f64) {
        let error_rate = clamp_rate(rate);
        self.settings.rcu(|cur| Settings {
            error_rate,
            ..**cur
        });
    }

    /// The current settings.
    pub fn settings(&self) -> Settings {
        **self.settings.load()
    }

    pub fn latency(&self) -> LatencyModel {
        self.settings().latency
    }

    pub fn error_rate(&self) -> f64 {
        self.settings().error_rate
    }

    /// Requests served, not counting the `/sim/*` control endpoints.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Inference calls received (REST and gRPC), whatever their outcome.
    pub fn infer_requests(&self) -> u64 {
        self.infer.load(Ordering::Relaxed)
    }

    /// Responses replaced by an injected failure.
    pub fn errors_injected(&self) -> u64 {
        self.errors_injected.load(Ordering::Relaxed)
    }

    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_infer(&self) {
        self.infer.fetch_add(1, Ordering::Relaxed);
    }

    /// Rolls the dice for one data-plane request; true means "fail it".
    pub(crate) fn inject_error(&self, settings: &Settings) -> bool {
        let fail = settings.error_rate > 0.0 && fastrand::f64() < settings.error_rate;
        if fail {
            self.errors_injected.fetch_add(1, Ordering::Relaxed);
        }
        fail
    }

    /// Applies a validated control request as a single store.
    pub(crate) fn apply(&self, update: ControlUpdate) -> Settings {
        // `rcu` returns the previous value and may retry, so remember what we stored last.
        let mut stored = self.settings();
        self.settings.rcu(|cur| {
            stored = Settings {
                latency: update.latency.unwrap_or(cur.latency),
                error_rate: update.error_rate.map_or(cur.error_rate, clamp_rate),
            };
            stored
        });
        stored
    }
}

fn clamp_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}

/// The body of `POST /sim/control`. Latency is given one way at most:
/// `latency_ms`, `p50_ms` + `p99_ms`, or `latency: "none"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ControlRequest {
    latency_ms: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    latency: Option<String>,
    error_rate: Option<f64>,
}

/// A control request that passed validation.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ControlUpdate {
    pub latency: Option<LatencyModel>,
    pub error_rate: Option<f64>,
}

impl ControlRequest {
    pub(crate) fn validate(self) -> Result<ControlUpdate, String> {
        let ms = |field: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(Duration::from_secs_f64(v / 1e3))
            } else {
                Err(format!("{field} must be a finite number >= 0"))
            }
        };
        let mut latency = None;
        let mut set = |model: LatencyModel| {
            if latency.replace(model).is_some() {
                Err("give latency one way only: latency_ms, p50_ms+p99_ms or latency".to_owned())
            } else {
                Ok(())
            }
        };
        if let Some(v) = self.latency_ms {
            set(LatencyModel::Fixed(ms("latency_ms", v)?))?;
        }
        match (self.p50_ms, self.p99_ms) {
            (None, None) => {}
            (Some(p50), Some(p99)) => {
                let (p50, p99) = (ms("p50_ms", p50)?, ms("p99_ms", p99)?);
                if p99 < p50 {
                    return Err("p99_ms must be >= p50_ms".to_owned());
                }
                set(LatencyModel::LogNormal { p50, p99 })?;
            }
            _ => return Err("p50_ms and p99_ms go together".to_owned()),
        }
        match self.latency.as_deref() {
            None => {}
            Some("none") => set(LatencyModel::None)?,
            Some(_) => return Err("latency must be \"none\"".to_owned()),
        }
        let error_rate = match self.error_rate {
            Some(r) if !(0.0..=1.0).contains(&r) => {
                return Err("error_rate must be within [0, 1]".to_owned())
            }
            other => other,
        };
        Ok(ControlUpdate {
            latency,
            error_rate,
        })
    }
}

/// Settings as JSON, in the same shape `POST /sim/control` accepts.
pub(crate) fn settings_json(settings: &Settings) -> Value {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut v = match settings.latency {
        LatencyModel::None => json!({ "latency": "none" }),
        LatencyModel::Fixed(d) => json!({ "latency_ms": ms(d) }),
        LatencyModel::LogNormal { p50, p99 } => json!({ "p50_ms": ms(p50), "p99_ms": ms(p99) }),
    };
    v["error_rate"] = json!(settings.error_rate);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ControlUpdate, String> {
        serde_json::from_str::<ControlRequest>(body)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn accepts_each_latency_form() {
        assert_eq!(
            parse(r#"{"latency_ms": 5}"#).unwrap().latency,
            Some(LatencyModel::Fixed(Duration::from_millis(5)))
        );
        assert_eq!(
            parse(r#"{"p50_ms": 1, "p99_ms": 10}"#).unwrap().latency,
            Some(LatencyModel::LogNormal {
                p50: Duration::from_millis(1),
                p99: Duration::from_millis(10)
            })
        );
        assert_eq!(
            parse(r#"{"latency": "none", "error_rate": 0.5}"#).unwrap(),
            ControlUpdate {
                latency: Some(LatencyModel::None),
                error_rate: Some(0.5)
            }
        );
    }

    #[test]
    fn rejects_bad_requests() {
        for bad in [
            r#"{"latency_ms": 5, "latency": "none"}"#,
            r#"{"p50_ms": 5}"#,
            r#"{"p50_ms": 5, "p99_ms": 1}"#,
            r#"{"latency_ms": -1}"#,
            r#"{"latency": "slow"}"#,
            r#"{"error_rate": 1.5}"#,
            r#"{"eror_rate": 0.5}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn apply_changes_only_what_was_given() {
        let control = SimControl::new(Settings {
            latency: LatencyModel::Fixed(Duration::from_millis(3)),
            error_rate: 0.0,
        });
        let after = control.apply(parse(r#"{"error_rate": 1}"#).unwrap());
        assert_eq!(after.error_rate, 1.0);
        assert_eq!(after.latency, LatencyModel::Fixed(Duration::from_millis(3)));
        assert!(control.inject_error(&after));
        assert_eq!(control.errors_injected(), 1);
        control.set_error_rate(f64::NAN);
        assert_eq!(control.error_rate(), 0.0);
        assert_eq!(
            settings_json(&control.settings()),
            json!({"latency_ms": 3.0, "error_rate": 0.0})
        );
    }
}
