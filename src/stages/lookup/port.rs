//! The intelligence port: what the pipeline asks of a source of threat
//! intelligence, whatever it is (MISP queried per value today; a local
//! mirror, or a mirror in front of online queries, next).
//!
//! Like ripgrep's `Matcher`, it is the one boundary the engine is written
//! against: a new source implements this trait and nothing else changes.
//! An implementation knows nothing about alerts or the event format; it
//! answers about an [`Observable`] with MISP attributes.

use super::{Hits, LookupError};
use crate::observable::Observable;
use std::future::Future;

pub trait Intelligence: Send + Sync + 'static {
    /// A worker's own memo in front of the source (no locks, no sharing),
    /// passed back to [`Intelligence::known`] on every call.
    type Memo: Default + Send;

    /// What the source knows about `observable` without waiting, when it
    /// knows it at once (a cache, a memo, a local mirror). `None` sends the
    /// caller to [`Intelligence::lookup`]. This is the hot path: it must
    /// not block, allocate for a hit, or await.
    fn known(&self, observable: &Observable, memo: &mut Self::Memo) -> Option<Hits>;

    /// Everything the source knows about `observable`, waiting as long as
    /// it must. `Err` only when it gives up on this value or shuts down.
    fn lookup(
        &self,
        observable: &Observable,
    ) -> impl Future<Output = Result<Hits, LookupError>> + Send;
}
