//! Loading tensors of a model directory, float or int8, through qtier's validated safetensors
//! reader (candle has no I8 dtype, and our reader's errors name the file and tensor).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use qtier_kernels::{Activation, QuantizedLinear};
use qtier_quantize::Checkpoint;
use qtier_quantize::artifact::{QuantizedWeight, read_quantized_weight};
use qtier_quantize::compressed_tensors::WEIGHT_SCALE_SUFFIX;

use crate::error::{ModelError, Result};
use crate::linear::{Int8Options, Linear};

/// A model directory's checkpoint, opened once, from which architectures take their tensors.
#[derive(Debug)]
pub struct ModelWeights {
    dir: PathBuf,
    checkpoint: Checkpoint,
    prefix: String,
    int8: Int8Options,
}

impl ModelWeights {
    /// Opens the checkpoint of `dir`. `prefix` is prepended to every tensor name asked for when
    /// the checkpoint has it (e.g. `bert.` in `BertForMaskedLM` checkpoints).
    pub fn open(dir: &Path) -> Result<ModelWeights> {
        let checkpoint = Checkpoint::open(dir)?;
        Ok(ModelWeights { dir: dir.to_path_buf(), checkpoint, prefix: String::new(), int8: Int8Options::default() })
    }

    /// Uses `prefix` for every name if the checkpoint stores tensors under it.
    pub fn with_prefix_if_present(mut self, prefix: &str, probe: &str) -> Self {
        if self.checkpoint.tensor(probe).is_none() && self.checkpoint.tensor(&format!("{prefix}{probe}")).is_some() {
            self.prefix = prefix.to_string();
        }
        self
    }

    /// Sets how int8 layers run.
    pub fn with_int8_options(mut self, int8: Int8Options) -> Self {
        self.int8 = int8;
        self
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn full_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A float tensor (F32, F16 or BF16 on disk) as an f32 candle tensor of the expected shape.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = self.full_name(name);
        let found = self.checkpoint.tensor(&full).ok_or_else(|| self.bad(&full, "missing".into()))?;
        if found.entry.shape != shape {
            return Err(self.bad(&full, format!("shape {:?}, expected {shape:?}", found.entry.shape)));
        }
        let values = self.checkpoint.read_f32(&full)?;
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }

    /// True when module `module` is stored as int8 (it has a `weight_scale`).
    pub fn is_quantized(&self, module: &str) -> bool {
        self.checkpoint.tensor(&format!("{}{WEIGHT_SCALE_SUFFIX}", self.full_name(module))).is_some()
    }

    /// The Linear module `module` (`out x in`, with bias), int8 if the checkpoint stores it so,
    /// with `activation` applied to its output.
    pub fn linear(
        &self,
        module: &str,
        out_features: usize,
        in_features: usize,
        activation: Activation,
    ) -> Result<Linear> {
        let bias = self.tensor(&format!("{module}.bias"), &[out_features])?;
        if self.is_quantized(module) {
            let weight = self.int8_weight(module, out_features, in_features)?;
            let bias_values = bias.to_vec1::<f32>()?;
            let layer =
                QuantizedLinear::new(&weight.values, &weight.scales, Some(&bias_values), out_features, in_features)?
                    .with_activation(activation);
            Ok(Linear::int8(module, layer, &weight.values, &weight.scales, self.int8))
        } else {
            let weight = self.tensor(&format!("{module}.weight"), &[out_features, in_features])?;
            Linear::float(module, &weight, bias, activation)
        }
    }

    /// Several Linear modules with the same input, run as one layer whose output is their
    /// outputs side by side (e.g. attention's query, key and value): one GEMM and one activation
    /// quantization instead of several. `None` when some are int8 and some float.
    pub fn fused_linear(
        &self,
        name: &str,
        modules: &[&str],
        out_features: usize,
        in_features: usize,
    ) -> Result<Option<Linear>> {
        let quantized = modules.iter().filter(|m| self.is_quantized(m)).count();
        let total_out = out_features * modules.len();
        let mut bias = Vec::with_capacity(total_out);
        for module in modules {
            bias.extend(self.tensor(&format!("{module}.bias"), &[out_features])?.to_vec1::<f32>()?);
        }
        if quantized == modules.len() {
            let mut values = Vec::with_capacity(total_out * in_features);
            let mut scales = Vec::with_capacity(total_out);
            for module in modules {
                let weight = self.int8_weight(module, out_features, in_features)?;
                values.extend_from_slice(&weight.values);
                scales.extend_from_slice(&weight.scales);
            }
            let layer = QuantizedLinear::new(&values, &scales, Some(&bias), total_out, in_features)?;
            Ok(Some(Linear::int8(name, layer, &values, &scales, self.int8)))
        } else if quantized == 0 {
            let weights = modules
                .iter()
                .map(|m| self.tensor(&format!("{m}.weight"), &[out_features, in_features]))
                .collect::<Result<Vec<_>>>()?;
            let weight = Tensor::cat(&weights, 0)?;
            let bias = Tensor::from_vec(bias, total_out, &Device::Cpu)?;
            Ok(Some(Linear::float(name, &weight, bias, Activation::None)?))
        } else {
            Ok(None)
        }
    }

    /// Module `module`'s int8 weight and scales, checked to be `[out_features, in_features]`.
    pub fn int8_weight(&self, module: &str, out_features: usize, in_features: usize) -> Result<QuantizedWeight> {
        let full = self.full_name(module);
        let weight = read_quantized_weight(&self.checkpoint, &full)?;
        if (weight.out_features, weight.in_features) != (out_features, in_features) {
            return Err(self.bad(
                &format!("{full}.weight"),
                format!(
                    "shape [{}, {}], expected [{out_features}, {in_features}]",
                    weight.out_features, weight.in_features
                ),
            ));
        }
        Ok(weight)
    }

    fn bad(&self, tensor: &str, problem: String) -> ModelError {
        ModelError::InvalidWeight { path: self.dir.clone(), tensor: tensor.to_string(), problem }
    }
}
