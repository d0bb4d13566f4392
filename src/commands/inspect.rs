//! `qtier inspect`.

use anyhow::Context;
use qtier_quantize::artifact::inspect;

use crate::cli::InspectArgs;

/// Quantized layers listed without `--all`.
const LAYERS_SHOWN: usize = 8;

/// Runs `qtier inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let summary = inspect(&args.path).with_context(|| format!("inspecting {}", args.path.display()))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    outln!("{}", summary.path);
    outln!("  format: {}", summary.format);
    for shard in &summary.shards {
        outln!("  file {}: {} tensors, {} bytes", shard.file, shard.tensors, shard.tensor_bytes);
    }
    outln!("  parameters: {}, tensor bytes: {}", summary.parameters, summary.tensor_bytes);
    if let Some(config) = &summary.quantization_config {
        let group = &config["config_groups"]["group_0"];
        outln!(
            "  quantization: weights {} {}-bit {}, activations {} {}-bit {} (dynamic: {})",
            group["weights"]["type"],
            group["weights"]["num_bits"],
            group["weights"]["strategy"],
            group["input_activations"]["type"],
            group["input_activations"]["num_bits"],
            group["input_activations"]["strategy"],
            group["input_activations"]["dynamic"],
        );
        outln!("  ignore: {}", config["ignore"]);
    }
    outln!(
        "  int8 layers: {} ({} other tensors, {} bytes)",
        summary.quantized_layers.len(),
        summary.other_tensors,
        summary.other_tensor_bytes
    );
    let shown = if args.all { summary.quantized_layers.len() } else { LAYERS_SHOWN };
    for layer in summary.quantized_layers.iter().take(shown) {
        outln!("    {} {:?} I8, scale {}, {} bytes", layer.name, layer.shape, layer.scale_dtype, layer.bytes);
    }
    if summary.quantized_layers.len() > shown {
        outln!("    ... {} more (--all lists them)", summary.quantized_layers.len() - shown);
    }
    Ok(())
}
