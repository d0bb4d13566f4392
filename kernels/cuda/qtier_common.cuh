// Helpers shared by qtier's CUDA kernels. Compiled only through NVRTC, which resolves
// `#include "qtier_common.cuh"` from the copy embedded in the Rust crate (no CUDA headers are
// needed: everything here is a builtin or inline PTX).
#pragma once

typedef signed char qtier_s8;
typedef unsigned int qtier_u32;

// Epilogue activations; the numbers match `qtier_kernels::cuda::activation_code`.
#define QTIER_ACT_NONE 0
#define QTIER_ACT_RELU 1
#define QTIER_ACT_GELU_ERF 2
#define QTIER_ACT_GELU_TANH 3
#define QTIER_ACT_SILU 4

// -inf and +inf without math.h.
#define QTIER_NEG_INF __int_as_float(0xff800000)
#define QTIER_POS_INF __int_as_float(0x7f800000)

// Largest quantized magnitude (symmetric int8, -128 unused), as in `qtier_kernels::quant`.
#define QTIER_QMAX 127.0f

// Out of line: inlined into each of the 64 accumulator stores of a GEMM tile, erff, tanhf and
// expf made the gemm_s8 cubin 1.8 MB and its NVRTC compile the slowest step of the test.
__device__ __noinline__ float qtier_activation_slow(float x, int act) {
    switch (act) {
    case QTIER_ACT_RELU:
        return fmaxf(x, 0.0f);
    case QTIER_ACT_GELU_ERF:
        return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case QTIER_ACT_GELU_TANH: {
        const float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (1.0f + tanhf(u));
    }
    case QTIER_ACT_SILU:
        return x / (1.0f + expf(-x));
    default:
        return x;
    }
}

__device__ __forceinline__ float qtier_activation(float x, int act) {
    return act == QTIER_ACT_NONE ? x : qtier_activation_slow(x, act);
}

__device__ __forceinline__ float qtier_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;
}

__device__ __forceinline__ float qtier_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    return v;
}

// Block-wide sum (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
// `scratch` holds 32 floats of shared memory; the leading barrier lets calls reuse it.
__device__ __forceinline__ float qtier_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = qtier_warp_sum(v);
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();
    const int warps = blockDim.x >> 5;
    return qtier_warp_sum(lane < warps ? scratch[lane] : 0.0f);
}

// Block-wide maximum, same contract as qtier_block_sum.
__device__ __forceinline__ float qtier_block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = qtier_warp_max(v);
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();
    const int warps = blockDim.x >> 5;
    return qtier_warp_max(lane < warps ? scratch[lane] : 0.0f);
}

// Round-to-nearest f32 -> f16 bits (inline PTX, so no cuda_fp16.h is needed; the CPU emulator,
// kernels/cuda/emulator, rounds in software).
#ifndef QTIER_CPU_EMULATION
__device__ __forceinline__ unsigned short qtier_f32_to_f16_bits(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
#else
inline unsigned short qtier_f32_to_f16_bits(float v) { return (unsigned short)qtier_emu_f32_to_f16_bits(v); }
#endif

// Quantizes `k` values produced by `value(i)` whose absolute maximum is `max_abs` into
// `dst[0..kp)` (zeros past `k`), one thread per strided index, and stores the row scale.
// Bit-exact with the CPU reference `qtier_kernels::quant::quantize_row`: the reciprocal
// 127 / max is an IEEE division, `rintf` rounds half to even, and a subnormal maximum (whose
// reciprocal overflows f32) takes the same f64 path as the CPU.
template <class F>
__device__ __forceinline__ void qtier_quantize_row(F value, float max_abs, int k, int kp, qtier_s8* dst,
                                                   float* scale) {
    const float inv = __fdiv_rn(QTIER_QMAX, max_abs);
    if (threadIdx.x == 0) {
        *scale = __fdiv_rn(max_abs, QTIER_QMAX);
    }
    const bool fast = max_abs > 0.0f && inv <= 3.402823466e38f;
    const double inv_wide = max_abs > 0.0f ? 127.0 / (double)max_abs : 0.0;
    for (int i = threadIdx.x; i < kp; i += blockDim.x) {
        int q = 0;
        if (i < k && max_abs > 0.0f) {
            float r;
            if (fast) {
                r = rintf(__fmul_rn(value(i), inv));
            } else {
                r = (float)rint((double)value(i) * inv_wide);
            }
            q = (int)fminf(fmaxf(r, -QTIER_QMAX), QTIER_QMAX);
        }
        dst[i] = (qtier_s8)q;
    }
}
