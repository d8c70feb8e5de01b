//! Masking: rewriting the records of topics that MaskingRules cover, before they reach a
//! consumer (or the brokers). Pure code, no I/O: the data path hands it record sets and plans.
//!
//! - [`plan`](MaskingPlan): the compiled rules of one topic and flow, ready to run (paths
//!   parsed, regexes built, keys loaded);
//! - [`mask_value`]: one record value, JSON (field paths and detectors on the leaves), text
//!   (detectors) or binary (pass or redact);
//! - [`mask_batch`]: a Produce request's or Fetch response's record set, decoded in any
//!   compression, masked, and encoded again with the same compression and valid CRCs.
//!
//! Inside: `detect` finds sensitive values in text, `strategy` rewrites them, `json` walks JSON
//! without building a tree, `compression` bounds decompression.

mod batch;
pub mod budget;
pub(crate) mod compression;
mod detect;
mod json;
mod plan;
mod strategy;
mod value;

#[cfg(test)]
mod tests;

pub use batch::{
    MaskError, MaskStats, PARALLEL_FROM, mask_batch, mask_batch_within, mask_record_set,
};
pub use plan::{DEFAULT_MAX_DECOMPRESSED_BYTES, MaskingKeys, MaskingPlan, PlanError};
pub use value::{Masked, mask_value};
