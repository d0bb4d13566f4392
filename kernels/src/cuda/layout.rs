//! The weight layout of the GPU GEMM kernels ([`GpuPackedWeights`]).
//!
//! `W` (`[n, k]`, int8) is cut into [`MmaTile`]s of [`NTILE`] = 8 columns x [`KTILE`] = 32 k,
//! stored `[column tile][k tile]` (a column tile's k tiles are contiguous, so a block streams
//! them in order). Inside a tile, 32-bit word `2 * lane + h` (lane 0..32, h 0..2) holds
//! `W[n0 + lane / 4][k0 + 16 h + 4 (lane % 4) .. + 4]`, little-endian: exactly lane `lane`'s B
//! fragment (`b0`, `b1`) of `mma.sync.m16n8k32.row.col.s8` (PTX ISA, "Matrix fragments for
//! mma.m16n8k32": B element i of lane (g = lane / 4, t = lane % 4) is row
//! `4 t + (i % 4) + 16 (i / 4)`, column g). The same words are the B operands of two
//! consecutive `mma.m8n8k16` (h = k16 step) and of the dp4a kernel, so every kernel loads its
//! B fragment with one coalesced 8-byte load per lane. K is zero-padded to a multiple of 32 and
//! columns to a multiple of [`N_ALIGN`] = 128 (the widest block tile, so no kernel bounds-checks
//! weight loads). Activations are row-major int8 with the same padded K as row stride.

use crate::error::KernelError;

/// k values per tile and per pipeline stage (`QTIER_KTILE` in gemm_s8.cu).
pub const KTILE: usize = 32;
/// Columns per tile (`QTIER_NTILE`): the N of one mma.
pub const NTILE: usize = 8;
/// 32-bit words per tile (`QTIER_TILE_WORDS`): 8 x 32 bytes.
pub const TILE_WORDS: usize = NTILE * KTILE / 4;
/// Columns are padded to this (`QTIER_N_ALIGN`): the widest block tile.
pub const N_ALIGN: usize = 128;

/// One 8-column x 32-k tile: word `2 * lane + h` is lane `lane`'s B fragment register `h`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmaTile {
    /// The fragment words (4 int8 weights each, lowest k in the lowest byte).
    pub words: [u32; TILE_WORDS],
}

const _: () = assert!(std::mem::size_of::<MmaTile>() == 256);
const _: () = assert!(std::mem::align_of::<MmaTile>() == 8);

/// Where weight `(col, kk)` lives: (tile index, word in the tile, byte in the word).
pub fn weight_position(col: usize, kk: usize, k_tiles: usize) -> (usize, usize, usize) {
    let tile = (col / NTILE) * k_tiles + kk / KTILE;
    let (g, kin) = (col % NTILE, kk % KTILE);
    let (h, t, byte) = (kin / 16, (kin % 16) / 4, kin % 4);
    (tile, 2 * (4 * g + t) + h, byte)
}

/// Int8 weights `[n, k]` in the layout of the GPU kernels (see the module docs).
#[derive(Clone, Debug)]
pub struct GpuPackedWeights {
    n: usize,
    k: usize,
    tiles: Vec<MmaTile>,
}

impl GpuPackedWeights {
    /// Packs row-major `[n, k]` weights in [-127, 127] (the checks of [`crate::pack::PackedWeights`]).
    pub fn new(weights: &[i8], n: usize, k: usize) -> Result<Self, KernelError> {
        crate::pack::check_weights(weights, n, k)?;
        let k_tiles = k.div_ceil(KTILE);
        let n_padded = n.div_ceil(N_ALIGN) * N_ALIGN;
        let mut tiles = vec![MmaTile { words: [0; TILE_WORDS] }; (n_padded / NTILE) * k_tiles];
        for (col, row) in weights.chunks_exact(k).enumerate() {
            for (kk, &w) in row.iter().enumerate() {
                let (tile, word, byte) = weight_position(col, kk, k_tiles);
                tiles[tile].words[word] |= u32::from(w as u8) << (8 * byte);
            }
        }
        Ok(GpuPackedWeights { n, k, tiles })
    }

    /// Output features.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }

    /// K padded to a multiple of [`KTILE`]: the row stride of the quantized activations.
    pub fn k_padded(&self) -> usize {
        self.k_tiles() * KTILE
    }

    /// Number of k tiles.
    pub fn k_tiles(&self) -> usize {
        self.k.div_ceil(KTILE)
    }

    /// N padded to a multiple of [`N_ALIGN`].
    pub fn n_padded(&self) -> usize {
        self.n.div_ceil(N_ALIGN) * N_ALIGN
    }

    /// The packed tiles, `[column tile][k tile]`.
    pub fn tiles(&self) -> &[MmaTile] {
        &self.tiles
    }

    /// The tiles as the flat word array uploaded to the device.
    pub fn words(&self) -> Vec<u32> {
        self.tiles.iter().flat_map(|t| t.words).collect()
    }

    /// The weight at (`col`, `kk`) read back from the packed layout (`None` outside `n x k`).
    pub fn get(&self, col: usize, kk: usize) -> Option<i8> {
        if col >= self.n || kk >= self.k {
            return None;
        }
        let (tile, word, byte) = weight_position(col, kk, self.k_tiles());
        Some((self.tiles[tile].words[word] >> (8 * byte)) as u8 as i8)
    }
}

#[cfg(test)]
mod tests {
    //! CPU emulation of the three GPU kernels' data movement: fragments are gathered with the
    //! same address arithmetic as gemm_s8.cu, multiplied by an emulation of the PTX `mma` /
    //! `dp4a` semantics written from the ISA's fragment tables, and scattered as the kernels'
    //! epilogues do; the resulting i32 accumulators must equal the CPU scalar reference's.
    use super::*;
    use crate::cuda::source::{GEMM, define_value};
    use crate::{KernelKind, QuantizedLinear};

    fn byte(w: u32, i: usize) -> i32 {
        i32::from((w >> (8 * i)) as u8 as i8)
    }

    /// mma.m16n8k32.row.col.s32.s8.s8.s32 per the PTX ISA fragment tables.
    fn mma_m16n8k32(a: &[[u32; 4]; 32], b: &[[u32; 2]; 32], c: &mut [[i32; 4]; 32]) {
        let mut am = [[0i32; 32]; 16];
        let mut bm = [[0i32; 8]; 32];
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            for i in 0..16 {
                let row = if i < 4 || (8..12).contains(&i) { g } else { g + 8 };
                let col = t * 4 + (i & 3) + if i >= 8 { 16 } else { 0 };
                am[row][col] = byte(a[lane][i / 4], i % 4);
            }
            for i in 0..8 {
                let row = t * 4 + (i & 3) + if i >= 4 { 16 } else { 0 };
                bm[row][g] = byte(b[lane][i / 4], i % 4);
            }
        }
        for (lane, regs) in c.iter_mut().enumerate() {
            let (g, t) = (lane / 4, lane % 4);
            for (i, acc) in regs.iter_mut().enumerate() {
                let (row, col) = (g + if i >= 2 { 8 } else { 0 }, t * 2 + (i & 1));
                *acc += (0..32).map(|kk| am[row][kk] * bm[kk][col]).sum::<i32>();
            }
        }
    }

    /// mma.m8n8k16.row.col.s32.s8.s8.s32 per the PTX ISA fragment tables.
    fn mma_m8n8k16(a: &[u32; 32], b: &[u32; 32], c: &mut [[i32; 2]; 32]) {
        let mut am = [[0i32; 16]; 8];
        let mut bm = [[0i32; 8]; 16];
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            for i in 0..4 {
                am[g][t * 4 + i] = byte(a[lane], i);
                bm[t * 4 + i][g] = byte(b[lane], i);
            }
        }
        for (lane, regs) in c.iter_mut().enumerate() {
            let (g, t) = (lane / 4, lane % 4);
            for (i, acc) in regs.iter_mut().enumerate() {
                *acc += (0..16).map(|kk| am[g][kk] * bm[kk][t * 2 + i]).sum::<i32>();
            }
        }
    }

    fn dp4a(a: u32, b: u32, c: i32) -> i32 {
        c + (0..4).map(|i| byte(a, i) * byte(b, i)).sum::<i32>()
    }

    /// The activations as the quantization kernel writes them: `[m, kp]`, zero-padded.
    fn padded_rows(xq: &[i8], m: usize, k: usize, kp: usize) -> Vec<u8> {
        let mut a = vec![0u8; m * kp];
        for r in 0..m {
            for c in 0..k {
                a[r * kp + c] = xq[r * k + c] as u8;
            }
        }
        a
    }

    fn word_at(a: &[u8], kp: usize, m: usize, row: usize, off: usize) -> u32 {
        if row >= m {
            return 0; // zero-filled rows past m (cp.async source size 0 / the guarded loads)
        }
        let p = row * kp + off;
        u32::from_le_bytes([a[p], a[p + 1], a[p + 2], a[p + 3]])
    }

    /// qtier_gemm_s8_mma16832 with block tile bm x bn and warps wm_n x wn_n.
    fn emulate_mma16832(
        a: &[u8],
        m: usize,
        w: &GpuPackedWeights,
        bm: usize,
        bn: usize,
        warps: (usize, usize),
    ) -> Vec<i32> {
        let (n, kp, kt_n, words) = (w.n(), w.k_padded(), w.k_tiles(), w.words());
        let (wmw, wnw) = (bm / warps.0, bn / warps.1);
        let mut out = vec![0i32; m * n];
        for by in 0..m.div_ceil(bm) {
            for bx in 0..n.div_ceil(bn) {
                let (row0, col0) = (by * bm, bx * bn);
                for warp in 0..warps.0 * warps.1 {
                    let (wm, wn) = (warp / warps.1, warp % warps.1);
                    let mut acc = vec![vec![[[0i32; 4]; 32]; wnw / 8]; wmw / 16];
                    for kt in 0..kt_n {
                        for (i, acc_i) in acc.iter_mut().enumerate() {
                            let mut af = [[0u32; 4]; 32];
                            for (lane, f) in af.iter_mut().enumerate() {
                                let (g, t) = (lane / 4, lane % 4);
                                let r = row0 + wm * wmw + i * 16 + g;
                                let off = kt * KTILE + t * 4;
                                *f = [
                                    word_at(a, kp, m, r, off),
                                    word_at(a, kp, m, r + 8, off),
                                    word_at(a, kp, m, r, off + 16),
                                    word_at(a, kp, m, r + 8, off + 16),
                                ];
                            }
                            for (j, c) in acc_i.iter_mut().enumerate() {
                                let tile = (col0 / NTILE + wn * (wnw / 8) + j) * kt_n + kt;
                                let mut bf = [[0u32; 2]; 32];
                                for (lane, f) in bf.iter_mut().enumerate() {
                                    *f = [words[tile * TILE_WORDS + 2 * lane], words[tile * TILE_WORDS + 2 * lane + 1]];
                                }
                                mma_m16n8k32(&af, &bf, c);
                            }
                        }
                    }
                    for (i, acc_i) in acc.iter().enumerate() {
                        for (j, c) in acc_i.iter().enumerate() {
                            for (lane, regs) in c.iter().enumerate() {
                                let (g, t) = (lane / 4, lane % 4);
                                for (r, &v) in regs.iter().enumerate() {
                                    let row = row0 + wm * wmw + i * 16 + g + if r >= 2 { 8 } else { 0 };
                                    let col = col0 + wn * wnw + j * NTILE + t * 2 + (r & 1);
                                    if row < m && col < n {
                                        out[row * n + col] = v;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// qtier_gemm_s8_mma8816_64x64.
    fn emulate_mma8816(a: &[u8], m: usize, w: &GpuPackedWeights) -> Vec<i32> {
        let (n, kp, kt_n, words) = (w.n(), w.k_padded(), w.k_tiles(), w.words());
        let mut out = vec![0i32; m * n];
        for by in 0..m.div_ceil(64) {
            for bx in 0..n.div_ceil(64) {
                let (row0, col0) = (by * 64, bx * 64);
                for warp in 0..4 {
                    let (wm, wn) = (warp >> 1, warp & 1);
                    let mut acc = [[[[0i32; 2]; 32]; 4]; 4];
                    for kt in 0..kt_n {
                        for ks in 0..2 {
                            for (i, acc_i) in acc.iter_mut().enumerate() {
                                let af: [u32; 32] = std::array::from_fn(|lane| {
                                    let r = row0 + wm * 32 + i * 8 + lane / 4;
                                    word_at(a, kp, m, r, kt * KTILE + ks * 16 + (lane % 4) * 4)
                                });
                                for (j, c) in acc_i.iter_mut().enumerate() {
                                    let tile = (col0 / NTILE + wn * 4 + j) * kt_n + kt;
                                    let bf: [u32; 32] =
                                        std::array::from_fn(|lane| words[tile * TILE_WORDS + 2 * lane + ks]);
                                    mma_m8n8k16(&af, &bf, c);
                                }
                            }
                        }
                    }
                    for (i, acc_i) in acc.iter().enumerate() {
                        for (j, c) in acc_i.iter().enumerate() {
                            for (lane, regs) in c.iter().enumerate() {
                                for (r, &v) in regs.iter().enumerate() {
                                    let row = row0 + wm * 32 + i * 8 + lane / 4;
                                    let col = col0 + wn * 32 + j * NTILE + (lane % 4) * 2 + r;
                                    if row < m && col < n {
                                        out[row * n + col] = v;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// qtier_gemm_s8_dp4a: per (row, 8-column tile), lanes then the two-shuffle reduction.
    fn emulate_dp4a(a: &[u8], m: usize, w: &GpuPackedWeights) -> Vec<i32> {
        let (n, kp, kt_n, words) = (w.n(), w.k_padded(), w.k_tiles(), w.words());
        let mut out = vec![0i32; m * n];
        for row in 0..m {
            for ntile in 0..n.div_ceil(NTILE) {
                let mut lanes = [0i32; 32];
                for (lane, acc) in lanes.iter_mut().enumerate() {
                    for kt in 0..kt_n {
                        let base = (ntile * kt_n + kt) * TILE_WORDS + lane * 2;
                        let off = kt * KTILE + (lane % 4) * 4;
                        *acc = dp4a(word_at(a, kp, m, row, off), words[base], *acc);
                        *acc = dp4a(word_at(a, kp, m, row, off + 16), words[base + 1], *acc);
                    }
                }
                for g in 0..NTILE {
                    let col = ntile * NTILE + g;
                    if col < n {
                        out[row * n + col] = lanes[4 * g..4 * g + 4].iter().sum();
                    }
                }
            }
        }
        out
    }

    /// Deterministic pseudo-random int8 in [-127, 127] (xorshift).
    fn random_i8(len: usize, seed: u64) -> Vec<i8> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s % 255) as i32 - 127) as i8
            })
            .collect()
    }

    #[test]
    fn pack_round_trips_and_pads_with_zeros() {
        let (n, k) = (13, 45);
        let w = random_i8(n * k, 7);
        let p = GpuPackedWeights::new(&w, n, k).unwrap();
        for col in 0..n {
            for kk in 0..k {
                assert_eq!(p.get(col, kk), Some(w[col * k + kk]));
            }
        }
        assert_eq!((p.k_padded(), p.n_padded(), p.k_tiles()), (64, 128, 2));
        assert_eq!(p.tiles().len(), 128 / NTILE * 2);
        assert_eq!(p.get(n, 0), None);
        let nonzero: usize = p.words().iter().map(|w| (0..4).filter(|&i| (w >> (8 * i)) & 0xff != 0).count()).sum();
        assert_eq!(nonzero, w.iter().filter(|&&v| v != 0).count());
        assert!(matches!(
            GpuPackedWeights::new(&[0, -128], 1, 2),
            Err(KernelError::WeightOutOfRange { row: 0, col: 1 })
        ));
        assert!(GpuPackedWeights::new(&[0; 5], 2, 3).is_err());
        assert!(GpuPackedWeights::new(&[], 0, 3).is_err());
    }

    #[test]
    fn host_constants_match_the_kernel_source() {
        for (name, value) in [
            ("QTIER_KTILE", KTILE),
            ("QTIER_NTILE", NTILE),
            ("QTIER_TILE_WORDS", TILE_WORDS),
            ("QTIER_N_ALIGN", N_ALIGN),
        ] {
            assert_eq!(define_value(GEMM.text, name), Some(value as i64), "{name}");
        }
    }

    #[test]
    fn emulated_gpu_kernels_reproduce_the_scalar_reference_accumulators() {
        // Odd shapes: partial row and column blocks, K not a multiple of 32, one row.
        for (m, n, k) in [(19, 37, 70), (1, 130, 33), (70, 9, 96), (3, 200, 5)] {
            let w = random_i8(n * k, 1 + m as u64);
            let xq = random_i8(m * k, 2 + n as u64);
            let layer = QuantizedLinear::new(&w, &vec![1.0; n], None, n, k).unwrap();
            let reference = layer.accumulate_i32(KernelKind::Scalar, &xq, m).unwrap();
            let packed = GpuPackedWeights::new(&w, n, k).unwrap();
            let a = padded_rows(&xq, m, k, packed.k_padded());
            assert_eq!(emulate_mma16832(&a, m, &packed, 64, 64, (2, 2)), reference, "m16n8k32 64x64 {m}x{n}x{k}");
            assert_eq!(emulate_mma16832(&a, m, &packed, 128, 128, (2, 4)), reference, "m16n8k32 128x128 {m}x{n}x{k}");
            assert_eq!(emulate_mma8816(&a, m, &packed), reference, "m8n8k16 {m}x{n}x{k}");
            assert_eq!(emulate_dp4a(&a, m, &packed), reference, "dp4a {m}x{n}x{k}");
        }
    }

    /// `qtier_weight_at` (gemm_s8.cu, the outlier epilogue's weight read), transcribed.
    fn emulate_weight_at(words: &[u32], k_tiles: usize, col: usize, kk: usize) -> i8 {
        let tile = (col / NTILE) * k_tiles + kk / KTILE;
        let (g, kin) = (col % NTILE, kk % KTILE);
        let word = 2 * (4 * g + (kin % 16) / 4) + kin / 16;
        (words[tile * TILE_WORDS + word] >> (8 * (kin % 4))) as u8 as i8
    }

    #[test]
    fn emulated_weight_reads_find_every_weight() {
        for (n, k) in [(37, 70), (130, 33), (9, 96), (1, 5)] {
            let w = random_i8(n * k, (n * k) as u64);
            let packed = GpuPackedWeights::new(&w, n, k).unwrap();
            let words = packed.words();
            for col in 0..n {
                for kk in 0..k {
                    assert_eq!(
                        emulate_weight_at(&words, packed.k_tiles(), col, kk),
                        w[col * k + kk],
                        "{n}x{k} ({col}, {kk})"
                    );
                }
            }
        }
    }

    #[test]
    fn extreme_weights_accumulate_exactly() {
        let (m, n, k) = (17, 16, 640);
        let w = vec![-127i8; n * k];
        let xq = vec![127i8; m * k];
        let packed = GpuPackedWeights::new(&w, n, k).unwrap();
        let a = padded_rows(&xq, m, k, packed.k_padded());
        let expected = vec![-127 * 127 * k as i32; m * n];
        assert_eq!(emulate_mma16832(&a, m, &packed, 64, 64, (2, 2)), expected);
        assert_eq!(emulate_dp4a(&a, m, &packed), expected);
    }
}
