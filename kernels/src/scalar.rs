//! Scalar reference kernel: exact i32 dot products of signed int8 activations and packed weights.
//!
//! Every SIMD kernel's accumulators must equal this one's bit for bit (see the tests).

use crate::gemm::{Tile, TileJob};
use crate::pack::{BLOCK_PANELS, KGROUP, PANEL_COLS};

/// Rows per tile of the scalar kernel.
pub(crate) const MR: usize = 4;

/// Adds (or, for the first K chunk, writes) the dot products of `job.rows` signed-encoded
/// activation rows with the 64 columns of one column block into `tile`.
pub(crate) fn tile(job: &TileJob<'_>, tile: &mut Tile) {
    for (r, acc) in tile.iter_mut().enumerate().take(job.rows) {
        if job.first {
            acc.fill(0);
        }
        let row = &job.a[r * job.a_stride..];
        for g in 0..job.k_groups {
            let x = &row[g * KGROUP..(g + 1) * KGROUP];
            for p in 0..BLOCK_PANELS {
                let blk = &job.blocks[g * BLOCK_PANELS + p].bytes;
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
