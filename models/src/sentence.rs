//! Sentence embeddings as sentence-transformers computes them: tokenize, encode, pool over the
//! attention mask, optionally L2-normalize.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::bert::{BertModel, l2_normalize, mean_pool};
use crate::config::{Pooling, SentenceConfig, model_type};
use crate::error::{ModelError, Result};
use crate::linear::Int8Options;
use crate::tokenize::{TextTokenizer, TokenBatch};

/// Texts encoded per forward pass by [`SentenceEncoder::embed`]: bounds activation memory on long
/// lists while keeping the GEMMs large enough to run at full speed.
pub const EMBED_BATCH: usize = 32;

/// The `model_type`s this encoder runs.
const SUPPORTED: &str = "bert";

/// A model directory ready to turn texts into sentence embeddings.
#[derive(Debug)]
pub struct SentenceEncoder {
    dir: PathBuf,
    model: BertModel,
    tokenizer: TextTokenizer,
    config: SentenceConfig,
}

impl SentenceEncoder {
    /// Loads the model, tokenizer and sentence-transformers configuration of `dir`, float or int8.
    pub fn load(dir: &Path) -> Result<SentenceEncoder> {
        Self::load_with(dir, Int8Options::default())
    }

    /// [`load`](Self::load) with a choice of how int8 layers run.
    pub fn load_with(dir: &Path, int8: Int8Options) -> Result<SentenceEncoder> {
        let config_path = dir.join("config.json");
        let kind = model_type(&config_path)?;
        if kind != "bert" {
            return Err(ModelError::UnsupportedArchitecture {
                path: config_path,
                model_type: kind,
                supported: SUPPORTED,
            });
        }
        let model = BertModel::load_with(dir, int8)?;
        let config = SentenceConfig::read(dir, model.config().max_position_embeddings)?;
        let tokenizer = TextTokenizer::from_dir(dir, config.max_seq_length)?;
        Ok(SentenceEncoder { dir: dir.to_path_buf(), model, tokenizer, config })
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The encoder.
    pub fn model(&self) -> &BertModel {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Pooling, normalization and maximum length.
    pub fn sentence_config(&self) -> &SentenceConfig {
        &self.config
    }

    /// True when any Linear layer runs on the int8 kernels.
    pub fn is_int8(&self) -> bool {
        self.model.linears().any(|l| l.is_int8())
    }

    /// One embedding per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut embeddings = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(EMBED_BATCH) {
            let batch = self.tokenizer.encode_batch(chunk)?;
            embeddings.extend(self.embed_tokens(&batch)?);
        }
        Ok(embeddings)
    }

    /// One embedding per text of an already tokenized batch.
    pub fn embed_tokens(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        let hidden = self.model.forward(batch)?;
        self.pool(&hidden, batch)
    }

    /// Pools (and normalizes) hidden states `[b, s, h]` into embeddings.
    pub fn pool(&self, hidden: &Tensor, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        let pooled = match self.config.pooling {
            Pooling::Mean => mean_pool(hidden, &batch.attention_mask)?,
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Max => {
                let (b, s, _) = hidden.dims3()?;
                let mask = Tensor::from_slice(&batch.attention_mask, (b, s, 1), hidden.device())?
                    .to_dtype(candle_core::DType::F32)?;
                // Padding positions get a very negative value so they never win the max.
                let penalty = ((1.0 - &mask)? * -1e9)?;
                hidden.broadcast_add(&penalty)?.max(1)?
            }
        };
        let pooled = if self.config.normalize { l2_normalize(&pooled)? } else { pooled };
        Ok(pooled.to_vec2::<f32>()?)
    }
}
