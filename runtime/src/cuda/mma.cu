// quern's int8 tensor-core products for batches of activation rows (prefill,
// batched decode) over the repacked formats (appended to packed.cu, which gives
// Unit, load_unit, the formats' macros and the activation quantiser).
//
// One structure for every format: per step of KT weights of a row, each
// format's loader (unit_codes) turns a tile of BM = 64 weight rows × KT values
// into signed 8-bit codes in shared memory, with per (row, block of 32) a float
// pair (a, b) and, for Q6_K, the two 8-bit scales of its halves; the
// activations (already quantised by quantize_act_ds: codes per block of 32 and
// (d, d·Σq)) are copied into shared memory with cp.async, two steps in flight.
// The core then forms, per block of 32, the integer sums S = Σ q_w · q_x with
// mma.sync m16n8k32 (s8 × s8 → s32) and adds a · d_x · S + b · d_x·Σq_x to f32
// accumulators: the integer sums the CPU backend and the GEMV kernels form,
// combined in another float order.
//   Q4_0, Q5_0: codes centred (q − 8, q − 16), a = d, b = 0
//   Q4_1, Q5_1: codes as stored, a = d, b = m
//   Q8_0: a = d, b = 0; against 16-bit activation codes two MMAs per block
//         (signed high bytes, unsigned low bytes): S = 256 S_hi + S_lo (so
//         every format under 16-bit activations, where the K formats' scales
//         meet S per block of 32 as floats, since S reaches 2^24)
//   Q4_K: codes 0..15, b = −dmin · min per sub-block of 32; its 6-bit scales
//         multiply S in integers, summed over the super-block (one step of 256,
//         where the activations have one scale too), then times d · d_x
//   Q6_K: codes centred (q − 32); its scales are per 16 values, so two MMAs per
//         block (each half of A zeroed in turn), sc0 S_0 + sc1 S_1 summed over
//         the super-block in integers, then times d · d_x.
//
// Fragments (PTX ISA, mma.m16n8k32 with 8-bit types; g = lane / 4, c = lane % 4):
//   A (16 rows × 32): a0 = row g, k 4c..4c+3; a1 = row g + 8, same k;
//                     a2 = row g, k 16 + 4c..; a3 = row g + 8, k 16 + 4c..
//   B (32 × 8 tokens): b0 = token g, k 4c..4c+3; b1 = token g, k 16 + 4c..
//   C (16 × 8):       c0, c1 = row g, tokens 2c, 2c + 1; c2, c3 = row g + 8.
// Shared rows are KT/4 + 4 words apart, so the 32 lanes' word reads of a
// fragment fall in 32 different banks.
#ifdef PACKED

#define MQ_BM 64
#define MQ_KT 256
#define MQ_KB (MQ_KT / 32)
#define MQ_RW (MQ_KT / 4 + 4)
// Row stride of the per-block scale arrays (one pad entry: conflict-free reads).
#define MQ_KBP (MQ_KB + 1)
#define MQ_UPS (MQ_KT / UE)
#define MQ_THREADS 128
#if QFMT == 4 || QFMT == 6 || QFMT == 10
#define MQ_MIN 1
#else
#define MQ_MIN 0
#endif

__device__ __forceinline__ void mma_s8s8(int (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0), "r"(0), "r"(0), "r"(0));
}

__device__ __forceinline__ void mma_s8u8(int (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.u8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0), "r"(0), "r"(0), "r"(0));
}

// 16 (or 8) bytes global → shared without registers; src_bytes 0 fills zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async8(void* dst, const void* src, int src_bytes) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(s), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

// A unit's codes as words of 4 signed bytes (word j: weights 4j..4j+3), and per
// block of 32 of it (a, b) and (Q6_K) its two 8-bit scales.
__device__ __forceinline__ void unit_codes(const Unit& w, int u, u32 (&c)[UE / 4], float2 (&ab)[UE / 32],
                                           int (&sc)[UE / 32]) {
#if QFMT == 3 || QFMT == 4 || QFMT == 5 || QFMT == 6
#pragma unroll
    for (int k = 0; k < 4; k++) {
        u32 lo = w.q[k] & 0x0F0F0F0Fu, hi = (w.q[k] >> 4) & 0x0F0F0F0Fu;
#if (QFMT == 5 || QFMT == 6) && !defined(Q5C)
        lo |= (w.h << (4 - k)) & 0x10101010u;
        hi |= (w.h >> k) & 0x10101010u;
#endif
#if QFMT == 3
        lo = __vsub4(lo, 0x08080808u);
        hi = __vsub4(hi, 0x08080808u);
#elif QFMT == 5 && defined(Q5C)
        // The compact layout: q - z, the group's zero point.
        const u32 zz = (w.s >> 16) * 0x01010101u;
        lo = __vsub4(lo, zz);
        hi = __vsub4(hi, zz);
#elif QFMT == 5
        lo = __vsub4(lo, 0x10101010u);
        hi = __vsub4(hi, 0x10101010u);
#endif
        c[k] = lo;
        c[4 + k] = hi;
    }
#if QFMT == 4 || QFMT == 6
    ab[0] = make_float2(h2f((u16)(w.s & 0xFFFF)), h2f((u16)(w.s >> 16)));
#else
    ab[0] = make_float2(h2f((u16)w.s), 0.0f);
#endif
    sc[0] = 0;
#elif QFMT == 7
#pragma unroll
    for (int k = 0; k < 8; k++) c[k] = w.q[k];
    ab[0] = make_float2(h2f((u16)w.s), 0.0f);
    sc[0] = 0;
#elif QFMT == 10
#pragma unroll
    for (int k = 0; k < 8; k++) {
        c[k] = w.q[k] & 0x0F0F0F0Fu;
        c[8 + k] = (w.q[k] >> 4) & 0x0F0F0F0Fu;
    }
    // The sub-blocks' 6-bit scales and mins, as dot_unit reads them.
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
    // The integer sums take the scales (sc S summed over the super-block, then
    // d · d_x once); the mins stay float.
    ab[0] = make_float2(d, -dmin * u2f(m0));
    ab[1] = make_float2(d, -dmin * u2f(m1));
    sc[0] = (int)sc0;
    sc[1] = (int)sc1;
#else
#pragma unroll
    for (int m = 0; m < 16; m++) {
        const u32 lo = m < 8 ? (w.q[m] & 0x0F0F0F0Fu) : ((w.q[m - 8] >> 4) & 0x0F0F0F0Fu);
        const u32 hi = (w.q[8 + (m & 3)] >> (2 * (m >> 2))) & 0x03030303u;
        c[m] = __vsub4(lo | (hi << 4), 0x20202020u);
    }
    const float d = h2f((u16)w.d);
    ab[0] = make_float2(d, 0.0f);
    ab[1] = make_float2(d, 0.0f);
    // Scales of weights 0-15 and 16-31 (block 0), 32-47 and 48-63 (block 1).
    sc[0] = (int)(w.s & 0xFFFF);
    sc[1] = (int)(w.s >> 16);
#endif
}

// Shared-memory bytes of an mmq launch with BN tokens per block (mirrored in
// mod.rs: mmq_smem_bytes).
__host__ __device__ __forceinline__ int mmq_smem(int bn) {
    return MQ_BM * MQ_RW * 4 + MQ_BM * MQ_KBP * 8 + MQ_BM * MQ_KBP * 4 +
           2 * bn * MQ_RW * 4 * (ACT_Q16 ? 2 : 1) + 2 * bn * MQ_KBP * 8;
}

// y[t][r] = Σ_k W[r][k] x[t][k] for rows blockIdx.x * 64.. and tokens
// blockIdx.y * BN.. (BN = WN · NT · 8): warps WM × WN, each MT × NT tiles of 16
// rows × 8 tokens. xq/xa: the quantised activations of nt tokens of K values.
// Split K: block z takes steps z·ksteps .. (z + 1)·ksteps − 1 of K; with more
// than one split (gridDim.z > 1) the partial sums are added to y, which the
// host has zeroed, else stored.
template <int WM, int WN, int MT, int NT>
__device__ __forceinline__ void mmq(const u8* __restrict__ Q, long long qs, const u8* __restrict__ S,
                                    long long ss, const u8* __restrict__ D, long long ds, int rows,
                                    int nunits, int K, const i8* __restrict__ xq,
                                    const float2* __restrict__ xa, float* __restrict__ y, int nt,
                                    int ksteps) {
    constexpr int BN = WN * NT * 8;
    constexpr int PT = MQ_BM * MQ_UPS / MQ_THREADS;  // (row, unit) pairs per thread
    static_assert(WM * MT * 16 == MQ_BM, "64 rows per block");
    static_assert(WM * WN * 32 == MQ_THREADS, "128 threads");
    static_assert(PT * MQ_THREADS == MQ_BM * MQ_UPS, "whole pairs per thread");
    extern __shared__ uint4 mq_sm[];
    u32* wq = (u32*)mq_sm;                                   // [BM][RW]
    float2* wab = (float2*)(wq + MQ_BM * MQ_RW);             // [BM][KBP]
    int* wsc = (int*)(wab + MQ_BM * MQ_KBP);                 // [BM][KBP]
    u32* xs = (u32*)(wsc + MQ_BM * MQ_KBP);                  // [2][BN][RW] (high bytes for Q16)
#if ACT_Q16
    u32* xl = xs + 2 * BN * MQ_RW;                           // [2][BN][RW] low bytes
    float2* xas = (float2*)(xl + 2 * BN * MQ_RW);            // [2][BN][KBP]
#else
    float2* xas = (float2*)(xs + 2 * BN * MQ_RW);
#endif
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, c4 = lane & 3;
    const int wm = warp % WM, wn = warp / WM;
    const int row0 = blockIdx.x * MQ_BM, tok0 = blockIdx.y * BN;
    const int step0 = blockIdx.z * ksteps;
    const int nsteps = imin((K + MQ_KT - 1) / MQ_KT, step0 + ksteps);
    const int nblk = K >> 5;

    // This thread's (row, unit) pairs: pair p = tid + i·128, row p / UPS, unit p % UPS.
    const u8* qr[PT];
    const u8* sr[PT];
    const u8* dr[PT];
#pragma unroll
    for (int i = 0; i < PT; i++) {
        const int p = tid + i * MQ_THREADS;
        const long long rr = imin(row0 + p / MQ_UPS, rows - 1);
        qr[i] = Q + rr * qs;
        sr[i] = S + rr * ss;
        dr[i] = D + rr * ds;
    }
    Unit wr[PT];
    auto load_w = [&](int step) {
#pragma unroll
        for (int i = 0; i < PT; i++) {
            const int u = step * MQ_UPS + (tid + i * MQ_THREADS) % MQ_UPS;
            load_unit(wr[i], qr[i], sr[i], dr[i], imin(u, nunits - 1), nunits);
        }
    };
    // The activations of a step: per token KB blocks of 32 codes (Q16: 64 bytes,
    // high then low) and their (d, d·Σq); tokens past nt and blocks past K zeros.
    auto load_x = [&](int step, int buf) {
        const int kb0 = step * MQ_KB;
        constexpr int CPB = ACT_Q16 ? 4 : 2;  // 16-byte pieces per block of 32
        for (int i = tid; i < BN * MQ_KB * CPB; i += MQ_THREADS) {
            const int t = i / (MQ_KB * CPB), rem = i % (MQ_KB * CPB);
            const int kb = rem / CPB, piece = rem % CPB;
            const int tt = tok0 + t, bb = kb0 + kb;
            const bool ok = tt < nt && bb < nblk;
            const long long blk = (long long)imin(tt, nt - 1) * nblk + imin(bb, nblk - 1);
            const i8* src = xq + blk * (32 * CPB / 2) + piece * 16;
#if ACT_Q16
            u32* dst = (piece < 2 ? xs : xl) + (buf * BN + t) * MQ_RW + kb * 8 + (piece & 1) * 4;
#else
            u32* dst = xs + (buf * BN + t) * MQ_RW + kb * 8 + piece * 4;
#endif
            cp_async16(dst, src, ok ? 16 : 0);
        }
        for (int i = tid; i < BN * MQ_KB; i += MQ_THREADS) {
            const int t = i / MQ_KB, kb = i % MQ_KB;
            const int tt = tok0 + t, bb = kb0 + kb;
            const bool ok = tt < nt && bb < nblk;
            const long long blk = (long long)imin(tt, nt - 1) * nblk + imin(bb, nblk - 1);
            cp_async8(xas + (buf * BN + t) * MQ_KBP + kb, xa + blk, ok ? 8 : 0);
        }
        cp_async_commit();
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[mt][n][i] = 0.0f;

    load_w(step0);
    load_x(step0, 0);
    for (int step = step0; step < nsteps; step++) {
        const int buf = (step - step0) & 1;
        // This step's weights (in registers) into shared memory as codes.
#pragma unroll
        for (int i = 0; i < PT; i++) {
            const int p = tid + i * MQ_THREADS;
            const int r = p / MQ_UPS, uu = p % MQ_UPS;
            const int u = step * MQ_UPS + uu;
            u32 c[UE / 4];
            float2 ab[UE / 32];
            int sc[UE / 32];
            unit_codes(wr[i], imin(u, nunits - 1), c, ab, sc);
            const bool ok = u < nunits;
            uint4* dst = (uint4*)(wq + r * MQ_RW + uu * (UE / 4));
#pragma unroll
            for (int j = 0; j < UE / 16; j++)
                dst[j] = ok ? make_uint4(c[4 * j], c[4 * j + 1], c[4 * j + 2], c[4 * j + 3])
                            : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int j = 0; j < UE / 32; j++) {
                wab[r * MQ_KBP + uu * (UE / 32) + j] = ok ? ab[j] : make_float2(0.0f, 0.0f);
                wsc[r * MQ_KBP + uu * (UE / 32) + j] = ok ? sc[j] : 0;
            }
        }
        cp_async_wait_all();
        __syncthreads();
        if (step + 1 < nsteps) {
            // The next step's loads fly while this one multiplies.
            load_x(step + 1, buf ^ 1);
            load_w(step + 1);
        }
        const u32* xb = xs + buf * BN * MQ_RW;
#if ACT_Q16
        const u32* xlb = xl + buf * BN * MQ_RW;
#endif
        const float2* xab = xas + buf * BN * MQ_KBP;
#if ACT_K
        // The K formats: one activation scale per 256 values (this step) and one
        // d per super-block (this step): Σ over the step's blocks of scale · S in
        // integers, then d · d_x once.
        int isum[MT][NT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int i = 0; i < 4; i++) isum[mt][n][i] = 0;
#endif
#pragma unroll 2
        for (int kb = 0; kb < MQ_KB; kb++) {
            u32 a[MT][4];
            float2 wa[MT][2];
#if QFMT == 10 || QFMT == 12
            int ws[MT][2];
#endif
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const int r = (wm * MT + mt) * 16 + g;
                a[mt][0] = wq[r * MQ_RW + kb * 8 + c4];
                a[mt][1] = wq[(r + 8) * MQ_RW + kb * 8 + c4];
                a[mt][2] = wq[r * MQ_RW + kb * 8 + 4 + c4];
                a[mt][3] = wq[(r + 8) * MQ_RW + kb * 8 + 4 + c4];
                wa[mt][0] = wab[r * MQ_KBP + kb];
                wa[mt][1] = wab[(r + 8) * MQ_KBP + kb];
#if QFMT == 10 || QFMT == 12
                ws[mt][0] = wsc[r * MQ_KBP + kb];
                ws[mt][1] = wsc[(r + 8) * MQ_KBP + kb];
#endif
            }
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const int t = (wn * NT + n) * 8;
                const u32 b0 = xb[(t + g) * MQ_RW + kb * 8 + c4];
                const u32 b1 = xb[(t + g) * MQ_RW + kb * 8 + 4 + c4];
#if ACT_Q16
                const u32 l0 = xlb[(t + g) * MQ_RW + kb * 8 + c4];
                const u32 l1 = xlb[(t + g) * MQ_RW + kb * 8 + 4 + c4];
#endif
                const float2 x0 = xab[(t + 2 * c4) * MQ_KBP + kb];
                const float2 x1 = xab[(t + 2 * c4 + 1) * MQ_KBP + kb];
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
#if QFMT == 12 && ACT_Q16
                    // 16-bit codes: each half of A against the high and the low
                    // bytes; the 8-bit scales meet the sums (up to 2^24) as floats.
                    int h0[4], l0v[4], h1[4], l1v[4];
                    const u32 alo[4] = {a[mt][0], a[mt][1], 0u, 0u};
                    const u32 ahi[4] = {0u, 0u, a[mt][2], a[mt][3]};
                    mma_s8s8(h0, alo, b0, b1);
                    mma_s8u8(l0v, alo, l0, l1);
                    mma_s8s8(h1, ahi, b0, b1);
                    mma_s8u8(l1v, ahi, l0, l1);
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const int sv = ws[mt][i >> 1];
                        const float s0 = (float)(i8)(sv & 0xFF), s1 = (float)(i8)((sv >> 8) & 0xFF);
                        const float2 x2 = (i & 1) ? x1 : x0;
                        acc[mt][n][i] += wa[mt][i >> 1].x * x2.x *
                                         (s0 * (float)(h0[i] * 256 + l0v[i]) + s1 * (float)(h1[i] * 256 + l1v[i]));
                    }
#elif QFMT == 10 && ACT_Q16
                    // 16-bit codes, a scale per 32 activations: per block
                    // d · scale · d_x · S − dmin · min · d_x·Σq.
                    int ch[4], cl[4];
                    mma_s8s8(ch, a[mt], b0, b1);
                    mma_s8u8(cl, a[mt], l0, l1);
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const float2 w2 = wa[mt][i >> 1];
                        const float2 x2 = (i & 1) ? x1 : x0;
                        acc[mt][n][i] += w2.x * (float)ws[mt][i >> 1] * x2.x * (float)(ch[i] * 256 + cl[i]) +
                                         w2.y * x2.y;
                    }
#elif QFMT == 12
                    int c0[4], c1[4];
                    const u32 alo[4] = {a[mt][0], a[mt][1], 0u, 0u};
                    const u32 ahi[4] = {0u, 0u, a[mt][2], a[mt][3]};
                    mma_s8s8(c0, alo, b0, b1);
                    mma_s8s8(c1, ahi, b0, b1);
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const int sv = ws[mt][i >> 1];
                        const int s0 = (int)(i8)(sv & 0xFF), s1 = (int)(i8)((sv >> 8) & 0xFF);
                        isum[mt][n][i] += s0 * c0[i] + s1 * c1[i];
                    }
#elif QFMT == 10
                    int cc[4];
                    mma_s8s8(cc, a[mt], b0, b1);
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        isum[mt][n][i] += ws[mt][i >> 1] * cc[i];
                        acc[mt][n][i] += wa[mt][i >> 1].y * ((i & 1) ? x1 : x0).y;
                    }
#else
                    float s[4];
#if ACT_Q16
                    int ch[4], cl[4];
                    mma_s8s8(ch, a[mt], b0, b1);
                    mma_s8u8(cl, a[mt], l0, l1);
#pragma unroll
                    for (int i = 0; i < 4; i++) s[i] = (float)(ch[i] * 256 + cl[i]);
#else
                    int cc[4];
                    mma_s8s8(cc, a[mt], b0, b1);
#pragma unroll
                    for (int i = 0; i < 4; i++) s[i] = i2f_small(cc[i]);
#endif
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const float2 w2 = wa[mt][i >> 1];
                        const float2 x2 = (i & 1) ? x1 : x0;
#if MQ_MIN
                        acc[mt][n][i] += w2.x * x2.x * s[i] + w2.y * x2.y;
#else
                        acc[mt][n][i] += w2.x * x2.x * s[i];
#endif
                    }
#endif
                }
            }
        }
#if ACT_K
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int r = (wm * MT + mt) * 16 + g + (i >> 1) * 8;
                    const int t = (wn * NT + n) * 8 + 2 * c4 + (i & 1);
                    acc[mt][n][i] += wab[r * MQ_KBP].x * xab[t * MQ_KBP].x * (float)isum[mt][n][i];
                }
#endif
        __syncthreads();
    }
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int r = row0 + (wm * MT + mt) * 16 + g + (i >> 1) * 8;
                const int t = tok0 + (wn * NT + n) * 8 + 2 * c4 + (i & 1);
                if (r < rows && t < nt) {
                    if (gridDim.z > 1)
                        atomicAdd(y + (long long)t * rows + r, acc[mt][n][i]);
                    else
                        y[(long long)t * rows + r] = acc[mt][n][i];
                }
            }
}

#define MMQ_ENTRY(NAME, WM, WN, MT, NT)                                                            \
    extern "C" __global__ void __launch_bounds__(MQ_THREADS)                                       \
        NAME(const u8* Q, long long qs, const u8* S, long long ss, const u8* D, long long ds,      \
             int rows, int nunits, int K, const i8* xq, const float2* xa, float* y, int nt,        \
             int ksteps) {                                                                         \
        PDL_ENTRY(Q, S, D, xq, xa, y);                                                             \
        mmq<WM, WN, MT, NT>(Q, qs, S, ss, D, ds, rows, nunits, K, xq, xa, y, nt, ksteps);          \
    }
MMQ_ENTRY(mmq_n8, 4, 1, 1, 1)
MMQ_ENTRY(mmq_n16, 4, 1, 1, 2)
MMQ_ENTRY(mmq_n32, 4, 1, 1, 4)
MMQ_ENTRY(mmq_n64, 2, 2, 2, 4)
#endif
