//! Whether the process is draining: set on SIGTERM, when readiness starts
//! failing so a load balancer (a Kubernetes Service) stops sending new
//! traffic while the gateway still serves what arrives.

use std::sync::atomic::{AtomicBool, Ordering};

static DRAINING: AtomicBool = AtomicBool::new(false);

/// Readiness fails from now on; serving goes on.
pub fn begin_draining() {
    DRAINING.store(true, Ordering::Relaxed);
}

/// Whether readiness should fail.
pub fn is_draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}
