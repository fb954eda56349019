// The non-matmul ops of a Llama-family forward pass on the device (decode.rs
// drives them): RMSNorm with the residual add fused in, the per-head work after
// the q/k/v products (biases, Qwen3's head norms, rope, the KV-cache write),
// attention over the cache (decode: two passes, per chunk of positions, then a
// combine; prefill: one flash-style pass), SwiGLU and greedy argmax.
//
// Positions come from `params[0]` (the first new token's position) so that a
// captured CUDA graph replays unchanged from token to token; token t of a batch
// is at params[0] + t and attends to positions 0..=params[0] + t.
//
// Arithmetic follows the CPU model (runtime/src/model.rs) step for step where it
// is cheap to: mean squares summed in double, rope angles built by the same
// repeated f32 multiplication, accurate expf/sinf/cosf (no fast-math).

#ifndef ACH
#define ACH 32  // cache positions per attention chunk (at most 32: a lane each)
#endif
#define MAXCH 1024  // chunks per context (n_ctx <= MAXCH * ACH)
#define MAXG 8     // query heads per KV head
#define NEG_INF __int_as_float(0xff800000)
#define MAXHD 256  // head dimension

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
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

// One block's row xr of n values: if dr, xr += dr first (the residual add,
// written back); returns 1 / sqrt(mean(xr^2) + eps). Ends with block_sum_d's
// barrier, so every xr[i] is written when it returns.
__device__ float residual_inv_rms(float* __restrict__ xr, const float* __restrict__ dr, int n,
                                  float eps) {
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
    return 1.0f / sqrtf((float)(ss / n) + eps);
}

// Values per thread the norms keep in registers (rows of up to NORM_K ×
// blockDim.x values; longer rows take the loops above).
#define NORM_K 8

// residual_inv_rms with thread i's values (i, i + blockDim.x, ...) kept in v
// and their weights loaded into wv beside them, before the reduction, so that
// neither is read again after it: the same sums in the same order.
__device__ __forceinline__ float residual_inv_rms_reg(float* __restrict__ xr, const float* __restrict__ dr,
                                                      const float* __restrict__ w, int n, float eps,
                                                      float (&v)[NORM_K], float (&wv)[NORM_K]) {
    double ss = 0.0;
#pragma unroll
    for (int k = 0; k < NORM_K; k++) {
        const int i = threadIdx.x + k * blockDim.x;
        if (i < n) {
            float x = xr[i];
            wv[k] = w[i];
            if (dr) {
                x += dr[i];
                xr[i] = x;
            }
            v[k] = x;
            ss += (double)(x * x);
        }
    }
    ss = block_sum_d(ss);
    return 1.0f / sqrtf((float)(ss / n) + eps);
}

// Row r of `rows` (one block each): if d, x += d first (the residual add,
// written back); then out = x / sqrt(mean(x^2) + eps) * w.
extern "C" __global__ void rms_norm(float* __restrict__ x, const float* __restrict__ d,
                                    const float* __restrict__ w, float* __restrict__ out,
                                    int n, float eps, L2_HINT_PARAMS) {
    HINTED_ENTRY(x, d, w, out);
    float* xr = x + (long long)blockIdx.x * n;
    const float* dr = d ? d + (long long)blockIdx.x * n : 0;
    float* orow = out + (long long)blockIdx.x * n;
    if (n <= NORM_K * (int)blockDim.x) {
        float v[NORM_K], wv[NORM_K];
        float inv = residual_inv_rms_reg(xr, dr, w, n, eps, v, wv);
#pragma unroll
        for (int k = 0; k < NORM_K; k++) {
            const int i = threadIdx.x + k * blockDim.x;
            if (i < n) orow[i] = v[k] * inv * wv[k];
        }
        return;
    }
    float inv = residual_inv_rms(xr, dr, n, eps);
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
                                    int n_rot, int neox, float eps, float ratio, float rope_scale,
                                    L2_HINT_PARAMS) {
    HINTED_ENTRY(q, k, v, bq, bk, bv, qn, kn, freq_factors, kc, vc, params);
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
// Decode is latency-bound here, not bandwidth-bound (a layer's cache is a few
// MB at most), so every global load of the block is issued at once, first:
// warp w holds the key and value rows of positions w, w + 4, ... in registers
// (lane l the float4s l, l + 32, ...), and the query heads go to shared memory;
// the scores are warp-wide dot products, the value sums each warp's share of
// positions, added across the warps in shared memory.
#define ATT_WARPS 4
#define ATT_PPW ((ACH + ATT_WARPS - 1) / ATT_WARPS)  // positions per warp
#ifndef ATT_R
#define ATT_R (MAXHD / 128)  // float4s of a row per lane (hd <= 128 * ATT_R)
#endif
extern "C" __global__ void __launch_bounds__(32 * ATT_WARPS)
attn_partial(const float* __restrict__ q, const float* __restrict__ kc,
             const float* __restrict__ vc, float* __restrict__ part,
             const int* __restrict__ params, int n_head, int n_kv, int hd, int n_chunks,
             float scale, L2_HINT_PARAMS) {
    HINTED_ENTRY(q, kc, vc, part, params);
    __shared__ __align__(16) float4 qs[MAXG * MAXHD / 4];
    __shared__ __align__(16) float4 red[ATT_WARPS][MAXG * MAXHD / 4];
    __shared__ float sc[MAXG * ACH];
    __shared__ float ms[MAXG], ls[MAXG];
    int kvh = blockIdx.x, c = blockIdx.y, t = blockIdx.z;
    int len = params[0] + t + 1;
    int c0 = c * ACH;
    if (c0 >= len) return;  // the combine reads only chunks below len
    int nj = min(ACH, len - c0);
    int G = n_head / n_kv, kvd = n_kv * hd, hd4 = hd >> 2;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 kr[ATT_PPW][ATT_R], vr[ATT_PPW][ATT_R];
#pragma unroll
    for (int i = 0; i < ATT_PPW; i++) {
        const int j = warp + ATT_WARPS * i;
        const long long row = (long long)(c0 + (j < nj ? j : 0)) * kvd + kvh * hd;
        const float4* kp = (const float4*)(kc + row);
        const float4* vp = (const float4*)(vc + row);
#pragma unroll
        for (int r = 0; r < ATT_R; r++) {
            const int d4 = lane + 32 * r;
            const bool ok = j < nj && d4 < hd4;
            kr[i][r] = ok ? kp[d4] : zero;
            vr[i][r] = ok ? vp[d4] : zero;
        }
    }
    const float4* qt = (const float4*)(q + ((long long)t * n_head + kvh * G) * hd);
    for (int e = threadIdx.x; e < G * hd4; e += blockDim.x) qs[(e / hd4) * (MAXHD / 4) + e % hd4] = qt[e];
    __syncthreads();
    // Scores: the warp's positions against every query head of the group.
#pragma unroll
    for (int i = 0; i < ATT_PPW; i++) {
        const int j = warp + ATT_WARPS * i;
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            if (g < G) {
                float a = 0.0f;
#pragma unroll
                for (int r = 0; r < ATT_R; r++) {
                    const int d4 = lane + 32 * r;
                    if (d4 < hd4) {
                        const float4 qv = qs[g * (MAXHD / 4) + d4], kv = kr[i][r];
                        a += qv.x * kv.x + qv.y * kv.y + qv.z * kv.z + qv.w * kv.w;
                    }
                }
                a = warp_sum(a);
                if (lane == 0 && j < nj) sc[g * ACH + j] = a * scale;
            }
        }
    }
    __syncthreads();
    // Softmax pieces per query head: lane j holds position j (ACH <= 32).
    for (int g = warp; g < G; g += ATT_WARPS) {
        float s = lane < nj ? sc[g * ACH + lane] : NEG_INF;
        float m = warp_max(s);
        float p = lane < nj ? expf(s - m) : 0.0f;
        float l = warp_sum(p);
        if (lane < nj) sc[g * ACH + lane] = p;
        if (lane == 0) {
            ms[g] = m;
            ls[g] = l;
        }
    }
    __syncthreads();
    // Values: the warp's positions, weighted, per query head; then across warps.
#pragma unroll
    for (int g = 0; g < MAXG; g++) {
        if (g < G) {
#pragma unroll
            for (int r = 0; r < ATT_R; r++) {
                const int d4 = lane + 32 * r;
                float4 a = zero;
#pragma unroll
                for (int i = 0; i < ATT_PPW; i++) {
                    const int j = warp + ATT_WARPS * i;
                    const float w = j < nj ? sc[g * ACH + j] : 0.0f;
                    a.x += w * vr[i][r].x;
                    a.y += w * vr[i][r].y;
                    a.z += w * vr[i][r].z;
                    a.w += w * vr[i][r].w;
                }
                if (d4 < hd4) red[warp][g * (MAXHD / 4) + d4] = a;
            }
        }
    }
    __syncthreads();
    int stride = hd + 2;
    for (int e = threadIdx.x; e < G * hd4; e += blockDim.x) {
        int g = e / hd4, d4 = e - g * hd4;
        float4 a = red[0][g * (MAXHD / 4) + d4];
#pragma unroll
        for (int w = 1; w < ATT_WARPS; w++) {
            const float4 b = red[w][g * (MAXHD / 4) + d4];
            a.x += b.x;
            a.y += b.y;
            a.z += b.z;
            a.w += b.w;
        }
        int h = kvh * G + g;
        float* p = part + (((long long)t * n_head + h) * n_chunks + c) * stride;
        p[4 * d4] = a.x;
        p[4 * d4 + 1] = a.y;
        p[4 * d4 + 2] = a.z;
        p[4 * d4 + 3] = a.w;
        if (d4 == 0) {
            p[hd] = ms[g];
            p[hd + 1] = ls[g];
        }
    }
}

// Prefill attention, flash-style: block (j, b) takes KV head j and the query
// rows of tokens b·bq .. b·bq + bq − 1 of the batch, bq = 64 / G (row r: token
// r / G, query head j·G + r % G; rows from bq·G on, when G does not divide 64,
// are computed on a clamped token and not written), and walks the cache in tiles of PF_BK positions up
// to the last token's, keeping per row a running max, sum and output (online
// softmax): one pass over the keys and values for all the rows, instead of one
// per token. 128 threads: thread (ty, tx) = (tid / 8, tid % 8) forms the scores
// of rows 4ty.. against keys 4tx.. of a tile, and the outputs of rows 4ty.. in
// dimensions 4tx + 32k ..; the 8 threads of a row group share its statistics by
// shuffles. Heads of up to PF_HD dimensions. Dynamic shared memory
// (prefill_smem_bytes): Q (64 rows, stride hd + 1), K (PF_BK, stride hd + 1),
// V (PF_BK, stride hd), P (64 × (PF_BK + 1)).
#define PF_ROWS 64
#define PF_BK 32
#define PF_HD 128
extern "C" __global__ void __launch_bounds__(128)
attn_prefill(const float* __restrict__ q, const float* __restrict__ kc, const float* __restrict__ vc,
             float* __restrict__ out, const int* __restrict__ params, int n, int n_head, int n_kv,
             int hd, float scale) {
    PDL_ENTRY(q, kc, vc, out, params);
    extern __shared__ __align__(16) float pf_sm[];
    const int G = n_head / n_kv, kvd = n_kv * hd, hs = hd + 1;
    const int bq = PF_ROWS / G;
    float* Qs = pf_sm;
    float* Ks = Qs + PF_ROWS * hs;
    float* Vs = Ks + PF_BK * hs;  // 16-byte aligned: 96 (hd + 1) floats are 384 (hd + 1) bytes
    float* Ps = Vs + PF_BK * hd;
    const int kvh = blockIdx.x, t0 = blockIdx.y * bq;
    const int tid = threadIdx.x, ty = tid >> 3, tx = tid & 7;
    const int base = params[0];
    const int tlast = min(t0 + bq, n) - 1;
    const int last = base + tlast;  // the last key any row of the block sees
    for (int e = tid; e < PF_ROWS * hd; e += blockDim.x) {
        const int r = e / hd, d = e - r * hd;
        const int t = min(t0 + r / G, tlast);
        Qs[r * hs + d] = q[((long long)t * n_head + kvh * G + r % G) * hd + d];
    }
    int pos[4];
#pragma unroll
    for (int i = 0; i < 4; i++) pos[i] = base + min(t0 + (4 * ty + i) / G, tlast);
    float m[4], l[4], o[4][PF_HD / 8];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m[i] = NEG_INF;
        l[i] = 0.0f;
#pragma unroll
        for (int k = 0; k < PF_HD / 8; k++) o[i][k] = 0.0f;
    }
    const int hd4 = hd >> 2;
    for (int k0 = 0; k0 <= last; k0 += PF_BK) {
        __syncthreads();  // the previous tile's K, V and P are no longer read
        for (int e = tid; e < PF_BK * hd4; e += blockDim.x) {
            const int j = e / hd4, d4 = e - j * hd4;
            const bool ok = k0 + j <= last;  // later positions may hold anything
            const long long row = (long long)(k0 + j) * kvd + kvh * hd;
            const float4 kv = ok ? ((const float4*)(kc + row))[d4] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            const float4 vv = ok ? ((const float4*)(vc + row))[d4] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            float* kd = Ks + j * hs + 4 * d4;
            kd[0] = kv.x;
            kd[1] = kv.y;
            kd[2] = kv.z;
            kd[3] = kv.w;
            ((float4*)(Vs + j * hd))[d4] = vv;
        }
        __syncthreads();
        float sv[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) sv[i][j] = 0.0f;
        for (int d = 0; d < hd; d++) {
            float qv[4], kv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) qv[i] = Qs[(4 * ty + i) * hs + d];
#pragma unroll
            for (int j = 0; j < 4; j++) kv[j] = Ks[(4 * tx + j) * hs + d];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) sv[i][j] += qv[i] * kv[j];
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float tm = NEG_INF;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int key = k0 + 4 * tx + j;
                sv[i][j] = key <= pos[i] ? sv[i][j] * scale : NEG_INF;
                tm = fmaxf(tm, sv[i][j]);
            }
#pragma unroll
            for (int off = 1; off < 8; off <<= 1) tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, off));
            const float mn = fmaxf(m[i], tm);  // finite: key 0 is in the first tile
            const float alpha = expf(m[i] - mn);
            float ps = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float pj = expf(sv[i][j] - mn);
                Ps[(4 * ty + i) * (PF_BK + 1) + 4 * tx + j] = pj;
                ps += pj;
            }
#pragma unroll
            for (int off = 1; off < 8; off <<= 1) ps += __shfl_xor_sync(0xffffffffu, ps, off);
            l[i] = l[i] * alpha + ps;
            m[i] = mn;
#pragma unroll
            for (int k = 0; k < PF_HD / 8; k++) o[i][k] *= alpha;
        }
        __syncthreads();
        for (int j = 0; j < PF_BK; j++) {
            float pj[4];
#pragma unroll
            for (int i = 0; i < 4; i++) pj[i] = Ps[(4 * ty + i) * (PF_BK + 1) + j];
#pragma unroll
            for (int k = 0; k < PF_HD / 32; k++) {
                if (4 * tx + 32 * k < hd) {
                    const float4 v = *(const float4*)(Vs + j * hd + 4 * tx + 32 * k);
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        o[i][4 * k] += pj[i] * v.x;
                        o[i][4 * k + 1] += pj[i] * v.y;
                        o[i][4 * k + 2] += pj[i] * v.z;
                        o[i][4 * k + 3] += pj[i] * v.w;
                    }
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int r = 4 * ty + i, t = t0 + r / G;
        if (t > tlast) continue;
        const float inv = 1.0f / l[i];
        float* orow = out + ((long long)t * n_head + kvh * G + r % G) * hd;
#pragma unroll
        for (int k = 0; k < PF_HD / 32; k++) {
            const int d = 4 * tx + 32 * k;
            if (d < hd)
                *(float4*)(orow + d) =
                    make_float4(o[i][4 * k] * inv, o[i][4 * k + 1] * inv, o[i][4 * k + 2] * inv, o[i][4 * k + 3] * inv);
        }
    }
}

// Attention, second pass: block (h, t) merges the chunks of query head h.
// Warp 0 finds the overall max M, leaves each chunk's weight exp(m_c - M) in
// shared memory for the value sums, and the total sum_c l_c exp(m_c - M).
extern "C" __global__ void attn_combine(const float* __restrict__ part, float* __restrict__ out,
                                        const int* __restrict__ params, int n_head, int hd,
                                        int n_chunks, L2_HINT_PARAMS) {
    HINTED_ENTRY(part, out, params);
    __shared__ float wc[MAXCH];
    __shared__ float total;
    int h = blockIdx.x, t = blockIdx.y, lane = threadIdx.x & 31;
    int len = params[0] + t + 1;
    int nc = (len + ACH - 1) / ACH;
    int stride = hd + 2;
    const float* p = part + ((long long)t * n_head + h) * n_chunks * stride;
    if (threadIdx.x < 32) {
        float m = NEG_INF;
        for (int c = lane; c < nc; c += 32) m = fmaxf(m, p[c * stride + hd]);
        m = warp_max(m);
        float l = 0.0f;
        for (int c = lane; c < nc; c += 32) {
            float w = expf(p[c * stride + hd] - m);
            wc[c] = w;
            l += p[c * stride + hd + 1] * w;
        }
        l = warp_sum(l);
        if (lane == 0) total = l;
    }
    __syncthreads();
    float inv = 1.0f / total;
    float* o = out + ((long long)t * n_head + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
#pragma unroll 4
        for (int c = 0; c < nc; c++) a += p[c * stride + d] * wc[c];
        o[d] = a * inv;
    }
}

// h *= silu(g), n elements.
extern "C" __global__ void silu_mul(const float* __restrict__ g, float* __restrict__ h,
                                    long long n, L2_HINT_PARAMS) {
    HINTED_ENTRY(g, h);
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float gv = g[i];
        h[i] = h[i] * (gv / (1.0f + expf(-gv)));
    }
}

// The index of the largest of n logits (the first on ties; NaNs never win), in
// two launches: argmax_part's blocks each leave their best (value, index) in
// scratch, argmax_final (one block of ARGB threads) picks among them.
#define ARGB 256
__device__ __forceinline__ void better(float& bv, int& bi, float v, int i) {
    if (v > bv || (v == bv && i < bi)) {
        bv = v;
        bi = i;
    }
}
__device__ void block_argmax(float best, int idx, float* sv, int* si) {
    __shared__ float wv[32];
    __shared__ int wi[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        better(best, idx, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, idx, o));
    if (lane == 0) {
        wv[warp] = best;
        wi[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        best = lane < nw ? wv[lane] : NEG_INF;
        idx = lane < nw ? wi[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            better(best, idx, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, idx, o));
        if (lane == 0) {
            *sv = best;
            *si = idx;
        }
    }
}

extern "C" __global__ void __launch_bounds__(ARGB)
argmax_part(const float* __restrict__ x, int n, float* __restrict__ sv, int* __restrict__ si,
            L2_HINT_PARAMS) {
    HINTED_ENTRY(x, sv, si);
    float best = NEG_INF;
    int idx = 0x7fffffff;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        better(best, idx, x[i], i);
    block_argmax(best, idx, sv + blockIdx.x, si + blockIdx.x);
}

extern "C" __global__ void __launch_bounds__(ARGB)
argmax_final(const float* __restrict__ sv, const int* __restrict__ si, int parts,
             int* __restrict__ out, L2_HINT_PARAMS) {
    HINTED_ENTRY(sv, si, out);
    float best = NEG_INF;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < parts; i += blockDim.x) better(best, idx, sv[i], si[i]);
    __shared__ float rv;
    __shared__ int ri;
    block_argmax(best, idx, &rv, &ri);
    if (threadIdx.x == 0) out[0] = ri == 0x7fffffff ? 0 : ri;
}

// ---------------------------------------------------------------------------
// Fused quantisers: the kernels above with the activation quantiser of the
// product that reads their output (quantize_act_ds in packed.cu) folded in, so
// the quantiser's launch and its re-read of the floats go away. `mode` is the
// layout that product reads (ActKind in mod.rs): 1 = 8-bit codes with
// (d, d·Σq) per 32 (Q4_0, Q4_1, Q5_0, Q5_1; Q8_0 with QUERN_CUDA_Q8_ACT=8),
// 2 = the same with one d per 256 values (Q4_K, Q6_K), 3 = 16-bit codes per 32
// stored as 32 high bytes then 32 low bytes, and (d, d·Σq) (Q8_0; every
// repacked format under 16-bit activations). The float
// outputs are written as before (products on other formats, and the residual,
// read them); the codes and scales are those quantize_act_ds makes of them, bit
// for bit: the same float values, the same operations (d = amax / levels,
// roundf, integer Σq), so results match the unfused path exactly.

// A folded RMSNorm's group quantiser as a launch of its own (common.cu's
// fold_group): block g takes group g (fo->group threads, at most 256), adding
// y (null: none) into the residual.
extern "C" __global__ void __launch_bounds__(256)
norm_fold_q(const FoldOut* __restrict__ fo, const float* __restrict__ y, L2_HINT_PARAMS) {
    HINTED_ENTRY(fo, y);
    fold_group(fo, y, blockIdx.x);
}

// A block of 256 threads, one value each (v, valid when `in`): the 8 blocks of
// 32 from blk0 (thread i's value is block blk0 + i / 32's lane i % 32),
// quantised in `mode`. For mode 2 the 256 values are one super-block (every
// thread valid); otherwise warps past the end (not `in`) return.
__device__ __forceinline__ void block_quant256(float v, bool in, long long blk0, int mode,
                                               signed char* __restrict__ xq,
                                               float2* __restrict__ xa) {
    __shared__ float wmax[8];
    int warp = threadIdx.x >> 5;
    float amax = warp_max(fabsf(in ? v : 0.0f));
    if (mode == 2) {
        if ((threadIdx.x & 31) == 0) wmax[warp] = amax;
        __syncthreads();
        amax = wmax[0];
#pragma unroll
        for (int i = 1; i < 8; i++) amax = fmaxf(amax, wmax[i]);
    }
    if (!in) return;
    quant_store(v, amax, blk0 + warp, mode, xq, xa);
}

// rms_norm, then the quantiser of the product that reads `out` (rows of n
// values, n a multiple of 32, of 256 for mode 2): warp w takes blocks of 32 (a
// super-block of 8 for mode 2) w, w + warps, ... of its row. The sum of squares
// is rms_norm's (`residual_inv_rms`: same threads, same order).
extern "C" __global__ void rms_norm_q(float* __restrict__ x, const float* __restrict__ d,
                                      const float* __restrict__ w, float* __restrict__ out,
                                      int n, float eps, int mode, signed char* __restrict__ xq,
                                      float2* __restrict__ xa, L2_HINT_PARAMS) {
    HINTED_ENTRY(x, d, w, out, xq, xa);
    float* xr = x + (long long)blockIdx.x * n;
    const float* dr = d ? d + (long long)blockIdx.x * n : 0;
    float* orow = out + (long long)blockIdx.x * n;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int G = mode == 2 ? 8 : 1;
    const int nb = n >> 5;
    const long long rb = (long long)blockIdx.x * nb;
    if (n <= NORM_K * (int)blockDim.x) {
        // Value i = threadIdx.x + k·blockDim.x: warp w's lanes hold block
        // w + k·nwarps, the block the loop below gives warp w in round k.
        float v[NORM_K], wv[NORM_K];
        float inv = residual_inv_rms_reg(xr, dr, w, n, eps, v, wv);
        if (G == 1) {
#pragma unroll
            for (int k = 0; k < NORM_K; k++) {
                const int i = threadIdx.x + k * blockDim.x;
                if (i < n) {
                    const float o = v[k] * inv * wv[k];
                    orow[i] = o;
                    quant_store(o, warp_max(fabsf(o)), rb + (i >> 5), mode, xq, xa);
                }
            }
            return;
        }
        // One scale per 256: each block of 32's maximum goes to shared memory
        // (a warp holds one block per round), then each value's super-block
        // maximum is that of its 8 blocks. Every warp stays busy, unlike the
        // loop below, which gives a warp a whole super-block.
        __shared__ float bmax[NORM_K * 32];
#pragma unroll
        for (int k = 0; k < NORM_K; k++) {
            const int i = threadIdx.x + k * blockDim.x;
            if (i < n) {
                v[k] = v[k] * inv * wv[k];
                orow[i] = v[k];
                const float am = warp_max(fabsf(v[k]));
                if (lane == 0) bmax[i >> 5] = am;
            }
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < NORM_K; k++) {
            const int i = threadIdx.x + k * blockDim.x;
            if (i < n) {
                const int s0 = (i >> 8) * 8;
                float m = bmax[s0];
#pragma unroll
                for (int j = 1; j < 8; j++) m = fmaxf(m, bmax[s0 + j]);
                quant_store(v[k], m, rb + (i >> 5), mode, xq, xa);
            }
        }
        return;
    }
    float inv = residual_inv_rms(xr, dr, n, eps);
    for (int b0 = warp * G; b0 < nb; b0 += nwarps * G) {
        float v[8];
        float am[8];
        float m256 = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            if (j < G) {
                int i = (b0 + j) * 32 + lane;
                v[j] = xr[i] * inv * w[i];
                orow[i] = v[j];
                am[j] = warp_max(fabsf(v[j]));
                m256 = fmaxf(m256, am[j]);
            }
        }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            if (j < G) quant_store(v[j], mode == 2 ? m256 : am[j], rb + b0 + j, mode, xq, xa);
        }
    }
}

// silu_mul (h *= silu(g), n elements, a multiple of 32; of 256 for mode 2),
// then the quantiser of the down projection: blocks of 256 threads, one value
// each.
extern "C" __global__ void __launch_bounds__(256)
silu_mul_q(const float* __restrict__ g, float* __restrict__ h, long long n, int mode,
           signed char* __restrict__ xq, float2* __restrict__ xa, L2_HINT_PARAMS) {
    HINTED_ENTRY(g, h, xq, xa);
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    bool in = i < n;
    float hv = 0.0f;
    if (in) {
        float gv = g[i];
        hv = h[i] * (gv / (1.0f + expf(-gv)));
        h[i] = hv;
    }
    block_quant256(hv, in, (long long)blockIdx.x * 8, mode, xq, xa);
}

// attn_combine for 256 consecutive outputs of token blockIdx.y (256 / hd query
// heads, hd dividing 256), then the quantiser of the output projection: warp
// j < 256 / hd finds head j's chunk weights and total as attn_combine's warp 0
// does, then thread i computes output blockIdx.x * 256 + i with attn_combine's
// loop. n_head * hd is a multiple of 32 (of 256 for mode 2).
extern "C" __global__ void __launch_bounds__(256)
attn_combine_q(const float* __restrict__ part, float* __restrict__ out,
               const int* __restrict__ params, int n_head, int hd, int n_chunks, int mode,
               signed char* __restrict__ xq, float2* __restrict__ xa, L2_HINT_PARAMS) {
    HINTED_ENTRY(part, out, params, xq, xa);
    __shared__ float wc[8][MAXCH];
    __shared__ float total[8];
    int t = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int hpb = 256 / hd;
    int h0 = blockIdx.x * hpb;
    int len = params[0] + t + 1;
    int nc = (len + ACH - 1) / ACH;
    int stride = hd + 2;
    if (warp < hpb && h0 + warp < n_head) {
        const float* p = part + ((long long)t * n_head + h0 + warp) * n_chunks * stride;
        float m = NEG_INF;
        for (int c = lane; c < nc; c += 32) m = fmaxf(m, p[c * stride + hd]);
        m = warp_max(m);
        float l = 0.0f;
        for (int c = lane; c < nc; c += 32) {
            float w = expf(p[c * stride + hd] - m);
            wc[warp][c] = w;
            l += p[c * stride + hd + 1] * w;
        }
        l = warp_sum(l);
        if (lane == 0) total[warp] = l;
    }
    __syncthreads();
    int k = n_head * hd;
    int e = blockIdx.x * 256 + threadIdx.x;
    bool in = e < k;
    float o = 0.0f;
    if (in) {
        int hl = threadIdx.x / hd, dd = threadIdx.x - hl * hd;
        const float* p = part + ((long long)t * n_head + h0 + hl) * n_chunks * stride;
        float inv = 1.0f / total[hl];
        float a = 0.0f;
#pragma unroll 4
        for (int c = 0; c < nc; c++) a += p[c * stride + dd] * wc[hl][c];
        o = a * inv;
        out[(long long)t * k + e] = o;
    }
    block_quant256(o, in, ((long long)t * k + blockIdx.x * 256) / 32, mode, xq, xa);
}
