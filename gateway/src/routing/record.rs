//! Calibration data from traffic: a sample of rows with stage 1's and stage
//! 2's scores, appended as JSON Lines to a file, or to a Redis stream that
//! every replica shares, for `cascadia calibrate` to read.
//!
//! The request path never waits: rows for a file go through a bounded
//! queue to a writer thread, rows for Redis are sent by background tasks
//! of which at most [`REDIS_IN_FLIGHT`] run at once; a row that finds no
//! room is dropped and counted. A file stops at `max_rows`; a stream is
//! trimmed by Redis to about its newest `max_rows`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

/// Rows waiting for the writer at most.
const QUEUE_ROWS: usize = 4096;
/// Redis appends under way at most.
pub const REDIS_IN_FLIGHT: usize = 256;

/// A route's recorder (carried across reloads while its settings stay).
#[derive(Debug)]
pub struct Recorder {
    sink: Sink,
    sample: f64,
    max_rows: u64,
    /// Rows accepted for writing (counted before the writer has them, so
    /// `max_rows` holds however many requests race).
    accepted: AtomicU64,
    /// Rows written (on disk, or taken by Redis).
    pub written: Arc<AtomicU64>,
    /// Rows dropped because the writer fell behind (or Redis failed).
    pub dropped: Arc<AtomicU64>,
    /// Where the rows go, for the admin API.
    pub target: String,
}

#[derive(Debug)]
enum Sink {
    File(SyncSender<String>),
    Redis {
        tier: Arc<crate::features::RedisTier>,
        key: String,
        in_flight: Arc<std::sync::atomic::AtomicUsize>,
    },
}

impl Recorder {
    /// Opens the file for appending and starts the writer; `None` (logged)
    /// when the file cannot be opened, so a bad path costs the recording,
    /// not the route.
    pub fn start(
        settings: &cascadia_config::Record,
        route: &str,
        redis: Option<&Arc<crate::features::RedisTier>>,
    ) -> Option<Self> {
        let written = Arc::new(AtomicU64::new(0));
        let sink = match &settings.sink {
            cascadia_config::RecordSink::File(path) => {
                Sink::File(start_file(path, route, Arc::clone(&written))?)
            }
            cascadia_config::RecordSink::RedisStream(key) => {
                let Some(tier) = redis else {
                    tracing::error!(route, "no Redis to record to: not recording");
                    return None;
                };
                Sink::Redis {
                    tier: Arc::clone(tier),
                    key: key.clone(),
                    in_flight: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
                }
            }
        };
        Some(Self {
            sink,
            sample: settings.sample,
            max_rows: settings.max_rows,
            accepted: AtomicU64::new(0),
            written,
            dropped: Arc::new(AtomicU64::new(0)),
            target: settings.sink.to_string(),
        })
    }

    /// Queues one row, if the sample takes it and the file has room.
    pub fn record(&self, features: &[f64], stage1: f64, stage2: f64, decision: &'static str) {
        if self.sample < 1.0 && fastrand::f64() >= self.sample {
            return;
        }
        if matches!(self.sink, Sink::File(_))
            && self.accepted.load(Ordering::Relaxed) >= self.max_rows
        {
            return;
        }
        let line = serde_json::json!({
            "features": features,
            "stage1": stage1,
            "stage2": stage2,
            "decision": decision,
        })
        .to_string();
        match &self.sink {
            Sink::File(queue) => {
                if self.accepted.fetch_add(1, Ordering::Relaxed) >= self.max_rows {
                    return;
                }
                if queue.try_send(line).is_err() {
                    self.accepted.fetch_sub(1, Ordering::Relaxed);
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Sink::Redis {
                tier,
                key,
                in_flight,
            } => {
                if in_flight.fetch_add(1, Ordering::Relaxed) >= REDIS_IN_FLIGHT {
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let (tier, key, in_flight) = (Arc::clone(tier), key.clone(), Arc::clone(in_flight));
                let (written, dropped) = (Arc::clone(&self.written), Arc::clone(&self.dropped));
                let max_len = self.max_rows;
                tokio::spawn(async move {
                    let counter = if tier.append_stream(&key, max_len, line.as_bytes()).await {
                        written
                    } else {
                        dropped
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
}

/// Opens `path` for appending and starts its writer thread; `None`
/// (logged) when either fails, so a bad path costs the recording, not the
/// route.
fn start_file(
    path: &std::path::Path,
    route: &str,
    written: Arc<AtomicU64>,
) -> Option<SyncSender<String>> {
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(file) => file,
        Err(error) => {
            tracing::error!(
                route,
                file = %path.display(),
                %error,
                "cannot open the cascade's record file: not recording"
            );
            return None;
        }
    };
    let (queue, rows) = std::sync::mpsc::sync_channel(QUEUE_ROWS);
    let path = path.to_owned();
    let spawned = std::thread::Builder::new()
        .name("cascadia-record".to_owned())
        .spawn(move || write_rows(file, rows, &written, &path));
    if let Err(error) = spawned {
        tracing::error!(route, %error, "cannot start the record writer: not recording");
        return None;
    }
    Some(queue)
}

/// The writer: appends each row as a line, flushing whenever the queue is
/// empty; ends when the recorder is dropped (a reload replaced it).
fn write_rows(
    file: std::fs::File,
    rows: Receiver<String>,
    written: &AtomicU64,
    path: &std::path::Path,
) {
    let mut out = std::io::BufWriter::new(file);
    while let Ok(mut line) = rows.recv() {
        let mut batch = 0;
        let result = loop {
            line.push('\n');
            if let Err(error) = out.write_all(line.as_bytes()) {
                break Err(error);
            }
            batch += 1;
            match rows.try_recv() {
                Ok(next) => line = next,
                Err(_) => break out.flush(),
            }
        };
        if let Err(error) = result {
            tracing::error!(file = %path.display(), %error, "cannot write the record file: stopping");
            return;
        }
        // Counted once on disk, so a reader that sees the count sees the rows.
        written.fetch_add(batch, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_written_as_lines_and_stop_at_the_cap() {
        let dir = std::env::temp_dir().join(format!("cascadia-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rows.jsonl");
        let _ = std::fs::remove_file(&file);
        let settings = cascadia_config::Record {
            sink: cascadia_config::RecordSink::File(file.clone()),
            sample: 1.0,
            max_rows: 3,
        };
        let recorder = Recorder::start(&settings, "r", None).unwrap();
        for i in 0..5 {
            recorder.record(&[f64::from(i), 1.0], 0.25, 0.75, "accept");
        }
        let written = Arc::clone(&recorder.written);
        drop(recorder);
        // The writer ends once the recorder is gone; wait for its count.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while written.load(Ordering::Relaxed) < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "writer never caught up"
            );
            std::thread::yield_now();
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["features"], serde_json::json!([2.0, 1.0]));
        assert_eq!(lines[0]["stage2"], 0.75);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
