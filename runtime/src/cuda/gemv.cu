// quern's fused dequantise-GEMV kernels: y[t][r] = dot(W row r, x[t]) for up to
// MAXB activation rows, reading W in its GGUF block layout.
//
// The host prepends `#define QFMT <n>` (the format, numbered as in cuda/mod.rs)
// and compiles one module per format. No CUDA headers are needed: half-precision
// scales are converted with inline PTX, so NVRTC works without a toolkit's include
// directory.
//
// Work split: a block of WARPS warps; each warp owns R consecutive rows. A row is
// walked in chunks of CH elements (a whole number of format blocks, a multiple of
// 16 bytes). The warp copies each chunk of its R rows into shared memory with
// 16-byte cp.async loads (coalesced, double-buffered so the next chunk is in
// flight while this one is decoded), then every lane decodes pieces of 8
// consecutive weights from shared memory and multiplies them with the matching 8
// activations of every token. Each activation load serves R rows. Partial sums
// are reduced across the warp with shuffles.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef signed char i8;

// Warps per block, and rows per warp for each compiled batch size (RB<b>); the
// host defines them (see mod.rs), these are the defaults.
#ifndef WARPS
#define WARPS 4
#endif
#ifndef RB1
#define RB1 1
#endif
#ifndef RB2
#define RB2 1
#endif
#ifndef RB4
#define RB4 2
#endif
#ifndef RB8
#define RB8 4
#endif
#ifndef RB16
#define RB16 4
#endif

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ float bf2f(u16 h) { return __uint_as_float(((u32)h) << 16); }
__device__ __forceinline__ u16 ld16(const u8* p) { return *(const u16*)p; }
__device__ __forceinline__ u32 ld32(const u8* p) { return *(const u32*)p; }
// 4 bytes at a 2-byte aligned address.
__device__ __forceinline__ u32 ld32a2(const u8* p) {
    return (u32)ld16(p) | ((u32)ld16(p + 2) << 16);
}
// Small unsigned integer (< 2^23) to float without an I2F: the magic-number trick.
__device__ __forceinline__ float u2f(u32 v) {
    return __uint_as_float(0x4B000000u | v) - 8388608.0f;
}

// The IQ4 grid as 16 signed bytes in four words; looked up with byte permutes so
// divergent indices cost no shared or constant memory traffic.
__device__ __forceinline__ float iq4_grid(u32 q) {
    const u32 t0 = 0xBFAD9881u;  // -127 -104 -83 -65
    const u32 t1 = 0xF6EADDCFu;  // -49 -35 -22 -10
    const u32 t2 = 0x26190D01u;  // 1 13 25 38
    const u32 t3 = 0x71594535u;  // 53 69 89 113
    u32 lo = __byte_perm(t0, t1, q & 7);
    u32 hi = __byte_perm(t2, t3, q & 7);
    u32 b = (q & 8) ? hi : lo;
    return (float)(i8)(b & 0xFF);
}

// Per format: BS elements per block, TS bytes per block, CH elements per chunk,
// and deq8(chunk, e, w): the 8 weights starting at element e (a multiple of 8)
// of the chunk held in shared memory.
#if QFMT == 0  // F32
#define BS 1
#define TS 4
#define CH 512
__device__ __forceinline__ void deq8(const u8* c, int e, float* w) {
    const float4* p = (const float4*)(c + e * 4);
    float4 a = p[0], b = p[1];
    w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
    w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
}
#elif QFMT == 1 || QFMT == 2  // F16, BF16
#define BS 1
#define TS 2
#define CH 1024
__device__ __forceinline__ void deq8(const u8* c, int e, float* w) {
    uint4 v = *(const uint4*)(c + e * 2);
    u32 u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
#if QFMT == 1
        w[2 * i] = h2f((u16)(u[i] & 0xFFFF));
        w[2 * i + 1] = h2f((u16)(u[i] >> 16));
#else
        w[2 * i] = __uint_as_float(u[i] << 16);
        w[2 * i + 1] = __uint_as_float(u[i] & 0xFFFF0000u);
#endif
    }
}
#elif QFMT == 3 || QFMT == 13  // Q4_0, IQ4_NL: d, 16 bytes of nibbles (low: 0..16, high: 16..32)
#define BS 32
#define TS 18
#define CH 2048
__device__ __forceinline__ void deq8(const u8* c, int e, float* w) {
    const u8* b = c + (e >> 5) * TS;
    int j = (e >> 3) & 3;
    float d = h2f(ld16(b));
    const u8* q = b + 2 + (j & 1) * 8;
    u32 q0 = ld32a2(q), q1 = ld32a2(q + 4);
    int sh = (j >> 1) * 4;
    q0 >>= sh;
    q1 >>= sh;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        u32 a = (q0 >> (8 * i)) & 15, bb = (q1 >> (8 * i)) & 15;
#if QFMT == 3
        w[i] = d * (u2f(a) - 8.0f);
        w[4 + i] = d * (u2f(bb) - 8.0f);
#else
        w[i] = d * iq4_grid(a);
        w[4 + i] = d * iq4_grid(bb);
#endif
    }
}
#elif QFMT == 4  // Q4_1: d, m, nibbles
#define BS 32
#define TS 20
#define CH 2048
__device__ __forceinline__ void deq8(const u8* c, int e, float* w) {
    const u8* b = c + (e >> 5) * TS;
    int j = (e >> 3) & 3;
    float d = h2f(ld16(b)), m = h2f(ld16(b + 2));
    const u8* q = b + 4 + (j & 1) * 8;
    u32 q0 = ld32(q), q1 = ld32(q + 4);
    int sh = (j >> 1) * 4;
    q0 >>= sh;
    q1 >>= sh;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        w[i] = fmaf(d, u2f((q0 >> (8 * i)) & 15), m);
        w[4 + i] = fmaf(d, u2f((q1 >> (8 * i)) & 15), m);
    }
}
#elif QFMT == 5 || QFMT == 6  // Q5_0 (d, qh, qs), Q5_1 (d, m, qh, qs)
#define BS 32
#if QFMT == 5
#define TS 22
#define QH 2
#else
#define TS 24
#define QH 4
#endif
#define CH 2048
__device__ __forceinline__ void deq8(const u8* c, int e, float* w) {
    const u8* b = c + (e >> 5) * TS;
    int l = e & 31;
    int j = l >> 3;
    float d = h2f(ld16(b));
#if QFMT == 5
    float m = -16.0f * d;
#else
    float m = h2f(ld16(b + 2));
#endif
    u32 qh = ld32a2(b + QH) >> l;
    const u8* q = b + QH + 4 + (j & 1) * 8;
    u32 q0 = ld32a2(q), q1 = ld32a2(q + 4);
    int sh = (j >> 1) * 4;
    q0 >>= sh;
    q1 >>= sh;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        u32 a = ((q0 >> (8 * i)) & 15) | (((qh >> i) & 1) << 4);
        u32 bb = ((q1 >> (8 * i)) & 15) | (((qh >> (4 + i)) & 1) << 4);
        w[i] = fmaf(d, u2f(a), m);
        w[4 + i] = fmaf(d, u2f(bb), m);
    }
}
#elif QFMT == 7  // Q8_0: d, 32 signed bytes
#define BS 32
#define TS 34
#define CH 2048
__device__ __forceinline__ void deq8(const u8* c, int e, float* w) {
    const u8* b = c + (e >> 5) * TS;
    float d = h2f(ld16(b));
    const u8* q = b + 2 + (e & 31);
    u32 q0 = ld32a2(q), q1 = ld32a2(q + 4);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        w[i] = d * (float)(int)(i8)((q0 >> (8 * i)) & 0xFF);
        w[4 + i] = d * (float)(int)(i8)((q1 >> (8 * i)) & 0xFF);
    }
}
#elif QFMT == 8  // Q2_K: scales[16], qs[64], d, dmin
#define BS 256
#define TS 84
#define CH 2048
__device__ __forceinline__ void deq8(const u8* c, int e, float* w) {
    const u8* b = c + (e >> 8) * TS;
    int el = e & 255;
    u32 sc = b[el >> 4];
    float d = h2f(ld16(b + 80)), dmin = h2f(ld16(b + 82));
    float dl = d * u2f(sc & 15), ml = -dmin * u2f(sc >> 4);
    const u8* q = b + 16 + (el >> 7) * 32 + (el & 31);
    int sh = ((el >> 5) & 3) * 2;
    u32 q0 = ld32(q) >> sh, q1 = ld32(q + 4) >> sh;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        w[i] = fmaf(dl, u2f((q0 >> (8 * i)) & 3), ml);
        w[4 + i] = fmaf(dl, u2f((q1 >> (8 * i)) & 3), ml);
    }
}
#elif QFMT == 9  // Q3_K: hmask[32], qs[64], scales[12], d
#define BS 256
#define TS 110
#define CH 2048
__device__ __forceinline__ void deq8(const u8* c, int e, float* w) {
    const u8* b = c + (e >> 8) * TS;
    int el = e & 255;
    int j = el >> 4;
    const u8* s = b + 96;
    int low = (s[j & 7] >> (4 * (j >> 3))) & 15;
    int high = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
    float dl = h2f(ld16(b + 108)) * (float)((low | (high << 4)) - 32);
    const u8* q = b + 32 + (el >> 7) * 32 + (el & 31);
    int sh = ((el >> 5) & 3) * 2;
    u32 q0 = ld32a2(q) >> sh, q1 = ld32a2(q + 4) >> sh;
    const u8* hm = b + (el & 31);
    int hs = el >> 5;
    u32 h0 = ld32a2(hm) >> hs, h1 = ld32a2(hm + 4) >> hs;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        // A clear high bit subtracts 4.
        float a = u2f(((q0 >> (8 * i)) & 3) | (((h0 >> (8 * i)) & 1) << 2)) - 4.0f;
        float bb = u2f(((q1 >> (8 * i)) & 3) | (((h1 >> (8 * i)) & 1) << 2)) - 4.0f;
        w[i] = dl * a;
        w[4 + i] = dl * bb;
    }
}
#elif QFMT == 10 || QFMT == 11  // Q4_K (d, dmin, scales[12], qs[128]); Q5_K adds qh[32]
#define BS 256
#if QFMT == 10
#define TS 144
#define QS 16
#else
#define TS 176
#define QS 48
#endif
#define CH 2048
__device__ __forceinline__ void deq8(const u8* c, int e, float* w) {
    const u8* b = c + (e >> 8) * TS;
    int el = e & 255;
    int j = el >> 5;
    const u8* s = b + 4;
    u32 sc, mn;
    if (j < 4) {
        sc = s[j] & 63;
        mn = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    float dl = h2f(ld16(b)) * u2f(sc), ml = -h2f(ld16(b + 2)) * u2f(mn);
    int l = el & 31;
    const u8* q = b + QS + (el >> 6) * 32 + l;
    int sh = (j & 1) * 4;
    uint2 qq = *(const uint2*)q;
    u32 q0 = qq.x >> sh, q1 = qq.y >> sh;
#if QFMT == 11
    uint2 hh = *(const uint2*)(b + 16 + l);
    u32 h0 = hh.x >> j, h1 = hh.y >> j;
#endif
#pragma unroll
    for (int i = 0; i < 4; i++) {
        u32 a = (q0 >> (8 * i)) & 15, bb = (q1 >> (8 * i)) & 15;
#if QFMT == 11
        a |= ((h0 >> (8 * i)) & 1) << 4;
        bb |= ((h1 >> (8 * i)) & 1) << 4;
#endif
        w[i] = fmaf(dl, u2f(a), ml);
        w[4 + i] = fmaf(dl, u2f(bb), ml);
    }
}
#elif QFMT == 12  // Q6_K: ql[128], qh[64], scales[16] (i8), d
#define BS 256
#define TS 210
#define CH 2048
__device__ __forceinline__ void deq8(const u8* c, int e, float* w) {
    const u8* b = c + (e >> 8) * TS;
    int el = e & 255;
    float dl = h2f(ld16(b + 208)) * (float)(int)(i8)b[192 + (el >> 4)];
    const u8* ql = b + (el >> 7) * 64 + (el & 63);
    int ls = ((el >> 6) & 1) * 4;
    u32 l0 = ld32a2(ql) >> ls, l1 = ld32a2(ql + 4) >> ls;
    const u8* qh = b + 128 + (el >> 7) * 32 + (el & 31);
    int hs = ((el >> 5) & 3) * 2;
    u32 h0 = ld32a2(qh) >> hs, h1 = ld32a2(qh + 4) >> hs;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        u32 a = ((l0 >> (8 * i)) & 15) | (((h0 >> (8 * i)) & 3) << 4);
        u32 bb = ((l1 >> (8 * i)) & 15) | (((h1 >> (8 * i)) & 3) << 4);
        w[i] = dl * (u2f(a) - 32.0f);
        w[4 + i] = dl * (u2f(bb) - 32.0f);
    }
}
#elif QFMT == 14  // IQ4_XS: d, scales_h (u16), scales_l[4], qs[128]
#define BS 256
#define TS 136
#define CH 2048
__device__ __forceinline__ void deq8(const u8* c, int e, float* w) {
    const u8* b = c + (e >> 8) * TS;
    int el = e & 255;
    int j = el >> 5;
    u32 sh = ld16(b + 2);
    u32 low = (b[4 + (j >> 1)] >> (4 * (j & 1))) & 15;
    int sc = (int)(low | (((sh >> (2 * j)) & 3) << 4)) - 32;
    float dl = h2f(ld16(b)) * (float)sc;
    int l = el & 31;
    uint2 qq = *(const uint2*)(b + 8 + j * 16 + (l & 15));
    int s = (l >> 4) * 4;
    u32 q0 = qq.x >> s, q1 = qq.y >> s;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        w[i] = dl * iq4_grid((q0 >> (8 * i)) & 15);
        w[4 + i] = dl * iq4_grid((q1 >> (8 * i)) & 15);
    }
}
#else
#error "unknown QFMT"
#endif


// ---- The 8-bit-activation path -------------------------------------------------
// For the integer block formats the activations are first quantised to 8 bits in
// blocks of 32 (x ≈ dx · xq, dx = amax / 127, rounded half away from zero: the CPU
// backend's rule), so that 4 products take one dp4a. wq8(chunk, e) gives the 8
// codes of the piece at e as 8 bytes (q0, q1) and two multipliers: the piece's dot
// product is dx · (a · Σ q·xq + b · Σ xq).
struct WQ {
    u32 q0, q1;
    float a, b;
};
// Bits 0..3 of v to the low bit of bytes 0..3.
__device__ __forceinline__ u32 spread4(u32 v) { return ((v & 15u) * 0x00204081u) & 0x01010101u; }

#if QFMT == 7  // Q8_0
#define HAS_INT 1
__device__ __forceinline__ WQ wq8(const u8* c, int e) {
    const u8* b = c + (e >> 5) * TS;
    const u8* q = b + 2 + (e & 31);
    WQ w;
    w.q0 = ld32a2(q);
    w.q1 = ld32a2(q + 4);
    w.a = h2f(ld16(b));
    w.b = 0.0f;
    return w;
}
#elif QFMT == 3 || QFMT == 4  // Q4_0, Q4_1
#define HAS_INT 1
__device__ __forceinline__ WQ wq8(const u8* c, int e) {
    const u8* b = c + (e >> 5) * TS;
    int j = (e >> 3) & 3;
    int sh = (j >> 1) * 4;
    WQ w;
#if QFMT == 3
    const u8* q = b + 2 + (j & 1) * 8;
    w.a = h2f(ld16(b));
    w.b = -8.0f * w.a;
#else
    const u8* q = b + 4 + (j & 1) * 8;
    w.a = h2f(ld16(b));
    w.b = h2f(ld16(b + 2));
#endif
    w.q0 = (ld32a2(q) >> sh) & 0x0F0F0F0Fu;
    w.q1 = (ld32a2(q + 4) >> sh) & 0x0F0F0F0Fu;
    return w;
}
#elif QFMT == 5 || QFMT == 6  // Q5_0, Q5_1
#define HAS_INT 1
__device__ __forceinline__ WQ wq8(const u8* c, int e) {
    const u8* b = c + (e >> 5) * TS;
    int l = e & 31;
    int j = l >> 3;
    u32 qh = ld32a2(b + QH) >> l;
    const u8* q = b + QH + 4 + (j & 1) * 8;
    int sh = (j >> 1) * 4;
    WQ w;
    w.q0 = ((ld32a2(q) >> sh) & 0x0F0F0F0Fu) | (spread4(qh) << 4);
    w.q1 = ((ld32a2(q + 4) >> sh) & 0x0F0F0F0Fu) | (spread4(qh >> 4) << 4);
    w.a = h2f(ld16(b));
#if QFMT == 5
    w.b = -16.0f * w.a;
#else
    w.b = h2f(ld16(b + 2));
#endif
    return w;
}
#elif QFMT == 8  // Q2_K
#define HAS_INT 1
__device__ __forceinline__ WQ wq8(const u8* c, int e) {
    const u8* b = c + (e >> 8) * TS;
    int el = e & 255;
    u32 sc = b[el >> 4];
    const u8* q = b + 16 + (el >> 7) * 32 + (el & 31);
    int sh = ((el >> 5) & 3) * 2;
    WQ w;
    w.q0 = (ld32(q) >> sh) & 0x03030303u;
    w.q1 = (ld32(q + 4) >> sh) & 0x03030303u;
    w.a = h2f(ld16(b + 80)) * u2f(sc & 15);
    w.b = -h2f(ld16(b + 82)) * u2f(sc >> 4);
    return w;
}
#elif QFMT == 9  // Q3_K
#define HAS_INT 1
__device__ __forceinline__ WQ wq8(const u8* c, int e) {
    const u8* b = c + (e >> 8) * TS;
    int el = e & 255;
    int j = el >> 4;
    const u8* s = b + 96;
    int low = (s[j & 7] >> (4 * (j >> 3))) & 15;
    int high = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
    const u8* q = b + 32 + (el >> 7) * 32 + (el & 31);
    int sh = ((el >> 5) & 3) * 2;
    const u8* hm = b + (el & 31);
    int hs = el >> 5;
    WQ w;
    // Codes 0..7 (low bits plus 4 when the high bit is set), less 4.
    w.q0 = ((ld32a2(q) >> sh) & 0x03030303u) | (((ld32a2(hm) >> hs) & 0x01010101u) << 2);
    w.q1 = ((ld32a2(q + 4) >> sh) & 0x03030303u) | (((ld32a2(hm + 4) >> hs) & 0x01010101u) << 2);
    w.a = h2f(ld16(b + 108)) * (float)((low | (high << 4)) - 32);
    w.b = -4.0f * w.a;
    return w;
}
#elif QFMT == 10 || QFMT == 11  // Q4_K, Q5_K
#define HAS_INT 1
__device__ __forceinline__ WQ wq8(const u8* c, int e) {
    const u8* b = c + (e >> 8) * TS;
    int el = e & 255;
    int j = el >> 5;
    const u8* s = b + 4;
    u32 sc, mn;
    if (j < 4) {
        sc = s[j] & 63;
        mn = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    int l = el & 31;
    uint2 qq = *(const uint2*)(b + QS + (el >> 6) * 32 + l);
    int sh = (j & 1) * 4;
    WQ w;
    w.q0 = (qq.x >> sh) & 0x0F0F0F0Fu;
    w.q1 = (qq.y >> sh) & 0x0F0F0F0Fu;
#if QFMT == 11
    uint2 hh = *(const uint2*)(b + 16 + l);
    w.q0 |= ((hh.x >> j) & 0x01010101u) << 4;
    w.q1 |= ((hh.y >> j) & 0x01010101u) << 4;
#endif
    w.a = h2f(ld16(b)) * u2f(sc);
    w.b = -h2f(ld16(b + 2)) * u2f(mn);
    return w;
}
#elif QFMT == 12  // Q6_K
#define HAS_INT 1
__device__ __forceinline__ WQ wq8(const u8* c, int e) {
    const u8* b = c + (e >> 8) * TS;
    int el = e & 255;
    const u8* ql = b + (el >> 7) * 64 + (el & 63);
    int ls = ((el >> 6) & 1) * 4;
    const u8* qh = b + 128 + (el >> 7) * 32 + (el & 31);
    int hs = ((el >> 5) & 3) * 2;
    WQ w;
    w.q0 = ((ld32a2(ql) >> ls) & 0x0F0F0F0Fu) | (((ld32a2(qh) >> hs) & 0x03030303u) << 4);
    w.q1 = ((ld32a2(ql + 4) >> ls) & 0x0F0F0F0Fu) | (((ld32a2(qh + 4) >> hs) & 0x03030303u) << 4);
    w.a = h2f(ld16(b + 208)) * (float)(int)(i8)b[192 + (el >> 4)];
    w.b = -32.0f * w.a;
    return w;
}
#else
#define HAS_INT 0
#endif

// Bytes of one chunk (a multiple of 16 for every format above).
#define CHB (CH / BS * TS)

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    u32 s = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_wait1() { asm volatile("cp.async.wait_group 1;\n" ::); }

// W: rows of `stride` bytes (a multiple of 16, the tail padded); x: nt rows of K
// floats; y: nt rows of `rows` floats. nt <= B. K is a whole number of blocks and
// a multiple of 8.
// One piece (8 weights at element e of chunk c) of each of the warp's R rows
// against every token. Tokens past nt read the last real token (so every load is
// unconditional and can be issued early); their sums are never stored.
template <int B, int R, bool Q8>
__device__ __forceinline__ void piece(const u8* cur, int e, int c, int K, int nt,
                                      const float* __restrict__ x, const i8* __restrict__ xq,
                                      const float* __restrict__ xd, float (&acc)[R][B]) {
#if HAS_INT
    if (Q8) {
        WQ w[R];
#pragma unroll
        for (int r = 0; r < R; r++) w[r] = wq8(cur + r * CHB, e);
#pragma unroll
        for (int t = 0; t < B; t++) {
            const int tt = t < nt ? t : nt - 1;
            long long xi = (long long)tt * K + (long long)c * CH + e;
            uint2 xv = __ldg((const uint2*)(xq + xi));
            float dx = __ldg(xd + (xi >> 5));
            int sx = __dp4a(0x01010101, (int)xv.x, __dp4a(0x01010101, (int)xv.y, 0));
            // |sx| < 2^11: the magic-number conversion, not the slow I2F.
            float dsx = dx * (__int_as_float(0x4B400000 + sx) - 12582912.0f);
#pragma unroll
            for (int r = 0; r < R; r++) {
                int si = __dp4a((int)w[r].q0, (int)xv.x, __dp4a((int)w[r].q1, (int)xv.y, 0));
                // |si| < 2^17: exact through the magic-number conversion.
                float sf = __int_as_float(0x4B400000 + si) - 12582912.0f;
                acc[r][t] = fmaf(w[r].a * dx, sf, fmaf(w[r].b, dsx, acc[r][t]));
            }
        }
        return;
    }
#endif
    float w[R][8];
#pragma unroll
    for (int r = 0; r < R; r++) deq8(cur + r * CHB, e, w[r]);
#pragma unroll
    for (int t = 0; t < B; t++) {
        const int tt = t < nt ? t : nt - 1;
        const float4* xp = (const float4*)(x + (long long)tt * K + (long long)c * CH + e);
        float4 a = __ldg(xp), b = __ldg(xp + 1);
#pragma unroll
        for (int r = 0; r < R; r++) {
            float s = acc[r][t];
            s = fmaf(w[r][0], a.x, s);
            s = fmaf(w[r][1], a.y, s);
            s = fmaf(w[r][2], a.z, s);
            s = fmaf(w[r][3], a.w, s);
            s = fmaf(w[r][4], b.x, s);
            s = fmaf(w[r][5], b.y, s);
            s = fmaf(w[r][6], b.z, s);
            s = fmaf(w[r][7], b.w, s);
            acc[r][t] = s;
        }
    }
}

#ifndef PIECE_UNROLL
#define PIECE_UNROLL 4
#endif

// Q8: the 8-bit-activation path (xq: nt rows of K codes, xd: their scales, one per
// 32); otherwise float activations x.
template <int B, int R, bool Q8>
__device__ __forceinline__ void gemv(const u8* __restrict__ W, long long stride, int rows, int K,
                                     const float* __restrict__ x, const i8* __restrict__ xq,
                                     const float* __restrict__ xd, float* __restrict__ y, int nt) {
    extern __shared__ uint4 smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * WARPS + warp) * R;
    if (row0 >= rows) return;
    u8* buf = (u8*)smem + warp * (2 * R * CHB);
    const int nchunks = (K + CH - 1) / CH;

    auto issue = [&](int c) {
        u8* dst = buf + (c & 1) * (R * CHB);
        int elems = imin(CH, K - c * CH);
        int n16 = (elems / BS * TS + 15) >> 4;
#pragma unroll
        for (int r = 0; r < R; r++) {
            // Rows past the end re-read the last row; their sums are never stored.
            int rr = imin(row0 + r, rows - 1);
            const u8* src = W + (long long)rr * stride + (long long)c * CHB;
            for (int i = lane; i < n16; i += 32) cp_async16(dst + r * CHB + i * 16, src + i * 16);
        }
        cp_commit();
    };

    float acc[R][B];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < B; t++) acc[r][t] = 0.0f;

    issue(0);
    for (int c = 0; c < nchunks; c++) {
        if (c + 1 < nchunks) issue(c + 1);
        else cp_commit();
        cp_wait1();
        __syncwarp();
        const u8* cur = buf + (c & 1) * (R * CHB);
        const int elems = imin(CH, K - c * CH);
        if (elems == CH) {
            // A whole chunk: a known trip count, unrolled so that the loads of
            // several pieces are in flight at once.
#pragma unroll(PIECE_UNROLL)
            for (int e = lane * 8; e < CH; e += 256)
                piece<B, R, Q8>(cur, e, c, K, nt, x, xq, xd, acc);
        } else {
            for (int e = lane * 8; e < elems; e += 256)
                piece<B, R, Q8>(cur, e, c, K, nt, x, xq, xd, acc);
        }
        // Every lane is done reading this buffer before the next issue overwrites it.
        __syncwarp();
    }

#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < B; t++) {
            float s = acc[r][t];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            acc[r][t] = s;
        }
    // Lane i stores output i of the R*B sums (all lanes hold all sums).
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < B; t++) {
            if (lane == ((r * B + t) & 31) && t < nt && row0 + r < rows)
                y[(long long)t * rows + row0 + r] = acc[r][t];
        }
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
    gemv_b1(const u8* W, long long stride, int rows, int K, const float* x, float* y, int nt) {
    PDL_ENTRY(W, x, y);
    gemv<1, RB1, false>(W, stride, rows, K, x, nullptr, nullptr, y, nt);
}
extern "C" __global__ void __launch_bounds__(WARPS * 32)
    gemv_b2(const u8* W, long long stride, int rows, int K, const float* x, float* y, int nt) {
    PDL_ENTRY(W, x, y);
    gemv<2, RB2, false>(W, stride, rows, K, x, nullptr, nullptr, y, nt);
}
extern "C" __global__ void __launch_bounds__(WARPS * 32)
    gemv_b4(const u8* W, long long stride, int rows, int K, const float* x, float* y, int nt) {
    PDL_ENTRY(W, x, y);
    gemv<4, RB4, false>(W, stride, rows, K, x, nullptr, nullptr, y, nt);
}
extern "C" __global__ void __launch_bounds__(WARPS * 32)
    gemv_b8(const u8* W, long long stride, int rows, int K, const float* x, float* y, int nt) {
    PDL_ENTRY(W, x, y);
    gemv<8, RB8, false>(W, stride, rows, K, x, nullptr, nullptr, y, nt);
}
extern "C" __global__ void __launch_bounds__(WARPS * 32)
    gemv_b16(const u8* W, long long stride, int rows, int K, const float* x, float* y, int nt) {
    PDL_ENTRY(W, x, y);
    gemv<16, RB16, false>(W, stride, rows, K, x, nullptr, nullptr, y, nt);
}
#if HAS_INT
extern "C" __global__ void __launch_bounds__(WARPS * 32)
    gemvq_b1(const u8* W, long long stride, int rows, int K, const i8* xq, const float* xd, float* y,
               int nt) {
    PDL_ENTRY(W, xq, xd, y);
    gemv<1, RB1, true>(W, stride, rows, K, nullptr, xq, xd, y, nt);
}
extern "C" __global__ void __launch_bounds__(WARPS * 32)
    gemvq_b2(const u8* W, long long stride, int rows, int K, const i8* xq, const float* xd, float* y,
               int nt) {
    PDL_ENTRY(W, xq, xd, y);
    gemv<2, RB2, true>(W, stride, rows, K, nullptr, xq, xd, y, nt);
}
extern "C" __global__ void __launch_bounds__(WARPS * 32)
    gemvq_b4(const u8* W, long long stride, int rows, int K, const i8* xq, const float* xd, float* y,
               int nt) {
    PDL_ENTRY(W, xq, xd, y);
    gemv<4, RB4, true>(W, stride, rows, K, nullptr, xq, xd, y, nt);
}
extern "C" __global__ void __launch_bounds__(WARPS * 32)
    gemvq_b8(const u8* W, long long stride, int rows, int K, const i8* xq, const float* xd, float* y,
               int nt) {
    PDL_ENTRY(W, xq, xd, y);
    gemv<8, RB8, true>(W, stride, rows, K, nullptr, xq, xd, y, nt);
}
extern "C" __global__ void __launch_bounds__(WARPS * 32)
    gemvq_b16(const u8* W, long long stride, int rows, int K, const i8* xq, const float* xd, float* y,
               int nt) {
    PDL_ENTRY(W, xq, xd, y);
    gemv<16, RB16, true>(W, stride, rows, K, nullptr, xq, xd, y, nt);
}

// x (n rows of K floats, K a multiple of 32) to 8-bit codes and one scale per 32:
// one warp per block of 32.
extern "C" __global__ void quantize_act(const float* __restrict__ x, long long nblocks,
                                        i8* __restrict__ xq, float* __restrict__ xd) {
    PDL_ENTRY(x, xq, xd);
    long long blk = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (blk >= nblocks) return;
    float v = x[blk * 32 + lane];
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    float d = amax / 127.0f;
    float id = d > 0.0f ? 1.0f / d : 0.0f;
    xq[blk * 32 + lane] = (i8)(int)roundf(v * id);
    if (lane == 0) xd[blk] = d;
}
#endif
