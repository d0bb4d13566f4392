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
        for file in [
            "emulator/emulator.cpp",
            "emulator/cxxflags.txt",
            "qtier_common.cuh",
            "quant.cu",
            "encoder.cu",
            "gemm_f32.cu",
            "gemm_s8.cu",
        ] {
            println!("cargo:rerun-if-changed=cuda/{file}");
        }
        let flags = std::fs::read_to_string("cuda/emulator/cxxflags.txt")
            .expect("kernels/cuda/emulator/cxxflags.txt is part of the crate");
        let mut build = cc::Build::new();
        build.cpp(true).file("cuda/emulator/emulator.cpp").warnings(false).extra_warnings(false);
        for flag in flags.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
            build.flag(flag);
        }
        build.compile("qtier_cuda_emulator");
        println!("cargo:rustc-link-lib=pthread");
        // The runtime of -fsanitize=alignment.
        println!("cargo:rustc-link-lib=ubsan");
    }
}
