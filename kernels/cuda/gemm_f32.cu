// Float Linear for float checkpoints on the GPU, with the int8 GEMM's epilogue:
//   out[m][n] = act(sum_k x[m][k] * w[n][k] + bias[n]) + residual[m][n]
// fp32 inputs, fp32 accumulation (fmaf), fp32 output. x: [m, k] row-major; w: [n, k] row-major, as
// checkpoints store a Linear weight; bias and residual may be null.
//
// A plain shared-memory tiled SIMT GEMM (no tensor cores): QTIER_F32_TILE x QTIER_F32_TILE block
// tile, 16 x 16 threads of 4 x 4 outputs each, k tiles of QTIER_F32_KTILE. A thread's rows and
// columns are strided by 16, so a warp's shared-memory reads are broadcasts (rows) or 16
// consecutive words (columns), and its output stores are coalesced.
#include "qtier_common.cuh"

#define QTIER_F32_TILE 64
#define QTIER_F32_KTILE 16
#define QTIER_F32_THREADS 256

extern "C" __global__ void __launch_bounds__(QTIER_F32_THREADS)
    qtier_gemm_f32(const float* __restrict__ x, const float* __restrict__ w, int m, int n, int k,
                   const float* __restrict__ bias, const float* __restrict__ residual, int act,
                   float* __restrict__ out) {
    // k-major tiles; the +1 column keeps the transposing stores from all hitting one bank.
    __shared__ float xs[QTIER_F32_KTILE][QTIER_F32_TILE + 1];
    __shared__ float ws[QTIER_F32_KTILE][QTIER_F32_TILE + 1];
    const int tx = threadIdx.x & 15;
    const int ty = threadIdx.x >> 4;
    const int row0 = blockIdx.y * QTIER_F32_TILE;
    const int col0 = blockIdx.x * QTIER_F32_TILE;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < k; k0 += QTIER_F32_KTILE) {
        // Each operand tile is 64 rows x 16 k: 4 values per thread, 16 consecutive k per row.
        for (int i = threadIdx.x; i < QTIER_F32_TILE * QTIER_F32_KTILE; i += QTIER_F32_THREADS) {
            const int r = i / QTIER_F32_KTILE;
            const int kk = i % QTIER_F32_KTILE;
            const int gk = k0 + kk;
            const int gr = row0 + r;
            const int gc = col0 + r;
            xs[kk][r] = (gr < m && gk < k) ? x[(long long)gr * k + gk] : 0.0f;
            ws[kk][r] = (gc < n && gk < k) ? w[(long long)gc * k + gk] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < QTIER_F32_KTILE; ++kk) {
            float a[4];
            float b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a[i] = xs[kk][ty + 16 * i];
                b[i] = ws[kk][tx + 16 * i];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = row0 + ty + 16 * i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = col0 + tx + 16 * j;
            if (row < m && col < n) {
                const long long idx = (long long)row * n + col;
                float v = acc[i][j] + (bias != nullptr ? bias[col] : 0.0f);
                v = qtier_activation(v, act);
                if (residual != nullptr) {
                    v += residual[idx];
                }
                out[idx] = v;
            }
        }
    }
}
