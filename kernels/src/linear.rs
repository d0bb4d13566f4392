//! [`QuantizedLinear`]: an int8 Linear layer with dynamic per-token activation quantization and a
//! fused epilogue (scales, bias, activation, residual).

use std::cell::Cell;
use std::num::NonZeroUsize;

use crate::activation::Activation;
use crate::dispatch::{KernelKind, selected_kernel};
use crate::error::KernelError;
use crate::gemm::{self, EpilogueArgs};
use crate::pack::{BLOCK_COLS, PackedWeights};
use crate::quant::{self, ActEncoding};

thread_local! {
    // Per-thread scratch for quantized activations and row scales, so `forward` does not
    // allocate once warmed up. Taken out of the cell while in use: a re-entrant call (rayon may
    // run another task on this thread while it waits) gets fresh buffers instead of a panic.
    static ACT_SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    static SCALE_SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Activations (M x K) from which quantization is split over the worker threads too: the row
/// loop costs about 0.15 ns per element (128x768: 15 us, 4% of the GEMM, serial before it),
/// while handing rows to the pool costs 0.1-0.3 us. At 32x384 (12 K elements) the split measured
/// 22.6-22.8 us for 32x384x1536 against 23.1-23.3 us serial (2 threads, alternating binaries).
const PAR_QUANT_MIN_ELEMS: usize = 4 * 1024;

/// Restores a taken scratch buffer into its thread-local cell when dropped.
struct Scratch<T: 'static> {
    buf: Vec<T>,
    cell: &'static std::thread::LocalKey<Cell<Vec<T>>>,
}

impl<T: 'static> Scratch<T> {
    fn take(cell: &'static std::thread::LocalKey<Cell<Vec<T>>>) -> Self {
        Scratch { buf: cell.with(Cell::take), cell }
    }
}

impl<T: 'static> Drop for Scratch<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.cell.with(|c| c.set(buf));
    }
}

fn resize<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// An int8 Linear layer `y = act(dequant(x_q W_q^T) + bias) (+ residual)`, built once from
/// symmetric per-channel int8 weights and run many times.
///
/// `forward` quantizes each row of `x` to int8 with its own scale (`max|row| / 127`), computes
/// exact i32 dot products with the packed weights on the selected kernel, and applies
/// `acc * x_scale[m] * w_scale[n] + bias[n]`, the activation and the residual per output tile.
#[derive(Debug, Clone)]
pub struct QuantizedLinear {
    packed: PackedWeights,
    w_scales: Vec<f32>,
    bias: Vec<f32>,
    has_bias: bool,
    activation: Activation,
    kernel: KernelKind,
    threads: Option<NonZeroUsize>,
}

impl QuantizedLinear {
    /// Builds the layer from row-major `[n, k]` int8 weights in [-127, 127], `n` per-channel
    /// scales and an optional bias of `n` values. Uses [`selected_kernel`] (the best kernel the
    /// CPU supports, or `QTIER_KERNEL`), no activation and the threads of this crate's pool.
    pub fn new(weights: &[i8], scales: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Result<Self, KernelError> {
        let kernel = selected_kernel()?;
        let packed = PackedWeights::new(weights, n, k)?;
        let check = |what: &'static str, v: &[f32]| -> Result<(), KernelError> {
            if v.len() != n {
                return Err(KernelError::ShapeMismatch { what, expected: n, found: v.len() });
            }
            match v.iter().position(|s| !s.is_finite()) {
                Some(index) => Err(KernelError::NonFinite { what, index }),
                None => Ok(()),
            }
        };
        check("scales", scales)?;
        if let Some(b) = bias {
            check("bias", b)?;
        }
        let padded = packed.col_blocks() * BLOCK_COLS;
        let mut w_scales = scales.to_vec();
        w_scales.resize(padded, 0.0);
        let mut bias_v = bias.map(<[f32]>::to_vec).unwrap_or_default();
        bias_v.resize(padded, 0.0);
        Ok(QuantizedLinear {
            packed,
            w_scales,
            bias: bias_v,
            has_bias: bias.is_some(),
            activation: Activation::None,
            kernel,
            threads: None,
        })
    }

    /// Sets the activation applied after bias.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Sets the number of parallel tasks per call (default: the threads of this crate's pool,
    /// [`crate::parallelism`]). `0` is rejected. Tasks run on the calling thread and this
    /// crate's spinning worker pool (sized by [`crate::set_threads`], else one worker per core
    /// besides the caller), so at most [`crate::parallelism`] run at once.
    pub fn with_threads(mut self, threads: usize) -> Result<Self, KernelError> {
        self.threads = Some(task_count(threads)?);
        Ok(self)
    }

    /// Forces a kernel; fails if this CPU cannot run it.
    pub fn with_kernel(mut self, kind: KernelKind) -> Result<Self, KernelError> {
        self.kernel = kind.check_supported()?;
        Ok(self)
    }

    /// Output features.
    pub fn n(&self) -> usize {
        self.packed.n()
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.packed.k()
    }

    /// The kernel `forward` runs.
    pub fn kernel(&self) -> KernelKind {
        self.kernel
    }

    /// The activation of the epilogue.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Whether the layer adds a bias.
    pub fn has_bias(&self) -> bool {
        self.has_bias
    }

    /// Parallel tasks per call (the configured cap, else the threads of this crate's pool).
    pub fn threads(&self) -> usize {
        tasks_or_default(self.threads)
    }

    /// The packed weights (layout documented in [`crate::pack`]).
    pub fn packed(&self) -> &PackedWeights {
        &self.packed
    }

    /// `y = layer(x)` for `m` rows of `x` (row-major `m x k`); returns `m x n` row-major.
    pub fn forward(&self, x: &[f32], m: usize) -> Result<Vec<f32>, KernelError> {
        let mut out = vec![0.0; m.saturating_mul(self.n())];
        self.forward_into(x, m, &mut out, None)?;
        Ok(out)
    }

    /// Like [`forward`](Self::forward), writing into `out[..m * n]` and adding `residual`
    /// (`m x n`, row-major) after the activation when given. Allocation-free once the calling
    /// thread has run a call of this size.
    pub fn forward_into(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        residual: Option<&[f32]>,
    ) -> Result<(), KernelError> {
        self.forward_into_with_activation(x, m, out, residual, self.activation)
    }

    /// Like [`forward_into`](Self::forward_into) with `activation` in place of the layer's own
    /// (e.g. [`Activation::None`] to add a correction before applying the activation with
    /// [`crate::activation::apply_in_place`]), without a second copy of the packed weights.
    pub fn forward_into_with_activation(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        residual: Option<&[f32]>,
        activation: Activation,
    ) -> Result<(), KernelError> {
        let (n, k, kp) = (self.n(), self.k(), self.packed.k_padded());
        let mk = check_input_len(m, k, "x", x.len())?;
        let mn = check_output_len(m, n, out.len())?;
        if let Some(r) = residual
            && r.len() != mn
        {
            return Err(KernelError::ShapeMismatch { what: "residual", expected: mn, found: r.len() });
        }
        if m == 0 {
            return Ok(());
        }
        if m == 1 && gemm::has_gemv(self.kernel) {
            self.forward_row(x, out, residual, activation);
            return Ok(());
        }
        let mut act = Scratch::take(&ACT_SCRATCH);
        let mut scales = Scratch::take(&SCALE_SCRATCH);
        resize(&mut act.buf, m * kp);
        resize(&mut scales.buf, m);
        let (a, xs) = (&mut act.buf[..m * kp], &mut scales.buf[..m]);
        let enc = gemm::encoding(self.kernel);
        let kind = self.kernel;
        let q_parts = if mk >= PAR_QUANT_MIN_ELEMS { self.threads().min(m) } else { 1 };
        if q_parts > 1 {
            let (a_ptr, s_ptr) = (SendPtr(a.as_mut_ptr()), SendPtr(xs.as_mut_ptr()));
            crate::pool::global().run(q_parts, &|p| {
                let (a_ptr, s_ptr) = (&a_ptr, &s_ptr);
                let (r0, r1) = (m * p / q_parts, m * (p + 1) / q_parts);
                // SAFETY: parts cover disjoint row ranges of `a` (m * kp bytes) and `xs` (m).
                let (a_part, s_part) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(a_ptr.0.add(r0 * kp), (r1 - r0) * kp),
                        std::slice::from_raw_parts_mut(s_ptr.0.add(r0), r1 - r0),
                    )
                };
                quant::quantize_rows(kind, &x[r0 * k..r1 * k], k, kp, enc, a_part, s_part);
            });
        } else {
            quant::quantize_rows(kind, &x[..mk], k, kp, enc, a, xs);
        }
        let (xs, a) = (&*xs, &*a);
        let args = EpilogueArgs { x_scales: xs, w_scales: &self.w_scales, bias: &self.bias, activation };
        let out_ptr = SendPtr(out.as_mut_ptr());
        let res_ptr = residual.map(|r| SendConstPtr(r.as_ptr()));
        let direct = gemm::DirectTarget {
            out: out.as_mut_ptr(),
            n,
            x_scales: xs.as_ptr(),
            w_scales: self.w_scales.as_ptr(),
            bias: self.bias.as_ptr(),
            needs_sink: activation != Activation::None || residual.is_some(),
        };
        let direct_done = gemm::supports_direct(kind);
        let sink = |row0: usize, rows: usize, cb: usize, tile: &gemm::Tile| {
            let (o, r) = (&out_ptr, &res_ptr);
            // SAFETY: `out` holds at least m * n floats and `residual` exactly m * n (checked
            // above); run_tiles hands each (row block, column block) tile to one call only.
            unsafe { args.apply(kind, tile, row0, rows, cb, n, o.0, r.as_ref().map(|p| p.0), direct_done) };
        };
        // SAFETY: `direct` describes `out` (>= m * n), `xs` (m) and the scale and bias vectors
        // padded to whole column blocks at construction.
        unsafe { gemm::run_tiles(kind, &self.packed, a, m, self.threads(), Some(direct), &sink) };
        Ok(())
    }

    /// One row (`x` with k values, `out` and `residual` with n, checked by the caller) on the
    /// dedicated M = 1 kernel, split over the columns. Each part quantizes the row itself
    /// (tens of nanoseconds, the same bytes and scale on every thread) instead of reading the
    /// caller's copy: the caller hands the job out before quantizing, and a worker's first weight
    /// loads no longer wait for the quantized row's lines to come over from the caller's core.
    /// 1x384x1536 on 2 threads: 1.83-1.85 us against 1.96 us with the caller quantizing first
    /// (`qtier bench kernels`, alternating builds); in a period when this machine's two cores
    /// exchanged lines slowly, 2.26-2.30 against 2.9-3.1 us. The job's values travel in the
    /// pool's publish line and the caller's part is one panel longer (`gemm::part_panels`):
    /// together 1.83 against 1.87 us (medians of 16 interleaved rounds, faster in all 16).
    fn forward_row(&self, x: &[f32], out: &mut [f32], residual: Option<&[f32]>, activation: Activation) {
        let parts = gemm::gemv_parts(&self.packed, self.threads());
        let (x_ptr, out_ptr) = (SendConstPtr(x.as_ptr()), SendPtr(out.as_mut_ptr()));
        let res_ptr = SendConstPtr(residual.map_or(std::ptr::null(), <[f32]>::as_ptr));
        // Five words, copied into the pool's publish line (`run_copied`): a worker finds the
        // job's values there instead of fetching them from the caller's stack, and everything
        // else from the layer, which its core already holds.
        let part = move |part: usize| {
            // SAFETY: the pointers come from the slices above, which outlive the pool call:
            // `x` with k floats and `out` (and `residual`, when not null) with n (checked by the
            // caller); parts write disjoint columns of `out`.
            unsafe { self.row_part(x_ptr, out_ptr, res_ptr, activation, part) }
        };
        crate::pool::global().run_copied(parts, part);
    }

    /// Part `part` of [`forward_row`](Self::forward_row) (of `gemv_parts` parts, recomputed here
    /// rather than carried: the closure must fit the pool's publish line).
    ///
    /// # Safety
    /// `x` points to k floats, `out` to n, `residual` to n or is null; no other thread writes the
    /// part's columns of `out` meanwhile.
    unsafe fn row_part(
        &self,
        x: SendConstPtr,
        out: SendPtr<f32>,
        residual: SendConstPtr,
        activation: Activation,
        part: usize,
    ) {
        let (n, k, kp, kind) = (self.n(), self.k(), self.packed.k_padded(), self.kernel);
        let parts = gemm::gemv_parts(&self.packed, self.threads());
        // SAFETY: the caller's contract.
        let (x, residual) = unsafe {
            (
                std::slice::from_raw_parts(x.0, k),
                (!residual.0.is_null()).then(|| std::slice::from_raw_parts(residual.0, n)),
            )
        };
        let needs_sink = activation != Activation::None || residual.is_some();
        let mut act = Scratch::take(&ACT_SCRATCH);
        resize(&mut act.buf, kp);
        let a = &mut act.buf[..kp];
        let mut x_scale = [0.0f32];
        quant::quantize_rows(kind, x, k, kp, gemm::encoding(kind), a, &mut x_scale);
        let direct = gemm::DirectTarget {
            out: out.0,
            n,
            x_scales: x_scale.as_ptr(),
            w_scales: self.w_scales.as_ptr(),
            bias: self.bias.as_ptr(),
            needs_sink,
        };
        // SAFETY: `has_gemv(kind)` was checked by `forward_row`'s caller; `direct` describes
        // `out` (n floats), the row's scale and the scale and bias vectors padded to whole
        // column blocks; the parts write disjoint columns.
        let cols = unsafe { gemm::gemv_part(kind, &self.packed, a, direct, part, parts) };
        if needs_sink {
            // SAFETY: `out` and `residual` hold n floats (one row) and `cols` is within n; this
            // part alone writes these columns.
            let (dst, res) = unsafe {
                (std::slice::from_raw_parts_mut(out.0.add(cols.start), cols.len()), residual.map(|r| &r[cols.clone()]))
            };
            gemm::finish_direct(kind, activation, res, dst);
        }
    }

    /// Test and benchmark hook: the exact i32 accumulators `sum_k x_q[m][k] * W[n][k]` (`m x n`
    /// row-major) computed by kernel `kind` from already-quantized activations `x_q` (`m x k`).
    /// Every kernel must return the same values as [`KernelKind::Scalar`].
    pub fn accumulate_i32(&self, kind: KernelKind, x_q: &[i8], m: usize) -> Result<Vec<i32>, KernelError> {
        let kind = kind.check_supported()?;
        let (n, k, kp) = (self.n(), self.k(), self.packed.k_padded());
        check_input_len(m, k, "x_q", x_q.len())?;
        let enc = gemm::encoding(kind);
        let mut a = vec![0u8; m * kp];
        for (dst, src) in a.chunks_exact_mut(kp).zip(x_q.chunks_exact(k)) {
            for (d, &q) in dst.iter_mut().zip(src) {
                *d = match enc {
                    ActEncoding::Signed => q as u8,
                    ActEncoding::Offset => (q as u8) ^ 0x80,
                };
            }
            let zero = if enc == ActEncoding::Offset { 0x80 } else { 0 };
            dst[k..].fill(zero);
        }
        let mut out = vec![0i32; m * n];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let sink = |row0: usize, rows: usize, cb: usize, tile: &gemm::Tile| {
            let o = &out_ptr;
            let c0 = cb * BLOCK_COLS;
            let cols = BLOCK_COLS.min(n - c0);
            for (r, acc) in tile.iter().enumerate().take(rows) {
                // SAFETY: (row0 + r) < m and c0 + cols <= n, so the segment lies inside `out`
                // (m * n); each tile is handed to one call only.
                let dst = unsafe { std::slice::from_raw_parts_mut(o.0.add((row0 + r) * n + c0), cols) };
                dst.copy_from_slice(&acc[..cols]);
            }
        };
        // SAFETY: no direct output: the kernels only fill i32 tiles.
        unsafe { gemm::run_tiles(kind, &self.packed, &a, m, self.threads(), None, &sink) };
        Ok(out)
    }
}

/// `threads` as a task count of a layer's calls; 0 is rejected.
pub(crate) fn task_count(threads: usize) -> Result<NonZeroUsize, KernelError> {
    NonZeroUsize::new(threads).ok_or(KernelError::InvalidDimension {
        what: "threads",
        value: 0,
        reason: "must be at least 1",
    })
}

/// A layer's task count: its own setting, else the threads of the pool the tasks run on.
pub(crate) fn tasks_or_default(threads: Option<NonZeroUsize>) -> usize {
    threads.map_or_else(crate::parallelism, NonZeroUsize::get)
}

/// Checks that an `m x k` input called `what` has `found` elements; returns `m * k`.
pub(crate) fn check_input_len(m: usize, k: usize, what: &'static str, found: usize) -> Result<usize, KernelError> {
    let expected = m.checked_mul(k).ok_or(KernelError::InvalidDimension {
        what: "m",
        value: m,
        reason: "m * k overflows usize",
    })?;
    if found != expected {
        return Err(KernelError::ShapeMismatch { what, expected, found });
    }
    Ok(expected)
}

/// Checks that an output of `found` elements holds `m x n`; returns `m * n`.
pub(crate) fn check_output_len(m: usize, n: usize, found: usize) -> Result<usize, KernelError> {
    let needed = m.checked_mul(n).ok_or(KernelError::InvalidDimension {
        what: "m",
        value: m,
        reason: "m * n overflows usize",
    })?;
    if found < needed {
        return Err(KernelError::OutputTooSmall { needed, found });
    }
    Ok(needed)
}

/// A raw output pointer shared by the tasks of one call, which write disjoint tiles.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: only used to write disjoint tiles of a buffer that outlives the parallel section.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above; no two tasks touch the same element.
unsafe impl<T> Sync for SendPtr<T> {}

#[derive(Clone, Copy)]
struct SendConstPtr(*const f32);
// SAFETY: read-only view of an input or residual buffer that outlives the parallel section.
unsafe impl Send for SendConstPtr {}
// SAFETY: as above.
unsafe impl Sync for SendConstPtr {}
