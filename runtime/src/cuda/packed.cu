// quern's GEMV kernels over repacked weights (appended to gemv.cu, which gives
// the types, h2f and QFMT), for the formats that matter most in decode: Q4_0,
// Q4_1, Q5_0, Q5_1, Q8_0, Q4_K and Q6_K.
//
// The host repacks each matrix at upload into up to three regions (rows of each
// padded to 16 bytes; see cuda/packed.rs):
//   Q  the codes, UW 32-bit words per unit of UE weights, in groups of 32 units,
//      each group as slabs of 16 bytes per unit (see load_unit), so a thread
//      reads a unit with 16-byte loads and neighbouring threads read
//      neighbouring 16 bytes;
//   S  the per-unit or per-super-block scales (Q4_0/Q8_0: the f16 d of each
//      block; Q4_1: d and m; Q5_0/Q5_1: the block's 32 high bits, reordered
//      (see dot_unit), then d (and m); Q4_K: the 16-byte header d, dmin, scales[12] of each super-block;
//      Q6_K: the 16 signed 8-bit scales of each super-block);
//   D  Q6_K only: the f16 d of each super-block.
// The weights' values are the file's, bit for bit; only where the bytes lie
// changes. Q5_0 matrices made of 4-bit codes with a zero point per group (AWQ
// folders, `compact_q5_0` in packed.rs; off with QUERN_CUDA_Q5C=0) take a compact
// layout instead, compiled with Q5C = log2(blocks per group): Q4_0's code units
// (q = c − 16 + z) and per group one word, d in the low half and z in the high.
//
// Work split: a block of blockDim.x threads (whole warps) owns R consecutive rows
// and splits each row's units across all its threads (thread i takes units i,
// i + blockDim.x, ...), UN units at a time, so several 16-byte loads per row are
// in flight before the first is used. Activations are 8-bit (blocks of 32: codes
// xq and per block (d, d·Σq), made by quantize_act_ds) and read through L1, where
// every block of the SM finds them. Sums are reduced across the warp with
// shuffles and across warps in shared memory.

#if QFMT == 3 || QFMT == 4 || QFMT == 5 || QFMT == 6 || QFMT == 7 || QFMT == 10 || QFMT == 12
#define PACKED 1
// The activations' form (see quantize_act_ds): 16-bit codes for Q8_0, one scale
// per 256 for the K formats, else 8-bit codes per 32. Under 16-bit activations
// (precision.rs) the host defines ACT_Q16 1 for every format here: 16-bit codes
// per 32, also for the K formats.
#ifndef ACT_Q16
#if QFMT == 7
#define ACT_Q16 1
#else
#define ACT_Q16 0
#endif
#endif
#if (QFMT == 10 || QFMT == 12) && !ACT_Q16
#define ACT_K 1
#else
#define ACT_K 0
#endif

#if QFMT >= 3 && QFMT <= 6  // Q4_0, Q4_1, Q5_0, Q5_1: 32 weights, 16 bytes of nibbles (byte i: weight i, i + 16)
#define UE 32
#define UW 4
#elif QFMT == 7  // Q8_0: 32 signed bytes
#define UE 32
#define UW 8
#elif QFMT == 10  // Q4_K: 64 weights (two sub-blocks; byte i: weight i, i + 32)
#define UE 64
#define UW 8
#else  // Q6_K: 64 weights: 32 bytes of low nibbles (byte i: weight i, i + 32),
       // then 16 bytes of high bit pairs (byte i: weights i, i + 16, i + 32, i + 48)
#define UE 64
#define UW 12
#endif

#ifndef MR1
#define MR1 2
#endif
#ifndef MR2
#define MR2 2
#endif
#ifndef MR4
#define MR4 2
#endif
#ifndef MR8
#define MR8 2
#endif
#ifndef MR16
#define MR16 2
#endif
#ifndef MUN
#define MUN 2
#endif
// Units per thread per step of the batch-1 kernel (mod.rs default_mmv_unroll).
#ifndef MUN1
#define MUN1 MUN
#endif
#define MAXWARPS 8
#ifndef SLAB
#define SLAB 1
#endif

// A 16-byte load that does not keep the line in L1 (weights are read once).
__device__ __forceinline__ uint4 ld_stream(const void* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// A read-only value: from shared memory (SM) or through the read-only path.
template <bool SM, class T>
__device__ __forceinline__ T ld_ro(const T* p) {
    return SM ? *p : __ldg(p);
}

// dp4a of signed bytes a and unsigned bytes b.
__device__ __forceinline__ int dp4a_su(int a, int b, int c) {
    int d;
    asm("dp4a.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// An integer of magnitude < 2^22 to float without the slower I2F.
__device__ __forceinline__ float i2f_small(int v) {
    return __int_as_float(0x4B400000 + v) - 12582912.0f;
}

struct Unit {
    u32 q[UW];
#if QFMT == 10
    uint4 h;
#else
    u32 s;
#endif
#if QFMT == 5 || QFMT == 6
    u32 h;
#endif
#if QFMT == 12
    u32 d;
#endif
};

// Unit u's codes: units lie in groups of 32, each group as UW / 4 slabs of 16
// bytes per unit (slab i: the i-th 16 bytes of each of the group's m units), so
// that 32 lanes reading 32 consecutive units load 512 contiguous bytes per
// instruction.
// SM: the unit lies in shared memory (the pipelined kernels' staged rows):
// plain loads, else read-only global loads that bypass L1.
template <bool SM = false>
__device__ __forceinline__ void load_unit(Unit& w, const u8* __restrict__ q, const u8* __restrict__ s,
                                          const u8* __restrict__ d, int u, int nunits) {
#if SLAB
    const int grp = u >> 5;
    const int m = imin(32, nunits - (grp << 5));
    const u8* qp = q + (long long)grp * (32 * UW * 4) + (u & 31) * 16;
#else
    // QUERN_CUDA_SLAB=0: units back to back (the second slice's layout).
    const u8* qp = q + (long long)u * (UW * 4);
    const int m = 1;
#endif
#pragma unroll
    for (int i = 0; i < UW / 4; i++) {
        uint4 v = SM ? *(const uint4*)(qp + i * m * 16) : ld_stream(qp + i * m * 16);
        w.q[4 * i] = v.x;
        w.q[4 * i + 1] = v.y;
        w.q[4 * i + 2] = v.z;
        w.q[4 * i + 3] = v.w;
    }
#if QFMT == 3 || QFMT == 7
    w.s = ld_ro<SM>((const u16*)s + u);
#elif QFMT == 4
    w.s = ld_ro<SM>((const u32*)s + u);
#elif QFMT == 5 && defined(Q5C)
    // The compact layout: the group's d and zero point.
    w.s = ld_ro<SM>((const u32*)s + (u >> Q5C));
    w.h = 0;
#elif QFMT == 5 || QFMT == 6
    const uint2 hs = ld_ro<SM>((const uint2*)s + u);
    w.h = hs.x;
    w.s = hs.y;
#elif QFMT == 10
    w.h = ld_ro<SM>((const uint4*)s + (u >> 2));
#else
    w.s = ld_ro<SM>((const u32*)s + u);
    w.d = ld_ro<SM>((const u16*)d + (u >> 2));
#endif
}

// One token's activations for one unit: UE codes as words, (d, d·Σq) per 32, and
// (Q6_K) the code sums of each group of 16.
struct Act {
    int x[UE / 4];
#if ACT_Q16
    // The low bytes of the 16-bit codes (x: their high bytes).
    int xl[UE / 4];
#endif
    float2 a[UE / 32];
#if QFMT == 12
    int sx[4];
#endif
};

// SH: the activations are in shared memory (plain loads), else global (__ldg).
template <bool SH = false>
__device__ __forceinline__ void load_act(Act& v, const i8* __restrict__ xq, const float2* __restrict__ xa,
                                         long long e) {
#if ACT_Q16
    // Per block of 32: 32 high bytes, then 32 low bytes.
    const uint4* p = (const uint4*)(xq + 2 * e);
#pragma unroll
    for (int b = 0; b < UE / 32; b++)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            uint4 t = SH ? p[4 * b + i] : __ldg(p + 4 * b + i);
            const int j = 8 * b + 4 * i;
            v.x[j] = (int)t.x;
            v.x[j + 1] = (int)t.y;
            v.x[j + 2] = (int)t.z;
            v.x[j + 3] = (int)t.w;
            uint4 l = SH ? p[4 * b + 2 + i] : __ldg(p + 4 * b + 2 + i);
            v.xl[j] = (int)l.x;
            v.xl[j + 1] = (int)l.y;
            v.xl[j + 2] = (int)l.z;
            v.xl[j + 3] = (int)l.w;
        }
#else
    const uint4* p = (const uint4*)(xq + e);
#pragma unroll
    for (int i = 0; i < UE / 16; i++) {
        uint4 t = SH ? p[i] : __ldg(p + i);
        v.x[4 * i] = (int)t.x;
        v.x[4 * i + 1] = (int)t.y;
        v.x[4 * i + 2] = (int)t.z;
        v.x[4 * i + 3] = (int)t.w;
    }
#endif
#pragma unroll
    for (int i = 0; i < UE / 32; i++) v.a[i] = SH ? xa[(e >> 5) + i] : __ldg(xa + (e >> 5) + i);
#if QFMT == 12
#pragma unroll
    for (int g = 0; g < 4; g++) {
        int s = 0;
#pragma unroll
        for (int m = 0; m < 4; m++) s = __dp4a(v.x[4 * g + m], 0x01010101, s);
#if ACT_Q16
        int sl = 0;
#pragma unroll
        for (int m = 0; m < 4; m++) sl = dp4a_su(0x01010101, v.xl[4 * g + m], sl);
        s = 256 * s + sl;
#endif
        v.sx[g] = s;
    }
#endif
}

#if ACT_Q16
// Σ of 4 products of w's signed bytes and 16-bit activation codes given as their
// high (signed, xh) and low (unsigned, xl) bytes, into (sh, sl): the sum is
// 256 sh + sl.
__device__ __forceinline__ void dp4a16(int w, int xh, int xl, int& sh, int& sl) {
    sh = __dp4a(w, xh, sh);
    sl = dp4a_su(w, xl, sl);
}
#endif

// The unit's dot product with one token's activations.
__device__ __forceinline__ float dot_unit(const Unit& w, const Act& v, int u) {
#if QFMT == 3
#if ACT_Q16
    int sh = 0, sl = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        dp4a16((int)(w.q[k] & 0x0F0F0F0Fu), v.x[k], v.xl[k], sh, sl);
        dp4a16((int)((w.q[k] >> 4) & 0x0F0F0F0Fu), v.x[4 + k], v.xl[4 + k], sh, sl);
    }
    const float sf = (float)(256 * sh + sl);
#else
    int s = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        s = __dp4a((int)(w.q[k] & 0x0F0F0F0Fu), v.x[k], s);
        s = __dp4a((int)((w.q[k] >> 4) & 0x0F0F0F0Fu), v.x[4 + k], s);
    }
    const float sf = i2f_small(s);
#endif
    // Codes are stored + 8: Σ (q - 8) x = Σ q x - 8 Σ x.
    return h2f((u16)w.s) * (v.a[0].x * sf - 8.0f * v.a[0].y);
#elif QFMT == 4 || QFMT == 5 || QFMT == 6
    // Q5: the repacked high bits h hold, at bit 8j + k, the high bit of weight
    // 4k + j (k < 4), and at bit 8j + 4 + k that of weight 16 + 4k + j, so each
    // word of 4 codes takes its 4 high bits with one shift and one mask.
#if ACT_Q16
    int sh = 0, sl = 0;
#else
    int s = 0;
#endif
#pragma unroll
    for (int k = 0; k < 4; k++) {
        u32 lo = w.q[k] & 0x0F0F0F0Fu, hi = (w.q[k] >> 4) & 0x0F0F0F0Fu;
#if QFMT != 4 && !defined(Q5C)
        lo |= (w.h << (4 - k)) & 0x10101010u;
        hi |= (w.h >> k) & 0x10101010u;
#endif
#if ACT_Q16
        dp4a16((int)lo, v.x[k], v.xl[k], sh, sl);
        dp4a16((int)hi, v.x[4 + k], v.xl[4 + k], sh, sl);
#else
        s = __dp4a((int)lo, v.x[k], s);
        s = __dp4a((int)hi, v.x[4 + k], s);
#endif
    }
#if ACT_Q16
    const float sf = (float)(256 * sh + sl);
#else
    const float sf = i2f_small(s);
#endif
#if QFMT == 5 && defined(Q5C)
    // 4-bit codes q and the group's zero point z (high half of s): value d (q - z).
    return h2f((u16)(w.s & 0xFFFF)) * (v.a[0].x * sf - (float)(w.s >> 16) * v.a[0].y);
#elif QFMT == 5
    // Codes are stored + 16.
    return h2f((u16)w.s) * (v.a[0].x * sf - 16.0f * v.a[0].y);
#else
    // value = d q + m: Σ (d q + m) x = d Σ q x + m Σ x.
    return h2f((u16)(w.s & 0xFFFF)) * v.a[0].x * sf + h2f((u16)(w.s >> 16)) * v.a[0].y;
#endif
#elif QFMT == 7
#if ACT_Q16
    // 16-bit activation codes q = 256 hi + lo (hi signed, lo unsigned bytes).
    int sh = 0, sl = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        dp4a16((int)w.q[k], v.x[k], v.xl[k], sh, sl);
    }
    return h2f((u16)w.s) * v.a[0].x * (float)(sh * 256 + sl);
#else
    // QUERN_CUDA_Q8_ACT=8: 8-bit activation codes (faster at batches of 4-16).
    int s = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) s = __dp4a((int)w.q[k], v.x[k], s);
    return h2f((u16)w.s) * v.a[0].x * i2f_small(s);
#endif
#elif QFMT == 10
#if ACT_Q16
    int h0 = 0, l0 = 0, h1 = 0, l1 = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        dp4a16((int)(w.q[k] & 0x0F0F0F0Fu), v.x[k], v.xl[k], h0, l0);
        dp4a16((int)((w.q[k] >> 4) & 0x0F0F0F0Fu), v.x[8 + k], v.xl[8 + k], h1, l1);
    }
    const float f0 = (float)(256 * h0 + l0), f1 = (float)(256 * h1 + l1);
#else
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        s0 = __dp4a((int)(w.q[k] & 0x0F0F0F0Fu), v.x[k], s0);
        s1 = __dp4a((int)((w.q[k] >> 4) & 0x0F0F0F0Fu), v.x[8 + k], s1);
    }
    const float f0 = i2f_small(s0), f1 = i2f_small(s1);
#endif
    // The 6-bit scale and min of sub-blocks 2g and 2g + 1 (g = u mod 4) from the
    // header's 12 bytes (words y, z, w): for g < 2 the low 6 bits of bytes 2g, 2g+1
    // (scales) and 4+2g, 5+2g (mins); for g >= 2 a nibble of bytes 8+2(g-2)..
    // with the top two bits of bytes 2(g-2).. and 4+2(g-2)..
    const int g = u & 3;
    const int sh = 16 * (g & 1);
    const u32 ly = w.h.y >> sh, lz = w.h.z >> sh, lw = w.h.w >> sh;
    u32 sc0, sc1, m0, m1;
    if (g < 2) {
        sc0 = ly & 63;
        sc1 = (ly >> 8) & 63;
        m0 = lz & 63;
        m1 = (lz >> 8) & 63;
    } else {
        sc0 = (lw & 15) | (((ly >> 6) & 3) << 4);
        sc1 = ((lw >> 8) & 15) | (((ly >> 14) & 3) << 4);
        m0 = ((lw >> 4) & 15) | (((lz >> 6) & 3) << 4);
        m1 = ((lw >> 12) & 15) | (((lz >> 14) & 3) << 4);
    }
    const float d = h2f((u16)(w.h.x & 0xFFFF)), dmin = h2f((u16)(w.h.x >> 16));
    const float dot = u2f(sc0) * v.a[0].x * f0 + u2f(sc1) * v.a[1].x * f1;
    const float mins = u2f(m0) * v.a[0].y + u2f(m1) * v.a[1].y;
    return d * dot - dmin * mins;
#else
    int gs[4];
#pragma unroll
    for (int g = 0; g < 4; g++) {
#if ACT_Q16
        int sh = 0, sl = 0;
#else
        int s = 0;
#endif
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int m = 4 * g + k;
            const u32 lo = m < 8 ? (w.q[m] & 0x0F0F0F0Fu) : ((w.q[m - 8] >> 4) & 0x0F0F0F0Fu);
            const u32 hi = (w.q[8 + (m & 3)] >> (2 * (m >> 2))) & 0x03030303u;
#if ACT_Q16
            dp4a16((int)(lo | (hi << 4)), v.x[m], v.xl[m], sh, sl);
#else
            s = __dp4a((int)(lo | (hi << 4)), v.x[m], s);
#endif
        }
#if ACT_Q16
        const int s = 256 * sh + sl;
#endif
        // Codes are stored + 32: Σ (q - 32) x = Σ q x - 32 Σ x.
        gs[g] = s - 32 * v.sx[g];
    }
    const int sc0 = (int)(i8)(w.s & 0xFF), sc1 = (int)(i8)((w.s >> 8) & 0xFF);
    const int sc2 = (int)(i8)((w.s >> 16) & 0xFF), sc3 = (int)(i8)(w.s >> 24);
#if ACT_Q16
    // 16-bit sums reach 2^25: the scales meet them as floats.
    const float lo = (float)sc0 * (float)gs[0] + (float)sc1 * (float)gs[1];
    const float hi = (float)sc2 * (float)gs[2] + (float)sc3 * (float)gs[3];
#else
    const float lo = (float)(sc0 * gs[0] + sc1 * gs[1]);
    const float hi = (float)(sc2 * gs[2] + sc3 * gs[3]);
#endif
    return h2f((u16)w.d) * (v.a[0].x * lo + v.a[1].x * hi);
#endif
}

// The consumers' sums of squares each lane of warp 0 loads at once after the
// product (the rest, for rows of more than 32 · 32 · FOLD_LANE_PARTS values,
// one by one).
#define FOLD_LANE_PARTS 4

// y[t][r] for rows blockIdx.x * R .. + R and tokens t < nt (nt <= B); K weights per
// row, nunits = K / UE units. Q, S, D: the regions, row r at r * qs, r * ss, r * ds.
// Batch 1 only: nps (not null) makes this product a folded norm's consumer
// (common.cu's fold_group): the outputs scaled by 1 / sqrt(Σ nps[0..npart] / K
// + eps).
template <int B, int R, int UN>
__device__ __forceinline__ void mmv(const u8* __restrict__ Q, long long qs, const u8* __restrict__ S,
                                    long long ss, const u8* __restrict__ D, long long ds, int rows,
                                    int nunits, int K, const i8* __restrict__ xq,
                                    const float2* __restrict__ xa, float* __restrict__ y, int nt,
                                    const double* nps, int npart, float eps) {
    __shared__ float red[MAXWARPS][R * B];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nth = blockDim.x;
    const int row0 = blockIdx.x * R;
    const u8* qr[R];
    const u8* sr[R];
    const u8* dr[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        // Rows past the end re-read the last row; their sums are never stored.
        const long long rr = imin(row0 + r, rows - 1);
        qr[r] = Q + rr * qs;
        sr[r] = S + rr * ss;
        dr[r] = D + rr * ds;
    }
    float acc[R][B];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < B; t++) acc[r][t] = 0.0f;

    for (int u0 = tid; u0 < nunits; u0 += nth * UN) {
        // Every load of the step first (units past the end re-read the last one),
        // then the arithmetic.
        Unit w[UN][R];
#pragma unroll
        for (int i = 0; i < UN; i++) {
            const int u = imin(u0 + i * nth, nunits - 1);
#pragma unroll
            for (int r = 0; r < R; r++) load_unit(w[i][r], qr[r], sr[r], dr[r], u, nunits);
        }
#pragma unroll
        for (int i = 0; i < UN; i++) {
            const int uu = u0 + i * nth;
            const bool ok = uu < nunits;
            const int u = ok ? uu : nunits - 1;
#pragma unroll
            for (int t = 0; t < B; t++) {
                const int tt = t < nt ? t : nt - 1;
                Act v;
                load_act(v, xq, xa, (long long)tt * K + (long long)u * UE);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const float p = dot_unit(w[i][r], v, u);
                    acc[r][t] += ok ? p : 0.0f;
                }
            }
        }
    }

    // A folded norm's consumer: its sums of squares, loaded now by warp 0
    // (independent loads, their latency under the reduction below; not
    // before the products, where they would hold registers) and added after.
    double np[FOLD_LANE_PARTS];
#pragma unroll
    for (int k = 0; k < FOLD_LANE_PARTS; k++) {
        const int j = lane + 32 * k;
        np[k] = B == 1 && nps && warp == 0 && j < npart ? __ldcg(nps + j) : 0.0;
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < B; t++) {
            float s = acc[r][t];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0) red[warp][r * B + t] = s;
        }
    __syncthreads();
    const int nw = nth >> 5;
    float scale = 1.0f;
    if (B == 1 && nps && warp == 0) {
        double nss = 0.0;
#pragma unroll
        for (int k = 0; k < FOLD_LANE_PARTS; k++) nss += np[k];
        for (int j = lane + 32 * FOLD_LANE_PARTS; j < npart; j += 32) nss += __ldcg(nps + j);
        nss = warp_sum_d(nss);
        scale = 1.0f / sqrtf((float)(nss / K) + eps);
    }
    for (int i = tid; i < R * B; i += nth) {
        const int r = i / B, t = i % B;
        float s = 0.0f;
        for (int k = 0; k < nw; k++) s += red[k][i];
        if (t < nt && row0 + r < rows) y[(long long)t * rows + row0 + r] = s * scale;
    }
}

// MMV_PREFETCH 1 (QUERN_CUDA_PREFETCH=1): before the wait for the previous
// kernel, each block asks L2 for its rows' weight lines (prefetch, no value
// comes back, and the weights never change), so their DRAM reads overlap the
// previous kernel's last blocks instead of starting after them.
#ifndef MMV_PREFETCH
#define MMV_PREFETCH 0
#endif
__device__ __forceinline__ void prefetch_l2(const u8* base, long long bytes) {
    for (long long o = (long long)threadIdx.x * 128; o < bytes; o += (long long)blockDim.x * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(base + o));
}
// Rows row0 .. row0 + R of each region lie back to back.
template <int R>
__device__ __forceinline__ void prefetch_rows(const u8* Q, long long qs, const u8* S, long long ss,
                                              const u8* D, long long ds, int rows) {
    const int row0 = blockIdx.x * R;
    const int n = imin(R, rows - row0);
    if (n <= 0) return;
    prefetch_l2(Q + (long long)row0 * qs, n * qs);
    prefetch_l2(S + (long long)row0 * ss, n * ss);
    if (ds > 0) prefetch_l2(D + (long long)row0 * ds, n * ds);
}

// MMV_MINB (mod.rs mmv_min_blocks, per format; QUERN_CUDA_DEFINES="MMV_MINB=n"
// for tuning runs): for the batch-1 kernel, blocks of the largest size that
// must fit on one SM at once, which caps the registers per thread. Given it,
// ptxas spends registers up to the cap (Q4_0: 48 without it) on keeping loads
// in flight; Q4_K (94 without it at 2 units per step) spills under 3 or 4.
// Not the same as none when 1: ptxas then takes more registers than with the
// thread bound alone (Q8_0 96 against 48).
#ifdef MMV_MINB
#define MMV_BOUNDS1 __launch_bounds__(MAXWARPS * 32, MMV_MINB)
#else
#define MMV_BOUNDS1 __launch_bounds__(MAXWARPS * 32)
#endif
#define MMV_BOUNDS __launch_bounds__(MAXWARPS * 32)
#define MMV_ENTRY(NAME, BB, RR, UN, BOUNDS)                                                        \
    extern "C" __global__ void BOUNDS                                                              \
        NAME(const u8* Q, long long qs, const u8* S, long long ss, const u8* D, long long ds,      \
             int rows, int nunits, int K, const i8* xq, const float2* xa, float* y, int nt,        \
             const double* nps, int npart, float eps) {                                            \
        if (MMV_PREFETCH) prefetch_rows<RR>(Q, qs, S, ss, D, ds, rows);                            \
        PDL_ENTRY(xq, xa, y, nps);                                                                 \
        mmv<BB, RR, UN>(Q, qs, S, ss, D, ds, rows, nunits, K, xq, xa, y, nt, nps, npart, eps);     \
    }
MMV_ENTRY(mmv_b1, 1, MR1, MUN1, MMV_BOUNDS1)
MMV_ENTRY(mmv_b2, 2, MR2, MUN, MMV_BOUNDS)
MMV_ENTRY(mmv_b4, 4, MR4, MUN, MMV_BOUNDS)
MMV_ENTRY(mmv_b8, 8, MR8, MUN, MMV_BOUNDS)
MMV_ENTRY(mmv_b16, 16, MR16, MUN, MMV_BOUNDS)

// ---------------------------------------------------------------------------
// The pipelined kernels (mmp_*, sm_90 and later): weight bytes reach shared
// memory by bulk asynchronous copies (the copy engine of each SM, tracked by an
// mbarrier per stage), so the bytes a block has in flight are bounded by its
// shared memory, not by its registers: the block kernels above keep at most a
// few 16-byte loads per thread outstanding and stay latency-bound. Each block
// owns the row groups blockIdx.x, + gridDim.x, ... (rps rows each, one stage);
// nst stages are in flight while the block's 8 warps multiply the oldest one.
// A group's rows lie back to back in each region (Q, S, D: row strides qs, ss,
// ds, multiples of 16), so a stage is at most three copies, issued by thread 0.
// Within a stage, wpr warps share a row (thread i of the row's 32·wpr takes
// units i, i + 32·wpr, ...) and 8 / wpr rows are multiplied at once.
#ifndef MMP_MAXST
#define MMP_MAXST 8
#endif
// MMP_EARLY 1 (QUERN_CUDA_MMP_EARLY=1): the first stages' copies go out before
// the wait for the previous kernel (the weights never change), overlapping its
// end; off by default (see common.cu on loads issued before the wait).
#ifndef MMP_EARLY
#define MMP_EARLY 0
#endif

__device__ __forceinline__ u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
#if __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
#endif
}

__device__ __forceinline__ void mbar_fence_init() {
#if __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

// Thread 0's arrival on a stage's barrier, announcing `bytes` of copies.
__device__ __forceinline__ void mbar_expect(u32 bar, u32 bytes) {
#if __CUDA_ARCH__ >= 900
    unsigned long long state;
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 %0, [%1], %2;"
                 : "=l"(state)
                 : "r"(bar), "r"(bytes)
                 : "memory");
    (void)state;
#endif
}

// Blocks until the barrier's phase `parity` has completed (its copies landed).
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
#if __CUDA_ARCH__ >= 900
    u32 done = 0;
    do {
        asm volatile(
            "{\n\t.reg .pred p;\n\t"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
            "selp.u32 %0, 1, 0, p;\n\t}"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
#endif
}

// `bytes` (a multiple of 16, both addresses 16-byte aligned) from global src to
// shared dst, completing on barrier bar.
__device__ __forceinline__ void bulk_copy(u32 dst, const void* src, u32 bytes, u32 bar) {
#if __CUDA_ARCH__ >= 900
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
        "l"(src), "r"(bytes), "r"(bar)
        : "memory");
#endif
}

struct MmpPlan {
    const u8* Q;
    const u8* S;
    const u8* D;
    long long qs, ss, ds;
    int rows, rps, nst;
    u8* sm;
    u32 bar0;  // shared address of the first stage's barrier (8 bytes each)
};

__device__ __forceinline__ long long mmp_stage_bytes(const MmpPlan& p) {
    return (long long)p.rps * (p.qs + p.ss + p.ds);
}

// Thread 0: the copies of this block's i-th row group into stage i mod nst.
__device__ __forceinline__ void mmp_issue(const MmpPlan& p, int i) {
    const long long r0 = (long long)(blockIdx.x + (long long)i * gridDim.x) * p.rps;
    const int nr = imin(p.rps, p.rows - (int)r0);
    const int buf = i % p.nst;
    const u32 dst = smem_u32(p.sm + buf * mmp_stage_bytes(p));
    const u32 bar = p.bar0 + 8 * buf;
    const u32 qb = (u32)(nr * p.qs), sb = (u32)(nr * p.ss), db = (u32)(nr * p.ds);
    mbar_expect(bar, qb + sb + db);
    bulk_copy(dst, p.Q + r0 * p.qs, qb, bar);
    bulk_copy(dst + (u32)(p.rps * p.qs), p.S + r0 * p.ss, sb, bar);
    if (db) bulk_copy(dst + (u32)(p.rps * (p.qs + p.ss)), p.D + r0 * p.ds, db, bar);
}

// The row groups of this block.
__device__ __forceinline__ int mmp_groups(const MmpPlan& p) {
    const int ngroups = (p.rows + p.rps - 1) / p.rps;
    return (int)blockIdx.x < ngroups ? (ngroups - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
}

// Barriers set up and, with early, the first stages issued (before the wait for
// the previous kernel).
__device__ __forceinline__ void mmp_begin(const MmpPlan& p, bool early) {
    if (threadIdx.x == 0) {
        for (int s = 0; s < p.nst; s++) mbar_init(p.bar0 + 8 * s, 1);
        mbar_fence_init();
        if (early) {
            const int n = imin(p.nst, mmp_groups(p));
            for (int i = 0; i < n; i++) mmp_issue(p, i);
        }
    }
}

template <int B>
__device__ __forceinline__ void mmp(const MmpPlan& p, bool early, int nunits, int K,
                                    const i8* __restrict__ xq, const float2* __restrict__ xa,
                                    float* __restrict__ y, int nt, int wpr) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int mine = mmp_groups(p);
    if (!early && tid == 0) {
        const int n = imin(p.nst, mine);
        for (int i = 0; i < n; i++) mmp_issue(p, i);
    }
    __syncthreads();  // the barriers' initialisation seen by every thread
    const long long sbytes = mmp_stage_bytes(p);
    // Partial sums of the warps sharing a row: [nst][wpr][rps * B].
    float* red = (float*)(p.sm + p.nst * sbytes);
    const int slots = (blockDim.x >> 5) / wpr;  // rows multiplied at once
    const int slot = warp / wpr, part = warp % wpr;
    const int rt = part * 32 + lane, rth = 32 * wpr;
    for (int i = 0; i < mine; i++) {
        const int buf = i % p.nst;
        const int r0 = (blockIdx.x + i * gridDim.x) * p.rps;
        const int nr = imin(p.rps, p.rows - r0);
        mbar_wait(p.bar0 + 8 * buf, (u32)((i / p.nst) & 1));
        const u8* q = p.sm + buf * sbytes;
        const u8* s = q + p.rps * p.qs;
        const u8* d = s + p.rps * p.ss;
        for (int j = slot; j < nr; j += slots) {
            float acc[B];
#pragma unroll
            for (int t = 0; t < B; t++) acc[t] = 0.0f;
            const u8* qj = q + j * p.qs;
            const u8* sj = s + j * p.ss;
            const u8* dj = d + j * p.ds;
            for (int u = rt; u < nunits; u += rth) {
                Unit w;
                load_unit<true>(w, qj, sj, dj, u, nunits);
#pragma unroll
                for (int t = 0; t < B; t++) {
                    const int tt = t < nt ? t : nt - 1;
                    Act v;
                    load_act(v, xq, xa, (long long)tt * K + (long long)u * UE);
                    acc[t] += dot_unit(w, v, u);
                }
            }
#pragma unroll
            for (int t = 0; t < B; t++) {
                float v = acc[t];
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
                acc[t] = v;
            }
            if (wpr == 1) {
                if (lane < B && lane < nt) {
                    float v = acc[0];
#pragma unroll
                    for (int t = 1; t < B; t++) v = lane == t ? acc[t] : v;
                    y[(long long)lane * p.rows + r0 + j] = v;
                }
            } else if (lane == 0) {
#pragma unroll
                for (int t = 0; t < B; t++) red[(buf * wpr + part) * p.rps * B + j * B + t] = acc[t];
            }
        }
        __syncthreads();  // every warp is done with stage buf
        if (wpr > 1) {
            for (int e = tid; e < nr * B; e += blockDim.x) {
                const int j = e / B, t = e % B;
                float v = 0.0f;
                for (int k = 0; k < wpr; k++) v += red[(buf * wpr + k) * p.rps * B + e];
                if (t < nt) y[(long long)t * p.rows + r0 + j] = v;
            }
        }
        if (tid == 0 && i + p.nst < mine) {
            // The stage's reads (generic proxy) before the copy's writes (async proxy).
#if __CUDA_ARCH__ >= 900
            asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
            mmp_issue(p, i + p.nst);
        }
    }
}

#define MMP_ENTRY(NAME, BB)                                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                               \
        NAME(const u8* Q, long long qs, const u8* S, long long ss, const u8* D, long long ds,       \
             int rows, int nunits, int K, const i8* xq, const float2* xa, float* y, int nt, int rps, \
             int nst, int wpr) {                                                                    \
        extern __shared__ __align__(128) u8 mmp_sm[];                                               \
        __shared__ __align__(8) unsigned long long mmp_bar[MMP_MAXST];                              \
        const MmpPlan p{Q, S, D, qs, ss, ds, rows, rps, nst, mmp_sm, smem_u32(mmp_bar)};            \
        mmp_begin(p, MMP_EARLY);                                                                    \
        PDL_ENTRY(xq, xa, y);                                                                       \
        mmp<BB>(p, MMP_EARLY, nunits, K, xq, xa, y, nt, wpr);                                       \
    }
MMP_ENTRY(mmp_b1, 1)
MMP_ENTRY(mmp_b2, 2)
MMP_ENTRY(mmp_b4, 4)

// ---------------------------------------------------------------------------
// The warp-per-rows kernels (mmw_*): each warp owns R consecutive rows at a
// time and walks them with its 32 lanes (lane l takes units l, l + 32, ...), NU
// units per lane per step, every load of a step issued before its arithmetic;
// warps are independent (shuffle reductions only, no barrier after the start),
// and a warp that finishes its rows takes the rows one grid's worth of warps
// further on. The fused entries (mmwf_*) quantise the activations themselves:
// each block first issues its first step's weight loads, then turns the f32
// activations into 8-bit codes and (d, d·Σq) per 32 in shared memory (the
// rounding of quantize_act_ds), so no quantiser launch precedes the product and
// every activation read is a shared-memory one.
#ifndef WR1
#define WR1 2
#endif
#ifndef WR2
#define WR2 2
#endif
#ifndef WR4
#define WR4 2
#endif
#ifndef WR8
#define WR8 1
#endif
#ifndef WR16
#define WR16 1
#endif
#ifndef WU1
#define WU1 2
#endif
#ifndef WU2
#define WU2 2
#endif
#ifndef WU4
#define WU4 2
#endif
#ifndef WU8
#define WU8 2
#endif
#ifndef WU16
#define WU16 1
#endif
// Passes of 4 blocks of 32 per warp whose loads the staging issues together.
#ifndef STAGE_P
#define STAGE_P 8
#endif

// nt rows of K floats (token-major) to 8-bit codes (sq, 4 per word) and (d, d·Σq)
// per block of 32 (sa), by all threads of the block; 8 lanes per block of 32.
__device__ __forceinline__ void stage_act(const float* __restrict__ x, int nt, int K, u32* sq,
                                          float2* sa) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int nblk = nt * (K >> 5);
    const int step = nw * 4;
    for (int base = warp * 4; base < nblk; base += step * STAGE_P) {
        float4 v[STAGE_P];
#pragma unroll
        for (int p = 0; p < STAGE_P; p++) {
            const int b = base + p * step + (lane >> 3);
            v[p] = b < nblk ? __ldg((const float4*)x + (long long)b * 8 + (lane & 7))
                            : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int p = 0; p < STAGE_P; p++) {
            const int b = base + p * step + (lane >> 3);
            float amax = fmaxf(fmaxf(fabsf(v[p].x), fabsf(v[p].y)), fmaxf(fabsf(v[p].z), fabsf(v[p].w)));
#pragma unroll
            for (int o = 4; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
            const float d = amax / 127.0f;
            const float id = d > 0.0f ? 1.0f / d : 0.0f;
            const int q0 = (int)roundf(v[p].x * id), q1 = (int)roundf(v[p].y * id);
            const int q2 = (int)roundf(v[p].z * id), q3 = (int)roundf(v[p].w * id);
            int s = q0 + q1 + q2 + q3;
#pragma unroll
            for (int o = 4; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (b < nblk) {
                sq[b * 8 + (lane & 7)] = (u32)(q0 & 0xFF) | ((u32)(q1 & 0xFF) << 8) |
                                         ((u32)(q2 & 0xFF) << 16) | ((u32)q3 << 24);
                if ((lane & 7) == 0) sa[b] = make_float2(d, d * (float)s);
            }
        }
    }
}

// Shared-memory bytes of the fused kernels' staged activations for nt tokens.
__host__ __device__ __forceinline__ int stage_bytes(int nt, int K) {
    return ((nt * K + 15) & ~15) + nt * (K >> 5) * 8;
}

template <int R, int NU>
__device__ __forceinline__ void load_step(Unit (&w)[NU][R], const u8* const (&qr)[R], const u8* const (&sr)[R],
                                          const u8* const (&dr)[R], int u0, int nunits) {
#pragma unroll
    for (int i = 0; i < NU; i++) {
        const int u = imin(u0 + 32 * i, nunits - 1);
#pragma unroll
        for (int r = 0; r < R; r++) load_unit(w[i][r], qr[r], sr[r], dr[r], u, nunits);
    }
}

template <int B, int R, int NU, bool FUSED>
__device__ __forceinline__ void mmw(const u8* __restrict__ Q, long long qs, const u8* __restrict__ S,
                                    long long ss, const u8* __restrict__ D, long long ds, int rows,
                                    int nunits, int K, const float* __restrict__ x,
                                    const i8* __restrict__ xq, const float2* __restrict__ xa,
                                    float* __restrict__ y, int nt) {
    extern __shared__ uint4 stage_sm[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int ngroups = (rows + R - 1) / R;
    const int gstride = gridDim.x * nw;
    int g = blockIdx.x * nw + warp;
    const u8* qr[R];
    const u8* sr[R];
    const u8* dr[R];
    auto rows_of = [&](int grp) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            // Rows past the end re-read the last row; their sums are never stored.
            const long long rr = imin(grp * R + r, rows - 1);
            qr[r] = Q + rr * qs;
            sr[r] = S + rr * ss;
            dr[r] = D + rr * ds;
        }
    };
    Unit w[NU][R];
    const i8* aq = xq;
    const float2* aa = xa;
    bool pre = false;
    if (FUSED) {
        // This warp's first loads go out before the activations are staged.
        if (g < ngroups) {
            rows_of(g);
            load_step<R, NU>(w, qr, sr, dr, lane, nunits);
            pre = true;
        }
        u32* sq = (u32*)stage_sm;
        float2* sa = (float2*)((u8*)stage_sm + ((nt * K + 15) & ~15));
        stage_act(x, nt, K, sq, sa);
        __syncthreads();
        aq = (const i8*)sq;
        aa = sa;
    }
    for (; g < ngroups; g += gstride) {
        if (!pre) rows_of(g);
        float acc[R][B];
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int t = 0; t < B; t++) acc[r][t] = 0.0f;
        for (int base = 0; base < nunits; base += 32 * NU) {
            if (!pre) load_step<R, NU>(w, qr, sr, dr, base + lane, nunits);
            pre = false;
#pragma unroll
            for (int i = 0; i < NU; i++) {
                const int uu = base + lane + 32 * i;
                const bool ok = uu < nunits;
                const int u = ok ? uu : nunits - 1;
#pragma unroll
                for (int t = 0; t < B; t++) {
                    const int tt = t < nt ? t : nt - 1;
                    Act v;
                    load_act<FUSED>(v, aq, aa, (long long)tt * K + (long long)u * UE);
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        const float p = dot_unit(w[i][r], v, u);
                        acc[r][t] += ok ? p : 0.0f;
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int t = 0; t < B; t++) {
                float s = acc[r][t];
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                const int row = g * R + r;
                if (lane == ((r * B + t) & 31) && t < nt && row < rows) y[(long long)t * rows + row] = s;
            }
    }
}

#define MMW_ENTRY(NAME, BB, RR, UU, FF)                                                            \
    extern "C" __global__ void __launch_bounds__(MAXWARPS * 32)                                    \
        NAME(const u8* Q, long long qs, const u8* S, long long ss, const u8* D, long long ds,      \
             int rows, int nunits, int K, const float* x, const i8* xq, const float2* xa, float* y, \
             int nt) {                                                                             \
        PDL_ENTRY(Q, S, D, x, xq, xa, y);                                                          \
        mmw<BB, RR, UU, FF>(Q, qs, S, ss, D, ds, rows, nunits, K, x, xq, xa, y, nt);               \
    }
MMW_ENTRY(mmw_b1, 1, WR1, WU1, false)
MMW_ENTRY(mmw_b2, 2, WR2, WU2, false)
MMW_ENTRY(mmw_b4, 4, WR4, WU4, false)
MMW_ENTRY(mmw_b8, 8, WR8, WU8, false)
MMW_ENTRY(mmw_b16, 16, WR16, WU16, false)
MMW_ENTRY(mmwf_b1, 1, WR1, WU1, true)
MMW_ENTRY(mmwf_b2, 2, WR2, WU2, true)
MMW_ENTRY(mmwf_b4, 4, WR4, WU4, true)

// x (n rows of K floats, K a multiple of 32) to the activation codes this
// format's kernels read, as the CPU backend quantises them for the same weights
// (cpu/act.rs; its rounding: d = amax / levels, half away from zero), so both
// backends form the same integer sums:
//   ACT_Q16 (Q8_0; every format here under 16-bit activations): 16-bit codes
//     per block of 32 (d = amax / 32767), stored as 32 high bytes (signed) then
//     32 low bytes (unsigned) per block, and (d, d·Σq);
//   ACT_K (Q4_K, Q6_K): 8-bit codes with one d per 256 (amax / 127) and
//     (d, d·Σq) per 32; one thread block of 256 threads per 256 values;
//   else: 8-bit codes and (d, d·Σq) per block of 32.
// One thread per value, a warp per block of 32 (blockDim.x = 256).
extern "C" __global__ void quantize_act_ds(const float* __restrict__ x, long long nblocks,
                                           i8* __restrict__ xq, float2* __restrict__ xa) {
    PDL_ENTRY(x, xq, xa);
    long long blk = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
#if ACT_K
    // Every thread of the block takes part in the block's maximum (nblocks is a
    // multiple of 8 here: rows of the K formats are multiples of 256).
    __shared__ float wmax[8];
    const bool in = blk < nblocks;
    float v = in ? x[blk * 32 + lane] : 0.0f;
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if (lane == 0) wmax[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = wmax[0];
#pragma unroll
    for (int i = 1; i < 8; i++) amax = fmaxf(amax, wmax[i]);
    if (!in) return;
#else
    if (blk >= nblocks) return;
    float v = x[blk * 32 + lane];
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
#endif
#if ACT_Q16
    const float d = amax / 32767.0f;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    const int q = (int)roundf(v * id);
    xq[blk * 64 + lane] = (i8)(q >> 8);
    xq[blk * 64 + 32 + lane] = (i8)(q & 0xFF);
    int s = q;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) xa[blk] = make_float2(d, d * (float)s);
#else
    const float d = amax / 127.0f;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    const int q = (int)roundf(v * id);
    xq[blk * 32 + lane] = (i8)q;
    int s = q;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) xa[blk] = make_float2(d, d * (float)s);
#endif
}
#endif
