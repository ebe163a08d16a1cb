/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Progress with cooperative cancel. The counters are atomics so that another
 * thread (the daemon's main loop) may read them and set cancel at any time. */
#include <stdlib.h>

#include "util/util.h"

int vdisk_progress_new(vdisk_progress_fn fn, void *user, vdisk_progress **ret) {
        vdisk_progress *p;

        if (!ret)
                return vdisk_error(-EINVAL, "progress: no return pointer");
        p = calloc(1, sizeof *p);
        if (!p)
                return vdisk_error(-ENOMEM, "progress: out of memory");
        p->fn = fn;
        p->user = user;
        *ret = p;
        return 0;
}

vdisk_progress *vdisk_progress_free(vdisk_progress *p) {
        free(p);
        return NULL;
}

uint64_t vdisk_progress_done(const vdisk_progress *p) {
        return p ? atomic_load(&((vdisk_progress *) p)->done) : 0;
}

uint64_t vdisk_progress_total(const vdisk_progress *p) {
        return p ? atomic_load(&((vdisk_progress *) p)->total) : 0;
}

void vdisk_progress_cancel(vdisk_progress *p) {
        if (p)
                atomic_store(&p->cancelled, 1);
}

int vdisk_progress_cancelled(const vdisk_progress *p) {
        return p ? atomic_load(&((vdisk_progress *) p)->cancelled) : 0;
}

void progress_set_total(vdisk_progress *p, uint64_t total) {
        if (!p)
                return;
        atomic_store(&p->total, total);
        atomic_store(&p->done, 0);
        p->last_report = 0;
}

int progress_check(vdisk_progress *p) {
        if (p && atomic_load(&p->cancelled))
                return vdisk_error(-ECANCELED, "operation cancelled");
        return 0;
}

int progress_add(vdisk_progress *p, uint64_t n) {
        uint64_t done, total;

        if (!p)
                return 0;
        total = atomic_load(&p->total);
        done = atomic_load(&p->done) + n;
        if (total && done > total)
                done = total;
        atomic_store(&p->done, done);
        /* Call back every 1/256 of the work (or every 64 MiB when the total is unknown). */
        if (p->fn && done - p->last_report >= MAX(total / 256, (uint64_t) 1 << 20)) {
                p->last_report = done;
                p->fn(p, p->user);
        }
        return progress_check(p);
}

void progress_finish(vdisk_progress *p) {
        if (!p)
                return;
        atomic_store(&p->done, atomic_load(&p->total));
        if (p->fn)
                p->fn(p, p->user);
}
