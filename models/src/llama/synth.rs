//! Random-weight Llama checkpoints with the real shapes of published sizes, for benchmarks that
//! need a model's size and layout but not its knowledge: `qtier synth --arch llama --preset 1b`.
//!
//! The weights are BF16, uniform with the standard deviation of transformers' initializer
//! (0.02) so activations stay in a realistic range, from a xorshift generator (one stream per
//! chunk, chunks filled in parallel): a 1B checkpoint takes seconds, not minutes. The directory
//! is written under a temporary name beside the output and renamed into place, so a directory
//! with the output's name is always complete.

use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::json;

use crate::error::{ModelError, Result};

/// Standard deviation of the random weights (transformers' `initializer_range` for Llama).
const WEIGHT_STD: f32 = 0.02;
/// Values generated per parallel chunk (16 MiB of BF16).
const CHUNK_VALUES: usize = 8 << 20;
/// Seed of the first chunk's generator; later chunks add their index.
const SEED: u64 = 0x5eed_0071_7469_6572;

/// A published Llama size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthPreset {
    /// The shapes of the tiny-llama test fixture (4 layers, hidden 128, vocab 1024).
    Tiny,
    /// Llama 3.2 1B (16 layers, hidden 2048, tied embeddings).
    Llama1b,
    /// Llama 3.2 3B (28 layers, hidden 3072, tied embeddings).
    Llama3b,
    /// Llama 3.1 8B (32 layers, hidden 4096).
    Llama8b,
}

impl SynthPreset {
    /// Parses `tiny`, `1b`, `3b` or `8b`.
    pub fn parse(text: &str) -> Option<SynthPreset> {
        match text {
            "tiny" => Some(SynthPreset::Tiny),
            "1b" => Some(SynthPreset::Llama1b),
            "3b" => Some(SynthPreset::Llama3b),
            "8b" => Some(SynthPreset::Llama8b),
            _ => None,
        }
    }

    /// The `config.json` of this size, in the published Llama 3 layout.
    pub fn config_json(self) -> serde_json::Value {
        // (hidden, intermediate, layers, heads, kv heads, head_dim, vocab, tied, rope factor,
        //  original context, max positions)
        let (h, i, layers, heads, kv, d, vocab, tied, factor, original, positions) = match self {
            SynthPreset::Tiny => (128, 352, 4, 8, 2, 16, 1024, false, 8.0, 256, 2048),
            SynthPreset::Llama1b => (2048, 8192, 16, 32, 8, 64, 128_256, true, 32.0, 8192, 131_072),
            SynthPreset::Llama3b => (3072, 8192, 28, 24, 8, 128, 128_256, true, 32.0, 8192, 131_072),
            SynthPreset::Llama8b => (4096, 14_336, 32, 32, 8, 128, 128_256, false, 8.0, 8192, 131_072),
        };
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": false,
            "mlp_bias": false,
            "hidden_act": "silu",
            "hidden_size": h,
            "intermediate_size": i,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "head_dim": d,
            "vocab_size": vocab,
            "max_position_embeddings": positions,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500_000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": original
            },
            "tie_word_embeddings": tied,
            "torch_dtype": "bfloat16",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "qtier_synthetic": "random weights with real shapes, written by qtier synth"
        })
    }
}

/// What [`write_synthetic`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthSummary {
    /// The output directory.
    pub dir: PathBuf,
    /// Parameters written.
    pub parameters: u64,
    /// Bytes of `model.safetensors`.
    pub file_bytes: u64,
}

/// The tensors of a Llama checkpoint with `config`'s sizes: (name, shape, is a norm scale).
fn tensor_plan(config: &super::LlamaConfig) -> Vec<(String, Vec<usize>, bool)> {
    let (h, i, d) = (config.hidden_size, config.intermediate_size, config.head_dim);
    let (q, kv) = (config.num_attention_heads * d, config.num_key_value_heads * d);
    let mut plan = vec![("model.embed_tokens.weight".to_string(), vec![config.vocab_size, h], false)];
    for n in 0..config.num_hidden_layers {
        let p = format!("model.layers.{n}");
        plan.extend([
            (format!("{p}.input_layernorm.weight"), vec![h], true),
            (format!("{p}.self_attn.q_proj.weight"), vec![q, h], false),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h], false),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h], false),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, q], false),
            (format!("{p}.post_attention_layernorm.weight"), vec![h], true),
            (format!("{p}.mlp.gate_proj.weight"), vec![i, h], false),
            (format!("{p}.mlp.up_proj.weight"), vec![i, h], false),
            (format!("{p}.mlp.down_proj.weight"), vec![h, i], false),
        ]);
    }
    plan.push(("model.norm.weight".to_string(), vec![h], true));
    if !config.tie_word_embeddings {
        plan.push(("lm_head.weight".to_string(), vec![config.vocab_size, h], false));
    }
    plan
}

/// Fills `out` with BF16 bytes of uniform values of standard deviation [`WEIGHT_STD`].
fn fill_random_bf16(out: &mut [u8], seed: u64) {
    // Uniform on [-a, a] has standard deviation a / sqrt(3).
    let scale = WEIGHT_STD * 3f32.sqrt() / f32::from(i16::MAX);
    let mut state = seed | 1;
    for pair in out.chunks_exact_mut(8) {
        // xorshift64 (Marsaglia 2003): four 16-bit draws per step.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        for (lane, bytes) in pair.chunks_exact_mut(2).enumerate() {
            let draw = (state >> (16 * lane)) as u16 as i16;
            let bits = ((f32::from(draw) * scale).to_bits() >> 16) as u16;
            bytes.copy_from_slice(&bits.to_le_bytes());
        }
    }
}

/// Writes a random-weight checkpoint of `preset` to `out` (`config.json` and one BF16
/// `model.safetensors`) through a temporary directory beside it. An existing `out` is an error
/// unless `force`, which replaces it.
pub fn write_synthetic(preset: SynthPreset, out: &Path, force: bool) -> Result<SynthSummary> {
    if out.exists() && !force {
        return Err(ModelError::InvalidInput(format!("{}: already exists; pass --force to replace it", out.display())));
    }
    let config_value = preset.config_json();
    let config = super::LlamaConfig::from_value(&config_value, Path::new("config.json"))?;
    let name =
        out.file_name().ok_or_else(|| ModelError::InvalidInput(format!("{}: not a directory path", out.display())))?;
    let temporary = out.with_file_name(format!(".{}.qtier-partial-{}", name.to_string_lossy(), std::process::id()));
    let result = write_into(&temporary, &config_value, &config);
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&temporary);
            return Err(error);
        }
    };
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| ModelError::io(out, "remove", e))?;
    }
    std::fs::rename(&temporary, out).map_err(|e| ModelError::io(out, "rename into place", e))?;
    Ok(SynthSummary { dir: out.to_path_buf(), ..summary })
}

fn write_into(dir: &Path, config_value: &serde_json::Value, config: &super::LlamaConfig) -> Result<SynthSummary> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| ModelError::io(dir, "remove", e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, "create", e))?;
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(config_value).map_err(|e| ModelError::InvalidInput(e.to_string()))?;
    std::fs::write(&config_path, text).map_err(|e| ModelError::io(&config_path, "write", e))?;

    let plan = tensor_plan(config);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, shape, _) in &plan {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(name.clone(), json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    let mut header_bytes = serde_json::to_vec(&header).map_err(|e| ModelError::InvalidInput(e.to_string()))?;
    while !header_bytes.len().is_multiple_of(8) {
        header_bytes.push(b' ');
    }
    let path = dir.join("model.safetensors");
    let file = std::fs::File::create(&path).map_err(|e| ModelError::io(&path, "create", e))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e| ModelError::io(&path, "write", e);
    writer.write_all(&(header_bytes.len() as u64).to_le_bytes()).map_err(io)?;
    writer.write_all(&header_bytes).map_err(io)?;
    let mut chunk_index = 0u64;
    let mut parameters = 0u64;
    for (_, shape, is_norm) in &plan {
        let count: usize = shape.iter().product();
        parameters += count as u64;
        if *is_norm {
            // RMSNorm scales start at 1 (BF16 0x3f80).
            writer.write_all(&[0x80, 0x3f].repeat(count)).map_err(io)?;
            continue;
        }
        let mut bytes = vec![0u8; count * 2];
        bytes.par_chunks_mut(CHUNK_VALUES * 2).enumerate().for_each(|(i, chunk)| {
            fill_random_bf16(chunk, SEED.wrapping_add(chunk_index + i as u64));
        });
        chunk_index += count.div_ceil(CHUNK_VALUES) as u64;
        writer.write_all(&bytes).map_err(io)?;
    }
    writer.flush().map_err(io)?;
    let file_bytes = (8 + header_bytes.len() + offset) as u64;
    Ok(SynthSummary { dir: dir.to_path_buf(), parameters, file_bytes })
}
