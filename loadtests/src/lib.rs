//! Cascadia's load generator: open-loop, corrected for coordinated omission.
//!
//! The binary `cascadia-load` (in `main.rs`) parses the command line and prints; this library
//! takes a typed [`run::Config`] and returns a [`report::Report`].
//!
//! # Layout
//! - [`rate`]: the arrival schedule (request `i` is due at `start + i / rate`, step after
//!   step for `--rate-steps`) and the pacer that waits for each due time precisely.
//! - [`run`]: connections, round-robin dispatch and the measured window.
//! - [`payload`]: request bodies (OIP V2 infer JSON, raw bytes) and Zipf-distributed user ids.
//! - [`rows`]: `--rows`, the user's feature rows from CSV or `.npy`, cut into `--batch`es.
//! - [`grpc`]: `--grpc`, the OIP gRPC `ModelInfer` message and how a response is judged.
//! - [`timeline`]: latency, ok and errors per time bucket, by due time.
//! - [`scenario`]: `--scenario` files: timed kills, reloads, drills, sim changes, commands.
//! - [`progress`]: the once-a-second progress line on stderr.
//! - [`plot`]: `--plot`, the SVG of the timeline with the scenario's events.
//! - [`cpu`]: CPU time and RSS of a process, from `/proc`.
//! - [`report`]: merging per-connection results and rendering them as text or JSON.
//! - [`duration`]: `10s` / `500ms` / `1m` parsing for the command line.
//!
//! # How it works
//! One pacer thread walks the schedule and hands each request to a connection, round-robin,
//! through that connection's unbounded channel. Each connection is a task that owns one
//! hyper client connection. Over HTTP/1.1 it sends one request at a time, so a request that
//! finds its connection busy waits in the channel. Latency is measured from the *due* time,
//! not from the moment of sending. That waiting therefore counts, which is the correction for
//! coordinated omission: a stall in the system under test shows up in every request it
//! delayed, not just in the one that hit it.

pub mod cpu;
pub mod duration;
pub mod grpc;
pub mod payload;
pub mod plot;
pub mod progress;
pub mod rate;
pub mod report;
pub mod rows;
pub mod run;
pub mod scenario;
pub mod timeline;
