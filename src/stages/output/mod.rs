//! Stage 7, output: framing events for analysisd and sending them.
//!
//! - [`frame`]: the `1:<location>:<json>` datagram format (pure).
//! - [`writer`]: the thread that owns the queue socket and acknowledges lines.
//! - [`ndjson`]: Wazuh 5's batch format for its HTTP ingestion (pure), and
//!   [`http_writer`], the thread that posts them.

pub mod frame;
pub mod http_writer;
pub mod ndjson;
pub mod writer;

pub use frame::{frame, header, Datagrams, MANAGER_HEADER, MAX_DATAGRAM};
pub use http_writer::HttpWriter;
pub use writer::{Outgoing, Writer};
