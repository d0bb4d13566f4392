//! qtier-profiles: which AWS instance is the cheapest that meets each service tier.
//!
//! - [`catalog`]: the instance catalog (hardware, prices with their source and date), TOML data
//!   embedded as the default and replaceable.
//! - [`tiers`]: the service tiers' latency limits, spot policy and required throughput.
//! - [`prices`]: refreshing the catalog's prices from an AWS Price List offer file.
//! - [`workload`]: the roofline model of an encoder forward (FLOPs and bytes per operation).
//! - [`decoder`]: decoder TTFT and TPOT, measured and projected from TPOT's memory bound.
//! - [`gpus`]: peaks of the GPUs a measured report may come from.
//! - [`projection`]: efficiency calibrated on measured reports, projected onto unmeasured types.
//! - [`recommend`](mod@recommend): the engine (pure functions) and the [`recommend::Recommendation`] it returns.
//! - [`export`]: JSON, Markdown and HTML (with a hand-written SVG plot) of a recommendation.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod catalog;
pub mod decoder;
mod error;
pub mod export;
pub mod gpus;
pub mod prices;
pub mod projection;
pub mod recommend;
pub mod tiers;
pub mod values;
pub mod workload;

pub use catalog::{InstanceCatalog, InstanceProfile};
pub use error::{ProfilesError, Result};
pub use recommend::{LabelledReport, RecommendOptions, Recommendation, recommend};
pub use tiers::{TierSla, Tiers};
