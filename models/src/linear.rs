//! One Linear layer, float (candle matmul) or int8 (qtier's fused kernel), with the same epilogue:
//! bias, activation, optional residual.

use candle_core::{Device, Tensor};
use qtier_kernels::{Activation, QuantizedLinear};

use crate::error::Result;

/// The weights behind a [`Linear`].
#[derive(Debug, Clone)]
enum LinearKind {
    /// `x @ weight_t + bias` in f32; `weight_t` is `[in, out]`, contiguous.
    Float { weight_t: Tensor, bias: Tensor },
    /// The fused int8 kernel (bias and activation inside).
    Int8(Box<QuantizedLinear>),
}

/// A Linear layer `act(x W^T + b)`, optionally plus a residual.
#[derive(Debug, Clone)]
pub struct Linear {
    name: String,
    kind: LinearKind,
    activation: Activation,
    out_features: usize,
}

impl Linear {
    /// A float layer from `weight` `[out, in]` and `bias` `[out]`.
    pub fn float(name: &str, weight: &Tensor, bias: Tensor, activation: Activation) -> Result<Linear> {
        let out_features = weight.dim(0)?;
        let weight_t = weight.t()?.contiguous()?;
        Ok(Linear { name: name.to_string(), kind: LinearKind::Float { weight_t, bias }, activation, out_features })
    }

    /// An int8 layer (its activation is fused in the kernel).
    pub fn int8(name: &str, layer: QuantizedLinear) -> Linear {
        Linear {
            name: name.to_string(),
            activation: layer.activation(),
            out_features: layer.n(),
            kind: LinearKind::Int8(Box::new(layer)),
        }
    }

    /// The module's name in the checkpoint.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when the layer runs on the int8 kernel.
    pub fn is_int8(&self) -> bool {
        matches!(self.kind, LinearKind::Int8(_))
    }

    /// The int8 kernel variant, for an int8 layer.
    pub fn kernel(&self) -> Option<qtier_kernels::KernelKind> {
        match &self.kind {
            LinearKind::Int8(layer) => Some(layer.kernel()),
            LinearKind::Float { .. } => None,
        }
    }

    /// `act(x W^T + b) (+ residual)` for `x` `[rows, in]`; returns `[rows, out]`.
    pub fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        match &self.kind {
            LinearKind::Float { weight_t, bias } => {
                let y = x.matmul(weight_t)?.broadcast_add(bias)?;
                let y = match self.activation {
                    Activation::GeluErf => y.gelu_erf()?,
                    Activation::GeluTanh => y.gelu()?,
                    Activation::Relu => y.relu()?,
                    Activation::Silu => y.silu()?,
                    _ => y,
                };
                Ok(match residual {
                    Some(residual) => (y + residual)?,
                    None => y,
                })
            }
            LinearKind::Int8(layer) => {
                let rows = x.dim(0)?;
                let input = x.flatten_all()?.to_vec1::<f32>()?;
                let residual = residual.map(|r| r.flatten_all()?.to_vec1::<f32>()).transpose()?;
                let mut output = vec![0.0f32; rows * self.out_features];
                layer.forward_into(&input, rows, &mut output, residual.as_deref())?;
                Ok(Tensor::from_vec(output, (rows, self.out_features), &Device::Cpu)?)
            }
        }
    }
}
