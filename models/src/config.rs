//! Model configuration: `config.json` (architecture) and the sentence-transformers files
//! (`modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// Reads a JSON file into `T`, with errors naming the file.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).map_err(|e| ModelError::io(path, "read", e))?;
    serde_json::from_slice(&text)
        .map_err(|e| ModelError::InvalidConfig { path: path.to_path_buf(), problem: format!("{e}") })
}

/// The hidden activation of a feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum HiddenAct {
    /// Exact GELU (erf), BERT's `gelu`.
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh-approximated GELU.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
    /// ReLU.
    #[serde(rename = "relu")]
    Relu,
}

impl HiddenAct {
    /// The int8 kernels' fused activation for this one.
    pub fn kernel_activation(self) -> qtier_kernels::Activation {
        match self {
            HiddenAct::Gelu => qtier_kernels::Activation::GeluErf,
            HiddenAct::GeluTanh => qtier_kernels::Activation::GeluTanh,
            HiddenAct::Relu => qtier_kernels::Activation::Relu,
        }
    }
}

/// The fields of a BERT-family `config.json` the encoder honours.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Epsilon of every LayerNorm.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Feed-forward activation.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: HiddenAct,
    /// Positions the position embedding covers.
    pub max_position_embeddings: usize,
    /// Token types (segments).
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_hidden_act() -> HiddenAct {
    HiddenAct::Gelu
}
fn default_type_vocab_size() -> usize {
    2
}

impl BertConfig {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the sizes are consistent.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |problem: String| Err(ModelError::InvalidConfig { path: path.to_path_buf(), problem });
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_hidden_layers == 0 || self.intermediate_size == 0 || self.max_position_embeddings == 0 {
            return bad("num_hidden_layers, intermediate_size and max_position_embeddings must be positive".into());
        }
        Ok(())
    }
}

/// The `model_type` of a `config.json`.
pub fn model_type(config_path: &Path) -> Result<String> {
    let config: Value = read_json(config_path)?;
    config
        .get("model_type")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ModelError::InvalidConfig { path: config_path.to_path_buf(), problem: "no `model_type`".into() })
}

/// How token embeddings become one sentence embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps.
    Mean,
    /// The first token's (`[CLS]`) hidden state.
    Cls,
    /// Element-wise maximum over kept tokens.
    Max,
}

/// The sentence-transformers pipeline of a model directory.
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceConfig {
    /// How to pool.
    pub pooling: Pooling,
    /// L2-normalize the pooled embedding.
    pub normalize: bool,
    /// Tokens kept per text (longer texts are truncated).
    pub max_seq_length: usize,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertFile {
    max_seq_length: usize,
}

impl SentenceConfig {
    /// Reads `modules.json` and the pooling and sentence-bert configs of `dir`. Without
    /// `modules.json`, mean pooling without normalization over at most `max_positions` tokens.
    pub fn read(dir: &Path, max_positions: usize) -> Result<SentenceConfig> {
        let modules_path = dir.join("modules.json");
        let mut config = SentenceConfig { pooling: Pooling::Mean, normalize: false, max_seq_length: max_positions };
        if !modules_path.is_file() {
            return Ok(config);
        }
        let modules: Vec<ModuleEntry> = read_json(&modules_path)?;
        for module in &modules {
            if module.kind.ends_with(".Pooling") {
                let path: PathBuf = dir.join(&module.path).join("config.json");
                let pooling: PoolingFile = read_json(&path)?;
                config.pooling = match (
                    pooling.pooling_mode_mean_tokens,
                    pooling.pooling_mode_cls_token,
                    pooling.pooling_mode_max_tokens,
                ) {
                    (true, false, false) => Pooling::Mean,
                    (false, true, false) => Pooling::Cls,
                    (false, false, true) => Pooling::Max,
                    _ => {
                        return Err(ModelError::InvalidConfig {
                            path,
                            problem: "exactly one of mean, cls or max pooling must be set".into(),
                        });
                    }
                };
            } else if module.kind.ends_with(".Normalize") {
                config.normalize = true;
            }
        }
        let sbert_path = dir.join("sentence_bert_config.json");
        if sbert_path.is_file() {
            let sbert: SentenceBertFile = read_json(&sbert_path)?;
            config.max_seq_length = sbert.max_seq_length.min(max_positions);
        }
        Ok(config)
    }
}
