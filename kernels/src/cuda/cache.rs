//! The on-disk cubin cache: one file per (source, headers, architecture, NVRTC options and
//! version), so a second process skips NVRTC (about a second per source).
//!
//! The key is FNV-1a 64 over length-prefixed fields: stable across Rust versions and
//! platforms (unlike `std`'s `DefaultHasher`), and a cache needs no cryptographic strength.
//! A file that fails to load is recompiled and overwritten; writes go through a temporary file
//! and a rename, so concurrent processes never see half a cubin.

use std::path::{Path, PathBuf};

use super::arch::GpuArch;
use super::source::KernelSource;

/// Environment variable naming the cache directory; empty disables the disk cache.
pub const CACHE_DIR_ENV_VAR: &str = "QTIER_CUDA_CACHE";

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The cache key of `source` compiled with `headers` for `arch` with NVRTC `options` by NVRTC
/// `nvrtc_version` (major, minor).
pub fn cache_key(
    source: &KernelSource,
    headers: &[KernelSource],
    arch: GpuArch,
    options: &[String],
    nvrtc_version: (i32, i32),
) -> u64 {
    let mut h = FNV_OFFSET;
    let mut field = |bytes: &[u8]| {
        h = fnv1a(h, &(bytes.len() as u64).to_le_bytes());
        h = fnv1a(h, bytes);
    };
    field(source.file.as_bytes());
    field(source.text.as_bytes());
    for header in headers {
        field(header.file.as_bytes());
        field(header.text.as_bytes());
    }
    field(arch.sm().as_bytes());
    for o in options {
        field(o.as_bytes());
    }
    field(&nvrtc_version.0.to_le_bytes());
    field(&nvrtc_version.1.to_le_bytes());
    h
}

/// File name of a cached cubin: `<source stem>-<sm_XY>-<key as 16 hex digits>.cubin`.
pub fn cache_file_name(source: &KernelSource, arch: GpuArch, key: u64) -> String {
    let stem = source.file.rsplit_once('.').map_or(source.file, |(s, _)| s);
    format!("{stem}-{arch}-{key:016x}.cubin")
}

/// The cache directory: `$QTIER_CUDA_CACHE` (empty: no disk cache), else
/// `$XDG_CACHE_HOME/qtier/cuda-kernels`, else `$HOME/.cache/qtier/cuda-kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    match std::env::var_os(CACHE_DIR_ENV_VAR) {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => var("XDG_CACHE_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".cache")))
            .map(|c| c.join("qtier").join("cuda-kernels")),
    }
}

/// The cached bytes of `name` in `dir`, if present and non-empty.
pub fn read_cached(dir: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(name)).ok().filter(|b| !b.is_empty())
}

/// Stores `bytes` as `name` in `dir` (temporary file, then rename).
pub fn write_cached(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::source::{GEMM, HEADERS, QUANT};

    fn opts() -> Vec<String> {
        vec!["--std=c++17".to_owned()]
    }

    #[test]
    fn key_depends_on_every_input() {
        let base = cache_key(&GEMM, &HEADERS, GpuArch::SM90, &opts(), (13, 0));
        assert_eq!(base, cache_key(&GEMM, &HEADERS, GpuArch::SM90, &opts(), (13, 0)));
        assert_ne!(base, cache_key(&QUANT, &HEADERS, GpuArch::SM90, &opts(), (13, 0)));
        assert_ne!(base, cache_key(&GEMM, &[], GpuArch::SM90, &opts(), (13, 0)));
        assert_ne!(base, cache_key(&GEMM, &HEADERS, GpuArch::SM86, &opts(), (13, 0)));
        assert_ne!(base, cache_key(&GEMM, &HEADERS, GpuArch::SM90, &[], (13, 0)));
        assert_ne!(base, cache_key(&GEMM, &HEADERS, GpuArch::SM90, &opts(), (13, 1)));
        let edited = KernelSource { file: GEMM.file, text: "// edited" };
        assert_ne!(base, cache_key(&edited, &HEADERS, GpuArch::SM90, &opts(), (13, 0)));
    }

    #[test]
    fn key_is_stable_and_fields_do_not_run_together() {
        // Golden value (checked against an independent Python FNV-1a): the key must not change
        // between builds, else every cache misses.
        let src = KernelSource { file: "a.cu", text: "x" };
        assert_eq!(cache_key(&src, &[], GpuArch::SM75, &[], (13, 0)), 0xedb4_090d_dec7_27bc);
        let a = KernelSource { file: "ab", text: "c" };
        let b = KernelSource { file: "a", text: "bc" };
        assert_ne!(cache_key(&a, &[], GpuArch::SM75, &[], (13, 0)), cache_key(&b, &[], GpuArch::SM75, &[], (13, 0)));
    }

    #[test]
    fn file_names_and_round_trip() {
        assert_eq!(cache_file_name(&GEMM, GpuArch::SM86, 0xab), "gemm_s8-sm_86-00000000000000ab.cubin");
        let dir = std::env::temp_dir().join(format!("qtier-cuda-cache-test-{}", std::process::id()));
        assert_eq!(read_cached(&dir, "x.cubin"), None);
        write_cached(&dir, "x.cubin", b"\x7fELF").unwrap();
        assert_eq!(read_cached(&dir, "x.cubin").as_deref(), Some(&b"\x7fELF"[..]));
        write_cached(&dir, "empty.cubin", b"").unwrap();
        assert_eq!(read_cached(&dir, "empty.cubin"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
