// Per-token (per-row) activation quantization, alone or fused behind a LayerNorm.
// Launch: one block per row, QTIER_ROW_THREADS threads (see `qtier_kernels::cuda::launch`).
#include "qtier_common.cuh"

#define QTIER_ROW_THREADS 256

// x: [rows, k] f32. q: [rows, kp] int8 (kp >= k, a multiple of 32; the tail is zero).
// scales: [rows], max|row| / 127.
extern "C" __global__ void __launch_bounds__(QTIER_ROW_THREADS)
    qtier_quantize_rows(const float* __restrict__ x, int k, int kp, qtier_s8* __restrict__ q,
                        float* __restrict__ scales) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    const float* xr = x + row * k;
    float m = 0.0f;
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        m = fmaxf(m, fabsf(xr[i]));
    }
    m = qtier_block_max(m, scratch);
    qtier_quantize_row([&](int i) { return xr[i]; }, m, k, kp, q + row * kp, scales + row);
}

// y = LayerNorm(x + residual) * gamma + beta over rows of `h` values (residual optional).
// Writes y (f32, when `y` is not null) and/or its per-row int8 quantization (`q`, `scales`,
// when `q` is not null), so the LayerNorm before a Linear costs one pass. `y` may alias `x`:
// every thread reads and writes only its own strided indices.
extern "C" __global__ void __launch_bounds__(QTIER_ROW_THREADS)
    qtier_layernorm_rows(const float* x, const float* __restrict__ residual, const float* __restrict__ gamma,
                         const float* __restrict__ beta, float eps, int h, float* y, qtier_s8* __restrict__ q,
                         int kp, float* __restrict__ scales) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    const float* xr = x + row * h;
    const float* rr = residual != nullptr ? residual + row * h : nullptr;
    auto input = [&](int i) { return rr != nullptr ? xr[i] + rr[i] : xr[i]; };
    float s = 0.0f;
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        s += input(i);
    }
    const float mean = qtier_block_sum(s, scratch) / (float)h;
    float v = 0.0f;
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        const float d = input(i) - mean;
        v += d * d;
    }
    const float rstd = rsqrtf(qtier_block_sum(v, scratch) / (float)h + eps);
    auto normalized = [&](int i) { return (input(i) - mean) * rstd * gamma[i] + beta[i]; };
    float* yr = y != nullptr ? y + row * h : nullptr;
    float m = 0.0f;
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        const float val = normalized(i);
        if (yr != nullptr) {
            yr[i] = val;
        }
        m = fmaxf(m, fabsf(val));
    }
    if (q == nullptr) {
        return;
    }
    m = qtier_block_max(m, scratch);
    if (yr != nullptr) {
        qtier_quantize_row([&](int i) { return yr[i]; }, m, h, kp, q + row * kp, scales + row);
    } else {
        qtier_quantize_row(normalized, m, h, kp, q + row * kp, scales + row);
    }
}
