//! qtier-quantize: read safetensors checkpoints and write int8 compressed-tensors artifacts.
//!
//! The flow of [`quantize_checkpoint`]:
//!
//! 1. [`Checkpoint::open`] maps every shard read-only and validates its header (offsets, dtypes,
//!    shapes, overlaps, holes) and the shard index, so bad input fails before any work.
//! 2. [`LayerSelection`] decides each tensor's fate: Linear weights are quantized; embeddings,
//!    norms, biases, `lm_head` and whatever `--ignore` names are kept, each with its reason.
//! 3. Each output shard's header is laid out first; tensors are then quantized row block by row
//!    block in parallel ([`scheme::quantize_row`]) and written to their final offsets, the input
//!    pages released as they are done, so memory stays near one block whatever the model's size.
//! 4. The index, `config.json` with its `quantization_config`, the other files of the model
//!    directory and the [`QuantReport`] complete the artifact in a staging directory, which is
//!    renamed into place only when everything is written.
//!
//! [`artifact`] reads artifacts back (`qtier inspect`, and the int8 model loaders).
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod artifact;
pub mod checkpoint;
pub mod compressed_tensors;
pub mod dtype;
mod error;
mod mapped;
mod pipeline;
pub mod report;
pub mod safetensors_file;
pub mod scheme;
pub mod select;
mod shard_writer;
pub mod staging;

pub use checkpoint::Checkpoint;
pub use error::{QuantizeError, Result};
pub use pipeline::{QuantizeOptions, QuantizeProgress, quantize_checkpoint};
pub use report::QuantReport;
pub use select::{LayerPattern, LayerSelection};
