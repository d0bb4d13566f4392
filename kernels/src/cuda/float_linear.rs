//! [`CudaLinear`]: the fp32 Linear on the GPU for float checkpoints, with the epilogue of
//! [`super::CudaQuantizedLinear`] (bias, activation, then residual). The kernel
//! (`gemm_f32.cu`) is a tiled SIMT GEMM with fp32 accumulation: the float reference path on the
//! GPU, not a tensor-core one.

use super::device::{Arg, CudaDevice, DeviceBuffer};
use super::error::{CudaError, checked_product, int_arg};
use super::launch;
use super::linear::activation_code;
use super::source;
use crate::activation::Activation;
use crate::error::KernelError;

/// A float Linear layer on one GPU: `y = act(x W^T + bias) + residual`, weights `[n, k]` uploaded
/// once as the checkpoint stores them.
#[derive(Debug)]
pub struct CudaLinear {
    device_id: u64,
    n: usize,
    k: usize,
    weights: DeviceBuffer<f32>,
    bias: Option<DeviceBuffer<f32>>,
    activation: Activation,
}

impl CudaLinear {
    /// Uploads row-major `[n, k]` weights and an optional bias of `n`.
    pub fn new(dev: &CudaDevice, weights: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Result<Self, CudaError> {
        for (what, value) in [("n", n), ("k", k)] {
            if value == 0 {
                return Err(KernelError::InvalidDimension { what, value, reason: "must be at least 1" }.into());
            }
            int_arg(what, value)?;
        }
        let nk = checked_product("n", n, k)?;
        if weights.len() != nk {
            return Err(KernelError::ShapeMismatch { what: "weights", expected: nk, found: weights.len() }.into());
        }
        if let Some(b) = bias.filter(|b| b.len() != n) {
            return Err(KernelError::ShapeMismatch { what: "bias", expected: n, found: b.len() }.into());
        }
        Ok(CudaLinear {
            device_id: dev.id(),
            n,
            k,
            weights: dev.upload(weights)?,
            bias: bias.map(|b| dev.upload(b)).transpose()?,
            activation: Activation::None,
        })
    }

    /// Sets the activation applied after bias.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Output features.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The activation of the epilogue.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// `out[..m * n] = layer(x)` for `m` rows of `x` (`m x k`), plus `residual` (`m x n`) after
    /// the activation when given. Queued on the device's stream; nothing waits.
    pub fn forward(
        &self,
        dev: &CudaDevice,
        x: &DeviceBuffer<f32>,
        m: usize,
        residual: Option<&DeviceBuffer<f32>>,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), CudaError> {
        if dev.id() != self.device_id {
            return Err(CudaError::WrongDevice { what: "layer" });
        }
        if m == 0 {
            return Ok(());
        }
        let mn = checked_product("m", m, self.n)?;
        dev.check("x", x, checked_product("m", m, self.k)?)?;
        if let Some(r) = residual {
            dev.check("residual", r, mn)?;
        }
        dev.check("out", out, mn)?;
        int_arg("m x n", mn)?;
        let null = Arg::Ptr(0);
        dev.launch(
            source::GEMM_F32_64,
            launch::gemm_f32_dims(m, self.n)?,
            &[
                x.arg(),
                self.weights.arg(),
                Arg::I32(int_arg("m", m)?),
                Arg::I32(int_arg("n", self.n)?),
                Arg::I32(int_arg("k", self.k)?),
                self.bias.as_ref().map_or(null, DeviceBuffer::arg),
                residual.map_or(null, DeviceBuffer::arg),
                Arg::I32(activation_code(self.activation)),
                out.arg(),
            ],
        )
    }

    /// Convenience: uploads `x` (`m x k`), runs [`forward`](Self::forward), downloads `m x n`.
    pub fn forward_host(&self, dev: &CudaDevice, x: &[f32], m: usize) -> Result<Vec<f32>, CudaError> {
        let x = dev.upload(x)?;
        let mut out = dev.zeros(checked_product("m", m, self.n)?)?;
        self.forward(dev, &x, m, None, &mut out)?;
        dev.download(&out)
    }
}

#[cfg(test)]
mod tests {
    use crate::cuda::source::GEMM_F32;

    #[test]
    fn kernel_parameter_list_matches_the_host_argument_order() {
        // `forward` passes these 9 arguments in this order.
        assert!(GEMM_F32.text.contains(
            "qtier_gemm_f32(const float* __restrict__ x, const float* __restrict__ w, int m, int n, int k,\n                   const float* __restrict__ bias, const float* __restrict__ residual, int act,\n                   float* __restrict__ out)"
        ));
    }
}
