//! GPU architectures (`sm_XY`) and the list the NVRTC check compiles for.

use std::fmt;

/// A CUDA compute capability, `sm_{major}{minor}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GpuArch {
    /// Major version (7 for Turing, 8 for Ampere and Ada, 9 for Hopper).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl GpuArch {
    /// Turing (T4, g4dn): the oldest architecture NVRTC 13 targets and the first with int8
    /// tensor cores (`mma.m8n8k16`).
    pub const SM75: GpuArch = GpuArch::new(7, 5);
    /// Ampere A100: `mma.m16n8k32` and `cp.async`.
    pub const SM80: GpuArch = GpuArch::new(8, 0);
    /// Ampere A10G (g5).
    pub const SM86: GpuArch = GpuArch::new(8, 6);
    /// Hopper H100 / H200 (p5).
    pub const SM90: GpuArch = GpuArch::new(9, 0);

    /// `sm_{major}{minor}`.
    pub const fn new(major: u32, minor: u32) -> Self {
        GpuArch { major, minor }
    }

    /// NVRTC's `--gpu-architecture` value, e.g. `sm_90`.
    pub fn sm(&self) -> String {
        self.to_string()
    }

    /// Whether the `mma.m16n8k32` int8 kernel (with its `cp.async` pipeline) runs here.
    pub fn has_mma_m16n8k32(&self) -> bool {
        *self >= GpuArch::SM80
    }

    /// Whether the kernels support this architecture at all (sm_75 or newer).
    pub fn is_supported(&self) -> bool {
        *self >= GpuArch::SM75
    }
}

impl fmt::Display for GpuArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sm_{}{}", self.major, self.minor)
    }
}

/// The architectures every `.cu` file must compile for without errors or warnings (the NVRTC
/// test and scripts/test.sh): the GPUs of the instance families qtier recommends, g4dn (T4,
/// sm_75), g5 (A10G, sm_86) and p5 (H100/H200, sm_90).
pub const NVRTC_CHECK_ARCHES: [GpuArch; 3] = [GpuArch::SM75, GpuArch::SM86, GpuArch::SM90];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_and_features() {
        assert_eq!(GpuArch::SM90.sm(), "sm_90");
        assert_eq!(GpuArch::new(12, 0).to_string(), "sm_120");
        assert!(!GpuArch::SM75.has_mma_m16n8k32());
        assert!(GpuArch::SM80.has_mma_m16n8k32() && GpuArch::SM90.has_mma_m16n8k32());
        assert!(GpuArch::new(8, 9) > GpuArch::SM86 && GpuArch::new(10, 0) > GpuArch::SM90);
        assert!(!GpuArch::new(7, 0).is_supported());
        assert!(NVRTC_CHECK_ARCHES.iter().all(GpuArch::is_supported));
    }
}
