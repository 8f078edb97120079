//! Stage 7, output: framing events for analysisd and sending them.
//!
//! - [`frame`]: the `1:<location>:<json>` datagram format (pure).
//! - [`writer`]: the task that owns the queue socket and acknowledges lines.

pub mod frame;
pub mod writer;

pub use frame::{frame, header, Datagrams, MANAGER_HEADER, MAX_DATAGRAM};
pub use writer::{Outgoing, Writer};
