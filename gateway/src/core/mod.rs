//! Layer 0: what every request needs and nothing above it knows about:
//! bodies, headers, the error type and its one response builder, stats,
//! admission (route slots), the buffer budget, deadlines, content codings
//! and the coalescing of concurrent work into batches. Nothing here uses a module above it (see `tests/layers.rs`).

pub mod admission;
pub mod body;
pub mod budget;
pub mod coalesce;
pub mod coding;
pub mod deadline;
pub mod errors;
pub mod headers;
pub mod histogram;
pub mod lifecycle;
pub mod stats;
