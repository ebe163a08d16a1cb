/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `crash`: qcow2 amend -o data_file=NAME rewrites the header cluster;
 * under every fault it must leave the old header or the new one, never a
 * mix (lib/backends/qcow2-amend.c, rename_data_file()).
 *
 * Images: 64 KiB clusters with an external data file (a memory companion),
 * standalone and as a diff over a raw base (a backing file name behind the
 * extensions), each also with a feature name table of 8 entries injected
 * before the data file extension, as qemu writes it (the header then passes
 * the first sector). Each runs a chain of renames between names of 5 to 606
 * bytes, so every path is taken: the new header in one sector; the old one
 * in the first sector and the new one longer; both past the first sector
 * (the shorter header without the feature table in between); the backing
 * file name in the way. For every rename and every N:
 *   - POWER_CUT after N writes, crash images for several seeds (seed 0:
 *     unflushed writes lost; others: a random subset, torn at 512 bytes):
 *     the image opens, names the old or the new data file (the new one when
 *     the amend returned success and seed is 0), keeps its backing file,
 *     reads the same data and passes vdisk_check without leaks;
 *   - EIO and a short write at write N only (transient): the amend fails,
 *     the image opens as above; a second amend succeeds.
 */
#include "tests.h"

#define SIZE (4 * MiB)
#define CS 65536u
#define SEEDS 8u

static test_chain_files g_files;

static void put_be32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t) (v >> 24), p[1] = (uint8_t) (v >> 16), p[2] = (uint8_t) (v >> 8), p[3] = (uint8_t) v;
}
static void put_be64(uint8_t *p, uint64_t v) {
        put_be32(p, (uint32_t) (v >> 32));
        put_be32(p + 4, (uint32_t) v);
}
static uint64_t be64(const uint8_t *p) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
                v = v << 8 | p[i];
        return v;
}
static uint32_t be32(const uint8_t *p) {
        return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}

static vdisk_resolver *g_res;
static uint8_t *g_content;
static unsigned n_torn;

static char *long_name(char c, size_t dirs, size_t len) {
        char *s = malloc(len + 1);

        ASSERT(s);
        memset(s, c, len);
        for (size_t i = 1; i <= dirs; i++)
                s[i * 200] = '/';
        memcpy(s + len - 4, ".dat", 4);
        s[len] = 0;
        return s;
}

static vdisk_disk *open_top(vdisk_io *io, uint32_t flags) {
        vdisk_disk *d = disk_new();

        ASSERT_OK(vdisk_disk_open_chain(d, g_res, io, "qcow2", flags));
        return d;
}

/* The feature name table qemu writes (8 entries) goes in front of the
 * other extensions. */
static void inject_features(vdisk_io *io) {
        uint8_t *h = calloc(1, CS), *n = calloc(1, CS);
        uint64_t boff, bsize;
        size_t pos = 112, len = 8 * 48, end;

        ASSERT(h && n);
        ASSERT_OK(vdisk_io_pread(io, h, CS, 0));
        boff = be64(h + 8);
        bsize = be32(h + 16);
        memcpy(n, h, 112);
        put_be32(n + pos, 0x6803f857);
        put_be32(n + pos + 4, (uint32_t) len);
        for (unsigned i = 0; i < 8; i++) {
                n[pos + 8 + i * 48] = (uint8_t) (i / 3);
                n[pos + 8 + i * 48 + 1] = (uint8_t) i;
                snprintf((char *) n + pos + 8 + i * 48 + 2, 46, "feature %u", i);
        }
        pos += 8 + len;
        end = boff ? (size_t) boff : 1024;
        memcpy(n + pos, h + 112, end - 112);
        if (boff) {
                memcpy(n + boff + 8 + len, h + boff, bsize);
                put_be64(n + 8, boff + 8 + len);
        }
        ASSERT_OK(vdisk_io_pwrite(io, n, CS, 0));
        free(h);
        free(n);
}

static void build(vdisk_io **ret, bool backing, bool features) {
        static const char *const opts[] = { "cluster_size", "65536", "data_file", "d0.dat", NULL };
        vdisk_create_opts o = { .size = sizeof o, .options = opts, .resolver = g_res };
        vdisk_disk *d = disk_new();
        vdisk_io *io = mem_io("t.qcow2", NULL, 0);
        rng r;

        vdisk_io_unref(g_files.data);
        g_files.data = mem_io("d0.dat", NULL, 0);
        if (backing) {
                ASSERT_OK(vdisk_disk_open(d, g_files.base, "raw", VDISK_OPEN_READONLY));
                o.parent_name = "base.raw";
                o.parent_format = "raw";
                ASSERT_OK(vdisk_disk_create_diff(d, io, "qcow2", &o));
        } else
                ASSERT_OK(vdisk_disk_create_base(d, io, "qcow2", SIZE, &o));
        rng_seed(&r, backing ? 2 : 1);
        for (uint64_t off = 0; off < SIZE; off += 256 * KiB) {
                uint8_t buf[64 * 1024];

                if (rng_chance(&r, 50))
                        continue;
                rng_fill(&r, buf, sizeof buf);
                ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, off + 64 * KiB));
        }
        ASSERT_OK(vdisk_disk_close(d));
        if (features)
                inject_features(io);
        d = open_top(io, VDISK_OPEN_READONLY);
        free(g_content);
        g_content = disk_read_all(d, &(uint64_t) { 0 });
        vdisk_disk_unref(d);
        *ret = io;
}

/* The image on `io` is the old or the new one (`want_new`: the new one). */
static void verify(vdisk_io *io, const char *old, const char *new, bool want_new, bool backing) {
        char v[1100];
        vdisk_disk *d = open_top(io, VDISK_OPEN_READONLY);
        uint8_t *got;
        uint64_t size;

        test_format_value(d, "data file", v, sizeof v);
        if (strcmp(v, new) != 0 && (want_new || strcmp(v, old) != 0))
                FAIL("data file '%.40s...' (%zu bytes): neither the old (%zu) nor the new (%zu) name%s", v,
                     strlen(v), strlen(old), strlen(new), want_new ? " (the new one wanted)" : "");
        /* the resolver opens "base.raw" only: a chain of two names it */
        ASSERT_EQ_U64(vdisk_disk_count(d), backing ? 2 : 1);
        got = disk_read_all(d, &size);
        ASSERT_EQ_U64(size, SIZE);
        ASSERT_MEMEQ(got, g_content, SIZE);
        free(got);
        ASSERT_EQ_U64(CHECK_IMAGE_CLEAN(d, vdisk_disk_count(d) - 1), 0);
        vdisk_disk_unref(d);
}

/* A power cut in the middle of write number `target`: only the 512-byte
 * sectors of it in `mask` reach the disk; that write and every later call
 * fail. Earlier writes are all there (the crash images of the fault io
 * cover lost unflushed ones). */
typedef struct tear {
        vdisk_io *inner;
        uint64_t target, n;
        uint32_t mask, pieces;   /* pieces: the sectors the target write touched */
        bool dead;
} tear;

static int tear_pread(void *u, void *buf, size_t len, uint64_t off) {
        tear *t = u;

        return t->dead ? -EIO : vdisk_io_pread(t->inner, buf, len, off);
}

static int tear_pwrite(void *u, const void *buf, size_t len, uint64_t off) {
        tear *t = u;

        if (t->dead)
                return -EIO;
        if (t->n++ != t->target)
                return vdisk_io_pwrite(t->inner, buf, len, off);
        t->dead = true;
        t->pieces = 0;
        for (uint64_t o = off; o < off + len; t->pieces++) {
                uint64_t end = MIN((o / 512 + 1) * 512, off + len);

                if (t->pieces < 32 && (t->mask >> t->pieces & 1))
                        ASSERT_OK(vdisk_io_pwrite(t->inner, (const uint8_t *) buf + (o - off), end - o, o));
                o = end;
        }
        return -EIO;
}

static int tear_flush(void *u) {
        tear *t = u;

        return t->dead ? -EIO : vdisk_io_flush(t->inner);
}

static int tear_get_size(void *u, uint64_t *ret) {
        tear *t = u;

        return vdisk_io_get_size(t->inner, ret);
}

static int tear_truncate(void *u, uint64_t size) {
        tear *t = u;

        if (t->dead)
                return -EIO;
        if (t->n++ == t->target) {
                t->dead = true;
                return -EIO;
        }
        return vdisk_io_truncate(t->inner, size);
}

static const vdisk_io_ops tear_ops = {
        .size = sizeof(vdisk_io_ops),
        .pread = tear_pread,
        .pwrite = tear_pwrite,
        .flush = tear_flush,
        .get_size = tear_get_size,
        .truncate = tear_truncate,
};

static int amend(vdisk_io *io, const char *name) {
        const char *o[] = { "data_file", name, NULL };
        vdisk_disk *d = open_top(io, 0);
        int r;

        vdisk_clear_error();
        r = vdisk_amend(d, o, NULL);
        if (r < 0)
                test_check_clean_error(__FILE__, __LINE__, "vdisk_amend", r);
        vdisk_disk_unref(d);
        return r;
}

static unsigned rename_once(vdisk_io **tmpl, const char *old, const char *new, bool backing) {
        vdisk_fault none = { .size = sizeof none, .kind = VDISK_FAULT_NONE };
        vdisk_io *inner, *fio;
        uint64_t w;

        inner = mem_io_clone(*tmpl, "t.qcow2");
        ASSERT_OK(vdisk_io_new_fault(inner, &none, &fio));
        ASSERT_OK(amend(fio, new));
        w = vdisk_io_fault_writes(fio);
        vdisk_io_unref(fio);
        verify(inner, old, new, true, backing);

        for (uint64_t n = 0; n <= w; n++) {
                vdisk_fault cut = { .size = sizeof cut, .kind = VDISK_FAULT_POWER_CUT, .after = n };
                int r;

                test_set_context("%.20s -> %.20s (%zu -> %zu bytes), power cut after %" PRIu64 " of %" PRIu64
                                 " writes", old, new, strlen(old), strlen(new), n, w);
                vdisk_io *in2 = mem_io_clone(*tmpl, "t.qcow2");
                ASSERT_OK(vdisk_io_new_fault(in2, &cut, &fio));
                r = amend(fio, new);
                for (unsigned seed = 0; seed < SEEDS; seed++) {
                        vdisk_io *ci;

                        ASSERT_OK(vdisk_io_fault_crash_image(fio, seed, &ci));
                        verify(ci, old, new, r >= 0 && seed == 0, backing);
                        vdisk_io_unref(ci);
                }
                vdisk_io_unref(fio);
                vdisk_io_unref(in2);
        }
        /* each write torn in every way (up to 64 ways) */
        for (uint64_t n = 0; n < w; n++)
                for (uint32_t mask = 0, ways = 2; mask < ways && mask < 64; mask++) {
                        vdisk_io *in2 = mem_io_clone(*tmpl, "t.qcow2"), *tio;
                        tear t = { .inner = in2, .target = n, .mask = mask };

                        test_set_context("%.20s -> %.20s, write %" PRIu64 " torn, sectors %#x written", old, new,
                                         n, mask);
                        ASSERT_OK(vdisk_io_new_ops(&tear_ops, &t, "t.qcow2", 0, &tio));
                        ASSERT(amend(tio, new) < 0);
                        vdisk_io_unref(tio);
                        ways = t.pieces >= 6 ? 64 : 1u << t.pieces;
                        n_torn++;
                        verify(in2, old, new, false, backing);
                        vdisk_io_unref(in2);
                }
        for (uint64_t n = 0; n < w; n++)
                for (unsigned k = 0; k < 2; k++) {
                        vdisk_fault f = { .size = sizeof f, .kind = k ? VDISK_FAULT_SHORT : VDISK_FAULT_EIO,
                                          .after = n, .once = 1 };
                        vdisk_io *in2 = mem_io_clone(*tmpl, "t.qcow2");

                        test_set_context("%.20s -> %.20s, transient %s at write %" PRIu64, old, new,
                                         k ? "short write" : "EIO", n);
                        ASSERT_OK(vdisk_io_new_fault(in2, &f, &fio));
                        ASSERT(amend(fio, new) < 0);
                        vdisk_io_unref(fio);
                        verify(in2, old, new, false, backing);
                        ASSERT_OK(amend(in2, new));
                        verify(in2, old, new, true, backing);
                        vdisk_io_unref(in2);
                }
        test_set_context("%s", "");
        vdisk_io_unref(*tmpl);
        *tmpl = inner;
        return (unsigned) w;
}

/* A rename no order of one-sector writes can do: refused, nothing written. */
static void rename_refused(vdisk_io *tmpl, const char *new) {
        vdisk_io *io = mem_io_clone(tmpl, "t.qcow2");
        const void *a, *b;
        size_t la, lb;

        ASSERT(amend(io, new) == -EOPNOTSUPP);
        ASSERT(strstr(vdisk_last_error(), "two steps"));
        ASSERT_OK(vdisk_io_memory_data(io, &a, &la));
        ASSERT_OK(vdisk_io_memory_data(tmpl, &b, &lb));
        ASSERT(la == lb && memcmp(a, b, la) == 0);
        vdisk_io_unref(io);
}

int main(void) {
        char *n225 = long_name('l', 1, 225), *n556 = long_name('m', 2, 556), *n606 = long_name('n', 3, 606);
        const char *names[] = { "d0.dat", n225, "b.dat", n556, n225, "c.dat" };
        uint8_t *base = calloc(1, SIZE);
        rng r;

        ASSERT(base);
        rng_seed(&r, 7);
        rng_fill(&r, base, SIZE);
        g_files.base = mem_io("base.raw", base, SIZE);
        free(base);
        ASSERT_OK(vdisk_resolver_new_ops(&test_chain_ops, &g_files, &g_res));
        for (unsigned v = 0; v < 4; v++) {
                bool backing = v & 1, features = v & 2;
                unsigned total = 0;
                vdisk_io *tmpl;

                n_torn = 0;
                build(&tmpl, backing, features);
                for (size_t i = 1; i < sizeof names / sizeof names[0]; i++) {
                        if (names[i - 1] == n556)
                                rename_refused(tmpl, n606);
                        total += rename_once(&tmpl, names[i - 1], names[i], backing);
                }
                printf("ok %u - %s%s: %zu renames, %u writes, every cut, %u torn writes, transient faults; "
                       "556 -> 606 bytes refused\n", v + 1, backing ? "diff over raw" : "standalone",
                       features ? ", feature table" : "", sizeof names / sizeof names[0] - 1, total, n_torn);
                vdisk_io_unref(tmpl);
        }
        vdisk_io_unref(g_files.data);
        vdisk_io_unref(g_files.base);
        vdisk_resolver_unref(g_res);
        free(g_content);
        free(n225);
        free(n556);
        free(n606);
        return 0;
}
