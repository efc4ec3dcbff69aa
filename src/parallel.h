/*
 * parallel.h -- OpenMP when the build has it, a serial stand-in when it does not, and the one
 * atomic operation the kernels need.  Kernels include this instead of <omp.h> so that a compiler
 * without OpenMP (e.g. Apple clang) still builds them; `prange` then runs serially.
 */
#ifndef LENET_PARALLEL_H
#define LENET_PARALLEL_H

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

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

/* A workspace per OS thread, kept between calls so that a batch costs no allocation and no page
 * faults; it grows when a larger model needs more, and is freed when its thread exits (a
 * pthread key destructor), so memory stays O(threads) however many calls and models come and go.
 * Each OS thread has its own, so concurrent calls from several Python threads never share one. */
typedef struct {
    float *data;
    size_t floats;
} lenet_workspace_t;

static pthread_key_t lenet_workspace_key;
static pthread_once_t lenet_workspace_once = PTHREAD_ONCE_INIT;

static void lenet_workspace_destroy(void *pointer) {
    lenet_workspace_t *workspace = (lenet_workspace_t *)pointer;
    free(workspace->data);
    free(workspace);
}

static void lenet_workspace_key_create(void) {
    pthread_key_create(&lenet_workspace_key, lenet_workspace_destroy);
}

/* At least `floats` floats, 64-byte aligned, contents unspecified; NULL when out of memory. */
static inline float *lenet_thread_workspace(size_t floats) {
    lenet_workspace_t *workspace;
    pthread_once(&lenet_workspace_once, lenet_workspace_key_create);
    workspace = (lenet_workspace_t *)pthread_getspecific(lenet_workspace_key);
    if (workspace == NULL) {
        workspace = (lenet_workspace_t *)calloc(1, sizeof *workspace);
        if (workspace == NULL || pthread_setspecific(lenet_workspace_key, workspace) != 0) {
            free(workspace);
            return NULL;
        }
    }
    if (workspace->floats < floats) {
        size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
        free(workspace->data);
        workspace->data = (float *)aligned_alloc(64, bytes);
        workspace->floats = workspace->data == NULL ? 0 : floats;
    }
    return workspace->data;
}

#endif /* LENET_PARALLEL_H */
