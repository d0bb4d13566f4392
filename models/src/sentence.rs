//! Sentence embeddings as sentence-transformers computes them: tokenize, encode, pool over the
//! attention mask, optionally L2-normalize.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::bert::BertModel;
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
        let hidden = self.model.hidden_states(batch, None)?;
        Ok(self.pool_rows(&hidden, batch))
    }

    /// Pools (and normalizes) hidden states `[b, s, h]` into embeddings.
    pub fn pool(&self, hidden: &Tensor, batch: &TokenBatch) -> Result<Vec<Vec<f32>>> {
        let (b, s, _) = hidden.dims3()?;
        if (b, s) != (batch.batch, batch.seq) {
            return Err(ModelError::InvalidInput(format!(
                "hidden states of {b} x {s} tokens for a batch of {} x {}",
                batch.batch, batch.seq
            )));
        }
        Ok(self.pool_rows(&hidden.flatten_all()?.to_vec1::<f32>()?, batch))
    }

    /// [`pool`](Self::pool) on hidden states `[b * s, h]`, row-major.
    fn pool_rows(&self, hidden: &[f32], batch: &TokenBatch) -> Vec<Vec<f32>> {
        let h = hidden.len() / (batch.batch * batch.seq);
        hidden
            .chunks_exact(batch.seq * h)
            .zip(batch.attention_mask.chunks_exact(batch.seq))
            .map(|(tokens, mask)| {
                let mut pooled = pool_sequence(self.config.pooling, tokens, mask, h);
                if self.config.normalize {
                    l2_normalize(&mut pooled);
                }
                pooled
            })
            .collect()
    }
}

/// Padding positions' penalty under max pooling: they never win the max (unless every position
/// is padding).
const MAX_POOL_PADDING_PENALTY: f32 = -1e9;
/// Lower bound of the token count under mean pooling (a sequence without real tokens pools to 0).
const MIN_MEAN_POOL_COUNT: f32 = 1e-9;
/// Lower bound of the norm under L2 normalization (a zero vector stays zero).
const MIN_NORM: f32 = 1e-12;

/// One sequence's `tokens` (`[s, h]`) pooled over the positions `mask` keeps.
fn pool_sequence(pooling: Pooling, tokens: &[f32], mask: &[u32], h: usize) -> Vec<f32> {
    match pooling {
        Pooling::Cls => tokens[..h].to_vec(),
        Pooling::Mean => {
            let mut sum = vec![0.0f32; h];
            for (token, _) in tokens.chunks_exact(h).zip(mask).filter(|(_, m)| **m != 0) {
                for (s, x) in sum.iter_mut().zip(token) {
                    *s += x;
                }
            }
            let count = (mask.iter().filter(|m| **m != 0).count() as f32).max(MIN_MEAN_POOL_COUNT);
            sum.iter_mut().for_each(|s| *s /= count);
            sum
        }
        Pooling::Max => {
            let mut max = vec![f32::NEG_INFINITY; h];
            for (token, m) in tokens.chunks_exact(h).zip(mask) {
                let penalty = if *m != 0 { 0.0 } else { MAX_POOL_PADDING_PENALTY };
                for (y, x) in max.iter_mut().zip(token) {
                    *y = y.max(x + penalty);
                }
            }
            max
        }
    }
}

/// Divides `x` by its L2 norm.
fn l2_normalize(x: &mut [f32]) {
    let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(MIN_NORM);
    x.iter_mut().for_each(|v| *v /= norm);
}
