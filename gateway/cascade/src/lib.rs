//! The two-stage cascade's pure parts: the stage-1 logistic model scored in
//! the gateway, the decision bands, and the OIP row split and merge. No I/O:
//! the gateway feeds it parsed requests and sends the escalations.
//!
//! # Layout
//! - [`model`]: the model artifact (JSON from `tools/export_logistic.py`)
//!   and its scoring.
//! - [`calibrate`]: the band chosen with a high-probability bound on the
//!   recall drop (Learn-then-Test with binomial p-values).
//! - [`decision`]: thresholds as a value type, and the per-row decision.
//! - [`drift`]: each feature's distance from its training distribution
//!   (PSI over a sliding window).
//! - [`grpc`]: OIP gRPC messages to and from the JSON model, typed or raw.
//! - [`rows`]: features out of an OIP V2 inference request, the
//!   sub-request of escalated rows, and the merged response with its
//!   per-row provenance.
//! - [`stage2`]: the request the gateway sends stage 2, and the checks its
//!   answer must pass.
//! - [`watch`]: the calibration's guarantee checked online, from stage 2's
//!   second opinion on a sample of rows.

pub mod calibrate;
pub mod decision;
pub mod drift;
pub mod grpc;
pub mod model;
pub mod rows;
pub mod stage2;
pub mod watch;

pub use decision::{Decision, Thresholds, ThresholdsError};
pub use model::{LogisticModel, ModelError};
pub use rows::{Features, PayloadError, ProbabilityType, RowStage, StageCounts};
