//! How long this node's partition leases hold, shared between the
//! coordinator that extends them and the consumers that must stop
//! acknowledging once they lapse. Depends on nothing else in the engine, so
//! both can use it without a module cycle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Until when the node's partition leases hold, as its coordinator last
/// confirmed: shared by the coordinator (which extends it with every
/// acknowledged heartbeat) and every partition consumer (which checks it
/// before acknowledging anything).
#[derive(Debug, Clone, Default)]
pub struct LeaseValidity(Arc<Mutex<Option<Instant>>>);

impl LeaseValidity {
    /// Leases that never lapse: for consumers no lease guards (a single
    /// node's tests, runner pools).
    pub fn unbounded() -> LeaseValidity {
        LeaseValidity(Arc::new(Mutex::new(Some(Instant::now() + UNBOUNDED))))
    }

    /// The leases hold until `until`.
    pub fn hold_until(&self, until: Instant) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
    }

    /// The leases are given up now.
    pub fn lapse(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether the leases hold at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| now < until)
    }

    /// Whether the leases hold now.
    pub fn valid(&self) -> bool {
        self.valid_at(Instant::now())
    }
}

/// A hundred years: "never", as an `Instant` can hold it. Local: not a
/// timing but how this module writes "no deadline".
const UNBOUNDED: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
