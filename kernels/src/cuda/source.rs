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

/// A `__global__` entry point: its source, its `extern "C"` name and its parameter list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFn {
    /// The source that defines it.
    pub source: KernelSource,
    /// The symbol.
    pub name: &'static str,
    /// Its C parameters, in order. Every launch is checked against them (the driver reads each
    /// parameter's bytes from the host's argument array without knowing what was passed), and
    /// the NVRTC test checks them against the entry point's parameter list in NVRTC's PTX.
    pub params: &'static [Param],
}

/// The kind of one kernel parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// A device pointer (`T*`).
    Ptr,
    /// `int`.
    I32,
    /// `long long`.
    I64,
    /// `float`.
    F32,
}

impl Param {
    /// The parameter's type in PTX (`.param .u32 name_param_1`): pointers and `long long` are
    /// both `.u64` there.
    pub fn ptx_type(self) -> &'static str {
        match self {
            Param::Ptr | Param::I64 => ".u64",
            Param::I32 => ".u32",
            Param::F32 => ".f32",
        }
    }
}

macro_rules! kernel_fns {
    ($($id:ident = $src:ident : $name:literal [$($param:ident),* $(,)?];)*) => {
        $(
            #[doc = concat!("`", $name, "`.")]
            pub const $id: KernelFn = KernelFn { source: $src, name: $name, params: &[$(Param::$param),*] };
        )*
        /// Every entry point the host launches (the NVRTC test checks each is in its cubin).
        pub const KERNEL_FNS: &[KernelFn] = &[$($id),*];
    };
}

// The parameter lists mirror the declarations in the .cu files (`QTIER_GEMM_PARAMS` in
// gemm_s8.cu, `QTIER_OUTLIER_PARAMS` in quant.cu expanded).
kernel_fns! {
    // x, k, kp, q, scales; outlier_counts, outlier_channels, outlier_values, max_outliers,
    // outlier_ratio, outlier_trigger.
    QUANTIZE_ROWS = QUANT: "qtier_quantize_rows" [Ptr, I32, I32, Ptr, Ptr, Ptr, Ptr, Ptr, I32, F32, F32];
    // x, residual, gamma, beta, eps, h, y, q, kp, scales; the six outlier parameters.
    LAYERNORM_ROWS = QUANT: "qtier_layernorm_rows"
        [Ptr, Ptr, Ptr, Ptr, F32, I32, Ptr, Ptr, I32, Ptr, Ptr, Ptr, Ptr, I32, F32, F32];
    // a, b, m, n, kp, x_scales, w_scales, bias, residual, act, out, out_f16, acc_out.
    GEMM_MMA16832_128 = GEMM: "qtier_gemm_s8_mma16832_128x128"
        [Ptr, Ptr, I32, I32, I32, Ptr, Ptr, Ptr, Ptr, I32, Ptr, Ptr, Ptr];
    GEMM_MMA16832_64 = GEMM: "qtier_gemm_s8_mma16832_64x64"
        [Ptr, Ptr, I32, I32, I32, Ptr, Ptr, Ptr, Ptr, I32, Ptr, Ptr, Ptr];
    GEMM_MMA8816_64 = GEMM: "qtier_gemm_s8_mma8816_64x64"
        [Ptr, Ptr, I32, I32, I32, Ptr, Ptr, Ptr, Ptr, I32, Ptr, Ptr, Ptr];
    GEMM_DP4A = GEMM: "qtier_gemm_s8_dp4a" [Ptr, Ptr, I32, I32, I32, Ptr, Ptr, Ptr, Ptr, I32, Ptr, Ptr, Ptr];
    GEMM_DP4A_SPLITK = GEMM: "qtier_gemm_s8_dp4a_splitk"
        [Ptr, Ptr, I32, I32, I32, Ptr, Ptr, Ptr, Ptr, I32, Ptr, Ptr, Ptr];
    // out, m, n, b, kp, w_scales, counts, channels, values, max_outliers, act, residual.
    OUTLIER_EPILOGUE = GEMM: "qtier_outlier_epilogue" [Ptr, I32, I32, Ptr, I32, Ptr, Ptr, Ptr, Ptr, I32, I32, Ptr];
    // ids, type_ids, seq, word, vocab, pos, type_emb, type_vocab, gamma, beta, eps, h, out.
    EMBEDDING_LAYERNORM = ENCODER: "qtier_embedding_layernorm"
        [Ptr, Ptr, I32, Ptr, I32, Ptr, Ptr, I32, Ptr, Ptr, F32, I32, Ptr];
    // qkv, mask, seq, heads, d, scale, out.
    ATTENTION = ENCODER: "qtier_attention" [Ptr, Ptr, I32, I32, I32, F32, Ptr];
    // x, len.
    GELU_ERF = ENCODER: "qtier_gelu_erf" [Ptr, I64];
    // x, r, len.
    RESIDUAL_ADD = ENCODER: "qtier_residual_add" [Ptr, Ptr, I64];
    // x, mask, seq, h, out.
    MEAN_POOL = ENCODER: "qtier_mean_pool" [Ptr, Ptr, I32, I32, Ptr];
    // x, w, m, n, k, bias, residual, act, out.
    GEMM_F32_64 = GEMM_F32: "qtier_gemm_f32" [Ptr, Ptr, I32, I32, I32, Ptr, Ptr, I32, Ptr];
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
