//! AVX-512 VNNI kernels: `vpdpbusd` on zmm registers (u8 activations + 128, s8 weights).
//!
//! Tile micro-kernel: 6 rows x 4 panels (64 columns) = 24 independent zmm accumulators, plus
//! 4 weight registers and one broadcast, 29 of 32 zmm. Per k group it issues 4 aligned 64-byte
//! loads (one contiguous 256-byte run), 6 dword broadcasts and 24 `vpdpbusd`: 12 cycles at two
//! `vpdpbusd` per cycle, with 10 loads, well under the load ports' budget. 12+ accumulators are
//! needed to cover the instruction's latency on both ports (machine notes: ~760 GOP/s per core).
//! The GEMV kernel (one row) reads the same layout and keeps 8 accumulators (4 panels x 2 k
//! groups) so the weight stream, not the dependency chain, is the limit.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::gemm::Tile;
use crate::pack::{BLOCK_PANELS, KGROUP, KGroupBlock, PANEL_COLS};

/// Rows per tile.
pub(crate) const MR: usize = 6;

#[inline(always)]
unsafe fn bcast(p: *const u8) -> __m512i {
    _mm512_set1_epi32(p.cast::<i32>().read_unaligned())
}

#[inline(always)]
unsafe fn finish(acc: __m512i, col_sums: *const i32, out: *mut i32) {
    // acc holds sum (x + 128) * w; subtract 128 * colsum to get sum x * w exactly (mod 2^32).
    let cs = _mm512_slli_epi32::<7>(_mm512_loadu_si512(col_sums.cast()));
    _mm512_storeu_si512(out.cast(), _mm512_sub_epi32(acc, cs));
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_mr<const R: usize>(
    a: *const u8,
    kp: usize,
    blocks: *const KGroupBlock,
    col_sums: *const i32,
    tile: &mut Tile,
) {
    let k_groups = kp / KGROUP;
    let mut acc = [[_mm512_setzero_si512(); BLOCK_PANELS]; R];
    let mut w = blocks.cast::<__m512i>();
    let mut x = a;
    for _ in 0..k_groups {
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
            finish(
                v,
                col_sums.add(p * PANEL_COLS),
                tile[r].as_mut_ptr().add(p * PANEL_COLS),
            );
        }
    }
}

/// Tile kernel: `rows` (1..=6) offset-encoded activation rows x one 64-column block.
///
/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni; `a` holds `rows * kp` bytes,
/// `blocks` the column block (`kp / 4 * 4` blocks), `col_sums` 64 values.
pub(crate) unsafe fn tile(
    a: &[u8],
    kp: usize,
    rows: usize,
    blocks: &[KGroupBlock],
    col_sums: &[i32],
    tile: &mut Tile,
) {
    debug_assert!(a.len() >= rows * kp && blocks.len() >= kp / KGROUP * BLOCK_PANELS);
    debug_assert!(col_sums.len() >= BLOCK_PANELS * PANEL_COLS);
    let (a, b, c) = (a.as_ptr(), blocks.as_ptr(), col_sums.as_ptr());
    match rows {
        1 => gemv_block(a, kp, b, c, tile),
        2 => tile_mr::<2>(a, kp, b, c, tile),
        3 => tile_mr::<3>(a, kp, b, c, tile),
        4 => tile_mr::<4>(a, kp, b, c, tile),
        5 => tile_mr::<5>(a, kp, b, c, tile),
        _ => tile_mr::<6>(a, kp, b, c, tile),
    }
}

/// One activation row x one column block, 8 accumulators (two k groups in flight per panel).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemv_block(
    a: *const u8,
    kp: usize,
    blocks: *const KGroupBlock,
    col_sums: *const i32,
    tile: &mut Tile,
) {
    let k_groups = kp / KGROUP;
    let mut acc0 = [_mm512_setzero_si512(); BLOCK_PANELS];
    let mut acc1 = [_mm512_setzero_si512(); BLOCK_PANELS];
    let mut w = blocks.cast::<__m512i>();
    let mut x = a;
    for _ in 0..k_groups / 2 {
        let x0 = bcast(x);
        let x1 = bcast(x.add(KGROUP));
        for p in 0..BLOCK_PANELS {
            acc0[p] = _mm512_dpbusd_epi32(acc0[p], x0, _mm512_load_si512(w.add(p)));
            acc1[p] = _mm512_dpbusd_epi32(acc1[p], x1, _mm512_load_si512(w.add(BLOCK_PANELS + p)));
        }
        w = w.add(2 * BLOCK_PANELS);
        x = x.add(2 * KGROUP);
    }
    if k_groups % 2 == 1 {
        let x0 = bcast(x);
        for p in 0..BLOCK_PANELS {
            acc0[p] = _mm512_dpbusd_epi32(acc0[p], x0, _mm512_load_si512(w.add(p)));
        }
    }
    for p in 0..BLOCK_PANELS {
        finish(
            _mm512_add_epi32(acc0[p], acc1[p]),
            col_sums.add(p * PANEL_COLS),
            tile[0].as_mut_ptr().add(p * PANEL_COLS),
        );
    }
}
