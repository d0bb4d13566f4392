//! The `.cu` sources (embedded with `include_str!`) and the kernel entry points they define.

/// One embedded CUDA source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSource {
    /// File name under `kernels/cuda/` (also NVRTC's program or header name).
    pub file: &'static str,
    /// The file's text.
    pub text: &'static str,
}

/// Headers the sources `#include`, handed to NVRTC from memory (no include path needed).
pub const HEADERS: [KernelSource; 1] =
    [KernelSource { file: "qtier_common.cuh", text: include_str!("../../cuda/qtier_common.cuh") }];

/// Activation quantization and LayerNorm (+ quantization).
pub const QUANT: KernelSource = KernelSource { file: "quant.cu", text: include_str!("../../cuda/quant.cu") };
/// The int8 GEMM kernels with the fused Linear epilogue.
pub const GEMM: KernelSource = KernelSource { file: "gemm_s8.cu", text: include_str!("../../cuda/gemm_s8.cu") };
/// Encoder ops: embeddings, attention, GELU, residual, pooling.
pub const ENCODER: KernelSource = KernelSource { file: "encoder.cu", text: include_str!("../../cuda/encoder.cu") };
/// The fp32 GEMM with the fused Linear epilogue (float checkpoints).
pub const GEMM_F32: KernelSource = KernelSource { file: "gemm_f32.cu", text: include_str!("../../cuda/gemm_f32.cu") };

/// Every compiled source (each is one NVRTC program and one CUDA module).
pub const SOURCES: [KernelSource; 4] = [QUANT, GEMM, ENCODER, GEMM_F32];

/// A `__global__` entry point: its source and its `extern "C"` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFn {
    /// The source that defines it.
    pub source: KernelSource,
    /// The symbol.
    pub name: &'static str,
}

macro_rules! kernel_fns {
    ($($id:ident = $src:ident : $name:literal;)*) => {
        $(
            #[doc = concat!("`", $name, "`.")]
            pub const $id: KernelFn = KernelFn { source: $src, name: $name };
        )*
        /// Every entry point the host launches (the NVRTC test checks each is in its cubin).
        pub const KERNEL_FNS: &[KernelFn] = &[$($id),*];
    };
}

kernel_fns! {
    QUANTIZE_ROWS = QUANT: "qtier_quantize_rows";
    LAYERNORM_ROWS = QUANT: "qtier_layernorm_rows";
    GEMM_MMA16832_128 = GEMM: "qtier_gemm_s8_mma16832_128x128";
    GEMM_MMA16832_64 = GEMM: "qtier_gemm_s8_mma16832_64x64";
    GEMM_MMA8816_64 = GEMM: "qtier_gemm_s8_mma8816_64x64";
    GEMM_DP4A = GEMM: "qtier_gemm_s8_dp4a";
    GEMM_DP4A_SPLITK = GEMM: "qtier_gemm_s8_dp4a_splitk";
    OUTLIER_EPILOGUE = GEMM: "qtier_outlier_epilogue";
    EMBEDDING_LAYERNORM = ENCODER: "qtier_embedding_layernorm";
    ATTENTION = ENCODER: "qtier_attention";
    GELU_ERF = ENCODER: "qtier_gelu_erf";
    RESIDUAL_ADD = ENCODER: "qtier_residual_add";
    MEAN_POOL = ENCODER: "qtier_mean_pool";
    GEMM_F32_64 = GEMM_F32: "qtier_gemm_f32";
}

/// The integer value of `#define NAME value` in `text`, if present (the tests use it to check
/// that the host's constants match the kernels').
pub fn define_value(text: &str, name: &str) -> Option<i64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("#define") && words.next() == Some(name)).then(|| words.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_is_defined_in_its_source() {
        for f in KERNEL_FNS {
            let decl = format!("{}(", f.name);
            assert!(f.source.text.contains(&decl), "{} not in {}", f.name, f.source.file);
        }
        assert!(SOURCES.iter().all(|s| s.text.contains("#include \"qtier_common.cuh\"")));
    }

    #[test]
    fn define_value_reads_integer_defines() {
        assert_eq!(define_value("#define A 48\n#define B x", "A"), Some(48));
        assert_eq!(define_value("#define B x", "B"), None);
        assert_eq!(define_value("", "A"), None);
        assert_eq!(define_value(GEMM.text, "QTIER_KTILE"), Some(32));
    }
}
