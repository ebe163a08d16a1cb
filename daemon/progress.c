/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What an Operation publishes about its progress (see progress.h for the
 * rules). The ring of samples holds (time, highest done seen so far) with
 * strictly increasing times; its newest entry is the highest done ever seen,
 * published or not. Rates are computed in double: precise to far below a
 * byte per second for realistic sizes, and free of the overflow of done * 1e6.
 */
#include "macro.h"
#include "progress.h"

#define USEC_PER_SEC 1000000.0

typedef struct values {
        double fraction;
        uint64_t bytes_done, bytes_total, rate, expected_end;
} values;

static unsigned ring_index(const op_progress *p, unsigned age) {
        /* age 0 is the newest sample */
        assert(age < p->n_samples);
        return (p->head + OP_PROGRESS_SAMPLES - 1 - age) % OP_PROGRESS_SAMPLES;
}

/* Records a sample and returns the time it was taken at (never before the
 * previous one). */
static uint64_t ring_push(op_progress *p, uint64_t done, uint64_t now) {
        if (p->n_samples > 0) {
                unsigned newest = ring_index(p, 0);

                done = MAX(done, p->samples[newest].done);
                if (now <= p->samples[newest].t) {
                        /* Same instant (or a clock step back): update in place. */
                        p->samples[newest].done = done;
                        return p->samples[newest].t;
                }
        }

        p->samples[p->head].t = now;
        p->samples[p->head].done = done;
        p->head = (p->head + 1) % OP_PROGRESS_SAMPLES;
        if (p->n_samples < OP_PROGRESS_SAMPLES)
                p->n_samples++;
        return now;
}

static uint64_t highest_done(const op_progress *p) {
        return p->n_samples > 0 ? p->samples[ring_index(p, 0)].done : 0;
}

/* Bytes per second over the window ending at the newest sample, 0 if unknown. */
static uint64_t ring_rate(const op_progress *p) {
        unsigned base = 0;
        uint64_t t_new, d_new;
        double rate;

        if (p->n_samples < 2)
                return 0;

        t_new = p->samples[ring_index(p, 0)].t;
        d_new = p->samples[ring_index(p, 0)].done;
        for (unsigned age = 1; age < p->n_samples; age++) {
                if (t_new - p->samples[ring_index(p, age)].t > OP_PROGRESS_RATE_WINDOW_USEC) {
                        if (base == 0)
                                base = age;   /* nothing inside the window: the last interval */
                        break;
                }
                base = age;
        }

        rate = (double) (d_new - p->samples[ring_index(p, base)].done) * USEC_PER_SEC /
               (double) (t_new - p->samples[ring_index(p, base)].t);
        if (rate >= 18446744073709551615.0)
                return UINT64_MAX;
        return (uint64_t) (rate + 0.5);
}

/* now + remaining / rate, 0 when unknown or beyond representation. */
static uint64_t expected_end(uint64_t now, uint64_t done, uint64_t total, uint64_t rate) {
        double eta;

        if (rate == 0 || total == 0)
                return 0;

        eta = (double) (total > done ? total - done : 0) * USEC_PER_SEC / (double) rate;
        if (eta >= (double) (UINT64_MAX - now))
                return 0;
        return now + (uint64_t) (eta + 0.5);
}

/* The values a publication at `now` would show, running. */
static values running_values(const op_progress *p, uint64_t total, uint64_t now) {
        values v = {
                .bytes_total = total > 0 ? total : p->bytes_total,
                .fraction = p->fraction,
        };
        uint64_t done = highest_done(p);

        if (v.bytes_total > 0)
                done = MIN(done, v.bytes_total);
        v.bytes_done = MAX(p->bytes_done, done);

        if (v.bytes_total > 0) {
                double f = MIN((double) v.bytes_done / (double) v.bytes_total, OP_PROGRESS_RUNNING_MAX);
                v.fraction = MAX(v.fraction, f);
        }

        v.rate = ring_rate(p);
        v.expected_end = expected_end(now, v.bytes_done, v.bytes_total, v.rate);
        return v;
}

static bool values_differ(const op_progress *p, const values *v) {
        return p->fraction != v->fraction ||
                p->bytes_done != v->bytes_done ||
                p->bytes_total != v->bytes_total ||
                p->rate != v->rate ||
                p->expected_end != v->expected_end;
}

static void publish(op_progress *p, const values *v, uint64_t now) {
        p->fraction = v->fraction;
        p->bytes_done = v->bytes_done;
        p->bytes_total = v->bytes_total;
        p->rate = v->rate;
        p->expected_end = v->expected_end;
        p->last_publish = MAX(now, 1u);   /* 0 means "never" */
}

void op_progress_init(op_progress *p, uint64_t now) {
        assert(p);

        *p = (op_progress) {
                .start = now,
        };
}

int op_progress_sample(op_progress *p, uint64_t done, uint64_t total, uint64_t now) {
        values v;

        assert(p);

        now = ring_push(p, done, now);

        if (p->last_publish != 0 && now < p->last_publish + OP_PROGRESS_MIN_INTERVAL_USEC)
                return 0;

        v = running_values(p, total, now);
        if (!values_differ(p, &v))
                return 0;

        publish(p, &v, now);
        return 1;
}

int op_progress_finish(op_progress *p, int success, uint64_t done, uint64_t total, uint64_t now) {
        values v = {};

        assert(p);

        if (success) {
                v.bytes_total = total > 0 ? total : p->bytes_total;
                if (v.bytes_total > 0)
                        v.bytes_done = MAX(p->bytes_done, v.bytes_total);
                else
                        v.bytes_done = MAX(MAX(p->bytes_done, highest_done(p)), done);
                v.fraction = 1.0;
        } else {
                v.bytes_total = p->bytes_total;
                v.bytes_done = p->bytes_done;
                v.fraction = p->fraction;
        }
        /* rate and expected_end: 0 */

        publish(p, &v, now);
        return 1;
}
