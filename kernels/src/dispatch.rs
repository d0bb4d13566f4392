//! Which kernel runs: CPU features are detected once, `QTIER_KERNEL` may force a choice.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::error::KernelError;

/// Environment variable that forces a kernel: `scalar`, `avx2`, `avxvnni` or `avx512vnni`.
pub const KERNEL_ENV_VAR: &str = "QTIER_KERNEL";

/// The int8 GEMM kernels this crate has, from slowest to fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KernelKind {
    /// Portable reference, also the fallback on non-x86 targets.
    Scalar,
    /// AVX2 `vpmaddubsw` + `vpmaddwd` (Haswell and later, Zen 1 and later).
    Avx2,
    /// AVX-VNNI `vpdpbusd` on 256-bit registers (Alder Lake, Zen 5).
    AvxVnni,
    /// AVX-512 VNNI `vpdpbusd` on 512-bit registers (Cascade Lake, Sapphire Rapids, Zen 4/5).
    Avx512Vnni,
}

impl KernelKind {
    /// Every kernel, in order of preference from last to first.
    pub const ALL: [KernelKind; 4] =
        [KernelKind::Scalar, KernelKind::Avx2, KernelKind::AvxVnni, KernelKind::Avx512Vnni];

    /// The name used by `QTIER_KERNEL` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Scalar => "scalar",
            KernelKind::Avx2 => "avx2",
            KernelKind::AvxVnni => "avxvnni",
            KernelKind::Avx512Vnni => "avx512vnni",
        }
    }

    /// Whether this CPU can run the kernel (detected once, then cached).
    pub fn is_supported(self) -> bool {
        let f = cpu_features();
        match self {
            KernelKind::Scalar => true,
            KernelKind::Avx2 => f.avx2,
            KernelKind::AvxVnni => f.avxvnni,
            KernelKind::Avx512Vnni => f.avx512vnni,
        }
    }

    /// The fastest kernel this CPU supports, ignoring `QTIER_KERNEL`.
    pub fn best_supported() -> KernelKind {
        KernelKind::ALL.into_iter().rev().find(|k| k.is_supported()).unwrap_or(KernelKind::Scalar)
    }

    /// Returns `self` if this CPU supports it, else [`KernelError::UnsupportedKernel`].
    pub fn check_supported(self) -> Result<KernelKind, KernelError> {
        if self.is_supported() {
            Ok(self)
        } else {
            Err(KernelError::UnsupportedKernel { kind: self, detected: KernelKind::best_supported() })
        }
    }
}

impl fmt::Display for KernelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KernelKind {
    type Err = KernelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        KernelKind::ALL
            .into_iter()
            .find(|k| k.name() == t)
            .ok_or_else(|| KernelError::UnknownKernel { value: s.to_string() })
    }
}

#[derive(Debug, Clone, Copy)]
struct CpuFeatures {
    avx2: bool,
    avxvnni: bool,
    avx512vnni: bool,
}

fn cpu_features() -> CpuFeatures {
    static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
    *FEATURES.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuFeatures {
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    CpuFeatures {
        avx2,
        avxvnni: avx2 && is_x86_feature_detected!("avxvnni"),
        avx512vnni: avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuFeatures {
    CpuFeatures { avx2: false, avxvnni: false, avx512vnni: false }
}

/// Parses a `QTIER_KERNEL` value (`None` = unset) into the kernel to run.
///
/// Empty or unset means "the best this CPU supports".
pub fn resolve_kernel(env_value: Option<&str>) -> Result<KernelKind, KernelError> {
    match env_value.map(str::trim) {
        None | Some("") => Ok(KernelKind::best_supported()),
        Some(v) => v.parse::<KernelKind>()?.check_supported(),
    }
}

/// The kernel every [`crate::QuantizedLinear`] uses unless told otherwise: `QTIER_KERNEL` if set
/// (read once per process), else the best the CPU supports. Callers log and report it.
pub fn selected_kernel() -> Result<KernelKind, KernelError> {
    static SELECTED: OnceLock<Result<KernelKind, KernelError>> = OnceLock::new();
    SELECTED
        .get_or_init(|| {
            let v = std::env::var_os(KERNEL_ENV_VAR).map(|v| v.to_string_lossy().into_owned());
            resolve_kernel(v.as_deref())
        })
        .clone()
}
