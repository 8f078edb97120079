//! Stage 1, input: following alerts.json (or Wazuh 5's event stream) and remembering how far we got.
//!
//! - [`tail`]: the tailer thread (rotation, partial lines, bad lines).
//! - [`checkpoint`]: which position is fully handled, from the writer's acks.
//! - [`fingerprint`]: recognising a file again after a restart.
//! - [`bookmark`]: the saved position in `state_dir/bookmark.json`.
//! - [`rotated`]: the files Wazuh rotated the stream into, oldest first.
//! - [`source`]: reading a file, plain or gzipped since its rotation.
//! - [`spaces`]: Wazuh 5's event streams, one per space.

pub mod bookmark;
pub mod checkpoint;
pub mod fingerprint;
pub mod rotated;
pub mod source;
pub mod spaces;
pub mod tail;

pub use checkpoint::{Ack, Bookmark, Checkpointer, LinePos};
pub use tail::{Batch, Start, TailOptions, Tailer};
