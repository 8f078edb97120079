//! wazuh-misp: enriches Wazuh alerts with MISP threat intelligence.
//!
//! The modules follow the pipeline, in the order data flows through it:
//!
//! 1. [`input`]: follow alerts.json (rotation, partial lines, bookmarks);
//! 2. [`filter`]: which alerts are worth looking at;
//! 3. [`extract`]: the public IPs in an alert, with direction and field;
//! 4. [`dedup`]: the `rule:ip:direction` window;
//! 5. [`lookup`]: MISP, with cache, single flight, batching and breaker;
//! 6. [`enrich`]: the enriched event, scored, aggregated, size-guarded;
//! 7. [`output`]: framing for analysisd and the queue socket writer.
//!
//! Stages 2–6 share one parsed form of the alert, [`alert`]. [`pipeline`]
//! wires the stages together; ARCHITECTURE.md draws the map.

pub mod alert;
pub mod check;
pub mod config;
pub mod dedup;
pub mod demo;
pub mod enrich;
pub mod extract;
pub mod filter;
pub mod input;
pub mod integratord;
pub mod lookup;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod ratelog;
pub mod service;
pub mod sim;
pub mod state;
pub mod stats;
