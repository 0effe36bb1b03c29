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

/// Routing documents per model.
pub trait RoutingStore: Send + Sync + 'static {
    /// The gateway's routing document of `model` with its revision, if one
    /// was ever saved.
    fn get_routing(
        &self,
        model: &str,
    ) -> impl Future<Output = Result<Option<RoutingRecord>, StoreError>> + Send;

    /// Saves `document` as the routing of `model` if the stored revision is
    /// still `expected` (`None`: nothing stored yet); the new revision is
    /// `expected + 1` (or 1). Returns `false`, writing nothing, when another
    /// writer changed it first.
    fn put_routing(
        &self,
        model: &str,
        expected: Option<i64>,
        document: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
