/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `unit`: the backend contract v2 (lib/backend.h), exercised through
 * the core with toy backends defined here, since the formats that will use
 * most of it (VMDK, qcow2, DMG, CUE) come later:
 *   - companion files through the files handle and a resolver; map results
 *     and reservations that name the file;
 *   - encoded units: decode() once per unit thanks to the core's cache, a
 *     corrupt unit is -EUCLEAN, a write into an encoded unit gets a new unit;
 *   - sub-block reservations (a 4 KiB copy-on-write unit inside a larger
 *     allocation) filled exactly from the parent, in one pwrite; a failed
 *     unit write is released and never committed;
 *   - stream writers (in order only, finish() once at close) and read-only
 *     formats (writable open refused);
 *   - typed create options checked by the core; optical regions; the path
 *     resolver's containment of companion names.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "core/core.h"
#include "io/io.h"
#include "tests.h"

#define TOY_UNIT 4096u
#define TOY_UNITS 64u
#define TOY_SIZE (TOY_UNIT * TOY_UNITS)
#define TOY_CHUNK (4 * TOY_UNIT)   /* host space is handed out 16 KiB at a time */

/* ---------------------------------------------------------------- a toy format */

/* In memory only: the main io holds the companion's name; the table says per
 * 4 KiB unit: 0 unallocated, 1 zero, 2 data at `host`, 3 encoded at `host`
 * (`enc` bytes of run-length pairs: count, byte). */
typedef struct toy_entry {
        int kind;
        uint64_t host;
        uint32_t enc;
} toy_entry;

typedef struct toy_state {
        vdisk_io *io, *data;
        toy_entry t[TOY_UNITS];
        uint64_t chunk, chunk_used;   /* the host chunk being filled, and how much of it */
        uint64_t data_end;
        bool reserved;
} toy_state;

static struct {
        unsigned decodes, releases, commits, finishes, stream_writes;
} counts;

static toy_state *last_toy;

static int toy_open(void *st, const open_ctx *c) {
        toy_state *s = st;
        char name[64] = {};
        int r;

        s->io = c->io;
        r = io_pread(c->io, name, sizeof name - 1, 0);
        if (r < 0)
                return r;
        r = files_open(c->files, name, c->writable ? FILES_WRITE : 0, &s->data);
        if (r < 0)
                return r;
        r = io_get_size(s->data, &s->data_end);
        if (r < 0)
                return r;
        last_toy = s;
        return 0;
}

static void toy_close(void *st) {
}

static uint64_t toy_get_size(void *st) {
        return TOY_SIZE;
}

static void toy_get_layout(void *st, image_layout *ret) {
        *ret = (image_layout) { .cluster_size = TOY_CHUNK, .sector_size = 512 };
}

static int toy_map(void *st, uint64_t offset, uint64_t len, map_result *ret) {
        toy_state *s = st;
        const toy_entry *e = &s->t[offset / TOY_UNIT];
        uint64_t in_unit = offset % TOY_UNIT;

        *ret = (map_result) { .length = MIN(len, TOY_UNIT - in_unit) };
        switch (e->kind) {
        case 0:
                ret->kind = MAP_UNALLOC;
                break;
        case 1:
                ret->kind = MAP_ZERO;
                break;
        case 2:
                ret->kind = MAP_DATA;
                ret->file = s->data;
                ret->host_offset = e->host + in_unit;
                break;
        default:
                ret->kind = MAP_ENCODED;
                ret->file = s->data;
                ret->host_offset = e->host;
                ret->unit_offset = offset - in_unit;
                ret->unit_length = TOY_UNIT;
                ret->encoded_length = e->enc;
                ret->codec = 7;
        }
        return 0;
}

static int toy_decode(const void *st, const map_result *m, const void *in, void *out) {
        const uint8_t *p = in;
        uint8_t *o = out;
        size_t n = 0;

        counts.decodes++;
        ASSERT(m->codec == 7);
        for (size_t i = 0; i + 1 < m->encoded_length; i += 2) {
                if (n + p[i] > m->unit_length)
                        return vdisk_error(-EUCLEAN, "toy: run past the unit");
                memset(o + n, p[i + 1], p[i]);
                n += p[i];
        }
        if (n != m->unit_length)
                return vdisk_error(-EUCLEAN, "toy: unit decodes to %zu bytes", n);
        return 0;
}

/* Copy-on-write unit: 4 KiB, placed in 16 KiB host chunks appended to the
 * companion: a sub-block reservation whenever the chunk has room. */
static int toy_allocate(void *st, uint64_t offset, uint64_t len, reservation *ret) {
        toy_state *s = st;
        int fresh;

        ASSERT(!s->reserved);
        if (s->chunk_used == 0 || s->chunk_used == TOY_CHUNK) {
                s->chunk = s->data_end;
                s->chunk_used = 0;
        }
        fresh = s->chunk + s->chunk_used >= s->data_end;
        *ret = (reservation) { .file = s->data, .unit_offset = ALIGN_DOWN(offset, (uint64_t) TOY_UNIT),
                               .length = TOY_UNIT, .host_offset = s->chunk + s->chunk_used, .fresh = fresh };
        s->reserved = true;
        return 0;
}

static int toy_commit(void *st, const reservation *res) {
        toy_state *s = st;

        ASSERT(s->reserved);
        s->reserved = false;
        counts.commits++;
        s->t[res->unit_offset / TOY_UNIT] = (toy_entry) { .kind = 2, .host = res->host_offset };
        s->chunk_used += TOY_UNIT;
        s->data_end = MAX(s->data_end, res->host_offset + TOY_UNIT);
        return 0;
}

static void toy_release(void *st, const reservation *res) {
        toy_state *s = st;

        ASSERT(s->reserved);
        s->reserved = false;
        counts.releases++;
}

static int toy_flush(void *st) {
        return 0;
}

static const vdisk_option_desc toy_options[] = {
        { "size", VDISK_OPTION_SIZE, "Virtual disk size" },
        { "fast", VDISK_OPTION_BOOL, "A boolean", "off" },
        { "grain", VDISK_OPTION_SIZE, "A size" },
        { "label", VDISK_OPTION_STRING, "A string" },
        {}
};

static const vdisk_backend toy = {
        .info = { .name = "TOY", .qemu_name = "toy", .create_options = toy_options },
        .state_size = sizeof(toy_state),
        .open = toy_open,
        .close = toy_close,
        .get_size = toy_get_size,
        .get_layout = toy_get_layout,
        .map = toy_map,
        .decode = toy_decode,
        .allocate = toy_allocate,
        .commit = toy_commit,
        .release = toy_release,
        .flush = toy_flush,
};

/* A read-only variant. */
static const vdisk_backend toy_ro = {
        .info = { .name = "TOYRO", .qemu_name = "toyro" },
        .flags = BACKEND_READ_ONLY,
        .state_size = sizeof(toy_state),
        .open = toy_open,
        .close = toy_close,
        .get_size = toy_get_size,
        .get_layout = toy_get_layout,
        .map = toy_map,
        .decode = toy_decode,
};

/* ---------------------------------------------------------------- a toy stream format */

typedef struct stream_unit {
        uint64_t offset, host;
        size_t len, enc_len;
} stream_unit;

typedef struct stream_state {
        vdisk_io *io;
        uint64_t size;
        uint64_t next;       /* writes must start at or after this */
        uint64_t end;        /* bytes appended */
        stream_unit units[256];
        size_t n_units;
} stream_state;

static stream_state *last_stream;

static int stream_create(void *st, const open_ctx *c, const create_params *p) {
        stream_state *s = st;

        s->io = c->io;
        s->size = p->size;
        last_stream = s;
        return 0;
}

static uint64_t stream_get_size(void *st) {
        stream_state *s = st;
        return s->size;
}

static int stream_open(void *st, const open_ctx *c) {
        return vdisk_error(-EMEDIUMTYPE, "not a stream image");
}

static int stream_map(void *st, uint64_t offset, uint64_t len, map_result *ret) {
        *ret = (map_result) { .kind = MAP_UNALLOC, .length = len };
        return 0;
}

static int stream_write(void *st, uint64_t offset, const void *buf, size_t len) {
        stream_state *s = st;
        int r;

        if (offset < s->next || offset % TOY_UNIT || (len % TOY_UNIT && offset + len != s->size))
                return vdisk_error(-EOPNOTSUPP, "stream: whole units in order only");
        counts.stream_writes++;
        r = io_pwrite(s->io, buf, len, s->end);
        if (r < 0)
                return r;
        if (s->n_units < ELEMENTSOF(s->units))
                s->units[s->n_units++] = (stream_unit) { .offset = offset, .host = s->end, .len = len };
        s->end += len;
        s->next = offset + len;
        return 0;
}

/* Run-length pairs (count, byte), as toy_decode() reads them. */
static size_t rle_bound(const void *st, size_t len) {
        return 2 * len;
}

static pthread_t encoders[2];
static _Atomic unsigned n_encoders;
static bool want_two_encoders;

static int rle_encode(const void *st, const void *in, size_t len, void *out, size_t *ret_len) {
        const uint8_t *p = in;
        uint8_t *o = out;
        size_t n = 0;
        pthread_t self = pthread_self();

        if (!pthread_equal(encoders[0], self) && !pthread_equal(encoders[1], self)) {
                unsigned k = atomic_fetch_add(&n_encoders, 1);
                if (k < 2)
                        encoders[k] = self;
                /* The first encoder waits for a second one to take a unit, so
                 * that the test sees parallel encoding however the threads are
                 * scheduled (a generous bound, not a timing assumption). */
                for (unsigned i = 0; want_two_encoders && k == 0 && n_encoders < 2 && i < 100000; i++)
                        usleep(100);
        }
        for (size_t i = 0; i < len;) {
                size_t run = 1;

                while (i + run < len && run < 255 && p[i + run] == p[i])
                        run++;
                o[n++] = (uint8_t) run;
                o[n++] = p[i];
                i += run;
        }
        *ret_len = n;
        return 0;
}

static int stream_write_enc(void *st, uint64_t offset, size_t len, const void *enc, size_t enc_len) {
        stream_state *s = st;
        int r;

        if (offset < s->next || offset % TOY_CHUNK || s->n_units == ELEMENTSOF(s->units))
                return vdisk_error(-EOPNOTSUPP, "stream: whole units in order only");
        r = io_pwrite(s->io, enc, enc_len, s->end);
        if (r < 0)
                return r;
        s->units[s->n_units++] = (stream_unit) { .offset = offset, .host = s->end, .len = len, .enc_len = enc_len };
        s->end += enc_len;
        s->next = offset + len;
        return 0;
}

static void stream_get_layout(void *st, image_layout *ret) {
        *ret = (image_layout) { .cluster_size = TOY_CHUNK, .sector_size = 512 };
}

static int stream_finish(void *st) {
        stream_state *s = st;

        counts.finishes++;
        return io_pwrite(s->io, "END!", 4, s->end);
}

static int stream_flush(void *st) {
        stream_state *s = st;
        return io_flush(s->io);
}

static const vdisk_backend toy_stream = {
        .info = { .name = "TOYSTREAM", .qemu_name = "toystream" },
        .flags = BACKEND_STREAM,
        .state_size = sizeof(stream_state),
        .open = stream_open,
        .create = stream_create,
        .close = toy_close,
        .get_size = stream_get_size,
        .get_layout = toy_get_layout,
        .map = stream_map,
        .stream_write = stream_write,
        .finish = stream_finish,
        .flush = stream_flush,
};

/* The same, storing units encoded. */
static const vdisk_backend toy_stream_enc = {
        .info = { .name = "TOYSTREAMENC", .qemu_name = "toystreamenc" },
        .flags = BACKEND_STREAM,
        .state_size = sizeof(stream_state),
        .open = stream_open,
        .create = stream_create,
        .close = toy_close,
        .get_size = stream_get_size,
        .get_layout = stream_get_layout,
        .map = stream_map,
        .stream_write = stream_write,
        .encode_bound = rle_bound,
        .encode = rle_encode,
        .stream_write_encoded = stream_write_enc,
        .finish = stream_finish,
        .flush = stream_flush,
};

/* ---------------------------------------------------------------- a resolver over memory ios */

typedef struct mem_files {
        const char *name;
        vdisk_io *io;
} mem_files;

static int mem_open_companion(void *user, const char *name, const char *image_name, uint32_t flags,
                              vdisk_io **ret) {
        mem_files *m = user;

        if (!streq(name, m->name))
                return -ENOENT;
        *ret = vdisk_io_ref(m->io);
        return 0;
}

static vdisk_resolver *mem_resolver(mem_files *m) {
        static const vdisk_resolver_ops ops = { .size = sizeof ops, .open_companion = mem_open_companion };
        vdisk_resolver *r = NULL;

        ASSERT_OK(vdisk_resolver_new_ops(&ops, m, &r));
        return r;
}

static vdisk_io *toy_main_io(const char *companion) {
        char name[512] = {};

        snprintf(name, sizeof name, "%s", companion);
        return mem_io("toy.img", name, sizeof name);
}

/* A chain: a VDI base full of 0xAB, and a toy image over it. */
static vdisk_disk *toy_chain(vdisk_io *main_io, vdisk_resolver *res) {
        vdisk_disk *d = disk_new();
        vdisk_io *base = mem_io("base.vdi", NULL, 0);
        uint8_t *buf = malloc(TOY_SIZE);
        vdisk_image *img;

        ASSERT(buf);
        memset(buf, 0xAB, TOY_SIZE);
        ASSERT_OK(vdisk_disk_create_base(d, base, "vdi", TOY_SIZE, NULL));
        ASSERT_OK(vdisk_disk_write(d, buf, TOY_SIZE, 0));
        ASSERT_OK(image_open(&toy, main_io, res, 1, 0, NULL, &img));
        ASSERT_OK(disk_push(d, img, 1));
        vdisk_io_unref(base);
        free(buf);
        return d;
}

/* ---------------------------------------------------------------- tests */

static void test_companion_and_subunits(void) {
        vdisk_io *inner = mem_io("toy.data", NULL, 0), *data, *main_io = toy_main_io("toy.data");
        vdisk_fault f = { .size = sizeof f, .kind = VDISK_FAULT_NONE };
        uint8_t buf[TOY_UNIT * 2], expect[TOY_UNIT * 2];
        const uint8_t *bytes;
        mem_files mf = { "toy.data" };
        vdisk_resolver *res;
        vdisk_disk *d;
        size_t len;
        uint64_t w;

        ASSERT_OK(vdisk_io_new_fault(inner, &f, &data));
        mf.io = data;
        res = mem_resolver(&mf);
        d = toy_chain(main_io, res);

        /* 100 bytes into a new 4 KiB unit: the unit is the parent's data
         * overlaid with them, written with one pwrite into the companion. */
        memset(buf, 0x11, 100);
        w = vdisk_io_fault_writes(data);
        ASSERT_OK(vdisk_disk_write(d, buf, 100, 5000));
        ASSERT_EQ_U64(vdisk_io_fault_writes(data) - w, 1);
        ASSERT(counts.commits == 1);
        ASSERT_OK(vdisk_io_memory_data(inner, (const void **) &bytes, &len));
        ASSERT_EQ_U64(len, TOY_UNIT);
        memset(expect, 0xAB, TOY_UNIT);
        memset(expect + 5000 - TOY_UNIT, 0x11, 100);
        ASSERT_MEMEQ(bytes, expect, TOY_UNIT);
        ASSERT_OK(vdisk_disk_read(d, buf, TOY_UNIT * 2, TOY_UNIT));
        memset(expect + TOY_UNIT, 0xAB, TOY_UNIT);
        ASSERT_MEMEQ(buf, expect, TOY_UNIT * 2);
        /* The next unit shares the 16 KiB chunk: no new space at its end. */
        ASSERT_OK(vdisk_disk_write(d, buf, 10, 3 * TOY_UNIT));
        ASSERT_EQ_U64(last_toy->t[3].host, TOY_UNIT);

        vdisk_disk_unref(d);
        vdisk_resolver_free(res);
        vdisk_io_unref(data);
        vdisk_io_unref(inner);
        vdisk_io_unref(main_io);
}

static void test_failed_unit_is_released(void) {
        vdisk_io *inner = mem_io("toy.data", NULL, 0), *data, *main_io = toy_main_io("toy.data");
        vdisk_fault f = { .size = sizeof f, .kind = VDISK_FAULT_EIO, .after = 0 };
        uint8_t buf[TOY_UNIT];
        mem_files mf = { "toy.data" };
        vdisk_resolver *res;
        vdisk_disk *d;
        unsigned releases = counts.releases, commits = counts.commits;

        ASSERT_OK(vdisk_io_new_fault(inner, &f, &data));
        mf.io = data;
        res = mem_resolver(&mf);
        d = toy_chain(main_io, res);
        memset(buf, 0x22, sizeof buf);
        ASSERT_ERR(vdisk_disk_write(d, buf, 100, 8200), -EIO);
        ASSERT(counts.releases == releases + 1);
        ASSERT(counts.commits == commits);
        ASSERT(last_toy->t[2].kind == 0);
        ASSERT_OK(vdisk_disk_read(d, buf, sizeof buf, 2 * TOY_UNIT));
        for (size_t i = 0; i < sizeof buf; i++)
                ASSERT(buf[i] == 0xAB);
        vdisk_disk_unref(d);
        vdisk_resolver_free(res);
        vdisk_io_unref(data);
        vdisk_io_unref(inner);
        vdisk_io_unref(main_io);
}

static void test_missing_companion(void) {
        vdisk_io *main_io = toy_main_io("elsewhere.data");
        mem_files mf = { "toy.data", NULL };
        vdisk_resolver *res = mem_resolver(&mf);
        vdisk_image *img = NULL;

        vdisk_clear_error();
        ASSERT_ERR(image_open(&toy, main_io, res, 0, 0, NULL, &img), -ENOENT);
        ASSERT(strstr(vdisk_last_error(), "elsewhere.data"));
        /* Without a resolver the message says so, naming the file too. */
        ASSERT_ERR(image_open(&toy, main_io, NULL, 0, 0, NULL, &img), -ENOENT);
        ASSERT(strstr(vdisk_last_error(), "elsewhere.data"));
        vdisk_resolver_free(res);
        vdisk_io_unref(main_io);
}

static void test_encoded_units(void) {
        /* Unit 1 encoded: 4096 bytes of 0x5A as 16 runs of 255 and one of 16. */
        uint8_t enc[34], buf[TOY_UNIT];
        vdisk_io *data, *main_io = toy_main_io("toy.data");
        mem_files mf = { "toy.data" };
        vdisk_resolver *res;
        vdisk_disk *d;
        unsigned decodes;

        for (int i = 0; i < 16; i++) {
                enc[2 * i] = 255;
                enc[2 * i + 1] = 0x5A;
        }
        enc[32] = 16;
        enc[33] = 0x5A;
        data = mem_io("toy.data", enc, sizeof enc);
        mf.io = data;
        res = mem_resolver(&mf);
        d = toy_chain(main_io, res);
        last_toy->t[1] = (toy_entry) { .kind = 3, .host = 0, .enc = sizeof enc };
        last_toy->t[3] = (toy_entry) { .kind = 3, .host = 0, .enc = 32 };   /* decodes short */

        /* Eight 512-byte reads inside one unit decode it once. */
        decodes = counts.decodes;
        for (unsigned i = 0; i < 8; i++) {
                ASSERT_OK(vdisk_disk_read(d, buf, 512, TOY_UNIT + i * 512));
                for (unsigned j = 0; j < 512; j++)
                        ASSERT(buf[j] == 0x5A);
        }
        ASSERT(counts.decodes == decodes + 1);
        /* A read across the unit's end continues into the parent. */
        ASSERT_OK(vdisk_disk_read(d, buf, 1024, 2 * TOY_UNIT - 512));
        ASSERT(buf[0] == 0x5A && buf[511] == 0x5A && buf[512] == 0xAB && buf[1023] == 0xAB);
        /* Unit 3 has the same encoded bytes, cut short: not the cached unit. */
        ASSERT_ERR(vdisk_disk_read(d, buf, 1024, 3 * TOY_UNIT - 512), -EUCLEAN);
        ASSERT(strstr(vdisk_last_error(), "decodes to 4080 bytes"));

        /* Block status: data, without a host offset to read from. */
        {
                vdisk_extent e;

                ASSERT_OK(vdisk_disk_block_status(d, TOY_UNIT, TOY_UNIT, &e));
                ASSERT(e.flags & VDISK_EXTENT_DATA);
                ASSERT(!e.host_offset_valid);
        }

        /* A write into an encoded unit gets a new unit holding the old data
         * around the new bytes; the encoded bytes stay as they were. */
        memset(buf, 0x33, 10);
        ASSERT_OK(vdisk_disk_write(d, buf, 10, TOY_UNIT + 100));
        ASSERT(last_toy->t[1].kind == 2);
        ASSERT_OK(vdisk_disk_read(d, buf, TOY_UNIT, TOY_UNIT));
        for (unsigned j = 0; j < TOY_UNIT; j++)
                ASSERT(buf[j] == (j >= 100 && j < 110 ? 0x33 : 0x5A));
        {
                const uint8_t *bytes;
                size_t len;

                ASSERT_OK(vdisk_io_memory_data(data, (const void **) &bytes, &len));
                ASSERT_MEMEQ(bytes, enc, sizeof enc);
        }
        vdisk_disk_unref(d);
        vdisk_resolver_free(res);
        vdisk_io_unref(data);
        vdisk_io_unref(main_io);
}

static void test_stream_and_read_only(void) {
        vdisk_io *io = mem_io("s.img", NULL, 0), *main_io = toy_main_io("toy.data"), *data = mem_io("toy.data", NULL, 0);
        create_params p = { .size = TOY_SIZE };
        mem_files mf = { "toy.data", data };
        vdisk_resolver *res = mem_resolver(&mf);
        uint8_t buf[2 * TOY_UNIT];
        vdisk_image *img;
        vdisk_disk *d = disk_new();
        const uint8_t *bytes;
        size_t len;

        memset(buf, 0x44, sizeof buf);
        ASSERT_OK(image_create(&toy_stream, io, NULL, &p, NULL, &img));
        ASSERT_OK(disk_push(d, img, 1));
        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 0));
        ASSERT_OK(vdisk_disk_write(d, buf, TOY_UNIT, 4 * TOY_UNIT));
        ASSERT_ERR(vdisk_disk_write(d, buf, TOY_UNIT, 2 * TOY_UNIT), -EOPNOTSUPP);   /* going back */
        ASSERT(counts.stream_writes == 2);
        ASSERT(counts.finishes == 0);
        vdisk_disk_unref(d);
        ASSERT(counts.finishes == 1);
        ASSERT_OK(vdisk_io_memory_data(io, (const void **) &bytes, &len));
        ASSERT_EQ_U64(len, 3 * TOY_UNIT + 4);
        ASSERT(memcmp(bytes + 3 * TOY_UNIT, "END!", 4) == 0);

        /* A stream format never opens writable; neither does a read-only one. */
        vdisk_clear_error();
        ASSERT_ERR(image_open(&toy_stream, io, NULL, 1, 0, NULL, &img), -EROFS);
        ASSERT(strstr(vdisk_last_error(), "s.img"));
        ASSERT_ERR(image_open(&toy_ro, main_io, res, 1, 0, NULL, &img), -EROFS);
        ASSERT_OK(image_open(&toy_ro, main_io, res, 0, 0, NULL, &img));
        image_free(img);
        vdisk_resolver_free(res);
        vdisk_io_unref(io);
        vdisk_io_unref(data);
        vdisk_io_unref(main_io);
}

/* Copy into a stream format with encode(): whole units only (a 4 KiB
 * extent at an odd offset becomes its 16 KiB unit), all-zero units left
 * out, units encoded on more than one thread where there are cores, written
 * in order, and finish() before the final flush. */
static void test_copy_encodes_units(void) {
        const uint64_t size = 4 * MiB;
        vdisk_io *sio = mem_io("src.vdi", NULL, 0), *dio = mem_io("dst.toy", NULL, 0);
        vdisk_disk *src = disk_new(), *dst = disk_new();
        create_params p = { .size = size };
        uint8_t *want = calloc(1, size), unit[TOY_CHUNK];
        const uint8_t *bytes;
        vdisk_image *img;
        size_t len, expect_units = 0;
        unsigned finishes = counts.finishes;

        ASSERT(want);
        for (uint64_t i = 0; i < 4096; i++)
                want[100 * KiB + i] = (uint8_t) (i / 7);
        memset(want + MiB, 0x77, MiB);
        memset(want + 3 * MiB + 5000, 0x01, 3);
        ASSERT_OK(vdisk_disk_create_base(src, sio, "vdi", size, NULL));
        ASSERT_OK(vdisk_disk_write(src, want + 96 * KiB, 16 * KiB, 96 * KiB));
        ASSERT_OK(vdisk_disk_write(src, want + MiB, MiB, MiB));
        ASSERT_OK(vdisk_disk_write(src, want + 3 * MiB, 16 * KiB, 3 * MiB));
        for (uint64_t o = 0; o < size; o += TOY_CHUNK)
                expect_units += !buf_is_zero(want + o, TOY_CHUNK);

        ASSERT_OK(image_create(&toy_stream_enc, dio, NULL, &p, NULL, &img));
        ASSERT_OK(disk_push(dst, img, 1));
        n_encoders = 0;
        encoders[0] = encoders[1] = (pthread_t) 0;
        want_two_encoders = sysconf(_SC_NPROCESSORS_ONLN) >= 2;
        ASSERT_OK(copy_run(src, 0, dst, 0, size, 4096, NULL));
        ASSERT(counts.finishes == finishes + 1);
        ASSERT_EQ_U64(last_stream->n_units, expect_units);
        if (sysconf(_SC_NPROCESSORS_ONLN) >= 2)
                ASSERT(n_encoders >= 2);
        ASSERT_OK(vdisk_io_memory_data(dio, (const void **) &bytes, &len));
        for (size_t i = 0; i < last_stream->n_units; i++) {
                const stream_unit *u = &last_stream->units[i];
                map_result m = { .kind = MAP_ENCODED, .unit_length = (uint32_t) u->len,
                                 .encoded_length = (uint32_t) u->enc_len, .codec = 7 };

                ASSERT(i == 0 || u->offset > last_stream->units[i - 1].offset);
                ASSERT_OK(toy_decode(NULL, &m, bytes + u->host, unit));
                ASSERT_MEMEQ(unit, want + u->offset, u->len);
        }
        ASSERT(memcmp(bytes + len - 4, "END!", 4) == 0);
        vdisk_disk_unref(dst);
        ASSERT(counts.finishes == finishes + 1);   /* once */
        vdisk_disk_unref(src);
        vdisk_io_unref(sio);
        vdisk_io_unref(dio);
        free(want);
}

/* Copy into a stream format without encode(): whole 16 KiB units only, in
 * order, all-zero ones left out, even from a sparse raw source whose data
 * extents are 4 KiB at odd offsets (each becomes its unit). */
static void test_copy_stream_units(void) {
        const uint64_t size = 4 * MiB;
        char path[] = "/tmp/test-contract-src-XXXXXX";
        uint8_t *want = calloc(1, size);
        vdisk_disk *src = disk_new(), *dst = disk_new();
        vdisk_io *sio = NULL, *dio = mem_io("dst.toy", NULL, 0);
        create_params p = { .size = size };
        const uint8_t *bytes;
        size_t len, expect_units = 0;
        vdisk_image *img;
        int fd;

        ASSERT(want);
        for (uint64_t i = 0; i < 4096; i++)
                want[100 * KiB + i] = (uint8_t) (i / 3 + 1);
        memset(want + 3 * MiB + 8192, 0x5D, 4096);
        fd = mkstemp(path);
        ASSERT(fd >= 0);
        ASSERT(ftruncate(fd, (off_t) size) == 0);
        ASSERT(pwrite(fd, want + 100 * KiB, 4096, 100 * KiB) == 4096);
        ASSERT(pwrite(fd, want + 3 * MiB + 8192, 4096, 3 * MiB + 8192) == 4096);
        close(fd);
        ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_READ, &sio));
        ASSERT_OK(vdisk_disk_open(src, sio, "raw", VDISK_OPEN_READONLY));
        for (uint64_t o = 0; o < size; o += TOY_CHUNK)
                expect_units += !buf_is_zero(want + o, TOY_CHUNK);
        ASSERT(expect_units == 2);

        ASSERT_OK(image_create(&toy_stream, dio, NULL, &p, NULL, &img));
        ASSERT_OK(disk_push(dst, img, 1));
        ASSERT_OK(copy_run(src, 0, dst, 0, size, 4096, NULL));
        ASSERT_EQ_U64(last_stream->n_units, expect_units);
        ASSERT_OK(vdisk_io_memory_data(dio, (const void **) &bytes, &len));
        for (size_t i = 0; i < last_stream->n_units; i++) {
                const stream_unit *u = &last_stream->units[i];

                ASSERT(u->offset % TOY_CHUNK == 0 && u->len == TOY_CHUNK);
                ASSERT_MEMEQ(bytes + u->host, want + u->offset, u->len);
        }
        vdisk_disk_unref(dst);
        vdisk_disk_unref(src);
        vdisk_io_unref(sio);
        vdisk_io_unref(dio);
        unlink(path);
        free(want);
}

static void test_create_options(void) {
        const char *const good[] = { "fast", "on", "grain", "65536", "label", "x y", NULL };
        const char *const bad[][3] = {
                { "nope", "1", NULL }, { "fast", "yes", NULL }, { "grain", "64k", NULL },
                { "size", "1024", NULL }, { "backing_file", "a", NULL }, { "fast", NULL, NULL },
        };
        const char *const vdi_ok[] = { "static", "on", NULL }, *const vdi_bad[] = { "static", "maybe", NULL };
        vdisk_create_opts o = { .size = sizeof o, .options = vdi_ok };
        vdisk_disk *d = disk_new();
        vdisk_io *io = mem_io("o.vdi", NULL, 0);
        vdisk_image_info info = { .size = sizeof info };

        ASSERT_OK(backend_check_options(&toy, good));
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                vdisk_clear_error();
                ASSERT_ERR(backend_check_options(&toy, bad[i]), -EINVAL);
                ASSERT(strstr(vdisk_last_error(), bad[i][0]));
        }
        ASSERT(vdisk_backend_option(vdisk_backend_find("vdi"), "static")->type == VDISK_OPTION_BOOL);
        ASSERT(!vdisk_backend_option(vdisk_backend_find("vdi"), "cluster_size"));

        o.options = vdi_bad;
        ASSERT_ERR(vdisk_disk_create_base(d, io, "vdi", 4 * MiB, &o), -EINVAL);
        o.options = vdi_ok;
        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", 4 * MiB, &o));
        ASSERT_OK(vdisk_image_get_info(vdisk_disk_image(d, 0), &info));
        ASSERT_STREQ(info.variant, "static");
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
}

static void test_regions(void) {
        uint8_t *iso = calloc(1, 64 * 2048);
        vdisk_disk *d = disk_new();
        vdisk_io *io;
        vdisk_region *v;
        size_t n;

        ASSERT(iso);
        memcpy(iso + 0x8001, "CD001", 5);
        io = mem_io("cd.iso", iso, 64 * 2048);
        ASSERT_OK(vdisk_disk_open(d, io, "raw", VDISK_OPEN_READONLY));
        ASSERT(vdisk_image_sector_size(vdisk_disk_image(d, 0)) == 2048);
        ASSERT_OK(vdisk_disk_query_regions(d, &v, &n));
        ASSERT(n == 1 && v[0].offset == 0 && v[0].length == 64 * 2048 && v[0].block_size == 2048 &&
               v[0].data_type == VDISK_REGION_DATA_MODE1_2048);
        free(v);
        vdisk_disk_unref(d);
        vdisk_io_unref(io);

        d = disk_new();
        io = mem_io("hd.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", 4 * MiB, NULL));
        ASSERT_OK(vdisk_disk_query_regions(d, &v, &n));
        ASSERT(n == 1 && v[0].length == 4 * MiB && v[0].block_size == 512 &&
               v[0].data_type == VDISK_REGION_DATA_RAW);
        free(v);
        {
                vdisk_snapshot *s = (void *) 1;
                char **kv = NULL;

                ASSERT_OK(vdisk_image_list_snapshots(vdisk_disk_image(d, 0), &s, &n));
                ASSERT(!s && n == 0);
                ASSERT_OK(vdisk_image_get_format_info(vdisk_disk_image(d, 0), &kv));
                ASSERT(kv && !kv[0]);
                vdisk_strv_free(kv);
        }
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        free(iso);
}

static void test_path_containment(void) {
        char dir[] = "/tmp/test-contract-XXXXXX", path[512];
        vdisk_resolver *res = NULL;
        vdisk_io *io = NULL;
        int fd;

        ASSERT(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/img.vmdk", dir);
        ASSERT_OK(vdisk_resolver_new_path(NULL, &res));
        snprintf(path, sizeof path, "%s/ext-flat.vmdk", dir);
        fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        ASSERT(fd >= 0);
        close(fd);
        snprintf(path, sizeof path, "%s/img.vmdk", dir);
        ASSERT_OK(res->ops.open_companion(res->user, "ext-flat.vmdk", path, 0, &io));
        ASSERT(vdisk_io_readonly(io));
        vdisk_io_unref(io);
        ASSERT_ERR(res->ops.open_companion(res->user, "../etc/passwd", path, 0, &io), -EPERM);
        ASSERT_ERR(res->ops.open_companion(res->user, "a/../../x", path, 0, &io), -EPERM);
        ASSERT_ERR(res->ops.open_companion(res->user, "/etc/passwd", path, 0, &io), -EPERM);
        snprintf(path, sizeof path, "%s/link.vmdk", dir);
        ASSERT(symlink("/etc/passwd", path) == 0);
        snprintf(path, sizeof path, "%s/img.vmdk", dir);
        ASSERT_ERR(res->ops.open_companion(res->user, "link.vmdk", path, 0, &io), -ELOOP);
        /* CREATE makes a new file and never reuses one. */
        ASSERT_OK(res->ops.open_companion(res->user, "new-s001.vmdk", path, VDISK_COMPANION_CREATE, &io));
        ASSERT(!vdisk_io_readonly(io));
        vdisk_io_unref(io);
        ASSERT_ERR(res->ops.open_companion(res->user, "new-s001.vmdk", path, VDISK_COMPANION_CREATE, &io), -EEXIST);
        vdisk_resolver_free(res);
        snprintf(path, sizeof path, "rm -rf '%s'", dir);
        ASSERT(system(path) == 0);
}

int main(void) {
        test_companion_and_subunits();
        test_failed_unit_is_released();
        test_missing_companion();
        test_encoded_units();
        test_stream_and_read_only();
        test_copy_encodes_units();
        test_copy_stream_units();
        test_create_options();
        test_regions();
        test_path_containment();
        printf("contract: ok\n");
        return 0;
}
