//! The checkpointer: which byte of which file every alert before has been
//! fully handled (sent to the queue, or deliberately skipped).
//!
//! Lines finish out of order (workers run concurrently, MISP answers when it
//! answers), so the safe position is the start of the oldest line still in
//! flight, or the read frontier when none is. Like Vector's acknowledgements,
//! a line counts as done only once the writer has sent its events; the
//! bookmark saved from this position can therefore only lag, never skip.

use super::fingerprint::FileId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Where a line sits: which opened file (a generation number that grows at
/// each rotation) and its byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinePos {
    pub generation: u64,
    pub start: u64,
    pub end: u64,
}

/// A saved reading position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bookmark {
    pub file: FileId,
    pub offset: u64,
}

#[derive(Default)]
struct Inner {
    in_flight: BTreeSet<(u64, u64)>,
    frontier: Option<(u64, u64)>,
    files: BTreeMap<u64, FileId>,
}

#[derive(Default)]
pub struct Checkpointer {
    inner: Mutex<Inner>,
}

impl Checkpointer {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere must not stop bookmarking; the data stays consistent
        // because every update is a single insert or remove.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tailer opened `file` as `generation`, reading from `offset`.
    pub fn opened(&self, generation: u64, file: FileId, offset: u64) {
        let mut g = self.lock();
        g.files.insert(generation, file);
        if g.frontier.is_none_or(|f| f.0 < generation) {
            g.frontier = Some((generation, offset));
        }
    }

    /// The tailer handed this line to the workers.
    pub fn dispatched(&self, pos: LinePos) {
        self.lock().in_flight.insert((pos.generation, pos.start));
    }

    /// Everything before `offset` in `generation` has been read (and either
    /// dispatched or skipped).
    pub fn read_up_to(&self, generation: u64, offset: u64) {
        let mut g = self.lock();
        if g.frontier.is_none_or(|f| f <= (generation, offset)) {
            g.frontier = Some((generation, offset));
        }
    }

    /// The line's events were sent, or it was skipped.
    pub fn done(&self, pos: LinePos) {
        self.lock().in_flight.remove(&(pos.generation, pos.start));
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// The position below which everything is handled.
    pub fn committed(&self) -> Option<Bookmark> {
        let mut g = self.lock();
        let (generation, offset) = match g.in_flight.first() {
            Some(&p) => p,
            None => g.frontier?,
        };
        // Older files are finished; forget them.
        g.files = g.files.split_off(&generation);
        let file = g.files.get(&generation)?.clone();
        Some(Bookmark { file, offset })
    }
}

/// The acknowledgement of one dispatched batch of lines, shared by everyone
/// still working on part of it: the writer for the events ready at once,
/// and one holder per line that waits on MISP. The batch is done when every
/// holder has called [`Ack::finish`]. A holder dropped without finishing
/// (shutdown mid-lookup, a task gone) leaves the batch in flight, so it is
/// read again after a restart: forgetting is safe, finishing early is not.
pub struct Ack(Arc<AckInner>);

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Ack").field(&self.0.pos).finish()
    }
}

struct AckInner {
    pos: LinePos,
    checkpoints: Arc<Checkpointer>,
    holders: AtomicUsize,
}

impl Ack {
    /// Records `pos` as dispatched; the returned ack is its one holder.
    pub fn dispatch(checkpoints: &Arc<Checkpointer>, pos: LinePos) -> Ack {
        checkpoints.dispatched(pos);
        Ack(Arc::new(AckInner {
            pos,
            checkpoints: checkpoints.clone(),
            holders: AtomicUsize::new(1),
        }))
    }

    /// One more holder, who must finish too.
    pub fn share(&self) -> Ack {
        self.0.holders.fetch_add(1, Ordering::Relaxed);
        Ack(self.0.clone())
    }

    /// This holder's part is done; the last one marks the batch done.
    pub fn finish(self) {
        // AcqRel: the last holder sees every other holder's work as done.
        if self.0.holders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.checkpoints.done(self.0.pos);
        }
    }

    pub fn pos(&self) -> LinePos {
        self.0.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> FileId {
        FileId {
            dev: 1,
            ino,
            fingerprint: String::new(),
            fingerprint_len: 0,
        }
    }

    #[test]
    fn out_of_order_completion_holds_the_oldest() {
        let c = Checkpointer::new();
        c.opened(0, id(10), 0);
        let l = |s, e| LinePos {
            generation: 0,
            start: s,
            end: e,
        };
        for (s, e) in [(0, 10), (10, 20), (20, 30)] {
            c.dispatched(l(s, e));
        }
        c.read_up_to(0, 30);
        assert_eq!(c.committed().unwrap().offset, 0);
        c.done(l(10, 20));
        assert_eq!(c.committed().unwrap().offset, 0);
        c.done(l(0, 10));
        assert_eq!(c.committed().unwrap().offset, 20);
        c.done(l(20, 30));
        assert_eq!(c.committed().unwrap().offset, 30);
    }

    #[test]
    fn a_batch_is_done_when_its_last_holder_finishes() {
        let c = Arc::new(Checkpointer::new());
        c.opened(0, id(10), 0);
        let batch = Ack::dispatch(
            &c,
            LinePos {
                generation: 0,
                start: 0,
                end: 300,
            },
        );
        c.read_up_to(0, 300);
        let waiting = batch.share();
        let forgotten = batch.share();
        batch.finish();
        assert_eq!(c.committed().unwrap().offset, 0);
        waiting.finish();
        assert_eq!(c.committed().unwrap().offset, 0);
        drop(forgotten);
        assert_eq!(
            c.committed().unwrap().offset,
            0,
            "a holder dropped without finishing keeps the batch in flight"
        );
        assert_eq!(c.in_flight(), 1);
    }

    #[test]
    fn rotation_keeps_old_file_until_its_lines_are_done() {
        let c = Checkpointer::new();
        c.opened(0, id(10), 0);
        let old = LinePos {
            generation: 0,
            start: 5,
            end: 9,
        };
        c.dispatched(old);
        c.read_up_to(0, 9);
        c.opened(1, id(11), 0);
        c.read_up_to(1, 100);
        assert_eq!(
            c.committed().unwrap(),
            Bookmark {
                file: id(10),
                offset: 5
            }
        );
        c.done(old);
        assert_eq!(
            c.committed().unwrap(),
            Bookmark {
                file: id(11),
                offset: 100
            }
        );
    }
}
