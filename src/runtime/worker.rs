//! A worker: takes batches of lines and runs them through the [`Engine`].
//! Lines whose observables are all known are finished at once; the others
//! wait on intelligence concurrently (up to `max_waiting` per worker), so
//! many misses share the batcher's requests while CPU work stays on few
//! threads.

use super::engine::{Engine, Waiting};
use super::fault;
use crate::input::{Ack, Batch};
use crate::lookup::Intelligence;
use crate::output::Outgoing;
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The writer is gone: nothing a worker produces can be sent any more.
#[derive(Debug)]
pub struct WriterGone;

/// Runs until the line channel is closed and every waiting line is done,
/// or until the writer is gone: a worker never takes batches it cannot
/// deliver (their acks are dropped unfinished, so they are read again
/// after the restart).
pub async fn run<I: Intelligence>(
    engine: Arc<Engine<I>>,
    batches: async_channel::Receiver<Batch>,
    out: mpsc::Sender<Outgoing>,
    max_waiting: usize,
) -> Result<(), WriterGone> {
    let finish = |waiting: Waiting, ack: Ack| {
        let engine = engine.clone();
        let out = out.clone();
        async move {
            let mut produced = Outgoing::default();
            match engine.finish(waiting, &mut produced).await {
                Ok(()) => send(&out, produced, ack).await,
                // Shutting down: the ack is dropped unfinished, so the line
                // is read again after the restart.
                Err(_abandoned) => Ok(()),
            }
        }
    };
    let mut waiting = FuturesUnordered::new();
    let mut memo = I::Memo::default();
    let mut out_per_line = 0;
    let mut open = true;
    while open || !waiting.is_empty() {
        tokio::select! {
            next = batches.recv(), if open && waiting.len() < max_waiting => match next {
                Ok(batch) => {
                    engine.stats.batches_queued.fetch_sub(1, Ordering::Relaxed);
                    fault::inject(fault::Component::Worker);
                    let mut ready = Outgoing::default();
                    // Sized from the last batches, so the buffer is not
                    // regrown (and copied) several times per batch.
                    ready.datagrams.reserve((out_per_line * batch.len()).min(1 << 20));
                    for (offset, line) in batch.lines() {
                        if let Some(w) = engine.begin(line, Some(offset), &mut memo, &mut ready) {
                            waiting.push(finish(w, batch.ack.share()));
                        }
                    }
                    let per_line = ready.datagrams.bytes_len() / batch.len().max(1);
                    out_per_line = (out_per_line * 3 + per_line) / 4;
                    send(&out, ready, batch.ack).await?;
                }
                Err(_) => open = false,
            },
            Some(sent) = waiting.next(), if !waiting.is_empty() => sent?,
        }
    }
    Ok(())
}

/// Hands events to the writer, which finishes `ack` once they are sent;
/// with no events the part is done at once.
async fn send(
    out: &mpsc::Sender<Outgoing>,
    mut produced: Outgoing,
    ack: Ack,
) -> Result<(), WriterGone> {
    if produced.datagrams.is_empty() {
        ack.finish();
        return Ok(());
    }
    produced.ack = Some(ack);
    out.send(produced).await.map_err(|_| WriterGone)
}
