// The non-matmul ops of a Llama-family forward pass on the device (decode.rs
// drives them): RMSNorm with the residual add fused in, the per-head work after
// the q/k/v products (biases, Qwen3's head norms, rope, the KV-cache write),
// attention over the cache in two passes (per chunk of positions, then a
// combine), SwiGLU and greedy argmax.
//
// Positions come from `params[0]` (the first new token's position) so that a
// captured CUDA graph replays unchanged from token to token; token t of a batch
// is at params[0] + t and attends to positions 0..=params[0] + t.
//
// Arithmetic follows the CPU model (runtime/src/model.rs) step for step where it
// is cheap to: mean squares summed in double, rope angles built by the same
// repeated f32 multiplication, accurate expf/sinf/cosf (no fast-math).

#ifndef ACH
#define ACH 64  // cache positions per attention chunk
#endif
#define MAXG 8     // query heads per KV head
#define NEG_INF __int_as_float(0xff800000)
#define MAXHD 256  // head dimension

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the total.
__device__ double block_sum_d(double v) {
    __shared__ double part[32];
    __shared__ double total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum_d(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double s = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0;
        s = warp_sum_d(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

// Row r of `rows` (one block each): if d, x += d first (the residual add,
// written back); then out = x / sqrt(mean(x^2) + eps) * w.
extern "C" __global__ void rms_norm(float* __restrict__ x, const float* __restrict__ d,
                                    const float* __restrict__ w, float* __restrict__ out,
                                    int n, float eps) {
    float* xr = x + (long long)blockIdx.x * n;
    const float* dr = d ? d + (long long)blockIdx.x * n : 0;
    float* orow = out + (long long)blockIdx.x * n;
    double ss = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i];
        if (dr) {
            v += dr[i];
            xr[i] = v;
        }
        ss += (double)(v * v);
    }
    ss = block_sum_d(ss);
    float inv = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) orow[i] = xr[i] * inv * w[i];
}

// After the q/k/v products, for token blockIdx.y: block h < n_head treats query
// head h in place; block n_head + j treats key head j and writes it, and value
// head j, into the cache at the token's position. Per head: bias, head norm
// (Qwen3), rope over the first n_rot dimensions. blockDim.x >= hd.
extern "C" __global__ void qkv_post(float* __restrict__ q, const float* __restrict__ k,
                                    const float* __restrict__ v, const float* __restrict__ bq,
                                    const float* __restrict__ bk, const float* __restrict__ bv,
                                    const float* __restrict__ qn, const float* __restrict__ kn,
                                    const float* __restrict__ freq_factors,
                                    float* __restrict__ kc, float* __restrict__ vc,
                                    const int* __restrict__ params, int n_head, int n_kv, int hd,
                                    int n_rot, int neox, float eps, float ratio, float rope_scale) {
    __shared__ float s[MAXHD];
    int t = blockIdx.y, i = threadIdx.x, b = blockIdx.x;
    int pos = params[0] + t;
    int kvd = n_kv * hd;
    bool is_q = b < n_head;
    int h = is_q ? b : b - n_head;
    const float* src = is_q ? q + ((long long)t * n_head + h) * hd : k + (long long)t * kvd + h * hd;
    const float* bias = is_q ? bq : bk;
    const float* norm = is_q ? qn : kn;
    float* dst = is_q ? q + ((long long)t * n_head + h) * hd : kc + (long long)pos * kvd + h * hd;
    bool active = i < hd;
    float val = 0.0f;
    if (active) {
        val = src[i];
        if (bias) val += bias[h * hd + i];
    }
    if (norm) {
        double ss = block_sum_d(active ? (double)(val * val) : 0.0);
        float inv = 1.0f / sqrtf((float)(ss / hd) + eps);
        if (active) val *= inv * norm[i];
    }
    if (active) s[i] = val;
    __syncthreads();
    if (active && i < n_rot) {
        int half = n_rot / 2;
        int idx, a, bb;
        if (neox) {
            idx = i < half ? i : i - half;
            a = idx;
            bb = idx + half;
        } else {
            idx = i >> 1;
            a = 2 * idx;
            bb = a + 1;
        }
        // The angle as the CPU model builds it: pos / scale, times the ratio once
        // per earlier pair, over the frequency factor.
        float theta = (float)pos / rope_scale;
        for (int j = 0; j < idx; j++) theta *= ratio;
        float ang = freq_factors ? theta / freq_factors[idx] : theta;
        float c = cosf(ang), sn = sinf(ang);
        float x0 = s[a], x1 = s[bb];
        val = (i == a) ? x0 * c - x1 * sn : x0 * sn + x1 * c;
    }
    if (active) dst[i] = val;
    if (!is_q && active) {
        float vv = v[(long long)t * kvd + h * hd + i];
        if (bv) vv += bv[h * hd + i];
        vc[(long long)pos * kvd + h * hd + i] = vv;
    }
}

// Attention, first pass: block (j, c, t) takes KV head j, cache positions
// c*ACH .. c*ACH+ACH-1 (those below the token's length) and every query head of
// its group; writes per query head the chunk's max score m, sum of exp(s - m)
// l, and the exp-weighted sum of values acc, as part[(t, h, c)] = acc[hd], m, l.
extern "C" __global__ void attn_partial(const float* __restrict__ q, const float* __restrict__ kc,
                                        const float* __restrict__ vc, float* __restrict__ part,
                                        const int* __restrict__ params, int n_head, int n_kv,
                                        int hd, int n_chunks, float scale) {
    __shared__ float qs[MAXG * MAXHD];
    __shared__ float sc[MAXG * ACH];
    __shared__ float ms[MAXG], ls[MAXG];
    int kvh = blockIdx.x, c = blockIdx.y, t = blockIdx.z;
    int len = params[0] + t + 1;
    int c0 = c * ACH;
    if (c0 >= len) return;  // the combine reads only chunks below len
    int nj = min(ACH, len - c0);
    int G = n_head / n_kv, kvd = n_kv * hd;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const float* qt = q + ((long long)t * n_head + kvh * G) * hd;
    for (int e = threadIdx.x; e < G * hd; e += blockDim.x) qs[e] = qt[e];
    __syncthreads();
    for (int j = warp; j < nj; j += nwarps) {
        const float* kr = kc + (long long)(c0 + j) * kvd + kvh * hd;
        float acc[MAXG];
#pragma unroll
        for (int g = 0; g < MAXG; g++) acc[g] = 0.0f;
        for (int d = lane; d < hd; d += 32) {
            float kv = kr[d];
#pragma unroll
            for (int g = 0; g < MAXG; g++)
                if (g < G) acc[g] += qs[g * hd + d] * kv;
        }
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            if (g < G) {
                float s = warp_sum(acc[g]);
                if (lane == 0) sc[g * ACH + j] = s * scale;
            }
        }
    }
    __syncthreads();
    for (int g = warp; g < G; g += nwarps) {
        float m = NEG_INF;
        for (int j = lane; j < nj; j += 32) m = fmaxf(m, sc[g * ACH + j]);
        m = warp_max(m);
        float l = 0.0f;
        for (int j = lane; j < nj; j += 32) {
            float p = expf(sc[g * ACH + j] - m);
            sc[g * ACH + j] = p;
            l += p;
        }
        l = warp_sum(l);
        if (lane == 0) {
            ms[g] = m;
            ls[g] = l;
        }
    }
    __syncthreads();
    int stride = hd + 2;
    for (int e = threadIdx.x; e < G * hd; e += blockDim.x) {
        int g = e / hd, d = e - g * hd;
        const float* vr = vc + (long long)c0 * kvd + kvh * hd + d;
        float a = 0.0f;
        for (int j = 0; j < nj; j++) a += sc[g * ACH + j] * vr[(long long)j * kvd];
        int h = kvh * G + g;
        float* p = part + (((long long)t * n_head + h) * n_chunks + c) * stride;
        p[d] = a;
        if (d == 0) {
            p[hd] = ms[g];
            p[hd + 1] = ls[g];
        }
    }
}

// Attention, second pass: block (h, t) merges the chunks of query head h.
extern "C" __global__ void attn_combine(const float* __restrict__ part, float* __restrict__ out,
                                        const int* __restrict__ params, int n_head, int hd,
                                        int n_chunks) {
    int h = blockIdx.x, t = blockIdx.y;
    int len = params[0] + t + 1;
    int nc = (len + ACH - 1) / ACH;
    int stride = hd + 2;
    const float* p = part + ((long long)t * n_head + h) * n_chunks * stride;
    float m = NEG_INF;
    for (int c = 0; c < nc; c++) m = fmaxf(m, p[c * stride + hd]);
    float l = 0.0f;
    for (int c = 0; c < nc; c++) l += p[c * stride + hd + 1] * expf(p[c * stride + hd] - m);
    float inv = 1.0f / l;
    float* o = out + ((long long)t * n_head + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
        for (int c = 0; c < nc; c++) a += p[c * stride + d] * expf(p[c * stride + hd] - m);
        o[d] = a * inv;
    }
}

// h *= silu(g), n elements.
extern "C" __global__ void silu_mul(const float* __restrict__ g, float* __restrict__ h,
                                    long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float gv = g[i];
        h[i] = h[i] * (gv / (1.0f + expf(-gv)));
    }
}

// The index of the largest of n logits (the first on ties; NaNs never win), one
// block of 1024 threads.
extern "C" __global__ void argmax(const float* __restrict__ x, int n, int* __restrict__ out) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    float best = NEG_INF;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = x[i];
        if (v > best || (v == best && i < idx)) {
            best = v;
            idx = i;
        }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ov > best || (ov == best && oi < idx)) {
            best = ov;
            idx = oi;
        }
    }
    if (lane == 0) {
        bv[warp] = best;
        bi[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        best = lane < nw ? bv[lane] : NEG_INF;
        idx = lane < nw ? bi[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, best, o);
            int oi = __shfl_xor_sync(0xffffffffu, idx, o);
            if (ov > best || (ov == best && oi < idx)) {
                best = ov;
                idx = oi;
            }
        }
        if (lane == 0) out[0] = idx == 0x7fffffff ? 0 : idx;
    }
}
