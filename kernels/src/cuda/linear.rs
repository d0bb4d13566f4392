//! [`CudaQuantizedLinear`]: the fused int8 Linear on the GPU, the peer of
//! [`crate::QuantizedLinear`] (same weights, scales, bias, activation and residual semantics).

use std::sync::Mutex;

use super::device::{Arg, CudaDevice, DeviceBuffer};
use super::error::{CudaError, checked_product, int_arg};
use super::launch::{self, GemmKernel};
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

/// The outlier decomposition (LLM.int8(), Dettmers et al., 2022) on the GPU, as qtier's CPU
/// runtime does it (`qtier_models::Int8Options`): a row (token) whose largest magnitude exceeds
/// `trigger_ratio` times its root-mean-square value has its values above `ratio` times that RMS,
/// largest first (ties in channel order) and at most `max_channels` of them, taken out of the
/// int8 GEMM (quantized as zeros, so the row's scale follows its ordinary values); the layer adds
/// `value * dequantized weight` for each in float after the GEMM, before the activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierRule {
    /// A value is an outlier of its row above this multiple of the row's RMS.
    pub ratio: f32,
    /// Only rows whose largest magnitude exceeds this multiple of their RMS are decomposed.
    pub trigger_ratio: f32,
    /// At most this many outliers per row.
    pub max_channels: usize,
}

impl OutlierRule {
    fn check(&self) -> Result<i32, CudaError> {
        let bad = |reason| CudaError::InvalidOutlierRule { rule: format!("{self:?}"), reason };
        if !(self.ratio.is_finite() && self.ratio > 0.0 && self.trigger_ratio.is_finite() && self.trigger_ratio > 0.0) {
            return Err(bad("the ratios must be finite and positive"));
        }
        if self.max_channels == 0 {
            return Err(bad("max_channels must be at least 1"));
        }
        i32::try_from(self.max_channels).map_err(|_| bad("max_channels exceeds i32::MAX"))
    }
}

/// The quantization kernels' outlier arguments when the decomposition is off.
pub(crate) const NO_OUTLIER_ARGS: [Arg; 6] =
    [Arg::Ptr(0), Arg::Ptr(0), Arg::Ptr(0), Arg::I32(0), Arg::F32(0.0), Arg::F32(0.0)];

/// One row's outliers: `(channel, value)` pairs, largest magnitude first.
pub type RowOutliers = Vec<(usize, f32)>;

/// Where the quantization writes a row's outliers: `counts[row]`, and the first `counts[row]` of
/// `channels` / `values[row * max_channels..]`, largest magnitude first.
#[derive(Debug)]
struct OutlierLists {
    rule: OutlierRule,
    /// `rule.max_channels` as the kernels' `int` (checked once, when the lists are made).
    max_outliers: i32,
    counts: DeviceBuffer<i32>,
    channels: DeviceBuffer<i32>,
    values: DeviceBuffer<f32>,
}

/// Rows of activations quantized per token on the device: int8 `[rows, k_padded]` (zero past
/// `k`) and one scale per row, and with [`with_outliers`](Self::with_outliers) each row's
/// outliers ([`OutlierRule`]). Written by [`quantize_rows`] or by the fused LayerNorm
/// ([`super::encoder::layernorm`]), read by [`CudaQuantizedLinear::forward_quantized`].
#[derive(Debug)]
pub struct QuantizedActivations {
    q: DeviceBuffer<i8>,
    scales: DeviceBuffer<f32>,
    rows: usize,
    k: usize,
    outliers: Option<OutlierLists>,
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
            outliers: None,
        })
    }

    /// Room for `rows` rows of `k` features and their outliers under `rule`: whatever quantizes
    /// into these activations takes the outliers out, and a layer that reads them adds them back.
    pub fn with_outliers(dev: &CudaDevice, rows: usize, k: usize, rule: OutlierRule) -> Result<Self, CudaError> {
        let max_outliers = rule.check()?;
        let slots = checked_product("rows", rows, rule.max_channels)?;
        Ok(QuantizedActivations {
            outliers: Some(OutlierLists {
                rule,
                max_outliers,
                counts: dev.zeros(rows)?,
                channels: dev.zeros(slots)?,
                values: dev.zeros(slots)?,
            }),
            ..QuantizedActivations::new(dev, rows, k)?
        })
    }

    /// The outlier rule these activations are quantized with, if any.
    pub fn outlier_rule(&self) -> Option<OutlierRule> {
        self.outliers.as_ref().map(|o| o.rule)
    }

    /// Each row's outliers as the last quantization found them, downloaded; `None` without an
    /// outlier rule. Waits for the device's queued work.
    pub fn download_outliers(&self, dev: &CudaDevice) -> Result<Option<Vec<RowOutliers>>, CudaError> {
        let Some(lists) = &self.outliers else {
            return Ok(None);
        };
        let (counts, channels, values) =
            (dev.download(&lists.counts)?, dev.download(&lists.channels)?, dev.download(&lists.values)?);
        let slots = lists.rule.max_channels;
        let rows = counts[..self.rows]
            .iter()
            .enumerate()
            .map(|(row, &count)| {
                let count = usize::try_from(count).unwrap_or(0).min(slots);
                let first = row * slots;
                (first..first + count).map(|slot| (channels[slot] as usize, values[slot])).collect()
            })
            .collect();
        Ok(Some(rows))
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

    /// The quantization kernels' outlier arguments (`QTIER_OUTLIER_PARAMS` in quant.cu): null
    /// lists without a rule.
    pub(crate) fn outlier_args_mut(&mut self) -> [Arg; 6] {
        match &self.outliers {
            Some(lists) => [
                lists.counts.arg(),
                lists.channels.arg(),
                lists.values.arg(),
                Arg::I32(lists.max_outliers),
                Arg::F32(lists.rule.ratio),
                Arg::F32(lists.rule.trigger_ratio),
            ],
            None => NO_OUTLIER_ARGS,
        }
    }

    pub(crate) fn check(&self, dev: &CudaDevice) -> Result<(), CudaError> {
        dev.check("quantized activations", &self.q, self.rows * self.k_padded())?;
        dev.check("activation scales", &self.scales, self.rows)?;
        if let Some(lists) = &self.outliers {
            let slots = self.rows * lists.rule.max_channels;
            dev.check("outlier counts", &lists.counts, self.rows)?;
            dev.check("outlier channels", &lists.channels, slots)?;
            dev.check("outlier values", &lists.values, slots)?;
        }
        Ok(())
    }
}

/// Quantizes `rows` rows of `x` (`rows x k`, f32) per token into `out` (sized for them).
pub fn quantize_rows(dev: &CudaDevice, x: &DeviceBuffer<f32>, out: &mut QuantizedActivations) -> Result<(), CudaError> {
    let (rows, k) = (out.rows, out.k);
    dev.check("x", x, checked_product("rows", rows, k)?)?;
    out.check(dev)?;
    let (q, s) = out.args_mut();
    let args = [x.arg(), Arg::I32(int_arg("k", k)?), Arg::I32(int_arg("k", out.k_padded())?), q, s];
    let args: Vec<Arg> = args.into_iter().chain(out.outlier_args_mut()).collect();
    dev.launch(source::QUANTIZE_ROWS, launch::row_dims(rows)?, &args)
}

/// Where the GEMM writes.
enum Output<'a> {
    F32(&'a mut DeviceBuffer<f32>),
    F16(&'a mut DeviceBuffer<u16>),
    I32(&'a mut DeviceBuffer<i32>),
}

/// An int8 Linear layer on one GPU: `y = act(x_q W_q^T * x_scale * w_scale + bias) + residual`
/// with per-token activation quantization, weights uploaded once in the layout of
/// [`super::layout`]; with an [`OutlierRule`], the outlier decomposition too (f32 output).
#[derive(Debug)]
pub struct CudaQuantizedLinear {
    device_id: u64,
    n: usize,
    k: usize,
    weights: DeviceBuffer<u32>,
    w_scales: DeviceBuffer<f32>,
    bias: Option<DeviceBuffer<f32>>,
    activation: Activation,
    kernel: Option<GemmKernel>,
    outlier_rule: Option<OutlierRule>,
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
            kernel: None,
            outlier_rule: None,
            scratch: Mutex::new(None),
        })
    }

    /// Sets the activation applied after bias.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Forces the GEMM kernel (default: chosen per call by [`launch::select_gemm`]); a call on
    /// a GPU the kernel does not run on ([`GemmKernel::runs_on`]) fails with
    /// [`CudaError::UnsupportedArch`].
    pub fn with_kernel(mut self, kernel: GemmKernel) -> Self {
        self.kernel = Some(kernel);
        self
    }

    /// Runs [`forward`](Self::forward) with the outlier decomposition under `rule` (the layer
    /// quantizes its input with outlier lists). [`forward_quantized`](Self::forward_quantized)
    /// decomposes whenever its activations carry outlier lists, whatever this says, and
    /// [`forward_f16`](Self::forward_f16) never does.
    pub fn with_outlier_rule(mut self, rule: OutlierRule) -> Result<Self, CudaError> {
        rule.check()?;
        self.outlier_rule = Some(rule);
        Ok(self)
    }

    /// The outlier rule [`forward`](Self::forward) quantizes with, if any.
    pub fn outlier_rule(&self) -> Option<OutlierRule> {
        self.outlier_rule
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
        ShallowLinear { layer: self, kernel: self.kernel }.kernel_for(dev, m)
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

    /// Like [`forward`](Self::forward) with f16 output (`u16` bits, round to nearest even), always
    /// plain per-token W8A8 (the decomposition's float half works on f32 outputs).
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

    /// Runs the layer on activations already quantized (e.g. by the fused LayerNorm), with the
    /// outlier decomposition when they carry outlier lists.
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
    /// (`m x n`) of `kernel` from already-quantized `x_q` (`m x k`); they must equal
    /// [`crate::QuantizedLinear::accumulate_i32`]'s.
    pub fn accumulate_i32(
        &self,
        dev: &CudaDevice,
        x_q: &[i8],
        m: usize,
        kernel: GemmKernel,
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
        let acts =
            QuantizedActivations { q: dev.upload(&padded)?, scales: dev.zeros(m)?, rows: m, k: self.k, outliers: None };
        let mut out = dev.zeros(checked_product("m", m, self.n)?)?;
        ShallowLinear { layer: self, kernel: Some(kernel) }.run(
            dev,
            &acts,
            Activation::None,
            None,
            Output::I32(&mut out),
        )?;
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
            *scratch = Some(match self.outlier_rule {
                Some(rule) => QuantizedActivations::with_outliers(dev, m, self.k, rule)?,
                None => QuantizedActivations::new(dev, m, self.k)?,
            });
        }
        let acts = scratch.as_mut().expect("scratch allocated above");
        // The f16 output is plain W8A8: its quantization leaves the outlier lists out.
        let lists = if matches!(out, Output::F16(_)) { acts.outliers.take() } else { None };
        let full_rows = acts.rows;
        acts.rows = m;
        let result = quantize_rows(dev, x, acts).and_then(|()| self.run(dev, acts, residual, out));
        acts.rows = full_rows;
        if lists.is_some() {
            acts.outliers = lists;
        }
        result
    }

    /// The GEMM, and with outlier lists in `x` (f32 output) the decomposition's float half.
    fn run(
        &self,
        dev: &CudaDevice,
        x: &QuantizedActivations,
        residual: Option<&DeviceBuffer<f32>>,
        out: Output<'_>,
    ) -> Result<(), CudaError> {
        let gemm = ShallowLinear { layer: self, kernel: self.kernel };
        let (lists, out) = match (&x.outliers, out) {
            (Some(lists), Output::F32(out)) => (lists, out),
            (_, out) => return gemm.run(dev, x, self.activation, residual, out),
        };
        // With an activation, the outlier epilogue applies it and the residual after adding the
        // outliers; without one, the GEMM's residual commutes with the outliers' sum.
        let deferred = self.activation != Activation::None;
        let (gemm_activation, gemm_residual) =
            if deferred { (Activation::None, None) } else { (self.activation, residual) };
        gemm.run(dev, x, gemm_activation, gemm_residual, Output::F32(out))?;
        let m = x.rows;
        if m == 0 {
            return Ok(());
        }
        let (epilogue_activation, epilogue_residual) =
            if deferred { (self.activation, residual) } else { (Activation::None, None) };
        dev.launch(
            source::OUTLIER_EPILOGUE,
            launch::outlier_epilogue_dims(m, self.n)?,
            &[
                out.arg(),
                Arg::I32(int_arg("m", m)?),
                Arg::I32(int_arg("n", self.n)?),
                self.weights.arg(),
                Arg::I32(int_arg("k", x.k_padded())?),
                self.w_scales.arg(),
                lists.counts.arg(),
                lists.channels.arg(),
                lists.values.arg(),
                Arg::I32(lists.max_outliers),
                Arg::I32(activation_code(epilogue_activation)),
                epilogue_residual.map_or(Arg::Ptr(0), DeviceBuffer::arg),
            ],
        )
    }
}

/// A layer's buffers with a possibly different forced kernel (`accumulate_i32` forces one).
struct ShallowLinear<'a> {
    layer: &'a CudaQuantizedLinear,
    kernel: Option<GemmKernel>,
}

impl ShallowLinear<'_> {
    /// The forced kernel, else [`launch::select_gemm`]'s for `m` rows on `dev`.
    fn kernel_for(&self, dev: &CudaDevice, m: usize) -> GemmKernel {
        self.kernel.unwrap_or_else(|| launch::select_gemm(dev.arch(), m, self.layer.n, dev.sm_count()))
    }

    /// The GEMM with `activation` and `residual` in its epilogue (the layer's bias always).
    fn run(
        &self,
        dev: &CudaDevice,
        x: &QuantizedActivations,
        activation: Activation,
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
        let kernel = self.kernel_for(dev, m);
        if !kernel.runs_on(dev.arch()) {
            return Err(CudaError::UnsupportedArch { arch: dev.arch(), reason: kernel.requirement() });
        }
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
            Arg::I32(activation_code(activation)),
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
    fn outlier_rules_are_checked() {
        let rule = OutlierRule { ratio: 3.0, trigger_ratio: 8.0, max_channels: 16 };
        assert_eq!(rule.check().unwrap(), 16);
        for bad in [
            OutlierRule { ratio: 0.0, ..rule },
            OutlierRule { ratio: f32::NAN, ..rule },
            OutlierRule { trigger_ratio: -1.0, ..rule },
            OutlierRule { trigger_ratio: f32::INFINITY, ..rule },
            OutlierRule { max_channels: 0, ..rule },
            OutlierRule { max_channels: 1 << 31, ..rule },
        ] {
            let error = bad.check().unwrap_err();
            assert!(matches!(error, CudaError::InvalidOutlierRule { .. }), "{bad:?}: {error}");
            assert!(error.to_string().contains("max_channels") || error.to_string().contains("ratios"), "{error}");
        }
    }

    #[test]
    fn outlier_parameter_lists_match_the_host_argument_order() {
        // `NO_OUTLIER_ARGS` / `outlier_args_mut`, appended to both quantization kernels' arguments.
        let quant = source::QUANT.text;
        assert!(quant.contains(
            "int *__restrict__ outlier_counts, int *__restrict__ outlier_channels, float *__restrict__ outlier_values, \\\n        int max_outliers, float outlier_ratio, float outlier_trigger"
        ));
        assert!(quant.contains("float* __restrict__ scales, QTIER_OUTLIER_PARAMS) {"));
        assert!(quant.contains("int kp, float* __restrict__ scales, QTIER_OUTLIER_PARAMS) {"));
        assert!(matches!(
            NO_OUTLIER_ARGS,
            [Arg::Ptr(0), Arg::Ptr(0), Arg::Ptr(0), Arg::I32(_), Arg::F32(_), Arg::F32(_)]
        ));
        // `CudaQuantizedLinear::run`'s 12 arguments of the outlier epilogue, in order.
        let params =
            "qtier_outlier_epilogue(float* __restrict__ out, int m, int n, const qtier_u32* __restrict__ b, int kp,
                           const float* __restrict__ w_scales, const int* __restrict__ counts,
                           const int* __restrict__ channels, const float* __restrict__ values, int max_outliers,
                           int act, const float* __restrict__ residual)";
        assert!(GEMM.text.contains(params));
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
