//! Scalar reference kernel: exact i32 dot products of signed int8 activations and packed weights.
//!
//! Every SIMD kernel's accumulators must equal this one's bit for bit (see the tests).

use crate::gemm::Tile;
use crate::pack::{BLOCK_PANELS, KGROUP, KGroupBlock, PANEL_COLS};

/// Rows per tile of the scalar kernel.
pub(crate) const MR: usize = 4;

/// Fills `tile[..rows]` with the dot products of `rows` activation rows (signed encoding, stride
/// `kp`) with the 64 columns of one column block.
pub(crate) fn tile(a: &[u8], kp: usize, rows: usize, blocks: &[KGroupBlock], tile: &mut Tile) {
    let k_groups = kp / KGROUP;
    for (r, acc) in tile.iter_mut().enumerate().take(rows) {
        acc.fill(0);
        let row = &a[r * kp..(r + 1) * kp];
        for g in 0..k_groups {
            let x = &row[g * KGROUP..(g + 1) * KGROUP];
            for p in 0..BLOCK_PANELS {
                let blk = &blocks[g * BLOCK_PANELS + p].bytes;
                for c in 0..PANEL_COLS {
                    let mut s = 0i32;
                    for b in 0..KGROUP {
                        s += i32::from(x[b] as i8) * i32::from(blk[c * KGROUP + b]);
                    }
                    acc[p * PANEL_COLS + c] += s;
                }
            }
        }
    }
}
