//! Whose fault a failed attempt was: the endpoint's, or the request's.
//!
//! A failure counts against an endpoint (toward its ejection) only once the
//! request has shown it is not the cause. One failed attempt is held back
//! until the next attempt of the same request ends: if that attempt, on
//! another endpoint, fails the same way (the same status, or the same kind
//! of broken connection), the request is the common factor (a "query of
//! death" that a model server answers with 500 or crashes on), so neither
//! endpoint is blamed and the request is not retried further. Any other
//! ending (a success, a different failure, no further attempt) blames the
//! held-back endpoint as usual.

use std::sync::Arc;

use cascadia_backends::{BackendPool, Endpoint, Outcome, UpstreamErrorKind};
use http::StatusCode;
use tokio::time::Instant;

/// How an attempt failed, compared between attempts of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureSignature {
    /// The endpoint answered with this failure status.
    Status(StatusCode),
    /// The exchange broke after the connection was made.
    Error(UpstreamErrorKind),
}

impl FailureSignature {
    /// The signature of a transport error, or `None` for one the request
    /// cannot have caused (a refused connection, an injected drill fault):
    /// those always count against the endpoint.
    pub(crate) fn of_error(kind: UpstreamErrorKind) -> Option<Self> {
        match kind {
            UpstreamErrorKind::Connect | UpstreamErrorKind::RequestBody => None,
            UpstreamErrorKind::Timeout | UpstreamErrorKind::Protocol => Some(Self::Error(kind)),
        }
    }
}

/// One attempt's failure, as reported by the attempt itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Failure {
    /// How it failed, when the request could be the cause.
    pub signature: Option<FailureSignature>,
    /// Whether it counts against the endpoint under its pool's outlier
    /// policy (and so is worth retrying elsewhere). A 500 under the default
    /// policy does not count, but still tells a repeat apart.
    pub counts: bool,
}

/// The failures of one request's attempts, blamed on their endpoints when
/// the request ends or the next attempt shows they were the endpoint's.
/// Dropping the ledger settles what it holds, so every exit of the attempt
/// loop (an early return, a cancelled request) blames exactly once.
#[derive(Default)]
pub(crate) struct FailureLedger<'t> {
    held: Option<Held<'t>>,
}

struct Held<'t> {
    pool: &'t BackendPool,
    endpoint: &'t Arc<Endpoint>,
    signature: Option<FailureSignature>,
}

/// What the ledger made of a failure.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Held back (when it counts): the endpoint may yet be blamed; a retry
    /// may follow.
    Held,
    /// The previous attempt failed the same way elsewhere: the request's
    /// fault. Nothing is blamed and nothing more is tried.
    Request,
}

impl<'t> FailureLedger<'t> {
    /// Takes a failed attempt at `endpoint` of `pool`. A failure that does
    /// not count is never blamed, but still shows a held one repeated.
    pub(crate) fn failed(
        &mut self,
        pool: &'t BackendPool,
        endpoint: &'t Arc<Endpoint>,
        failure: Failure,
    ) -> Verdict {
        if let Some(held) = &self.held {
            let repeated = failure.signature.is_some()
                && held.signature == failure.signature
                && !Arc::ptr_eq(held.endpoint, endpoint);
            if repeated {
                self.held = None;
                return Verdict::Request;
            }
        }
        self.settle();
        if failure.counts {
            self.held = Some(Held {
                pool,
                endpoint,
                signature: failure.signature,
            });
        }
        Verdict::Held
    }

    /// Blames the held-back failure on its endpoint.
    pub(crate) fn settle(&mut self) {
        if let Some(held) = self.held.take() {
            held.pool
                .record(held.endpoint, Outcome::Failure, Instant::now());
        }
    }
}

impl Drop for FailureLedger<'_> {
    fn drop(&mut self) {
        self.settle();
    }
}
