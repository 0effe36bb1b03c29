//! A gate for log lines about events that may come in floods (a full
//! buffer refusing records): the first passes, then at most one per
//! interval, so a log shows the problem and its running count without
//! drowning in it.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lets one call through per interval.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl Throttle {
    /// A gate that opens at most once per `every`.
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            last: Mutex::new(None),
        }
    }

    /// Whether this call may log: the first one, or the first after the
    /// interval since the last that could.
    pub fn ready(&self) -> bool {
        self.ready_at(Instant::now())
    }

    fn ready_at(&self, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|t| now.saturating_duration_since(t) < self.every) {
            return false;
        }
        *last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_call_passes_then_one_per_interval() {
        let t = Throttle::new(Duration::from_secs(1));
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert!(t.ready_at(at(0)));
        assert!(!t.ready_at(at(999)));
        assert!(t.ready_at(at(1000)));
        assert!(!t.ready_at(at(1500)));
        assert!(t.ready_at(at(2100)));
    }
}
