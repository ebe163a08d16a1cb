/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * RAW: hard disks, floppies and ISO images: the file is the disk.
 *
 * Spec: none (VirtualBox RAW.cpp behaviour, FORMATS.md §3.1).
 * Size: the file size rounded up to 512 bytes (as qemu-img reports raw files);
 * the tail past the end of the file reads as zeros.
 * Supported: read, write, create (sparse: the file is extended, never filled),
 * discard (punches holes), resize grow and shrink. No UUIDs, comment or
 * stored geometry: the getters report -EOPNOTSUPP, as VirtualBox does.
 * Probe: a raw hard disk has no signature, so probing only says "maybe" (1);
 * an ISO 9660 / UDF volume descriptor at 32 KiB says "optical" (50). The core
 * never picks raw for a writable open by probing.
 * Block status: holes in the host file (SEEK_HOLE) map as zeros, so copies
 * skip them.
 * Thread model: stateless apart from the size; the core serializes calls.
 */
#include <string.h>
#include <strings.h>

#include "backend.h"
#include "io/io.h"
#include "util/util.h"

typedef struct raw_state {
        vdisk_io *io;
        uint64_t size;
        uint32_t sector_size;   /* 2048 for an ISO 9660 / UDF volume */
} raw_state;

/* ISO 9660 "CD001" / UDF "BEA01" at the first volume descriptor (sector 16 of 2048). */
static bool is_optical(const uint8_t *head, size_t head_len) {
        return head_len >= 0x8006 && (memcmp(head + 0x8001, "CD001", 5) == 0 ||
                                      memcmp(head + 0x8001, "BEA01", 5) == 0);
}

static int raw_probe(const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len,
                     uint64_t file_size, const char *name) {
        return is_optical(head, head_len) ? 50 : 1;
}

/* The disk size is the file size rounded up to a sector, as qemu-img reports
 * it; the bytes past the end of the file read as zeros and a write there
 * extends the file. */
static int raw_open(void *st, const open_ctx *c) {
        raw_state *s = st;
        uint8_t vd[6];
        uint64_t size;
        int r;

        s->io = c->io;
        r = io_get_size(c->io, &size);
        if (r < 0)
                return r;
        if (size > UINT64_MAX - VDISK_SECTOR_SIZE)
                return vdisk_error(-EFBIG, "raw: file too large");
        s->size = ALIGN_UP(size, (uint64_t) VDISK_SECTOR_SIZE);
        /* An optical volume is addressed in 2048-byte sectors (one region of
         * MODE1/2048 data, as VirtualBox's RAW backend reports it). */
        s->sector_size = VDISK_SECTOR_SIZE;
        if (size >= 0x8006 && size % 2048 == 0) {
                r = io_pread(c->io, vd, sizeof vd, 0x8000);
                if (r < 0)
                        return r;
                if (memcmp(vd + 1, "CD001", 5) == 0 || memcmp(vd + 1, "BEA01", 5) == 0)
                        s->sector_size = 2048;
        }
        return 0;
}

static int raw_create(void *st, const open_ctx *c, const create_params *p) {
        raw_state *s = st;
        vdisk_io *io = c->io;
        int r;

        /* preallocation and nocow are the core's (lib/core/prealloc.c) */
        for (const char *const *o = p->options; o && *o; o += 2) {
                return vdisk_error(-EINVAL, "raw: unsupported option '%s=%s'", o[0], o[1] ? o[1] : "");
        }
        if (p->image_flags & VDISK_IMAGE_FLAGS_DIFF)
                return vdisk_error(-EOPNOTSUPP, "raw images cannot be differencing images");
        r = io_truncate(io, p->size);
        if (r < 0)
                return r;
        s->io = io;
        s->size = p->size;
        s->sector_size = VDISK_SECTOR_SIZE;
        return 0;
}

static void raw_close(void *st) {
}

static uint64_t raw_get_size(void *st) {
        raw_state *s = st;
        return s->size;
}

static void raw_get_layout(void *st, image_layout *ret) {
        raw_state *s = st;

        *ret = (image_layout) { .sector_size = s->sector_size };
}

static int raw_map(void *st, uint64_t offset, uint64_t len, map_result *ret) {
        raw_state *s = st;
        uint64_t next;

        /* Holes read as zeros. Without SEEK_DATA support everything is data. */
        if (io_seek_data(s->io, offset, 0, &next) >= 0) {
                if (next > offset) {
                        *ret = (map_result) { .kind = MAP_ZERO, .length = MIN(len, next - offset) };
                        return 0;
                }
                if (io_seek_data(s->io, offset, 1, &next) >= 0 && next > offset) {
                        *ret = (map_result) { .kind = MAP_DATA, .host_offset = offset,
                                              .length = MIN(len, next - offset) };
                        return 0;
                }
        }
        *ret = (map_result) { .kind = MAP_DATA, .host_offset = offset, .length = len };
        return 0;
}

static int raw_flush(void *st) {
        raw_state *s = st;
        return io_flush(s->io);
}

static int raw_get_meta(void *st, meta *m) {
        m->mask = 0;
        return 0;
}

static int raw_set_meta(void *st, const meta *m, uint32_t mask) {
        return vdisk_error(-EOPNOTSUPP, "raw images have no UUIDs, comment or stored geometry");
}

static int raw_get_info(void *st, vdisk_image_info *ret) {
        ret->variant = "fixed";
        ret->image_flags = VDISK_IMAGE_FLAGS_FIXED;
        return 0;
}

static int raw_resize(void *st, uint64_t new_size, vdisk_progress *p) {
        raw_state *s = st;
        int r;

        r = io_truncate(s->io, new_size);
        if (r < 0)
                return r;
        s->size = new_size;
        return 0;
}

/* qemu's: the (input's) size in whole sectors, data or not. */
static int raw_measure(const measure_params *p, measure_result *ret) {
        uint64_t size = ALIGN_UP(p->size, UINT64_C(512));

        *ret = (measure_result) { .required = size, .fully_allocated = size };
        return 0;
}

static const char *const raw_extensions[] = { "img", "raw", "iso", "cdr", "ima", "dsk", "flp", "vfd", NULL };
static const vdisk_option_desc raw_create_options[] = {
        { "size",          VDISK_OPTION_SIZE,   "Virtual disk size" },
        {}
};
static const char *const raw_aliases[] = { "file", NULL };

const vdisk_backend backend_raw = {
        .info = {
                .name = "RAW",
                .qemu_name = "raw",
                .caps = VDISK_CAP_CREATE_FIXED | VDISK_CAP_FILE | VDISK_CAP_DISCARD | VDISK_CAP_RESIZE,
                .media = VDISK_MEDIA_HDD | VDISK_MEDIA_OPTICAL | VDISK_MEDIA_FLOPPY,
                .extensions = raw_extensions,
                .create_options = raw_create_options,
        },
        .aliases = raw_aliases,
        .flags = BACKEND_IDENTITY,
        .state_size = sizeof(raw_state),
        .probe = raw_probe,
        .open = raw_open,
        .create = raw_create,
        .close = raw_close,
        .measure = raw_measure,
        .get_size = raw_get_size,
        .get_layout = raw_get_layout,
        .map = raw_map,
        .flush = raw_flush,
        .get_meta = raw_get_meta,
        .set_meta = raw_set_meta,
        .get_info = raw_get_info,
        .resize = raw_resize,
        .prealloc_create = PREALLOC_BIT(PREALLOC_FALLOC) | PREALLOC_BIT(PREALLOC_FULL),
        .prealloc_resize = PREALLOC_BIT(PREALLOC_FALLOC) | PREALLOC_BIT(PREALLOC_FULL),
        .prealloc_flags = PREALLOC_FILE | PREALLOC_FIRST_BLOCK,
};
