//! The CLI's commands other than `run`, as library functions so that they
//! can be tested: `check-config`, `enrich` ([`enrich_lines`]), `integratord`, `demo`.

pub mod check;
#[cfg(feature = "demo")]
pub mod demo;
pub mod enrich_lines;
pub mod integratord;
