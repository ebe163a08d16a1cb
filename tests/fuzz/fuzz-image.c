/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libFuzzer harness: the bytes are an image file. Probe it, open it as every
 * backend read-only (and writable on a copy), read what it maps as data,
 * query block status, check it, and write into the writable copy. Nothing
 * may crash, hang or allocate without bound; errors are fine.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/vdisk.h"

#define READ_BUDGET (8u << 20)   /* bytes of data read per input */
#define FILE_MAX (16u << 20)     /* the writable copy's file may grow to this */

/* A file in memory that cannot grow past FILE_MAX (a write beyond is -ENOSPC,
 * as on a full disk): a hostile header may legitimately point allocations far
 * into a sparse file, which a memory buffer cannot hold. */
typedef struct capped {
        uint8_t *data;
        size_t len;
} capped;

static int capped_pread(void *u, void *buf, size_t len, uint64_t off) {
        capped *c = u;
        if (off > c->len || len > c->len - off)
                return -EIO;
        memcpy(buf, c->data + off, len);
        return 0;
}

static int capped_pwrite(void *u, const void *buf, size_t len, uint64_t off) {
        capped *c = u;
        if (off > FILE_MAX || len > FILE_MAX - off)
                return -ENOSPC;
        if (off + len > c->len) {
                uint8_t *p = realloc(c->data, off + len);
                if (!p)
                        return -ENOMEM;
                memset(p + c->len, 0, off + len - c->len);
                c->data = p;
                c->len = off + len;
        }
        memcpy(c->data + off, buf, len);
        return 0;
}

static int capped_flush(void *u) {
        return 0;
}

static int capped_get_size(void *u, uint64_t *ret) {
        *ret = ((capped *) u)->len;
        return 0;
}

static int capped_truncate(void *u, uint64_t size) {
        capped *c = u;

        if (size > FILE_MAX)
                return -ENOSPC;
        if (size > c->len) {
                uint8_t *p = realloc(c->data, (size_t) size);
                if (!p)
                        return -ENOMEM;
                memset(p + c->len, 0, (size_t) size - c->len);
                c->data = p;
        }
        c->len = (size_t) size;
        return 0;
}

static void capped_close(void *u) {
        capped *c = u;
        free(c->data);
        free(c);
}

static const vdisk_io_ops capped_ops = {
        .size = sizeof(vdisk_io_ops),
        .pread = capped_pread,
        .pwrite = capped_pwrite,
        .flush = capped_flush,
        .get_size = capped_get_size,
        .truncate = capped_truncate,
        .close = capped_close,
};

static int capped_new(const uint8_t *data, size_t size, vdisk_io **ret) {
        capped *c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        c->data = malloc(size ? size : 1);
        if (!c->data) {
                free(c);
                return -ENOMEM;
        }
        memcpy(c->data, data, size);
        c->len = size;
        if (vdisk_io_new_ops(&capped_ops, c, "fuzz.img", 0, ret) < 0) {
                capped_close(c);
                return -ENOMEM;
        }
        return 0;
}
#define STATUS_BUDGET 4096       /* block status calls per input */

static void exercise(const uint8_t *data, size_t size, const char *format, int writable) {
        vdisk_io *io = NULL;
        vdisk_disk *d = NULL;
        uint8_t *buf = NULL;
        uint64_t off = 0, budget = READ_BUDGET, disk_size;
        int calls = 0;

        vdisk_image_ids ids = { .size = sizeof ids };
        int peek_r = -1;

        if (size > FILE_MAX || capped_new(data, size, &io) < 0)
                return;
        /* The header-only peek of a parent search must accept what open
         * accepts, with the same UUID (test-parent-search.c checks the rest). */
        if (format)
                peek_r = vdisk_peek_ids(io, format, &ids);
        if (vdisk_disk_new(&d) < 0)
                goto out;
        if (vdisk_disk_open(d, io, format, writable ? 0 : VDISK_OPEN_READONLY | VDISK_OPEN_ALLOW_PROBE_RAW) < 0)
                goto out;
        if (format && !writable) {
                /* ... or none, where the format records none (a VMDK
                 * without ddb.uuid.image). */
                uint8_t u[16];
                int have = vdisk_image_get_uuid(vdisk_disk_image(d, 0), u) >= 0;

                if (peek_r < 0 || have != !!(ids.mask & VDISK_IDS_UUID) || (have && memcmp(u, ids.uuid, 16) != 0))
                        abort();
        }
        disk_size = vdisk_disk_size(d);
        buf = malloc(64 * 1024);
        if (!buf)
                goto out;

        {
                char **kv = NULL;

                if (vdisk_image_get_format_info(vdisk_disk_image(d, vdisk_disk_count(d) - 1), &kv) >= 0)
                        vdisk_strv_free(kv);
        }
        /* the map as qemu-img map reports it: block status, and the file's
         * holes where qemu looks at them */
        while (off < disk_size && calls++ < STATUS_BUDGET) {
                vdisk_extent e;

                if (vdisk_disk_map_status(d, off, disk_size - off, &e) < 0 || e.length == 0)
                        break;
                if ((e.flags & VDISK_EXTENT_DATA) && budget > 0) {
                        size_t n = (size_t) (e.length < 65536 ? e.length : 65536);
                        if (n > budget)
                                n = (size_t) budget;
                        (void) vdisk_disk_read(d, buf, n, off);
                        budget -= n;
                }
                off += e.length;
        }
        if (writable && disk_size >= 8192 && size < (1u << 20)) {
                memset(buf, 0x5a, 4096);
                (void) vdisk_disk_write(d, buf, 4096, 0);
                (void) vdisk_disk_write(d, buf, 4096, disk_size - 4096);
                (void) vdisk_disk_discard(d, 0, 4096);
                (void) vdisk_disk_flush(d);
        }
        {
                vdisk_check_report rep = { .size = sizeof rep };
                (void) vdisk_check(d, vdisk_disk_count(d) - 1, 0, &rep, NULL);
                vdisk_check_report_clear(&rep);
        }
out:
        free(buf);
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
}

/* The input as a VMDK seSparse or vmfsSparse (COWD) extent, named by a
 * descriptor whose extent line takes the capacity from the input's header
 * (so that the extent's own checks are what is fuzzed): open, block status,
 * reads, check. */
static int se_companion(void *user, const char *name, const char *image_name, uint32_t flags, vdisk_io **ret) {
        const uint8_t **in = user;

        if (flags || strcmp(name, "fuzz-sesparse.vmdk") != 0)
                return -ENOENT;
        return capped_new(in[0], (size_t) (in[1] - in[0]), ret);
}

static void exercise_extent(const uint8_t *data, size_t size, int cowd) {
        const uint8_t *in[2] = { data, data + size };
        vdisk_resolver_ops ops = { .size = sizeof ops, .open_companion = se_companion };
        vdisk_resolver *res = NULL;
        vdisk_io *io = NULL;
        vdisk_disk *d = NULL;
        uint64_t cap = 0, off = 0, budget = READ_BUDGET;
        uint8_t *buf = NULL;
        char text[256];
        int n, calls = 0;

        if (size < 0x18 || size > FILE_MAX)
                return;
        for (int i = cowd ? 3 : 7; i >= 0; i--)
                cap = cap << 8 | data[(cowd ? 12 : 0x10) + i];
        if (cap == 0 || cap > (UINT64_C(1) << 40))
                cap = 2048;
        n = snprintf(text, sizeof text, "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n"
                     "createType=\"%s\"\nRW %llu %s \"fuzz-sesparse.vmdk\"\n", cowd ? "vmfsSparse" : "seSparse",
                     (unsigned long long) cap, cowd ? "VMFSSPARSE" : "SESPARSE");
        if (vdisk_io_new_memory(text, (size_t) n, "fuzz-se.vmdk", 0, &io) < 0)
                return;
        if (vdisk_resolver_new_ops(&ops, in, &res) < 0 || vdisk_disk_new(&d) < 0 ||
            vdisk_disk_set_resolver(d, res) < 0 || vdisk_disk_open(d, io, "vmdk", VDISK_OPEN_READONLY) < 0)
                goto out;
        buf = malloc(64 * 1024);
        if (!buf)
                goto out;
        while (off < vdisk_disk_size(d) && calls++ < STATUS_BUDGET) {
                vdisk_extent e;

                if (vdisk_disk_block_status(d, off, vdisk_disk_size(d) - off, &e) < 0 || e.length == 0)
                        break;
                if ((e.flags & VDISK_EXTENT_DATA) && budget > 0) {
                        size_t len = (size_t) (e.length < 65536 ? e.length : 65536);

                        (void) vdisk_disk_read(d, buf, len, off);
                        budget -= len < budget ? len : budget;
                }
                off += e.length;
        }
        {
                vdisk_check_report rep = { .size = sizeof rep };
                (void) vdisk_check(d, 0, 0, &rep, NULL);
                vdisk_check_report_clear(&rep);
        }
out:
        free(buf);
        vdisk_disk_unref(d);
        vdisk_resolver_unref(res);
        vdisk_io_unref(io);
}

/* The input as a qcow2 image read at its first internal snapshot (its own
 * L1 table), then measured as qcow2 and vdi outputs (the block status walk
 * of vdisk_measure). */
static void exercise_snapshot(const uint8_t *data, size_t size) {
        static const char *const qcow2_opts[] = { "cluster_size", "512", NULL };
        vdisk_measure_info mi;
        vdisk_io *io = NULL;
        vdisk_disk *d = NULL;
        uint64_t off = 0, budget = READ_BUDGET;
        uint8_t *buf = NULL;
        int calls = 0;

        if (size > FILE_MAX || capped_new(data, size, &io) < 0)
                return;
        if (vdisk_disk_new(&d) < 0 || vdisk_disk_set_snapshot(d, "1") < 0 ||
            vdisk_disk_open(d, io, "qcow2", VDISK_OPEN_READONLY) < 0)
                goto out;
        buf = malloc(64 * 1024);
        if (!buf)
                goto out;
        while (off < vdisk_disk_size(d) && calls++ < STATUS_BUDGET) {
                vdisk_extent e;

                if (vdisk_disk_block_status(d, off, vdisk_disk_size(d) - off, &e) < 0 || e.length == 0)
                        break;
                if ((e.flags & VDISK_EXTENT_DATA) && budget > 0) {
                        size_t len = (size_t) (e.length < 65536 ? e.length : 65536);

                        (void) vdisk_disk_read(d, buf, len, off);
                        budget -= len < budget ? len : budget;
                }
                off += e.length;
        }
        if (vdisk_disk_size(d) <= (UINT64_C(1) << 30)) {
                (void) vdisk_measure("qcow2", qcow2_opts, 0, d, &mi);
                (void) vdisk_measure("vdi", NULL, 0, d, &mi);
        }
out:
        free(buf);
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        exercise(data, size, NULL, 0);
        exercise(data, size, "vdi", 0);
        exercise(data, size, "vdi", 1);
        exercise(data, size, "vpc", 0);
        exercise(data, size, "vpc", 1);
        exercise(data, size, "vmdk", 0);
        exercise(data, size, "vmdk", 1);
        exercise(data, size, "qcow2", 0);   /* read-only for now */
        exercise_snapshot(data, size);
        exercise(data, size, "qcow", 0);
        exercise(data, size, "qcow", 1);
        exercise(data, size, "qed", 0);
        exercise(data, size, "qed", 1);
        exercise_extent(data, size, 0);
        exercise_extent(data, size, 1);
        return 0;
}
