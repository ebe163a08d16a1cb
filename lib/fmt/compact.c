/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "fmt/compact.h"
#include "util/util.h"

#define FMT_PACK_BATCH 64u
#define FMT_COPY_CHUNK (UINT64_C(4) << 20)

/* ---------------------------------------------------------------- scan */

int fmt_scan_piece(fmt_scan *sc, vdisk_io *io, uint64_t host, uint64_t voff, uint64_t len) {
        int r;

        assert(sc && sc->fn && sc->buf && sc->buf_size > 0);

        for (uint64_t done = 0; done < len && !fmt_scan_keep(sc);) {
                size_t n = (size_t) MIN((uint64_t) sc->buf_size, len - done);
                compact_verdict v;

                r = io_pread_zerofill(io, sc->buf, n, host + done);
                if (r < 0)
                        return r;
                r = sc->fn(sc->ctx, voff + done, sc->buf, n, &v);
                if (r < 0)
                        return r;
                if (v == COMPACT_KEEP)
                        sc->unalloc = sc->zero = false;
                else if (v == COMPACT_ZERO)
                        sc->unalloc = false;
                else if (sc->zero && !mem_is_zero(sc->buf, n))
                        sc->zero = false;
                done += n;
        }
        return 0;
}

/* ---------------------------------------------------------------- pack */

static int cmp_unit(const void *a, const void *b) {
        const fmt_unit *x = a, *y = b;

        return x->host < y->host ? -1 : x->host > y->host;
}

static int cmp_span(const void *a, const void *b) {
        const fmt_span *x = a, *y = b;

        return x->start < y->start ? -1 : x->start > y->start;
}

/* The plan: the host offsets the top `*ret_n` units (units[n_units - n ..])
 * go to, ascending, in dst (n_units entries). */
typedef struct plan {
        uint64_t *dst;
        size_t n;
        uint64_t end;
} plan;

/* The spans of the layout in order of their start: the units (sorted) and
 * the fixed spans (sorted copy) merged as they are walked. */
typedef struct walk {
        const fmt_pack *pk;
        const fmt_span *fx;
        size_t n_fx, ui, fi;
} walk;

static bool walk_peek(const walk *w, fmt_span *ret, bool *ret_unit) {
        bool have = w->ui < w->pk->n_units;

        if (have)
                *ret = (fmt_span) { .start = w->pk->units[w->ui].host, .len = w->pk->unit };
        *ret_unit = have;
        if (w->fi < w->n_fx && (!have || w->fx[w->fi].start < ret->start)) {
                *ret = w->fx[w->fi];
                *ret_unit = false;
                have = true;
        }
        return have;
}

static void walk_next(walk *w, bool unit) {
        if (unit)
                w->ui++;
        else
                w->fi++;
}

static int make_plan(const fmt_pack *pk, plan *ret) {
        uint64_t u = pk->unit, cursor, end = pk->floor;
        _cleanup_free_ fmt_span *fx = NULL;
        _cleanup_free_ uint64_t *dst = NULL;
        size_t n_fx = 0, n = 0, hi;
        walk w;

        assert(u > 0);
        *ret = (plan) {};
        if (pk->n_units > 0)
                qsort(pk->units, pk->n_units, sizeof *pk->units, cmp_unit);
        for (size_t i = 1; i < pk->n_units; i++)
                if (pk->units[i].host < pk->units[i - 1].host + u)
                        return vdisk_error(-EUCLEAN, "units at %" PRIu64 " and %" PRIu64 " overlap; repair the "
                                           "image first", pk->units[i - 1].host, pk->units[i].host);
        fx = malloc((pk->n_fixed + 1) * sizeof *fx);
        dst = malloc((pk->n_units + 1) * sizeof *dst);
        if (!fx || !dst)
                return -ENOMEM;
        for (size_t i = 0; i < pk->n_fixed; i++)
                if (pk->fixed[i].len > 0 && pk->fixed[i].start + pk->fixed[i].len > pk->floor) {
                        fx[n_fx++] = pk->fixed[i];
                        end = MAX(end, pk->fixed[i].start + pk->fixed[i].len);
                }
        if (n_fx > 0)
                qsort(fx, n_fx, sizeof *fx, cmp_span);

        /* Pair the highest unit with the lowest free place for a unit at or
         * above cursor, among the gaps of the layout as it is, until that
         * place is no lower than the unit. Every place lies below every
         * unit that moves, so any pairing of the two sets is safe. */
        w = (walk) { .pk = pk, .fx = fx, .n_fx = n_fx };
        cursor = pk->floor;
        hi = pk->n_units;
        while (hi > 0) {
                uint64_t top = pk->units[hi - 1].host;
                fmt_span o;
                bool is_unit;

                /* skip spans that end before cursor or overlap [cursor, cursor + u) */
                while (walk_peek(&w, &o, &is_unit)) {
                        if (o.start + o.len <= cursor) {
                                walk_next(&w, is_unit);
                                continue;
                        }
                        if (o.start < cursor + u) {
                                cursor = o.start + o.len;
                                walk_next(&w, is_unit);
                                continue;
                        }
                        break;
                }
                if (cursor >= top)
                        break;
                dst[n++] = cursor;
                cursor += u;
                hi--;
        }

        /* What the file holds after the moves. */
        for (size_t i = 0; i < pk->n_units - n; i++)
                end = MAX(end, pk->units[i].host + u);
        for (size_t i = 0; i < n; i++)
                end = MAX(end, dst[i] + u);
        ret->dst = TAKE_PTR(dst);
        ret->n = n;
        ret->end = end;
        return 0;
}

int fmt_pack_count(const fmt_pack *pk, uint64_t *ret_moves) {
        plan pl;
        int r;

        r = make_plan(pk, &pl);
        if (r < 0)
                return r;
        free(pl.dst);
        *ret_moves = pl.n;
        return 0;
}

static int copy_unit(const fmt_pack *pk, uint64_t from, uint64_t to, uint8_t *buf, size_t buf_size) {
        int r;

        for (uint64_t done = 0; done < pk->unit;) {
                size_t n = (size_t) MIN((uint64_t) buf_size, pk->unit - done);

                r = io_pread_zerofill(pk->io, buf, n, from + done);
                if (r < 0)
                        return r;
                r = io_pwrite(pk->io, buf, n, to + done);
                if (r < 0)
                        return r;
                done += n;
        }
        return 0;
}

int fmt_pack_run(const fmt_pack *pk, uint64_t *ret_end) {
        size_t batch = pk->batch ? pk->batch : FMT_PACK_BATCH, buf_size = (size_t) MIN(pk->unit, FMT_COPY_CHUNK);
        _cleanup_free_ uint8_t *buf = NULL;
        const fmt_unit *src;
        plan pl;
        int r, cancel = 0;

        assert(pk && pk->io && pk->repoint && pk->commit);

        r = make_plan(pk, &pl);
        if (r < 0)
                return r;
        _cleanup_free_ uint64_t *dst = pl.dst;
        src = pk->units + (pk->n_units - pl.n);

        if (pl.n > 0) {
                buf = buf_alloc(buf_size);
                if (!buf)
                        return -ENOMEM;
        }
        /* Room for every copy first: a hole (a sparse copy) takes space when
         * it is written, and nothing has moved yet if there is none. Where
         * the host cannot reserve, the moves go ahead. */
        for (size_t i = 0; i < pl.n;) {
                size_t j = i + 1;

                while (j < pl.n && dst[j] == dst[j - 1] + pk->unit)
                        j++;
                r = io_reserve(pk->io, dst[i], (j - i) * pk->unit);
                if (r == -EOPNOTSUPP)
                        break;
                if (r < 0)
                        return r;
                i = j;
        }

        /* The highest units first: a cancel between two batches leaves the
         * tail of the file unreferenced, to be cut. */
        for (size_t hi = pl.n; hi > 0;) {
                size_t lo = hi - MIN(batch, hi);

                for (size_t j = lo; j < hi; j++) {
                        r = copy_unit(pk, src[j].host, dst[j], buf, buf_size);
                        if (r < 0)
                                return r;
                        /* reported as each goes; a cancel waits for the commit */
                        r = progress_add(pk->p, pk->unit);
                        if (r < 0 && cancel == 0)
                                cancel = r;
                }
                r = io_flush(pk->io);
                if (r < 0)
                        return r;
                for (size_t j = lo; j < hi; j++) {
                        r = pk->repoint(pk->user, src[j].key, src[j].host, dst[j]);
                        if (r < 0)
                                return r;
                }
                r = pk->commit(pk->user);
                if (r < 0)
                        return r;
                hi = lo;
                if (cancel < 0 && pk->cancellable && hi > 0) {
                        /* What is referenced now: the fixed spans, the
                         * units that stay, those not moved yet, the new
                         * places of those moved. */
                        if (ret_end) {
                                uint64_t end = pk->floor;

                                for (size_t q = 0; q < pk->n_fixed; q++)
                                        if (pk->fixed[q].len > 0 && pk->fixed[q].start + pk->fixed[q].len > pk->floor)
                                                end = MAX(end, pk->fixed[q].start + pk->fixed[q].len);
                                for (size_t q = 0; q < pk->n_units - pl.n; q++)
                                        end = MAX(end, pk->units[q].host + pk->unit);
                                for (size_t q = 0; q < pl.n; q++)
                                        end = MAX(end, (q < hi ? src[q].host : dst[q]) + pk->unit);
                                *ret_end = end;
                        }
                        return cancel;
                }
        }
        if (ret_end)
                *ret_end = pl.end;
        return 0;
}
