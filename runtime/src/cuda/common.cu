// Shared by every module (prepended to gemv.cu and decode.cu).
//
// Programmatic dependent launch (sm_90 and later; launches made with the
// attribute, see cuda/launch.rs): a kernel may start while the one before it on
// the stream is still running. pdl_trigger lets the next kernel's blocks be
// scheduled; pdl_wait blocks until the previous kernel has finished and its
// writes are visible. Every kernel calls pdl_wait before it reads anything an
// earlier kernel wrote and before it writes anything (an earlier kernel may still
// read it), and does so first thing: issuing a product's first weight loads
// before the wait was tried on the H200 and its activations (read with __ldg)
// came back stale in the Q8_0 and AWQ decode tests, even with the pointers
// laundered as below; waiting at the start passed them (cause not isolated).
// Without the attribute, or before sm_90, both are no-ops.
__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
// After pdl_wait, the kernel's pointers pass through an empty asm, so that
// the compiler cannot move a load through them above the wait: __restrict__
// tells it no one else writes that memory and __ldg that it never changes,
// both untrue while the previous kernel runs.
template <class T>
__device__ __forceinline__ void pdl_launder_one(T& p) {
    asm volatile("" : "+l"(p));
}
template <class... T>
__device__ __forceinline__ void pdl_launder(T&... p) {
    (pdl_launder_one(p), ...);
}
// The start of every kernel; every pointer parameter it reads or writes
// through is listed. The trigger comes after the wait, so that the next kernel starts only once
// the previous one has finished: never more than two kernels overlap, and no
// kernel's blocks sit waiting on a grid two launches back.
#define PDL_ENTRY(...)               \
    do {                             \
        pdl_wait();                  \
        pdl_launder(__VA_ARGS__);    \
        pdl_trigger();               \
    } while (0)

// L2 prefetch hints (decode.rs `L2Hints`). The kernels between a decode step's
// products read a few hundred KB at most and leave DRAM idle for microseconds
// each; they ask L2 for the first bytes the next product will read (n bytes
// from p: 16-byte aligned, n a multiple of 16; n = 0: none), so the product
// finds them there. The grid's blocks share the range in pieces of L2PF_PIECE
// bytes, one bulk request each (sm_90: cp.async.bulk.prefetch, which the copy
// engine serves; no value comes back to the thread). Weights never change, so
// the request may go out before the wait for the previous kernel (L2PF_LATE:
// after it). Before sm_90, none.
#ifndef L2PF_PIECE
#define L2PF_PIECE 32768
#endif
__device__ __forceinline__ void l2_hint(const unsigned char* p, long long n) {
#if __CUDA_ARCH__ >= 900
    if (n <= 0) return;
    const long long pieces = (n + L2PF_PIECE - 1) / L2PF_PIECE;
    const long long nb = (long long)gridDim.x * gridDim.y * gridDim.z;
    const long long b = blockIdx.x + (long long)gridDim.x * (blockIdx.y + (long long)gridDim.y * blockIdx.z);
    // Piece i to block i % nb: neighbouring pieces on different SMs.
    for (long long i = (long long)threadIdx.x * nb + b; i < pieces; i += nb * blockDim.x) {
        const long long off = i * L2PF_PIECE;
        const unsigned sz = (unsigned)(n - off < L2PF_PIECE ? n - off : L2PF_PIECE);
        // The instruction takes a global-space address: converted from the
        // generic pointer first.
        asm volatile(
            "{\n\t.reg .u64 g;\n\tcvta.to.global.u64 g, %0;\n\t"
            "cp.async.bulk.prefetch.L2.global [g], %1;\n\t}" ::"l"(p + off),
            "r"(sz));
    }
#endif
}
// The trailing parameters of a kernel that takes a hint, and its entry: the
// hint, then PDL_ENTRY's wait.
#define L2_HINT_PARAMS const unsigned char *l2p, long long l2n
#ifdef L2PF_LATE
#define HINTED_ENTRY(...)           \
    do {                            \
        PDL_ENTRY(__VA_ARGS__);     \
        l2_hint(l2p, l2n);          \
    } while (0)
#else
#define HINTED_ENTRY(...)           \
    do {                            \
        l2_hint(l2p, l2n);          \
        PDL_ENTRY(__VA_ARGS__);     \
    } while (0)
#endif

// Warp-wide sum and maximum (every lane gets the result; the xor butterfly
// gives every lane the same value).
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The activation quantisers' shared step (decode.cu's fused quantisers and
// fold_group below). The layouts (`mode`, ActKind in mod.rs): 1 = 8-bit
// codes with (d, d·Σq) per 32, 2 = the same with one d per 256 values, 3 =
// 16-bit codes per 32 stored as 32 high bytes then 32 low bytes, and (d, d·Σq).
// One lane's share of quantising the block of 32 values at index blk (the
// warp's lanes hold its values, one each; amax is the block's, or for mode 2
// the 256's, absolute maximum).
__device__ __forceinline__ void quant_store(float v, float amax, long long blk, int mode,
                                            signed char* __restrict__ xq,
                                            float2* __restrict__ xa) {
    int lane = threadIdx.x & 31;
    if (mode == 3) {
        const float d = amax / 32767.0f;
        const float id = d > 0.0f ? 1.0f / d : 0.0f;
        const int q = (int)roundf(v * id);
        xq[blk * 64 + lane] = (signed char)(q >> 8);
        xq[blk * 64 + 32 + lane] = (signed char)(q & 0xFF);
        int s = q;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) xa[blk] = make_float2(d, d * (float)s);
    } else {
        const float d = amax / 127.0f;
        const float id = d > 0.0f ? 1.0f / d : 0.0f;
        const int q = (int)roundf(v * id);
        xq[blk * 32 + lane] = (signed char)q;
        int s = q;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) xa[blk] = make_float2(d, d * (float)s);
    }
}


// ---------------------------------------------------------------------------
// RMSNorms folded into the single-token products around them (cuda/fold.rs).
// A norm's output quantised for the next product is x · w / rms(x): one
// scalar scales each block of codes and its maximum alike, so the codes of
// x · w are those of the norm's output and the scalar can wait until after the
// product. fold_group adds the residual's update y into x and quantises x · w
// for G rows (32, or 256 for mode 2's one scale per 256), storing the group's
// Σx²; the products that read the codes sum those slots in a fixed order and
// scale their outputs by 1 / sqrt(Σ / K + eps). It runs as a launch of many
// short blocks between the product that makes y and those that read the
// codes (decode.cu's norm_fold_q), in place of the norm's single block and
// its quantiser. (Run instead by the last block of each group of the product
// that makes y, counted by atomics, it was slower: BENCHMARKS.md, tenth slice.)
struct FoldOut {
    float* x;         // the residual: x += y, written back
    const float* w;   // the norm's weights
    signed char* xq;  // the consumers' activation codes (mode's layout)
    float2* xa;       //   and their (d, d·Σq) pairs
    double* parts;    // Σx² of each group
    int mode;         // quant_store's layout: 1, 2 or 3
    int group;        // rows per group: 32, or 256 for mode 2
};

// Every thread of the block takes part (blockDim.x a multiple of 32, at most
// 256). y: the update (null: none).
#define FOLD_K 8  // values per thread at most (G <= 8 · blockDim.x)
__device__ void fold_group(const FoldOut* __restrict__ fo, const float* y, int grp) {
    __shared__ float gv[256];
    __shared__ float bm[8];
    __shared__ double wsum[8];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nth = blockDim.x, nw = nth >> 5;
    const int G = fo->group;
    float* x = fo->x + (long long)grp * G;
    const float* yg = y ? y + (long long)grp * G : 0;
    const float* w = fo->w + (long long)grp * G;
    // Every load first, then the arithmetic.
    float xv[FOLD_K], yv[FOLD_K], wv[FOLD_K];
#pragma unroll
    for (int k = 0; k < FOLD_K; k++) {
        const int i = tid + k * nth;
        if (i < G) {
            xv[k] = x[i];
            yv[k] = yg ? yg[i] : 0.0f;
            wv[k] = w[i];
        }
    }
    double ss = 0.0;
#pragma unroll
    for (int k = 0; k < FOLD_K; k++) {
        const int i = tid + k * nth;
        if (i < G) {
            const float v = yg ? xv[k] + yv[k] : xv[k];
            if (yg) x[i] = v;
            ss += (double)(v * v);
            gv[i] = v * wv[k];
        }
    }
    ss = warp_sum_d(ss);
    if (lane == 0) wsum[warp] = ss;
    __syncthreads();
    if (tid == 0) {
        double t = 0.0;
        for (int k = 0; k < nw; k++) t += wsum[k];
        fo->parts[grp] = t;
    }
    const int nb = G >> 5;
    for (int b = warp; b < nb; b += nw) {
        const float m = warp_max(fabsf(gv[b * 32 + lane]));
        if (lane == 0) bm[b] = m;
    }
    __syncthreads();
    float gmax = 0.0f;
    if (fo->mode == 2)
        for (int b = 0; b < nb; b++) gmax = fmaxf(gmax, bm[b]);
    for (int b = warp; b < nb; b += nw)
        quant_store(gv[b * 32 + lane], fo->mode == 2 ? gmax : bm[b], (long long)grp * nb + b, fo->mode,
                    fo->xq, fo->xa);
}
