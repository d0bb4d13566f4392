//! [`CudaQuantizedLinear`]: the fused int8 Linear on the GPU, the peer of
//! [`crate::QuantizedLinear`] (same weights, scales, bias, activation and residual semantics).

use std::sync::Mutex;

use super::device::{Arg, CudaDevice, DeviceBuffer};
use super::error::{CudaError, checked_product, int_arg};
use super::launch::{self, GemmKernel, GemmPath};
use super::layout::{GpuPackedWeights, KTILE};
use super::source;
use crate::activation::Activation;
use crate::error::KernelError;

/// The epilogue activation's number in the kernels (`QTIER_ACT_*` in qtier_common.cuh).
pub fn activation_code(activation: Activation) -> i32 {
    match activation {
        Activation::None => 0,
        Activation::Relu => 1,
        Activation::GeluErf => 2,
        Activation::GeluTanh => 3,
        Activation::Silu => 4,
    }
}

/// Rows of activations quantized per token on the device: int8 `[rows, k_padded]` (zero past
/// `k`) and one scale per row. Written by [`quantize_rows`] or by the fused LayerNorm
/// ([`super::encoder::layernorm`]), read by [`CudaQuantizedLinear::forward_quantized`].
#[derive(Debug)]
pub struct QuantizedActivations {
    q: DeviceBuffer<i8>,
    scales: DeviceBuffer<f32>,
    rows: usize,
    k: usize,
}

impl QuantizedActivations {
    /// Room for `rows` rows of `k` features.
    pub fn new(dev: &CudaDevice, rows: usize, k: usize) -> Result<Self, CudaError> {
        let kp = k.div_ceil(KTILE) * KTILE;
        Ok(QuantizedActivations {
            q: dev.zeros(checked_product("rows", rows, kp)?)?,
            scales: dev.zeros(rows)?,
            rows,
            k,
        })
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Features per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Row stride of the int8 buffer: `k` rounded up to a multiple of 32.
    pub fn k_padded(&self) -> usize {
        self.k.div_ceil(KTILE) * KTILE
    }

    /// The int8 rows (`rows x k_padded`).
    pub fn values(&self) -> &DeviceBuffer<i8> {
        &self.q
    }

    /// The per-row scales.
    pub fn scales(&self) -> &DeviceBuffer<f32> {
        &self.scales
    }

    pub(crate) fn args_mut(&mut self) -> (Arg, Arg) {
        (self.q.arg(), self.scales.arg())
    }

    pub(crate) fn check(&self, dev: &CudaDevice) -> Result<(), CudaError> {
        dev.check("quantized activations", &self.q, self.rows * self.k_padded())?;
        dev.check("activation scales", &self.scales, self.rows)
    }
}

/// Quantizes `rows` rows of `x` (`rows x k`, f32) per token into `out` (sized for them).
pub fn quantize_rows(dev: &CudaDevice, x: &DeviceBuffer<f32>, out: &mut QuantizedActivations) -> Result<(), CudaError> {
    let (rows, k) = (out.rows, out.k);
    dev.check("x", x, checked_product("rows", rows, k)?)?;
    out.check(dev)?;
    let (q, s) = out.args_mut();
    dev.launch(
        source::QUANTIZE_ROWS,
        launch::row_dims(rows)?,
        &[x.arg(), Arg::I32(int_arg("k", k)?), Arg::I32(int_arg("k", out.k_padded())?), q, s],
    )
}

/// Where the GEMM writes.
enum Output<'a> {
    F32(&'a mut DeviceBuffer<f32>),
    F16(&'a mut DeviceBuffer<u16>),
    I32(&'a mut DeviceBuffer<i32>),
}

/// An int8 Linear layer on one GPU: `y = act(x_q W_q^T * x_scale * w_scale + bias) + residual`
/// with per-token activation quantization, weights uploaded once in the layout of
/// [`super::layout`].
#[derive(Debug)]
pub struct CudaQuantizedLinear {
    device_id: u64,
    n: usize,
    k: usize,
    weights: DeviceBuffer<u32>,
    w_scales: DeviceBuffer<f32>,
    bias: Option<DeviceBuffer<f32>>,
    activation: Activation,
    path: Option<GemmPath>,
    scratch: Mutex<Option<QuantizedActivations>>,
}

impl CudaQuantizedLinear {
    /// Uploads row-major `[n, k]` int8 weights in [-127, 127], `n` per-channel scales and an
    /// optional bias (the checks of [`crate::QuantizedLinear::new`]).
    pub fn new(
        dev: &CudaDevice,
        weights: &[i8],
        scales: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        k: usize,
    ) -> Result<Self, CudaError> {
        let packed = GpuPackedWeights::new(weights, n, k)?;
        let check = |what: &'static str, v: &[f32]| -> Result<Vec<f32>, KernelError> {
            if v.len() != n {
                return Err(KernelError::ShapeMismatch { what, expected: n, found: v.len() });
            }
            if let Some(index) = v.iter().position(|s| !s.is_finite()) {
                return Err(KernelError::NonFinite { what, index });
            }
            let mut padded = v.to_vec();
            padded.resize(packed.n_padded(), 0.0);
            Ok(padded)
        };
        let w_scales = check("scales", scales)?;
        let bias = bias.map(|b| check("bias", b)).transpose()?;
        int_arg("n", packed.n_padded())?;
        int_arg("k", packed.k_padded())?;
        Ok(CudaQuantizedLinear {
            device_id: dev.id(),
            n,
            k,
            weights: dev.upload(&packed.words())?,
            w_scales: dev.upload(&w_scales)?,
            bias: bias.map(|b| dev.upload(&b)).transpose()?,
            activation: Activation::None,
            path: None,
            scratch: Mutex::new(None),
        })
    }

    /// Sets the activation applied after bias.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Forces the GEMM algorithm (default: chosen per call by [`launch::select_gemm`]).
    pub fn with_path(mut self, path: GemmPath) -> Self {
        self.path = Some(path);
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

    /// The kernel a call with `m` rows runs on `dev`.
    pub fn kernel_for(&self, dev: &CudaDevice, m: usize) -> GemmKernel {
        launch::select_gemm(dev.arch(), m, self.n, dev.sm_count(), self.path)
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
        self.quantize_and_run(dev, x, m, residual, Output::F32(out))
    }

    /// Like [`forward`](Self::forward) with f16 output (`u16` bits, round to nearest even).
    pub fn forward_f16(
        &self,
        dev: &CudaDevice,
        x: &DeviceBuffer<f32>,
        m: usize,
        residual: Option<&DeviceBuffer<f32>>,
        out: &mut DeviceBuffer<u16>,
    ) -> Result<(), CudaError> {
        self.quantize_and_run(dev, x, m, residual, Output::F16(out))
    }

    /// Runs the layer on activations already quantized (e.g. by the fused LayerNorm).
    pub fn forward_quantized(
        &self,
        dev: &CudaDevice,
        x: &QuantizedActivations,
        residual: Option<&DeviceBuffer<f32>>,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), CudaError> {
        self.run(dev, x, residual, Output::F32(out))
    }

    /// Convenience: uploads `x` (`m x k`), runs [`forward`](Self::forward), downloads `m x n`.
    pub fn forward_host(&self, dev: &CudaDevice, x: &[f32], m: usize) -> Result<Vec<f32>, CudaError> {
        let x = dev.upload(x)?;
        let mut out = dev.zeros(checked_product("m", m, self.n)?)?;
        self.forward(dev, &x, m, None, &mut out)?;
        dev.download(&out)
    }

    /// Test and benchmark hook: the exact i32 accumulators `sum_k x_q[m][k] * W[n][k]`
    /// (`m x n`) of the `path` kernels from already-quantized `x_q` (`m x k`); they must equal
    /// [`crate::QuantizedLinear::accumulate_i32`]'s.
    pub fn accumulate_i32(
        &self,
        dev: &CudaDevice,
        x_q: &[i8],
        m: usize,
        path: GemmPath,
    ) -> Result<Vec<i32>, CudaError> {
        let mk = checked_product("m", m, self.k)?;
        if x_q.len() != mk {
            return Err(KernelError::ShapeMismatch { what: "x_q", expected: mk, found: x_q.len() }.into());
        }
        let kp = self.k.div_ceil(KTILE) * KTILE;
        let mut padded = vec![0i8; checked_product("m", m, kp)?];
        for (dst, src) in padded.chunks_exact_mut(kp).zip(x_q.chunks_exact(self.k)) {
            dst[..self.k].copy_from_slice(src);
        }
        let acts = QuantizedActivations { q: dev.upload(&padded)?, scales: dev.zeros(m)?, rows: m, k: self.k };
        let mut out = dev.zeros(checked_product("m", m, self.n)?)?;
        ShallowLinear { layer: self, path: Some(path) }.run(dev, &acts, None, Output::I32(&mut out))?;
        dev.download(&out)
    }

    fn quantize_and_run(
        &self,
        dev: &CudaDevice,
        x: &DeviceBuffer<f32>,
        m: usize,
        residual: Option<&DeviceBuffer<f32>>,
        out: Output<'_>,
    ) -> Result<(), CudaError> {
        if dev.id() != self.device_id {
            return Err(CudaError::WrongDevice { what: "layer" });
        }
        // The scratch stays locked while both kernels are queued, so concurrent callers
        // cannot interleave their quantization and GEMM on the stream.
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if scratch.as_ref().is_none_or(|s| s.rows < m) {
            *scratch = Some(QuantizedActivations::new(dev, m, self.k)?);
        }
        let acts = scratch.as_mut().expect("scratch allocated above");
        let full_rows = acts.rows;
        acts.rows = m;
        let result = quantize_rows(dev, x, acts).and_then(|()| self.run(dev, acts, residual, out));
        acts.rows = full_rows;
        result
    }

    fn run(
        &self,
        dev: &CudaDevice,
        x: &QuantizedActivations,
        residual: Option<&DeviceBuffer<f32>>,
        out: Output<'_>,
    ) -> Result<(), CudaError> {
        ShallowLinear { layer: self, path: self.path }.run(dev, x, residual, out)
    }
}

/// A layer's buffers with a possibly different forced path (`accumulate_i32` forces one).
struct ShallowLinear<'a> {
    layer: &'a CudaQuantizedLinear,
    path: Option<GemmPath>,
}

impl ShallowLinear<'_> {
    fn run(
        &self,
        dev: &CudaDevice,
        x: &QuantizedActivations,
        residual: Option<&DeviceBuffer<f32>>,
        out: Output<'_>,
    ) -> Result<(), CudaError> {
        let l = self.layer;
        if dev.id() != l.device_id {
            return Err(CudaError::WrongDevice { what: "layer" });
        }
        if x.k != l.k {
            return Err(KernelError::ShapeMismatch { what: "x", expected: l.k, found: x.k }.into());
        }
        let m = x.rows;
        if m == 0 {
            return Ok(());
        }
        x.check(dev)?;
        let mn = checked_product("m", m, l.n)?;
        let null = Arg::Ptr(0);
        if let Some(r) = residual {
            dev.check("residual", r, mn)?;
        }
        let (out_f32, out_f16, acc) = match out {
            Output::F32(o) => {
                dev.check("out", o, mn)?;
                (o.arg(), null, null)
            }
            Output::F16(o) => {
                dev.check("out", o, mn)?;
                (null, o.arg(), null)
            }
            Output::I32(o) => {
                dev.check("out", o, mn)?;
                (null, null, o.arg())
            }
        };
        let kernel = launch::select_gemm(dev.arch(), m, l.n, dev.sm_count(), self.path);
        let args = [
            x.q.arg(),
            l.weights.arg(),
            Arg::I32(int_arg("m", m)?),
            Arg::I32(int_arg("n", l.n)?),
            Arg::I32(int_arg("k", x.k_padded())?),
            x.scales.arg(),
            l.w_scales.arg(),
            l.bias.as_ref().map_or(null, DeviceBuffer::arg),
            residual.map_or(null, DeviceBuffer::arg),
            Arg::I32(activation_code(l.activation)),
            out_f32,
            out_f16,
            acc,
        ];
        dev.launch(kernel.function(), launch::gemm_dims(kernel, m, l.n)?, &args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::source::{GEMM, HEADERS};

    #[test]
    fn activation_codes_match_the_kernel_header() {
        let header = HEADERS[0].text;
        for (act, name) in [
            (Activation::None, "QTIER_ACT_NONE"),
            (Activation::Relu, "QTIER_ACT_RELU"),
            (Activation::GeluErf, "QTIER_ACT_GELU_ERF"),
            (Activation::GeluTanh, "QTIER_ACT_GELU_TANH"),
            (Activation::Silu, "QTIER_ACT_SILU"),
        ] {
            assert_eq!(source::define_value(header, name), Some(i64::from(activation_code(act))), "{name}");
        }
    }

    #[test]
    fn gemm_parameter_list_matches_the_host_argument_order() {
        // The host passes these 13 arguments in this order (`ShallowLinear::run`).
        let params = "const qtier_s8 *__restrict__ a, const qtier_u32 *__restrict__ b, int m, int n, int kp,";
        assert!(GEMM.text.contains(params));
        assert!(GEMM.text.contains(
            "#define QTIER_GEMM_ARGS a, b, m, n, kp, x_scales, w_scales, bias, residual, act, out, out_f16, acc_out"
        ));
    }
}
