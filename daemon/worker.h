/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The worker pool: runs blocking jobs (file I/O, libvdisk operations) on
 * worker threads and hands each finished job back to the main thread through
 * an eventfd watched by sd-event. Only the main thread calls these functions
 * (except where noted); only the main thread ever runs `done`.
 */
#pragma once

#include <stdint.h>
#include <systemd/sd-event.h>

typedef struct worker_pool worker_pool;
typedef struct worker_job worker_job;

struct worker_job {
        /* Runs on a worker thread. Must not touch sd-bus or any main-thread state
         * that is not its own. */
        void (*run)(worker_job *j);
        /* Runs on the main thread after `run` returned (or instead of it, with
         * `cancelled_before_start` set, when the job was dropped from the queue
         * by worker_pool_cancel_queued() or by freeing the pool). May free j. */
        void (*done)(worker_job *j);
        int cancelled_before_start;   /* set by the pool before calling done */
        /* private to the pool */
        worker_job *next;
        int state;
};

/* Starts n_threads worker threads (n_threads ≥ 1) and registers the completion
 * eventfd on e. */
int worker_pool_new(sd_event *e, unsigned n_threads, worker_pool **ret);
/* Drops queued jobs (their `done` runs with cancelled_before_start), waits for
 * running jobs to return, runs their `done`, joins the threads. NULL-safe. */
/* (In this order: the `done`s of jobs that had already finished, then those of
 * the dropped jobs, then it waits. It blocks until every running `run` returns,
 * so set the cancel flags of running operations first. Not to be called from a
 * `done`; a `done` run from here gets -ESHUTDOWN from worker_pool_submit().) */
worker_pool *worker_pool_free(worker_pool *p);
/* Queues a job; it runs when a worker is free, in submission order. The caller
 * keeps j alive until `done` has run. */
int worker_pool_submit(worker_pool *p, worker_job *j);
/* Removes a job that has not started yet from the queue; its `done` runs
 * (later, from the event loop) with cancelled_before_start set. Returns 1 if
 * removed, 0 if it already started or finished. */
int worker_pool_cancel_queued(worker_pool *p, worker_job *j);
/* Whether the job has been taken by a worker (running or finished). */
int worker_job_started(const worker_job *j);
unsigned worker_pool_threads(const worker_pool *p);
unsigned worker_pool_running(const worker_pool *p);   /* jobs in `run` now */
unsigned worker_pool_queued(const worker_pool *p);    /* jobs waiting for a worker */
/* Jobs submitted and whose `done` has not run yet (queued + running + finished
 * but not yet handed back). */
unsigned worker_pool_pending(const worker_pool *p);
