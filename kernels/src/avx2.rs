//! AVX2 kernel: `vpmaddubsw` + `vpmaddwd`, exact.
//!
//! `vpmaddubsw` multiplies u8 by s8 and adds adjacent pairs into i16 *with saturation*: with the
//! `+128` trick a pair reaches 2 * 255 * 127 = 64770 and saturates. This kernel instead feeds it
//! `|x|` (u8 in [0, 127]) and `w * sign(x)` (`vpsignb`, s8 in [-127, 127]), whose pair sums reach
//! at most 2 * 127 * 127 = 32258 < 32767, so nothing saturates and no column-sum correction is
//! needed. `vpmaddwd` by ones widens pairs of i16 to i32. Activations use the signed encoding.
//!
//! Tile: 4 rows x one panel (2 ymm) = 8 accumulators + 2 weights + ones + 3 temporaries <= 16.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::gemm::{Tile, TileJob};
use crate::pack::{BLOCK_PANELS, KGROUP, PANEL_COLS};

/// Rows per tile.
pub(crate) const MR: usize = 4;

#[target_feature(enable = "avx2")]
unsafe fn tile_mr<const R: usize>(job: &TileJob<'_>, tile: &mut Tile) {
    let kp = job.a_stride;
    let ones = _mm256_set1_epi16(1);
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
                let ax = _mm256_abs_epi8(xb);
                let p0 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w0, xb));
                let p1 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w1, xb));
                acc_r[0] = _mm256_add_epi32(acc_r[0], _mm256_madd_epi16(p0, ones));
                acc_r[1] = _mm256_add_epi32(acc_r[1], _mm256_madd_epi16(p1, ones));
            }
            w = w.add(2 * BLOCK_PANELS);
            x = x.add(KGROUP);
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (h, &v) in acc_r.iter().enumerate() {
                let off = p * PANEL_COLS + h * 8;
                _mm256_storeu_si256(tile[r].as_mut_ptr().add(off).cast(), v);
            }
        }
    }
}

/// Tile kernel: `job.rows` (1..=4) signed-encoded activation rows x one 64-column block.
///
/// # Safety
/// The CPU must support avx2; `job` satisfies [`TileJob::check`].
pub(crate) unsafe fn tile(job: &TileJob<'_>, tile: &mut Tile) {
    debug_assert!(job.check());
    match job.rows {
        1 => tile_mr::<1>(job, tile),
        2 => tile_mr::<2>(job, tile),
        3 => tile_mr::<3>(job, tile),
        _ => tile_mr::<4>(job, tile),
    }
}
