//! The tile driver shared by every kernel: splits the output into (row block x 64-column block)
//! tiles, hands tiles to threads, and runs the fused epilogue on each tile while it is in L1.

use std::ops::Range;

use crate::activation::{Activation, gelu_erf, gelu_tanh, silu};
use crate::dispatch::KernelKind;
use crate::pack::{BLOCK_COLS, BLOCK_PANELS, KGROUP, KGroupBlock, PANEL_COLS, PackedWeights};
use crate::quant::ActEncoding;

/// Most rows any kernel's tile has.
pub(crate) const MR_MAX: usize = 6;

/// Exact i32 dot products of one tile: up to [`MR_MAX`] rows x one 64-column block.
pub(crate) type Tile = [[i32; BLOCK_COLS]; MR_MAX];

/// Below this many operations (2 M N K) a call runs on the calling thread. Measured with the
/// spinning pool ([`crate::pool`]): 1x384x1536 (1.2 MOP) took 2.3 us on 2 threads vs 3.3 us on
/// one, so the fork pays for itself from about 1 MOP.
pub(crate) const PAR_MIN_OPS: usize = 1_000_000;

/// Rows per tile of `kind`.
pub(crate) fn rows_per_tile(kind: KernelKind) -> usize {
    match kind {
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx512Vnni => crate::avx512::MR,
        #[cfg(target_arch = "x86_64")]
        KernelKind::AvxVnni => crate::avxvnni::MR,
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx2 => crate::avx2::MR,
        _ => crate::scalar::MR,
    }
}

/// How `kind` wants its activations encoded.
pub(crate) fn encoding(kind: KernelKind) -> ActEncoding {
    match kind {
        KernelKind::Avx512Vnni | KernelKind::AvxVnni => ActEncoding::Offset,
        _ => ActEncoding::Signed,
    }
}

/// One call of a tile kernel: `rows` activation rows x one 64-column block, over one chunk of
/// `k_groups` k groups. The kernel writes (`first`) or adds to `tile`, and on the `last` chunk
/// applies the column-sum correction of the offset encoding, leaving exact dot products.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct TileJob<'a> {
    /// Activations of the chunk: row `r` starts at `r * a_stride`.
    pub(crate) a: &'a [u8],
    /// Row stride of `a` (the padded K).
    pub(crate) a_stride: usize,
    /// K groups in this chunk.
    pub(crate) k_groups: usize,
    /// Rows of the tile (1..=the kernel's MR).
    pub(crate) rows: usize,
    /// The chunk's blocks of the column block, `[k group][panel]`.
    pub(crate) blocks: &'a [KGroupBlock],
    /// The column block's 64 column sums.
    pub(crate) col_sums: &'a [i32],
    /// First K chunk: start from zero instead of `tile`.
    pub(crate) first: bool,
    /// Last K chunk: subtract `128 * col_sums` (offset-encoded kernels).
    pub(crate) last: bool,
    /// Weights to software-prefetch while this job runs: `prefetch_per_group` consecutive
    /// cache lines from here per k group. Only an address hint (never dereferenced), so it may
    /// point past the weights; kernels that do not prefetch ignore it.
    pub(crate) prefetch: *const u8,
    /// Cache lines to prefetch per k group (0 = none).
    pub(crate) prefetch_per_group: usize,
    /// On the last chunk, write `acc * x_scale * w_scale + bias` straight to the output instead
    /// of the i32 tile (kernels that support it; see [`DirectOut`]).
    pub(crate) direct: Option<DirectOut>,
}

/// Where a kernel writes the dequantized tile itself: `acc * (x_scale * w_scale) + bias`
/// (fused multiply-add, no activation), skipping the i32 tile's store and reload and the
/// per-row epilogue calls, which were about 13% of a 6x64 tile at K = 384 (32x384x1536).
/// Only the AVX-512 kernel does this; the activation and residual then run over the written
/// rows in place.
#[derive(Clone, Copy)]
pub(crate) struct DirectOut {
    /// `out[row0][c0]`.
    pub(crate) out: *mut f32,
    /// Row stride of `out` (N).
    pub(crate) stride: usize,
    /// Valid columns of this column block (1..=64); lanes beyond are not written.
    pub(crate) cols: usize,
    /// `x_scales[row0..]`.
    pub(crate) x_scales: *const f32,
    /// `w_scales[c0..c0 + 64]` (padded with zeros past N).
    pub(crate) w_scales: *const f32,
    /// `bias[c0..c0 + 64]` (padded with zeros past N).
    pub(crate) bias: *const f32,
}

/// The whole output for [`DirectOut`]: row-major `m x n` `out`, `x_scales[m]`, and the
/// column-padded `w_scales` and `bias`.
#[derive(Clone, Copy)]
pub(crate) struct DirectTarget {
    pub(crate) out: *mut f32,
    pub(crate) n: usize,
    pub(crate) x_scales: *const f32,
    pub(crate) w_scales: *const f32,
    pub(crate) bias: *const f32,
    /// Whether the sink still has work after a direct write (an activation or a residual).
    /// Without, [`run_tiles`] does not call it for directly written tiles: each call reads
    /// the caller's epilogue arguments, which on a worker thread are lines to fetch from the
    /// caller's core.
    pub(crate) needs_sink: bool,
}

// SAFETY: a DirectTarget is shared by the tasks of one call, which write disjoint tiles of
// `out` and only read the other buffers, all of which outlive the call.
unsafe impl Send for DirectTarget {}
// SAFETY: as above.
unsafe impl Sync for DirectTarget {}

/// One activation row against a run of consecutive panels of one part, written straight to the
/// output: the M = 1 path, which streams the part's weights in one loop. Slices and columns
/// start at the first column of the block that holds the run's first panel.
pub(crate) struct GemvJob<'a> {
    /// The offset-encoded activation row (`k_groups * KGROUP` bytes).
    pub(crate) a: &'a [u8],
    /// K groups per column block.
    pub(crate) k_groups: usize,
    /// The panels to run, counted from the first block's first panel.
    pub(crate) panels: Range<usize>,
    /// The packed weights of the blocks that hold them, `[column block][k group][panel]`.
    pub(crate) blocks: &'a [KGroupBlock],
    /// Their column sums, 64 per block.
    pub(crate) col_sums: &'a [i32],
    /// Their per-column weight scales (64 per block, zero-padded).
    pub(crate) w_scales: &'a [f32],
    /// Their per-column bias (64 per block, zero-padded).
    pub(crate) bias: &'a [f32],
    /// The row's activation scale.
    pub(crate) x_scale: f32,
    /// Valid output columns from the first block's first column (the rest is padding).
    pub(crate) cols: usize,
    /// Output of the first block's first column.
    pub(crate) out: *mut f32,
}

impl GemvJob<'_> {
    /// Whether the slices are long enough for the raw-pointer kernel.
    pub(crate) fn check(&self) -> bool {
        let blocks = self.panels.end.div_ceil(BLOCK_PANELS);
        let cols = blocks * BLOCK_COLS;
        self.panels.start <= self.panels.end
            && self.a.len() >= self.k_groups * KGROUP
            && self.blocks.len() >= blocks * self.k_groups * BLOCK_PANELS
            && self.col_sums.len() >= cols
            && self.w_scales.len() >= cols
            && self.bias.len() >= cols
            && self.cols <= cols
    }
}

/// Whether `kind`'s kernel writes [`DirectOut`] itself.
pub(crate) fn supports_direct(kind: KernelKind) -> bool {
    kind == KernelKind::Avx512Vnni
}

impl TileJob<'_> {
    /// Whether the slices are long enough for the raw-pointer kernels.
    pub(crate) fn check(&self) -> bool {
        self.rows >= 1
            && self.rows <= MR_MAX
            && self.a.len() >= (self.rows - 1) * self.a_stride + self.k_groups * KGROUP
            && self.blocks.len() >= self.k_groups * BLOCK_PANELS
            && self.col_sums.len() >= BLOCK_COLS
    }
}

#[inline]
fn compute_tile(kind: KernelKind, job: &TileJob<'_>, tile: &mut Tile) {
    assert!(job.check(), "tile job out of bounds");
    match kind {
        // SAFETY (all three): `kind` was checked against the detected CPU features when the
        // QuantizedLinear was built (or by accumulate_i32), and `job.check()` holds.
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx512Vnni => unsafe { crate::avx512::tile(job, tile) },
        #[cfg(target_arch = "x86_64")]
        KernelKind::AvxVnni => unsafe { crate::avxvnni::tile(job, tile) },
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx2 => unsafe { crate::avx2::tile(job, tile) },
        _ => crate::scalar::tile(job, tile),
    }
}

/// K groups per chunk when a weight block is reused by several row blocks: 96 groups x 256 B =
/// 24 KiB of weights, half the 48 KiB L1D, so the row blocks of a group re-read them from L1
/// instead of L2 (K = 4096 unchunked is 256 KiB per column block). Chunks of 64 and 160 groups
/// measured the same within this shared machine's noise; the chunk is also the unit the
/// software prefetch runs ahead by.
pub(crate) const KC_GROUPS: usize = 96;

/// K groups of one column block that fit the 48 KiB L1D whole (192 x 256 B): up to here the
/// K loop is not chunked. At K = 768 (192 groups) unchunked measured ~5% faster on 128x768x3072
/// (p10 323-325 us vs 334-351 us, alternating runs): no accumulator store/reload between chunks.
pub(crate) const L1_WEIGHT_GROUPS: usize = 192;

/// Row blocks that share one pass over a K chunk of weights (their tiles live on the stack).
pub(crate) const ROW_GROUP: usize = 4;

const LINE: usize = 64;

/// Runs every tile of `m` rows of quantized activations `a` (stride `k_padded`) against
/// `packed`, on up to `threads` tasks, calling `sink(row0, rows, col_block, &tile)` per tile.
/// Tiles are disjoint, so a sink may write its part of a shared output. With `direct` (and a
/// kernel that [`supports_direct`]), the kernel has already written the dequantized tile to
/// `direct.out`, the i32 tile passed to `sink` is stale, and `sink` is called only if
/// `direct.needs_sink`.
///
/// # Safety
/// `direct`, if given, describes valid buffers: `out` and `x_scales` with `m * n` and `m`
/// elements, `w_scales` and `bias` with `col_blocks * 64`.
pub(crate) unsafe fn run_tiles<S>(
    kind: KernelKind,
    packed: &PackedWeights,
    a: &[u8],
    m: usize,
    threads: usize,
    direct: Option<DirectTarget>,
    sink: &S,
) where
    S: Fn(usize, usize, usize, &Tile) + Sync,
{
    let mr = rows_per_tile(kind);
    let kp = packed.k_padded();
    let k_groups = packed.k_groups();
    let col_blocks = packed.col_blocks();
    let tasks = tasks_for(packed, m, threads);
    // Balanced row blocks (32 rows = 6 blocks of 5-6, not 5 x 6 + 2): a short block has too
    // few accumulators to hide vpdpbusd latency.
    let row_blocks = m.div_ceil(mr);
    let block_rows = |rb: usize| (m * rb / row_blocks, m * (rb + 1) / row_blocks);
    // Split columns first (each thread streams its own share of the weights once); split rows
    // too only when there are fewer column blocks than tasks.
    let n_parts = tasks.min(col_blocks);
    let m_parts = (tasks / n_parts).min(row_blocks).max(1);
    let chunk = if row_blocks > 1 && k_groups > L1_WEIGHT_GROUPS { KC_GROUPS } else { k_groups };
    let direct = direct.filter(|_| supports_direct(kind));
    let n = packed.n();
    let run_part = |part: usize| {
        let (np, mp) = (part % n_parts, part / n_parts);
        let Range { start: c0, end: c1 } = part_col_blocks(col_blocks, n_parts, np);
        let (rb0, rb1) = (row_blocks * mp / m_parts, row_blocks * (mp + 1) / m_parts);
        let mut tiles: [Tile; ROW_GROUP] = [[[0; BLOCK_COLS]; MR_MAX]; ROW_GROUP];
        for cb in c0..c1 {
            let blocks = packed.col_block(cb);
            let col_sums = &packed.col_sums()[cb * BLOCK_COLS..(cb + 1) * BLOCK_COLS];
            for rg in (rb0..rb1).step_by(ROW_GROUP) {
                let rg_end = (rg + ROW_GROUP).min(rb1);
                let group_len = rg_end - rg;
                for g0 in (0..k_groups).step_by(chunk) {
                    let g1 = (g0 + chunk).min(k_groups);
                    // While the row blocks of the group work on this chunk (from L1 after the
                    // first), each prefetches its share of the next chunk: the weights follow
                    // contiguously in memory, also across column blocks. Measured on
                    // 16x4096x11008 (weights 45 MB > L3, 3 row blocks): 0.92 ms vs 1.25 ms.
                    let here = blocks[g0 * BLOCK_PANELS..].as_ptr().cast::<u8>();
                    let chunk_bytes = (g1 - g0) * BLOCK_PANELS * LINE;
                    for (j, (rb, tile)) in (rg..rg_end).zip(tiles.iter_mut()).enumerate() {
                        let (r0, r1) = block_rows(rb);
                        // A lone row block streams each weight once: the hardware prefetchers
                        // keep up there (software prefetch 4 KiB ahead measured 5-10% slower
                        // on 1x4096x11008), so only row groups prefetch.
                        let (prefetch, prefetch_per_group) = if group_len > 1 || chunk < k_groups {
                            let share = chunk_bytes / group_len;
                            let lines = share.div_ceil(LINE);
                            (here.wrapping_add(chunk_bytes + j * share), lines.div_ceil(g1 - g0))
                        } else {
                            (here, 0)
                        };
                        let job = TileJob {
                            a: &a[r0 * kp + g0 * KGROUP..],
                            a_stride: kp,
                            k_groups: g1 - g0,
                            rows: r1 - r0,
                            blocks: &blocks[g0 * BLOCK_PANELS..],
                            col_sums,
                            first: g0 == 0,
                            last: g1 == k_groups,
                            prefetch,
                            prefetch_per_group,
                            // Wrapping pointer arithmetic: only dereferenced by the kernel, in
                            // bounds by run_tiles' contract (r0 < m, cb < col_blocks).
                            direct: direct.filter(|_| g1 == k_groups).map(|d| DirectOut {
                                out: d.out.wrapping_add(r0 * d.n + cb * BLOCK_COLS),
                                stride: d.n,
                                cols: BLOCK_COLS.min(n - cb * BLOCK_COLS),
                                x_scales: d.x_scales.wrapping_add(r0),
                                w_scales: d.w_scales.wrapping_add(cb * BLOCK_COLS),
                                bias: d.bias.wrapping_add(cb * BLOCK_COLS),
                            }),
                        };
                        compute_tile(kind, &job, tile);
                    }
                }
                if direct.is_none_or(|d| d.needs_sink) {
                    for (rb, tile) in (rg..rg_end).zip(tiles.iter()) {
                        let (r0, r1) = block_rows(rb);
                        sink(r0, r1 - r0, cb, tile);
                    }
                }
            }
        }
    };
    let parts = n_parts * m_parts;
    if parts == 1 {
        run_part(0);
    } else {
        crate::pool::global().run(parts, &run_part);
    }
}

/// Parallel parts for a call of `m` rows with up to `threads`: one for work under
/// [`PAR_MIN_OPS`].
pub(crate) fn tasks_for(packed: &PackedWeights, m: usize, threads: usize) -> usize {
    let ops = 2usize.saturating_mul(m).saturating_mul(packed.n()).saturating_mul(packed.k());
    if ops < PAR_MIN_OPS { 1 } else { threads.max(1) }
}

/// The consecutive column blocks of part `part` of `parts` (sizes differ by at most one).
fn part_col_blocks(col_blocks: usize, parts: usize, part: usize) -> Range<usize> {
    (col_blocks * part / parts)..(col_blocks * (part + 1) / parts)
}

/// Weights the first part of a parallel M = 1 call reads beyond an even share, when that is at
/// least a panel. The first part runs on the caller, which starts it at once, while a worker
/// starts one line transfer later and its report needs another before the caller may return:
/// 1x384x1536 on 2 threads spent ~90 ns less with one column block (24 KB) less for the worker,
/// and none with one less for the caller (alternating runs): the caller idles at the end.
/// Moving one panel (6 KB at K = 384, ~30 ns of streaming) from the worker to the caller measured
/// 10-20 ns faster (interleaved rounds), two panels no better than none. The lead is rounded
/// down to whole panels, so at K > 384 there is none.
const CALLER_LEAD_BYTES: usize = 6 * 1024;

/// The consecutive panels (16 columns each, those that hold columns) of part `part` of `parts`
/// of an M = 1 call: part 0 takes an even share plus its lead ([`CALLER_LEAD_BYTES`]), the
/// others split the rest evenly.
fn part_panels(packed: &PackedWeights, parts: usize, part: usize) -> Range<usize> {
    let panels = packed.n().div_ceil(PANEL_COLS);
    if parts <= 1 {
        return 0..panels;
    }
    let panel_bytes = PANEL_COLS * packed.k_padded();
    let lead = (CALLER_LEAD_BYTES / panel_bytes).min(panels / parts / 2);
    let first = panels / parts + lead;
    let bound = |p: usize| if p == 0 { 0 } else { first + (panels - first) * (p - 1) / (parts - 1) };
    bound(part)..bound(part + 1)
}

/// Whether `kind` has the dedicated M = 1 kernel ([`gemv_part`]).
pub(crate) fn has_gemv(kind: KernelKind) -> bool {
    cfg!(target_arch = "x86_64") && kind == KernelKind::Avx512Vnni
}

/// Column parts of an M = 1 call of up to `threads` (see [`gemv_part`]).
pub(crate) fn gemv_parts(packed: &PackedWeights, threads: usize) -> usize {
    tasks_for(packed, 1, threads).min(packed.col_blocks())
}

/// The M = 1 path, part `part` of `parts` ([`gemv_parts`]): the one activation row `a` against
/// the part's panels ([`part_panels`]), written straight to `d.out` by one loop over the part's
/// weights ([`crate::avx512::gemv_direct`]). Against one [`TileJob`] per column block it saves
/// the per-block setup and the i32 tile: 1x384x768 on one thread 1.78 us vs 2.0 us (p50), and
/// 1x384x1536 on two threads 2.05 vs 2.25 us. Returns the columns written.
///
/// # Safety
/// `kind` [`has_gemv`] and the CPU supports it; `d` describes valid buffers as [`run_tiles`]
/// requires (`x_scales` with at least one element, `w_scales` and `bias` with
/// `packed.col_blocks() * 64`, `out` with `packed.n()`); `part < parts`; no other thread writes
/// the part's columns of `out` meanwhile.
pub(crate) unsafe fn gemv_part(
    kind: KernelKind,
    packed: &PackedWeights,
    a: &[u8],
    d: DirectTarget,
    part: usize,
    parts: usize,
) -> Range<usize> {
    let panels = part_panels(packed, parts, part);
    #[cfg(target_arch = "x86_64")]
    if kind == KernelKind::Avx512Vnni {
        // SAFETY: the caller's contract.
        unsafe { gemv_part_avx512(packed, a, d, panels.clone()) };
        let n = packed.n();
        return (panels.start * PANEL_COLS).min(n)..(panels.end * PANEL_COLS).min(n);
    }
    unreachable!("no GEMV kernel for {kind:?} ({} input bytes, output {:p}): callers check has_gemv", a.len(), d.out)
}

/// [`gemv_part`] on AVX-512 VNNI, panels `panels`.
///
/// # Safety
/// As [`gemv_part`], with `panels.start <= panels.end <= packed.col_blocks() * BLOCK_PANELS`.
#[cfg(target_arch = "x86_64")]
unsafe fn gemv_part_avx512(packed: &PackedWeights, a: &[u8], d: DirectTarget, panels: Range<usize>) {
    let per_block = packed.k_groups() * BLOCK_PANELS;
    let (c0, c1) = (panels.start / BLOCK_PANELS, panels.end.div_ceil(BLOCK_PANELS));
    let cols = (c0 * BLOCK_COLS)..(c1 * BLOCK_COLS);
    // SAFETY: `w_scales` and `bias` hold col_blocks * 64 floats and c1 <= col_blocks; x_scales
    // holds m >= 1.
    let (w_scales, bias, x_scale) = unsafe {
        (
            std::slice::from_raw_parts(d.w_scales.add(cols.start), cols.len()),
            std::slice::from_raw_parts(d.bias.add(cols.start), cols.len()),
            *d.x_scales,
        )
    };
    let job = GemvJob {
        a,
        k_groups: packed.k_groups(),
        panels: (panels.start - c0 * BLOCK_PANELS)..(panels.end - c0 * BLOCK_PANELS),
        blocks: &packed.blocks()[c0 * per_block..c1 * per_block],
        col_sums: &packed.col_sums()[cols.clone()],
        w_scales,
        bias,
        x_scale,
        cols: packed.n().min(cols.end) - cols.start,
        // SAFETY: cols.start < n (c0 < col_blocks) when the part has any panel, and the kernel
        // writes nothing when it has none.
        out: d.out.wrapping_add(cols.start),
    };
    assert!(job.check(), "GEMV job out of bounds");
    // SAFETY: the caller guarantees AVX-512 VNNI; `job.check()` holds and `out` covers
    // `job.cols` floats from the part's first column (out holds n).
    unsafe { crate::avx512::gemv_direct(&job) };
}

/// Everything the f32 epilogue needs besides the tile.
pub(crate) struct EpilogueArgs<'a> {
    pub(crate) x_scales: &'a [f32],
    pub(crate) w_scales: &'a [f32],
    pub(crate) bias: &'a [f32],
    pub(crate) activation: Activation,
}

/// `out[j] = act(acc[j] * (xs * ws[j]) + bias[j]) (+ res[j])` over `out.len()` columns, the
/// multiply-add fused (one `vfmadd` per vector in the SIMD builds; a libm call in the portable one).
#[inline(always)]
fn epilogue_row_generic(
    acc: &[i32],
    xs: f32,
    ws: &[f32],
    bias: &[f32],
    act: Activation,
    res: Option<&[f32]>,
    out: &mut [f32],
) {
    let n = out.len();
    let (acc, ws, bias) = (&acc[..n], &ws[..n], &bias[..n]);
    macro_rules! body {
        ($f:expr) => {
            match res {
                Some(res) => {
                    let res = &res[..n];
                    for j in 0..n {
                        out[j] = $f((acc[j] as f32).mul_add(xs * ws[j], bias[j])) + res[j];
                    }
                }
                None => {
                    for j in 0..n {
                        out[j] = $f((acc[j] as f32).mul_add(xs * ws[j], bias[j]));
                    }
                }
            }
        };
    }
    match act {
        Activation::None => body!(|v: f32| v),
        Activation::Relu => body!(|v: f32| v.max(0.0)),
        Activation::GeluErf => body!(gelu_erf),
        Activation::GeluTanh => body!(gelu_tanh),
        Activation::Silu => body!(silu),
    }
}

/// `out[j] = act(out[j]) (+ res[j])` on `kind`'s instructions: the rest of the epilogue after a
/// [`DirectOut`] write; `res` (if any) has `out.len()` values.
pub(crate) fn finish_direct(kind: KernelKind, act: Activation, res: Option<&[f32]>, out: &mut [f32]) {
    match kind {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: direct output is only used by the AVX-512 kernel, chosen only when
        // avx512f/bw/vl, avx2 and fma were detected.
        KernelKind::Avx512Vnni => unsafe { finish_row_avx512(act, res, out) },
        _ => finish_row_generic(act, res, out),
    }
}

/// `out[j] = act(out[j]) (+ res[j])`: the rest of the epilogue after a [`DirectOut`] write.
#[inline(always)]
fn finish_row_generic(act: Activation, res: Option<&[f32]>, out: &mut [f32]) {
    let n = out.len();
    macro_rules! body {
        ($f:expr) => {
            match res {
                Some(res) => {
                    let res = &res[..n];
                    for j in 0..n {
                        out[j] = $f(out[j]) + res[j];
                    }
                }
                None => {
                    for v in out.iter_mut() {
                        *v = $f(*v);
                    }
                }
            }
        };
    }
    match act {
        Activation::None => body!(|v: f32| v),
        Activation::Relu => body!(|v: f32| v.max(0.0)),
        Activation::GeluErf => body!(gelu_erf),
        Activation::GeluTanh => body!(gelu_tanh),
        Activation::Silu => body!(silu),
    }
}

/// `out[j] = act(out[j])` with the widest instruction set detected on this CPU.
pub(crate) fn finish_row(act: Activation, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if KernelKind::Avx512Vnni.is_supported() {
        // SAFETY: Avx512Vnni is supported only when avx512f/bw/vl, avx2 and fma were detected.
        return unsafe { finish_row_avx512(act, None, out) };
    }
    finish_row_generic(act, None, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn finish_row_avx512(act: Activation, res: Option<&[f32]>, out: &mut [f32]) {
    finish_row_generic(act, res, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn epilogue_row_avx512(
    acc: &[i32],
    xs: f32,
    ws: &[f32],
    bias: &[f32],
    act: Activation,
    res: Option<&[f32]>,
    out: &mut [f32],
) {
    epilogue_row_generic(acc, xs, ws, bias, act, res, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn epilogue_row_avx2(
    acc: &[i32],
    xs: f32,
    ws: &[f32],
    bias: &[f32],
    act: Activation,
    res: Option<&[f32]>,
    out: &mut [f32],
) {
    epilogue_row_generic(acc, xs, ws, bias, act, res, out)
}

/// The fused epilogue of one output row segment, vectorized for `kind`'s instruction set.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn epilogue_row(
    kind: KernelKind,
    acc: &[i32],
    xs: f32,
    ws: &[f32],
    bias: &[f32],
    act: Activation,
    res: Option<&[f32]>,
    out: &mut [f32],
) {
    match kind {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512Vnni is only chosen when avx512f/bw/vl, avx2 and fma were detected.
        KernelKind::Avx512Vnni => unsafe { epilogue_row_avx512(acc, xs, ws, bias, act, res, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: these kinds are only chosen when avx2 and fma were detected.
        KernelKind::Avx2 | KernelKind::AvxVnni => unsafe { epilogue_row_avx2(acc, xs, ws, bias, act, res, out) },
        _ => epilogue_row_generic(acc, xs, ws, bias, act, res, out),
    }
}

impl EpilogueArgs<'_> {
    /// Applies the epilogue to one tile, writing rows `row0..row0 + rows`, columns of block `cb`
    /// below `n`, of the row-major `out` (stride `n`); `residual` has the same layout as `out`.
    ///
    /// # Safety
    /// `out` (and `residual`, if any) point to `m * n` floats with `row0 + rows <= m`, and no
    /// other thread writes the same tile concurrently.
    ///
    /// With `direct_done`, the kernel already wrote `acc * x_scale * w_scale + bias` to `out`
    /// and only the activation and residual remain.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn apply(
        &self,
        kind: KernelKind,
        tile: &Tile,
        row0: usize,
        rows: usize,
        cb: usize,
        n: usize,
        out: *mut f32,
        residual: Option<*const f32>,
        direct_done: bool,
    ) {
        let c0 = cb * BLOCK_COLS;
        let cols = BLOCK_COLS.min(n - c0);
        if direct_done {
            if self.activation == Activation::None && residual.is_none() {
                return;
            }
            for r in 0..rows {
                let off = (row0 + r) * n + c0;
                // SAFETY: as below.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.add(off), cols) };
                // SAFETY: as below.
                let res = residual.map(|p| unsafe { std::slice::from_raw_parts(p.add(off), cols) });
                finish_direct(kind, self.activation, res, dst);
            }
            return;
        }
        let ws = &self.w_scales[c0..c0 + cols];
        let bias = &self.bias[c0..c0 + cols];
        for (r, acc) in tile.iter().enumerate().take(rows) {
            let off = (row0 + r) * n + c0;
            // SAFETY: `off + cols <= m * n` by the caller's contract; this tile's row segment is
            // written by this call only.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.add(off), cols) };
            // SAFETY: same bounds as `dst`, read only.
            let res = residual.map(|p| unsafe { std::slice::from_raw_parts(p.add(off), cols) });
            let xs = self.x_scales[row0 + r];
            epilogue_row(kind, acc, xs, ws, bias, self.activation, res, dst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemv_parts_cover_every_panel_once_with_the_callers_lead() {
        for (k, n, parts, lead) in
            [(300, 1801, 2, 1), (384, 1536, 2, 1), (384, 1536, 7, 1), (256, 4096, 3, 1), (1031, 601, 2, 0)]
        {
            let packed = PackedWeights::new(&vec![1; n * k], n, k).unwrap();
            let ranges: Vec<Range<usize>> = (0..parts).map(|p| part_panels(&packed, parts, p)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[parts - 1].end, n.div_ceil(PANEL_COLS), "{k}x{n} on {parts}");
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start), "{ranges:?}");
            let rest: Vec<usize> = ranges[1..].iter().map(|r| r.len()).collect();
            let (least, most) = (*rest.iter().min().unwrap(), *rest.iter().max().unwrap());
            assert!(most - least <= 1, "{ranges:?}");
            let even = n.div_ceil(PANEL_COLS) / parts;
            assert_eq!(ranges[0].len(), even + lead, "{k}x{n} on {parts}: {ranges:?}");
        }
        let one = PackedWeights::new(&[1; 384 * 100], 100, 384).unwrap();
        assert_eq!(part_panels(&one, 1, 0), 0..7, "one part: every panel, no lead");
    }
}
