//! The CLI's commands other than `run`, as library functions so that they
//! can be tested: `check-config`, `enrich` ([`enrich_lines`]), `integratord`, `demo`,
//! `mirror status` and `lookup` ([`mirror`]), `false-positive` and `hunt`
//! ([`feedback`]).

pub mod check;
#[cfg(feature = "demo")]
pub mod demo;
pub mod enrich_lines;
pub mod feedback;
pub mod integratord;
pub mod mirror;
