//! wazuh-misp: enriches Wazuh alerts with MISP threat intelligence.
//!
//! The source tree is the data flow. [`stages`] holds the pipeline, in the
//! order data flows through it:
//!
//! 1. [`input`]: follow alerts.json (rotation, partial lines, bookmarks);
//! 2. [`filter`]: which alerts are worth looking at;
//! 3. [`extract`]: the observables in an alert, with direction and field;
//!    then [`suppress`] drops the false positives and [`ledger`] records
//!    what was seen, for retro-hunting;
//! 4. [`dedup`]: the `rule:value:direction` window;
//! 5. [`lookup`]: what threat intelligence knows, behind the
//!    [`lookup::Intelligence`] port (today: MISP queried per value, with
//!    cache, single flight, batching and breaker);
//! 6. [`enrich`]: the enriched event, scored, aggregated, size-guarded;
//! 7. [`output`]: framing for analysisd and the queue socket writer;
//! 8. [`sightings`]: what MISP is told back.
//!
//! The domain types the stages pass along are [`observable`] (what was
//! found) and [`alert`] (the parsed alert every stage reads). [`runtime`]
//! is the one place where stages are wired together and the only code that
//! spawns threads and tasks. [`ops`] is what runs beside the pipeline
//! (configuration, state files, metrics, systemd), and [`commands`] the
//! CLI's entry points. ARCHITECTURE.md draws the map.

pub mod alert;
pub mod commands;
pub mod observable;
pub mod ops;
pub mod runtime;
#[cfg(feature = "demo")]
pub mod sim;
pub mod stages;

#[cfg(feature = "demo")]
pub use commands::demo;
pub use commands::{check, enrich_lines, integratord};
pub use ops::{config, false_positives, metrics, ratelog, service, state, stats};
pub use stages::{
    dedup, enrich, extract, filter, input, ledger, lookup, output, sightings, suppress,
};
