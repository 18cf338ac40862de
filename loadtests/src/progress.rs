//! The live progress line on stderr: once a second, elapsed time, phase, sent, ok, errors and
//! the p99 of the last second.
//!
//! Counters are atomics bumped by the pacer and the connections; the last second's latencies
//! go into one small mutex-guarded histogram that the printer swaps out each tick. Both cover
//! warm-up too (the line says which phase it is in). When off, none of this exists: the run
//! holds an `Option<Arc<Live>>`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Shared live counters, all requests (warm-up included) since the start.
#[derive(Debug)]
pub struct Live {
    sent: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    /// 2xx latencies (µs) completed since the last tick.
    recent: Mutex<Histogram<u32>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            recent: Mutex::new(Histogram::new(2).expect("2 significant figures is valid")),
        }
    }
}

impl Live {
    pub fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ok(&self, latency_us: u64) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        crate::timeline::record_growing(&mut recent, latency_us.max(1));
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counters so far, and the p99 since the previous snapshot (which it resets).
    pub fn snapshot(&self) -> Snapshot {
        let p99_us = {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let p99 = (!recent.is_empty()).then(|| recent.value_at_quantile(0.99));
            recent.reset();
            p99
        };
        Snapshot {
            sent: self.sent.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            p99_us,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Snapshot {
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    /// `None` when nothing succeeded in the last interval.
    pub p99_us: Option<u64>,
}

/// One progress line, without a line ending.
pub fn format_line(elapsed: Duration, phase: &str, s: &Snapshot) -> String {
    let p99 = s.p99_us.map_or_else(|| "-".to_owned(), format_us);
    format!(
        "{:>6.1}s {phase:<22} sent {:>8}  ok {:>8}  err {:>6}  p99(1s) {p99}",
        elapsed.as_secs_f64(),
        s.sent,
        s.ok,
        s.errors
    )
}

/// `850µs`, `12.3ms`, `1.20s`.
pub fn format_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// Writes progress lines to stderr. On a terminal each line overwrites the previous one
/// (`\r`); otherwise (e.g. `--progress 2>log`) each is a line of its own.
#[derive(Clone, Debug)]
pub struct Printer {
    tty: bool,
    wrote: bool,
}

impl Printer {
    pub fn new(tty: bool) -> Self {
        Printer { tty, wrote: false }
    }

    pub fn print(&mut self, line: &str) {
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.wrote = true;
    }

    /// Ends the overwritten line so the report starts on a fresh one.
    pub fn finish(&mut self) {
        if self.tty && self.wrote {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_reset_the_interval() {
        let live = Live::default();
        for _ in 0..3 {
            live.sent();
        }
        live.ok(100);
        live.ok(2_000);
        live.error();
        let s = live.snapshot();
        assert_eq!((s.sent, s.ok, s.errors), (3, 2, 1));
        assert!((1_990..=2_010).contains(&s.p99_us.unwrap()));
        assert_eq!(live.snapshot().p99_us, None);
    }

    #[test]
    fn line_format() {
        let s = Snapshot {
            sent: 1000,
            ok: 990,
            errors: 10,
            p99_us: Some(1_240),
        };
        let line = format_line(Duration::from_millis(12_340), "step 1/3 500 rps", &s);
        assert!(line.starts_with("  12.3s step 1/3 500 rps"), "{line}");
        assert!(line.contains("sent     1000"), "{line}");
        assert!(line.ends_with("p99(1s) 1.2ms"), "{line}");
        assert_eq!(format_us(850), "850µs");
        assert_eq!(format_us(2_500_000), "2.50s");
    }
}
