/*
 * parallel.h -- the kernels' threading: a small pthread pool with an atomic work counter (below),
 * per-thread workspaces and the atomics the kernels need.  It does not use OpenMP (see the pool's
 * comment for why), and the build does not pass -fopenmp.
 */
#ifndef LENET_PARALLEL_H
#define LENET_PARALLEL_H

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>

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


/* ---------------------------------------------------------------------------------------------
 * The thread pool.  Why not an OpenMP parallel region: a region ends in a barrier that every
 * thread of the team must reach, so one helper that lost its core (a busy neighbour, an
 * oversubscribed container) holds the caller until the scheduler gives that core back --
 * milliseconds, against a batch of 64 that takes 0.5 ms.  Here:
 *
 *   - the caller posts a job and works on it itself;
 *   - helpers join when they wake up and claim work from the job's atomic claim word (the job
 *     decides what a piece of work is); a helper that arrives after the last piece went leaves;
 *   - the caller waits only for helpers that are inside the job (holding a started item), never
 *     for a helper that has not shown up: nobody waits on a descheduled thread's unstarted work;
 *   - idle helpers spin for a bounded time (spin_ns, LENET_FAST_SPIN_US) and then sleep on a
 *     condition variable, so they neither steal a core for long nor pay a wake-up between close
 *     calls;
 *   - helpers that cost the caller more than they gave make the pool back off for a while
 *     (see lenet_pool_post).
 *
 * One job at a time: a second caller (another Python thread) that finds the pool busy runs its
 * job alone, which is what a machine already kept busy by two callers wants anyway.  Helpers are
 * started on demand, block every signal (Python handles signals in the main thread) and live
 * until the process exits; a fork()ed child starts with an empty pool.
 * ------------------------------------------------------------------------------------------- */

#include <signal.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LENET_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define LENET_CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define LENET_CPU_RELAX() __asm__ __volatile__("" ::: "memory")
#endif

#define LENET_POOL_MAX_HELPERS 1023
#define LENET_POOL_DEFAULT_SPIN_US 50

typedef void (*lenet_participant_fn)(void *context);

typedef struct {
    pthread_mutex_t caller_lock;    /* held by the caller running a job */
    pthread_mutex_t sleep_lock;
    pthread_cond_t wake;
    int n_helpers;                  /* started (only the caller holding caller_lock changes it) */
    /* The current job: written by the caller before it bumps `generation`. */
    uint64_t generation;            /* atomic: incremented when a job is posted */
    uint64_t closed_generation;     /* atomic: == generation once the job admits no helper */
    lenet_participant_fn participant;
    void *context;
    int helpers_wanted;
    int helpers_joined;             /* atomic */
    int active;                     /* atomic: helpers inside the current job */
    int sleepers;                   /* atomic: helpers asleep (or about to be) on `wake` */
    int64_t spin_ns;                /* how long an idle helper spins before sleeping */
    int64_t posted_ns;              /* when the current job was posted */
    int64_t backoff_until_ns;       /* atomic: jobs posted before this run on their caller alone */
    int strikes;                    /* atomic: consecutive jobs where helpers cost more than they gave */
    int64_t jobs_posted, jobs_alone, jobs_struck;   /* atomic counters, for show_config */
} lenet_pool_t;

static lenet_pool_t lenet_pool = {
    .caller_lock = PTHREAD_MUTEX_INITIALIZER, .sleep_lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER, .spin_ns = (int64_t)LENET_POOL_DEFAULT_SPIN_US * 1000};
static pthread_once_t lenet_pool_once = PTHREAD_ONCE_INIT;

static inline int64_t lenet_now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

static void lenet_pool_after_fork_in_child(void) {
    /* The helpers did not survive fork(); the locks may have been held by them. */
    pthread_mutex_init(&lenet_pool.caller_lock, NULL);
    pthread_mutex_init(&lenet_pool.sleep_lock, NULL);
    pthread_cond_init(&lenet_pool.wake, NULL);
    lenet_pool.n_helpers = 0;
    lenet_pool.active = 0;
    lenet_pool.sleepers = 0;
    lenet_pool.closed_generation = lenet_pool.generation;
}

static void lenet_pool_init(void) {
    const char *spin = getenv("LENET_FAST_SPIN_US");
    if (spin != NULL && *spin != '\0') {
        char *end;
        long value = strtol(spin, &end, 10);
        if (*end == '\0' && value >= 0 && value <= 1000000)
            lenet_pool.spin_ns = (int64_t)value * 1000;
    }
    pthread_atfork(NULL, NULL, lenet_pool_after_fork_in_child);
}

static inline int64_t lenet_pool_counter(int which) {
    int64_t *counters[3] = {&lenet_pool.jobs_posted, &lenet_pool.jobs_alone, &lenet_pool.jobs_struck};
    return __atomic_load_n(counters[which], __ATOMIC_RELAXED);
}

/* Microseconds an idle helper spins before it sleeps (LENET_FAST_SPIN_US, read once). */
static inline long lenet_pool_spin_us(void) {
    pthread_once(&lenet_pool_once, lenet_pool_init);
    return (long)(lenet_pool.spin_ns / 1000);
}

static uint64_t lenet_pool_wait_for_job(uint64_t seen) {
    uint64_t generation;
    int64_t deadline = lenet_now_ns() + lenet_pool.spin_ns;
    int spins = 0;
    for (;;) {
        generation = __atomic_load_n(&lenet_pool.generation, __ATOMIC_ACQUIRE);
        if (generation != seen)
            return generation;
        LENET_CPU_RELAX();
        if (++spins % 64 == 0 && lenet_now_ns() >= deadline)
            break;
    }
    pthread_mutex_lock(&lenet_pool.sleep_lock);
    __atomic_add_fetch(&lenet_pool.sleepers, 1, __ATOMIC_SEQ_CST);
    while ((generation = __atomic_load_n(&lenet_pool.generation, __ATOMIC_SEQ_CST)) == seen)
        pthread_cond_wait(&lenet_pool.wake, &lenet_pool.sleep_lock);
    __atomic_sub_fetch(&lenet_pool.sleepers, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&lenet_pool.sleep_lock);
    return generation;
}

static void *lenet_pool_helper(void *start_generation) {
    uint64_t seen = (uint64_t)(uintptr_t)start_generation;
    for (;;) {
        uint64_t generation = lenet_pool_wait_for_job(seen);
        seen = generation;
        /* Announce ourselves before looking at the job: the caller closes the job before it
         * waits for `active` to drop to 0, so either it sees us or we see the job closed. */
        __atomic_add_fetch(&lenet_pool.active, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&lenet_pool.closed_generation, __ATOMIC_SEQ_CST) != generation - 1 ||
            __atomic_load_n(&lenet_pool.generation, __ATOMIC_SEQ_CST) != generation ||
            __atomic_fetch_add(&lenet_pool.helpers_joined, 1, __ATOMIC_RELAXED) >=
                lenet_pool.helpers_wanted) {
            __atomic_sub_fetch(&lenet_pool.active, 1, __ATOMIC_SEQ_CST);
            continue;
        }
        lenet_pool.participant(lenet_pool.context);
        __atomic_sub_fetch(&lenet_pool.active, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* Start helpers until there are `wanted` (or as many as the system allows); the caller holds
 * caller_lock.  New helpers wait for the job after the current generation. */
static void lenet_pool_grow(int wanted) {
    sigset_t all, previous;
    pthread_attr_t attributes;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    while (lenet_pool.n_helpers < wanted) {
        pthread_t thread;
        void *start = (void *)(uintptr_t)__atomic_load_n(&lenet_pool.generation, __ATOMIC_RELAXED);
        if (pthread_create(&thread, &attributes, lenet_pool_helper, start) != 0)
            break;
        lenet_pool.n_helpers++;
    }
    pthread_attr_destroy(&attributes);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
}

/* Adaptive back-off: a job where the caller, after its own share, waited for helpers longer
 * than that share took was slower than the caller alone would have been (a helper lost its
 * core while holding an item).  After such a job, jobs run on their caller alone for 2^strikes
 * times that job's duration (at most LENET_POOL_MAX_BACKOFF_NS); then helpers are tried again,
 * and one good job clears the strikes.  On a quiet machine helpers hold the caller for a
 * fraction of an item, so this never triggers. */
#define LENET_POOL_MAX_BACKOFF_SHIFT 10
#define LENET_POOL_MAX_BACKOFF_NS 50000000

/* Post a job: up to `helpers` pool threads call helper(context) as they wake up, while the
 * caller does its own share; then the caller calls lenet_pool_finish with what this returned.
 * Returns 0 (nothing posted: no helpers wanted, helpers backed off, or another caller has the
 * pool -- the caller then does all the work itself) or the job's generation. */
static uint64_t lenet_pool_post(lenet_participant_fn helper, void *context, int helpers) {
    uint64_t generation;
    pthread_once(&lenet_pool_once, lenet_pool_init);
    if (helpers > LENET_POOL_MAX_HELPERS)
        helpers = LENET_POOL_MAX_HELPERS;
    if (helpers <= 0)
        return 0;
    if (__atomic_load_n(&lenet_pool.backoff_until_ns, __ATOMIC_RELAXED) > lenet_now_ns()) {
        __atomic_add_fetch(&lenet_pool.jobs_alone, 1, __ATOMIC_RELAXED);
        return 0;
    }
    if (pthread_mutex_trylock(&lenet_pool.caller_lock) != 0)
        return 0;
    lenet_pool.posted_ns = lenet_now_ns();
    __atomic_add_fetch(&lenet_pool.jobs_posted, 1, __ATOMIC_RELAXED);
    lenet_pool_grow(helpers);
    lenet_pool.participant = helper;
    lenet_pool.context = context;
    lenet_pool.helpers_wanted = helpers;
    __atomic_store_n(&lenet_pool.helpers_joined, 0, __ATOMIC_RELAXED);
    generation = __atomic_add_fetch(&lenet_pool.generation, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&lenet_pool.sleepers, __ATOMIC_SEQ_CST) > 0) {
        pthread_mutex_lock(&lenet_pool.sleep_lock);
        pthread_cond_broadcast(&lenet_pool.wake);
        pthread_mutex_unlock(&lenet_pool.sleep_lock);
    }
    return generation;
}

/* Close the job (no helper joins it any more) and wait for the helpers inside it, who hold a
 * started item or are about to find none left; never for one that has not shown up. */
static void lenet_pool_finish(uint64_t generation) {
    int waits = 0;
    int64_t share_done_ns, done_ns;
    if (generation == 0)
        return;
    share_done_ns = lenet_now_ns();
    __atomic_store_n(&lenet_pool.closed_generation, generation, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&lenet_pool.active, __ATOMIC_SEQ_CST) != 0) {
        if (++waits < 4096)
            LENET_CPU_RELAX();
        else
            sched_yield();   /* the helper may be waiting for this very core */
    }
    done_ns = lenet_now_ns();
    if (done_ns - share_done_ns > share_done_ns - lenet_pool.posted_ns) {
        int strikes = __atomic_add_fetch(&lenet_pool.strikes, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&lenet_pool.jobs_struck, 1, __ATOMIC_RELAXED);
        int shift = strikes < LENET_POOL_MAX_BACKOFF_SHIFT ? strikes : LENET_POOL_MAX_BACKOFF_SHIFT;
        int64_t pause = (done_ns - lenet_pool.posted_ns) << shift;
        if (pause > LENET_POOL_MAX_BACKOFF_NS)
            pause = LENET_POOL_MAX_BACKOFF_NS;
        __atomic_store_n(&lenet_pool.backoff_until_ns, done_ns + pause, __ATOMIC_RELAXED);
    } else {
        __atomic_store_n(&lenet_pool.strikes, 0, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&lenet_pool.caller_lock);
}

/* The claim word of a job: unclaimed items [lo, hi) as lo | hi << 32. */
static inline uint64_t lenet_atomic_load_u64(const uint64_t *word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

static inline int lenet_atomic_cas_u64(uint64_t *word, uint64_t *expected, uint64_t desired) {
    return __atomic_compare_exchange_n(word, expected, desired, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

static inline int lenet_atomic_increment(int *counter) {
    return __atomic_fetch_add(counter, 1, __ATOMIC_ACQ_REL);
}

static inline int lenet_atomic_load_int(const int *counter) {
    return __atomic_load_n(counter, __ATOMIC_ACQUIRE);
}

#endif /* LENET_PARALLEL_H */
