//! qtier-models: runnable model architectures in fp32 and on qtier's int8 kernels.
//!
//! - [`BertModel`]: the BERT-family encoder, loaded from a Hugging Face directory, float or a
//!   qtier int8 artifact (detected per layer from the checkpoint: a module with a
//!   `weight_scale` runs on [`qtier_kernels::QuantizedLinear`], with GELU and residual adds fused).
//! - [`SentenceEncoder`]: tokenization, encoder, pooling and normalization as sentence-transformers
//!   computes sentence embeddings.
//! - [`eval`]: fp32 vs int8 on real text: embedding cosine, nearest-neighbour agreement, and the
//!   SQNR of every quantized layer's output on the real activations.
//!
//! Architectures share [`Linear`], [`ModelWeights`] and the tokenizer; a decoder family (RMSNorm,
//! RoPE, SwiGLU, KV cache) is another module beside `bert`, chosen by `config.json`'s
//! `model_type`, without touching the encoder.
#![warn(missing_docs)]
#![deny(unsafe_code)]

mod attention;
pub mod bert;
pub mod config;
mod error;
pub mod eval;
pub mod gpu;
pub mod linear;
pub mod llama;
mod rows;
pub mod sentence;
mod simd;
pub mod tokenize;
pub mod weights;

pub use bert::BertModel;
pub use error::{ModelError, Result};
pub use linear::{Int8Options, Linear};
pub use sentence::SentenceEncoder;
pub use tokenize::{TextTokenizer, TokenBatch};
pub use weights::ModelWeights;
