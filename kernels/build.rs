//! With the `cuda-emulator` feature (tests only), compiles the CUDA kernel sources as C++ into the
//! CPU emulator (`cuda/emulator/emulator.cpp`) that `qtier_kernels::cuda` then runs them on.
//! Without it this does nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda-emulator")]
    emulator::build();
}

#[cfg(feature = "cuda-emulator")]
mod emulator {
    pub fn build() {
        for file in ["emulator/emulator.cpp", "qtier_common.cuh", "quant.cu", "encoder.cu", "gemm_f32.cu", "gemm_s8.cu"]
        {
            println!("cargo:rerun-if-changed=cuda/{file}");
        }
        cc::Build::new()
            .cpp(true)
            .std("c++20")
            .file("cuda/emulator/emulator.cpp")
            .flag("-pthread")
            .flag("-fno-strict-aliasing")
            // The kernels' float math as written: no FMA contraction, no fast-math.
            .flag("-ffp-contract=off")
            .warnings(true)
            // `#pragma unroll` is for NVRTC.
            .flag("-Wno-unknown-pragmas")
            // A GPU faults on a misaligned vector load where x86 does not: make it abort here too.
            .flag("-fsanitize=alignment")
            .flag("-fno-sanitize-recover=alignment")
            .extra_warnings(false)
            .compile("qtier_cuda_emulator");
        println!("cargo:rustc-link-lib=pthread");
        // The runtime of -fsanitize=alignment (ships with gcc).
        println!("cargo:rustc-link-lib=ubsan");
    }
}
