/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Logging, clocks, per-uid records, and the task layer in front of the worker
 * pool:
 *
 *   task_submit ─► Disk's FIFO (one active) ─┐
 *       (no Disk) ───────────────────────────┴─► user's ready queue ─► pool (FIFO)
 *
 * The pool is generic FIFO; fairness lives here. A task goes to the pool only
 * when a worker is free (at most `workers` tasks in the pool) and its user has
 * fewer than --max-workers-per-user tasks there (default workers - 1, at least
 * 1); among the users with waiting tasks the one served least recently goes
 * first (round robin). So one uid whose files hang (FUSE, NFS) holds at most
 * its share of the workers, and everybody else still gets one.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

/* ---------------------------------------------------------------- users */

User *user_get(Manager *m, uid_t uid) {
        User *u;

        for (u = m->users; u; u = u->users_next)
                if (u->uid == uid)
                        return user_ref(u);
        u = calloc(1, sizeof *u);
        if (!u)
                return NULL;
        u->manager = m;
        u->n_ref = 1;
        u->uid = uid;
        LIST_PREPEND(users, m->users, u);
        return u;
}

User *user_ref(User *u) {
        if (u)
                u->n_ref++;
        return u;
}

User *user_unref(User *u) {
        if (!u)
                return NULL;
        assert(u->n_ref > 0);
        if (--u->n_ref > 0)
                return NULL;
        /* Whatever is counted holds a reference. */
        assert(!u->ready_head && u->n_busy == 0 && u->n_disks == 0 && u->n_calls == 0 && u->n_fds == 0);
        LIST_REMOVE(users, u->manager->users, u);
        free(u);
        return NULL;
}

/* ---------------------------------------------------------------- tasks */

static void task_job_run(worker_job *j) {
        Task *t = container_of(j, Task, job);

        t->run(t);
}

static void disk_kick(Disk *d);
static void sched_dispatch(Manager *m);

/* The end of a task that left its disk's FIFO: done, then the disk's next
 * task, then whoever waits for the worker. */
static void task_finish(Task *t, bool cancelled) {
        Manager *m = t->manager;
        Disk *d = t->disk;
        User *u = t->user;

        if (d) {
                assert(d->active == t);
                d->active = NULL;
                t->disk = NULL;
        }
        t->state = TASK_IDLE;
        t->user = NULL;
        t->done(t, cancelled);   /* may free t */
        if (d) {
                disk_kick(d);
                disk_unref(d);
        }
        user_unref(u);
        sched_dispatch(m);
        manager_update_idle(m);   /* the last task (say, closing a caller's fds) may just have ended */
        manager_shutdown_check(m);
}

static void task_job_done(worker_job *j) {
        Task *t = container_of(j, Task, job);
        Manager *m = t->manager;

        assert(t->state == TASK_POOLED);
        assert(t->user->n_busy > 0 && m->n_pooled > 0);
        t->user->n_busy--;
        m->n_pooled--;
        task_finish(t, j->cancelled_before_start);
}

static int on_failed_defer(sd_event_source *s, void *userdata) {
        Manager *m = userdata;

        while (m->failed_head) {
                Task *t = m->failed_head;

                m->failed_head = t->ready_next;
                if (!m->failed_head)
                        m->failed_tail = NULL;
                t->ready_next = NULL;
                task_finish(t, true);
        }
        return 0;
}

/* The pool refused the task: its done runs (cancelled) from the event loop,
 * never from inside the call that tried to hand it over. */
static void task_fail_later(Manager *m, Task *t) {
        int r;

        t->state = TASK_FAILED;
        t->ready_next = NULL;
        if (m->failed_tail)
                m->failed_tail->ready_next = t;
        else
                m->failed_head = t;
        m->failed_tail = t;
        if (!m->event)
                return;
        if (!m->failed_defer) {
                r = sd_event_add_defer(m->event, &m->failed_defer, on_failed_defer, m);
                if (r < 0) {
                        log_error("Failed to schedule the end of a refused task: %s", strerror(-r));
                        return;   /* manager_free() ends it */
                }
        }
        (void) sd_event_source_set_enabled(m->failed_defer, SD_EVENT_ONESHOT);
}

static bool user_may_run(Manager *m, User *u) {
        return u->ready_head && u->n_busy < m->max_workers_per_user;
}

/* Hands waiting tasks to free workers, round robin across users. */
static void sched_dispatch(Manager *m) {
        while (m->pool && !m->pool_closing && m->n_pooled < m->workers) {
                User *best = NULL;
                Task *t;
                int r;

                for (User *u = m->users; u; u = u->users_next)
                        if (user_may_run(m, u) && (!best || u->served < best->served))
                                best = u;
                if (!best)
                        return;
                t = best->ready_head;
                best->ready_head = t->ready_next;
                if (!best->ready_head)
                        best->ready_tail = NULL;
                t->ready_next = NULL;
                best->served = ++m->sched_seq;
                r = worker_pool_submit(m->pool, &t->job);
                if (r < 0) {
                        log_error("Failed to hand a task to the worker pool: %s", strerror(-r));
                        task_fail_later(m, t);
                        continue;
                }
                t->state = TASK_POOLED;
                best->n_busy++;
                m->n_pooled++;
        }
}

static void task_make_ready(Manager *m, Task *t) {
        User *u = t->user;

        t->state = TASK_READY;
        t->ready_next = NULL;
        if (u->ready_tail)
                u->ready_tail->ready_next = t;
        else
                u->ready_head = t;
        u->ready_tail = t;
        sched_dispatch(m);
}

/* Finishes a task that waits in its disk's FIFO (it never held the disk). */
static void task_finish_disk_queued(Task *t) {
        Disk *d = t->disk;
        User *u = t->user;

        t->disk_next = NULL;
        t->disk = NULL;
        t->user = NULL;
        t->state = TASK_IDLE;
        t->done(t, true);
        disk_unref(d);
        user_unref(u);
}

/* Finishes every task still waiting on the disk as cancelled (shutdown). */
void disk_drain_queue(Disk *d) {
        disk_ref(d);
        while (d->queue_head) {
                Task *t = d->queue_head;

                d->queue_head = t->disk_next;
                if (!d->queue_head)
                        d->queue_tail = NULL;
                task_finish_disk_queued(t);
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
        task_make_ready(m, t);
}

static void task_enqueue(Manager *m, Task *t, Disk *d, User *u) {
        assert(u);
        assert(t->state == TASK_IDLE);   /* never submitted twice at once */
        t->manager = m;
        t->job.run = task_job_run;
        t->job.done = task_job_done;
        t->job.cancelled_before_start = 0;
        t->user = user_ref(u);
        t->disk_next = t->ready_next = NULL;
        if (!d) {
                t->disk = NULL;
                task_make_ready(m, t);
                return;
        }
        t->disk = disk_ref(d);
        t->state = TASK_DISK_QUEUED;
        if (d->queue_tail)
                d->queue_tail->disk_next = t;
        else
                d->queue_head = t;
        d->queue_tail = t;
        disk_kick(d);
}

int task_submit(Manager *m, Task *t, Disk *d, User *u) {
        if (m->shutting_down || !m->pool)
                return -ESHUTDOWN;
        task_enqueue(m, t, d, u);
        return 0;
}

static void user_ready_remove(User *u, Task *t) {
        for (Task **p = &u->ready_head, *prev = NULL; *p; prev = *p, p = &(*p)->ready_next)
                if (*p == t) {
                        *p = t->ready_next;
                        if (u->ready_tail == t)
                                u->ready_tail = prev;
                        t->ready_next = NULL;
                        return;
                }
        assert(!"task not in its user's queue");
}

int task_cancel_queued(Task *t) {
        Disk *d = t->disk;

        switch (t->state) {
        case TASK_DISK_QUEUED:
                /* Still waiting in its disk's queue: take it out and finish it now. */
                for (Task **p = &d->queue_head, *prev = NULL; *p; prev = *p, p = &(*p)->disk_next)
                        if (*p == t) {
                                *p = t->disk_next;
                                if (d->queue_tail == t)
                                        d->queue_tail = prev;
                                task_finish_disk_queued(t);
                                return 1;
                        }
                assert(!"task not in its disk's queue");
                return 0;
        case TASK_READY:
                /* Waiting for a worker: finish it now (it may hold its disk:
                 * task_finish passes the disk on). */
                user_ready_remove(t->user, t);
                task_finish(t, true);
                return 1;
        case TASK_POOLED:
                return worker_pool_cancel_queued(t->manager->pool, &t->job) > 0;
        default:
                return 0;
        }
}

void task_cancel_all_ready(Manager *m) {
        for (;;) {
                Task *t = NULL;

                for (User *u = m->users; u && !t; u = u->users_next)
                        t = u->ready_head;
                if (!t)
                        t = m->failed_head;
                if (!t)
                        return;
                if (t->state == TASK_FAILED) {
                        m->failed_head = t->ready_next;
                        if (!m->failed_head)
                                m->failed_tail = NULL;
                        t->ready_next = NULL;
                } else
                        user_ready_remove(t->user, t);
                task_finish(t, true);
        }
}

bool task_any_waiting(Manager *m) {
        if (m->failed_head)
                return true;
        for (User *u = m->users; u; u = u->users_next)
                if (u->ready_head)
                        return true;
        return false;
}

bool task_started(Task *t) {
        return t->state == TASK_POOLED && worker_job_started(&t->job);
}

bool task_pending(Task *t) {
        return t->state != TASK_IDLE;
}

/* ---------------------------------------------------------------- trash */

typedef struct DisposeTask {
        Task task;
        Trash trash;
        User *user;                      /* ref; charged with trash.n_held until done */
        unsigned n_held;
} DisposeTask;

static void trash_close(Trash *t) {
        for (size_t i = 0; i < t->n_fds; i++)
                (void) close(t->fds[i]);
        for (size_t i = 0; i < t->n_vds; i++)
                /* Flushes and closes its images; nobody is left to tell of a
                 * failure but the journal. */
                if (vdisk_disk_close(t->vds[i]) < 0)
                        log_error("Closing a disk nobody uses any more: %s", vdisk_last_error());
        free(t->fds);
        free(t->vds);
        *t = (Trash) {};
}

void trash_fd(Trash *t, int fd) {
        int *n;

        if (fd < 0)
                return;
        n = reallocarray(t->fds, t->n_fds + 1, sizeof(int));
        if (!n) {
                log_oom();
                (void) close(fd);   /* nowhere to keep it */
                return;
        }
        t->fds = n;
        t->fds[t->n_fds++] = fd;
        t->n_held++;
}

void trash_vd(Trash *t, vdisk_disk *vd, unsigned n_fds) {
        vdisk_disk **n;

        if (!vd)
                return;
        n = reallocarray(t->vds, t->n_vds + 1, sizeof(vdisk_disk *));
        if (!n) {
                log_oom();
                vdisk_disk_unref(vd);
                return;
        }
        t->vds = n;
        t->vds[t->n_vds++] = vd;
        t->n_held += n_fds;
}

static void dispose_run(Task *t) {
        DisposeTask *dt = container_of(t, DisposeTask, task);

        trash_close(&dt->trash);
}

static void dispose_done(Task *t, bool cancelled) {
        DisposeTask *dt = container_of(t, DisposeTask, task);

        /* Not run (the pool went away first): close here, at exit. */
        trash_close(&dt->trash);
        assert(dt->user->n_fds >= dt->n_held);
        user_charge_fds(dt->user, 0, dt->n_held);
        user_unref(dt->user);
        free(dt);
}

void trash_empty(Manager *m, User *u, Trash *t) {
        DisposeTask *dt;
        User *charged;

        if (t->n_fds == 0 && t->n_vds == 0) {
                *t = (Trash) {};
                return;
        }
        if (!m->pool || m->pool_closing) {
                trash_close(t);   /* no worker left: only at exit */
                return;
        }
        dt = calloc(1, sizeof *dt);
        charged = u ? user_ref(u) : user_get(m, UID_UNKNOWN);
        if (!dt || !charged) {
                log_oom();
                free(dt);
                user_unref(charged);
                trash_close(t);
                return;
        }
        dt->trash = *t;
        *t = (Trash) {};
        dt->task.run = dispose_run;
        dt->task.done = dispose_done;
        dt->user = charged;
        dt->n_held = dt->trash.n_held;
        user_charge_fds(charged, dt->n_held, 0);
        /* Also while shutting down: the loop waits for it like for any task. */
        task_enqueue(m, &dt->task, NULL, charged);
}
