//! Shadow copies: after a call is answered, each shadow version of its model
//! gets the same assembled input on a task of its own. The pool bounds how
//! many run at once; when it is full the copy is dropped and counted, so a
//! slow or failing shadow never holds up, slows or fails a caller.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What happened to shadow copies of one (model, version).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShadowCounts {
    /// Answered and logged.
    pub ok: u64,
    /// The model-server call failed or timed out.
    pub failed: u64,
    /// Not sent: the pool was full.
    pub dropped: u64,
}

/// The bounded pool of shadow calls.
pub struct ShadowPool {
    permits: Arc<Semaphore>,
    size: u32,
    timeout: Duration,
    counts: Mutex<BTreeMap<(String, String), ShadowCounts>>,
}

impl ShadowPool {
    /// A pool of `size` concurrent calls, each bounded by `timeout`.
    pub fn new(size: u32, timeout: Duration) -> Self {
        ShadowPool {
            permits: Arc::new(Semaphore::new(size as usize)),
            size,
            timeout,
            counts: Mutex::new(BTreeMap::new()),
        }
    }

    /// The deadline of one shadow call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A slot for one copy, or `None` (counted as dropped) when all are busy.
    pub fn try_start(&self, model: &str, version: &str) -> Option<OwnedSemaphorePermit> {
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                self.count(model, version, |c| c.dropped += 1);
                None
            }
        }
    }

    /// Records the outcome of one copy.
    pub fn finished(&self, model: &str, version: &str, ok: bool) {
        self.count(model, version, |c| {
            if ok {
                c.ok += 1;
            } else {
                c.failed += 1;
            }
        });
    }

    fn count(&self, model: &str, version: &str, f: impl FnOnce(&mut ShadowCounts)) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        f(counts
            .entry((model.to_owned(), version.to_owned()))
            .or_default());
    }

    /// Counts per (model, version), for `/metrics`.
    pub fn counts(&self) -> BTreeMap<(String, String), ShadowCounts> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Copies in flight now.
    pub fn in_flight(&self) -> usize {
        (self.size as usize).saturating_sub(self.permits.available_permits())
    }

    /// Waits (at most `deadline`) for the copies in flight to finish, so
    /// their log records are queued before the log is closed.
    pub async fn drain(&self, deadline: Duration) -> bool {
        let all = self.permits.acquire_many(self.size);
        matches!(tokio::time::timeout(deadline, all).await, Ok(Ok(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_pool_drops_and_counts() {
        let pool = ShadowPool::new(2, Duration::from_millis(100));
        let a = pool.try_start("m", "3");
        let b = pool.try_start("m", "3");
        assert!(a.is_some() && b.is_some());
        assert!(pool.try_start("m", "3").is_none());
        assert_eq!(pool.in_flight(), 2);
        drop(a);
        pool.finished("m", "3", true);
        assert!(pool.try_start("m", "3").is_some());
        assert_eq!(
            pool.counts().get(&("m".into(), "3".into())),
            Some(&ShadowCounts {
                ok: 1,
                failed: 0,
                dropped: 1
            })
        );
        assert!(!pool.drain(Duration::from_millis(20)).await);
        drop(b);
        assert!(pool.drain(Duration::from_millis(20)).await);
    }
}
