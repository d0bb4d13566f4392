//! AVX-VNNI kernel: `vpdpbusd` on ymm registers (VEX encoding, so only ymm0-15 exist).
//!
//! Tile: 6 rows x one 16-column panel (2 ymm) = 12 accumulators + 2 weights + 1 broadcast = 15
//! registers; the four panels of a column block are done one after another while the 6 activation
//! rows stay in L1. u8 activations (+128), s8 weights, column-sum correction as in AVX-512.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::gemm::{Tile, TileJob};
use crate::pack::{BLOCK_PANELS, KGROUP, PANEL_COLS};

/// Rows per tile.
pub(crate) const MR: usize = 6;

#[target_feature(enable = "avx2,avxvnni")]
unsafe fn tile_mr<const R: usize>(job: &TileJob<'_>, tile: &mut Tile) {
    let kp = job.a_stride;
    for p in 0..BLOCK_PANELS {
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        if !job.first {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                for (h, v) in acc_r.iter_mut().enumerate() {
                    *v = _mm256_loadu_si256(tile[r].as_ptr().add(p * PANEL_COLS + h * 8).cast());
                }
            }
        }
        let mut w = job.blocks.as_ptr().add(p).cast::<__m256i>();
        let mut x = job.a.as_ptr();
        for _ in 0..job.k_groups {
            let w0 = _mm256_load_si256(w);
            let w1 = _mm256_load_si256(w.add(1));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xb = _mm256_set1_epi32(x.add(r * kp).cast::<i32>().read_unaligned());
                acc_r[0] = _mm256_dpbusd_avx_epi32(acc_r[0], xb, w0);
                acc_r[1] = _mm256_dpbusd_avx_epi32(acc_r[1], xb, w1);
            }
            // Next k group of the same panel: skip the block's 4 panels (8 ymm).
            w = w.add(2 * BLOCK_PANELS);
            x = x.add(KGROUP);
        }
        for h in 0..2 {
            let off = p * PANEL_COLS + h * 8;
            let cs = if job.last {
                _mm256_slli_epi32::<7>(_mm256_loadu_si256(job.col_sums.as_ptr().add(off).cast()))
            } else {
                _mm256_setzero_si256()
            };
            for (r, acc_r) in acc.iter().enumerate() {
                let v = _mm256_sub_epi32(acc_r[h], cs);
                _mm256_storeu_si256(tile[r].as_mut_ptr().add(off).cast(), v);
            }
        }
    }
}

/// Tile kernel: `job.rows` (1..=6) offset-encoded activation rows x one 64-column block.
///
/// # Safety
/// The CPU must support avx2 and avxvnni; `job` satisfies [`TileJob::check`].
pub(crate) unsafe fn tile(job: &TileJob<'_>, tile: &mut Tile) {
    debug_assert!(job.check());
    match job.rows {
        1 => tile_mr::<1>(job, tile),
        2 => tile_mr::<2>(job, tile),
        3 => tile_mr::<3>(job, tile),
        4 => tile_mr::<4>(job, tile),
        5 => tile_mr::<5>(job, tile),
        _ => tile_mr::<6>(job, tile),
    }
}
