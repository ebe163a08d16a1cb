/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The worker pool (see worker.h).
 *
 *   main thread                        worker threads
 *   -----------                        --------------
 *   submit ──► queue (FIFO) ──────────► run(j)
 *   cancel_queued ─┐                      │
 *                  ▼                      ▼
 *             completion list (FIFO) ◄────┘   then write(eventfd)
 *                  │
 *   eventfd readable (sd-event) ──► done(j), in completion order
 *
 * One mutex protects both lists, the counters and the shutdown flag; one
 * condition variable wakes idle workers. A job's `state` is also read without
 * the pool (worker_job_started()), so it is accessed atomically. `pending` is
 * touched only by the main thread. Workers never touch a job after they put
 * it on the completion list, because from then on the main thread may free it.
 *
 * Worker threads run with every signal blocked, so that the signals sd-event
 * handles (SIGTERM, SIGINT, ... through signalfd) always reach the main
 * thread.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "macro.h"
#include "worker.h"

/* libvdisk operations use a few KiB of stack (the largest frames are about
 * 2 KiB, and nothing recurses deeply); 1 MiB leaves ample room, also for the
 * sanitizers, and the thread-local error buffer lives there too. */
#define WORKER_STACK_SIZE (1024u * 1024u)

enum {
        JOB_IDLE = 0,     /* never submitted */
        JOB_QUEUED,       /* on the queue */
        JOB_RUNNING,      /* in run() on a worker */
        JOB_FINISHED,     /* run() returned; on the completion list, or done() ran */
        JOB_CANCELLED,    /* dropped from the queue; on the completion list, or done() ran */
};

struct worker_pool {
        sd_event *event;
        sd_event_source *source;
        int efd;

        pthread_mutex_t lock;
        pthread_cond_t wake;          /* queue not empty, or shutdown */
        bool lock_initialized;
        bool shutdown;                /* under lock */

        worker_job *queue_head, *queue_tail;        /* under lock */
        worker_job *finished_head, *finished_tail;  /* under lock */
        unsigned n_queued, n_running;               /* under lock */
        unsigned n_pending;                         /* main thread only */

        bool dispatching;             /* main thread only: inside a done() */

        pthread_t *threads;
        unsigned n_threads;           /* requested */
        unsigned n_started;           /* created successfully */
};

static void job_set_state(worker_job *j, int state) {
        __atomic_store_n(&j->state, state, __ATOMIC_RELEASE);
}

static int job_get_state(const worker_job *j) {
        return __atomic_load_n(&j->state, __ATOMIC_ACQUIRE);
}

/* A const getter still needs the lock; the pool itself is never const. */
static void pool_lock(const worker_pool *p) {
        int r = pthread_mutex_lock((pthread_mutex_t *) &p->lock);
        assert(r == 0);
        (void) r;
}

static void pool_unlock(const worker_pool *p) {
        int r = pthread_mutex_unlock((pthread_mutex_t *) &p->lock);
        assert(r == 0);
        (void) r;
}

static void pool_wake_main(worker_pool *p) {
        uint64_t one = 1;

        /* Can only fail with EAGAIN once the counter nears 2^64, and then the
         * eventfd is readable anyway. */
        (void) !write(p->efd, &one, sizeof one);
}

/* Under lock. */
static void finished_append(worker_pool *p, worker_job *j) {
        j->next = NULL;
        if (p->finished_tail)
                p->finished_tail->next = j;
        else
                p->finished_head = j;
        p->finished_tail = j;
}

static worker_job *finished_take_all(worker_pool *p) {
        worker_job *list;

        pool_lock(p);
        list = p->finished_head;
        p->finished_head = p->finished_tail = NULL;
        pool_unlock(p);
        return list;
}

/* Main thread: hands each job of a detached completion list to its done(). */
static void dispatch_list(worker_pool *p, worker_job *list) {
        while (list) {
                worker_job *j = list;

                list = j->next;
                j->next = NULL;
                assert(p->n_pending > 0);
                p->n_pending--;
                /* done() may free j, submit it again, or submit or cancel others. */
                p->dispatching = true;
                j->done(j);
                p->dispatching = false;
        }
}

static int on_completion(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        worker_pool *p = userdata;
        uint64_t n;

        assert(p);

        /* Reset the counter first: whatever finishes after this read writes
         * again and brings us back. */
        (void) !read(fd, &n, sizeof n);
        dispatch_list(p, finished_take_all(p));
        return 0;
}

static void pool_freep(worker_pool **p) {
        *p = worker_pool_free(*p);
}

static void *worker_main(void *userdata) {
        worker_pool *p = userdata;

        pool_lock(p);
        for (;;) {
                worker_job *j;

                while (!p->queue_head && !p->shutdown)
                        (void) pthread_cond_wait(&p->wake, &p->lock);
                j = p->queue_head;
                if (!j)
                        break;    /* shutdown, nothing left to run */

                p->queue_head = j->next;
                if (!p->queue_head)
                        p->queue_tail = NULL;
                j->next = NULL;
                p->n_queued--;
                p->n_running++;
                job_set_state(j, JOB_RUNNING);
                pool_unlock(p);

                j->run(j);

                pool_lock(p);
                p->n_running--;
                job_set_state(j, JOB_FINISHED);
                finished_append(p, j);
                /* From here on j belongs to the main thread again. Writing the
                 * eventfd under the lock is cheap and keeps the order simple. */
                pool_wake_main(p);
        }
        pool_unlock(p);
        return NULL;
}

int worker_pool_new(sd_event *e, unsigned n_threads, worker_pool **ret) {
        _cleanup_(pool_freep) worker_pool *p = NULL;
        pthread_attr_t attr;
        sigset_t all, saved;
        int r;

        assert(e);
        assert(ret);

        if (n_threads < 1)
                return -EINVAL;

        p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->efd = -1;
        p->event = sd_event_ref(e);
        p->n_threads = n_threads;

        r = -pthread_mutex_init(&p->lock, NULL);
        if (r < 0)
                return r;
        r = -pthread_cond_init(&p->wake, NULL);
        if (r < 0) {
                (void) pthread_mutex_destroy(&p->lock);
                return r;
        }
        p->lock_initialized = true;

        p->threads = calloc(n_threads, sizeof *p->threads);
        if (!p->threads)
                return -ENOMEM;

        p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (p->efd < 0)
                return -errno;

        r = sd_event_add_io(e, &p->source, p->efd, EPOLLIN, on_completion, p);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(p->source, "worker-pool");

        r = -pthread_attr_init(&attr);
        if (r < 0)
                return r;
        r = -pthread_attr_setstacksize(&attr, WORKER_STACK_SIZE);
        if (r < 0) {
                (void) pthread_attr_destroy(&attr);
                return r;
        }

        /* New threads inherit the creator's signal mask. */
        (void) sigfillset(&all);
        r = -pthread_sigmask(SIG_BLOCK, &all, &saved);
        if (r < 0) {
                (void) pthread_attr_destroy(&attr);
                return r;
        }
        for (; p->n_started < n_threads; p->n_started++) {
                r = -pthread_create(&p->threads[p->n_started], &attr, worker_main, p);
                if (r < 0)
                        break;
                (void) pthread_setname_np(p->threads[p->n_started], "vdiskd-worker");
        }
        (void) pthread_sigmask(SIG_SETMASK, &saved, NULL);
        (void) pthread_attr_destroy(&attr);
        if (r < 0)
                return r;    /* the cleanup joins the threads already started */

        *ret = TAKE_PTR(p);
        return 0;
}

worker_pool *worker_pool_free(worker_pool *p) {
        worker_job *dropped;

        if (!p)
                return NULL;

        /* Freeing the pool from one of its own done() callbacks would pull the
         * completion list out from under dispatch_list(). */
        assert(!p->dispatching);

        if (p->lock_initialized) {
                /* Drop the queue; workers finish their current job, then exit. */
                pool_lock(p);
                p->shutdown = true;
                dropped = p->queue_head;
                p->queue_head = p->queue_tail = NULL;
                for (worker_job *j = dropped; j; j = j->next) {
                        job_set_state(j, JOB_CANCELLED);
                        j->cancelled_before_start = 1;
                        p->n_queued--;
                }
                assert(p->n_queued == 0);
                (void) pthread_cond_broadcast(&p->wake);
                pool_unlock(p);

                /* First what had completed already, then the dropped jobs, in
                 * queue order; then wait for the running ones. */
                dispatch_list(p, finished_take_all(p));
                dispatch_list(p, dropped);
        }

        for (unsigned i = 0; i < p->n_started; i++)
                (void) pthread_join(p->threads[i], NULL);

        if (p->lock_initialized) {
                dispatch_list(p, finished_take_all(p));
                assert(p->n_pending == 0);
                (void) pthread_cond_destroy(&p->wake);
                (void) pthread_mutex_destroy(&p->lock);
        }

        sd_event_source_disable_unref(p->source);
        if (p->efd >= 0)
                (void) close(p->efd);
        sd_event_unref(p->event);
        free(p->threads);
        free(p);
        return NULL;
}

int worker_pool_submit(worker_pool *p, worker_job *j) {
        assert(p);
        assert(j);
        assert(j->run);
        assert(j->done);

        pool_lock(p);
        if (p->shutdown) {
                /* Only reachable from a done() run by worker_pool_free(). */
                pool_unlock(p);
                return -ESHUTDOWN;
        }
        j->next = NULL;
        j->cancelled_before_start = 0;
        job_set_state(j, JOB_QUEUED);
        if (p->queue_tail)
                p->queue_tail->next = j;
        else
                p->queue_head = j;
        p->queue_tail = j;
        p->n_queued++;
        p->n_pending++;
        (void) pthread_cond_signal(&p->wake);
        pool_unlock(p);
        return 0;
}

int worker_pool_cancel_queued(worker_pool *p, worker_job *j) {
        worker_job *prev = NULL;

        assert(p);
        assert(j);

        pool_lock(p);
        if (job_get_state(j) != JOB_QUEUED) {
                pool_unlock(p);
                return 0;
        }

        for (worker_job *i = p->queue_head; i && i != j; i = i->next)
                prev = i;
        /* A queued job is on this pool's queue, unless the caller mixed pools. */
        assert(prev ? prev->next == j : p->queue_head == j);

        if (prev)
                prev->next = j->next;
        else
                p->queue_head = j->next;
        if (p->queue_tail == j)
                p->queue_tail = prev;
        p->n_queued--;

        j->cancelled_before_start = 1;
        job_set_state(j, JOB_CANCELLED);
        finished_append(p, j);
        pool_unlock(p);

        /* done() runs from the event loop, never from inside this call. */
        pool_wake_main(p);
        return 1;
}

int worker_job_started(const worker_job *j) {
        int state;

        assert(j);

        state = job_get_state(j);
        return state == JOB_RUNNING || state == JOB_FINISHED;
}

unsigned worker_pool_threads(const worker_pool *p) {
        assert(p);
        return p->n_threads;
}

unsigned worker_pool_running(const worker_pool *p) {
        unsigned n;

        assert(p);
        pool_lock(p);
        n = p->n_running;
        pool_unlock(p);
        return n;
}

unsigned worker_pool_queued(const worker_pool *p) {
        unsigned n;

        assert(p);
        pool_lock(p);
        n = p->n_queued;
        pool_unlock(p);
        return n;
}

unsigned worker_pool_pending(const worker_pool *p) {
        assert(p);
        return p->n_pending;
}
