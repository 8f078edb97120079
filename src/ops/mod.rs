//! What runs beside the pipeline rather than in it: configuration, state
//! files, counters and metrics, systemd notification, rate-limited logs.

pub mod config;
pub mod false_positives;
pub mod metrics;
pub mod ratelog;
pub mod service;
pub mod sqlite;
pub mod state;
pub mod stats;
