//! Launch configuration: which GEMM kernel runs, block tiles, and grid arithmetic for every
//! kernel (pure functions, tested on the CPU against the constants in the `.cu` files).

use super::arch::GpuArch;
use super::error::CudaError;
use super::layout::NTILE;
use super::source::{self, KernelFn};

/// Threads of the one-block-per-row kernels (`QTIER_ROW_THREADS`): quantization, LayerNorm,
/// embeddings. 256 covers a 384- or 768-wide row in 1-3 strided passes.
pub const ROW_THREADS: u32 = 256;
/// Threads of the elementwise kernels and mean pooling (`QTIER_ELEMENTWISE_THREADS`).
pub const ELEMENTWISE_THREADS: u32 = 256;
/// Grid cap of the grid-stride elementwise kernels: enough blocks to fill any current GPU
/// several times over, without a grid as long as a huge tensor.
pub const ELEMENTWISE_MAX_BLOCKS: u32 = 65_535;
/// Rows per dp4a warp (`QTIER_DP4A_ROWS`); batches of up to this many rows take the dp4a
/// kernel, which streams the weights once at full width, while a tensor-core tile would be
/// mostly padding (at 1-8 rows the GEMM is a weight stream, bound by memory bandwidth).
pub const DP4A_ROWS: usize = 8;
/// Warps per dp4a block (`QTIER_DP4A_WARPS`), each on its own 8-column tile (plain kernel) or
/// [`DP4A_SPLIT`] of them on one (the k-split kernel).
pub const DP4A_WARPS: usize = 8;
/// Warps sharing one 8-column tile's k tiles in the k-split dp4a kernel (`QTIER_DP4A_SPLIT`).
pub const DP4A_SPLIT: usize = 4;
/// The k-split dp4a kernel is chosen when the plain one would give fewer blocks than this many
/// per multiprocessor: a weight stream needs many loads in flight per multiprocessor to keep
/// the memory busy, and a plain block is only 8 warps (a 4096-column layer is 64 blocks, fewer
/// than an A10G's 80 multiprocessors).
pub const DP4A_SPLIT_BELOW_BLOCKS_PER_SM: usize = 2;
/// Query rows per attention block (`QTIER_ATT_WARPS`, one warp each).
pub const ATTENTION_WARPS: u32 = 8;
/// Longest sequence the fused attention kernel handles (`QTIER_ATT_MAX_SEQ`): BERT's 512.
pub const ATTENTION_MAX_SEQ: usize = 512;
/// Largest head dimension of the fused attention kernel (`QTIER_ATT_MAX_HEAD_DIM`).
pub const ATTENTION_MAX_HEAD_DIM: usize = 128;
/// Output rows and columns per block of the fp32 GEMM (`QTIER_F32_TILE`).
pub const F32_TILE: usize = 64;
/// Threads per block of the fp32 GEMM (`QTIER_F32_THREADS`): 16 x 16, each on 4 x 4 outputs.
pub const F32_THREADS: u32 = 256;
/// Largest grid extent in y and z.
const MAX_GRID_YZ: usize = 65_535;

/// A kernel launch: grid and block extents (x, y, z) and dynamic shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchDims {
    /// Blocks per grid dimension.
    pub grid: (u32, u32, u32),
    /// Threads per block dimension.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory per block (all kernels use static shared memory: 0).
    pub shared_bytes: u32,
}

/// A concrete GEMM kernel with its block tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GemmKernel {
    /// `mma.m16n8k32`, 128 x 128 block tile, 8 warps of 64 x 32 (sm_80+).
    Mma16832Large,
    /// `mma.m16n8k32`, 64 x 64 block tile, 4 warps of 32 x 32 (sm_80+).
    Mma16832Small,
    /// `mma.m8n8k16`, 64 x 64 block tile, 4 warps of 32 x 32 (sm_75+).
    Mma8816,
    /// `dp4a`, [`DP4A_ROWS`] rows x 64 columns per block.
    Dp4a,
    /// `dp4a` with k split over [`DP4A_SPLIT`] warps per column tile, [`DP4A_ROWS`] rows x 16
    /// columns per block.
    Dp4aSplitK,
}

impl GemmKernel {
    /// Every kernel, largest tile first.
    pub const ALL: [GemmKernel; 5] = [
        GemmKernel::Mma16832Large,
        GemmKernel::Mma16832Small,
        GemmKernel::Mma8816,
        GemmKernel::Dp4a,
        GemmKernel::Dp4aSplitK,
    ];

    /// The entry point.
    pub fn function(self) -> KernelFn {
        match self {
            GemmKernel::Mma16832Large => source::GEMM_MMA16832_128,
            GemmKernel::Mma16832Small => source::GEMM_MMA16832_64,
            GemmKernel::Mma8816 => source::GEMM_MMA8816_64,
            GemmKernel::Dp4a => source::GEMM_DP4A,
            GemmKernel::Dp4aSplitK => source::GEMM_DP4A_SPLITK,
        }
    }

    /// Output rows x columns per block.
    pub fn block_tile(self) -> (usize, usize) {
        match self {
            GemmKernel::Mma16832Large => (128, 128),
            GemmKernel::Mma16832Small | GemmKernel::Mma8816 => (64, 64),
            GemmKernel::Dp4a => (DP4A_ROWS, DP4A_WARPS * NTILE),
            GemmKernel::Dp4aSplitK => (DP4A_ROWS, DP4A_WARPS / DP4A_SPLIT * NTILE),
        }
    }

    /// Threads per block.
    pub fn threads(self) -> u32 {
        match self {
            GemmKernel::Mma16832Large => 256,
            GemmKernel::Mma16832Small | GemmKernel::Mma8816 => 128,
            GemmKernel::Dp4a | GemmKernel::Dp4aSplitK => (DP4A_WARPS * 32) as u32,
        }
    }

    /// A short name for reports: the instruction and the block tile.
    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::Mma16832Large => "mma.m16n8k32 128x128",
            GemmKernel::Mma16832Small => "mma.m16n8k32 64x64",
            GemmKernel::Mma8816 => "mma.m8n8k16 64x64",
            GemmKernel::Dp4a => "dp4a",
            GemmKernel::Dp4aSplitK => "dp4a split-k",
        }
    }

    /// Whether the kernel runs on `arch`: the `mma.m16n8k32` ones on sm_80+ (see
    /// [`requirement`](Self::requirement)), the others on every supported architecture.
    pub fn runs_on(self, arch: GpuArch) -> bool {
        match self {
            GemmKernel::Mma16832Large | GemmKernel::Mma16832Small => arch.has_mma_m16n8k32(),
            GemmKernel::Mma8816 | GemmKernel::Dp4a | GemmKernel::Dp4aSplitK => arch.is_supported(),
        }
    }

    /// What the kernel needs of the GPU, for the error when it does not run there.
    pub fn requirement(self) -> &'static str {
        match self {
            GemmKernel::Mma16832Large | GemmKernel::Mma16832Small => {
                "the mma.m16n8k32 GEMM kernels need sm_80 or newer (mma.m16n8k32 s8 and cp.async)"
            }
            GemmKernel::Mma8816 | GemmKernel::Dp4a | GemmKernel::Dp4aSplitK => {
                "the int8 GEMM kernels need sm_75 or newer"
            }
        }
    }
}

/// The kernel for an `m x n` output on `arch` with `sm_count` multiprocessors: dp4a for at most
/// [`DP4A_ROWS`] rows (split over k when the plain kernel gives fewer than
/// [`DP4A_SPLIT_BELOW_BLOCKS_PER_SM`] blocks per multiprocessor), else tensor cores; on sm_80+
/// the 128 x 128 tile when it still gives every multiprocessor a block, else the 64 x 64 tile
/// (more, smaller blocks).
pub fn select_gemm(arch: GpuArch, m: usize, n: usize, sm_count: usize) -> GemmKernel {
    if m <= DP4A_ROWS {
        if n.div_ceil(GemmKernel::Dp4a.block_tile().1) < DP4A_SPLIT_BELOW_BLOCKS_PER_SM * sm_count {
            GemmKernel::Dp4aSplitK
        } else {
            GemmKernel::Dp4a
        }
    } else if !arch.has_mma_m16n8k32() {
        GemmKernel::Mma8816
    } else if m.div_ceil(128) * n.div_ceil(128) >= sm_count {
        GemmKernel::Mma16832Large
    } else {
        GemmKernel::Mma16832Small
    }
}

fn grid_extent(what: &'static str, value: usize, max: usize) -> Result<u32, CudaError> {
    if value == 0 || value > max {
        return Err(CudaError::InvalidArgument { what, value, reason: "outside the CUDA grid limits" });
    }
    Ok(value as u32)
}

/// Grid of `kernel` for an `m x n` output: column blocks on x, row blocks on y.
pub fn gemm_dims(kernel: GemmKernel, m: usize, n: usize) -> Result<LaunchDims, CudaError> {
    let (bm, bn) = kernel.block_tile();
    Ok(LaunchDims {
        grid: (grid_extent("n", n.div_ceil(bn), i32::MAX as usize)?, grid_extent("m", m.div_ceil(bm), MAX_GRID_YZ)?, 1),
        block: (kernel.threads(), 1, 1),
        shared_bytes: 0,
    })
}

/// Grid of the fp32 GEMM for an `m x n` output: [`F32_TILE`]-wide column blocks on x, row
/// blocks on y.
pub fn gemm_f32_dims(m: usize, n: usize) -> Result<LaunchDims, CudaError> {
    Ok(LaunchDims {
        grid: (
            grid_extent("n", n.div_ceil(F32_TILE), i32::MAX as usize)?,
            grid_extent("m", m.div_ceil(F32_TILE), MAX_GRID_YZ)?,
            1,
        ),
        block: (F32_THREADS, 1, 1),
        shared_bytes: 0,
    })
}

/// One block of [`ROW_THREADS`] per row.
pub fn row_dims(rows: usize) -> Result<LaunchDims, CudaError> {
    Ok(LaunchDims {
        grid: (grid_extent("rows", rows, i32::MAX as usize)?, 1, 1),
        block: (ROW_THREADS, 1, 1),
        shared_bytes: 0,
    })
}

/// The outlier epilogue over an `m x n` output: [`ELEMENTWISE_THREADS`]-wide column blocks on
/// x, rows on y (strided past the grid's y limit).
pub fn outlier_epilogue_dims(m: usize, n: usize) -> Result<LaunchDims, CudaError> {
    Ok(LaunchDims {
        grid: (
            grid_extent("n", n.div_ceil(ELEMENTWISE_THREADS as usize), i32::MAX as usize)?,
            grid_extent("m", m.min(MAX_GRID_YZ), MAX_GRID_YZ)?,
            1,
        ),
        block: (ELEMENTWISE_THREADS, 1, 1),
        shared_bytes: 0,
    })
}

/// Grid-stride elementwise launch over `len` values.
pub fn elementwise_dims(len: usize) -> Result<LaunchDims, CudaError> {
    let blocks = len.div_ceil(ELEMENTWISE_THREADS as usize).min(ELEMENTWISE_MAX_BLOCKS as usize);
    Ok(LaunchDims {
        grid: (grid_extent("len", blocks, ELEMENTWISE_MAX_BLOCKS as usize)?, 1, 1),
        block: (ELEMENTWISE_THREADS, 1, 1),
        shared_bytes: 0,
    })
}

/// Fused attention: (query blocks of [`ATTENTION_WARPS`], heads, batch).
pub fn attention_dims(batch: usize, seq: usize, heads: usize) -> Result<LaunchDims, CudaError> {
    Ok(LaunchDims {
        grid: (
            grid_extent("seq", seq.div_ceil(ATTENTION_WARPS as usize), i32::MAX as usize)?,
            grid_extent("heads", heads, MAX_GRID_YZ)?,
            grid_extent("batch", batch, MAX_GRID_YZ)?,
        ),
        block: (ATTENTION_WARPS * 32, 1, 1),
        shared_bytes: 0,
    })
}

/// Mean pooling: (column blocks, batch).
pub fn mean_pool_dims(batch: usize, hidden: usize) -> Result<LaunchDims, CudaError> {
    Ok(LaunchDims {
        grid: (
            grid_extent("hidden", hidden.div_ceil(ELEMENTWISE_THREADS as usize), i32::MAX as usize)?,
            grid_extent("batch", batch, MAX_GRID_YZ)?,
            1,
        ),
        block: (ELEMENTWISE_THREADS, 1, 1),
        shared_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::source::{ENCODER, GEMM, GEMM_F32, QUANT, define_value};

    #[test]
    fn constants_match_the_kernel_sources() {
        let checks: [(&str, &str, i64); 11] = [
            (GEMM_F32.text, "QTIER_F32_TILE", F32_TILE as i64),
            (GEMM_F32.text, "QTIER_F32_THREADS", F32_THREADS.into()),
            (QUANT.text, "QTIER_ROW_THREADS", ROW_THREADS.into()),
            (ENCODER.text, "QTIER_ROW_THREADS", ROW_THREADS.into()),
            (ENCODER.text, "QTIER_ELEMENTWISE_THREADS", ELEMENTWISE_THREADS.into()),
            (ENCODER.text, "QTIER_ATT_WARPS", ATTENTION_WARPS.into()),
            (ENCODER.text, "QTIER_ATT_MAX_SEQ", ATTENTION_MAX_SEQ as i64),
            (ENCODER.text, "QTIER_ATT_MAX_HEAD_DIM", ATTENTION_MAX_HEAD_DIM as i64),
            (GEMM.text, "QTIER_DP4A_ROWS", DP4A_ROWS as i64),
            (GEMM.text, "QTIER_DP4A_WARPS", DP4A_WARPS as i64),
            (GEMM.text, "QTIER_DP4A_SPLIT", DP4A_SPLIT as i64),
        ];
        for (text, name, value) in checks {
            assert_eq!(define_value(text, name), Some(value), "{name}");
        }
        // Block sizes in the kernels' __launch_bounds__ and template arguments.
        assert!(GEMM.text.contains("__launch_bounds__(256) qtier_gemm_s8_mma16832_128x128"));
        assert!(GEMM.text.contains("qtier_gemm_mma16832<128, 128, 2, 4>"));
        assert!(GEMM.text.contains("__launch_bounds__(128) qtier_gemm_s8_mma16832_64x64"));
        assert!(GEMM.text.contains("qtier_gemm_mma16832<64, 64, 2, 2>"));
        assert!(GEMM.text.contains("__launch_bounds__(128) qtier_gemm_s8_mma8816_64x64"));
        assert!(GEMM.text.contains("__launch_bounds__(QTIER_DP4A_WARPS * 32) qtier_gemm_s8_dp4a("));
        assert!(GEMM.text.contains("__launch_bounds__(QTIER_DP4A_WARPS * 32) qtier_gemm_s8_dp4a_splitk("));
    }

    #[test]
    fn gemm_selection() {
        let h200 = (GpuArch::SM90, 132);
        // 4096 columns: 64 plain dp4a blocks, under 2 per multiprocessor on every GPU here.
        assert_eq!(select_gemm(h200.0, 1, 4096, h200.1), GemmKernel::Dp4aSplitK);
        assert_eq!(select_gemm(h200.0, 8, 4096, h200.1), GemmKernel::Dp4aSplitK);
        assert_eq!(select_gemm(GpuArch::SM75, 1, 4096, 40), GemmKernel::Dp4aSplitK);
        // 11008 columns: 172 blocks, enough for a T4's 40 and an A10G's 80, not an H200's 132.
        assert_eq!(select_gemm(GpuArch::SM75, 1, 11008, 40), GemmKernel::Dp4a);
        assert_eq!(select_gemm(GpuArch::SM86, 1, 11008, 80), GemmKernel::Dp4a);
        assert_eq!(select_gemm(h200.0, 1, 11008, h200.1), GemmKernel::Dp4aSplitK);
        assert_eq!(select_gemm(h200.0, 16, 11008, h200.1), GemmKernel::Mma16832Small);
        assert_eq!(select_gemm(h200.0, 128, 4096, h200.1), GemmKernel::Mma16832Small);
        assert_eq!(select_gemm(h200.0, 2048, 4096, h200.1), GemmKernel::Mma16832Large);
        assert_eq!(select_gemm(GpuArch::SM75, 128, 4096, 40), GemmKernel::Mma8816);
        assert_eq!(select_gemm(GpuArch::SM75, 2048, 4096, 40), GemmKernel::Mma8816);
        assert_eq!(GemmKernel::Mma16832Small.name(), "mma.m16n8k32 64x64");
        assert_eq!(GemmKernel::Mma8816.name(), "mma.m8n8k16 64x64");
        for k in GemmKernel::ALL {
            assert_eq!(k.function().source.file, "gemm_s8.cu");
        }
    }

    #[test]
    fn a_kernel_runs_where_its_instructions_exist() {
        for arch in [GpuArch::SM75, GpuArch::SM86, GpuArch::SM90] {
            for (m, n) in [(1, 384), (16, 11008), (2048, 4096)] {
                assert!(select_gemm(arch, m, n, 80).runs_on(arch), "{arch} {m}x{n}");
            }
            assert!(GemmKernel::Mma8816.runs_on(arch) && GemmKernel::Dp4a.runs_on(arch), "{arch}");
            let m16n8k32 = arch.has_mma_m16n8k32();
            assert_eq!(GemmKernel::Mma16832Large.runs_on(arch), m16n8k32, "{arch}");
            assert_eq!(GemmKernel::Mma16832Small.runs_on(arch), m16n8k32, "{arch}");
        }
        assert!(GemmKernel::ALL.iter().all(|k| !k.runs_on(GpuArch::new(7, 0))));
        assert!(GemmKernel::Mma16832Small.requirement().contains("sm_80"));
    }

    #[test]
    fn grids_cover_every_output_exactly_once() {
        for kernel in GemmKernel::ALL {
            for (m, n) in [(1, 1), (1, 384), (32, 1536), (127, 4097), (128, 11008), (300, 8)] {
                let d = gemm_dims(kernel, m, n).unwrap();
                let (bm, bn) = kernel.block_tile();
                let (gx, gy) = (d.grid.0 as usize, d.grid.1 as usize);
                assert!(gx * bn >= n && (gx - 1) * bn < n, "{kernel:?} {m}x{n}");
                assert!(gy * bm >= m && (gy - 1) * bm < m, "{kernel:?} {m}x{n}");
                assert_eq!(d.block.0, kernel.threads());
            }
        }
        // The dp4a block is DP4A_WARPS warps of one 8-column tile each, or DP4A_SPLIT per tile.
        assert_eq!(GemmKernel::Dp4a.block_tile().1, DP4A_WARPS * NTILE);
        assert_eq!(GemmKernel::Dp4aSplitK.block_tile().1 * DP4A_SPLIT, DP4A_WARPS * NTILE);
        assert_eq!(DP4A_WARPS % DP4A_SPLIT, 0);
        assert!(gemm_dims(GemmKernel::Dp4a, 0, 8).is_err());
        assert!(gemm_dims(GemmKernel::Mma16832Small, 64 * 65_536, 8).is_err());
        assert_eq!(row_dims(384).unwrap().grid, (384, 1, 1));
        assert!(row_dims(0).is_err());
        assert_eq!(elementwise_dims(1000).unwrap().grid.0, 4);
        assert_eq!(elementwise_dims(usize::MAX / 2).unwrap().grid.0, ELEMENTWISE_MAX_BLOCKS);
        assert_eq!(attention_dims(2, 128, 12).unwrap().grid, (16, 12, 2));
        assert_eq!(attention_dims(1, 9, 1).unwrap().grid.0, 2);
        assert_eq!(mean_pool_dims(3, 384).unwrap().grid, (2, 3, 1));
        let f = gemm_f32_dims(130, 1536).unwrap();
        assert_eq!((f.grid, f.block.0), ((24, 3, 1), F32_THREADS));
        assert_eq!(gemm_f32_dims(1, 1).unwrap().grid, (1, 1, 1));
        assert!(gemm_f32_dims(0, 8).is_err());
        // 16 x 16 threads of 4 x 4 outputs cover the tile.
        assert_eq!((F32_THREADS as usize) * 16, F32_TILE * F32_TILE);
        // The outlier epilogue: one thread per column, rows strided past the y limit.
        let o = outlier_epilogue_dims(128, 1536).unwrap();
        assert_eq!((o.grid, o.block.0), ((6, 128, 1), ELEMENTWISE_THREADS));
        assert_eq!(outlier_epilogue_dims(100_000, 257).unwrap().grid, (2, 65_535, 1));
        assert!(outlier_epilogue_dims(0, 8).is_err());
        assert!(outlier_epilogue_dims(8, 0).is_err());
    }
}
