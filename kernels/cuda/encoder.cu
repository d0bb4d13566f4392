// BERT-family encoder ops around the int8 Linear layers: embeddings + LayerNorm, fused masked
// attention, GELU, residual add, mean pooling. All f32, row-major.
#include "qtier_common.cuh"

#define QTIER_ROW_THREADS 256
#define QTIER_ATT_WARPS 8
#define QTIER_ATT_MAX_SEQ 512
#define QTIER_ATT_MAX_HEAD_DIM 128
#define QTIER_ELEMENTWISE_THREADS 256

// out[r] = LayerNorm(word[ids[r]] + pos[r % seq] + type_emb[type_ids[r]]) * gamma + beta, one
// block per token row r of a [batch * seq] batch. type_ids may be null (all type 0). Ids past
// the tables are clamped to the last row (the host cannot check device-resident ids cheaply).
extern "C" __global__ void __launch_bounds__(QTIER_ROW_THREADS)
    qtier_embedding_layernorm(const qtier_u32* __restrict__ ids, const qtier_u32* __restrict__ type_ids, int seq,
                              const float* __restrict__ word, int vocab, const float* __restrict__ pos,
                              const float* __restrict__ type_emb, int type_vocab, const float* __restrict__ gamma,
                              const float* __restrict__ beta, float eps, int h, float* __restrict__ out) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    const qtier_u32 id = min(ids[row], (qtier_u32)(vocab - 1));
    const qtier_u32 tt = type_ids != nullptr ? min(type_ids[row], (qtier_u32)(type_vocab - 1)) : 0u;
    const float* w = word + (long long)id * h;
    const float* p = pos + (long long)(row % seq) * h;
    const float* ty = type_emb + (long long)tt * h;
    float* o = out + row * h;
    float s = 0.0f;
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        const float v = w[i] + p[i] + ty[i];
        o[i] = v;
        s += v;
    }
    const float mean = qtier_block_sum(s, scratch) / (float)h;
    float var = 0.0f;
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        const float d = o[i] - mean;
        var += d * d;
    }
    const float rstd = rsqrtf(qtier_block_sum(var, scratch) / (float)h + eps);
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        o[i] = (o[i] - mean) * rstd * gamma[i] + beta[i];
    }
}

// Fused softmax(Q K^T * scale + mask) V for one (query, head, batch) per warp.
// qkv: [batch * seq, 3 * heads * d] rows laid out q | k | v (the fused QKV projection), head h
// at columns h * d .. h * d + d of each part. mask: [batch * seq] (nonzero = attend; null = all).
// out: [batch * seq, heads * d]. seq <= QTIER_ATT_MAX_SEQ, d <= QTIER_ATT_MAX_HEAD_DIM and
// d % 4 == 0 (checked by the host). A query whose keys are all masked gets zeros.
// Grid: (ceil(seq / QTIER_ATT_WARPS), heads, batch); block: QTIER_ATT_WARPS warps.
extern "C" __global__ void __launch_bounds__(QTIER_ATT_WARPS * 32)
    qtier_attention(const float* __restrict__ qkv, const int* __restrict__ mask, int seq, int heads, int d,
                    float scale, float* __restrict__ out) {
    __shared__ float q_s[QTIER_ATT_WARPS][QTIER_ATT_MAX_HEAD_DIM];
    __shared__ float p_s[QTIER_ATT_WARPS][QTIER_ATT_MAX_SEQ];
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int i = blockIdx.x * QTIER_ATT_WARPS + warp;
    if (i >= seq) {
        return;
    }
    const int h = blockIdx.y;
    const long long b = blockIdx.z;
    const int hidden = heads * d;
    const long long stride = 3LL * hidden;
    const float* base = qkv + b * seq * stride;
    const int* mrow = mask != nullptr ? mask + b * seq : nullptr;

    for (int c = lane; c < d; c += 32) {
        q_s[warp][c] = base[(long long)i * stride + h * d + c] * scale;
    }
    __syncwarp();

    float mx = QTIER_NEG_INF;
    for (int j = lane; j < seq; j += 32) {
        float s = QTIER_NEG_INF;
        if (mrow == nullptr || mrow[j] != 0) {
            const float* kr = base + (long long)j * stride + hidden + h * d;
            s = 0.0f;
            for (int c = 0; c < d; c += 4) {
                s += q_s[warp][c] * kr[c] + q_s[warp][c + 1] * kr[c + 1] + q_s[warp][c + 2] * kr[c + 2] +
                     q_s[warp][c + 3] * kr[c + 3];
            }
        }
        p_s[warp][j] = s;
        mx = fmaxf(mx, s);
    }
    mx = qtier_warp_max(mx);
    float* orow = out + (b * seq + i) * hidden + h * d;
    if (mx == QTIER_NEG_INF) {
        for (int c = lane; c < d; c += 32) {
            orow[c] = 0.0f;
        }
        return;
    }
    float sum = 0.0f;
    for (int j = lane; j < seq; j += 32) {
        const float e = expf(p_s[warp][j] - mx);
        p_s[warp][j] = e;
        sum += e;
    }
    sum = qtier_warp_sum(sum);
    __syncwarp();
    const float inv = 1.0f / sum;
    for (int c = lane; c < d; c += 32) {
        const float* vc = base + 2 * hidden + h * d + c;
        float acc = 0.0f;
        for (int j = 0; j < seq; ++j) {
            acc += p_s[warp][j] * vc[(long long)j * stride];
        }
        orow[c] = acc * inv;
    }
}

// x[i] = gelu_erf(x[i]) for i < len.
extern "C" __global__ void __launch_bounds__(QTIER_ELEMENTWISE_THREADS)
    qtier_gelu_erf(float* __restrict__ x, long long len) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        x[i] = qtier_activation(x[i], QTIER_ACT_GELU_ERF);
    }
}

// x[i] += r[i] for i < len.
extern "C" __global__ void __launch_bounds__(QTIER_ELEMENTWISE_THREADS)
    qtier_residual_add(float* __restrict__ x, const float* __restrict__ r, long long len) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        x[i] += r[i];
    }
}

// out[b][c] = sum_s mask[b][s] x[b][s][c] / max(sum_s mask[b][s], 1e-9) (sentence-transformers'
// mean pooling; mask null = all ones). Grid: (ceil(h / QTIER_ELEMENTWISE_THREADS), batch).
extern "C" __global__ void __launch_bounds__(QTIER_ELEMENTWISE_THREADS)
    qtier_mean_pool(const float* __restrict__ x, const int* __restrict__ mask, int seq, int h,
                    float* __restrict__ out) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= h) {
        return;
    }
    const long long b = blockIdx.y;
    float acc = 0.0f;
    float count = 0.0f;
    for (int s = 0; s < seq; ++s) {
        const float w = mask != nullptr ? (mask[b * seq + s] != 0 ? 1.0f : 0.0f) : 1.0f;
        acc += w * x[(b * seq + s) * h + c];
        count += w;
    }
    out[b * h + c] = acc / fmaxf(count, 1e-9f);
}
