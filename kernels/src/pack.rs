//! Weight packing: the `[N, K]` int8 matrix rearranged once, at construction, into the layout
//! every SIMD kernel reads with aligned, sequential loads.
//!
//! Layout: output columns are grouped in *panels* of [`PANEL_COLS`] = 16 (one zmm of i32 lanes),
//! panels in *column blocks* of [`BLOCK_PANELS`] = 4 (64 columns, the micro-kernel's width). K is
//! padded with zeros to a multiple of [`KGROUP`] = 4 (the bytes one `vpdpbusd` lane sums). A
//! [`KGroupBlock`] holds one panel's 16 columns x 4 consecutive k, column-major inside (byte
//! `4 * c + b` is `W[n0 + c][k0 + b]`), which is exactly the s8 operand of one `vpdpbusd zmm`.
//! Blocks are stored `[column block][k group][panel]`, so a micro-kernel streams one contiguous
//! 256-byte run per k group. Padded columns (up to a multiple of 64) are zero.

use crate::error::KernelError;

/// Output columns per panel (i32 lanes of a zmm register).
pub const PANEL_COLS: usize = 16;
/// Consecutive k values one `vpdpbusd` lane multiplies and sums.
pub const KGROUP: usize = 4;
/// Panels per column block (the width of the widest micro-kernel: 4 zmm = 64 columns).
pub const BLOCK_PANELS: usize = 4;
/// Output columns per column block.
pub const BLOCK_COLS: usize = PANEL_COLS * BLOCK_PANELS;

/// Largest K for which every i32 accumulator is exact: the true dot product is at most
/// `K * 127 * 127`, which must stay below `i32::MAX` (2^17 * 16129 = 2.11e9 < 2.147e9).
/// Intermediate sums of the `+128` trick may wrap; they wrap back because the final value fits.
pub const MAX_K: usize = 1 << 17;

/// One panel's 16 columns x 4 consecutive k bytes: the s8 operand of one `vpdpbusd zmm`.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KGroupBlock {
    /// Byte `4 * c + b` = weight of column `c` of the panel at k offset `b` of the group.
    pub bytes: [i8; PANEL_COLS * KGROUP],
}

const _: () = assert!(std::mem::size_of::<KGroupBlock>() == 64);
const _: () = assert!(std::mem::align_of::<KGroupBlock>() == 64);

impl KGroupBlock {
    const ZERO: KGroupBlock = KGroupBlock { bytes: [0; PANEL_COLS * KGROUP] };
}

/// Weights packed for the kernels, with per-column sums for the `u8 x s8` trick.
#[derive(Clone, Debug)]
pub struct PackedWeights {
    n: usize,
    k: usize,
    k_groups: usize,
    col_blocks: usize,
    blocks: Vec<KGroupBlock>,
    col_sums: Vec<i32>,
}

impl PackedWeights {
    /// Packs row-major `[n, k]` weights in [-127, 127].
    pub fn new(weights: &[i8], n: usize, k: usize) -> Result<Self, KernelError> {
        check_weights(weights, n, k)?;
        let k_groups = k.div_ceil(KGROUP);
        let col_blocks = n.div_ceil(BLOCK_COLS);
        let mut blocks = vec![KGroupBlock::ZERO; col_blocks * k_groups * BLOCK_PANELS];
        let mut col_sums = vec![0i32; col_blocks * BLOCK_COLS];
        for (col, row) in weights.chunks_exact(k).enumerate() {
            let (cb, within) = (col / BLOCK_COLS, col % BLOCK_COLS);
            let (p, c) = (within / PANEL_COLS, within % PANEL_COLS);
            for (g, chunk) in row.chunks(KGROUP).enumerate() {
                let blk = &mut blocks[(cb * k_groups + g) * BLOCK_PANELS + p];
                blk.bytes[c * KGROUP..c * KGROUP + chunk.len()].copy_from_slice(chunk);
            }
            col_sums[col] = row.iter().map(|&w| i32::from(w)).sum();
        }
        Ok(PackedWeights { n, k, k_groups, col_blocks, blocks, col_sums })
    }

    /// Output features (rows of the original weight matrix).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }

    /// K rounded up to a multiple of [`KGROUP`]: the row stride of quantized activations.
    pub fn k_padded(&self) -> usize {
        self.k_groups * KGROUP
    }

    /// Number of [`KGROUP`]-wide groups along K.
    pub fn k_groups(&self) -> usize {
        self.k_groups
    }

    /// Number of [`BLOCK_COLS`]-wide column blocks.
    pub fn col_blocks(&self) -> usize {
        self.col_blocks
    }

    /// Blocks of column block `cb`: `k_groups * BLOCK_PANELS` blocks, `[k group][panel]`.
    pub(crate) fn col_block(&self, cb: usize) -> &[KGroupBlock] {
        let len = self.k_groups * BLOCK_PANELS;
        &self.blocks[cb * len..(cb + 1) * len]
    }

    /// Every packed block, `[column block][k group][panel]`.
    pub(crate) fn blocks(&self) -> &[KGroupBlock] {
        &self.blocks
    }

    /// Sum over k of each column's weights, padded with zeros to `col_blocks * BLOCK_COLS`.
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }

    /// Bytes of packed weights (what a GEMV streams per call).
    pub fn packed_bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<KGroupBlock>()
    }

    /// The weight at output column `col`, input `kk`, read back from the packed layout
    /// (`None` outside `n x k`).
    pub fn get(&self, col: usize, kk: usize) -> Option<i8> {
        if col >= self.n || kk >= self.k {
            return None;
        }
        let (cb, within) = (col / BLOCK_COLS, col % BLOCK_COLS);
        let (p, c) = (within / PANEL_COLS, within % PANEL_COLS);
        let (g, b) = (kk / KGROUP, kk % KGROUP);
        Some(self.blocks[(cb * self.k_groups + g) * BLOCK_PANELS + p].bytes[c * KGROUP + b])
    }
}

/// Checks row-major `[n, k]` int8 weights for every packed layout (CPU and GPU): both dimensions
/// at least 1, `k` small enough for exact i32 accumulation, the length `n * k`, and no -128 (the
/// symmetric scheme's range is [-127, 127]).
pub(crate) fn check_weights(weights: &[i8], n: usize, k: usize) -> Result<(), KernelError> {
    if n == 0 {
        return Err(KernelError::InvalidDimension { what: "n", value: n, reason: "must be at least 1" });
    }
    if k == 0 || k > MAX_K {
        return Err(KernelError::InvalidDimension {
            what: "k",
            value: k,
            reason: "must be in 1..=131072 so i32 accumulation is exact",
        });
    }
    let expected = n.checked_mul(k).ok_or(KernelError::InvalidDimension {
        what: "n",
        value: n,
        reason: "n * k overflows usize",
    })?;
    if weights.len() != expected {
        return Err(KernelError::ShapeMismatch { what: "weights", expected, found: weights.len() });
    }
    if let Some(pos) = weights.iter().position(|&w| w == i8::MIN) {
        return Err(KernelError::WeightOutOfRange { row: pos / k, col: pos % k });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_every_weight() {
        let (n, k) = (70, 13);
        let w: Vec<i8> = (0..n * k).map(|i| ((i * 37) % 255) as i8).map(|v| v.max(-127)).collect();
        let p = PackedWeights::new(&w, n, k).unwrap();
        for col in 0..n {
            for kk in 0..k {
                assert_eq!(p.get(col, kk), Some(w[col * k + kk]));
            }
            let s: i32 = w[col * k..(col + 1) * k].iter().map(|&v| i32::from(v)).sum();
            assert_eq!(p.col_sums()[col], s);
        }
        assert_eq!(p.get(n, 0), None);
        assert_eq!(p.col_sums().len(), 128);
        assert_eq!(p.k_padded(), 16);
    }

    #[test]
    fn pack_rejects_minus_128_and_bad_shapes() {
        assert!(matches!(PackedWeights::new(&[0, -128], 1, 2), Err(KernelError::WeightOutOfRange { row: 0, col: 1 })));
        assert!(matches!(PackedWeights::new(&[0; 5], 2, 3), Err(KernelError::ShapeMismatch { .. })));
        assert!(PackedWeights::new(&[], 0, 3).is_err());
        assert!(PackedWeights::new(&[], 3, 0).is_err());
    }
}
