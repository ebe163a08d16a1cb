/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Format probing: every backend scores the file's head and tail; the best
 * non-raw score wins. Raw matches anything, so it is chosen only when the
 * caller allows it, and then the caller is told that it was a guess. */
#include <stdlib.h>

#include "core/core.h"

#define PROBE_HEAD (64u * 1024)
#define PROBE_TAIL 1024u

int probe_backend(vdisk_io *io, const char *name, int allow_raw, const vdisk_backend **ret,
                  int *ret_guessed_raw) {
        _cleanup_free_ uint8_t *head = NULL;
        uint8_t tail[PROBE_TAIL];
        const vdisk_backend *best = NULL;
        uint64_t size;
        size_t head_len, tail_len;
        int best_score = 0, r;

        r = io_get_size(io, &size);
        if (r < 0)
                return r;
        head_len = (size_t) MIN(size, (uint64_t) PROBE_HEAD);
        tail_len = (size_t) MIN(size, (uint64_t) PROBE_TAIL);
        head = malloc(MAX(head_len, (size_t) 1));
        if (!head)
                return vdisk_error(-ENOMEM, "out of memory");
        r = io_pread(io, head, head_len, 0);
        if (r < 0)
                return r;
        r = io_pread(io, tail, tail_len, size - tail_len);
        if (r < 0)
                return r;

        for (size_t i = 0; i < backend_table_size(); i++) {
                const vdisk_backend *be = backend_table_get(i);
                int score;

                if (!be->probe || be == &backend_raw)
                        continue;
                score = be->probe(head, head_len, tail, tail_len, size, name);
                if (score > best_score) {
                        best_score = score;
                        best = be;
                }
        }
        if (best) {
                *ret = best;
                if (ret_guessed_raw)
                        *ret_guessed_raw = 0;
                return 0;
        }
        /* Raw is the last resort; optical images are positively identified. */
        if (allow_raw) {
                int score = backend_raw.probe(head, head_len, tail, tail_len, size, name);
                *ret = &backend_raw;
                if (ret_guessed_raw)
                        *ret_guessed_raw = score <= 1;
                return 0;
        }
        return vdisk_error(-EMEDIUMTYPE, "%s: unknown image format (give the format explicitly for raw images)",
                           io->name);
}

int vdisk_probe(vdisk_io *io, const char *name, int allow_raw, const vdisk_backend_info **ret,
                int *ret_guessed_raw) {
        const vdisk_backend *be;
        int r;

        if (!io || !ret)
                return vdisk_error(-EINVAL, "invalid arguments");
        r = probe_backend(io, name, allow_raw, &be, ret_guessed_raw);
        if (r < 0)
                return r;
        *ret = &be->info;
        return 0;
}
