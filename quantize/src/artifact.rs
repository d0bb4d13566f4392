//! Reading int8 artifacts back: a summary for `qtier inspect`, and the quantized weights for the
//! int8 model loaders.
//!
//! Candle has no I8 dtype, so quantized weights are read here, from the validated safetensors
//! files, rather than through candle's loaders.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::compressed_tensors::{WEIGHT_SCALE_SUFFIX, is_int_quantized};
use crate::dtype::Dtype;
use crate::error::{QuantizeError, Result};

/// What `qtier inspect` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactSummary {
    /// The inspected path.
    pub path: String,
    /// `compressed-tensors/int-quantized`, `<quant_method>/<format>` for other quantized
    /// checkpoints, or `float` for an unquantized one.
    pub format: String,
    /// `config.json`'s `quantization_config`, if any.
    pub quantization_config: Option<Value>,
    /// Each safetensors file: name, tensor count, bytes.
    pub shards: Vec<ShardSummary>,
    /// Each int8 layer.
    pub quantized_layers: Vec<QuantizedLayerSummary>,
    /// Number of tensors that are not part of an int8 layer.
    pub other_tensors: usize,
    /// Their bytes.
    pub other_tensor_bytes: u64,
    /// Bytes of all tensor data.
    pub tensor_bytes: u64,
    /// Elements of all tensors.
    pub parameters: u64,
}

/// One safetensors file of an artifact.
#[derive(Debug, Clone, Serialize)]
pub struct ShardSummary {
    /// File name.
    pub file: String,
    /// Number of tensors.
    pub tensors: usize,
    /// Bytes of tensor data.
    pub tensor_bytes: u64,
}

/// One int8 Linear layer of an artifact.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizedLayerSummary {
    /// The module name.
    pub name: String,
    /// `[out_features, in_features]`.
    pub shape: Vec<usize>,
    /// The scale's dtype.
    pub scale_dtype: String,
    /// Bytes of weight and scale together.
    pub bytes: u64,
}

/// An int8 weight with its per-output-channel scales, decoded to plain vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight {
    /// The module name.
    pub module: String,
    /// Rows (output channels).
    pub out_features: usize,
    /// Columns (input features).
    pub in_features: usize,
    /// Row-major `[out_features, in_features]` values in [-127, 127].
    pub values: Vec<i8>,
    /// One scale per output channel, widened to f32.
    pub scales: Vec<f32>,
}

/// Summarizes the checkpoint or artifact at `path` (a directory or one `.safetensors` file).
pub fn inspect(path: &Path) -> Result<ArtifactSummary> {
    let checkpoint = Checkpoint::open(path)?;
    let quantization_config = checkpoint.config().and_then(|c| c.get("quantization_config")).cloned();
    let format = match (&quantization_config, checkpoint.config()) {
        (Some(_), Some(config)) if is_int_quantized(config) => "compressed-tensors/int-quantized".to_string(),
        (Some(q), _) => format!(
            "{}/{}",
            q.get("quant_method").and_then(Value::as_str).unwrap_or("unknown"),
            q.get("format").and_then(Value::as_str).unwrap_or("unknown")
        ),
        (None, _) => "float".to_string(),
    };
    let shards = checkpoint
        .shards()
        .iter()
        .map(|shard| ShardSummary {
            file: shard.path().file_name().unwrap_or_default().to_string_lossy().into_owned(),
            tensors: shard.tensors().len(),
            tensor_bytes: shard.tensors().iter().map(|t| t.byte_len() as u64).sum(),
        })
        .collect();
    let mut quantized_layers = Vec::new();
    let mut layer_tensors = std::collections::HashSet::new();
    for tensor in checkpoint.tensors() {
        let Some(module) = tensor.entry.name.strip_suffix(WEIGHT_SCALE_SUFFIX) else { continue };
        let (weight, scale) = quantized_pair(&checkpoint, module)?;
        layer_tensors.insert(weight.name.clone());
        layer_tensors.insert(scale.name.clone());
        quantized_layers.push(QuantizedLayerSummary {
            name: module.to_string(),
            shape: weight.shape.clone(),
            scale_dtype: scale.dtype.name().to_string(),
            bytes: (weight.byte_len() + scale.byte_len()) as u64,
        });
    }
    let others: Vec<_> = checkpoint.tensors().filter(|t| !layer_tensors.contains(&t.entry.name)).collect();
    Ok(ArtifactSummary {
        path: path.display().to_string(),
        format,
        quantization_config,
        shards,
        quantized_layers,
        other_tensors: others.len(),
        other_tensor_bytes: others.iter().map(|t| t.entry.byte_len() as u64).sum(),
        tensor_bytes: checkpoint.tensor_bytes(),
        parameters: checkpoint.tensors().map(|t| t.entry.element_count() as u64).sum(),
    })
}

/// Reads module `module`'s int8 weight and scales.
pub fn read_quantized_weight(checkpoint: &Checkpoint, module: &str) -> Result<QuantizedWeight> {
    let (weight, scale) = quantized_pair(checkpoint, module)?;
    let weight_ref = checkpoint.require(&weight.name)?;
    let values = bytemuck::cast_slice::<u8, i8>(weight_ref.shard.bytes(weight_ref.entry)).to_vec();
    weight_ref.shard.release(weight_ref.entry.file_range.clone());
    let scales = checkpoint.read_f32(&scale.name)?;
    Ok(QuantizedWeight {
        module: module.to_string(),
        out_features: weight.shape[0],
        in_features: weight.shape[1],
        values,
        scales,
    })
}

/// Finds and checks the `.weight` / `.weight_scale` pair of `module`.
fn quantized_pair(
    checkpoint: &Checkpoint,
    module: &str,
) -> Result<(crate::safetensors_file::TensorEntry, crate::safetensors_file::TensorEntry)> {
    let scale_name = format!("{module}{WEIGHT_SCALE_SUFFIX}");
    let scale = checkpoint.require(&scale_name)?;
    let weight = checkpoint.require(&format!("{module}.weight"))?;
    let bad = |tensor: &str, problem: String| QuantizeError::InvalidTensor {
        path: weight.shard.path().to_path_buf(),
        tensor: tensor.to_string(),
        problem,
    };
    if weight.entry.dtype != Dtype::I8 || weight.entry.shape.len() != 2 {
        return Err(bad(
            &weight.entry.name,
            format!("a quantized weight must be I8 [out, in], found {} {:?}", weight.entry.dtype, weight.entry.shape),
        ));
    }
    let out_features = weight.entry.shape[0];
    let scale_shape_ok = scale.entry.shape == [out_features, 1] || scale.entry.shape == [out_features];
    if scale.entry.dtype.as_weight_dtype().is_none() || !scale_shape_ok {
        return Err(bad(
            &scale_name,
            format!(
                "a per-channel scale must be a float [{out_features}, 1], found {} {:?}",
                scale.entry.dtype, scale.entry.shape
            ),
        ));
    }
    Ok((weight.entry.clone(), scale.entry.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::WeightDtype;
    use crate::scheme::quantize_row;
    use crate::{LayerSelection, QuantizeOptions, quantize_checkpoint};

    /// Writes a one-tensor F16 safetensors file.
    fn write_f16_linear(path: &Path, name: &str, rows: usize, columns: usize) -> Vec<f32> {
        let values: Vec<f32> =
            (0..rows * columns).map(|i| half::f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 64.0).to_f32()).collect();
        let header = format!(
            r#"{{"{name}":{{"dtype":"F16","shape":[{rows},{columns}],"data_offsets":[0,{}]}}}}"#,
            rows * columns * 2
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        for value in &values {
            bytes.extend_from_slice(&half::f16::from_f32(*value).to_le_bytes());
        }
        std::fs::write(path, bytes).unwrap();
        values
    }

    #[test]
    fn quantized_weights_read_back_equal_the_scheme_and_inspect_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.safetensors");
        let values = write_f16_linear(&input, "block.proj.weight", 5, 19);
        let output = dir.path().join("out");
        let options = QuantizeOptions {
            input,
            output: output.clone(),
            selection: LayerSelection::default(),
            allow_nonfinite: false,
            force: false,
            durable: false,
        };
        quantize_checkpoint(&options, &|_| {}).unwrap();

        let artifact = Checkpoint::open(&output).unwrap();
        let weight = read_quantized_weight(&artifact, "block.proj").unwrap();
        assert_eq!((weight.out_features, weight.in_features), (5, 19));
        for (row, expected_row) in values.chunks(19).enumerate() {
            let mut expected = [0i8; 19];
            let (scale, _) = quantize_row(expected_row, WeightDtype::F16, &mut expected).unwrap();
            assert_eq!(&weight.values[row * 19..(row + 1) * 19], &expected);
            assert_eq!(weight.scales[row], scale);
        }
        let summary = inspect(&output).unwrap();
        assert_eq!(summary.format, "compressed-tensors/int-quantized");
        assert_eq!(summary.quantized_layers.len(), 1);
        assert_eq!(summary.quantized_layers[0].bytes, 5 * 19 + 5 * 2);
        assert!(read_quantized_weight(&artifact, "block.missing").is_err());
    }
}
