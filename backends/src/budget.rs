//! The retry budget: retries may add at most a share of a route's requests,
//! plus a small floor per second, so a failing backend cannot cause a retry
//! storm.
//!
//! # How it works
//! A lock-free token bucket counted in thousandths of a retry. Every request
//! deposits `percent × 10` thousandths; a retry withdraws 1000. A floor of
//! `min_per_second` retries is refilled lazily from the elapsed time. The
//! balance is capped so a quiet hour cannot bank a burst of retries.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const MILLI: i64 = 1000;

/// A shared retry budget (one per route).
#[derive(Debug)]
pub struct RetryBudget {
    /// Thousandths of a retry per request deposited.
    deposit: i64,
    /// Thousandths of a retry added per second as a floor.
    floor_per_second: i64,
    /// Most thousandths the bucket holds.
    cap: i64,
    balance: AtomicI64,
    /// Nanoseconds since `epoch` when the floor was last refilled.
    refilled_at: AtomicU64,
    epoch: Instant,
}

impl RetryBudget {
    /// A budget of `percent` of requests plus `min_per_second` retries.
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        let floor_per_second = i64::from(min_per_second) * MILLI;
        Self {
            deposit: i64::from(percent) * MILLI / 100,
            floor_per_second,
            // Ten seconds of the floor, or a thousand retries' worth of
            // deposits, whichever is larger.
            cap: (floor_per_second * 10).max(1000 * MILLI),
            balance: AtomicI64::new(floor_per_second),
            refilled_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Records a request (call once per request, not per attempt).
    pub fn deposit(&self) {
        if self.deposit > 0 {
            self.add(self.deposit);
        }
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.refill();
        let mut current = self.balance.load(Ordering::Relaxed);
        loop {
            if current < MILLI {
                return false;
            }
            match self.balance.compare_exchange_weak(
                current,
                current - MILLI,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    fn refill(&self) {
        if self.floor_per_second == 0 {
            return;
        }
        let now = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64;
        let last = self.refilled_at.load(Ordering::Relaxed);
        let elapsed = Duration::from_nanos(now.saturating_sub(last));
        // Refill in whole milliseconds so rounding does not leak tokens.
        let amount = (self.floor_per_second as i128 * elapsed.as_millis() as i128 / 1000) as i64;
        if amount > 0
            && self
                .refilled_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.add(amount);
        }
    }

    fn add(&self, amount: i64) {
        let mut current = self.balance.load(Ordering::Relaxed);
        loop {
            let next = (current + amount).min(self.cap);
            match self.balance.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_capped_at_the_share_of_requests() {
        let budget = RetryBudget::new(20, 0);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw() {
                retries += 1;
            }
        }
        assert_eq!(retries, 200);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_refills_with_time() {
        let budget = RetryBudget::new(0, 10);
        let initial = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(initial, 10, "starts with one second of floor");
        assert!(!budget.withdraw());
        tokio::time::advance(Duration::from_millis(500)).await;
        let refilled = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(refilled, 5);
    }
}
