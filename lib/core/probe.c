/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Format probing: every backend scores the file's head and tail; the best
 * non-raw score wins. Raw matches anything, so it is chosen only when the
 * caller allows it, and then the caller is told that it was a guess. */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

#define PROBE_HEAD PEEK_HEAD_MAX
#define PROBE_TAIL 1024u

/* Signatures of formats this build has no backend for. A file that carries
 * one is not guessed as raw: reading a qcow2 file as a raw disk, or letting a
 * "raw" resize cut it, would be wrong. */
static const struct {
        const char *name;
        size_t offset;          /* from the start; SIZE_MAX: 512 bytes before the end */
        const char *magic;
        size_t len;
} foreign[] = {
        { "qcow/qcow2", 0, "QFI\xfb", 4 },
        { "QED", 0, "QED\0", 4 },
        { "VMDK", 0, "KDMV", 4 },
        { "VMDK", 0, "COWD", 4 },
        { "VMDK", 0, "# Disk DescriptorFile", 21 },
        { "VHD", 0, "conectix", 8 },
        { "VHD", SIZE_MAX, "conectix", 8 },
        { "VHDX", 0, "vhdxfile", 8 },
        { "Parallels", 0, "WithoutFreeSpace", 16 },
        { "Parallels", 0, "WithouFreSpacExt", 16 },
        { "DMG", SIZE_MAX, "koly", 4 },
        { "Bochs", 0, "Bochs Virtual HD Image", 22 },
        { "LUKS", 0, "LUKS\xba\xbe", 6 },
};

static const char *foreign_format(const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len) {
        for (size_t i = 0; i < ELEMENTSOF(foreign); i++) {
                if (foreign[i].offset == SIZE_MAX) {
                        if (tail_len >= 512 && memcmp(tail + tail_len - 512, foreign[i].magic, foreign[i].len) == 0)
                                return foreign[i].name;
                } else if (head_len >= foreign[i].offset + foreign[i].len &&
                           memcmp(head + foreign[i].offset, foreign[i].magic, foreign[i].len) == 0)
                        return foreign[i].name;
        }
        return NULL;
}

/* Picks the best non-raw score; NULL when none. */
static const vdisk_backend *best_backend(const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len,
                                         uint64_t size, const char *name) {
        const vdisk_backend *best = NULL;
        int best_score = 0;

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
        return best;
}

int probe_candidate(vdisk_io *io, const char *name, const vdisk_backend **ret) {
        _cleanup_free_ uint8_t *head = NULL;
        uint64_t size;
        size_t head_len;
        int r;

        r = io_get_size(io, &size);
        if (r < 0)
                return r;
        head_len = (size_t) MIN(size, (uint64_t) PROBE_HEAD);
        head = malloc(MAX(head_len, (size_t) 1));
        if (!head)
                return vdisk_error(-ENOMEM, "out of memory");
        r = io_pread(io, head, head_len, 0);
        if (r < 0)
                return r;
        *ret = best_backend(head, head_len, NULL, 0, size, name);
        if (*ret)
                return 0;
        return probe_backend(io, name, 0, ret, NULL);
}

int probe_backend(vdisk_io *io, const char *name, int allow_raw, const vdisk_backend **ret,
                  int *ret_guessed_raw) {
        _cleanup_free_ uint8_t *head = NULL;
        uint8_t tail[PROBE_TAIL];
        const vdisk_backend *best = NULL;
        uint64_t size;
        size_t head_len, tail_len;
        int r;

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

        best = best_backend(head, head_len, tail, tail_len, size, name);
        if (best) {
                *ret = best;
                if (ret_guessed_raw)
                        *ret_guessed_raw = 0;
                return 0;
        }
        /* Raw is the last resort; optical images are positively identified. */
        if (foreign_format(head, head_len, tail, tail_len))
                return vdisk_error(-EOPNOTSUPP, "%s: a %s image, a format this version of vdisk cannot read yet "
                                   "(give -f raw to treat the file as a raw disk)",
                                   io->name, foreign_format(head, head_len, tail, tail_len));
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

/* ---- identity from the head alone */

#define META_IDENTITY (META_UUID | META_MODIFICATION_UUID | META_PARENT_UUID | META_PARENT_MOD_UUID)

/* Without a peek callback: a metadata-only open, keeping the UUIDs (the
 * strings of get_meta() die with the image). No resolver: a format whose
 * open needs companion files should implement peek. */
static int peek_by_open(const vdisk_backend *be, vdisk_io *io, meta *ret) {
        vdisk_image *img;
        meta m;
        int r;

        r = image_open(be, io, NULL, 0, 1, NULL, &img);
        if (r < 0)
                return r;
        r = image_get_meta(img, &m);
        image_free(img);
        if (r < 0)
                return r;
        m.mask &= META_IDENTITY;
        m.comment = m.parent_name = m.parent_format = NULL;
        *ret = m;
        return 0;
}

int image_peek(const vdisk_backend *be, vdisk_io *io, meta *ret, uint8_t **ret_head) {
        _cleanup_free_ uint8_t *head = NULL;
        uint64_t size;
        size_t head_len;
        meta m = {};
        int r;

        assert(be);
        assert(io);
        assert(ret);
        assert(ret_head);

        if (!be->peek) {
                r = peek_by_open(be, io, ret);
                if (r < 0)
                        return r;
                *ret_head = NULL;
                return 0;
        }
        r = io_get_size(io, &size);
        if (r < 0)
                return r;
        head_len = (size_t) MIN(size, (uint64_t) PEEK_HEAD_MAX);
        /* One byte more, zero: a string the backend finds at the very end
         * of a short head is still terminated. */
        head = calloc(1, head_len + 1);
        if (!head)
                return vdisk_error(-ENOMEM, "out of memory");
        r = io_pread(io, head, head_len, 0);
        if (r < 0)
                return r;
        r = be->peek(head, head_len, size, &m);
        if (r == -ENODATA) {
                /* The identity lies past the head (a fixed VHD's footer). */
                vdisk_clear_error();
                r = peek_by_open(be, io, ret);
                if (r < 0)
                        return r;
                *ret_head = NULL;
                return 0;
        }
        if (r < 0)
                return vdisk_error_prefix(r, vdisk_io_name(io));
        m.mask &= META_IDENTITY | META_PARENT_NAME;
        m.comment = NULL;
        *ret = m;
        *ret_head = TAKE_PTR(head);
        return 0;
}

int vdisk_peek_ids(vdisk_io *io, const char *format, vdisk_image_ids *ret) {
        _cleanup_free_ uint8_t *head = NULL;
        const vdisk_backend *be;
        meta m;
        int r;

        if (!io || !ret || ret->size < sizeof(vdisk_image_ids))
                return vdisk_error(-EINVAL, "invalid arguments");
        if (format) {
                be = backend_lookup(format);
                if (!be)
                        return vdisk_error(-EMEDIUMTYPE, "Unknown file format '%s'", format);
        } else {
                r = probe_backend(io, vdisk_io_name(io), 0, &be, NULL);
                if (r < 0)
                        return r;
        }
        r = image_peek(be, io, &m, &head);
        if (r < 0)
                return r;
        *ret = (vdisk_image_ids) { .size = sizeof(vdisk_image_ids) };
        if (m.mask & META_UUID) {
                ret->mask |= VDISK_IDS_UUID;
                memcpy(ret->uuid, m.uuid, 16);
        }
        if (m.mask & META_MODIFICATION_UUID) {
                ret->mask |= VDISK_IDS_MODIFICATION_UUID;
                memcpy(ret->modification_uuid, m.modification_uuid, 16);
        }
        if (m.mask & META_PARENT_UUID) {
                ret->mask |= VDISK_IDS_PARENT_UUID;
                memcpy(ret->parent_uuid, m.parent_uuid, 16);
        }
        if (m.mask & META_PARENT_MOD_UUID) {
                ret->mask |= VDISK_IDS_PARENT_MOD_UUID;
                memcpy(ret->parent_modification_uuid, m.parent_modification_uuid, 16);
        }
        return 0;
}
