//! The intelligence the daemon runs with, chosen by `misp.mode`: MISP
//! queried per value ([`Lookup`]) or the local mirror ([`Mirror`]).

use super::mirror::Mirror;
use super::{Hits, Intelligence, Lookup, LookupError, Recent};
use crate::observable::Observable;
use futures::future::Either;

#[derive(Clone)]
pub enum Source {
    Query(Lookup),
    Mirror(Mirror),
}

impl Source {
    /// The first server's query-mode lookup: in mirror mode, the one that
    /// fetches its hits' details. Its breaker and given-up values are what
    /// the error reporter tells Wazuh about.
    pub fn primary(&self) -> &Lookup {
        match self {
            Source::Query(l) => l,
            Source::Mirror(m) => m.primary(),
        }
    }

    /// Since when MISP has been failing, and how: the first server's
    /// lookups, else any server's syncs.
    pub fn failing(&self) -> Option<(std::time::SystemTime, super::breaker::LastError)> {
        self.primary().breaker().failing().or_else(|| {
            self.mirror()?
                .servers()
                .iter()
                .find_map(|s| s.sync_failing())
        })
    }

    pub fn mirror(&self) -> Option<&Mirror> {
        match self {
            Source::Mirror(m) => Some(m),
            Source::Query(_) => None,
        }
    }
}

impl Intelligence for Source {
    type Memo = Recent;

    fn known(&self, observable: &Observable, memo: &mut Recent) -> Option<Hits> {
        match self {
            Source::Query(l) => l.known(observable, memo),
            Source::Mirror(m) => m.known(observable, memo),
        }
    }

    fn lookup(
        &self,
        observable: &Observable,
    ) -> impl std::future::Future<Output = Result<Hits, LookupError>> + Send {
        match self {
            Source::Query(l) => Either::Left(l.get(observable)),
            Source::Mirror(m) => Either::Right(m.answer(observable)),
        }
    }
}
