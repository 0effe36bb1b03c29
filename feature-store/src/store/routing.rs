//! The gateway's routing documents: per model an opaque (JSON) document and
//! a revision, changed only by compare-and-set so two admins on two gateway
//! replicas never overwrite each other's change unseen.

use std::future::Future;

use super::StoreError;

/// A model's routing as the gateway stores it: an opaque (JSON) document and
/// a revision that grows by one with every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingRecord {
    /// 1 for the first document, then +1 per change.
    pub revision: i64,
    /// The gateway's document.
    pub document: String,
}

impl RoutingRecord {
    /// The record saved after the one with revision `previous` (`None`: the
    /// first), holding `document`.
    pub fn after(previous: Option<i64>, document: String) -> Self {
        Self {
            revision: previous.map_or(1, |r| r + 1),
            document,
        }
    }

    /// The revision this one replaces (`None`: it is the first).
    pub fn previous(&self) -> Option<i64> {
        (self.revision > 1).then(|| self.revision - 1)
    }
}

/// Routing documents per model.
pub trait RoutingStore: Send + Sync + 'static {
    /// The gateway's routing document of `model` with its revision, if one
    /// was ever saved.
    fn get_routing(
        &self,
        model: &str,
    ) -> impl Future<Output = Result<Option<RoutingRecord>, StoreError>> + Send;

    /// Saves `next` as the routing of `model` if the stored revision is
    /// still the one `next` replaces ([`RoutingRecord::previous`]; revision
    /// 1: nothing stored yet). Returns `false`, writing nothing, when another
    /// writer changed it first.
    fn put_routing(
        &self,
        model: &str,
        next: &RoutingRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
