//! Calibration data from traffic: a sample of rows with stage 1's and stage
//! 2's scores, appended as JSON Lines that `cascadia calibrate` reads.
//!
//! The request path never waits for the file: rows go through a bounded
//! queue to a writer thread, and a row that finds the queue full is
//! dropped and counted. Recording stops at `max_rows`, so the file is
//! bounded too.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;

/// Rows waiting for the writer at most.
const QUEUE_ROWS: usize = 4096;

/// A route's recorder (carried across reloads while its settings stay).
#[derive(Debug)]
pub struct Recorder {
    queue: SyncSender<String>,
    sample: f64,
    max_rows: u64,
    /// Rows accepted for writing (counted before the writer has them, so
    /// `max_rows` holds however many requests race).
    accepted: AtomicU64,
    /// Rows written to the file.
    pub written: Arc<AtomicU64>,
    /// Rows dropped because the writer fell behind.
    pub dropped: AtomicU64,
    pub file: std::path::PathBuf,
}

impl Recorder {
    /// Opens the file for appending and starts the writer; `None` (logged)
    /// when the file cannot be opened, so a bad path costs the recording,
    /// not the route.
    pub fn start(settings: &cascadia_config::Record, route: &str) -> Option<Self> {
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&settings.file)
        {
            Ok(file) => file,
            Err(error) => {
                tracing::error!(
                    route,
                    file = %settings.file.display(),
                    %error,
                    "cannot open the cascade's record file: not recording"
                );
                return None;
            }
        };
        let (queue, rows) = std::sync::mpsc::sync_channel(QUEUE_ROWS);
        let written = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&written);
        let path = settings.file.clone();
        let spawned = std::thread::Builder::new()
            .name("cascadia-record".to_owned())
            .spawn(move || write_rows(file, rows, &counter, &path));
        if let Err(error) = spawned {
            tracing::error!(route, %error, "cannot start the record writer: not recording");
            return None;
        }
        Some(Self {
            queue,
            sample: settings.sample,
            max_rows: settings.max_rows,
            accepted: AtomicU64::new(0),
            written,
            dropped: AtomicU64::new(0),
            file: settings.file.clone(),
        })
    }

    /// Queues one row, if the sample takes it and the file has room.
    pub fn record(&self, features: &[f64], stage1: f64, stage2: f64, decision: &'static str) {
        if self.sample < 1.0 && fastrand::f64() >= self.sample {
            return;
        }
        if self.accepted.fetch_add(1, Ordering::Relaxed) >= self.max_rows {
            return;
        }
        let line = serde_json::json!({
            "features": features,
            "stage1": stage1,
            "stage2": stage2,
            "decision": decision,
        })
        .to_string();
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.accepted.fetch_sub(1, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
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
            file: file.clone(),
            sample: 1.0,
            max_rows: 3,
        };
        let recorder = Recorder::start(&settings, "r").unwrap();
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
