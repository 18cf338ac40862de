//! Route slots: bounded concurrency per route, load shedding without a
//! queue. A slot is held by the request and then by its response body.

use std::sync::Arc;

/// Bounded concurrency for one route: load shedding without a queue.
#[derive(Debug)]
pub struct Admission {
    /// Changes with reloads; the in-flight count carries over.
    limit: std::sync::atomic::AtomicUsize,
    in_flight: std::sync::atomic::AtomicUsize,
}

/// One admitted request; releases its slot when dropped.
#[derive(Debug)]
pub struct Admitted(Arc<Admission>);

impl Admission {
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.into(),
            in_flight: Default::default(),
        }
    }

    /// Changes the limit (a reload); requests in flight keep their slots.
    pub fn set_limit(&self, limit: usize) {
        self.limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
    }

    /// (in flight, limit) now.
    pub fn load(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering;
        (
            self.in_flight.load(Ordering::Relaxed),
            self.limit.load(Ordering::Relaxed),
        )
    }

    /// A slot, or `None` when the route is full.
    pub fn try_admit(self: &Arc<Self>) -> Option<Admitted> {
        use std::sync::atomic::Ordering;
        let previous = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if previous >= self.limit.load(Ordering::Relaxed) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admitted(Arc::clone(self)))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
