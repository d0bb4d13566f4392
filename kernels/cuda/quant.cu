// Per-token (per-row) activation quantization, alone or fused behind a LayerNorm, optionally
// with the outlier decomposition's selection (LLM.int8(), as qtier's CPU runtime does it).
// Launch: one block per row, QTIER_ROW_THREADS threads (see `qtier_kernels::cuda::launch`).
//
// The outlier lists (`qtier_kernels::cuda::OutlierRule`; all null when the decomposition is off):
// a row whose largest magnitude exceeds `outlier_trigger` x its RMS has its values above
// `outlier_ratio` x RMS taken out of the int8 row (quantized as zeros; the row scale follows the
// remaining values), at most `max_outliers` of them, largest magnitude first with ties in channel
// order (the CPU's order). `outlier_counts[row]` gets how many; `outlier_channels` and
// `outlier_values` (`[rows, max_outliers]`) their channels and values, which
// qtier_outlier_epilogue (gemm_s8.cu) adds back in float after the GEMM.
#include "qtier_common.cuh"

#define QTIER_ROW_THREADS 256
// "No channel" in the selection below: ranks after every real channel.
#define QTIER_NO_CHANNEL 0x7fffffff

#define QTIER_OUTLIER_PARAMS                                                                     \
    int *__restrict__ outlier_counts, int *__restrict__ outlier_channels, float *__restrict__ outlier_values, \
        int max_outliers, float outlier_ratio, float outlier_trigger

// Whether (magnitude a, channel i) comes before (b, j) in the selection order: larger magnitude
// first, lower channel on ties.
__device__ __forceinline__ bool qtier_ranks_before(float a, int i, float b, int j) {
    return a > b || (a == b && i < j);
}

// Block-wide first (magnitude, channel) pair in qtier_ranks_before's order; every thread gets it.
// `fscratch` and `iscratch` hold 32 values of shared memory each.
__device__ __forceinline__ void qtier_block_first(float& mag, int& channel, float* fscratch, int* iscratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    for (int pass = 0; pass < 2; ++pass) {
        for (int o = 16; o > 0; o >>= 1) {
            const float other_mag = __shfl_xor_sync(0xffffffffu, mag, o);
            const int other_channel = __shfl_xor_sync(0xffffffffu, channel, o);
            if (qtier_ranks_before(other_mag, other_channel, mag, channel)) {
                mag = other_mag;
                channel = other_channel;
            }
        }
        if (pass == 1) {
            return;
        }
        __syncthreads();
        if (lane == 0) {
            fscratch[warp] = mag;
            iscratch[warp] = channel;
        }
        __syncthreads();
        const bool filled = lane < (int)(blockDim.x >> 5);
        mag = filled ? fscratch[lane] : -1.0f;
        channel = filled ? iscratch[lane] : QTIER_NO_CHANNEL;
    }
}

// Quantizes row `row` (`value(i)` for i < k; `max_abs` and `sum_squares` are its block-wide
// largest magnitude and sum of squares) into q[row] and scales[row], taking its outliers out
// first when `outlier_counts` is not null (see the top of this file).
template <class F>
__device__ __forceinline__ void qtier_quantize_row_with_outliers(F value, float max_abs, float sum_squares, int k,
                                                                 int kp, long long row, qtier_s8* __restrict__ q,
                                                                 float* __restrict__ scales, QTIER_OUTLIER_PARAMS,
                                                                 float* fscratch, int* iscratch) {
    const float rms = sqrtf(sum_squares / (float)k);
    int count = 0;
    // The last channel taken (none yet: before every pair in the order).
    float last_mag = QTIER_POS_INF;
    int last_channel = -1;
    // Uniform over the block (every thread has the same reductions), so the barriers inside the
    // loop are reached by all threads.
    if (outlier_counts != nullptr && max_abs > rms * outlier_trigger) {
        const float threshold = rms * outlier_ratio;
        while (count < max_outliers) {
            // The first remaining candidate: above the threshold and after the last one taken.
            float mag = -1.0f;
            int channel = QTIER_NO_CHANNEL;
            for (int i = threadIdx.x; i < k; i += blockDim.x) {
                const float a = fabsf(value(i));
                if (a > threshold && qtier_ranks_before(last_mag, last_channel, a, i) &&
                    qtier_ranks_before(a, i, mag, channel)) {
                    mag = a;
                    channel = i;
                }
            }
            qtier_block_first(mag, channel, fscratch, iscratch);
            if (channel == QTIER_NO_CHANNEL) {
                break;
            }
            if ((int)threadIdx.x == channel % (int)blockDim.x) {
                const long long slot = row * max_outliers + count;
                outlier_channels[slot] = channel;
                outlier_values[slot] = value(channel);
            }
            last_mag = mag;
            last_channel = channel;
            ++count;
        }
    }
    if (outlier_counts != nullptr && threadIdx.x == 0) {
        outlier_counts[row] = count;
    }
    if (count == 0) {
        qtier_quantize_row(value, max_abs, k, kp, q + row * kp, scales + row);
        return;
    }
    // The channels taken are exactly the pairs up to the last one taken, in the order. (A row
    // with a NaN or an infinity never gets here: its RMS is not finite.)
    auto kept = [&](int i) {
        const float v = value(i);
        const float a = fabsf(v);
        return a > last_mag || (a == last_mag && i <= last_channel) ? 0.0f : v;
    };
    float m = 0.0f;
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        m = fmaxf(m, fabsf(kept(i)));
    }
    m = qtier_block_max(m, fscratch);
    qtier_quantize_row(kept, m, k, kp, q + row * kp, scales + row);
}

// x: [rows, k] f32. q: [rows, kp] int8 (kp >= k, a multiple of 32; the tail is zero).
// scales: [rows], max|row| / 127.
// Outlier lists as at the top of this file.
extern "C" __global__ void __launch_bounds__(QTIER_ROW_THREADS)
    qtier_quantize_rows(const float* __restrict__ x, int k, int kp, qtier_s8* __restrict__ q,
                        float* __restrict__ scales, QTIER_OUTLIER_PARAMS) {
    __shared__ float scratch[32];
    __shared__ int iscratch[32];
    const long long row = blockIdx.x;
    const float* xr = x + row * k;
    float m = 0.0f;
    float squares = 0.0f;
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        m = fmaxf(m, fabsf(xr[i]));
        squares += xr[i] * xr[i];
    }
    m = qtier_block_max(m, scratch);
    if (outlier_counts != nullptr) {
        squares = qtier_block_sum(squares, scratch);
    }
    qtier_quantize_row_with_outliers([&](int i) { return xr[i]; }, m, squares, k, kp, row, q, scales,
                                     outlier_counts, outlier_channels, outlier_values, max_outliers,
                                     outlier_ratio, outlier_trigger, scratch, iscratch);
}

// y = LayerNorm(x + residual) * gamma + beta over rows of `h` values (residual optional).
// Writes y (f32, when `y` is not null) and/or its per-row int8 quantization (`q`, `scales`,
// when `q` is not null; outlier lists as at the top of this file), so the LayerNorm before a
// Linear costs one pass. `y` may alias `x`: every thread reads and writes only its own strided
// indices (an outlier's value included: the thread whose index it is stores it).
extern "C" __global__ void __launch_bounds__(QTIER_ROW_THREADS)
    qtier_layernorm_rows(const float* x, const float* __restrict__ residual, const float* __restrict__ gamma,
                         const float* __restrict__ beta, float eps, int h, float* y, qtier_s8* __restrict__ q,
                         int kp, float* __restrict__ scales, QTIER_OUTLIER_PARAMS) {
    __shared__ float scratch[32];
    __shared__ int iscratch[32];
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
    float squares = 0.0f;
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        const float val = normalized(i);
        if (yr != nullptr) {
            yr[i] = val;
        }
        m = fmaxf(m, fabsf(val));
        squares += val * val;
    }
    if (q == nullptr) {
        return;
    }
    m = qtier_block_max(m, scratch);
    if (outlier_counts != nullptr) {
        squares = qtier_block_sum(squares, scratch);
    }
    if (yr != nullptr) {
        qtier_quantize_row_with_outliers([&](int i) { return yr[i]; }, m, squares, h, kp, row, q, scales,
                                         outlier_counts, outlier_channels, outlier_values, max_outliers,
                                         outlier_ratio, outlier_trigger, scratch, iscratch);
    } else {
        qtier_quantize_row_with_outliers(normalized, m, squares, h, kp, row, q, scales, outlier_counts,
                                         outlier_channels, outlier_values, max_outliers, outlier_ratio,
                                         outlier_trigger, scratch, iscratch);
    }
}
