/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <assert.h>

#include "fmt/grainmap.h"
#include "util/util.h"

int grain_map_map(const grain_map *m, uint64_t off, uint64_t len, map_kind *kind, uint64_t *host,
                  uint64_t *ret_len) {
        uint64_t g = off / m->grain, n_grains = DIV_ROUND_UP(m->size, m->grain), t, h = 0, length;
        int r;

        assert(off < m->size);
        r = m->table(m->ctx, g / m->gtes, &t);
        if (r < 0)
                return r;
        length = MIN(m->grain - off % m->grain, m->size - off);
        if (t == GRAIN_MAP_NO_TABLE) {
                *kind = MAP_UNALLOC;
                length = MIN((g / m->gtes + 1) * m->gtes * m->grain, m->size) - off;
        } else {
                r = m->grain_at(m->ctx, t, g, kind, &h);
                if (r < 0)
                        return r;
                /* The following grains of the same kind (data: contiguous) in this table. */
                for (uint64_t ng = g + 1; length < len && ng < n_grains && ng / m->gtes == g / m->gtes; ng++) {
                        map_kind k;
                        uint64_t nh = 0;

                        r = m->grain_at(m->ctx, t, ng, &k, &nh);
                        if (r < 0)
                                return r;
                        if (k != *kind || (k == MAP_DATA && nh != h + (ng - g) * m->grain))
                                break;
                        length += MIN(m->grain, m->size - ng * m->grain);
                }
        }
        *host = *kind == MAP_DATA ? h + off % m->grain : 0;
        *ret_len = MIN(length, len);
        return 0;
}

int grain_map_count(const grain_map *m, uint64_t *ret_alloc, uint64_t *ret_total) {
        uint64_t n_grains = DIV_ROUND_UP(m->size, m->grain), n = 0;
        int r;

        for (uint64_t i = 0; i < m->n_gd; i++) {
                uint64_t t;

                r = m->table(m->ctx, i, &t);
                if (r < 0)
                        return r;
                if (t == GRAIN_MAP_NO_TABLE)
                        continue;
                for (uint64_t g = i * m->gtes; g < MIN((i + 1) * m->gtes, n_grains); g++) {
                        map_kind k;
                        uint64_t h;

                        r = m->grain_at(m->ctx, t, g, &k, &h);
                        if (r < 0)
                                return r;
                        n += k == MAP_DATA;
                }
        }
        *ret_alloc = n;
        *ret_total = n_grains;
        return 0;
}
