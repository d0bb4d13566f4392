//! Compiles every `.cu` file with NVRTC for every architecture in
//! [`NVRTC_CHECK_ARCHES`] and fails on any error or warning (printing NVRTC's log).
//!
//! Needs no GPU, only `libnvrtc.so`, which cudarc loads at run time through the dynamic linker:
//! put the directory holding `libnvrtc.so.13` on `LD_LIBRARY_PATH`. `scripts/test.sh` installs
//! the pip wheel `nvidia-cuda-nvrtc==13.0.88` into `${XDG_CACHE_HOME:-$HOME/.cache}/qtier/nvrtc-venv`
//! and runs this test with that path set (`cargo test --release -p qtier-kernels --features cuda nvrtc`).
//! Without the library the test fails and says how to get it.
#![cfg(feature = "cuda")]

use qtier_kernels::cuda::nvrtc::{compile, nvrtc_version};
use qtier_kernels::cuda::source::{KERNEL_FNS, KernelSource, SOURCES};
use qtier_kernels::cuda::{CudaError, GpuArch, NVRTC_CHECK_ARCHES};

#[test]
fn nvrtc_compiles_every_cu_file_for_every_arch_without_warnings() {
    let version = match nvrtc_version() {
        Ok(v) => v,
        Err(e @ CudaError::LibraryNotFound { .. }) => panic!(
            "{e}\n(LD_LIBRARY_PATH={:?}; run scripts/test.sh, which sets it up)",
            std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
        ),
        Err(e) => panic!("{e}"),
    };
    eprintln!("NVRTC {}.{}", version.0, version.1);
    // One thread per architecture: ptxas dominates and the archs are independent.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            NVRTC_CHECK_ARCHES.map(|arch| scope.spawn(move || check_arch(arch))).into_iter().collect();
        handles.into_iter().flat_map(|h| h.join().expect("NVRTC check thread panicked")).collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Compiles every source for `arch`; returns the failures (errors, warnings, missing symbols).
fn check_arch(arch: GpuArch) -> Vec<String> {
    let mut failures = Vec::new();
    for source in &SOURCES {
        match compile(source, arch) {
            Ok(k) => {
                let warnings = k.warnings();
                eprintln!("{arch} {}: ok, {} bytes of cubin, {} warnings", source.file, k.cubin.len(), warnings.len());
                if !warnings.is_empty() {
                    failures.push(format!("{arch} {}: {} warnings:\n{}", source.file, warnings.len(), k.log));
                }
                for f in KERNEL_FNS.iter().filter(|f| f.source.file == source.file) {
                    if !has_symbol(&k.cubin, f.name) {
                        failures.push(format!("{arch} {}: entry point {} missing from the cubin", source.file, f.name));
                    }
                }
            }
            Err(e) => {
                eprintln!("{arch} {}: FAILED", source.file);
                failures.push(e.to_string());
            }
        }
    }
    failures
}

/// Whether the cubin's string table holds `name` (NUL-terminated).
fn has_symbol(cubin: &[u8], name: &str) -> bool {
    let n = name.len();
    cubin.windows(n + 1).any(|w| &w[..n] == name.as_bytes() && w[n] == 0)
}

#[test]
fn nvrtc_reports_warnings_and_errors_with_the_log() {
    let warn =
        KernelSource { file: "warn.cu", text: "extern \"C\" __global__ void k(int *p) { int unused = 1; p[0] = 0; }" };
    match compile(&warn, GpuArch::SM75) {
        Ok(k) => assert!(!k.warnings().is_empty(), "expected a warning, log: {:?}", k.log),
        Err(e) => panic!("{e}"),
    }
    let broken = KernelSource { file: "broken.cu", text: "extern \"C\" __global__ void k() { undefined_thing(); }" };
    match compile(&broken, GpuArch::SM75) {
        Err(CudaError::Compile { file, log, .. }) => {
            assert_eq!(file, "broken.cu");
            assert!(log.contains("undefined_thing"), "log: {log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}
