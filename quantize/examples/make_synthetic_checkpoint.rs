//! Writes a synthetic Llama-like F16 checkpoint for the quantization throughput benchmark
//! (`scripts/bench-quantize.sh`): decoder layers with 4096x4096 attention projections and
//! 11008x4096 / 4096x11008 MLP projections, two shards and an index, about 0.4 GB per layer.
//!
//! Usage: `make_synthetic_checkpoint <dir> [layers]` (default 5 layers, about 2.0 GB).

use std::io::Write;
use std::path::Path;

/// Hidden size of the synthetic model (Llama 2 7B's).
const HIDDEN: usize = 4096;
/// MLP width of the synthetic model (Llama 2 7B's).
const INTERMEDIATE: usize = 11008;
/// Default number of decoder layers: 5 x 0.40 GB is about 2 GB.
const DEFAULT_LAYERS: usize = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: make_synthetic_checkpoint <dir> [layers]")?;
    let layers: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(DEFAULT_LAYERS);
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir)?;

    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new(), Vec::new()];
    for layer in 0..layers {
        let shard = &mut shards[layer * 2 / layers.max(1)];
        let prefix = format!("model.layers.{layer}");
        for projection in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            shard.push((format!("{prefix}.self_attn.{projection}.weight"), vec![HIDDEN, HIDDEN]));
        }
        shard.push((format!("{prefix}.mlp.gate_proj.weight"), vec![INTERMEDIATE, HIDDEN]));
        shard.push((format!("{prefix}.mlp.up_proj.weight"), vec![INTERMEDIATE, HIDDEN]));
        shard.push((format!("{prefix}.mlp.down_proj.weight"), vec![HIDDEN, INTERMEDIATE]));
        shard.push((format!("{prefix}.input_layernorm.weight"), vec![HIDDEN]));
        shard.push((format!("{prefix}.post_attention_layernorm.weight"), vec![HIDDEN]));
    }
    let mut weight_map = serde_json::Map::new();
    let mut total_size = 0usize;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for (number, tensors) in shards.iter().enumerate() {
        let file_name = format!("model-{:05}-of-{:05}.safetensors", number + 1, shards.len());
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut offset = 0;
        for (name, shape) in tensors {
            let bytes = shape.iter().product::<usize>() * 2;
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
            );
            weight_map.insert(name.clone(), file_name.clone().into());
            offset += bytes;
        }
        total_size += offset;
        let mut header = serde_json::to_vec(&header)?;
        header.resize(header.len().div_ceil(8) * 8, b' ');
        let mut file = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(dir.join(&file_name))?);
        file.write_all(&(header.len() as u64).to_le_bytes())?;
        file.write_all(&header)?;
        let mut row = Vec::new();
        for (_, shape) in tensors {
            let columns = *shape.last().unwrap_or(&1);
            let rows = shape.iter().product::<usize>() / columns;
            for _ in 0..rows {
                row.clear();
                for _ in 0..columns {
                    // xorshift64*, mapped to roughly N(0, 0.02) weights: the sum of two uniforms
                    // is enough shape for a throughput benchmark.
                    state ^= state >> 12;
                    state ^= state << 25;
                    state ^= state >> 27;
                    let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
                    let a = (bits >> 40) as f32 / (1u64 << 24) as f32;
                    let b = ((bits >> 16) & 0xff_ffff) as f32 / (1u64 << 24) as f32;
                    row.extend_from_slice(&half::f16::from_f32((a + b - 1.0) * 0.035).to_le_bytes());
                }
                file.write_all(&row)?;
            }
        }
        file.flush()?;
    }
    let index = serde_json::json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_vec_pretty(&index)?)?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE, "num_hidden_layers": layers, "torch_dtype": "float16"
        }))?,
    )?;
    println!("{}: {layers} layers, {total_size} bytes of F16 tensors", dir.display());
    Ok(())
}
