//! AVX-512 VNNI kernels: `vpdpbusd` on zmm registers (u8 activations + 128, s8 weights).
//!
//! Tile micro-kernel: 6 rows x 4 panels (64 columns) = 24 independent zmm accumulators, plus
//! 4 weight registers and one broadcast, 29 of 32 zmm. Per k group it issues 4 aligned 64-byte
//! loads (one contiguous 256-byte run), 6 dword broadcasts and 24 `vpdpbusd`: 12 cycles at two
//! `vpdpbusd` per cycle, with 10 loads, well under the load ports' budget. 12+ accumulators are
//! needed to cover the instruction's latency on both ports (machine notes: ~760 GOP/s per core).
//! The GEMV kernel (one row) reads the same layout and keeps 16 accumulators (4 panels x 4 k
//! groups) so the weight stream, not the dependency chain, is the limit.

#![allow(unsafe_op_in_unsafe_fn)]
// Register arrays indexed by panel read closer to the instruction stream than iterator chains.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::gemm::{Tile, TileJob};
use crate::pack::{BLOCK_PANELS, KGROUP, PANEL_COLS};

/// Rows per tile.
pub(crate) const MR: usize = 6;

#[inline(always)]
unsafe fn bcast(p: *const u8) -> __m512i {
    _mm512_set1_epi32(p.cast::<i32>().read_unaligned())
}

#[inline(always)]
unsafe fn prefetch(p: *const u8, lines: usize) -> *const u8 {
    for l in 0..lines {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(l * 64).cast());
    }
    p.wrapping_add(lines * 64)
}

#[inline(always)]
unsafe fn start(job: &TileJob<'_>, r: usize, p: usize, tile: &Tile) -> __m512i {
    if job.first { _mm512_setzero_si512() } else { _mm512_loadu_si512(tile[r].as_ptr().add(p * PANEL_COLS).cast()) }
}

/// `acc - 128 * col_sums`: `acc` holds sum (x + 128) * w; subtracting 128 * colsum gives sum x * w
/// exactly (mod 2^32, and the true value fits in i32: see pack::MAX_K).
#[inline(always)]
unsafe fn exact(acc: __m512i, col_sums: *const i32) -> __m512i {
    _mm512_sub_epi32(acc, _mm512_slli_epi32::<7>(_mm512_loadu_si512(col_sums.cast())))
}

/// Writes `exact * (x_scale * w_scale) + bias` to the first `left` (at least 1) of 16 outputs.
#[inline(always)]
unsafe fn store_dequantized(
    exact: __m512i,
    x_scale: __m512,
    w_scales: *const f32,
    bias: *const f32,
    out: *mut f32,
    left: usize,
) {
    let mask: __mmask16 = if left >= PANEL_COLS { 0xffff } else { (1u16 << left) - 1 };
    let scale = _mm512_mul_ps(x_scale, _mm512_loadu_ps(w_scales));
    let y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, _mm512_loadu_ps(bias));
    _mm512_mask_storeu_ps(out, mask, y);
}

#[inline(always)]
unsafe fn finish(job: &TileJob<'_>, acc: __m512i, r: usize, p: usize, tile: &mut Tile) {
    let out = tile[r].as_mut_ptr().add(p * PANEL_COLS);
    if job.last {
        let exact = exact(acc, job.col_sums.as_ptr().add(p * PANEL_COLS));
        match job.direct {
            Some(d) => {
                let c0 = p * PANEL_COLS;
                if c0 < d.cols {
                    let x_scale = _mm512_set1_ps(*d.x_scales.add(r));
                    let out = d.out.add(r * d.stride + c0);
                    store_dequantized(exact, x_scale, d.w_scales.add(c0), d.bias.add(c0), out, d.cols - c0);
                }
            }
            None => _mm512_storeu_si512(out.cast(), exact),
        }
    } else {
        _mm512_storeu_si512(out.cast(), acc);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_mr<const R: usize>(job: &TileJob<'_>, tile: &mut Tile) {
    let mut acc = [[_mm512_setzero_si512(); BLOCK_PANELS]; R];
    for (r, acc_r) in acc.iter_mut().enumerate() {
        for (p, v) in acc_r.iter_mut().enumerate() {
            *v = start(job, r, p, tile);
        }
    }
    let kp = job.a_stride;
    let mut w = job.blocks.as_ptr().cast::<__m512i>();
    let mut x = job.a.as_ptr();
    let mut pf = job.prefetch;
    for _ in 0..job.k_groups {
        pf = prefetch(pf, job.prefetch_per_group);
        let w0 = _mm512_load_si512(w);
        let w1 = _mm512_load_si512(w.add(1));
        let w2 = _mm512_load_si512(w.add(2));
        let w3 = _mm512_load_si512(w.add(3));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let xb = bcast(x.add(r * kp));
            acc_r[0] = _mm512_dpbusd_epi32(acc_r[0], xb, w0);
            acc_r[1] = _mm512_dpbusd_epi32(acc_r[1], xb, w1);
            acc_r[2] = _mm512_dpbusd_epi32(acc_r[2], xb, w2);
            acc_r[3] = _mm512_dpbusd_epi32(acc_r[3], xb, w3);
        }
        w = w.add(BLOCK_PANELS);
        x = x.add(KGROUP);
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (p, &v) in acc_r.iter().enumerate() {
            finish(job, v, r, p, tile);
        }
    }
}

/// Tile kernel: `job.rows` (1..=6) offset-encoded activation rows x one 64-column block.
///
/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni; `job` satisfies [`TileJob::check`].
pub(crate) unsafe fn tile(job: &TileJob<'_>, tile: &mut Tile) {
    debug_assert!(job.check());
    match job.rows {
        1 => gemv_block(job, tile),
        2 => tile_mr::<2>(job, tile),
        3 => tile_mr::<3>(job, tile),
        4 => tile_mr::<4>(job, tile),
        5 => tile_mr::<5>(job, tile),
        _ => tile_mr::<6>(job, tile),
    }
}

/// One activation row x one column block: [`GEMV_GROUPS`] k groups in flight per panel, so
/// 16 independent accumulators cover `vpdpbusd`'s latency at two per cycle.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemv_block(job: &TileJob<'_>, tile: &mut Tile) {
    let init: [__m512i; BLOCK_PANELS] = std::array::from_fn(|p| start(job, 0, p, tile));
    let w = job.blocks.as_ptr().cast::<__m512i>();
    let sums = gemv_sums(init, w, job.a.as_ptr(), job.k_groups, job.prefetch, job.prefetch_per_group);
    for (p, sum) in sums.into_iter().enumerate() {
        finish(job, sum, 0, p, tile);
    }
}

/// K groups the GEMV kernel keeps in flight.
const GEMV_GROUPS: usize = 4;

/// The GEMV's K loop over `P` consecutive panels of one column block (`w` at the first one's
/// weights in the block's first k group): `init` plus the dot products of the `k_groups` groups
/// of activations at `x` with the panels' weights, one sum per panel, [`GEMV_GROUPS`] groups in
/// flight; prefetches `prefetch_per_group` lines per group from `prefetch` (an address hint).
#[inline(always)]
unsafe fn gemv_sums<const P: usize>(
    init: [__m512i; P],
    mut w: *const __m512i,
    mut x: *const u8,
    k_groups: usize,
    mut prefetch_at: *const u8,
    prefetch_per_group: usize,
) -> [__m512i; P] {
    let mut acc = [[_mm512_setzero_si512(); P]; GEMV_GROUPS];
    acc[0] = init;
    for _ in 0..k_groups / GEMV_GROUPS {
        prefetch_at = prefetch(prefetch_at, GEMV_GROUPS * prefetch_per_group);
        for (g, acc_g) in acc.iter_mut().enumerate() {
            let xb = bcast(x.add(g * KGROUP));
            for p in 0..P {
                acc_g[p] = _mm512_dpbusd_epi32(acc_g[p], xb, _mm512_load_si512(w.add(g * BLOCK_PANELS + p)));
            }
        }
        w = w.add(GEMV_GROUPS * BLOCK_PANELS);
        x = x.add(GEMV_GROUPS * KGROUP);
    }
    for acc_g in acc.iter_mut().take(k_groups % GEMV_GROUPS) {
        let xb = bcast(x);
        for p in 0..P {
            acc_g[p] = _mm512_dpbusd_epi32(acc_g[p], xb, _mm512_load_si512(w.add(p)));
        }
        w = w.add(BLOCK_PANELS);
        x = x.add(KGROUP);
    }
    std::array::from_fn(|p| acc.iter().fold(_mm512_setzero_si512(), |s, acc_g| _mm512_add_epi32(s, acc_g[p])))
}

/// The M = 1 path over a run of consecutive panels (see [`crate::gemm::GemvJob`]): what
/// [`gemv_block`] does per block, without a [`TileJob`] or an i32 tile per block, writing
/// `acc * (x_scale * w_scale) + bias` straight to the output. Whole blocks go four panels at a
/// time; a run that starts or ends inside a block takes that block's panels in one pass.
///
/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni; `job` satisfies
/// [`crate::gemm::GemvJob::check`] and its output pointers cover `job.cols` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn gemv_direct(job: &crate::gemm::GemvJob<'_>) {
    let x_scale = _mm512_set1_ps(job.x_scale);
    let weights = job.blocks.as_ptr().cast::<__m512i>();
    let per_block = job.k_groups * BLOCK_PANELS;
    let mut panel = job.panels.start;
    while panel < job.panels.end {
        let (cb, first) = (panel / BLOCK_PANELS, panel % BLOCK_PANELS);
        let count = (BLOCK_PANELS - first).min(job.panels.end - panel);
        let w = weights.add(cb * per_block + first);
        match count {
            4 => gemv_panels::<4>(job, w, panel, x_scale),
            3 => gemv_panels::<3>(job, w, panel, x_scale),
            2 => gemv_panels::<2>(job, w, panel, x_scale),
            _ => gemv_panels::<1>(job, w, panel, x_scale),
        }
        panel += count;
    }
}

/// `P` panels of [`gemv_direct`] from panel `first` (`w` at its weights), dequantized and
/// stored; panels past `job.cols` store nothing.
#[inline(always)]
unsafe fn gemv_panels<const P: usize>(
    job: &crate::gemm::GemvJob<'_>,
    w: *const __m512i,
    first: usize,
    x_scale: __m512,
) {
    let zero = [_mm512_setzero_si512(); P];
    let sums = gemv_sums(zero, w, job.a.as_ptr(), job.k_groups, std::ptr::null(), 0);
    for (p, sum) in sums.into_iter().enumerate() {
        let c = (first + p) * PANEL_COLS;
        if c >= job.cols {
            break;
        }
        let exact = exact(sum, job.col_sums.as_ptr().add(c));
        let (w_scales, bias) = (job.w_scales.as_ptr().add(c), job.bias.as_ptr().add(c));
        store_dequantized(exact, x_scale, w_scales, bias, job.out.add(c), job.cols - c);
    }
}
