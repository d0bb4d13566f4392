// Int8 GEMM with the fused Linear epilogue:
//   out[m][n] = act(acc * x_scales[m] * w_scales[n] + bias[n]) + residual[m][n],
//   acc = sum_k A[m][k] * W[n][k] (exact i32).
//
// A (activations): int8 row-major [m, kp], kp a multiple of QTIER_KTILE, zero past k (written
// by qtier_quantize_rows / qtier_layernorm_rows).
// B (weights, `qtier_kernels::cuda::layout`): tiles of QTIER_NTILE columns x QTIER_KTILE k,
// stored [column tile][k tile]; inside a tile, 32-bit word `2 * lane + h` holds
// W[n0 + lane / 4][k0 + 16 h + 4 (lane % 4) .. + 4] (4 consecutive k of one column). That is
// exactly lane `lane`'s B fragment of mma.m16n8k32 (h = register b0/b1), of two consecutive
// mma.m8n8k16 (h = k16 step), and of the dp4a kernel, so every kernel loads B with one
// coalesced 8-byte load per lane per tile. Columns are zero-padded to QTIER_N_ALIGN.
//
// Kernels: mma.m16n8k32 with a cp.async pipeline (sm_80+), mma.m8n8k16 (sm_75+), and dp4a
// (all; also the small-m path, where the GEMM is a weight stream and tensor cores idle), plain
// or with k split over several warps (layers with few columns).
// Output: f32 `out`, or f16 `out_f16`, or (test hook) the raw accumulators `acc_out`.
#include "qtier_common.cuh"

#define QTIER_KTILE 32
#define QTIER_NTILE 8
#define QTIER_TILE_WORDS 64
#define QTIER_N_ALIGN 128
// Bytes per A row in shared memory: 32 data + 16 padding, so the 8 rows x 4 words of a
// fragment load hit 32 distinct banks (row stride 12 words); a multiple of 16 for cp.async.
#define QTIER_A_STRIDE 48
#define QTIER_STAGES 4
#define QTIER_DP4A_ROWS 8
#define QTIER_DP4A_WARPS 8
#define QTIER_DP4A_SPLIT 4

#define QTIER_GEMM_PARAMS                                                                        \
    const qtier_s8 *__restrict__ a, const qtier_u32 *__restrict__ b, int m, int n, int kp,      \
        const float *__restrict__ x_scales, const float *__restrict__ w_scales,                  \
        const float *__restrict__ bias, const float *__restrict__ residual, int act,             \
        float *__restrict__ out, unsigned short *__restrict__ out_f16, int *__restrict__ acc_out
#define QTIER_GEMM_ARGS a, b, m, n, kp, x_scales, w_scales, bias, residual, act, out, out_f16, acc_out

struct __align__(16) QtierChunk {
    unsigned long long lo;
    unsigned long long hi;
};

__device__ __forceinline__ void qtier_store(int m, int n, const float* __restrict__ x_scales,
                                            const float* __restrict__ w_scales, const float* __restrict__ bias,
                                            const float* __restrict__ residual, int act, float* __restrict__ out,
                                            unsigned short* __restrict__ out_f16, int* __restrict__ acc_out, int row,
                                            int col, int acc) {
    if (row >= m || col >= n) {
        return;
    }
    const long long idx = (long long)row * n + col;
    if (acc_out != nullptr) {
        acc_out[idx] = acc;
        return;
    }
    float v = fmaf((float)acc, x_scales[row] * w_scales[col], bias != nullptr ? bias[col] : 0.0f);
    v = qtier_activation(v, act);
    if (residual != nullptr) {
        v += residual[idx];
    }
    if (out_f16 != nullptr) {
        out_f16[idx] = qtier_f32_to_f16_bits(v);
    } else {
        out[idx] = v;
    }
}

// The PTX instructions of the tensor-core kernels, one function each (the CPU emulator,
// kernels/cuda/emulator, supplies its own). cp.async and mma.m16n8k32 exist from sm_80.
#ifndef QTIER_CPU_EMULATION

__device__ __forceinline__ unsigned qtier_smem_addr(const void* p) {
    unsigned long long s;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(s) : "l"(p));
    return (unsigned)s;
}

// d += a (8 x 16, row) * b (16 x 8, col), s8 in, s32 accumulate; one warp, fragments as in the
// PTX ISA ("Matrix fragments for mma.m8n8k16").
__device__ __forceinline__ void qtier_mma_m8n8k16(int (&d)[2], qtier_u32 a, qtier_u32 b) {
    asm volatile("mma.sync.aligned.m8n8k16.row.col.s32.s8.s8.s32 {%0,%1}, {%2}, {%3}, {%0,%1};\n"
                 : "+r"(d[0]), "+r"(d[1])
                 : "r"(a), "r"(b));
}

#if __CUDA_ARCH__ >= 800
// d += a (16 x 32, row) * b (32 x 8, col), s8 in, s32 accumulate; one warp ("Matrix fragments
// for mma.m16n8k32").
__device__ __forceinline__ void qtier_mma_m16n8k32(int (&d)[4], const qtier_u32 (&a)[4], qtier_u32 b0, qtier_u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Asynchronous copy of 16 bytes from global `src` to shared `dst`; of `src_bytes` (0 or 16)
// with zeros for the rest.
__device__ __forceinline__ void qtier_cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(qtier_smem_addr(dst)), "l"(src));
}

__device__ __forceinline__ void qtier_cp_async16_zfill(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(qtier_smem_addr(dst)), "l"(src),
                 "r"(src_bytes));
}

// Closes the group of copies issued since the last commit.
__device__ __forceinline__ void qtier_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void qtier_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#endif  // __CUDA_ARCH__ >= 800

#endif  // QTIER_CPU_EMULATION

// ---------------------------------------------------------------------------------------------
// sm_80+: mma.m16n8k32, QTIER_STAGES-deep cp.async pipeline over k tiles of 32.

// Shared memory of qtier_gemm_mma16832<BM, BN, ...>: QTIER_STAGES stages of an A and a B tile.
// The kernel entry declares it and passes it in (shared memory declared in a function template
// is the one kind the CPU emulator cannot poison before each block: g++ 12 ignores the section
// attribute there).
#define QTIER_MMA16832_SHARED_BYTES(BM, BN) \
    (QTIER_STAGES * ((BM) * QTIER_A_STRIDE + ((BN) / QTIER_NTILE) * QTIER_TILE_WORDS * 4))

template <int BM, int BN, int WARPS_M, int WARPS_N>
__device__ __forceinline__ void qtier_gemm_mma16832(unsigned char* __restrict__ smem, QTIER_GEMM_PARAMS) {
#if __CUDA_ARCH__ >= 800
    constexpr int WM = BM / WARPS_M;
    constexpr int WN = BN / WARPS_N;
    constexpr int MI = WM / 16;
    constexpr int NI = WN / QTIER_NTILE;
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int A_STAGE = BM * QTIER_A_STRIDE;
    constexpr int B_STAGE = (BN / QTIER_NTILE) * QTIER_TILE_WORDS * 4;
    constexpr int STAGE = A_STAGE + B_STAGE;
    static_assert(QTIER_STAGES * STAGE == QTIER_MMA16832_SHARED_BYTES(BM, BN), "shared memory size");

    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int wm = warp / WARPS_N;
    const int wn = warp % WARPS_N;
    const int row0 = blockIdx.y * BM;
    const int col0 = blockIdx.x * BN;
    const int ktiles = kp / QTIER_KTILE;
    const qtier_u32* b_block = b + (long long)(col0 / QTIER_NTILE) * ktiles * QTIER_TILE_WORDS;

    auto load_stage = [&](int slot, int kt) {
        unsigned char* as = smem + slot * STAGE;
        unsigned char* bs = as + A_STAGE;
        for (int c = threadIdx.x; c < BM * 2; c += THREADS) {
            const int r = c >> 1;
            const int half = c & 1;
            const bool valid = row0 + r < m;
            const qtier_s8* src = a + (long long)(valid ? row0 + r : 0) * kp + kt * QTIER_KTILE + half * 16;
            // Rows past m are zero-filled (source size 0).
            qtier_cp_async16_zfill(as + r * QTIER_A_STRIDE + half * 16, src, valid ? 16 : 0);
        }
        for (int c = threadIdx.x; c < (BN / QTIER_NTILE) * 16; c += THREADS) {
            const int tile = c >> 4;
            const int part = c & 15;
            const qtier_u32* src = b_block + ((long long)tile * ktiles + kt) * QTIER_TILE_WORDS + part * 4;
            qtier_cp_async16(bs + tile * QTIER_TILE_WORDS * 4 + part * 16, src);
        }
    };

    int acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int j = 0; j < NI; ++j) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                acc[i][j][r] = 0;
            }
        }
    }

#pragma unroll
    for (int s = 0; s < QTIER_STAGES - 1; ++s) {
        if (s < ktiles) {
            load_stage(s, s);
        }
        qtier_cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        qtier_cp_async_wait<QTIER_STAGES - 2>();
        __syncthreads();
        // The slot refilled here was read in iteration kt - 1, which every warp has finished.
        const int next = kt + QTIER_STAGES - 1;
        if (next < ktiles) {
            load_stage(next % QTIER_STAGES, next);
        }
        qtier_cp_async_commit();

        const unsigned char* as = smem + (kt % QTIER_STAGES) * STAGE;
        const unsigned char* bs = as + A_STAGE;
        qtier_u32 af[MI][4];
#pragma unroll
        for (int i = 0; i < MI; ++i) {
            const unsigned char* ar = as + (wm * WM + i * 16 + g) * QTIER_A_STRIDE + t * 4;
            af[i][0] = *(const qtier_u32*)(ar);
            af[i][1] = *(const qtier_u32*)(ar + 8 * QTIER_A_STRIDE);
            af[i][2] = *(const qtier_u32*)(ar + 16);
            af[i][3] = *(const qtier_u32*)(ar + 8 * QTIER_A_STRIDE + 16);
        }
#pragma unroll
        for (int j = 0; j < NI; ++j) {
            const unsigned long long w =
                *(const unsigned long long*)(bs + (wn * NI + j) * QTIER_TILE_WORDS * 4 + lane * 8);
            const qtier_u32 b0 = (qtier_u32)w;
            const qtier_u32 b1 = (qtier_u32)(w >> 32);
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                qtier_mma_m16n8k32(acc[i][j], af[i], b0, b1);
            }
        }
    }
    qtier_cp_async_wait<0>();

#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int j = 0; j < NI; ++j) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int row = row0 + wm * WM + i * 16 + g + (r >= 2 ? 8 : 0);
                const int col = col0 + wn * WN + j * QTIER_NTILE + t * 2 + (r & 1);
                qtier_store(m, n, x_scales, w_scales, bias, residual, act, out, out_f16, acc_out, row, col,
                            acc[i][j][r]);
            }
        }
    }
#else
    // Never launched below sm_80 (the host picks qtier_gemm_s8_mma8816_64x64 there).
    __trap();
#endif
}

extern "C" __global__ void __launch_bounds__(256) qtier_gemm_s8_mma16832_128x128(QTIER_GEMM_PARAMS) {
    __shared__ __align__(16) unsigned char smem[QTIER_MMA16832_SHARED_BYTES(128, 128)];
    qtier_gemm_mma16832<128, 128, 2, 4>(smem, QTIER_GEMM_ARGS);
}

extern "C" __global__ void __launch_bounds__(128) qtier_gemm_s8_mma16832_64x64(QTIER_GEMM_PARAMS) {
    __shared__ __align__(16) unsigned char smem[QTIER_MMA16832_SHARED_BYTES(64, 64)];
    qtier_gemm_mma16832<64, 64, 2, 2>(smem, QTIER_GEMM_ARGS);
}

// ---------------------------------------------------------------------------------------------
// sm_75+: mma.m8n8k16 (Turing), 64x64 block tile, 4 warps of 32x32, one shared stage with the
// next k tile prefetched into registers during the mma loop.

extern "C" __global__ void __launch_bounds__(128) qtier_gemm_s8_mma8816_64x64(QTIER_GEMM_PARAMS) {
    constexpr int BM = 64;
    constexpr int BN = 64;
    constexpr int MI = 4;
    constexpr int NI = 4;
    __shared__ __align__(16) unsigned char as[BM * QTIER_A_STRIDE];
    __shared__ __align__(16) unsigned char bs[(BN / QTIER_NTILE) * QTIER_TILE_WORDS * 4];

    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int wm = warp >> 1;
    const int wn = warp & 1;
    const int row0 = blockIdx.y * BM;
    const int col0 = blockIdx.x * BN;
    const int ktiles = kp / QTIER_KTILE;
    // 128 threads move one 16-byte chunk of A (64 rows x 2) and one of B (8 tiles x 16) each.
    const int a_row = threadIdx.x >> 1;
    const int a_half = threadIdx.x & 1;
    const bool a_valid = row0 + a_row < m;
    const qtier_s8* a_src = a + (long long)(a_valid ? row0 + a_row : 0) * kp + a_half * 16;
    const int b_tile = threadIdx.x >> 4;
    const int b_part = threadIdx.x & 15;
    const qtier_u32* b_src =
        b + ((long long)(col0 / QTIER_NTILE + b_tile) * ktiles) * QTIER_TILE_WORDS + b_part * 4;

    QtierChunk ra = {0, 0};
    QtierChunk rb;
    if (a_valid) {
        ra = *(const QtierChunk*)(a_src);
    }
    rb = *(const QtierChunk*)(b_src);

    int acc[MI][NI][2];
#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int j = 0; j < NI; ++j) {
            acc[i][j][0] = 0;
            acc[i][j][1] = 0;
        }
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        __syncthreads();
        *(QtierChunk*)(as + a_row * QTIER_A_STRIDE + a_half * 16) = ra;
        *(QtierChunk*)(bs + b_tile * QTIER_TILE_WORDS * 4 + b_part * 16) = rb;
        __syncthreads();
        if (kt + 1 < ktiles) {
            if (a_valid) {
                ra = *(const QtierChunk*)(a_src + (kt + 1) * QTIER_KTILE);
            }
            rb = *(const QtierChunk*)(b_src + (long long)(kt + 1) * QTIER_TILE_WORDS);
        }
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
            qtier_u32 af[MI];
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                af[i] = *(const qtier_u32*)(as + (wm * 32 + i * 8 + g) * QTIER_A_STRIDE + ks * 16 + t * 4);
            }
#pragma unroll
            for (int j = 0; j < NI; ++j) {
                const qtier_u32 bf = *(const qtier_u32*)(bs + (wn * NI + j) * QTIER_TILE_WORDS * 4 + lane * 8 + ks * 4);
#pragma unroll
                for (int i = 0; i < MI; ++i) {
                    qtier_mma_m8n8k16(acc[i][j], af[i], bf);
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int j = 0; j < NI; ++j) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = row0 + wm * 32 + i * 8 + g;
                const int col = col0 + wn * 32 + j * QTIER_NTILE + t * 2 + r;
                qtier_store(m, n, x_scales, w_scales, bias, residual, act, out, out_f16, acc_out, row, col,
                            acc[i][j][r]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dp4a: one warp per 8-column tile and QTIER_DP4A_ROWS rows. Lane (g, t) multiplies column g's
// k groups t and t + 4 of every k tile (its B fragment) and the 4 lanes of a column reduce with
// two shuffles. Each weight byte is read once per QTIER_DP4A_ROWS rows, coalesced.

// Warp-wide: the sums of column tile `ntile` over k tiles kt0, kt0 + KT_STEP, ... for `rows`
// rows from row0, reduced over the column's 4 lanes (lanes with t = 0 hold column g's; rows
// past `rows` stay 0). Every lane of the warp must call it (shuffles).
template <int KT_STEP>
__device__ __forceinline__ void qtier_dp4a_rows(const qtier_s8* __restrict__ a, const qtier_u32* __restrict__ b,
                                                int kp, int ntile, int row0, int rows, int lane, int kt0,
                                                int (&acc)[QTIER_DP4A_ROWS]) {
    const int t = lane & 3;
    const int ktiles = kp / QTIER_KTILE;
    const qtier_u32* bt = b + (long long)ntile * ktiles * QTIER_TILE_WORDS + lane * 2;
    const qtier_s8* a0 = a + (long long)row0 * kp + t * 4;
#pragma unroll
    for (int r = 0; r < QTIER_DP4A_ROWS; ++r) {
        acc[r] = 0;
    }
#pragma unroll 4
    for (int kt = kt0; kt < ktiles; kt += KT_STEP) {
        const unsigned long long w = *(const unsigned long long*)(bt + (long long)kt * QTIER_TILE_WORDS);
        const int b0 = (int)(qtier_u32)w;
        const int b1 = (int)(qtier_u32)(w >> 32);
#pragma unroll
        for (int r = 0; r < QTIER_DP4A_ROWS; ++r) {
            if (r < rows) {
                const qtier_s8* ar = a0 + (long long)r * kp + kt * QTIER_KTILE;
                acc[r] = __dp4a(*(const int*)ar, b0, acc[r]);
                acc[r] = __dp4a(*(const int*)(ar + 16), b1, acc[r]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < QTIER_DP4A_ROWS; ++r) {
        acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], 1);
        acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], 2);
    }
}

extern "C" __global__ void __launch_bounds__(QTIER_DP4A_WARPS * 32) qtier_gemm_s8_dp4a(QTIER_GEMM_PARAMS) {
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int ntile = blockIdx.x * QTIER_DP4A_WARPS + warp;
    if (ntile * QTIER_NTILE >= n) {
        return;
    }
    const int row0 = blockIdx.y * QTIER_DP4A_ROWS;
    const int rows = min(QTIER_DP4A_ROWS, m - row0);
    int acc[QTIER_DP4A_ROWS];
    qtier_dp4a_rows<1>(a, b, kp, ntile, row0, rows, lane, 0, acc);
#pragma unroll
    for (int r = 0; r < QTIER_DP4A_ROWS; ++r) {
        if ((lane & 3) == 0 && r < rows) {
            qtier_store(m, n, x_scales, w_scales, bias, residual, act, out, out_f16, acc_out, row0 + r,
                        ntile * QTIER_NTILE + (lane >> 2), acc[r]);
        }
    }
}

// dp4a with k split: QTIER_DP4A_SPLIT warps share each 8-column tile, warp s of a tile taking k
// tiles s, s + QTIER_DP4A_SPLIT, ...; the first adds the others' sums from shared memory (exact
// i32, so the order does not matter) and stores. A block covers QTIER_DP4A_WARPS /
// QTIER_DP4A_SPLIT column tiles, so a layer with few columns gets QTIER_DP4A_SPLIT times the
// blocks and warps of the plain kernel: for small m the GEMM streams the weights, and a large
// GPU needs many warps' loads in flight to keep its memory busy.
extern "C" __global__ void __launch_bounds__(QTIER_DP4A_WARPS * 32) qtier_gemm_s8_dp4a_splitk(QTIER_GEMM_PARAMS) {
    __shared__ int partial[QTIER_DP4A_WARPS][QTIER_DP4A_ROWS][QTIER_NTILE];
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int split = warp % QTIER_DP4A_SPLIT;
    const int ntile = blockIdx.x * (QTIER_DP4A_WARPS / QTIER_DP4A_SPLIT) + warp / QTIER_DP4A_SPLIT;
    // Warp-uniform; no early return, every warp reaches the barrier.
    const bool live = ntile * QTIER_NTILE < n;
    const int row0 = blockIdx.y * QTIER_DP4A_ROWS;
    const int rows = min(QTIER_DP4A_ROWS, m - row0);
    const bool column_lane = (lane & 3) == 0;
    int acc[QTIER_DP4A_ROWS];
    if (live) {
        qtier_dp4a_rows<QTIER_DP4A_SPLIT>(a, b, kp, ntile, row0, rows, lane, split, acc);
        if (split != 0 && column_lane) {
#pragma unroll
            for (int r = 0; r < QTIER_DP4A_ROWS; ++r) {
                partial[warp][r][lane >> 2] = acc[r];
            }
        }
    }
    __syncthreads();
    if (live && split == 0 && column_lane) {
#pragma unroll
        for (int r = 0; r < QTIER_DP4A_ROWS; ++r) {
            if (r < rows) {
                int v = acc[r];
#pragma unroll
                for (int s = 1; s < QTIER_DP4A_SPLIT; ++s) {
                    v += partial[warp + s][r][lane >> 2];
                }
                qtier_store(m, n, x_scales, w_scales, bias, residual, act, out, out_f16, acc_out, row0 + r,
                            ntile * QTIER_NTILE + (lane >> 2), v);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The outlier decomposition's float half (activations quantized with outlier lists, quant.cu).

// W[col][kk] from the layout above (`qtier_kernels::cuda::layout::weight_position`).
__device__ __forceinline__ int qtier_weight_at(const qtier_u32* __restrict__ b, int ktiles, int col, int kk) {
    const long long tile = (long long)(col / QTIER_NTILE) * ktiles + kk / QTIER_KTILE;
    const int g = col % QTIER_NTILE;
    const int kin = kk % QTIER_KTILE;
    const int word = 2 * (4 * g + (kin % 16) / 4) + kin / 16;
    const qtier_u32 bits = b[tile * QTIER_TILE_WORDS + word] >> (8 * (kin % 4));
    return (int)(qtier_s8)(unsigned char)(bits & 0xffu);
}

// out[row][col] += value * (W[col][channel] * w_scales[col]) for each of the row's outliers in
// list order (product and sum rounded separately, as the CPU runtime adds them), then `act` and
// `residual`. For a layer with an activation the GEMM ran without activation and residual and
// this applies them; for one without, the GEMM applied bias and residual (the sum commutes) and
// this gets act = QTIER_ACT_NONE, residual = null, and skips rows without outliers. `kp` is the
// weights' padded K (as the GEMM's). Grid: column blocks of blockDim.x on x, rows strided on y.
extern "C" __global__ void __launch_bounds__(256)
    qtier_outlier_epilogue(float* __restrict__ out, int m, int n, const qtier_u32* __restrict__ b, int kp,
                           const float* __restrict__ w_scales, const int* __restrict__ counts,
                           const int* __restrict__ channels, const float* __restrict__ values, int max_outliers,
                           int act, const float* __restrict__ residual) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= n) {
        return;
    }
    const int ktiles = kp / QTIER_KTILE;
    const float w_scale = w_scales[col];
    for (int row = blockIdx.y; row < m; row += gridDim.y) {
        const int count = counts[row];
        if (count == 0 && act == QTIER_ACT_NONE && residual == nullptr) {
            continue;
        }
        const long long idx = (long long)row * n + col;
        float v = out[idx];
        for (int j = 0; j < count; ++j) {
            const long long slot = (long long)row * max_outliers + j;
            const float weight = __fmul_rn((float)qtier_weight_at(b, ktiles, col, channels[slot]), w_scale);
            v = __fadd_rn(v, __fmul_rn(values[slot], weight));
        }
        v = qtier_activation(v, act);
        if (residual != nullptr) {
            v += residual[idx];
        }
        out[idx] = v;
    }
}
