//! The pipeline's stages, in data-flow order: [`input`] → [`filter`] →
//! [`extract`] → [`suppress`] (→ [`ledger`]) → [`dedup`] → [`lookup`] →
//! [`enrich`] → [`output`] (→ [`sightings`]).
//!
//! Everything here but `input`'s tailer, `lookup`'s HTTP client and
//! batcher, and `output`'s writer is plain synchronous code: values in,
//! values out, the clock and intelligence's answer passed as arguments.
//! None of it spawns anything; [`crate::runtime`] does.

pub mod dedup;
pub mod enrich;
pub mod extract;
pub mod filter;
pub mod input;
pub mod ledger;
pub mod lookup;
pub mod output;
pub mod sightings;
pub mod suppress;
