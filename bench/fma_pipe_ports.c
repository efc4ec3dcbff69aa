/*
 * Which AVX-512 operations compete with fused multiply-adds for the FMA pipes?
 *
 * Each test runs 12 independent FMA chains (the kernels' steady state) plus 12 independent
 * operations of one kind per iteration, and prints the time per iteration.  An operation that
 * runs on other pipes leaves the time at the FMA-only figure; one that needs an FMA pipe adds
 * about as much as 12 more FMAs.  This is what decides the cost of an activation fused into a
 * conv micro-kernel (src/simd.h: vf_tanh counts only multiplies, FMAs and reciprocal estimates).
 *
 *   gcc -O2 -mavx512f -o /tmp/fma_pipe_ports bench/fma_pipe_ports.c && /tmp/fma_pipe_ports
 *
 * On the development machine (AMD EPYC, Zen 4, 2026-11-28), ns per iteration: FMA only 3.28;
 * + min 3.28, + add 3.27, + and 3.30 (free); + mul 6.55, + rcp14 6.54, + FMA 6.54 (an FMA pipe
 * each); + integer add 5.87; + divide 19.6; + 16-entry permute 4.7-4.8, + 32-entry permute
 * 5.7, + shift 6.0, + float-to-int conversion 5.9 (06:43 UTC: a table lookup costs 40-75 % of
 * an FMA slot, an index built by integer shifts or conversion about 80 %).
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static float table[32] __attribute__((aligned(64)));

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define ITERATIONS 20000000L
#define REPEAT12(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11)
#define DECLARE(i) __m512 a##i = _mm512_set1_ps(0.01f * i), b##i = _mm512_set1_ps(1.0f + 0.01f * i);
#define CHAIN(i) a##i = _mm512_fmadd_ps(a##i, m, c);
#define SUM(i) total = _mm512_add_ps(total, _mm512_add_ps(a##i, b##i));
#define TEST(name, OTHER)                                                                      \
    static void name(void) {                                                                   \
        __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);                      \
        __m512 total = _mm512_setzero_ps();                                                    \
        float lanes[16];                                                                       \
        double start, seconds;                                                                 \
        long i;                                                                                \
        REPEAT12(DECLARE)                                                                      \
        start = now();                                                                         \
        for (i = 0; i < ITERATIONS; i++) { REPEAT12(CHAIN) REPEAT12(OTHER) }                   \
        seconds = now() - start;                                                               \
        REPEAT12(SUM)                                                                          \
        _mm512_storeu_ps(lanes, total);                                                        \
        printf("%-16s %6.2f ns per iteration   (checksum %g)\n", #name, seconds / ITERATIONS * 1e9, \
               lanes[0]);                                                                      \
    }

#define NOTHING(i)
#define MIN(i) b##i = _mm512_min_ps(b##i, c);
#define ADD(i) b##i = _mm512_add_ps(b##i, c);
#define AND(i) b##i = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(b##i), _mm512_castps_si512(m)));
#define MUL(i) b##i = _mm512_mul_ps(b##i, m);
#define RCP14(i) b##i = _mm512_rcp14_ps(b##i);
#define FMA(i) b##i = _mm512_fmadd_ps(b##i, m, c);
#define INT_ADD(i) b##i = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(b##i), _mm512_castps_si512(c)));
#define DIVIDE(i) b##i = _mm512_div_ps(m, b##i);
/* What a table-driven activation would add: a 16-entry lookup (vpermps), a 32-entry one from two
 * tables in memory (vpermt2ps), an index by shifting the float's bits, a float-to-int conversion. */
#define PERMUTE16(i) b##i = _mm512_permutexvar_ps(_mm512_castps_si512(b##i), _mm512_load_ps(table));
#define PERMUTE32(i) b##i = _mm512_permutex2var_ps(_mm512_load_ps(table), _mm512_castps_si512(b##i), \
                                                   _mm512_load_ps(table + 16));
#define SHIFT(i) b##i = _mm512_castsi512_ps(_mm512_srli_epi32(_mm512_castps_si512(b##i), 3));
#define CONVERT(i) b##i = _mm512_castsi512_ps(_mm512_cvttps_epi32(b##i));

TEST(fma_only, NOTHING)
TEST(plus_min, MIN)
TEST(plus_add, ADD)
TEST(plus_and, AND)
TEST(plus_mul, MUL)
TEST(plus_rcp14, RCP14)
TEST(plus_fma, FMA)
TEST(plus_int_add, INT_ADD)
TEST(plus_divide, DIVIDE)
TEST(plus_permute16, PERMUTE16)
TEST(plus_permute32, PERMUTE32)
TEST(plus_shift, SHIFT)
TEST(plus_convert, CONVERT)

int main(void) {
    fma_only();
    plus_min();
    plus_add();
    plus_and();
    plus_mul();
    plus_rcp14();
    plus_fma();
    plus_int_add();
    plus_divide();
    plus_permute16();
    plus_permute32();
    plus_shift();
    plus_convert();
    return 0;
}
