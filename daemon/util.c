/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Logging, clocks and the per-Disk task queue in front of the worker pool. */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "vdiskd.h"

void log_msg(const char *fmt, ...) {
        va_list ap;
        int saved = errno;

        fputs("vdiskd: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        errno = saved;
}

int log_oom(void) {
        log_error("Out of memory.");
        return -ENOMEM;
}

uint64_t now_realtime(Manager *m) {
        uint64_t t;

        if (m && m->event && sd_event_now(m->event, CLOCK_REALTIME, &t) >= 0)
                return t;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

uint64_t now_monotonic(Manager *m) {
        uint64_t t;

        if (m && m->event && sd_event_now(m->event, CLOCK_MONOTONIC, &t) >= 0)
                return t;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

/* ---------------------------------------------------------------- tasks */

static void task_job_run(worker_job *j) {
        Task *t = container_of(j, Task, job);

        t->run(t);
}

static void disk_kick(Disk *d);

static void task_job_done(worker_job *j) {
        Task *t = container_of(j, Task, job);
        Manager *m = t->manager;
        Disk *d = t->disk;
        bool cancelled = j->cancelled_before_start;

        if (d) {
                assert(d->active == t);
                d->active = NULL;
                t->disk = NULL;
        }
        t->done(t, cancelled);   /* may free t */
        if (d) {
                disk_kick(d);
                disk_unref(d);
        }
        manager_shutdown_check(m);
}

/* Finishes every task still waiting on the disk as cancelled (shutdown). */
void disk_drain_queue(Disk *d) {
        disk_ref(d);
        while (d->queue_head) {
                Task *t = d->queue_head;

                d->queue_head = t->disk_next;
                if (!d->queue_head)
                        d->queue_tail = NULL;
                t->disk_next = NULL;
                t->disk = NULL;
                t->done(t, true);
                disk_unref(d);
        }
        disk_unref(d);
}

static void disk_kick(Disk *d) {
        Manager *m = d->manager;
        Task *t;

        if (d->active || !d->queue_head)
                return;
        if (m->shutting_down || !m->pool) {
                disk_drain_queue(d);
                return;
        }
        t = d->queue_head;
        d->queue_head = t->disk_next;
        if (!d->queue_head)
                d->queue_tail = NULL;
        t->disk_next = NULL;
        d->active = t;
        t->submitted = true;
        (void) worker_pool_submit(m->pool, &t->job);
}

int task_submit(Manager *m, Task *t, Disk *d) {
        if (m->shutting_down || !m->pool)
                return -ESHUTDOWN;
        t->manager = m;
        t->job.run = task_job_run;
        t->job.done = task_job_done;
        t->job.cancelled_before_start = 0;
        t->submitted = false;
        t->disk_next = NULL;
        if (!d) {
                t->disk = NULL;
                t->submitted = true;
                return worker_pool_submit(m->pool, &t->job);
        }
        t->disk = disk_ref(d);
        if (d->queue_tail)
                d->queue_tail->disk_next = t;
        else
                d->queue_head = t;
        d->queue_tail = t;
        disk_kick(d);
        return 0;
}

int task_cancel_queued(Task *t) {
        Disk *d = t->disk;

        if (t->submitted)
                return worker_pool_cancel_queued(t->manager->pool, &t->job) > 0;
        /* Still waiting in its disk's queue: take it out and finish it now. */
        assert(d);
        for (Task **p = &d->queue_head, *prev = NULL; *p; prev = *p, p = &(*p)->disk_next)
                if (*p == t) {
                        *p = t->disk_next;
                        if (d->queue_tail == t)
                                d->queue_tail = prev;
                        t->disk_next = NULL;
                        t->disk = NULL;
                        t->done(t, true);
                        disk_unref(d);
                        return 1;
                }
        return 0;
}

bool task_started(Task *t) {
        return t->submitted && worker_job_started(&t->job);
}
