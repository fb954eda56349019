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
