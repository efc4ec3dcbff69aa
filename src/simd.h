/*
 * simd.h -- the vector primitives the lenet_fast kernels are written in.
 *
 * The kernels (kernels.pxi and the files it includes) are plain Cython over a type `vf` ("vector of floats", VLEN lanes) and
 * a dozen inline functions on it.  This header defines them once per instruction-set level; the
 * build compiles the same kernels three times with -DLENET_ISA_{GENERIC,AVX2,AVX512}:
 *
 *   AVX512  __m512, 16 lanes, fused multiply-add
 *   AVX2    __m256,  8 lanes, fused multiply-add (FMA3)
 *   GENERIC GCC/Clang vector extension, 4 lanes (SSE2 on x86-64, NEON on arm64), multiply then add
 *
 * Determinism: every output value of the network is produced by vf_madd chains in a fixed order,
 * and every function here acts lane by lane (no cross-lane arithmetic), so a value does not depend
 * on which lane, batch position or thread computed it.  vf_madd is a true FMA on AVX2/AVX-512 and a
 * rounded multiply followed by a rounded add in the generic build (compiled with -ffp-contract=off
 * so the compiler may not fuse it there).
 *
 * Also here: the transcendental helpers (exp, sigmoid, tanh) built only from these primitives,
 * so they are vectorised and give the same bits in every lane.
 */
#ifndef LENET_SIMD_H
#define LENET_SIMD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(LENET_ISA_AVX512)
#include <immintrin.h>
#define VLEN 16
#define LENET_ISA_NAME "avx512"
typedef __m512 vf;
typedef __m512i vi;
static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vf_set1(float x) { return _mm512_set1_ps(x); }
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline vf vf_madd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
/* a > b ? a : b, lane by lane (so a NaN in `a` yields b, a NaN in `b` yields b). */
static inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
/* 1 / a to about 1 ulp: the 14-bit estimate refined by one Newton step, a third of a division's
 * cost (used by vf_tanh, not where IEEE division is needed). */
static inline vf vf_reciprocal(vf a) {
    vf r = _mm512_rcp14_ps(a);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(a, r, _mm512_set1_ps(2.0f)));
}
static inline vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); }
static inline vi vi_from_vf(vf a) { return _mm512_cvttps_epi32(a); }
static inline vf vf_pow2_of_int(vi n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23));
}

/* One VLEN x VLEN block into the images-in-lanes layout: out[p * VLEN + lane] =
 * in[lane * in_stride + p].  Unpack 32-bit, unpack 64-bit, then two 128-bit shuffles. */
static inline void vf_transpose_block(const float *in, ptrdiff_t in_stride, float *out) {
    __m512 r[16], t[16];
    int i;
    for (i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(in + i * in_stride);
    for (i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (i = 0; i < 16; i += 4) {
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    for (i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
        r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
    }
    for (i = 0; i < 16; i++) _mm512_storeu_ps(out + i * 16, r[i]);
}

/* Lane `lane` = base[index[lane]] for lane < filled, +0.0 after, every index in [0, 2 VLEN): two
 * loads and one two-register permute where VLEN scalar copies would take ~4x longer (the
 * one-image path's conv2 windows; Zen 4's hardware gather is no faster than the copies).  Reads
 * base[0 .. 2 VLEN - 1] whatever the indices. */
static inline vf vf_permute_span2(const float *base, const int32_t *index, int filled) {
    __mmask16 keep = (__mmask16)((1u << filled) - 1u);
    return _mm512_maskz_permutex2var_ps(keep, _mm512_loadu_ps(base), _mm512_loadu_si512(index),
                                        _mm512_loadu_ps(base + 16));
}

#elif defined(LENET_ISA_AVX2)
#include <immintrin.h>
#define VLEN 8
#define LENET_ISA_NAME "avx2"
typedef __m256 vf;
typedef __m256i vi;
static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vf_set1(float x) { return _mm256_set1_ps(x); }
static inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf vf_madd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
/* 1 / a to about 2 ulp: the 12-bit estimate refined by one Newton step (see the AVX-512 one). */
static inline vf vf_reciprocal(vf a) {
    vf r = _mm256_rcp_ps(a);
    return _mm256_mul_ps(r, _mm256_fnmadd_ps(a, r, _mm256_set1_ps(2.0f)));
}
static inline vf vf_min(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline vi vi_from_vf(vf a) { return _mm256_cvttps_epi32(a); }
static inline vf vf_pow2_of_int(vi n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
}

static inline void vf_transpose_block(const float *in, ptrdiff_t in_stride, float *out) {
    __m256 r[8], t[8];
    int i;
    for (i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(in + i * in_stride);
    for (i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (i = 0; i < 4; i++) {
        t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
        t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    for (i = 0; i < 8; i++) _mm256_storeu_ps(out + i * 8, t[i]);
}

/* See the AVX-512 vf_permute_span2: each half permuted, the upper half's lanes blended in. */
static inline vf vf_permute_span2(const float *base, const int32_t *index, int filled) {
    __m256i idx = _mm256_loadu_si256((const __m256i *)index);
    __m256 low = _mm256_permutevar8x32_ps(_mm256_loadu_ps(base), idx);
    __m256 high = _mm256_permutevar8x32_ps(_mm256_loadu_ps(base + 8), idx);
    __m256 upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7)));
    __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
        _mm256_set1_epi32(filled), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    return _mm256_and_ps(_mm256_blendv_ps(low, high, upper), keep);
}

#else /* generic */
#define VLEN 4
#define LENET_ISA_NAME "generic"
typedef float vf __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(16)));
static inline vf vf_load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vf_store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vf_set1(float x) { vf v = {x, x, x, x}; return v; }
static inline vf vf_add(vf a, vf b) { return a + b; }
static inline vf vf_sub(vf a, vf b) { return a - b; }
static inline vf vf_mul(vf a, vf b) { return a * b; }
static inline vf vf_div(vf a, vf b) { return a / b; }
static inline vf vf_madd(vf a, vf b, vf c) { return a * b + c; }
static inline vf lenet_select(vi mask, vf a, vf b) {
    vi ai, bi, r;
    memcpy(&ai, &a, sizeof a);
    memcpy(&bi, &b, sizeof b);
    r = (mask & ai) | (~mask & bi);
    memcpy(&a, &r, sizeof a);
    return a;
}
static inline vf vf_max(vf a, vf b) { return lenet_select(a > b, a, b); }
static inline vf vf_min(vf a, vf b) { return lenet_select(a < b, a, b); }
static inline vf vf_reciprocal(vf a) { return vf_set1(1.0f) / a; }
static inline vi vi_from_vf(vf a) { return __builtin_convertvector(a, vi); }
static inline vf vf_pow2_of_int(vi n) {
    vi bits = (n + 127) << 23;
    vf r;
    memcpy(&r, &bits, sizeof r);
    return r;
}
static inline void vf_transpose_block(const float *in, ptrdiff_t in_stride, float *out) {
    int p, lane;
    for (p = 0; p < VLEN; p++)
        for (lane = 0; lane < VLEN; lane++) out[p * VLEN + lane] = in[lane * in_stride + p];
}
/* See the AVX-512 vf_permute_span2 (here lane by lane, the vector built in registers: four
 * scalar stores read back as one vector would stall on store forwarding). */
static inline vf vf_permute_span2(const float *base, const int32_t *index, int filled) {
    vf v = {base[index[0]], filled > 1 ? base[index[1]] : 0.0f,
            filled > 2 ? base[index[2]] : 0.0f, filled > 3 ? base[index[3]] : 0.0f};
    return v;
}
#endif

/* The transcendental helpers below are forced inline: a conv micro-kernel applies them to up to
 * 24 accumulators at once, and only inlined copies let those independent evaluations overlap
 * (and keep the accumulators in registers instead of spilling them around calls). */
#define LENET_ALWAYS_INLINE static inline __attribute__((always_inline))

static inline vf vf_zero(void) { return vf_set1(0.0f); }

/* max(0, x); NaN stays NaN (vf_max returns its second operand for a NaN). */
static inline vf vf_relu(vf x) { return vf_max(vf_zero(), x); }

/* exp(x) for every lane: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, a degree-6
 * polynomial for e^r (Cephes expf coefficients, ~1 ulp), scaled by 2^n built from the exponent bits.
 * x is clamped to [-87.3, 88.3] (results 1.2e-38 .. 2.2e38); NaN stays NaN (the clamp keeps NaN
 * because vf_min/vf_max return their second operand for a NaN and x is passed second). */
LENET_ALWAYS_INLINE vf vf_exp(vf x) {
    const vf round_magic = vf_set1(12582912.0f); /* 1.5 * 2^23: x + magic - magic rounds to an integer */
    vf n, r, p;
    x = vf_min(vf_set1(88.3f), x);
    x = vf_max(vf_set1(-87.3f), x);
    n = vf_sub(vf_add(vf_mul(x, vf_set1(1.44269504088896341f)), round_magic), round_magic);
    r = vf_madd(n, vf_set1(-0.693359375f), x);
    r = vf_madd(n, vf_set1(2.12194440e-4f), r);
    p = vf_set1(1.9875691500e-4f);
    p = vf_madd(p, r, vf_set1(1.3981999507e-3f));
    p = vf_madd(p, r, vf_set1(8.3334519073e-3f));
    p = vf_madd(p, r, vf_set1(4.1665795894e-2f));
    p = vf_madd(p, r, vf_set1(1.6666665459e-1f));
    p = vf_madd(p, r, vf_set1(5.0000001201e-1f));
    p = vf_madd(p, vf_mul(r, r), vf_add(r, vf_set1(1.0f)));
    return vf_mul(p, vf_pow2_of_int(vi_from_vf(n)));
}

LENET_ALWAYS_INLINE vf vf_sigmoid(vf x) {
    const vf one = vf_set1(1.0f);
    return vf_div(one, vf_add(one, vf_exp(vf_sub(vf_zero(), x))));
}

/* tanh(x) as a rational function, x * P(x^2) / Q(x^2), degrees 7/8, with x clamped to +-8.2:
 * coefficients fitted for this clamp (iteratively reweighted least squares towards the minimax
 * fit, P(0) = Q(0) = 1 so that tanh(x) ~ x for small x, the clamp's value held near 1), then
 * rounded to float.  Measured through the kernels against float64 tanh
 * (tests/test_microkernels.py: test_activation_accuracy): absolute and relative error <= 6e-7
 * at every level.  Cost is what matters here: it runs on every conv output of the Keras LeNets
 * (tanh + average pooling), and on Zen 4 every multiply, FMA and reciprocal estimate competes
 * with the convolutions for the FMA pipes (min, max and add do not): 13 such operations, where
 * Eigen's 13/6 form takes 15, for the same accuracy class.  Near the clamp, rounding can put a
 * result 1 ulp past +-1 (1.0000001, inside the error bound; clamping it too cost keras-same 0.5 %
 * of the peak).  NaN stays NaN (the clamp passes it through, see vf_exp). */
LENET_ALWAYS_INLINE vf vf_tanh(vf x) {
    vf x2, p, q;
    x = vf_min(vf_set1(8.2f), x);
    x = vf_max(vf_set1(-8.2f), x);
    x2 = vf_mul(x, x);
    p = vf_set1(1.114083807e-05f);
    p = vf_madd(p, x2, vf_set1(2.924308879e-03f));
    p = vf_madd(p, x2, vf_set1(1.290078461e-01f));
    p = vf_madd(p, x2, vf_set1(1.0f));
    p = vf_mul(p, x);
    q = vf_set1(2.367636682e-07f);
    q = vf_madd(q, x2, vf_set1(2.348983835e-04f));
    q = vf_madd(q, x2, vf_set1(2.370620891e-02f));
    q = vf_madd(q, x2, vf_set1(4.623398483e-01f));
    q = vf_madd(q, x2, vf_set1(1.0f));
    return vf_mul(p, vf_reciprocal(q));
}

/* Fused multiply-add peak: `n_iterations` x 12 independent chains x VLEN lanes.  Used by the
 * benchmarks to measure the machine's ceiling with the same instructions the kernels use. */
static inline float lenet_fma_loop(int64_t n_iterations) {
    vf a0 = vf_set1(0.0f), a1 = vf_set1(0.1f), a2 = vf_set1(0.2f), a3 = vf_set1(0.3f);
    vf a4 = vf_set1(0.4f), a5 = vf_set1(0.5f), a6 = vf_set1(0.6f), a7 = vf_set1(0.7f);
    vf a8 = vf_set1(0.8f), a9 = vf_set1(0.9f), a10 = vf_set1(1.0f), a11 = vf_set1(1.1f);
    vf m = vf_set1(0.999999f), c = vf_set1(1e-7f);
    int64_t i;
    float lanes[VLEN];
    for (i = 0; i < n_iterations; i++) {
        a0 = vf_madd(a0, m, c); a1 = vf_madd(a1, m, c); a2 = vf_madd(a2, m, c);
        a3 = vf_madd(a3, m, c); a4 = vf_madd(a4, m, c); a5 = vf_madd(a5, m, c);
        a6 = vf_madd(a6, m, c); a7 = vf_madd(a7, m, c); a8 = vf_madd(a8, m, c);
        a9 = vf_madd(a9, m, c); a10 = vf_madd(a10, m, c); a11 = vf_madd(a11, m, c);
    }
    a0 = vf_add(vf_add(vf_add(a0, a1), vf_add(a2, a3)), vf_add(vf_add(a4, a5), vf_add(a6, a7)));
    a0 = vf_add(a0, vf_add(vf_add(a8, a9), vf_add(a10, a11)));
    vf_store(lanes, a0);
    return lanes[0];
}
#define LENET_FMA_LOOP_CHAINS 12

#endif /* LENET_SIMD_H */
