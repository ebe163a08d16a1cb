/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <assert.h>
#include <errno.h>

#include "fmt/l2slots.h"
#include "util/util.h"

void l2slots_init(l2slots *c, tc_budget *b, vdisk_io *io, uint64_t table_bytes, tc_entry entry, const char *name) {
        uint32_t page = 512;

        assert(table_bytes >= 512 && table_bytes % 512 == 0);
        while (page < 64 * 1024 && page < table_bytes)
                page <<= 1;
        *c = (l2slots) {
                .budget = b,
                .io = io,
                .table_bytes = table_bytes,
                .page_size = page,
                .entry = entry,
                .name = name,
        };
}

int l2slots_get(l2slots *c, uint64_t offset, tc_table **ret) {
        typeof(&c->slot[0]) victim = NULL;
        int r;

        for (size_t i = 0; i < L2SLOTS_N; i++) {
                typeof(&c->slot[0]) sl = &c->slot[i];

                if (sl->t && sl->offset == offset) {
                        sl->used = ++c->tick;
                        *ret = sl->t;
                        return 0;
                }
                if (!victim || !sl->t || (victim->t && sl->used < victim->used))
                        victim = sl;
        }
        if (victim->t) {
                r = tc_table_flush(victim->t);
                if (r < 0)
                        return r;
                victim->t = tc_table_free(victim->t);
        }
        tc_table_params p = {
                .offset = offset,
                .size = c->table_bytes,
                .page_size = c->page_size,
                .entry = c->entry,
                .name = c->name,
        };
        r = tc_table_new(c->budget, c->io, &p, &victim->t);
        if (r < 0)
                return r;
        victim->offset = offset;
        victim->used = ++c->tick;
        *ret = victim->t;
        return 0;
}

int l2slots_flush(l2slots *c) {
        for (size_t i = 0; i < L2SLOTS_N; i++)
                if (c->slot[i].t) {
                        int r = tc_table_flush(c->slot[i].t);
                        if (r < 0)
                                return r;
                }
        return 0;
}

void l2slots_drop(l2slots *c) {
        for (size_t i = 0; i < L2SLOTS_N; i++)
                c->slot[i].t = tc_table_free(c->slot[i].t);
}
