/*
 * cpu_features.h -- which instruction-set levels this CPU (and its operating system) can run.
 * Compiled for the baseline ISA only (no -m flags), so it runs anywhere.  GCC/Clang's
 * __builtin_cpu_supports checks CPUID *and* that the OS saves the AVX/AVX-512 register state
 * (XGETBV), which CPUID alone does not tell.
 */
#ifndef LENET_CPU_FEATURES_H
#define LENET_CPU_FEATURES_H

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
static inline int lenet_cpu_has_avx2_fma(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
static inline int lenet_cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && lenet_cpu_has_avx2_fma();
}
#define LENET_CPU_IS_X86 1
#else
static inline int lenet_cpu_has_avx2_fma(void) { return 0; }
static inline int lenet_cpu_has_avx512(void) { return 0; }
#define LENET_CPU_IS_X86 0
#endif

#endif /* LENET_CPU_FEATURES_H */
