/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests of the daemon's worker pool (daemon/worker.c) and progress
 * publication rules (daemon/progress.c), on a bare sd-event loop without any
 * bus. Nothing here depends on timing: jobs block on gates that the test
 * opens, the main thread waits on condition variables, and progress gets
 * explicit fake timestamps. Real-time deadlines only turn a hang into a
 * failure. */
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>

#include <systemd/sd-event.h>

#include "progress.h"
#include "tests.h"
#include "worker.h"

/* Only a guard against hangs: a correct run never waits this long. */
#define GUARD_SEC 60

static pthread_t main_thread;
static pid_t main_tid;

static pid_t gettid_(void) {
        return (pid_t) syscall(SYS_gettid);
}

static int is_main_thread(void) {
        return pthread_equal(pthread_self(), main_thread) && gettid_() == main_tid;
}

static struct timespec guard_deadline(void) {
        struct timespec ts;

        ASSERT(clock_gettime(CLOCK_REALTIME, &ts) == 0);
        ts.tv_sec += GUARD_SEC;
        return ts;
}

/* ---- gates: jobs block in run() until the test opens the gate */

typedef struct gate {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        int open;
        unsigned entered;    /* how many run()s reached the gate */
} gate;

static void gate_init(gate *g) {
        ASSERT(pthread_mutex_init(&g->lock, NULL) == 0);
        ASSERT(pthread_cond_init(&g->cond, NULL) == 0);
        g->open = 0;
        g->entered = 0;
}

static void gate_destroy(gate *g) {
        ASSERT(pthread_cond_destroy(&g->cond) == 0);
        ASSERT(pthread_mutex_destroy(&g->lock) == 0);
}

/* Worker side: announce arrival, wait until open. */
static void gate_pass(gate *g) {
        struct timespec deadline = guard_deadline();

        ASSERT(pthread_mutex_lock(&g->lock) == 0);
        g->entered++;
        ASSERT(pthread_cond_broadcast(&g->cond) == 0);
        while (!g->open)
                if (pthread_cond_timedwait(&g->cond, &g->lock, &deadline) == ETIMEDOUT)
                        FAIL("job waited %d s at a gate that never opened", GUARD_SEC);
        ASSERT(pthread_mutex_unlock(&g->lock) == 0);
}

/* Main side: wait until n run()s have reached the gate. */
static void gate_wait_entered(gate *g, unsigned n) {
        struct timespec deadline = guard_deadline();

        ASSERT(pthread_mutex_lock(&g->lock) == 0);
        while (g->entered < n)
                if (pthread_cond_timedwait(&g->cond, &g->lock, &deadline) == ETIMEDOUT)
                        FAIL("only %u of %u jobs started within %d s", g->entered, n, GUARD_SEC);
        ASSERT(pthread_mutex_unlock(&g->lock) == 0);
}

static unsigned gate_entered(gate *g) {
        unsigned n;

        ASSERT(pthread_mutex_lock(&g->lock) == 0);
        n = g->entered;
        ASSERT(pthread_mutex_unlock(&g->lock) == 0);
        return n;
}

static void gate_open(gate *g) {
        ASSERT(pthread_mutex_lock(&g->lock) == 0);
        g->open = 1;
        ASSERT(pthread_cond_broadcast(&g->cond) == 0);
        ASSERT(pthread_mutex_unlock(&g->lock) == 0);
}

/* ---- test jobs */

typedef struct test_job {
        worker_job job;
        unsigned id;
        gate *gate;                  /* run() waits here when set */
        unsigned *start_log;         /* run() appends id here (under start_lock) */
        unsigned runs, dones;
        int ran_on_main, done_off_main;
        int signals_unblocked;       /* run() saw SIGTERM or SIGINT unblocked */
        int cancelled;               /* cancelled_before_start seen by done() */
        unsigned *done_counter;      /* main thread: incremented by done() */
        unsigned done_order;         /* value of *done_counter when done() ran */
        gate *open_in_done;          /* done() opens this gate (main thread) */
} test_job;

static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned start_count;

static void test_run(worker_job *j) {
        test_job *t = (test_job *) j;
        sigset_t mask;

        t->runs++;
        t->ran_on_main = is_main_thread();
        ASSERT(pthread_sigmask(SIG_BLOCK, NULL, &mask) == 0);
        t->signals_unblocked = !sigismember(&mask, SIGTERM) || !sigismember(&mask, SIGINT);
        if (t->start_log) {
                ASSERT(pthread_mutex_lock(&start_lock) == 0);
                t->start_log[start_count++] = t->id;
                ASSERT(pthread_mutex_unlock(&start_lock) == 0);
        }
        if (t->gate)
                gate_pass(t->gate);
}

static void test_done(worker_job *j) {
        test_job *t = (test_job *) j;

        t->dones++;
        t->done_off_main = !is_main_thread();
        t->cancelled = j->cancelled_before_start;
        if (t->done_counter)
                t->done_order = (*t->done_counter)++;
        if (t->open_in_done)
                gate_open(t->open_in_done);
}

static void job_init(test_job *t, unsigned id) {
        *t = (test_job) {
                .job = { .run = test_run, .done = test_done },
                .id = id,
        };
}

/* Checks the job ran once, off the main thread, and was handed back once, on it. */
static void assert_ran_once(const test_job *t) {
        if (t->runs != 1 || t->dones != 1)
                FAIL("job %u: %u runs, %u dones", t->id, t->runs, t->dones);
        ASSERT(!t->ran_on_main);
        ASSERT(!t->done_off_main);
        ASSERT(!t->signals_unblocked);
        ASSERT(!t->cancelled);
        ASSERT(worker_job_started(&t->job));
}

static void assert_cancelled(const test_job *t) {
        if (t->runs != 0 || t->dones != 1)
                FAIL("cancelled job %u: %u runs, %u dones", t->id, t->runs, t->dones);
        ASSERT(!t->done_off_main);
        ASSERT(t->cancelled);
        ASSERT(!worker_job_started(&t->job));
}

static void assert_counters(worker_pool *p, unsigned running, unsigned queued, unsigned pending) {
        unsigned r = worker_pool_running(p), q = worker_pool_queued(p), n = worker_pool_pending(p);

        if (r != running || q != queued || n != pending)
                FAIL("counters running/queued/pending %u/%u/%u, expected %u/%u/%u",
                     r, q, n, running, queued, pending);
}

/* Runs the event loop until *counter reaches n. */
static void run_until(sd_event *e, const unsigned *counter, unsigned n) {
        time_t give_up = time(NULL) + GUARD_SEC;

        while (*counter < n) {
                ASSERT_OK(sd_event_run(e, 1000000));
                if (time(NULL) > give_up)
                        FAIL("only %u of %u done()s within %d s", *counter, n, GUARD_SEC);
        }
}

static sd_event *event_new(void) {
        sd_event *e = NULL;

        ASSERT_OK(sd_event_new(&e));
        return e;
}

/* ---- worker pool tests */

static void test_basic(void) {
        sd_event *e = event_new();
        worker_pool *p = NULL;
        test_job jobs[16];
        unsigned n_done = 0;
        sigset_t before, after;

        ASSERT(pthread_sigmask(SIG_BLOCK, NULL, &before) == 0);
        ASSERT_OK(worker_pool_new(e, 3, &p));
        ASSERT(pthread_sigmask(SIG_BLOCK, NULL, &after) == 0);
        /* the main thread's mask is back as it was */
        for (int s = 1; s < SIGRTMIN; s++)
                ASSERT(sigismember(&before, s) == sigismember(&after, s));
        ASSERT(worker_pool_threads(p) == 3);
        assert_counters(p, 0, 0, 0);

        for (unsigned i = 0; i < ELEMENTSOF(jobs); i++) {
                job_init(&jobs[i], i);
                jobs[i].done_counter = &n_done;
                ASSERT(!worker_job_started(&jobs[i].job));
                ASSERT_OK(worker_pool_submit(p, &jobs[i].job));
                /* done() runs only from the event loop */
                ASSERT(jobs[i].dones == 0);
        }
        ASSERT(worker_pool_pending(p) == ELEMENTSOF(jobs));
        ASSERT(n_done == 0);

        run_until(e, &n_done, ELEMENTSOF(jobs));
        for (unsigned i = 0; i < ELEMENTSOF(jobs); i++)
                assert_ran_once(&jobs[i]);
        assert_counters(p, 0, 0, 0);

        /* A job can be submitted again once its done() ran. */
        ASSERT_OK(worker_pool_submit(p, &jobs[0].job));
        run_until(e, &n_done, ELEMENTSOF(jobs) + 1);
        ASSERT(jobs[0].runs == 2 && jobs[0].dones == 2);

        ASSERT(worker_pool_free(p) == NULL);
        ASSERT(worker_pool_free(NULL) == NULL);
        sd_event_unref(e);
}

/* With one thread, jobs start in submission order. */
static void test_fifo(void) {
        sd_event *e = event_new();
        worker_pool *p = NULL;
        test_job blocker, jobs[20];
        unsigned log[ELEMENTSOF(jobs) + 1], n_done = 0;
        gate g;

        gate_init(&g);
        start_count = 0;
        ASSERT_OK(worker_pool_new(e, 1, &p));

        job_init(&blocker, 100);
        blocker.gate = &g;
        blocker.start_log = log;
        blocker.done_counter = &n_done;
        ASSERT_OK(worker_pool_submit(p, &blocker.job));
        gate_wait_entered(&g, 1);

        for (unsigned i = 0; i < ELEMENTSOF(jobs); i++) {
                job_init(&jobs[i], i);
                jobs[i].start_log = log;
                jobs[i].done_counter = &n_done;
                ASSERT_OK(worker_pool_submit(p, &jobs[i].job));
        }
        assert_counters(p, 1, ELEMENTSOF(jobs), ELEMENTSOF(jobs) + 1);
        ASSERT(worker_job_started(&blocker.job));
        ASSERT(!worker_job_started(&jobs[0].job));

        gate_open(&g);
        run_until(e, &n_done, ELEMENTSOF(jobs) + 1);

        ASSERT(start_count == ELEMENTSOF(jobs) + 1);
        ASSERT(log[0] == 100);
        for (unsigned i = 0; i < ELEMENTSOF(jobs); i++) {
                ASSERT(log[i + 1] == i);
                assert_ran_once(&jobs[i]);
                /* one thread: completion order is start order */
                ASSERT(jobs[i].done_order == i + 1);
        }
        assert_ran_once(&blocker);
        assert_counters(p, 0, 0, 0);

        worker_pool_free(p);
        sd_event_unref(e);
        gate_destroy(&g);
}

/* N threads run N jobs at once: all N block in run() together, and a further
 * job waits in the queue until one of them returns. */
static void test_concurrency(void) {
        enum { N = 4, EXTRA = 3 };
        sd_event *e = event_new();
        worker_pool *p = NULL;
        test_job jobs[N + EXTRA];
        unsigned n_done = 0;
        gate g;

        gate_init(&g);
        ASSERT_OK(worker_pool_new(e, N, &p));
        for (unsigned i = 0; i < ELEMENTSOF(jobs); i++) {
                job_init(&jobs[i], i);
                jobs[i].gate = &g;
                jobs[i].done_counter = &n_done;
                ASSERT_OK(worker_pool_submit(p, &jobs[i].job));
        }

        /* This returns only if N jobs are inside run() at the same time. */
        gate_wait_entered(&g, N);
        /* Every thread is now blocked, so no other job can have started. */
        ASSERT(gate_entered(&g) == N);
        assert_counters(p, N, EXTRA, N + EXTRA);
        for (unsigned i = 0; i < N; i++)
                ASSERT(worker_job_started(&jobs[i].job));
        for (unsigned i = N; i < N + EXTRA; i++)
                ASSERT(!worker_job_started(&jobs[i].job));

        gate_open(&g);
        run_until(e, &n_done, N + EXTRA);
        for (unsigned i = 0; i < ELEMENTSOF(jobs); i++)
                assert_ran_once(&jobs[i]);
        assert_counters(p, 0, 0, 0);

        worker_pool_free(p);
        sd_event_unref(e);
        gate_destroy(&g);
}

static void test_cancel(void) {
        sd_event *e = event_new();
        worker_pool *p = NULL;
        test_job a, b, c, d, f;
        unsigned log[8], n_done = 0;
        gate g;

        gate_init(&g);
        start_count = 0;
        ASSERT_OK(worker_pool_new(e, 1, &p));

        /* Never submitted: nothing to cancel. */
        job_init(&f, 5);
        ASSERT(worker_pool_cancel_queued(p, &f.job) == 0);

        job_init(&a, 1);
        a.gate = &g;
        job_init(&b, 2);
        job_init(&c, 3);
        job_init(&d, 4);
        test_job *order[] = { &a, &b, &c, &d };
        for (unsigned i = 0; i < ELEMENTSOF(order); i++) {
                order[i]->start_log = log;
                order[i]->done_counter = &n_done;
                ASSERT_OK(worker_pool_submit(p, &order[i]->job));
        }
        gate_wait_entered(&g, 1);
        assert_counters(p, 1, 3, 4);

        /* A running job cannot be cancelled from the queue. */
        ASSERT(worker_pool_cancel_queued(p, &a.job) == 0);
        /* Queued ones can: the tail, then the head of the queue. */
        ASSERT(worker_pool_cancel_queued(p, &d.job) == 1);
        ASSERT(worker_pool_cancel_queued(p, &b.job) == 1);
        /* done() is not called from inside cancel */
        ASSERT(b.dones == 0 && d.dones == 0);
        /* twice: no longer queued */
        ASSERT(worker_pool_cancel_queued(p, &b.job) == 0);
        /* still pending until their done() ran */
        assert_counters(p, 1, 1, 4);

        /* The queue's tail pointer survived removing the tail: f goes after c. */
        f.start_log = log;
        f.done_counter = &n_done;
        ASSERT_OK(worker_pool_submit(p, &f.job));
        assert_counters(p, 1, 2, 5);

        /* The cancelled ones are handed back while a is still blocked, in the
         * order they were cancelled. */
        run_until(e, &n_done, 2);
        assert_cancelled(&d);
        assert_cancelled(&b);
        ASSERT(d.done_order == 0 && b.done_order == 1);
        ASSERT(a.dones == 0 && c.dones == 0 && f.dones == 0);
        assert_counters(p, 1, 2, 3);

        gate_open(&g);
        run_until(e, &n_done, 5);
        assert_ran_once(&a);
        assert_ran_once(&c);
        assert_ran_once(&f);
        ASSERT(start_count == 3);
        ASSERT(log[0] == 1 && log[1] == 3 && log[2] == 5);

        /* Finished jobs cannot be cancelled either. */
        ASSERT(worker_pool_cancel_queued(p, &a.job) == 0);
        ASSERT(worker_pool_cancel_queued(p, &c.job) == 0);
        ASSERT(worker_pool_cancel_queued(p, &d.job) == 0);
        assert_counters(p, 0, 0, 0);

        /* A cancelled job can be submitted again, and then it runs. */
        b.start_log = NULL;
        ASSERT_OK(worker_pool_submit(p, &b.job));
        run_until(e, &n_done, 6);
        ASSERT(b.runs == 1 && b.dones == 2 && !b.cancelled);

        worker_pool_free(p);
        sd_event_unref(e);
        gate_destroy(&g);
}

/* Freeing the pool with jobs queued and running: the queued ones are handed
 * back cancelled, the running ones finish and are handed back, once each, and
 * nothing hangs. The gate the running jobs wait on is opened by the done() of
 * a dropped job, which worker_pool_free() runs before it waits for the running
 * ones (as worker.h orders it). */
static void test_free_busy(void) {
        enum { N = 2, QUEUED = 5 };
        sd_event *e = event_new();
        worker_pool *p = NULL;
        test_job jobs[N + QUEUED], finished;
        unsigned n_done = 0;
        gate g;

        gate_init(&g);
        ASSERT_OK(worker_pool_new(e, N, &p));

        /* One job that has finished but whose done() has not run yet. */
        job_init(&finished, 99);
        finished.done_counter = &n_done;
        ASSERT_OK(worker_pool_submit(p, &finished.job));

        for (unsigned i = 0; i < ELEMENTSOF(jobs); i++) {
                job_init(&jobs[i], i);
                jobs[i].done_counter = &n_done;
                if (i < N)
                        jobs[i].gate = &g;
                else
                        jobs[i].open_in_done = &g;
                ASSERT_OK(worker_pool_submit(p, &jobs[i].job));
        }
        gate_wait_entered(&g, N);
        /* Both threads are blocked, so `finished` ran before and is waiting on
         * the completion list: worker_pool_free() hands it back first. */
        ASSERT(finished.runs == 1 && finished.dones == 0);
        assert_counters(p, N, QUEUED, N + QUEUED + 1);

        worker_pool_free(p);

        ASSERT(n_done == N + QUEUED + 1);
        assert_ran_once(&finished);
        ASSERT(finished.done_order == 0);
        for (unsigned i = 0; i < N; i++)
                assert_ran_once(&jobs[i]);
        for (unsigned i = N; i < N + QUEUED; i++) {
                assert_cancelled(&jobs[i]);
                ASSERT(jobs[i].done_order == 1 + i - N);
        }

        /* The event source is gone: the loop has nothing left to dispatch. */
        ASSERT(sd_event_run(e, 0) == 0);
        sd_event_unref(e);
        gate_destroy(&g);
}

/* Freeing a pool whose jobs are all still queued behind a running one, where
 * a done() tries to submit: refused, no hang. */
typedef struct resubmit_job {
        test_job t;
        worker_pool *pool;
        int submit_result;
} resubmit_job;

static void resubmit_done(worker_job *j) {
        resubmit_job *r = (resubmit_job *) j;

        test_done(j);
        r->submit_result = worker_pool_submit(r->pool, j);
}

static void test_free_submit_refused(void) {
        sd_event *e = event_new();
        worker_pool *p = NULL;
        resubmit_job r;
        test_job blocker;
        gate g;

        gate_init(&g);
        ASSERT_OK(worker_pool_new(e, 1, &p));

        job_init(&blocker, 1);
        blocker.gate = &g;
        ASSERT_OK(worker_pool_submit(p, &blocker.job));
        gate_wait_entered(&g, 1);

        job_init(&r.t, 2);
        r.t.job.done = resubmit_done;
        r.t.open_in_done = &g;
        r.pool = p;
        r.submit_result = 0;
        ASSERT_OK(worker_pool_submit(p, &r.t.job));

        worker_pool_free(p);
        assert_cancelled(&r.t);
        ASSERT(r.submit_result == -ESHUTDOWN);
        assert_ran_once(&blocker);

        sd_event_unref(e);
        gate_destroy(&g);
}

/* While every worker is blocked, the main loop still dispatches its other
 * sources; here a defer source and a timer source open the gate in turn. */
typedef struct responsive {
        gate *g;
        int defer_fired, timer_fired;
        unsigned entered_when_fired;
} responsive;

static int on_defer(sd_event_source *s, void *userdata) {
        responsive *r = userdata;

        r->defer_fired = 1;
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        responsive *r = userdata;

        r->timer_fired = 1;
        r->entered_when_fired = gate_entered(r->g);
        gate_open(r->g);
        return 0;
}

static void test_responsive(void) {
        enum { N = 2 };
        sd_event *e = event_new();
        sd_event_source *defer = NULL, *timer = NULL;
        worker_pool *p = NULL;
        test_job jobs[N + 2];
        unsigned n_done = 0;
        responsive r = {};
        uint64_t now;
        gate g;

        gate_init(&g);
        r.g = &g;
        ASSERT_OK(worker_pool_new(e, N, &p));
        for (unsigned i = 0; i < ELEMENTSOF(jobs); i++) {
                job_init(&jobs[i], i);
                jobs[i].gate = &g;
                jobs[i].done_counter = &n_done;
                ASSERT_OK(worker_pool_submit(p, &jobs[i].job));
        }
        gate_wait_entered(&g, N);

        ASSERT_OK(sd_event_add_defer(e, &defer, on_defer, &r));
        ASSERT_OK(sd_event_source_set_enabled(defer, SD_EVENT_ONESHOT));
        ASSERT_OK(sd_event_now(e, CLOCK_MONOTONIC, &now));
        ASSERT_OK(sd_event_add_time(e, &timer, CLOCK_MONOTONIC, now + 1000, 1, on_timer, &r));

        run_until(e, &n_done, ELEMENTSOF(jobs));
        ASSERT(r.defer_fired && r.timer_fired);
        /* the timer fired while all workers were blocked */
        ASSERT(r.entered_when_fired == N);
        for (unsigned i = 0; i < ELEMENTSOF(jobs); i++)
                assert_ran_once(&jobs[i]);

        sd_event_source_unref(defer);
        sd_event_source_unref(timer);
        worker_pool_free(p);
        sd_event_unref(e);
        gate_destroy(&g);
}

/* 1000 small heap-allocated jobs; every fifth is cancelled right after submit
 * (it may or may not have started: the result says which), every seventh
 * submits a follow-up job from its done(), and done() frees the job. */
typedef struct stress {
        worker_pool *pool;
        unsigned n_done, n_cancelled, n_runs_seen, n_followups;
        unsigned runs_total;     /* incremented atomically by run() */
} stress;

typedef struct stress_job {
        worker_job job;
        stress *s;
        unsigned id;
        unsigned runs;
        int expect_cancelled;    /* 1: cancel returned 1; 0: it returned 0; -1: not cancelled */
        int followup;
} stress_job;

static void stress_run(worker_job *j) {
        stress_job *t = (stress_job *) j;

        t->runs++;
        __atomic_add_fetch(&t->s->runs_total, 1, __ATOMIC_RELAXED);
}

static void stress_submit(stress *s, unsigned id, int followup);

static void stress_done(worker_job *j) {
        stress_job *t = (stress_job *) j;
        stress *s = t->s;

        ASSERT(is_main_thread());
        if (t->expect_cancelled == 1) {
                ASSERT(j->cancelled_before_start && t->runs == 0);
                s->n_cancelled++;
        } else {
                ASSERT(!j->cancelled_before_start && t->runs == 1);
                s->n_runs_seen++;
        }
        s->n_done++;
        if (!t->followup && t->id % 7 == 0) {
                stress_submit(s, t->id, 1);
                s->n_followups++;
        }
        free(t);
}

static void stress_submit(stress *s, unsigned id, int followup) {
        stress_job *t = calloc(1, sizeof *t);

        ASSERT(t);
        t->job.run = stress_run;
        t->job.done = stress_done;
        t->s = s;
        t->id = id;
        t->followup = followup;
        t->expect_cancelled = -1;
        ASSERT_OK(worker_pool_submit(s->pool, &t->job));
        if (!followup && id % 5 == 0)
                /* After this call t may be handed back at any later point, but
                 * not before the loop runs again, so t is still ours here. */
                t->expect_cancelled = worker_pool_cancel_queued(s->pool, &t->job);
}

static void test_stress(void) {
        enum { JOBS = 1000 };
        sd_event *e = event_new();
        stress s = {};
        unsigned followups = 0;

        ASSERT_OK(worker_pool_new(e, 4, &s.pool));
        for (unsigned i = 0; i < JOBS; i++)
                stress_submit(&s, i, 0);
        for (unsigned i = 0; i < JOBS; i += 7)
                followups++;

        run_until(e, &s.n_done, JOBS + followups);
        ASSERT(s.n_followups == followups);
        ASSERT(s.n_done == JOBS + followups);
        ASSERT(s.n_cancelled + s.n_runs_seen == s.n_done);
        ASSERT(__atomic_load_n(&s.runs_total, __ATOMIC_RELAXED) == s.n_runs_seen);
        assert_counters(s.pool, 0, 0, 0);
        printf("stress: %u jobs, %u cancelled before they started\n", s.n_done, s.n_cancelled);

        worker_pool_free(s.pool);
        sd_event_unref(e);
}

/* Many short-lived pools, some freed with work still queued. */
static void test_pool_churn(void) {
        for (unsigned round = 0; round < 50; round++) {
                sd_event *e = event_new();
                worker_pool *p = NULL;
                test_job jobs[8];
                unsigned n_done = 0;

                ASSERT_OK(worker_pool_new(e, 1 + round % 4, &p));
                for (unsigned i = 0; i < ELEMENTSOF(jobs); i++) {
                        job_init(&jobs[i], i);
                        jobs[i].done_counter = &n_done;
                        ASSERT_OK(worker_pool_submit(p, &jobs[i].job));
                }
                if (round % 2)
                        run_until(e, &n_done, ELEMENTSOF(jobs));
                worker_pool_free(p);
                ASSERT(n_done == ELEMENTSOF(jobs));
                for (unsigned i = 0; i < ELEMENTSOF(jobs); i++) {
                        ASSERT(jobs[i].dones == 1);
                        ASSERT(jobs[i].runs == (jobs[i].cancelled ? 0u : 1u));
                }
                sd_event_unref(e);
        }
}

/* ---- progress tests (fake clock: times in µs, explicit) */

#define SEC UINT64_C(1000000)
#define MS UINT64_C(1000)

static void test_progress_init(void) {
        op_progress p;

        op_progress_init(&p, 5 * SEC);
        ASSERT(p.fraction == 0.0);
        ASSERT_EQ_U64(p.bytes_done, 0);
        ASSERT_EQ_U64(p.bytes_total, 0);
        ASSERT_EQ_U64(p.rate, 0);
        ASSERT_EQ_U64(p.expected_end, 0);
        ASSERT_EQ_U64(p.last_publish, 0);
        ASSERT_EQ_U64(p.start, 5 * SEC);

        /* Nothing changed: nothing to publish, even the first time. */
        ASSERT(op_progress_sample(&p, 0, 0, 6 * SEC) == 0);
        ASSERT_EQ_U64(p.last_publish, 0);
}

static void test_progress_monotonic(void) {
        op_progress p;
        uint64_t t = 10 * SEC;

        op_progress_init(&p, t);
        ASSERT(op_progress_sample(&p, 500, 1000, t) == 1);
        ASSERT(p.fraction == 0.5);
        ASSERT_EQ_U64(p.bytes_done, 500);
        ASSERT_EQ_U64(p.bytes_total, 1000);

        /* A lower sample, published later: nothing moves back. */
        t += SEC;
        op_progress_sample(&p, 300, 1000, t);
        ASSERT(p.fraction == 0.5);
        ASSERT_EQ_U64(p.bytes_done, 500);

        /* A larger total would lower the fraction: it stays. */
        t += SEC;
        ASSERT(op_progress_sample(&p, 500, 2000, t) == 1);
        ASSERT_EQ_U64(p.bytes_total, 2000);
        ASSERT(p.fraction == 0.5);
        ASSERT_EQ_U64(p.bytes_done, 500);
        t += SEC;
        op_progress_sample(&p, 1200, 2000, t);
        ASSERT(p.fraction == 0.6);
        ASSERT_EQ_U64(p.bytes_done, 1200);

        /* Out-of-order samples inside one coalescing interval: the highest wins
         * at the next publication, even if the last sample is lower. */
        t += SEC;
        ASSERT(op_progress_sample(&p, 1500, 2000, t) == 1);
        ASSERT(op_progress_sample(&p, 1800, 2000, t + 50 * MS) == 0);
        ASSERT(op_progress_sample(&p, 1400, 2000, t + 100 * MS) == 0);
        ASSERT(op_progress_sample(&p, 1600, 2000, t + 250 * MS) == 1);
        ASSERT_EQ_U64(p.bytes_done, 1800);
        ASSERT(p.fraction == 0.9);

        /* A random walk: published values never go down. */
        rng r;
        double last_f = p.fraction;
        uint64_t last_b = p.bytes_done;
        rng_seed(&r, 42);
        t += SEC;
        for (unsigned i = 0; i < 2000; i++) {
                t += rng_range(&r, 0, 300 * MS);
                uint64_t total = rng_range(&r, 0, 3) ? 2000 + rng_below(&r, 2000) : 0;
                op_progress_sample(&p, rng_below(&r, 4000), total, t);
                ASSERT(p.fraction >= last_f);
                ASSERT(p.bytes_done >= last_b);
                ASSERT(p.fraction <= OP_PROGRESS_RUNNING_MAX);
                last_f = p.fraction;
                last_b = p.bytes_done;
        }
}

static void test_progress_coalesce(void) {
        op_progress p;
        uint64_t t0 = 100 * SEC;

        op_progress_init(&p, t0);
        ASSERT(op_progress_sample(&p, 10, 1000, t0) == 1);
        ASSERT_EQ_U64(p.last_publish, t0);

        /* Changes within 200 ms of the publication are held back ... */
        ASSERT(op_progress_sample(&p, 20, 1000, t0 + 1) == 0);
        ASSERT(op_progress_sample(&p, 30, 1000, t0 + 100 * MS) == 0);
        ASSERT(op_progress_sample(&p, 40, 1000, t0 + OP_PROGRESS_MIN_INTERVAL_USEC - 1) == 0);
        ASSERT_EQ_U64(p.bytes_done, 10);
        ASSERT_EQ_U64(p.last_publish, t0);
        /* ... and published once 200 ms have passed. */
        ASSERT(op_progress_sample(&p, 50, 1000, t0 + OP_PROGRESS_MIN_INTERVAL_USEC) == 1);
        ASSERT_EQ_U64(p.bytes_done, 50);
        ASSERT_EQ_U64(p.last_publish, t0 + OP_PROGRESS_MIN_INTERVAL_USEC);

        /* At most 5 publications per second, whatever the sampling rate. */
        unsigned published = 0;
        uint64_t t = t0 + SEC, last = 0;
        for (unsigned i = 0; i < 1000; i++, t += MS)
                if (op_progress_sample(&p, 100 + i, 1000000, t)) {
                        if (last)
                                ASSERT(t - last >= OP_PROGRESS_MIN_INTERVAL_USEC);
                        last = t;
                        published++;
                }
        ASSERT(published == 5);
}

/* A stalled operation with an unknown total: nothing changes, so nothing is
 * published, however much time passes. */
static void test_progress_unchanged(void) {
        op_progress p;
        uint64_t t = SEC;

        op_progress_init(&p, t);
        ASSERT(op_progress_sample(&p, 100, 0, t) == 1);
        ASSERT(op_progress_sample(&p, 100, 0, t + SEC) == 0);
        ASSERT(op_progress_sample(&p, 50, 0, t + 10 * SEC) == 0);
        ASSERT_EQ_U64(p.bytes_done, 100);
        ASSERT_EQ_U64(p.rate, 0);
        ASSERT_EQ_U64(p.last_publish, t);
}

static void test_progress_unknown_total(void) {
        op_progress p;
        uint64_t t = SEC;

        op_progress_init(&p, t);
        /* Total unknown: bytes and rate move, the fraction and ETA stay unknown. */
        ASSERT(op_progress_sample(&p, 1000, 0, t) == 1);
        ASSERT_EQ_U64(p.bytes_done, 1000);
        ASSERT_EQ_U64(p.bytes_total, 0);
        ASSERT(p.fraction == 0.0);
        ASSERT_EQ_U64(p.expected_end, 0);
        t += SEC;
        ASSERT(op_progress_sample(&p, 3000, 0, t) == 1);
        ASSERT_EQ_U64(p.rate, 2000);
        ASSERT(p.fraction == 0.0);
        ASSERT_EQ_U64(p.expected_end, 0);

        /* Then known. */
        t += SEC;
        ASSERT(op_progress_sample(&p, 5000, 10000, t) == 1);
        ASSERT_EQ_U64(p.bytes_total, 10000);
        ASSERT(p.fraction == 0.5);
        ASSERT_EQ_U64(p.rate, 2000);
        ASSERT_EQ_U64(p.expected_end, t + 5000 / 2000 * SEC + SEC / 2);

        /* A sample with total 0 again keeps the known total. */
        t += SEC;
        ASSERT(op_progress_sample(&p, 7000, 0, t) == 1);
        ASSERT_EQ_U64(p.bytes_total, 10000);
        ASSERT(p.fraction == 0.7);
}

static void test_progress_overrun(void) {
        op_progress p;
        uint64_t t = SEC;

        op_progress_init(&p, t);
        ASSERT(op_progress_sample(&p, 1500, 1000, t) == 1);
        /* Running never shows 1.0; bytes are capped at the total. */
        ASSERT(p.fraction == OP_PROGRESS_RUNNING_MAX);
        ASSERT(p.fraction < 1.0);
        ASSERT_EQ_U64(p.bytes_done, 1000);
        t += SEC;
        op_progress_sample(&p, 999, 1000, t);
        ASSERT(p.fraction == OP_PROGRESS_RUNNING_MAX);
        ASSERT_EQ_U64(p.bytes_done, 1000);
        /* Nothing left: the end is expected now. */
        t += SEC;
        op_progress_sample(&p, 2000, 1000, t);
        ASSERT(p.rate > 0);
        ASSERT_EQ_U64(p.expected_end, t);

        /* Exactly done, still running: below 1.0 too. */
        op_progress_init(&p, t);
        ASSERT(op_progress_sample(&p, 1000, 1000, t) == 1);
        ASSERT(p.fraction == OP_PROGRESS_RUNNING_MAX);
        ASSERT(op_progress_finish(&p, 1, 1000, 1000, t + 1) == 1);
        ASSERT(p.fraction == 1.0);
}

static void test_progress_rate(void) {
        op_progress p;
        uint64_t t0 = 1000 * SEC;
        const uint64_t total = 1000 * MiB;

        op_progress_init(&p, t0);
        /* One sample: no rate, no ETA. */
        ASSERT(op_progress_sample(&p, 0, total, t0) == 1);
        ASSERT_EQ_U64(p.rate, 0);
        ASSERT_EQ_U64(p.expected_end, 0);

        /* 100 MiB/s for 4 s, sampled every second. */
        for (unsigned i = 1; i <= 4; i++) {
                ASSERT(op_progress_sample(&p, i * 100 * MiB, total, t0 + i * SEC) == 1);
                ASSERT_EQ_U64(p.rate, 100 * MiB);
                /* (1000 - 100 i) MiB left at 100 MiB/s */
                ASSERT_EQ_U64(p.expected_end, t0 + i * SEC + (10 - i) * SEC);
        }

        /* Then 10 MiB/s: the window (5 s) still holds the fast start ... */
        uint64_t done = 400 * MiB, t = t0 + 4 * SEC;
        done += 10 * MiB;
        t += SEC;
        ASSERT(op_progress_sample(&p, done, total, t) == 1);
        /* samples t0..t0+5s: 410 MiB in 5 s */
        ASSERT_EQ_U64(p.rate, 82 * MiB);
        /* 590 MiB left at 82 MiB/s, rounded to the µs */
        ASSERT_EQ_U64(p.expected_end, t + ((total - done) * SEC + 41 * MiB) / (82 * MiB));

        /* ... and forgets it after 5 s of the slow rate. */
        for (unsigned i = 0; i < 5; i++) {
                done += 10 * MiB;
                t += SEC;
                op_progress_sample(&p, done, total, t);
        }
        ASSERT_EQ_U64(p.rate, 10 * MiB);
        ASSERT_EQ_U64(p.bytes_done, 460 * MiB);
        ASSERT_EQ_U64(p.expected_end, t + 54 * SEC);

        /* Samples sparser than the window: the rate of the last interval. */
        t += 20 * SEC;
        done += 200 * MiB;
        ASSERT(op_progress_sample(&p, done, total, t) == 1);
        ASSERT_EQ_U64(p.rate, 10 * MiB);
        t += 10 * SEC;
        done += 50 * MiB;
        ASSERT(op_progress_sample(&p, done, total, t) == 1);
        ASSERT_EQ_U64(p.rate, 5 * MiB);
        ASSERT_EQ_U64(p.expected_end, t + (total - done) / (5 * MiB) * SEC);

        /* A stall: after a window without progress the rate is 0 (unknown), and
         * so is the ETA. */
        for (unsigned i = 0; i < 6; i++) {
                t += SEC;
                op_progress_sample(&p, done, total, t);
        }
        ASSERT_EQ_U64(p.rate, 0);
        ASSERT_EQ_U64(p.expected_end, 0);
        /* Nothing changes any more: nothing to publish. */
        t += SEC;
        ASSERT(op_progress_sample(&p, done, total, t) == 0);
        t += 10 * SEC;
        ASSERT(op_progress_sample(&p, done, total, t) == 0);

        /* A decreasing sample does not make the rate negative. */
        t += SEC;
        op_progress_sample(&p, 0, total, t);
        ASSERT_EQ_U64(p.rate, 0);
        ASSERT_EQ_U64(p.bytes_done, done);

        /* More samples than the ring holds, faster than the window: the rate
         * still covers what the ring holds (32 × 100 ms). */
        op_progress_init(&p, t0);
        for (unsigned i = 0; i <= 100; i++)
                op_progress_sample(&p, i * MiB, total, t0 + i * 100 * MS);
        ASSERT_EQ_U64(p.rate, 10 * MiB);

        /* Rates of huge sizes do not overflow. */
        op_progress_init(&p, t0);
        op_progress_sample(&p, 0, UINT64_MAX, t0);
        op_progress_sample(&p, UINT64_MAX / 2, UINT64_MAX, t0 + SEC);
        ASSERT(p.rate > UINT64_MAX / 4);
        ASSERT(p.expected_end > t0 + SEC);
}

static void test_progress_finish(void) {
        op_progress p;
        uint64_t t = SEC;

        /* Success: 1.0, bytes = total, no rate or ETA; no rate limit. */
        op_progress_init(&p, t);
        ASSERT(op_progress_sample(&p, 100, 1000, t) == 1);
        ASSERT(op_progress_sample(&p, 400, 1000, t + SEC) == 1);
        ASSERT(p.rate > 0 && p.expected_end > 0);
        ASSERT(op_progress_finish(&p, 1, 900, 1000, t + SEC + 1) == 1);
        ASSERT(p.fraction == 1.0);
        ASSERT_EQ_U64(p.bytes_done, 1000);
        ASSERT_EQ_U64(p.bytes_total, 1000);
        ASSERT_EQ_U64(p.rate, 0);
        ASSERT_EQ_U64(p.expected_end, 0);
        ASSERT_EQ_U64(p.last_publish, t + SEC + 1);

        /* Success with a total given only at the end. */
        op_progress_init(&p, t);
        ASSERT(op_progress_sample(&p, 100, 0, t) == 1);
        ASSERT(op_progress_finish(&p, 1, 100, 4096, t + 1) == 1);
        ASSERT(p.fraction == 1.0);
        ASSERT_EQ_U64(p.bytes_done, 4096);
        ASSERT_EQ_U64(p.bytes_total, 4096);

        /* Success with no total ever: bytes are the highest done seen. */
        op_progress_init(&p, t);
        ASSERT(op_progress_sample(&p, 700, 0, t) == 1);
        ASSERT(op_progress_sample(&p, 800, 0, t + 1) == 0);
        ASSERT(op_progress_finish(&p, 1, 750, 0, t + 2) == 1);
        ASSERT(p.fraction == 1.0);
        ASSERT_EQ_U64(p.bytes_done, 800);
        ASSERT_EQ_U64(p.bytes_total, 0);

        /* Zero-length operation: total 0 throughout. */
        op_progress_init(&p, t);
        ASSERT(op_progress_sample(&p, 0, 0, t) == 0);
        ASSERT(op_progress_finish(&p, 1, 0, 0, t + 1) == 1);
        ASSERT(p.fraction == 1.0);
        ASSERT_EQ_U64(p.bytes_done, 0);
        ASSERT_EQ_U64(p.bytes_total, 0);
        ASSERT_EQ_U64(p.rate, 0);
        ASSERT_EQ_U64(p.expected_end, 0);

        /* Failure: the last published values stay, rate and ETA go. */
        op_progress_init(&p, t);
        ASSERT(op_progress_sample(&p, 250, 1000, t) == 1);
        ASSERT(op_progress_sample(&p, 400, 1000, t + SEC) == 1);
        ASSERT(op_progress_sample(&p, 450, 1000, t + SEC + 1) == 0);   /* coalesced */
        ASSERT(op_progress_finish(&p, 0, 450, 1000, t + SEC + 2) == 1);
        ASSERT(p.fraction == 0.4);
        ASSERT_EQ_U64(p.bytes_done, 400);
        ASSERT_EQ_U64(p.bytes_total, 1000);
        ASSERT_EQ_U64(p.rate, 0);
        ASSERT_EQ_U64(p.expected_end, 0);
        ASSERT(p.fraction < 1.0);

        /* Failure before anything was published. */
        op_progress_init(&p, t);
        ASSERT(op_progress_finish(&p, 0, 10, 100, t) == 1);
        ASSERT(p.fraction == 0.0);
        ASSERT_EQ_U64(p.bytes_done, 0);
}

int main(void) {
        main_thread = pthread_self();
        main_tid = gettid_();

        test_basic();
        test_fifo();
        test_concurrency();
        test_cancel();
        test_free_busy();
        test_free_submit_refused();
        test_responsive();
        test_stress();
        test_pool_churn();

        test_progress_init();
        test_progress_monotonic();
        test_progress_coalesce();
        test_progress_unchanged();
        test_progress_unknown_total();
        test_progress_overrun();
        test_progress_rate();
        test_progress_finish();

        printf("test-worker: ok\n");
        return 0;
}
