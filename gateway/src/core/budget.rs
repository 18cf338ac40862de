//! The gateway-wide budget for request bytes held in memory at once.
//!
//! Each request's buffered body is bounded by `max_body_bytes`, but many
//! requests at once are not: sixteen 4 MiB tensors, or their JSON
//! expansions, add up. Every buffer the gateway fills from a client (a
//! body read whole, a decompressed or converted body) draws on one budget,
//! `limits.max_buffered_bytes`, while it fills; past it the request gets a
//! 503 with `Retry-After` instead of the process growing. The budget is
//! returned when the last reference to the buffer goes: the bytes carry
//! their reservation with them ([`Bytes::from_owner`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::core::errors::GatewayError;

/// Bytes in memory on behalf of requests, against a limit.
#[derive(Debug)]
pub struct BufferBudget {
    used: AtomicU64,
    limit: AtomicU64,
}

impl Default for BufferBudget {
    fn default() -> Self {
        Self {
            used: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
        }
    }
}

impl BufferBudget {
    /// Sets the limit (at every snapshot build; what is held stays held).
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes currently reserved.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation that grows as a buffer fills.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    /// `bytes` (already in memory, e.g. a converted body) charged to the
    /// budget for as long as they live.
    pub fn account(self: &Arc<Self>, bytes: Bytes) -> Result<Bytes, GatewayError> {
        let mut reservation = self.reservation();
        reservation.grow(bytes.len())?;
        Ok(reservation.attach(bytes))
    }
}

/// Part of the budget held by one buffer; returned on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BufferBudget>,
    bytes: u64,
}

impl Reservation {
    /// Reserves `more` bytes, or refuses if the budget would be exceeded.
    pub fn grow(&mut self, more: usize) -> Result<(), GatewayError> {
        let more = more as u64;
        let limit = self.budget.limit.load(Ordering::Relaxed);
        self.budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more).filter(|&total| total <= limit)
            })
            .map_err(|_| GatewayError::BufferBudget)?;
        self.bytes += more;
        Ok(())
    }

    /// `bytes` that hold this reservation until their last clone is gone.
    pub fn attach(self, bytes: Bytes) -> Bytes {
        if self.bytes == 0 {
            return bytes;
        }
        Bytes::from_owner(Accounted {
            bytes,
            _reservation: self,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Bytes with the reservation that pays for them.
struct Accounted {
    bytes: Bytes,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Accounted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_draw_on_one_budget_until_their_last_clone_is_gone() {
        let budget = Arc::new(BufferBudget::default());
        budget.set_limit(10);
        let a = budget.account(Bytes::from_static(b"0123456")).unwrap();
        assert_eq!(budget.used(), 7);
        let refused = budget.account(Bytes::from_static(b"0123"));
        assert!(matches!(refused, Err(GatewayError::BufferBudget)));
        assert_eq!(budget.used(), 7, "a refusal reserves nothing");
        let clone = a.slice(1..3);
        drop(a);
        assert_eq!(budget.used(), 7, "a slice still holds the buffer");
        drop(clone);
        assert_eq!(budget.used(), 0);
        let mut filling = budget.reservation();
        filling.grow(6).unwrap();
        assert!(filling.grow(5).is_err());
        drop(filling);
        assert_eq!(budget.used(), 0, "a buffer given up returns its part");
    }
}
