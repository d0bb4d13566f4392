//! Tokenization with the `tokenizers` crate from a model's `tokenizer.json`: batches padded to
//! their longest text, with attention masks, truncated at the model's maximum length.

use std::path::{Path, PathBuf};

use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{ModelError, Result};

/// A batch of tokenized texts, row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Texts in the batch.
    pub batch: usize,
    /// Tokens per text after padding.
    pub seq: usize,
    /// Token ids.
    pub ids: Vec<u32>,
    /// Token type (segment) ids.
    pub type_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
}

impl TokenBatch {
    /// The real (unpadded) token ids of text `index`.
    pub fn ids_of(&self, index: usize) -> Vec<u32> {
        let row = index * self.seq..(index + 1) * self.seq;
        self.ids[row.clone()]
            .iter()
            .zip(&self.attention_mask[row])
            .filter(|(_, m)| **m == 1)
            .map(|(id, _)| *id)
            .collect()
    }

    /// A batch of `batch` copies of a sequence of `seq` given ids, all real tokens (for
    /// benchmarks with fixed shapes).
    pub fn repeated(ids: &[u32], batch: usize) -> TokenBatch {
        TokenBatch {
            batch,
            seq: ids.len(),
            ids: ids.iter().copied().cycle().take(ids.len() * batch).collect(),
            type_ids: vec![0; ids.len() * batch],
            attention_mask: vec![1; ids.len() * batch],
        }
    }
}

/// A model's tokenizer, set to pad to the longest text and truncate at `max_length`.
pub struct TextTokenizer {
    path: PathBuf,
    inner: Tokenizer,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("path", &self.path).finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json`, truncating at `max_length` tokens (special tokens included).
    pub fn from_dir(dir: &Path, max_length: usize) -> Result<TextTokenizer> {
        let path = dir.join("tokenizer.json");
        let bad = |problem: String| ModelError::Tokenizer { path: path.clone(), problem };
        let mut inner = Tokenizer::from_file(&path).map_err(|e| bad(e.to_string()))?;
        inner
            .with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
            .map_err(|e| bad(e.to_string()))?;
        let pad_id = inner.token_to_id("[PAD]").unwrap_or(0);
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token: "[PAD]".into(),
            ..Default::default()
        }));
        Ok(TextTokenizer { path, inner })
    }

    /// Tokenizes `texts` into one padded batch.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<TokenBatch> {
        if texts.is_empty() {
            return Err(ModelError::InvalidInput("no texts to encode".into()));
        }
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::Tokenizer { path: self.path.clone(), problem: e.to_string() })?;
        let seq = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut batch = TokenBatch {
            batch: texts.len(),
            seq,
            ids: Vec::with_capacity(seq * texts.len()),
            type_ids: Vec::with_capacity(seq * texts.len()),
            attention_mask: Vec::with_capacity(seq * texts.len()),
        };
        for encoding in &encodings {
            batch.ids.extend_from_slice(encoding.get_ids());
            batch.type_ids.extend_from_slice(encoding.get_type_ids());
            batch.attention_mask.extend_from_slice(encoding.get_attention_mask());
        }
        Ok(batch)
    }
}
