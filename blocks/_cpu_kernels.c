/* CPU kernels of attnlab's blocks, compiled on first use by blocks/_cpu_kernels.py.
 *
 * plus_gemm_f32 / plus_gemm_f64:  out[n] = base[n] + A · Y[n]  for n < N, every tensor contiguous:
 *   A (C, K), Y (N, K, L), base and out (N, C, L).
 *
 * Why it exists: a BLAS GEMM followed by an add of base reads and writes the (C, L) output twice;
 * here base is the accumulators' initial value, so each tile of the output is written once, with
 * the add folded into the GEMM (the Gaussian block's residual add, forward and backward).  The
 * output is written with non-temporal stores when `stream` is set (a tensor far larger than the
 * caches: it would be evicted before it is read again, and the stores skip the read-for-ownership).
 *
 * Blocking: columns in blocks of LB (a K×LB block of Y stays in L1/L2 while the rows of A sweep
 * it), rows in register tiles of R rows × V vectors: R·V accumulators, V loads of Y and R
 * broadcasts of A per k.  Work items (sample, column block) are split over `threads` threads.
 */
#include <stdint.h>
#include <pthread.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define VBYTES 64
#elif defined(__AVX__)
#define VBYTES 32
#else
#define VBYTES 16
#endif

#define R 6   /* rows per register tile */
#define V 2   /* vectors per register tile */
#define LB 768 /* columns per block (a multiple of every V·VW) */

#define DEFINE_KERNEL(T, SUFFIX, STREAM)                                                              \
typedef T vec_##SUFFIX __attribute__((vector_size(VBYTES), aligned(sizeof(T))));                      \
enum { VW_##SUFFIX = VBYTES / sizeof(T) };                                                            \
                                                                                                      \
/* rows [c, c+RR) × columns [l, l+VV·VW) */                                                          \
static inline __attribute__((always_inline)) void tile_##SUFFIX(const T* A, int64_t K, const T* Y, const T* base, T* out, int64_t L,  \
                                 int64_t c, int64_t l, int RR, int VV, int nt) {                       \
    vec_##SUFFIX acc[R][V];                                                                           \
    for (int r = 0; r < RR; r++)                                                                      \
        for (int v = 0; v < VV; v++) acc[r][v] = *(const vec_##SUFFIX*)(base + (c + r) * L + l + v * VW_##SUFFIX); \
    for (int64_t k = 0; k < K; k++) {                                                                 \
        vec_##SUFFIX y[V];                                                                            \
        for (int v = 0; v < VV; v++) y[v] = *(const vec_##SUFFIX*)(Y + k * L + l + v * VW_##SUFFIX);   \
        for (int r = 0; r < RR; r++) {                                                                \
            T a = A[(c + r) * K + k];                                                                 \
            for (int v = 0; v < VV; v++) acc[r][v] += a * y[v];                                       \
        }                                                                                             \
    }                                                                                                 \
    for (int r = 0; r < RR; r++)                                                                      \
        for (int v = 0; v < VV; v++) {                                                               \
            T* p = out + (c + r) * L + l + v * VW_##SUFFIX;                                           \
            if (nt) STREAM(p, acc[r][v]); else *(vec_##SUFFIX*)p = acc[r][v];                         \
        }                                                                                             \
}                                                                                                     \
                                                                                                      \
/* rows [c, c+RR) × the last `rem` < VW columns [l, l+rem): one vector, its unused lanes zero */   \
static inline __attribute__((always_inline)) void tail_##SUFFIX(const T* A, int64_t K, const T* Y,     \
                                 const T* base, T* out, int64_t L, int64_t c, int64_t l, int RR, int rem) { \
    vec_##SUFFIX acc[R], y;                                                                           \
    T buf[VW_##SUFFIX] __attribute__((aligned(VBYTES)));                                              \
    for (int r = 0; r < RR; r++) {                                                                    \
        for (int i = 0; i < VW_##SUFFIX; i++) buf[i] = i < rem ? base[(c + r) * L + l + i] : 0;        \
        acc[r] = *(vec_##SUFFIX*)buf;                                                                 \
    }                                                                                                 \
    for (int64_t k = 0; k < K; k++) {                                                                 \
        for (int i = 0; i < VW_##SUFFIX; i++) buf[i] = i < rem ? Y[k * L + l + i] : 0;                 \
        y = *(vec_##SUFFIX*)buf;                                                                      \
        for (int r = 0; r < RR; r++) acc[r] += A[(c + r) * K + k] * y;                                \
    }                                                                                                 \
    for (int r = 0; r < RR; r++) {                                                                    \
        *(vec_##SUFFIX*)buf = acc[r];                                                                 \
        for (int i = 0; i < rem; i++) out[(c + r) * L + l + i] = buf[i];                              \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
/* rows [c, c+RR) × columns [l0, l1); inlined with RR = R or 1, so every tile's size is a  \
   constant and its accumulators stay in registers */                                         \
static inline __attribute__((always_inline)) void rows_##SUFFIX(const T* A, int64_t K, const T* Y,     \
        const T* base, T* out, int64_t L, int64_t c, int RR, int64_t l0, int64_t l1, int nt) {        \
    const int64_t step = V * VW_##SUFFIX;                                                             \
    int64_t l = l0;                                                                                   \
    for (; l + step <= l1; l += step) tile_##SUFFIX(A, K, Y, base, out, L, c, l, RR, V, nt);          \
    for (; l + VW_##SUFFIX <= l1; l += VW_##SUFFIX) tile_##SUFFIX(A, K, Y, base, out, L, c, l, RR, 1, nt); \
    if (l < l1 && l1 - VW_##SUFFIX >= l0)                                                             \
        /* the last vector of the row again, overlapping columns already written: each lane is    \
           the same sum in the same order, so they are rewritten with the same values */             \
        tile_##SUFFIX(A, K, Y, base, out, L, c, l1 - VW_##SUFFIX, RR, 1, 0);                          \
    else if (l < l1)                                                                                  \
        tail_##SUFFIX(A, K, Y, base, out, L, c, l, RR, (int)(l1 - l));                                \
}                                                                                                     \
                                                                                                      \
typedef struct {                                                                                      \
    const T *A, *Y, *base; T* out;                                                                    \
    int64_t C, K, L, blocks, first, last; int nt;                                                     \
} job_##SUFFIX;                                                                                       \
                                                                                                      \
static void* run_##SUFFIX(void* arg) {                                                                \
    const job_##SUFFIX* j = (const job_##SUFFIX*)arg;                                                 \
    for (int64_t item = j->first; item < j->last; item++) {                                           \
        int64_t n = item / j->blocks, l0 = (item % j->blocks) * LB;                                   \
        int64_t l1 = l0 + LB < j->L ? l0 + LB : j->L;                                                 \
        const T* Y = j->Y + n * j->K * j->L;                                                          \
        const T* base = j->base + n * j->C * j->L;                                                    \
        T* out = j->out + n * j->C * j->L;                                                            \
        int64_t c = 0;                                                                                \
        for (; c + R <= j->C; c += R) rows_##SUFFIX(j->A, j->K, Y, base, out, j->L, c, R, l0, l1, j->nt); \
        for (; c < j->C; c++) rows_##SUFFIX(j->A, j->K, Y, base, out, j->L, c, 1, l0, l1, j->nt);    \
    }                                                                                                 \
    FENCE();                                                                                          \
    return 0;                                                                                         \
}                                                                                                     \
                                                                                                      \
/* 0 on success, else the pthread_create error (nothing half-done: the caller's threads joined). */  \
int plus_gemm_##SUFFIX(const T* A, const T* Y, const T* base, T* out, int64_t N, int64_t C, int64_t K, \
                       int64_t L, int stream, int threads) {                                          \
    /* non-temporal stores need aligned vectors: every row start aligned */                           \
    int nt = stream && ((uintptr_t)out % VBYTES == 0) && ((L * (int64_t)sizeof(T)) % VBYTES == 0);     \
    int64_t blocks = (L + LB - 1) / LB, items = N * blocks;                                           \
    if (threads < 1) threads = 1;                                                                     \
    if (threads > 64) threads = 64;                                                                   \
    if (threads > items) threads = (int)(items > 0 ? items : 1);                                      \
    job_##SUFFIX jobs[64];                                                                            \
    pthread_t tids[64];                                                                               \
    int started = 0, err = 0;                                                                         \
    for (int t = 0; t < threads; t++) {                                                               \
        job_##SUFFIX j = {A, Y, base, out, C, K, L, blocks, items * t / threads, items * (t + 1) / threads, nt}; \
        jobs[t] = j;                                                                                  \
    }                                                                                                 \
    for (int t = 1; t < threads && !err; t++) {                                                       \
        err = pthread_create(&tids[t], 0, run_##SUFFIX, &jobs[t]);                                    \
        if (!err) started = t;                                                                        \
    }                                                                                                 \
    if (!err) run_##SUFFIX(&jobs[0]);                                                                 \
    for (int t = 1; t <= started; t++) pthread_join(tids[t], 0);                                      \
    return err;                                                                                       \
}

#if defined(__AVX512F__)
#define STREAM_F32(p, v) _mm512_stream_ps((p), (__m512)(v))
#define STREAM_F64(p, v) _mm512_stream_pd((p), (__m512d)(v))
#define FENCE() _mm_sfence()
#elif defined(__AVX__)
#define STREAM_F32(p, v) _mm256_stream_ps((p), (__m256)(v))
#define STREAM_F64(p, v) _mm256_stream_pd((p), (__m256d)(v))
#define FENCE() _mm_sfence()
#elif defined(__SSE2__)
#define STREAM_F32(p, v) _mm_stream_ps((p), (__m128)(v))
#define STREAM_F64(p, v) _mm_stream_pd((p), (__m128d)(v))
#define FENCE() _mm_sfence()
#else
#define STREAM_F32(p, v) (*(vec_f32*)(p) = (v))
#define STREAM_F64(p, v) (*(vec_f64*)(p) = (v))
#define FENCE() __sync_synchronize()
#endif

DEFINE_KERNEL(float, f32, STREAM_F32)
DEFINE_KERNEL(double, f64, STREAM_F64)

/* The vector width this build uses, in bytes (for the loader's report). */
int vector_bytes(void) { return VBYTES; }
