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
use crate::pack::{BLOCK_COLS, BLOCK_PANELS, KGROUP, PANEL_COLS};

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

#[inline(always)]
unsafe fn finish(job: &TileJob<'_>, acc: __m512i, r: usize, p: usize, tile: &mut Tile) {
    let out = tile[r].as_mut_ptr().add(p * PANEL_COLS);
    if job.last {
        // acc holds sum (x + 128) * w; subtract 128 * colsum to get sum x * w exactly
        // (mod 2^32, and the true value fits in i32: see pack::MAX_K).
        let cs = _mm512_loadu_si512(job.col_sums.as_ptr().add(p * PANEL_COLS).cast());
        let exact = _mm512_sub_epi32(acc, _mm512_slli_epi32::<7>(cs));
        match job.direct {
            Some(d) => {
                let c0 = p * PANEL_COLS;
                if c0 < d.cols {
                    let left = d.cols - c0;
                    let mask: __mmask16 = if left >= PANEL_COLS { 0xffff } else { (1u16 << left) - 1 };
                    let ws = _mm512_loadu_ps(d.w_scales.add(c0));
                    let b = _mm512_loadu_ps(d.bias.add(c0));
                    let scale = _mm512_mul_ps(_mm512_set1_ps(*d.x_scales.add(r)), ws);
                    let y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, b);
                    _mm512_mask_storeu_ps(d.out.add(r * d.stride + c0), mask, y);
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
    let mut acc = [[_mm512_setzero_si512(); BLOCK_PANELS]; GEMV_GROUPS];
    for (p, v) in acc[0].iter_mut().enumerate() {
        *v = start(job, 0, p, tile);
    }
    let mut w = job.blocks.as_ptr().cast::<__m512i>();
    let mut x = job.a.as_ptr();
    let mut pf = job.prefetch;
    for _ in 0..job.k_groups / GEMV_GROUPS {
        pf = prefetch(pf, GEMV_GROUPS * job.prefetch_per_group);
        for (g, acc_g) in acc.iter_mut().enumerate() {
            let xb = bcast(x.add(g * KGROUP));
            for p in 0..BLOCK_PANELS {
                acc_g[p] = _mm512_dpbusd_epi32(acc_g[p], xb, _mm512_load_si512(w.add(g * BLOCK_PANELS + p)));
            }
        }
        w = w.add(GEMV_GROUPS * BLOCK_PANELS);
        x = x.add(GEMV_GROUPS * KGROUP);
    }
    for acc_g in acc.iter_mut().take(job.k_groups % GEMV_GROUPS) {
        let xb = bcast(x);
        for p in 0..BLOCK_PANELS {
            acc_g[p] = _mm512_dpbusd_epi32(acc_g[p], xb, _mm512_load_si512(w.add(p)));
        }
        w = w.add(BLOCK_PANELS);
        x = x.add(KGROUP);
    }
    for p in 0..BLOCK_PANELS {
        let sum = acc.iter().fold(_mm512_setzero_si512(), |s, acc_g| _mm512_add_epi32(s, acc_g[p]));
        finish(job, sum, 0, p, tile);
    }
}

/// K groups the GEMV kernel keeps in flight.
const GEMV_GROUPS: usize = 4;

/// The M = 1 path over several consecutive column blocks: what [`gemv_block`] does per block,
/// without a [`TileJob`] or an i32 tile per block, writing `acc * (x_scale * w_scale) + bias`
/// straight to the output (see [`crate::gemm::GemvJob`]).
///
/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni; `job` satisfies
/// [`crate::gemm::GemvJob::check`] and its output pointers cover `job.cols` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn gemv_direct(job: &crate::gemm::GemvJob<'_>) {
    let k_groups = job.k_groups;
    let xs = _mm512_set1_ps(job.x_scale);
    let mut w = job.blocks.as_ptr().cast::<__m512i>();
    for cb in 0..job.col_blocks {
        let mut acc = [[_mm512_setzero_si512(); BLOCK_PANELS]; GEMV_GROUPS];
        let mut x = job.a.as_ptr();
        for _ in 0..k_groups / GEMV_GROUPS {
            for (g, acc_g) in acc.iter_mut().enumerate() {
                let xb = bcast(x.add(g * KGROUP));
                for p in 0..BLOCK_PANELS {
                    acc_g[p] = _mm512_dpbusd_epi32(acc_g[p], xb, _mm512_load_si512(w.add(g * BLOCK_PANELS + p)));
                }
            }
            w = w.add(GEMV_GROUPS * BLOCK_PANELS);
            x = x.add(GEMV_GROUPS * KGROUP);
        }
        for acc_g in acc.iter_mut().take(k_groups % GEMV_GROUPS) {
            let xb = bcast(x);
            for p in 0..BLOCK_PANELS {
                acc_g[p] = _mm512_dpbusd_epi32(acc_g[p], xb, _mm512_load_si512(w.add(p)));
            }
            w = w.add(BLOCK_PANELS);
            x = x.add(KGROUP);
        }
        for p in 0..BLOCK_PANELS {
            let c = cb * BLOCK_COLS + p * PANEL_COLS;
            if c >= job.cols {
                break;
            }
            let left = job.cols - c;
            let mask: __mmask16 = if left >= PANEL_COLS { 0xffff } else { (1u16 << left) - 1 };
            let sum = acc.iter().fold(_mm512_setzero_si512(), |s, acc_g| _mm512_add_epi32(s, acc_g[p]));
            let cs = _mm512_loadu_si512(job.col_sums.as_ptr().add(c).cast());
            let exact = _mm512_sub_epi32(sum, _mm512_slli_epi32::<7>(cs));
            let scale = _mm512_mul_ps(xs, _mm512_loadu_ps(job.w_scales.as_ptr().add(c)));
            let y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, _mm512_loadu_ps(job.bias.as_ptr().add(c)));
            _mm512_mask_storeu_ps(job.out.add(c), mask, y);
        }
    }
}
