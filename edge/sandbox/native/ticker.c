/* The epoch ticker of edge/sandbox/engine.py as a native thread: it bumps the epoch of every
 * registered wasmtime engine every interval without the Python interpreter, so a node serving
 * requests no longer gives up the GIL to a Python thread 500 times a second.
 *
 * Built by edge/sandbox/native_build.py with `zig cc` and loaded with ctypes. It calls
 * wasmtime_engine_increment_epoch through a pointer handed over by Python (no link-time
 * dependency on libwasmtime) and never calls into Python.
 *
 * The idle rule: after `idle_ticks` ticks in which no call started and none was running, the
 * thread sleeps until a call starts. The request path pays two atomic adds per call
 * (edge_ticker_enter / edge_ticker_leave) and takes the lock only while the thread sleeps.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

typedef void (*increment_fn)(void *engine);

struct edge_ticker {
    /* Written by the request path without the lock. */
    _Atomic uint64_t entries; /* calls started, ever */
    _Atomic int64_t running;  /* calls under way */
    _Atomic int asleep;
    /* Read by Python's stats. */
    _Atomic uint64_t ticks;
    _Atomic uint64_t sleeps;

    /* The engine list and `stop` change under the lock; the tick pass holds it, so once
     * edge_ticker_remove has taken it, no tick uses the removed engine. */
    pthread_mutex_t lock;
    pthread_cond_t wake; /* a call started while asleep, or stop */
    void **engines;
    size_t count;
    size_t cap;
    int stop;
    int started;

    increment_fn increment;
    uint64_t interval_ns;
    uint64_t idle_ticks;
    pthread_t thread;
};

static void after_ns(struct timespec *at, uint64_t ns) {
    clock_gettime(CLOCK_MONOTONIC, at);
    uint64_t total = (uint64_t)at->tv_nsec + ns;
    at->tv_sec += (time_t)(total / 1000000000u);
    at->tv_nsec = (long)(total % 1000000000u);
}

static int busy(struct edge_ticker *t, uint64_t seen) {
    return atomic_load(&t->running) > 0 || atomic_load(&t->entries) != seen;
}

static void *run(void *arg) {
    struct edge_ticker *t = arg;
    uint64_t seen = atomic_load(&t->entries);
    uint64_t idle = 0;
    struct timespec next;
    pthread_mutex_lock(&t->lock);
    while (!t->stop) {
        if (busy(t, seen)) {
            seen = atomic_load(&t->entries);
            idle = 0;
        } else if (++idle >= t->idle_ticks) {
            /* Announce the sleep before the last look: a call that starts after that look
             * sees `asleep` and signals under the lock, which this thread holds until the
             * wait releases it, so no wake-up is lost. */
            atomic_store(&t->asleep, 1);
            if (!t->stop && !busy(t, seen)) {
                atomic_fetch_add(&t->sleeps, 1);
                do {
                    pthread_cond_wait(&t->wake, &t->lock);
                } while (!t->stop && !busy(t, seen));
            }
            atomic_store(&t->asleep, 0);
            seen = atomic_load(&t->entries);
            idle = 0;
        }
        after_ns(&next, t->interval_ns);
        /* A signal here is only ever stop: sleep out the interval otherwise (0 is a wake-up;
         * ETIMEDOUT, or any error, ends the wait rather than spin). */
        while (!t->stop && pthread_cond_timedwait(&t->wake, &t->lock, &next) == 0) {
        }
        if (t->stop) {
            break;
        }
        /* Epochs that pass while nothing runs do no harm: a call's deadline counts from the
         * epoch at its start. */
        for (size_t i = 0; i < t->count; i++) {
            t->increment(t->engines[i]);
        }
        atomic_fetch_add(&t->ticks, 1);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

/* The ticker's memory is the caller's (Python's, kept as long as anything may call in), so a
 * call that comes after edge_ticker_stop touches nothing freed. */
EXPORT size_t edge_ticker_size(void) {
    return sizeof(struct edge_ticker);
}

/* `t`: edge_ticker_size() zeroed bytes, 8-aligned. 0, or the error that stopped the start. */
EXPORT int edge_ticker_start(struct edge_ticker *t, void *increment, uint64_t interval_us,
                             uint64_t idle_ticks) {
    t->increment = (increment_fn)increment;
    t->interval_ns = interval_us * 1000u;
    t->idle_ticks = idle_ticks ? idle_ticks : 1;
    pthread_condattr_t attr;
    int rc = pthread_mutex_init(&t->lock, NULL);
    if (rc == 0) {
        rc = pthread_condattr_init(&attr);
    }
    if (rc == 0) {
        /* Wall-clock steps must not stretch or cut a tick. */
        rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        if (rc == 0) {
            rc = pthread_cond_init(&t->wake, &attr);
        }
        pthread_condattr_destroy(&attr);
    }
    if (rc == 0) {
        rc = pthread_create(&t->thread, NULL, run, t);
    }
    t->started = rc == 0;
    return rc;
}

/* 0, or ENOMEM, or EINVAL once stopped. */
EXPORT int edge_ticker_add(struct edge_ticker *t, void *engine) {
    int rc = 0;
    pthread_mutex_lock(&t->lock);
    if (t->stop) {
        rc = EINVAL;
    } else if (t->count == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 4;
        void **grown = realloc(t->engines, cap * sizeof *grown);
        if (grown == NULL) {
            rc = ENOMEM;
        } else {
            t->engines = grown;
            t->cap = cap;
        }
    }
    if (rc == 0) {
        t->engines[t->count++] = engine;
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

/* Returns once no tick uses `engine`: the caller may delete it right after. 1 if it was
 * registered, else 0. */
EXPORT int edge_ticker_remove(struct edge_ticker *t, void *engine) {
    int found = 0;
    pthread_mutex_lock(&t->lock);
    for (size_t i = 0; i < t->count; i++) {
        if (t->engines[i] == engine) {
            t->engines[i] = t->engines[--t->count];
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return found;
}

EXPORT void edge_ticker_enter(struct edge_ticker *t) {
    atomic_fetch_add(&t->running, 1);
    atomic_fetch_add(&t->entries, 1);
    if (atomic_load(&t->asleep)) {
        pthread_mutex_lock(&t->lock);
        pthread_cond_signal(&t->wake);
        pthread_mutex_unlock(&t->lock);
    }
}

EXPORT void edge_ticker_leave(struct edge_ticker *t) {
    atomic_fetch_sub(&t->running, 1);
}

/* out: ticks so far, times it fell asleep, whether it sleeps now, calls running. */
EXPORT void edge_ticker_stats(struct edge_ticker *t, uint64_t out[4]) {
    out[0] = atomic_load(&t->ticks);
    out[1] = atomic_load(&t->sleeps);
    out[2] = (uint64_t)atomic_load(&t->asleep);
    out[3] = (uint64_t)atomic_load(&t->running);
}

/* Stops and joins the thread and lets go of the engine list. Once only (Python's finalizer). */
EXPORT void edge_ticker_stop(struct edge_ticker *t) {
    if (!t->started) {
        return;
    }
    pthread_mutex_lock(&t->lock);
    t->stop = 1;
    pthread_cond_broadcast(&t->wake);
    pthread_mutex_unlock(&t->lock);
    pthread_join(t->thread, NULL);
    pthread_mutex_lock(&t->lock);
    free(t->engines);
    t->engines = NULL;
    t->count = t->cap = 0;
    pthread_mutex_unlock(&t->lock);
}
