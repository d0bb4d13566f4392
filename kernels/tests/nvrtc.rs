//! Compiles every `.cu` file with NVRTC for every architecture in
//! [`NVRTC_CHECK_ARCHES`] and fails on any error or warning (printing NVRTC's log), on an entry
//! point missing from the cubin, or on one whose parameter list in the PTX differs from the one
//! the host declares and checks every launch against (`KernelFn::params`); then reads
//! ptxas's resource report (registers, shared memory, spills) of every kernel and checks the
//! host's launch of it against the hardware: within its `__launch_bounds__`, registers and
//! shared memory per block within the limits, at least one block per multiprocessor, and no
//! spills to local memory beyond a register saved around a call. A real GPU refuses a launch
//! that breaks the first three, which the CPU emulator cannot see; spills only cost speed.
//!
//! Needs no GPU, only `libnvrtc.so`, which cudarc loads at run time through the dynamic linker:
//! put the directory holding `libnvrtc.so.13` on `LD_LIBRARY_PATH`. `scripts/test.sh` installs
//! the pip wheel `nvidia-cuda-nvrtc==13.0.88` into `${XDG_CACHE_HOME:-$HOME/.cache}/qtier/nvrtc-venv`
//! and runs this test with that path set (`cargo test --release -p qtier-kernels --features cuda nvrtc`).
//! Without the library the test fails and says how to get it.
#![cfg(feature = "cuda")]

use qtier_kernels::cuda::launch::{self, LaunchDims};
use qtier_kernels::cuda::nvrtc::{compile, compile_with_resource_report, nvrtc_version};
use qtier_kernels::cuda::source::{self, HEADERS, KERNEL_FNS, KernelFn, KernelSource, SOURCES, define_value};
use qtier_kernels::cuda::{CudaError, GemmKernel, GpuArch, NVRTC_CHECK_ARCHES};

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
                    // The parameter list every launch is checked against, against the kernel's.
                    let declared: Vec<&str> = f.params.iter().map(|p| p.ptx_type()).collect();
                    match k.entry_param_types(f.name) {
                        Some(compiled) if compiled == declared => {}
                        compiled => failures.push(format!(
                            "{arch} {}: {} takes {compiled:?} in the PTX, but the host declares {:?} ({declared:?})",
                            source.file, f.name, f.params
                        )),
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

/// What ptxas reports for one entry point (`--ptxas-options=-v`).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Resources {
    registers: u32,
    shared_bytes: u32,
    spill_store_bytes: u32,
    spill_load_bytes: u32,
}

/// The number right before `unit` in `line` (`"Used 98 registers"`, `"4 bytes spill stores"`).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    line[..line.find(unit)?].split_whitespace().next_back()?.parse().ok()
}

/// Per entry point, ptxas's report in an NVRTC log: the "Function properties for NAME" line is
/// followed by the stack and spill line, and the "Used N registers" line closes the entry. An
/// entry whose numbers do not parse is left out (and the check then names it as unreported).
fn parse_resources(log: &str) -> Vec<(String, Resources)> {
    let mut entries: Vec<(String, Resources)> = Vec::new();
    let mut entry: Option<String> = None;
    let mut current: Option<(String, Resources)> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            entry = rest.split('\'').next().map(str::to_owned);
        } else if let Some(name) = line.split("Function properties for ").nth(1) {
            current = (entry.as_deref() == Some(name.trim())).then(|| (name.trim().to_owned(), Resources::default()));
        } else if line.contains("spill stores") {
            let spills = (number_before(line, "bytes spill stores"), number_before(line, "bytes spill loads"));
            current = match (current.take(), spills) {
                (Some((name, r)), (Some(stores), Some(loads))) => {
                    Some((name, Resources { spill_store_bytes: stores, spill_load_bytes: loads, ..r }))
                }
                _ => None,
            };
        } else if line.contains("Used") && line.contains("registers") {
            if let (Some((name, r)), Some(registers)) = (current.take(), number_before(line, "registers")) {
                let shared_bytes =
                    if line.contains("bytes smem") { number_before(line, "bytes smem") } else { Some(0) };
                if let Some(shared_bytes) = shared_bytes {
                    entries.push((name, Resources { registers, shared_bytes, ..r }));
                }
            }
            entry = None;
        }
    }
    entries
}

/// The block the host launches `f` with, from the same `launch` functions the host calls (any
/// problem size: only the block and the dynamic shared memory matter here).
fn host_launch(f: KernelFn) -> LaunchDims {
    if let Some(kernel) = GemmKernel::ALL.into_iter().find(|k| k.function() == f) {
        return launch::gemm_dims(kernel, 128, 1536).unwrap();
    }
    match f.name {
        "qtier_quantize_rows" | "qtier_layernorm_rows" | "qtier_embedding_layernorm" => launch::row_dims(128),
        "qtier_outlier_epilogue" => launch::outlier_epilogue_dims(128, 1536),
        "qtier_attention" => launch::attention_dims(2, 128, 12),
        "qtier_gelu_erf" | "qtier_residual_add" => launch::elementwise_dims(1 << 20),
        "qtier_mean_pool" => launch::mean_pool_dims(2, 384),
        "qtier_gemm_f32" => launch::gemm_f32_dims(128, 1536),
        other => panic!("kernel {other} has no launch in this table: add the host's launch here"),
    }
    .unwrap()
}

/// The thread count in `__launch_bounds__(...)` right before `f`'s name in its source: a number,
/// a `#define` of the source or the common header, or a product of those.
fn launch_bound(f: KernelFn) -> u32 {
    let text = f.source.text;
    let at = text.find(&format!("{}(", f.name)).unwrap_or_else(|| panic!("{} not in {}", f.name, f.source.file));
    let before = &text[..at];
    let open = before.rfind("__launch_bounds__(").unwrap_or_else(|| panic!("{} has no __launch_bounds__", f.name))
        + "__launch_bounds__(".len();
    assert!(
        !before[open..].contains("__global__"),
        "{}: the nearest __launch_bounds__ belongs to another kernel",
        f.name
    );
    let expression = &before[open..open + before[open..].find(')').unwrap()];
    expression
        .split('*')
        .map(|factor| {
            let factor = factor.trim();
            factor
                .parse::<i64>()
                .ok()
                .or_else(|| define_value(text, factor))
                .or_else(|| HEADERS.iter().find_map(|h| define_value(h.text, factor)))
                .unwrap_or_else(|| panic!("{}: cannot evaluate `{factor}` in __launch_bounds__", f.name))
        })
        .product::<i64>() as u32
}

/// Per-architecture limits (CUDA programming guide, compute capabilities table).
struct ArchLimits {
    /// 32-bit registers per block, and per multiprocessor (64 K on all three).
    registers: u64,
    static_shared_per_block: u64,
    shared_per_sm: u64,
    threads_per_sm: u64,
}

fn arch_limits(arch: GpuArch) -> ArchLimits {
    let (shared_per_sm, threads_per_sm) = match (arch.major, arch.minor) {
        (7, 5) => (64 * 1024, 1024),
        (8, 6) => (100 * 1024, 1536),
        (9, 0) => (228 * 1024, 2048),
        _ => panic!("no limits for {arch}"),
    };
    ArchLimits { registers: 65_536, static_shared_per_block: 48 * 1024, shared_per_sm, threads_per_sm }
}

/// Spill bytes allowed per entry point: ptxas saves a register or two around the call to the
/// `__noinline__` slow activation (`qtier_activation_slow`, in the epilogue); a spill in a loop
/// is far larger and a performance bug no CPU test sees.
const MAX_SPILL_BYTES: u32 = 8;

#[test]
fn nvrtc_resource_report_shows_every_launch_fits_the_hardware_without_spills() {
    nvrtc_version().expect("libnvrtc (see nvrtc_compiles_every_cu_file_for_every_arch_without_warnings)");
    let reports: Vec<(GpuArch, Vec<(String, Resources)>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = NVRTC_CHECK_ARCHES
            .map(|arch| {
                scope.spawn(move || {
                    let mut entries = Vec::new();
                    for source in &SOURCES {
                        let compiled = compile_with_resource_report(source, arch).unwrap_or_else(|e| panic!("{e}"));
                        entries.extend(parse_resources(&compiled.log));
                    }
                    (arch, entries)
                })
            })
            .into_iter()
            .collect();
        handles.into_iter().map(|h| h.join().expect("NVRTC thread panicked")).collect()
    });
    let mut failures = Vec::new();
    for (arch, entries) in &reports {
        let limits = arch_limits(*arch);
        for f in KERNEL_FNS {
            let Some((_, r)) = entries.iter().find(|(name, _)| name == f.name) else {
                failures.push(format!("{arch} {}: no resource report from ptxas", f.name));
                continue;
            };
            let dims = host_launch(*f);
            let threads = dims.block.0 * dims.block.1 * dims.block.2;
            let bound = launch_bound(*f);
            // Registers are allocated per warp in units of 256 (8 per thread).
            let block_registers = u64::from(r.registers.div_ceil(8) * 8) * u64::from(threads.div_ceil(32) * 32);
            let block_shared = u64::from(r.shared_bytes) + u64::from(dims.shared_bytes);
            let blocks_per_sm = [
                limits.registers / block_registers.max(1),
                limits.shared_per_sm.checked_div(block_shared).unwrap_or(u64::MAX),
                limits.threads_per_sm / u64::from(threads),
            ]
            .into_iter()
            .min()
            .unwrap();
            eprintln!(
                "{arch} {:<32} {threads:>4} threads (bound {bound}), {:>3} registers, {:>6} B shared, spills {}/{} B, {} blocks/SM ({}% of threads)",
                f.name,
                r.registers,
                block_shared,
                r.spill_store_bytes,
                r.spill_load_bytes,
                blocks_per_sm,
                100 * blocks_per_sm * u64::from(threads) / limits.threads_per_sm
            );
            if threads > bound {
                failures
                    .push(format!("{arch} {}: launched with {threads} threads, __launch_bounds__({bound})", f.name));
            }
            if block_registers > limits.registers {
                failures.push(format!("{arch} {}: {block_registers} registers per block", f.name));
            }
            if block_shared > limits.static_shared_per_block {
                failures.push(format!("{arch} {}: {block_shared} bytes of shared memory per block", f.name));
            }
            if blocks_per_sm == 0 {
                failures.push(format!("{arch} {}: not one block fits a multiprocessor", f.name));
            }
            if r.spill_store_bytes > MAX_SPILL_BYTES || r.spill_load_bytes > MAX_SPILL_BYTES {
                failures.push(format!(
                    "{arch} {}: spills {} bytes (stores) / {} bytes (loads) to local memory",
                    f.name, r.spill_store_bytes, r.spill_load_bytes
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn nvrtc_resource_report_parsing_reads_ptxas_lines() {
    let log = "ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k_big' for 'sm_90'
ptxas info    : Function properties for k_big
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 98 registers, used 1 barriers, 8 bytes cumulative stack size, 40960 bytes smem
ptxas info    : Compile time = 41.867 ms
ptxas info    : Function properties for _Z21helperfi
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'k_small' for 'sm_90'
ptxas info    : Function properties for k_small
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 26 registers, used 0 barriers
";
    let entries = parse_resources(log);
    let big = Resources { registers: 98, shared_bytes: 40960, spill_store_bytes: 4, spill_load_bytes: 12 };
    let small = Resources { registers: 26, ..Resources::default() };
    assert_eq!(entries, vec![("k_big".to_owned(), big), ("k_small".to_owned(), small)]);
    assert_eq!(launch_bound(source::GEMM_MMA16832_128), 256);
    assert_eq!(launch_bound(source::ATTENTION), launch::ATTENTION_WARPS * 32);
}
