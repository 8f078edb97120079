//! The one place where stages are wired together, and the only code that
//! starts threads and tasks.
//!
//! ```text
//! tailer thread ──Batch──▶ [bounded channel] ──▶ workers (N tasks) ──Outgoing──▶ [bounded] ──▶ writer thread
//!  (input)                                      filter → extract → dedup →                     (output)
//!                                               lookup → enrich → frame                          │
//!        ▲                                                                                       │ ack
//!        └──────────────── checkpointer ◀────────────────────────────────────────────────────────┘
//! ```
//!
//! Backpressure runs end to end: a slow MISP or a missing socket fills the
//! bounded channels, the tailer blocks on its send, and alerts.json is the
//! buffer. Nothing is dropped to keep up.
//!
//! - [`engine`]: stages 2–6 for one line (sync `begin`, async `finish`);
//! - [`worker`]: a worker task's loop over batches;
//! - [`daemon`]: start, reload, shutdown;
//! - [`supervisor`]: every thread and task, and their deaths;
//! - [`tasks`]: the saver, the error reporter, the metrics publisher;
//! - [`feedback`]: the sightings sender, the ledger thread, the retro hunter;
//! - [`fault`]: injected failures for the supervision tests.

pub mod daemon;
pub mod engine;
pub mod fault;
pub mod feedback;
pub mod supervisor;
pub mod tasks;
pub mod worker;

pub use daemon::{load_dedup, prepare_state_dir, save_dedup, Daemon};
pub use engine::{Engine, Rules, Waiting};
pub use supervisor::{Death, Supervisor};

/// Runs `task` on the current runtime without supervision: for the
/// one-shot commands (`enrich`, `integratord`, `check-config`) and tests,
/// which have nothing to restart.
pub fn detached(task: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::spawn(task);
}
