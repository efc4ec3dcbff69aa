/*
 * parallel.h -- OpenMP when the build has it, a serial stand-in when it does not, and the one
 * atomic operation the kernels need.  Kernels include this instead of <omp.h> so that a compiler
 * without OpenMP (e.g. Apple clang) still builds them; `prange` then runs serially.
 */
#ifndef LENET_PARALLEL_H
#define LENET_PARALLEL_H

#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#define LENET_HAVE_OPENMP 1
#else
#define LENET_HAVE_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
#endif

/* *target = min(*target, value), atomically (the first bad image index found by any thread). */
static inline void lenet_atomic_min_i64(int64_t *target, int64_t value) {
    int64_t seen = __atomic_load_n(target, __ATOMIC_RELAXED);
    while (value < seen &&
           !__atomic_compare_exchange_n(target, &seen, value, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

#endif /* LENET_PARALLEL_H */
