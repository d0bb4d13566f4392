//! Runs the encoder's portable f32 loops compiled for the widest vector unit the CPU has.
//!
//! The float work around the int8 GEMMs (attention, LayerNorm, pooling) is written once as plain
//! Rust over slices, with `#[inline(always)]` helpers and fixed-width lane arrays that LLVM
//! vectorizes. [`Isa::run`] calls it inside a `#[target_feature]` function for AVX-512 or
//! AVX2 + FMA when the CPU has them, so the inlined loops are compiled for that width; other CPUs,
//! and `QTIER_KERNEL=scalar` (which forces the int8 kernels' scalar reference too), run the same
//! code compiled for the baseline target.
//!
//! This module holds the crate's only `unsafe`: calling a `#[target_feature]` function, after
//! checking at run time that the CPU has those features.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use qtier_kernels::KernelKind;

/// An instruction set the float loops can be compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// The baseline target (SSE2 on x86-64), separate multiply and add.
    Portable,
    /// AVX2 with FMA (Haswell and later, Zen).
    Avx2,
    /// AVX-512 F/BW/DQ/VL with FMA (Skylake-SP and later, Zen 4 and later).
    Avx512,
}

/// What the loops may use, handed to them by [`Isa::run`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lanes {
    fused: bool,
}

impl Lanes {
    /// `a * b + c`, fused where the instruction set has FMA. Without FMA, `mul_add` would be a
    /// library call per element, so the portable build keeps the multiply and add separate.
    #[inline(always)]
    pub(crate) fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        if self.fused { a.mul_add(b, c) } else { a * b + c }
    }
}

impl Isa {
    /// The widest instruction set this CPU supports; [`Isa::Portable`] when `QTIER_KERNEL=scalar`.
    /// Detected once.
    pub(crate) fn selected() -> Isa {
        static SELECTED: OnceLock<Isa> = OnceLock::new();
        *SELECTED.get_or_init(|| {
            if qtier_kernels::selected_kernel() == Ok(KernelKind::Scalar) {
                return Isa::Portable;
            }
            Isa::supported().last().unwrap_or(Isa::Portable)
        })
    }

    /// Every instruction set this CPU can run, narrowest first.
    pub(crate) fn supported() -> impl DoubleEndedIterator<Item = Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|isa| isa.is_supported())
    }

    /// Whether this CPU can run code compiled for `self` (`is_x86_feature_detected!` caches the
    /// CPU's answer, so this is a few loads).
    pub(crate) fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Runs `f` compiled for this instruction set. `f` must be an `#[inline(always)]` closure
    /// and everything it calls `#[inline(always)]` too: code that is not inlined into the
    /// `#[target_feature]` function is compiled for the baseline (and `mul_add` there becomes a
    /// library call). Panics when the CPU lacks the instruction set.
    #[inline(always)]
    pub(crate) fn run<R>(self, f: impl FnOnce(Lanes) -> R) -> R {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                assert!(self.is_supported(), "AVX-512 requested on a CPU without it");
                // SAFETY: the CPU has every feature `avx512` enables (checked just above;
                // `is_x86_feature_detected!` caches its answer).
                unsafe { avx512(f) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                assert!(self.is_supported(), "AVX2 requested on a CPU without it");
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                unsafe { avx2(f) }
            }
            _ => f(Lanes { fused: false }),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn avx512<R>(f: impl FnOnce(Lanes) -> R) -> R {
    f(Lanes { fused: true })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn avx2<R>(f: impl FnOnce(Lanes) -> R) -> R {
    f(Lanes { fused: true })
}
