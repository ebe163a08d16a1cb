/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `crash`: the crash model.
 *
 * Each scenario runs one operation on a VDI (a standalone base, or the top
 * of a two-image chain, or the base of a merge) whose memory io is wrapped in
 * a fault io. A first run without a fault counts the io's writes (W); then for
 * every N in 0..W:
 *   - POWER_CUT after N writes: the operation fails at the cut; for several
 *     seeds the crash image (seed 0: every unflushed write lost; others: a
 *     random subset, torn at 512 bytes) must open, pass vdisk_check with no
 *     corruption (leaks allowed) and hold, in every sector, a version the
 *     sector may have: the one durable at the last successful flush, or any
 *     version written after it (durable data is never lost, nothing else
 *     appears). With one documented exception for check: the header's
 *     allocated-block count may be ahead of the block map (the library writes
 *     the count first on purpose, lib/backends/vdi.c), which the tests'
 *     own parse of the header and map tells apart from corruption.
 *   - EIO and ENOSPC from the Nth write on: the operation returns exactly
 *     that error with a message, and the image left in the inner memory io
 *     opens and checks the same way.
 *   - transient faults (run_transient): EIO, ENOSPC or a short write at write
 *     N only, for every N, and each flush failing once; the io recovers. The
 *     call fails with that error; the chain then reads exactly as before it
 *     (write workloads: per sector, as before or the failed call's data), a
 *     later flush persists nothing else, and the retried operation succeeds.
 * Scenarios: (a) writes, allocating and in place, zeros, discards, flushes in
 * between (base; top of a chain); (b) merge: forward diff into base, forward
 * middle image into base under a third image that gets relinked (the chain
 * must read the same at every cut whichever parent the top names), backward
 * base into diff; (c) compact (base; top); (d) resize grow (base; top);
 * (e) repair of a VDI with a leaked slot; (f) rebase of a diff onto another
 * parent; (g) convert into an existing image. A convert's source never
 * changes when its destination fails with EIO or ENOSPC at any write,
 * persistent or transient. (a) runs on VMDK too (vmdk-writes-*: grain
 * allocation, both grain tables, the descriptor's new CID), with two crash
 * images per cut and the library's check as the structural oracle; so do
 * (c) (vmdk-compact-base, and vmdk-compact-zeroed on a diff with zeroed
 * grain entries) and (e) (vmdk-repair: a redundant grain table entry
 * missing and junk past the last grain); and on QCOW2 (qcow2-writes-*:
 * clusters, L2 tables and refcount blocks allocated, zero clusters;
 * vdisk_check counts every reference, qemu-img check too; and
 * qcow2-amend-*: the refcount width rewritten, compat=0.10 over zero
 * clusters), run by VDISK_CRASH_FORMAT=qcow2 (test crash-qcow2) only;
 * qcow2-discard-subclusters (extended L2: whole subclusters discarded, a
 * cluster freed once none is left, then written again);
 * qcow2-resize-bitmaps (512-byte clusters, an enabled and a disabled
 * bitmap, grown so that a table grows: each bitmap in use or consistent
 * with the size the header says, the grown range clean but for the one
 * write made into it);
 * qcow2-compact-bitmaps (compact moving the tables, data clusters and
 * directory of an enabled and a disabled bitmap: their bits never change);
 * qcow2-compact-snapshot (compact of an image with an internal snapshot:
 * the snapshot reads as taken in every crash image);
 * qcow2-compact-snapshot-tables (the same, the snapshot's own L2 table and
 * clusters, its L1 table and the snapshot table moved down into a hole);
 * qcow2-amend-downgrade-snapshot (compat=0.10 of a diff with a snapshot and
 * zero clusters over its data and the parent's: the snapshot as taken);
 * qcow2-writes-bitmaps (an image with an enabled and a disabled persistent
 * bitmap: the disabled one never changes, the enabled one is in use or
 * records every changed unit) in its own test, crash-qcow2-bitmaps;
 * qcow2-writes-runs* and qed-writes-runs-top (writes over many empty
 * clusters, one transaction per run: every cut inside a run's data, its
 * refcounts, its L2 entries; and the writes a run-less backend would make
 * are refused by max_writes).
 * QCOW v1 (qcow-writes-base, an empty base whose first write makes the L2
 * table; qcow-writes-top, a diff whose partial clusters are filled from the
 * backing file; 64 KiB clusters, a few dozen writes): neither the library nor
 * qemu-img has a check for it, so the structural oracle is the tests' own
 * parse (qcow1_check: every table and data pointer inside the file, aligned,
 * no cluster referenced twice).
 * The structural check also uses the tests' own VDI parser (no map entry out
 * of range or duplicated), and standalone bases go through
 * `qemu-img check -f vdi` when /usr/bin/qemu-img exists (exit 0 or 3; 2 only
 * in the count-ahead state).
 *
 * VDISK_CRASH_FORMAT=vpc runs the scenarios VHD has the operations for
 * (writes-base, writes-top, compact-base, compact-top, resize-base,
 * resize-top (a grow that moves the BAT), convert-existing, copy-source) on
 * VHD images
 * (exact sizes: force_size=on) with the same verification, vdisk_check
 * included, except the VDI parser and `qemu-img check` (no vpc support).
 *
 * Usage: test-crash [SCENARIO [CRASH_SEEDS]]   (SCENARIO: a name or "all")
 */
#include <fcntl.h>
#include <sys/wait.h>
#include <time.h>

#include "tests.h"
#include "vdi-layout.h"

#if defined(__SANITIZE_ADDRESS__)
#define CRASH_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CRASH_ASAN 1
#endif
#endif

#define DISK_SIZE (8 * MiB)
#define MAX_SIZE (16 * MiB)
#define MAX_SECTORS (MAX_SIZE / 512)
#define BLOCK (1 * MiB)
#define QEMU_IMG "/usr/bin/qemu-img"

static unsigned n_crash_seeds = 5;
static const char *crash_fmt = "vdi";
static bool asan_subset;
static bool fmt_vdi = true;
static bool only_qcow2;   /* VDISK_CRASH_FORMAT=qcow2 */
static const char *const vhd_exact[] = { "force_size", "on", NULL };
static const char *const vmdk_gt_on_demand[] = { "gt_on_demand", "on", NULL };
/* qcow2: 64 KiB clusters; 512-byte clusters with 64-bit refcounts (a
 * refcount block covers 32 KiB of the file: the writes make new blocks) */
static const char *const qcow2_64k[] = { "cluster_size", "65536", NULL };
static const char *const qcow2_512_rb64[] = { "cluster_size", "512", "refcount_bits", "64", NULL };
/* 4 KiB clusters with 64-bit refcounts: a refcount block covers 2 MiB of the
 * file, an L2 table 2 MiB of the disk */
static const char *const qcow2_4k_rb64[] = { "cluster_size", "4096", "refcount_bits", "64", NULL };
static const char *const qcow2_extl2[] = { "cluster_size", "65536", "extended_l2", "on", NULL };
static const char *const vmdk_zeroed_grain[] = { "zeroed_grain", "on", NULL };

/* The format of the scenario running: scenario.fmt, else crash_fmt. */
static const char *g_fmt = "vdi";
/* Create options of the scenario running (scenario.opts), NULL = none. */
static const char *const *g_opts;

static const vdisk_create_opts *base_opts(void) {
        /* the scenarios' 1 MiB blocks (VHD's default is 2 MiB) */
        static vdisk_create_opts o = { .size = sizeof o, .block_size = BLOCK, .options = vhd_exact };
        static vdisk_create_opts so = { .size = sizeof so };

        static vdisk_create_opts qo = { .size = sizeof qo, .block_size = 64 * KiB };

        if (g_opts) {
                so.options = g_opts;
                return &so;
        }
        if (strcmp(g_fmt, "qcow") == 0)
                return &qo;   /* QCOW v1: 64 KiB clusters (few writes per cut) */
        return fmt_vdi ? NULL : &o;
}
static int have_qemu;
static char tmpdir[256];

static struct {
        uint64_t cases, images, count_ahead, leaky, qemu_runs, transient, absorbed, retried,
                flush_fault_done, copied_lag;
        uint64_t bitmaps_consistent, bitmaps_in_use;   /* qcow2-writes-bitmaps: images seen each way */
} stats;

/* ---------------------------------------------------------------- allowed contents */

typedef struct vset {
        uint64_t *v;
        uint32_t n, cap;
} vset;

typedef struct allowed {
        vset *s;                 /* MAX_SECTORS sets of sector hashes */
        uint64_t sizes[4];
        unsigned n_sizes;
} allowed;

static uint64_t zero_hash;

static void vset_add(vset *s, uint64_t h) {
        for (uint32_t i = 0; i < s->n; i++)
                if (s->v[i] == h)
                        return;
        if (s->n == s->cap) {
                s->cap = s->cap ? s->cap * 2 : 4;
                s->v = realloc(s->v, s->cap * sizeof *s->v);
                ASSERT(s->v);
        }
        s->v[s->n++] = h;
}

static int vset_has(const vset *s, uint64_t h) {
        for (uint32_t i = 0; i < s->n; i++)
                if (s->v[i] == h)
                        return 1;
        return 0;
}

static void allowed_init(allowed *a) {
        a->s = calloc(MAX_SECTORS, sizeof *a->s);
        ASSERT(a->s);
}

static void allowed_free(allowed *a) {
        for (uint64_t i = 0; i < MAX_SECTORS; i++)
                free(a->s[i].v);
        free(a->s);
}

/* Exactly `content` (sectors past `size` read zeros). */
static void allowed_reset(allowed *a, const uint8_t *content, uint64_t size) {
        for (uint64_t i = 0; i < MAX_SECTORS; i++) {
                a->s[i].n = 0;
                vset_add(&a->s[i], i * 512 < size ? hash64(content + i * 512, 512) : zero_hash);
        }
        a->sizes[0] = size;
        a->n_sizes = 1;
}

static void allowed_add(allowed *a, const uint8_t *data, uint64_t off, uint64_t len) {
        ASSERT(off % 512 == 0 && len % 512 == 0 && off + len <= MAX_SIZE);
        for (uint64_t i = 0; i < len; i += 512)
                vset_add(&a->s[(off + i) / 512], hash64(data + i, 512));
}

static void allowed_add_size(allowed *a, uint64_t size) {
        for (unsigned i = 0; i < a->n_sizes; i++)
                if (a->sizes[i] == size)
                        return;
        ASSERT(a->n_sizes < ELEMENTSOF(a->sizes));
        a->sizes[a->n_sizes++] = size;
}

static void verify_allowed(vdisk_disk *d, const allowed *a, const char *what) {
        uint64_t size = vdisk_disk_size(d);
        uint8_t *buf = malloc(1 * MiB);
        int size_ok = 0;

        ASSERT(buf);
        for (unsigned i = 0; i < a->n_sizes; i++)
                size_ok |= a->sizes[i] == size;
        if (!size_ok)
                FAIL("%s: disk size %" PRIu64 " is neither the old nor the new size", what, size);
        for (uint64_t off = 0; off < size; off += 1 * MiB) {
                size_t n = (size_t) MIN(1 * MiB, size - off);

                ASSERT_OK(vdisk_disk_read(d, buf, n, off));
                for (size_t i = 0; i < n; i += 512) {
                        uint64_t sec = (off + i) / 512;
                        if (!vset_has(&a->s[sec], hash64(buf + i, 512)))
                                FAIL("%s: sector %" PRIu64 " (offset 0x%" PRIx64 ", block %" PRIu64
                                     ") holds neither its durable content nor a later version "
                                     "(%u allowed; it %s zeros)",
                                     what, sec, off + i, (off + i) / BLOCK, a->s[sec].n,
                                     buf_is_zero(buf + i, 512) ? "reads" : "does not read");
                }
        }
        free(buf);
}

/* ---------------------------------------------------------------- the workload context */

typedef struct wl {
        vdisk_disk *d;
        uint8_t *model;      /* what the guest should see now (MAX_SIZE bytes): every
                              * call that succeeded */
        uint64_t size;
        allowed *a;
        vdisk_io *extra;     /* rebase: the new parent; convert: the source */
        /* the write, zeroing or discard that failed (its data: what it would
         * have left) */
        uint64_t fail_off, fail_len;
        uint8_t *fail_data;
} wl;

static int wl_record(wl *w, int r, const void *buf, uint64_t len, uint64_t off) {
        if (r >= 0) {
                memcpy(w->model + off, buf, len);
                return r;
        }
        free(w->fail_data);
        w->fail_data = malloc(len);
        ASSERT(w->fail_data);
        memcpy(w->fail_data, buf, len);
        w->fail_off = off;
        w->fail_len = len;
        return r;
}

static int wl_write(wl *w, const void *buf, uint64_t len, uint64_t off) {
        allowed_add(w->a, buf, off, len);
        return wl_record(w, vdisk_disk_write(w->d, buf, len, off), buf, len, off);
}

static int wl_write_random(wl *w, rng *r, uint64_t len, uint64_t off) {
        uint8_t *buf = malloc(len);
        int ret;

        ASSERT(buf);
        rng_fill(r, buf, len);
        ret = wl_write(w, buf, len, off);
        free(buf);
        return ret;
}

static int wl_write_zeros(wl *w, uint64_t len, uint64_t off) {
        uint8_t *buf = calloc(1, len);
        int ret;

        ASSERT(buf);
        ret = wl_write(w, buf, len, off);
        free(buf);
        return ret;
}

static int wl_discard(wl *w, uint64_t off, uint64_t len) {
        uint8_t *zeros = calloc(1, len);
        int r;

        ASSERT(zeros);
        allowed_add(w->a, zeros, off, len);
        r = wl_record(w, vdisk_disk_discard(w->d, off, len), zeros, len, off);
        free(zeros);
        return r;
}

/* A successful flush makes the model durable: nothing older may show up. */
static int wl_flush(wl *w) {
        int r = vdisk_disk_flush(w->d);

        if (r == 0)
                allowed_reset(w->a, w->model, w->size);
        return r;
}

#define TRY(expr)                       \
        do {                            \
                int _t_ = (expr);       \
                if (_t_ < 0)            \
                        return _t_;     \
        } while (0)

/* ---------------------------------------------------------------- scenarios */

enum { V_CONTENT, V_MERGE_FWD, V_MERGE_FWD3, V_MERGE_BWD, V_REBASE };

typedef struct scenario scenario;
struct scenario {
        const char *name;
        const char *fmt;                /* "vdi" when NULL */
        const char *const *opts;        /* create options of the base, NULL = none */
        unsigned max_crash_seeds;       /* fewer crash images per cut (0: n_crash_seeds) */
        unsigned n;                     /* images, base first */
        unsigned faulted;               /* the image whose io is faulted */
        int verify;                     /* V_* */
        int qemu;                       /* the faulted image is a standalone base */
        unsigned qemu_every;            /* qemu-img check the first crash image of every Nth
                                         * cut only (0: the first two of every cut) */
        void (*build)(scenario *sc);    /* makes tmpl[] */
        int (*op)(scenario *sc, wl *w);
        void (*after_success)(scenario *sc, wl *w);
        vdisk_io *tmpl[3];
        uint8_t uuid[3][16];
        uint8_t *content;               /* the chain's content before (DISK_SIZE) */
        uint8_t *target_old, *target_new; /* merges: the target's own view before / after */
        uint64_t file_size_before;
        int per_sector;                 /* a plain write workload (see run_transient) */
        vdisk_io *extra;                /* rebase: the new parent; convert: the source */
        uint8_t extra_uuid[16];
        uint8_t *intended;              /* the chain's content after the operation */
        uint64_t intended_size;
        int copied_lag;                 /* qcow2: the OFLAG_COPIED lag of snapshot -c/-d is allowed */
        uint8_t *snap_content;          /* qcow2: snapshot "old" reads this whenever it is there */
        /* the operation without a fault makes at most this many writes
         * (0: no bound; the qcow2/QED runs: one data write per run) */
        uint64_t max_writes;
        /* more checks of the faulted image after a fault (crash images too); NULL = none */
        void (*verify_image)(scenario *sc, vdisk_io *io, const char *what);
};

static vdisk_io *new_io(scenario *sc, unsigned i) {
        char name[96];

        snprintf(name, sizeof name, "crash-%s-%u.%s", sc->name, i, g_fmt);
        return mem_io(name, NULL, 0);
}

static vdisk_disk *open_ios(vdisk_io **ios, unsigned n, uint32_t flags, const char *what) {
        vdisk_disk *d = disk_new();

        for (unsigned i = 0; i < n; i++) {
                int r = vdisk_disk_open(d, ios[i], g_fmt, flags);
                if (r < 0)
                        FAIL("%s: image %u (%s) does not open: %d (%s)", what, i, vdisk_io_name(ios[i]), r,
                             strerror(-r));
        }
        return d;
}

static uint8_t *read_view(vdisk_io **ios, unsigned n) {
        vdisk_disk *d = open_ios(ios, n, VDISK_OPEN_READONLY, "reading a template");
        uint64_t size;
        uint8_t *all = disk_read_all(d, &size);

        ASSERT_EQ_U64(size, DISK_SIZE);
        vdisk_disk_unref(d);
        return all;
}

/* Creates the template chain with `fill(level)` writing into each level. */
static vdisk_disk *build_chain(scenario *sc) {
        vdisk_disk *d = disk_new();

        for (unsigned i = 0; i < sc->n; i++) {
                sc->tmpl[i] = new_io(sc, i);
                if (i == 0)
                        ASSERT_OK(vdisk_disk_create_base(d, sc->tmpl[0], g_fmt, DISK_SIZE, base_opts()));
                else
                        ASSERT_OK(vdisk_disk_create_diff(d, sc->tmpl[i], g_fmt, NULL));
                /* formats without UUIDs (qcow2 links by name; QED: single-image
                 * scenarios only) */
                if (strcmp(g_fmt, "qcow2") == 0 ||
                    (vdisk_image_get_uuid(vdisk_disk_image(d, i), sc->uuid[i]) == -EOPNOTSUPP && sc->n == 1))
                        memset(sc->uuid[i], 0, 16);
                else
                        ASSERT_OK(vdisk_image_get_uuid(vdisk_disk_image(d, i), sc->uuid[i]));
        }
        return d;
}

static void fill_block(vdisk_disk *d, rng *r, uint64_t block, uint64_t off_in_block, uint64_t len) {
        uint8_t *buf = malloc(len);

        ASSERT(buf);
        rng_fill(r, buf, len);
        ASSERT_OK(vdisk_disk_write(d, buf, len, block * BLOCK + off_in_block));
        free(buf);
}

static void zero_block(vdisk_disk *d, uint64_t block) {
        uint8_t *buf = calloc(1, BLOCK);

        ASSERT(buf);
        ASSERT_OK(vdisk_disk_write(d, buf, BLOCK, block * BLOCK));
        free(buf);
}

/* (a) writes */

static void build_writes_base(scenario *sc) {
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 1);
        sc->n = 1;
        d = build_chain(sc);
        fill_block(d, &r, 0, 0, BLOCK);
        fill_block(d, &r, 2, 0, BLOCK);
        fill_block(d, &r, 5, 0, BLOCK);
        vdisk_disk_unref(d);
}

static void build_writes_top(scenario *sc) {
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 2);
        sc->n = 2;
        d = disk_new();
        sc->tmpl[0] = new_io(sc, 0);
        ASSERT_OK(vdisk_disk_create_base(d, sc->tmpl[0], g_fmt, DISK_SIZE, base_opts()));
        for (uint64_t b = 0; b < 8; b++)
                if (b != 3)
                        fill_block(d, &r, b, 0, BLOCK);
        sc->tmpl[1] = new_io(sc, 1);
        if (strcmp(g_fmt, "qed") == 0 || strcmp(g_fmt, "qcow") == 0 || strcmp(g_fmt, "qcow2") == 0) {
                /* linked by name alone (QCOW: 64 KiB clusters in the diff too) */
                vdisk_create_opts o = { .size = sizeof o, .parent_name = vdisk_io_name(sc->tmpl[0]),
                                        .parent_format = g_fmt,
                                        .block_size = strcmp(g_fmt, "qcow") == 0 ? 64 * KiB : 0 };
                ASSERT_OK(vdisk_disk_create_diff(d, sc->tmpl[1], g_fmt, &o));
        } else
                ASSERT_OK(vdisk_disk_create_diff(d, sc->tmpl[1], g_fmt, NULL));
        fill_block(d, &r, 1, 64 * KiB, 64 * KiB);
        fill_block(d, &r, 2, 0, 64 * KiB);
        vdisk_disk_unref(d);
}

/* An empty base whose grain tables come on demand: the writes allocate them. */
static void build_empty_base(scenario *sc) {
        vdisk_disk *d;

        sc->n = 1;
        d = build_chain(sc);
        vdisk_disk_unref(d);
}

static int op_writes(scenario *sc, wl *w) {
        rng r;

        rng_seed(&r, 42);
        TRY(wl_write_random(w, &r, 64 * KiB, 3 * BLOCK + 128 * KiB));    /* allocating, partial */
        TRY(wl_write_random(w, &r, 4 * KiB, 2 * BLOCK + 4 * KiB));       /* in place */
        TRY(wl_flush(w));
        TRY(wl_write_random(w, &r, 1 * MiB, 4 * BLOCK + 512 * KiB));     /* straddles blocks 4 and 5 */
        TRY(wl_write_zeros(w, 8 * KiB, 0));                              /* zeros, in place */
        TRY(wl_write_random(w, &r, BLOCK, 6 * BLOCK));                   /* a whole new block */
        TRY(wl_flush(w));
        TRY(wl_discard(w, 2 * BLOCK, BLOCK));                            /* a whole block */
        TRY(wl_discard(w, 64 * KiB, 128 * KiB));                         /* part of a block */
        TRY(wl_write_random(w, &r, 512, 8 * BLOCK - 512));               /* the last sector */
        TRY(wl_write_random(w, &r, 2 * MiB, 1 * BLOCK));                 /* blocks 1 and 2 again */
        TRY(wl_flush(w));
        TRY(wl_write_random(w, &r, 4 * KiB, 3 * BLOCK));
        TRY(wl_write_zeros(w, BLOCK, 7 * BLOCK));                        /* a whole block of zeros */
        TRY(wl_write_random(w, &r, 512, 3 * BLOCK + 1 * MiB - 512));
        TRY(wl_flush(w));
        return 0;
}

/* QCOW2 with persistent bitmaps: "on" (enabled, 64 KiB) and "off"
 * (disabled, 4 KiB) over the writes-base template. */
static void build_writes_bitmaps(scenario *sc) {
        vdisk_bitmap_change on = { .size = sizeof on, .op = VDISK_BITMAP_OP_ADD, .name = "on",
                                   .granularity = 65536, .flags = VDISK_BITMAP_AUTO };
        vdisk_bitmap_change off = { .size = sizeof off, .op = VDISK_BITMAP_OP_ADD, .name = "off",
                                    .granularity = 4096 };
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 1);
        sc->n = 1;
        d = build_chain(sc);
        fill_block(d, &r, 0, 0, BLOCK);
        fill_block(d, &r, 5, 0, BLOCK);
        ASSERT_OK(vdisk_image_change_bitmap(vdisk_disk_image(d, 0), &on));
        ASSERT_OK(vdisk_image_change_bitmap(vdisk_disk_image(d, 0), &off));
        vdisk_disk_unref(d);
}

/* Fewer writes than op_writes (the bitmaps add a write-back per flush):
 * allocating, in place, zeros, a discard, the last sector; three flushes. */
static int op_writes_bitmaps(scenario *sc, wl *w) {
        rng r;

        rng_seed(&r, 43);
        TRY(wl_write_random(w, &r, 64 * KiB, 3 * BLOCK + 128 * KiB));    /* allocating */
        TRY(wl_write_random(w, &r, 4 * KiB, 4 * KiB));                   /* in place */
        TRY(wl_flush(w));
        TRY(wl_write_zeros(w, 8 * KiB, 5 * BLOCK));                      /* zeros, in place */
        TRY(wl_discard(w, 5 * BLOCK + 512 * KiB, 128 * KiB));
        TRY(wl_flush(w));
        TRY(wl_write_random(w, &r, 512, 8 * BLOCK - 512));               /* the last sector */
        TRY(wl_flush(w));
        return 0;
}

/* After any fault: the disabled bitmap is untouched (consistent, empty);
 * the enabled one is either marked in use (inconsistent, as qemu leaves it
 * after a crash) or consistent, and then every 64 KiB unit whose content
 * differs from the template's has its bit set. */
static void verify_bitmaps(scenario *sc, vdisk_io *io, const char *what) {
        vdisk_disk *d = open_ios(&io, 1, VDISK_OPEN_READONLY, what);
        vdisk_image *img = vdisk_disk_image(d, 0);
        vdisk_bitmap *v = NULL;
        uint8_t *bits = NULL, *now;
        size_t n = 0, len = 0;
        uint64_t size, g = 0;

        ASSERT_OK(vdisk_image_list_bitmaps(img, &v, &n));
        if (n != 2 || strcmp(v[0].name, "on") != 0 || strcmp(v[1].name, "off") != 0 || v[1].flags != 0 ||
            !(v[0].flags & VDISK_BITMAP_AUTO))
                FAIL("%s: the bitmaps are not \"on\" (auto) and \"off\" (disabled, consistent)", what);
        ASSERT_OK(vdisk_image_read_bitmap(img, "off", &bits, &len, &g));
        ASSERT(g == 4096 && len == DISK_SIZE / 4096 / 8 && buf_is_zero(bits, len));
        free(bits);
        if (!(v[0].flags & VDISK_BITMAP_IN_USE)) {
                stats.bitmaps_consistent++;
                ASSERT_OK(vdisk_image_read_bitmap(img, "on", &bits, &len, &g));
                ASSERT(g == 65536 && len == DISK_SIZE / 65536 / 8);
                now = disk_read_all(d, &size);
                for (uint64_t u = 0; u < DISK_SIZE / 65536; u++)
                        if (memcmp(now + u * 65536, sc->content + u * 65536, 65536) != 0 &&
                            !(bits[u / 8] >> (u % 8) & 1))
                                FAIL("%s: bitmap \"on\" is consistent but misses the change at %" PRIu64, what,
                                     u * 65536);
                free(now);
                free(bits);
        } else
                stats.bitmaps_in_use++;
        vdisk_bitmaps_free(v, n);
        vdisk_disk_unref(d);
}

/* QCOW2 (512-byte clusters) with persistent bitmaps, grown 8 -> 16 MiB:
 * "on" (enabled, 512 B: its table grows from 4 to 8 entries) and "off"
 * (disabled, 4 KiB), both holding 0..64K and 7M..7M+64K. */
static void build_resize_bitmaps(scenario *sc) {
        vdisk_bitmap_change on = { .size = sizeof on, .op = VDISK_BITMAP_OP_ADD, .name = "on",
                                   .granularity = 512, .flags = VDISK_BITMAP_AUTO };
        vdisk_bitmap_change off = { .size = sizeof off, .op = VDISK_BITMAP_OP_ADD, .name = "off",
                                    .granularity = 4096 };
        vdisk_bitmap_change merge = { .size = sizeof merge, .op = VDISK_BITMAP_OP_MERGE, .name = "off",
                                      .source = "on" };
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 12);
        sc->n = 1;
        d = build_chain(sc);
        ASSERT_OK(vdisk_image_change_bitmap(vdisk_disk_image(d, 0), &on));
        fill_block(d, &r, 0, 0, 64 * KiB);
        fill_block(d, &r, 7, 0, 64 * KiB);
        ASSERT_OK(vdisk_disk_flush(d));
        ASSERT_OK(vdisk_image_change_bitmap(vdisk_disk_image(d, 0), &off));
        ASSERT_OK(vdisk_image_change_bitmap(vdisk_disk_image(d, 0), &merge));
        vdisk_disk_unref(d);
}

/* The grow, then one sector written in the new range (the grown bitmap
 * records it). */
static int op_resize_bitmaps(scenario *sc, wl *w) {
        rng rg;
        int r;

        rng_seed(&rg, 44);
        allowed_add_size(w->a, MAX_SIZE);
        r = vdisk_resize(w->d, MAX_SIZE, NULL);
        /* a failed flush after the header switch: the new size stays */
        w->size = vdisk_disk_size(w->d);
        if (r < 0)
                return r;
        TRY(wl_write_random(w, &rg, 512, 12 * MiB));
        return wl_flush(w);
}

/* Bit i of `bits` (granularity g) is set exactly where [i*g, (i+1)*g) meets
 * 0..64K, 7M..7M+64K (or `extra`, when extra_len). */
static int bits_are_template(const uint8_t *bits, size_t len, uint64_t g, uint64_t extra, uint64_t extra_len) {
        for (uint64_t i = 0; i < len * 8; i++) {
                uint64_t a = i * g, b = a + g;
                int want = a < 64 * KiB || (a < 7 * MiB + 64 * KiB && b > 7 * MiB) ||
                           (extra_len && a < extra + extra_len && b > extra);

                if (want != (bits[i / 8] >> (i % 8) & 1))
                        return 0;
        }
        return 1;
}

/* After any fault: both bitmaps listed, each either in use (the resize's
 * window, as a crashed qemu leaves them) or consistent with the size the
 * header says: "off" exactly the template's bits, "on" those and, once the
 * write in the new range is there, its sector too. */
static void verify_resize_bitmaps(scenario *sc, vdisk_io *io, const char *what) {
        vdisk_disk *d = open_ios(&io, 1, VDISK_OPEN_READONLY, what);
        vdisk_image *img = vdisk_disk_image(d, 0);
        uint64_t size = vdisk_disk_size(d), g = 0;
        vdisk_bitmap *v = NULL;
        uint8_t *bits = NULL, *now;
        size_t n = 0, len = 0;

        ASSERT(size == DISK_SIZE || size == MAX_SIZE);
        ASSERT_OK(vdisk_image_list_bitmaps(img, &v, &n));
        if (n != 2 || strcmp(v[0].name, "on") != 0 || strcmp(v[1].name, "off") != 0 ||
            !(v[0].flags & VDISK_BITMAP_AUTO) || (v[1].flags & VDISK_BITMAP_AUTO))
                FAIL("%s: the bitmaps are not \"on\" (auto) and \"off\" (disabled)", what);
        if (!(v[1].flags & VDISK_BITMAP_IN_USE)) {
                ASSERT_OK(vdisk_image_read_bitmap(img, "off", &bits, &len, &g));
                if (g != 4096 || len != size / 4096 / 8 || !bits_are_template(bits, len, g, 0, 0))
                        FAIL("%s: bitmap \"off\" is consistent but not the template's for %" PRIu64 " bytes",
                             what, size);
                free(bits);
                stats.bitmaps_consistent++;
        } else
                stats.bitmaps_in_use++;
        if (!(v[0].flags & VDISK_BITMAP_IN_USE)) {
                int written;

                ASSERT_OK(vdisk_image_read_bitmap(img, "on", &bits, &len, &g));
                now = disk_read_all(d, &size);
                written = size == MAX_SIZE && !buf_is_zero(now + 12 * MiB, 512);
                if (g != 512 || len != size / 512 / 8 ||
                    !(bits_are_template(bits, len, g, 12 * MiB, 512) ||
                      (!written && bits_are_template(bits, len, g, 0, 0))))
                        FAIL("%s: bitmap \"on\" is consistent but not the template's (and the write) for %" PRIu64
                             " bytes", what, size);
                free(now);
                free(bits);
        }
        vdisk_bitmaps_free(v, n);
        vdisk_disk_unref(d);
}

/* A few small writes (qcow2 with 512-byte clusters: each cluster is a write;
 * new L2 tables and refcount blocks on the way). */
static int op_writes_small(scenario *sc, wl *w) {
        rng r;

        rng_seed(&r, 43);
        TRY(wl_write_random(w, &r, 40 * KiB, 0));
        TRY(wl_flush(w));
        TRY(wl_write_random(w, &r, 8 * KiB, 5 * BLOCK + 4 * KiB));
        TRY(wl_write_zeros(w, 4 * KiB, 8 * KiB));
        TRY(wl_flush(w));
        return 0;
}

/* Writes over many clusters that hold nothing, made one transaction per
 * run of clusters (qcow2, QED): partial first and last clusters (filled from
 * below), runs ended by an L2 table's end (512-byte clusters: every 32 KiB)
 * or by an allocated cluster, written in place first; after a discard and a
 * flush, a run in the freed clusters (qcow2 reuses them); the image's last
 * sector. Each cut falls inside a run's data, its refcounts or its L2
 * entries; every sector reads old or new data, checks find leaks at most. */
static int op_writes_runs(scenario *sc, wl *w) {
        rng r;

        rng_seed(&r, 45);
        TRY(wl_write_random(w, &r, 200 * KiB, 1 * MiB + 40 * KiB));
        TRY(wl_write_random(w, &r, 128 * KiB, 1 * MiB + 200 * KiB));      /* in place, then a run */
        TRY(wl_flush(w));
        TRY(wl_discard(w, 1 * MiB + 64 * KiB, 128 * KiB));
        TRY(wl_flush(w));
        TRY(wl_write_random(w, &r, 192 * KiB, 3 * MiB + 512));
        TRY(wl_write_random(w, &r, 512, DISK_SIZE - 512));
        TRY(wl_flush(w));
        return 0;
}

/* QCOW v1 (64 KiB clusters): the first write of an empty base allocates the
 * L2 table; partial clusters (filled from the backing file in a diff), in
 * place, a write over three clusters, a cluster of zeros, a discard, the
 * last sector; a few dozen writes. */
static int op_qcow_writes(scenario *sc, wl *w) {
        rng r;

        rng_seed(&r, 44);
        TRY(wl_write_random(w, &r, 8 * KiB, 4 * KiB));
        TRY(wl_write_random(w, &r, 4 * KiB, 64 * KiB + 4 * KiB));
        TRY(wl_flush(w));
        TRY(wl_write_random(w, &r, 4 * KiB, 8 * KiB));                   /* in place */
        TRY(wl_write_random(w, &r, 128 * KiB, 1 * BLOCK + 32 * KiB));    /* three clusters */
        TRY(wl_write_zeros(w, 64 * KiB, 3 * 64 * KiB));
        TRY(wl_flush(w));
        TRY(wl_discard(w, 64 * KiB, 64 * KiB));
        TRY(wl_write_random(w, &r, 512, DISK_SIZE - 512));
        TRY(wl_flush(w));
        return 0;
}

/* (a') qcow2 with an internal snapshot: the writes copy shared clusters
 * (and shared L2 tables) on write; snapshot create and delete. */

/* The writes-base image with snapshot "old" of it, open. */
static vdisk_disk *build_snapshot_start(scenario *sc) {
        vdisk_disk *d;

        build_writes_base(sc);
        sc->snap_content = read_view(sc->tmpl, 1);
        d = open_ios(sc->tmpl, 1, 0, "building the snapshot");
        ASSERT_OK(vdisk_disk_snapshot_create(d, "old"));
        return d;
}

static void build_snapshot_base(scenario *sc) {
        vdisk_disk *d = build_snapshot_start(sc);
        rng r;

        /* some clusters the active tree holds alone, most shared */
        rng_seed(&r, 3);
        fill_block(d, &r, 5, 256 * KiB, 128 * KiB);
        fill_block(d, &r, 7, 0, 64 * KiB);
        vdisk_disk_unref(d);
}

/* Compact with an internal snapshot: after "old", the active tree's own
 * clusters (its copied L2 table, a 512 KiB run in the middle of the file
 * then discarded, 128 KiB and 64 KiB after it) and shared ones. Compact may
 * move only what the active tree holds alone; "old" reads as taken. */
static void build_qcow2_compact_snapshot(scenario *sc) {
        vdisk_disk *d = build_snapshot_start(sc);
        rng r;

        rng_seed(&r, 4);
        fill_block(d, &r, 3, 0, 512 * KiB);
        fill_block(d, &r, 5, 256 * KiB, 128 * KiB);
        fill_block(d, &r, 7, 0, 64 * KiB);
        ASSERT_OK(vdisk_disk_discard(d, 3 * BLOCK, 512 * KiB));
        vdisk_disk_unref(d);
}

/* Compact moving a snapshot's own tables and data: "tmp" of the
 * writes-base image, block 0 written again (the active L2 table and those
 * clusters copied: "tmp" holds the old ones alone), 128 KiB of block 3,
 * "old", the same 128 KiB written again (the L2 table and those two
 * clusters copied: "old" holds the previous ones alone), then "tmp"
 * deleted: its clusters and tables leave a hole below "old"'s L2 table, its
 * two clusters, its L1 table and the snapshot table, which the compact
 * moves down (each switch one 8-byte write: the L2 or L1 entry, the
 * snapshot entry, the header). "old" reads as taken. */
static void build_qcow2_compact_snapshot_tables(scenario *sc) {
        vdisk_disk *d;
        rng r;

        build_writes_base(sc);
        rng_seed(&r, 5);
        d = open_ios(sc->tmpl, 1, 0, "building the snapshots");
        ASSERT_OK(vdisk_disk_snapshot_create(d, "tmp"));
        fill_block(d, &r, 0, 0, BLOCK);
        fill_block(d, &r, 3, 0, 128 * KiB);
        vdisk_disk_unref(d);
        sc->snap_content = read_view(sc->tmpl, 1);
        d = open_ios(sc->tmpl, 1, 0, "building the snapshots");
        ASSERT_OK(vdisk_disk_snapshot_create(d, "old"));
        fill_block(d, &r, 3, 0, 128 * KiB);
        ASSERT_OK(vdisk_disk_snapshot_delete(d, "tmp"));
        vdisk_disk_unref(d);
}

/* Create a snapshot, delete the old one (when a failed run left it). */
static int op_snapshot(scenario *sc, wl *w) {
        vdisk_snapshot *v = NULL;
        size_t n = 0;
        bool old = false;

        TRY(vdisk_disk_snapshot_create(w->d, "new"));
        TRY(vdisk_image_list_snapshots(vdisk_disk_image(w->d, 0), &v, &n));
        for (size_t i = 0; i < n; i++)
                old = old || strcmp(v[i].name, "old") == 0;
        vdisk_snapshots_free(v, n);
        if (old)
                TRY(vdisk_disk_snapshot_delete(w->d, "old"));
        return 0;
}

/* Snapshot "old", where it is still there, reads as it was taken. */
static void verify_snapshot(scenario *sc, vdisk_io *io, const char *what) {
        vdisk_disk *d;
        uint8_t *got;
        uint64_t size;
        int r;

        if (!sc->snap_content)
                return;
        d = disk_new();
        ASSERT_OK(vdisk_disk_set_snapshot(d, "snapshot.name=old"));
        r = vdisk_disk_open(d, io, g_fmt, VDISK_OPEN_READONLY);
        if (r == -ENOENT) {
                vdisk_disk_unref(d);
                return;
        }
        if (r < 0)
                FAIL("%s: snapshot 'old' does not open: %d (%s)", what, r, strerror(-r));
        got = disk_read_all(d, &size);
        ASSERT_EQ_U64(size, DISK_SIZE);
        if (memcmp(got, sc->snap_content, DISK_SIZE) != 0) {
                uint64_t off = 0;

                while (memcmp(got + off, sc->snap_content + off, 512) == 0)
                        off += 512;
                FAIL("%s: snapshot 'old' no longer reads as it was taken (from offset %" PRIu64 " on, it %s "
                     "zeros)", what, off, buf_is_zero(got + off, 512) ? "reads" : "does not read");
        }
        free(got);
        vdisk_disk_unref(d);
}

/* (b) merges */

static void fill_merge_diff(vdisk_disk *d, rng *r) {
        fill_block(d, r, 2, 128 * KiB, 128 * KiB);
        fill_block(d, r, 3, 0, BLOCK);
        fill_block(d, r, 4, 0, BLOCK);
        zero_block(d, 6);
        ASSERT_OK(vdisk_disk_discard(d, 1 * BLOCK, BLOCK));   /* ZERO over the base's data */
        fill_block(d, r, 7, 4096, 8192);
}

static void build_merge(scenario *sc) {
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 3);
        d = build_chain(sc);
        vdisk_disk_unref(d);
        /* fill level by level: reopen with only the levels below */
        for (unsigned level = 0; level < sc->n; level++) {
                d = open_ios(sc->tmpl, level + 1, 0, "building");
                if (level == 0)
                        for (uint64_t b = 0; b < 4; b++)
                                fill_block(d, &r, b, 0, BLOCK);
                else if (level == 1)
                        fill_merge_diff(d, &r);
                else {
                        fill_block(d, &r, 0, 0, 64 * KiB);
                        fill_block(d, &r, 3, 512 * KiB, 64 * KiB);
                }
                vdisk_disk_unref(d);
        }
}

static int op_merge_fwd(scenario *sc, wl *w) {
        return vdisk_merge(w->d, 1, 0, NULL, NULL);
}

static int op_merge_bwd(scenario *sc, wl *w) {
        return vdisk_merge(w->d, 0, 1, NULL, NULL);
}

static void after_merge(scenario *sc, wl *w) {
        ASSERT_EQ_U64(vdisk_disk_count(w->d), sc->n - 1);
}

/* (c) compact */

static void build_compact_base(scenario *sc) {
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 4);
        sc->n = 1;
        d = build_chain(sc);
        for (uint64_t b = 0; b < 8; b++)
                fill_block(d, &r, b, 0, BLOCK);
        zero_block(d, 1);
        zero_block(d, 4);
        ASSERT_OK(vdisk_disk_discard(d, 6 * BLOCK, BLOCK));
        vdisk_disk_unref(d);
}

static void build_compact_top(scenario *sc) {
        rng r;
        vdisk_disk *d;
        uint8_t *buf = malloc(BLOCK);

        ASSERT(buf);
        rng_seed(&r, 5);
        sc->n = 2;
        d = disk_new();
        sc->tmpl[0] = new_io(sc, 0);
        ASSERT_OK(vdisk_disk_create_base(d, sc->tmpl[0], g_fmt, DISK_SIZE, base_opts()));
        for (uint64_t b = 0; b < 8; b++)
                fill_block(d, &r, b, 0, BLOCK);
        sc->tmpl[1] = new_io(sc, 1);
        ASSERT_OK(vdisk_disk_create_diff(d, sc->tmpl[1], g_fmt, NULL));
        /* block 0: equal to the parent's; 2 and 3: zeros over data; 5, 7: data */
        ASSERT_OK(vdisk_disk_read(d, buf, BLOCK, 0));
        ASSERT_OK(vdisk_disk_write(d, buf, BLOCK, 0));
        zero_block(d, 2);
        fill_block(d, &r, 5, 0, BLOCK);
        zero_block(d, 3);
        fill_block(d, &r, 7, 0, BLOCK);
        vdisk_disk_unref(d);
        free(buf);
}

/* The VMDK compact scenarios in 64 KiB grains (few moves, few writes): a
 * base of 8 grains, grains 1 and 4 zeros written as data, 6 discarded; a
 * diff over it (the scenario's options: zeroed grains) with grain 0 equal
 * to the parent's, 2 and 3 zeros over its data, 5 and 7 new data. */
#define GRAIN (64 * KiB)

static void write_grain(vdisk_disk *d, rng *r, uint64_t g, bool zero) {
        uint8_t *buf = calloc(1, GRAIN);

        ASSERT(buf);
        if (!zero)
                rng_fill(r, buf, GRAIN);
        ASSERT_OK(vdisk_disk_write(d, buf, GRAIN, g * GRAIN));
        free(buf);
}

static void build_vmdk_compact_base(scenario *sc) {
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 4);
        sc->n = 1;
        d = build_chain(sc);
        for (uint64_t g = 0; g < 8; g++)
                write_grain(d, &r, g, false);
        write_grain(d, &r, 1, true);
        write_grain(d, &r, 4, true);
        ASSERT_OK(vdisk_disk_discard(d, 6 * GRAIN, GRAIN));
        vdisk_disk_unref(d);
}

static void build_vmdk_compact_top(scenario *sc) {
        uint8_t *buf = malloc(GRAIN);
        vdisk_disk *d = disk_new();
        rng r;

        ASSERT(buf);
        rng_seed(&r, 5);
        sc->n = 2;
        sc->tmpl[0] = new_io(sc, 0);
        ASSERT_OK(vdisk_disk_create_base(d, sc->tmpl[0], g_fmt, DISK_SIZE, base_opts()));
        for (uint64_t g = 0; g < 8; g++)
                write_grain(d, &r, g, false);
        sc->tmpl[1] = new_io(sc, 1);
        ASSERT_OK(vdisk_disk_create_diff(d, sc->tmpl[1], g_fmt, base_opts()));
        ASSERT_OK(vdisk_disk_read(d, buf, GRAIN, 0));
        ASSERT_OK(vdisk_disk_write(d, buf, GRAIN, 0));
        write_grain(d, &r, 2, true);
        write_grain(d, &r, 5, false);
        write_grain(d, &r, 3, true);
        write_grain(d, &r, 7, false);
        vdisk_disk_unref(d);
        free(buf);
}

static int op_compact(scenario *sc, wl *w) {
        ASSERT_OK(vdisk_image_file_size(vdisk_disk_image(w->d, sc->faulted), &sc->file_size_before));
        TRY(vdisk_compact(w->d, sc->faulted, NULL));
        return wl_flush(w);
}

static void after_compact(scenario *sc, wl *w) {
        uint64_t after;

        ASSERT_OK(vdisk_image_file_size(vdisk_disk_image(w->d, sc->faulted), &after));
        if (after >= sc->file_size_before)
                FAIL("%s: compact did not shrink the image (%" PRIu64 " -> %" PRIu64 " bytes)", sc->name,
                     sc->file_size_before, after);
}

/* Every cluster of the compacted file has a reference then (4.5 MiB;
 * 4,849,664 bytes when the two clusters "old" holds alone stay where they
 * are). */
static void after_compact_snapshot_tables(scenario *sc, wl *w) {
        uint64_t after;

        after_compact(sc, w);
        ASSERT_OK(vdisk_image_file_size(vdisk_disk_image(w->d, sc->faulted), &after));
        if (after > 4608 * KiB)
                FAIL("%s: compact left %" PRIu64 " of %" PRIu64 " bytes: the snapshot's tables or its own clusters "
                     "did not move", sc->name, after, sc->file_size_before);
}

/* QCOW2 compact moving metadata: 64 KiB at 0, 2.5 MiB after it (the file
 * passes 2 MiB: a second refcount block), 8 KiB at 6 MiB (its L2 table and
 * data at the end of the file), then the 2.5 MiB discarded. Compact moves
 * the late L2 table and the second refcount block down into the hole, the
 * two data clusters after them, drops the refcount block left counting
 * nothing, and cuts the file. */
static vdisk_disk *build_compact_meta_start(scenario *sc, rng *r) {
        vdisk_disk *d;

        sc->n = 1;
        d = build_chain(sc);
        fill_block(d, r, 0, 0, 64 * KiB);
        fill_block(d, r, 0, 512 * KiB, 512 * KiB);
        fill_block(d, r, 1, 0, BLOCK);
        fill_block(d, r, 2, 0, BLOCK);
        return d;
}

static void build_qcow2_compact_meta(scenario *sc) {
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 12);
        d = build_compact_meta_start(sc, &r);
        fill_block(d, &r, 6, 0, 8 * KiB);
        ASSERT_OK(vdisk_disk_discard(d, 512 * KiB, 2 * BLOCK + 512 * KiB));
        vdisk_disk_unref(d);
}

/* QCOW2 compact moving bitmaps: the compact-meta image with an enabled
 * bitmap "on" (64 KiB) and a disabled one "off" (4 KiB, "on" merged into
 * it) added after the first 3 MiB of data and rewritten by the write at
 * 6 MiB, so that their tables, data clusters and directory lie above the
 * 2.5 MiB discarded. Their bits after the build are what every crash image
 * must hold. */
static struct {
        uint8_t *on, *off;
        size_t on_len, off_len;
} compact_bm;

static void build_qcow2_compact_bitmaps(scenario *sc) {
        vdisk_bitmap_change on = { .size = sizeof on, .op = VDISK_BITMAP_OP_ADD, .name = "on",
                                   .granularity = 65536, .flags = VDISK_BITMAP_AUTO };
        vdisk_bitmap_change off = { .size = sizeof off, .op = VDISK_BITMAP_OP_ADD, .name = "off",
                                    .granularity = 4096 };
        vdisk_bitmap_change merge = { .size = sizeof merge, .op = VDISK_BITMAP_OP_MERGE, .name = "off",
                                      .source = "on" };
        uint64_t g;
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 13);
        d = build_compact_meta_start(sc, &r);
        ASSERT_OK(vdisk_image_change_bitmap(vdisk_disk_image(d, 0), &on));
        ASSERT_OK(vdisk_image_change_bitmap(vdisk_disk_image(d, 0), &off));
        fill_block(d, &r, 6, 0, 8 * KiB);
        fill_block(d, &r, 0, 0, 4 * KiB);
        ASSERT_OK(vdisk_disk_flush(d));
        ASSERT_OK(vdisk_image_change_bitmap(vdisk_disk_image(d, 0), &merge));
        ASSERT_OK(vdisk_disk_discard(d, 512 * KiB, 2 * BLOCK + 512 * KiB));
        ASSERT_OK(vdisk_disk_flush(d));
        free(compact_bm.on);
        free(compact_bm.off);
        ASSERT_OK(vdisk_image_read_bitmap(vdisk_disk_image(d, 0), "on", &compact_bm.on, &compact_bm.on_len, &g));
        ASSERT_OK(vdisk_image_read_bitmap(vdisk_disk_image(d, 0), "off", &compact_bm.off, &compact_bm.off_len, &g));
        ASSERT(!buf_is_zero(compact_bm.off, compact_bm.off_len));
        vdisk_disk_unref(d);
}

/* The bitmaps lay past 3 MiB of the file: cut below 1 MiB, they moved. */
static void after_compact_bitmaps(scenario *sc, wl *w) {
        uint64_t after;

        after_compact(sc, w);
        ASSERT_OK(vdisk_image_file_size(vdisk_disk_image(w->d, sc->faulted), &after));
        if (after >= 1 * MiB)
                FAIL("%s: compact left %" PRIu64 " of %" PRIu64 " bytes: the bitmaps did not move", sc->name, after,
                     sc->file_size_before);
}

/* After any fault: both bitmaps consistent, "on" enabled and "off" not,
 * each holding exactly the bits it had before the compact. */
static void verify_compact_bitmaps(scenario *sc, vdisk_io *io, const char *what) {
        vdisk_disk *d = open_ios(&io, 1, VDISK_OPEN_READONLY, what);
        vdisk_image *img = vdisk_disk_image(d, 0);
        vdisk_bitmap *v = NULL;
        uint8_t *bits = NULL;
        size_t n = 0, len = 0;
        uint64_t g = 0;

        (void) sc;
        ASSERT_OK(vdisk_image_list_bitmaps(img, &v, &n));
        if (n != 2 || strcmp(v[0].name, "on") != 0 || strcmp(v[1].name, "off") != 0 ||
            v[0].flags != VDISK_BITMAP_AUTO || v[1].flags != 0)
                FAIL("%s: the bitmaps are not \"on\" (auto) and \"off\" (disabled), both consistent", what);
        ASSERT_OK(vdisk_image_read_bitmap(img, "on", &bits, &len, &g));
        if (g != 65536 || len != compact_bm.on_len || memcmp(bits, compact_bm.on, len) != 0)
                FAIL("%s: bitmap \"on\" changed", what);
        free(bits);
        ASSERT_OK(vdisk_image_read_bitmap(img, "off", &bits, &len, &g));
        if (g != 4096 || len != compact_bm.off_len || memcmp(bits, compact_bm.off, len) != 0)
                FAIL("%s: bitmap \"off\" changed", what);
        free(bits);
        vdisk_bitmaps_free(v, n);
        vdisk_disk_unref(d);
}

/* QCOW2 discard: whole clusters given back (their L2 entries, then their
 * refcounts at the flush), partial ones zeroed; the writes after the flush
 * reuse the freed clusters. */
static int op_qcow2_discard(scenario *sc, wl *w) {
        rng r;

        rng_seed(&r, 44);
        TRY(wl_discard(w, 1 * BLOCK, BLOCK));                            /* whole clusters */
        TRY(wl_discard(w, 4 * BLOCK + 96 * KiB, 200 * KiB));             /* partial ones at both ends */
        TRY(wl_discard(w, 7 * BLOCK, BLOCK));
        TRY(wl_flush(w));
        TRY(wl_write_random(w, &r, 256 * KiB, 5 * BLOCK + 64 * KiB));    /* into freed clusters */
        TRY(wl_write_random(w, &r, 4 * KiB, 1 * BLOCK + 8 * KiB));
        TRY(wl_flush(w));
        return 0;
}

/* Extended L2 (2 KiB subclusters): whole subclusters discarded (L2 entry,
 * then the refcount of a cluster left with none), pieces of subclusters
 * zeroed, then a write into the freed cluster. */
static int op_qcow2_discard_subclusters(scenario *sc, wl *w) {
        rng r;

        rng_seed(&r, 45);
        TRY(wl_discard(w, 2 * BLOCK + 2 * KiB, 8 * KiB));                /* subclusters 1-4 */
        TRY(wl_discard(w, 5 * BLOCK + 32 * KiB, 32 * KiB));              /* half a cluster ... */
        TRY(wl_discard(w, 5 * BLOCK, 32 * KiB));                         /* ... the rest: freed */
        TRY(wl_discard(w, 62 * KiB + 512, 4 * KiB));                     /* pieces and one across */
        TRY(wl_flush(w));
        TRY(wl_write_random(w, &r, 4 * KiB, 5 * BLOCK + 8 * KiB));       /* into the freed cluster */
        TRY(wl_flush(w));
        return 0;
}

/* (d) resize */

static void build_resize_base(scenario *sc) {
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 6);
        sc->n = 1;
        d = build_chain(sc);
        fill_block(d, &r, 0, 0, BLOCK);
        fill_block(d, &r, 7, 0, BLOCK);
        vdisk_disk_unref(d);
}

static void build_resize_top(scenario *sc) {
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 7);
        sc->n = 2;
        d = disk_new();
        sc->tmpl[0] = new_io(sc, 0);
        ASSERT_OK(vdisk_disk_create_base(d, sc->tmpl[0], crash_fmt, DISK_SIZE, base_opts()));
        for (uint64_t b = 0; b < 4; b++)
                fill_block(d, &r, b, 0, BLOCK);
        sc->tmpl[1] = new_io(sc, 1);
        ASSERT_OK(vdisk_disk_create_diff(d, sc->tmpl[1], crash_fmt, NULL));
        fill_block(d, &r, 6, 0, BLOCK);
        fill_block(d, &r, 7, 0, BLOCK);
        vdisk_disk_unref(d);
}

static int op_resize(scenario *sc, wl *w) {
        allowed_add_size(w->a, MAX_SIZE);
        TRY(vdisk_resize(w->d, MAX_SIZE, NULL));
        w->size = MAX_SIZE;
        return wl_flush(w);
}

static void after_resize(scenario *sc, wl *w) {
        ASSERT_EQ_U64(vdisk_disk_size(w->d), MAX_SIZE);
}

/* (d2) qcow2 amend: the refcount width (a new table and new blocks, then
 * one header write switches), compat=0.10 (zero clusters rewritten, then
 * the version 2 header) */

static void build_amend(scenario *sc) {
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 9);
        sc->n = 1;
        d = build_chain(sc);
        fill_block(d, &r, 0, 0, BLOCK);
        fill_block(d, &r, 2, 0, BLOCK);
        fill_block(d, &r, 5, 0, BLOCK);
        vdisk_disk_unref(d);
}

/* A diff with data, and zeros over its parent's data: zero clusters without
 * host clusters (a downgrade gives each a new zeroed cluster). */
/* The base (blocks 0-3 of data) and an empty diff over it. */
static vdisk_disk *build_amend_chain(scenario *sc, rng *r) {
        vdisk_disk *d = disk_new();

        sc->n = 2;
        sc->tmpl[0] = new_io(sc, 0);
        ASSERT_OK(vdisk_disk_create_base(d, sc->tmpl[0], g_fmt, DISK_SIZE, base_opts()));
        for (uint64_t b = 0; b < 4; b++)
                fill_block(d, r, b, 0, BLOCK);
        sc->tmpl[1] = new_io(sc, 1);
        vdisk_create_opts o = { .size = sizeof o, .parent_name = vdisk_io_name(sc->tmpl[0]), .parent_format = g_fmt };
        ASSERT_OK(vdisk_disk_create_diff(d, sc->tmpl[1], g_fmt, &o));
        return d;
}

static void build_amend_top(scenario *sc) {
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 10);
        d = build_amend_chain(sc, &r);
        fill_block(d, &r, 0, 0, 128 * KiB);
        ASSERT_OK(vdisk_disk_discard(d, 2 * BLOCK, 256 * KiB));
        vdisk_disk_unref(d);
}

/* The same diff with a snapshot "old" taken after its data, then zero
 * clusters in the active tree's copied L2 table: over the snapshot's data
 * (the cluster the snapshot holds loses the active tree's reference) and
 * over the parent's; a downgrade gives each a new zeroed cluster and must
 * leave "old" as it was taken. */
static uint8_t *amend_snap_content;

static void build_amend_snapshot(scenario *sc) {
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 11);
        d = build_amend_chain(sc, &r);
        fill_block(d, &r, 0, 0, 128 * KiB);
        fill_block(d, &r, 3, 0, 64 * KiB);
        free(amend_snap_content);
        amend_snap_content = disk_read_all(d, &(uint64_t) { 0 });
        ASSERT_OK(vdisk_disk_snapshot_create(d, "old"));
        ASSERT_OK(vdisk_disk_discard(d, 0, 64 * KiB));
        ASSERT_OK(vdisk_disk_discard(d, 2 * BLOCK, 256 * KiB));
        fill_block(d, &r, 6, 0, 64 * KiB);
        vdisk_disk_unref(d);
}

/* Snapshot "old" of the diff, over the base, reads as it was taken. */
static void verify_amend_snapshot(scenario *sc, vdisk_io *io, const char *what) {
        vdisk_disk *d = disk_new();
        uint64_t size;
        uint8_t *got;
        int r;

        ASSERT_OK(vdisk_disk_open(d, sc->tmpl[0], g_fmt, VDISK_OPEN_READONLY));
        ASSERT_OK(vdisk_disk_set_snapshot(d, "snapshot.name=old"));
        r = vdisk_disk_open(d, io, g_fmt, VDISK_OPEN_READONLY);
        if (r < 0)
                FAIL("%s: snapshot 'old' does not open: %d (%s)", what, r, strerror(-r));
        got = disk_read_all(d, &size);
        ASSERT_EQ_U64(size, DISK_SIZE);
        if (memcmp(got, amend_snap_content, DISK_SIZE) != 0)
                FAIL("%s: snapshot 'old' no longer reads as it was taken", what);
        free(got);
        vdisk_disk_unref(d);
}

static int op_amend_refcount_bits(scenario *sc, wl *w) {
        static const char *const o[] = { "refcount_bits", "8", NULL };

        TRY(vdisk_amend(w->d, o, NULL));
        return wl_flush(w);
}

static void after_amend_refcount_bits(scenario *sc, wl *w) {
        char v[32];

        if (strcmp(test_format_value(w->d, "refcount bits", v, sizeof v), "8") != 0)
                FAIL("%s: refcount bits '%s' after the amend (8 wanted)", sc->name, v);
}

static int op_amend_downgrade(scenario *sc, wl *w) {
        static const char *const o[] = { "compat", "0.10", NULL };

        TRY(vdisk_amend(w->d, o, NULL));
        return wl_flush(w);
}

static void after_amend_downgrade(scenario *sc, wl *w) {
        char v[32];

        if (strcmp(test_format_value(w->d, "compat", v, sizeof v), "0.10") != 0)
                FAIL("%s: compat '%s' after the amend (0.10 wanted)", sc->name, v);
}

/* QCOW2 shrink to 6 MiB: the header first, then the entries past the end
 * (zeros written as data in block 7), their refcounts, the file's tail. */
static void build_qcow2_shrink(scenario *sc) {
        uint8_t *zero = calloc(1, BLOCK);
        rng r;
        vdisk_disk *d;

        ASSERT(zero);
        rng_seed(&r, 9);
        sc->n = 1;
        d = build_chain(sc);
        fill_block(d, &r, 0, 0, BLOCK);
        fill_block(d, &r, 5, 0, BLOCK);
        ASSERT_OK(vdisk_disk_write(d, zero, BLOCK, 7 * BLOCK));
        vdisk_disk_unref(d);
        free(zero);
}

static int op_shrink(scenario *sc, wl *w) {
        allowed_add_size(w->a, 6 * BLOCK);
        TRY(vdisk_resize(w->d, 6 * BLOCK, NULL));
        w->size = 6 * BLOCK;
        return wl_flush(w);
}

static void after_shrink(scenario *sc, wl *w) {
        ASSERT_EQ_U64(vdisk_disk_size(w->d), 6 * BLOCK);
}

/* (e) repair of a leaked slot */

static void build_repair(scenario *sc) {
        rng r;
        vdisk_disk *d;
        uint8_t *bytes;
        size_t len;
        vdi_header h;
        vdisk_check_report rep;

        rng_seed(&r, 8);
        sc->n = 1;
        d = build_chain(sc);
        for (uint64_t b = 0; b < 6; b++)
                fill_block(d, &r, b, 0, BLOCK);
        vdisk_disk_unref(d);
        /* block 2's slot: no entry points to it any more */
        bytes = mem_io_copy(sc->tmpl[0], &len);
        ASSERT(vdi_parse(bytes, len, &h) == 0 && h.map);
        ASSERT(vdi_map_entry(&h, 2) < h.blocks_allocated);
        vdi_put32(bytes, h.off_blocks + 2 * 4, VDI_ENTRY_FREE);
        vdisk_io_unref(sc->tmpl[0]);
        sc->tmpl[0] = mem_io("crash-repair-0.vdi", bytes, len);
        free(bytes);

        /* a leaked slot is the count-ahead state: leaks, and at most the
         * count mismatch as a corruption */
        d = open_ios(sc->tmpl, 1, VDISK_OPEN_READONLY, "repair template");
        check_image_report(d, 0, &rep);
        bytes = mem_io_copy(sc->tmpl[0], &len);
        ASSERT(vdi_count_ahead_only(bytes, len));
        free(bytes);
        if (rep.corruptions > 1 || rep.leaks == 0) {
                print_check_messages(&rep);
                FAIL("an image with a leaked slot: check reports %" PRIu64 " corruptions and %" PRIu64
                     " leaks, "
                     "expected at most 1 (the count mismatch) and at least 1", rep.corruptions, rep.leaks);
        }
        vdisk_check_report_clear(&rep);
        vdisk_disk_unref(d);
}

/* A monolithicSparse VMDK with leaks of both kinds repair mends: 3 grains
 * of junk past the last grain (the file cut), and grain 5 set in the
 * primary grain table only (the redundant entry written). */
static void build_vmdk_repair(scenario *sc) {
        rng r;
        vdisk_disk *d;
        uint8_t *bytes, *grown;
        size_t len;
        uint64_t rgd, rgt;
        vdisk_check_report rep;

        rng_seed(&r, 9);
        sc->n = 1;
        d = build_chain(sc);
        for (uint64_t b = 0; b < 4; b++)
                fill_block(d, &r, b, 0, BLOCK);
        vdisk_disk_unref(d);
        bytes = mem_io_copy(sc->tmpl[0], &len);
        ASSERT(len >= 512 && memcmp(bytes, "KDMV", 4) == 0);
        rgd = vdi_get64(bytes, 48);     /* the header's redundant GD (sectors) */
        ASSERT(rgd > 0 && rgd * 512 + 4 <= len);
        rgt = vdi_get32(bytes, rgd * 512);
        ASSERT(rgt > 0 && rgt * 512 + 6 * 4 <= len);
        ASSERT(vdi_get32(bytes, rgt * 512 + 5 * 4) > 1);
        vdi_put32(bytes, rgt * 512 + 5 * 4, 0);
        grown = realloc(bytes, len + 3 * 64 * KiB);
        ASSERT(grown);
        rng_fill(&r, grown + len, 3 * 64 * KiB);
        vdisk_io_unref(sc->tmpl[0]);
        sc->tmpl[0] = mem_io("crash-vmdk-repair-0.vmdk", grown, len + 3 * 64 * KiB);
        free(grown);

        d = open_ios(sc->tmpl, 1, VDISK_OPEN_READONLY, "repair template");
        check_image_report(d, 0, &rep);
        if (rep.corruptions || rep.leaks < 2) {
                print_check_messages(&rep);
                FAIL("the VMDK repair template: %" PRIu64 " corruptions and %" PRIu64 " leaks, expected none "
                     "and at least 2", rep.corruptions, rep.leaks);
        }
        vdisk_check_report_clear(&rep);
        vdisk_disk_unref(d);
}

static int op_repair(scenario *sc, wl *w) {
        vdisk_check_report rep = { .size = sizeof rep };
        int r = vdisk_check(w->d, 0, VDISK_CHECK_REPAIR_ALL, &rep, NULL);

        vdisk_check_report_clear(&rep);
        TRY(r);
        return wl_flush(w);
}

static void after_repair(scenario *sc, wl *w) {
        vdisk_check_report rep;

        check_image_report(w->d, 0, &rep);
        if (rep.corruptions || rep.leaks) {
                print_check_messages(&rep);
                FAIL("after repair: %" PRIu64 " corruptions, %" PRIu64 " leaks", rep.corruptions, rep.leaks);
        }
        vdisk_check_report_clear(&rep);
}

/* (f) rebase onto another parent (vdisk_rebase, lib/ops/rebase.c): wherever
 * the child does not define the data and the old and new parents differ, the
 * old content is written into the child; then the child is relinked. tmpl[0] is the old parent, tmpl[1] the child, extra
 * the new parent. */

static void build_rebase(scenario *sc) {
        rng r;
        vdisk_disk *d, *nd = disk_new();
        uint8_t *buf = malloc(BLOCK);

        ASSERT(buf);
        rng_seed(&r, 10);
        sc->n = 2;
        d = disk_new();
        sc->tmpl[0] = new_io(sc, 0);
        ASSERT_OK(vdisk_disk_create_base(d, sc->tmpl[0], crash_fmt, DISK_SIZE, base_opts()));
        for (uint64_t b = 0; b < 6; b++)
                fill_block(d, &r, b, 0, BLOCK);
        ASSERT_OK(vdisk_disk_read(d, buf, BLOCK, 0));
        sc->tmpl[1] = new_io(sc, 1);
        ASSERT_OK(vdisk_disk_create_diff(d, sc->tmpl[1], "vdi", NULL));
        fill_block(d, &r, 1, 256 * KiB, 64 * KiB);     /* partial: the rest comes from the parent */
        fill_block(d, &r, 4, 0, BLOCK);                /* whole: the parent does not matter */
        ASSERT_OK(vdisk_image_get_uuid(vdisk_disk_image(d, 0), sc->uuid[0]));
        ASSERT_OK(vdisk_image_get_uuid(vdisk_disk_image(d, 1), sc->uuid[1]));
        vdisk_disk_unref(d);

        /* the new parent: block 0 as the old one, block 2 different, the rest zeros */
        sc->extra = mem_io("crash-rebase-new.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(nd, sc->extra, "vdi", DISK_SIZE, NULL));
        ASSERT_OK(vdisk_disk_write(nd, buf, BLOCK, 0));
        fill_block(nd, &r, 2, 0, BLOCK);
        ASSERT_OK(vdisk_image_get_uuid(vdisk_disk_image(nd, 0), sc->extra_uuid));
        vdisk_disk_unref(nd);
        free(buf);
}

static int op_rebase(scenario *sc, wl *w) {
        vdisk_disk *nd = open_ios(&w->extra, 1, VDISK_OPEN_READONLY, "the new parent");
        vdisk_rebase_opts opts = { .size = sizeof(opts) };
        int r;

        (void) sc;
        r = vdisk_rebase(w->d, nd, &opts, NULL, NULL);
        vdisk_disk_unref(nd);
        return r;
}

static void after_rebase(scenario *sc, wl *w) {
        uint8_t p[16];

        ASSERT_OK(vdisk_image_get_parent_uuid(vdisk_disk_image(w->d, 1), p));
        ASSERT_MEMEQ(p, sc->extra_uuid, 16);
}

/* (g) convert -n: the content of a source (extra) copied into an existing
 * image as vdisk-img does it (tools/img-create.c): every chunk that holds data
 * is written; a zero chunk only where the target does not read zeros. */

static void build_convert_existing(scenario *sc) {
        rng r;
        vdisk_disk *d;

        rng_seed(&r, 11);
        sc->n = 1;
        d = build_chain(sc);
        for (uint64_t b = 1; b < 6; b++)
                fill_block(d, &r, b, 0, BLOCK);
        vdisk_disk_unref(d);

        d = disk_new();
        sc->extra = mem_io("crash-convert-src.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(d, sc->extra, crash_fmt, DISK_SIZE, base_opts()));
        fill_block(d, &r, 0, 0, BLOCK);                  /* into an unallocated block */
        fill_block(d, &r, 2, 4096, 8192);                 /* over data, mostly zeros */
        fill_block(d, &r, 5, 0, BLOCK);                  /* over data */
        fill_block(d, &r, 7, 512 * KiB, 4096);            /* a partial new block */
        vdisk_disk_unref(d);
}

static int op_convert_existing(scenario *sc, wl *w) {
        vdisk_disk *src = open_ios(&w->extra, 1, VDISK_OPEN_READONLY, "the convert source");
        uint8_t *buf = malloc(BLOCK), *dbuf = malloc(BLOCK);
        int r = 0;

        ASSERT(buf && dbuf);
        ASSERT_EQ_U64(vdisk_disk_size(src), DISK_SIZE);
        for (uint64_t off = 0; off < DISK_SIZE && r >= 0; off += BLOCK) {
                ASSERT_OK(vdisk_disk_read(src, buf, BLOCK, off));
                if (buf_is_zero(buf, BLOCK)) {
                        r = vdisk_disk_read(w->d, dbuf, BLOCK, off);
                        if (r < 0 || buf_is_zero(dbuf, BLOCK))
                                continue;
                }
                r = wl_write(w, buf, BLOCK, off);
        }
        if (r >= 0)
                r = wl_flush(w);
        vdisk_disk_unref(src);
        free(buf);
        free(dbuf);
        return r;
}

static scenario scenarios[] = {
        { .name = "writes-base", .faulted = 0, .qemu = 1, .per_sector = 1, .build = build_writes_base,
          .op = op_writes },
        { .name = "writes-top", .faulted = 1, .per_sector = 1, .build = build_writes_top, .op = op_writes },
        { .name = "merge-forward", .n = 2, .faulted = 0, .verify = V_MERGE_FWD, .qemu = 1,
          .build = build_merge, .op = op_merge_fwd, .after_success = after_merge },
        { .name = "merge-forward-relink", .n = 3, .faulted = 0, .verify = V_MERGE_FWD3, .qemu = 1,
          .build = build_merge, .op = op_merge_fwd, .after_success = after_merge },
        { .name = "merge-backward", .n = 2, .faulted = 1, .verify = V_MERGE_BWD,
          .build = build_merge, .op = op_merge_bwd, .after_success = after_merge },
        { .name = "compact-base", .faulted = 0, .qemu = 1, .build = build_compact_base, .op = op_compact,
          .after_success = after_compact },
        { .name = "compact-top", .faulted = 1, .build = build_compact_top, .op = op_compact,
          .after_success = after_compact },
        { .name = "resize-base", .faulted = 0, .qemu = 1, .build = build_resize_base, .op = op_resize,
          .after_success = after_resize },
        { .name = "resize-top", .faulted = 1, .build = build_resize_top, .op = op_resize,
          .after_success = after_resize },
        { .name = "repair", .faulted = 0, .qemu = 1, .build = build_repair, .op = op_repair,
          .after_success = after_repair },
        { .name = "rebase", .n = 2, .faulted = 1, .verify = V_REBASE, .build = build_rebase,
          .op = op_rebase, .after_success = after_rebase },
        { .name = "convert-existing", .faulted = 0, .qemu = 1, .per_sector = 1,
          .build = build_convert_existing, .op = op_convert_existing },
        /* VMDK (monolithicSparse, 64 KiB grains): grain allocation, GT and
         * redundant GT updates, in-place writes. */
        { .name = "vmdk-writes-base", .fmt = "vmdk", .max_crash_seeds = 2, .faulted = 0, .qemu = 1,
          .qemu_every = 8, .per_sector = 1, .build = build_writes_base, .op = op_writes },
        { .name = "vmdk-writes-top", .fmt = "vmdk", .max_crash_seeds = 2, .faulted = 1, .per_sector = 1,
          .build = build_writes_top, .op = op_writes },
        /* Growing 8 -> 16 MiB: the header's capacity, then the descriptor. */
        { .name = "vmdk-resize-base", .fmt = "vmdk", .max_crash_seeds = 2, .faulted = 0, .qemu = 1,
          .qemu_every = 2, .build = build_resize_base, .op = op_resize, .after_success = after_resize },
        /* Grain tables allocated by the writes (both directories). */
        { .name = "vmdk-writes-gt", .fmt = "vmdk", .opts = vmdk_gt_on_demand, .max_crash_seeds = 1, .faulted = 0,
          .qemu = 1, .qemu_every = 8, .per_sector = 1, .build = build_empty_base, .op = op_writes },
        /* QCOW2: data clusters, L2 tables and refcount blocks allocated by
         * the writes (refcount block, then L2, then L1), zero clusters, in
         * place writes; crash images checked by vdisk_check (exact counts:
         * leaks only) and qemu-img check. */
        { .name = "qcow2-writes-base", .fmt = "qcow2", .opts = qcow2_64k, .max_crash_seeds = 1, .faulted = 0,
          .qemu = 1, .qemu_every = 16, .per_sector = 1, .build = build_writes_base, .op = op_writes },
        /* Runs of clusters, one transaction each (op_writes_runs): 512-byte
         * clusters with 64-bit refcounts (runs cut at each L2 table's end,
         * refcounts of a run in two refcount blocks); 64 KiB clusters with
         * subclusters over data; a diff whose partial clusters are filled
         * from the backing file. max_writes: what runs take (a data write
         * per cluster took 1052, 23 and 19 writes) */
        { .name = "qcow2-writes-runs", .fmt = "qcow2", .opts = qcow2_512_rb64, .max_crash_seeds = 2,
          .faulted = 0, .qemu = 1, .qemu_every = 16, .per_sector = 1, .build = build_empty_base,
          .op = op_writes_runs, .max_writes = 112 },
        { .name = "qcow2-writes-runs-extl2", .fmt = "qcow2", .opts = qcow2_extl2, .max_crash_seeds = 2,
          .faulted = 0, .qemu = 1, .qemu_every = 8, .per_sector = 1, .build = build_writes_base,
          .op = op_writes_runs, .max_writes = 17 },
        { .name = "qcow2-writes-runs-top", .fmt = "qcow2", .opts = qcow2_64k, .max_crash_seeds = 2,
          .faulted = 1, .per_sector = 1, .build = build_writes_top, .op = op_writes_runs, .max_writes = 16 },
        /* ... with persistent bitmaps: marked in use before the first
         * write, written back (new clusters, then the table pointer, then
         * the old ones freed, then in_use cleared) at each flush. */
        { .name = "qcow2-writes-bitmaps", .fmt = "qcow2", .opts = qcow2_64k, .max_crash_seeds = 2, .faulted = 0,
          .qemu = 1, .qemu_every = 16, .per_sector = 1, .build = build_writes_bitmaps, .op = op_writes_bitmaps,
          .verify_image = verify_bitmaps },
        { .name = "qcow2-writes-refblocks", .fmt = "qcow2", .opts = qcow2_512_rb64, .max_crash_seeds = 1,
          .faulted = 0, .qemu = 1, .qemu_every = 16, .per_sector = 1, .build = build_empty_base,
          .op = op_writes_small },
        /* Amend: the refcount width 16 -> 8 (new structures, the header
         * switch, the old ones freed), and compat=0.10 over zero clusters
         * (data, L2 entries, then the version 2 header). Content unchanged;
         * crash images leak at most. */
        { .name = "qcow2-amend-refcount-bits", .fmt = "qcow2", .opts = qcow2_64k, .max_crash_seeds = 2,
          .faulted = 0, .qemu = 1, .qemu_every = 4, .build = build_amend, .op = op_amend_refcount_bits,
          .after_success = after_amend_refcount_bits },
        { .name = "qcow2-amend-downgrade", .fmt = "qcow2", .opts = qcow2_64k, .max_crash_seeds = 2,
          .faulted = 1, .build = build_amend_top, .op = op_amend_downgrade,
          .after_success = after_amend_downgrade },
        /* ... with an internal snapshot in the diff: every crash image has
         * the snapshot as it was taken */
        { .name = "qcow2-amend-downgrade-snapshot", .fmt = "qcow2", .opts = qcow2_64k, .max_crash_seeds = 2,
          .faulted = 1, .build = build_amend_snapshot, .op = op_amend_downgrade,
          .after_success = after_amend_downgrade, .verify_image = verify_amend_snapshot },
        /* QCOW2 discard, resize (a grow that moves the L1 table: 512-byte
         * clusters; a shrink) and compact (clusters dropped, zero clusters in a diff,
         * clusters moved down, the file cut). */
        { .name = "qcow2-discard", .fmt = "qcow2", .opts = qcow2_64k, .max_crash_seeds = 1, .faulted = 0,
          .qemu = 1, .qemu_every = 8, .per_sector = 1, .build = build_writes_base, .op = op_qcow2_discard },
        { .name = "qcow2-discard-subclusters", .fmt = "qcow2", .opts = qcow2_extl2, .max_crash_seeds = 1,
          .faulted = 0, .qemu = 1, .qemu_every = 4, .per_sector = 1, .build = build_writes_base,
          .op = op_qcow2_discard_subclusters },
        { .name = "qcow2-resize", .fmt = "qcow2", .opts = qcow2_512_rb64, .max_crash_seeds = 1, .faulted = 0,
          .qemu = 1, .qemu_every = 2, .build = build_resize_base, .op = op_resize, .after_success = after_resize },
        /* ... with persistent bitmaps: their tables follow the size (new
         * tables marked in use, the header switch, the marks cleared). */
        { .name = "qcow2-resize-bitmaps", .fmt = "qcow2", .opts = qcow2_512_rb64, .max_crash_seeds = 1,
          .faulted = 0, .qemu = 1, .qemu_every = 16, .per_sector = 1, .build = build_resize_bitmaps, .op = op_resize_bitmaps,
          .after_success = after_resize, .verify_image = verify_resize_bitmaps },
        { .name = "qcow2-shrink", .fmt = "qcow2", .opts = qcow2_64k, .max_crash_seeds = 1, .faulted = 0,
          .qemu = 1, .qemu_every = 2, .build = build_qcow2_shrink, .op = op_shrink, .after_success = after_shrink },
        { .name = "qcow2-compact", .fmt = "qcow2", .opts = qcow2_64k, .max_crash_seeds = 1, .faulted = 0,
          .qemu = 1, .qemu_every = 2, .build = build_vmdk_compact_base, .op = op_compact,
          .after_success = after_compact },
        /* compact moving an L2 table and a refcount block (each: the copy
         * counted and flushed, the pointer switched and flushed, the old
         * place freed) and dropping an empty refcount block */
        { .name = "qcow2-compact-meta", .fmt = "qcow2", .opts = qcow2_4k_rb64, .max_crash_seeds = 1,
          .faulted = 0, .qemu = 1, .qemu_every = 4, .build = build_qcow2_compact_meta, .op = op_compact,
          .after_success = after_compact },
        /* ... with persistent bitmaps above the hole: each bitmap table and
         * the directory moved (the copy counted and flushed, the entry's
         * table offset or the header extension's directory offset switched
         * and flushed, the old place freed), the bitmap data clusters
         * packed with the data (the table entry switched); the bits never
         * change */
        { .name = "qcow2-compact-bitmaps", .fmt = "qcow2", .opts = qcow2_4k_rb64, .max_crash_seeds = 2,
          .faulted = 0, .qemu = 1, .qemu_every = 4, .build = build_qcow2_compact_bitmaps, .op = op_compact,
          .after_success = after_compact_bitmaps, .verify_image = verify_compact_bitmaps },
        /* QCOW2 with an internal snapshot: the same writes copy shared
         * data clusters and L2 tables (COPIED clear) on write; snapshot
         * create and delete (snapshot -c/-d). The snapshot reads as taken
         * in every crash image; a cut between a COPIED update and the
         * refcounts it goes with may leave refcount-1 entries without COPIED
         * (qemu's OFLAG_COPIED error, harmless, mended by check -r all):
         * allowed for snapshot -c/-d only (lib/backends/qcow2-snapshot.c). */
        { .name = "qcow2-snapshot-writes", .fmt = "qcow2", .opts = qcow2_64k, .max_crash_seeds = 1, .faulted = 0,
          .qemu = 1, .qemu_every = 16, .per_sector = 1, .build = build_snapshot_base, .op = op_writes },
        /* compact of an image with a snapshot: only clusters and L2 tables
         * of refcount 1 are dropped or moved */
        { .name = "qcow2-compact-snapshot", .fmt = "qcow2", .opts = qcow2_64k, .max_crash_seeds = 2,
          .faulted = 0, .qemu = 1, .qemu_every = 2, .build = build_qcow2_compact_snapshot, .op = op_compact,
          .after_success = after_compact },
        /* the same with the snapshot's own L2 table and data clusters, its
         * L1 table and the snapshot table above a hole: moved down */
        { .name = "qcow2-compact-snapshot-tables", .fmt = "qcow2", .opts = qcow2_64k, .max_crash_seeds = 2,
          .faulted = 0, .qemu = 1, .qemu_every = 2, .build = build_qcow2_compact_snapshot_tables,
          .op = op_compact, .after_success = after_compact_snapshot_tables },
        { .name = "qcow2-snapshot", .fmt = "qcow2", .opts = qcow2_64k, .max_crash_seeds = 2, .faulted = 0,
          .qemu = 1, .qemu_every = 2, .copied_lag = 1, .build = build_snapshot_base, .op = op_snapshot },
        /* QED (64 KiB clusters): data clusters and L2 tables appended, L1
         * and L2 updates, NEED_CHECK set and cleared; qemu-img check too. */
        { .name = "qed-writes-base", .fmt = "qed", .max_crash_seeds = 1, .faulted = 0, .qemu = 1,
          .qemu_every = 32, .per_sector = 1, .build = build_writes_base, .op = op_writes },
        { .name = "qed-writes-top", .fmt = "qed", .max_crash_seeds = 1, .faulted = 1, .per_sector = 1,
          .build = build_writes_top, .op = op_writes },
        /* runs of clusters over a backing file (op_writes_runs; a data
         * write per cluster took 21 writes) */
        { .name = "qed-writes-runs-top", .fmt = "qed", .max_crash_seeds = 2, .faulted = 1, .per_sector = 1,
          .build = build_writes_top, .op = op_writes_runs, .max_writes = 16 },
        /* QCOW v1 (64 KiB clusters; no check in the library nor in qemu-img:
         * the tests' own parse of the L1 and L2 tables, qcow1_check). */
        { .name = "qcow-writes-base", .fmt = "qcow", .max_crash_seeds = 2, .faulted = 0, .per_sector = 1,
          .build = build_empty_base, .op = op_qcow_writes },
        { .name = "qcow-writes-top", .fmt = "qcow", .max_crash_seeds = 2, .faulted = 1, .per_sector = 1,
          .build = build_writes_top, .op = op_qcow_writes },
        /* Compact: grains dropped (both grain tables, in three flushed
         * rounds), grains moved into holes, the file cut. */
        { .name = "vmdk-compact-base", .fmt = "vmdk", .max_crash_seeds = 2, .faulted = 0, .qemu = 1,
          .qemu_every = 2, .build = build_vmdk_compact_base, .op = op_compact, .after_success = after_compact },
        /* Repair: the redundant grain table completed, the tail cut. */
        { .name = "vmdk-repair", .fmt = "vmdk", .max_crash_seeds = 1, .faulted = 0, .qemu = 1,
          .build = build_vmdk_repair, .op = op_repair, .after_success = after_repair },
        /* A diff: a grain equal to the parent's dropped, zeros over the
         * parent's data become zeroed-grain entries, the rest moves. */
        { .name = "vmdk-compact-zeroed", .fmt = "vmdk", .opts = vmdk_zeroed_grain, .max_crash_seeds = 2,
          .faulted = 1, .build = build_vmdk_compact_top, .op = op_compact, .after_success = after_compact },
};

/* ---------------------------------------------------------------- verification */

static bool g_copied_lag;

/* Every corruption the report counts is the OFLAG_COPIED lag a snapshot
 * create or delete may leave (scenario.copied_lag): refcount 1, COPIED clear. */
static bool copied_lag_only(const vdisk_check_report *rep) {
        uint64_t n = 0;

        if (!g_copied_lag || !rep->messages || rep->check_errors)
                return false;
        for (char **m = rep->messages; *m; m++) {
                if (strncmp(*m, "ERROR ", 6) != 0)
                        continue;
                if (!strstr(*m, "OFLAG_COPIED") || !strstr(*m, " refcount=1") || strstr(*m, " refcount=1") !=
                    *m + strlen(*m) - strlen(" refcount=1"))
                        return false;
                n++;
        }
        if (n == rep->corruptions)
                stats.copied_lag++;
        return n == rep->corruptions;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

        return x < y ? -1 : x > y;
}

static uint64_t be64_at(const uint8_t *p) {
        uint64_t v = 0;

        for (unsigned i = 0; i < 8; i++)
                v = v << 8 | p[i];
        return v;
}

/* QCOW v1 has no check (neither has qemu-img one): the tests' own parse of
 * the image `io` holds. Every L1 entry is 0 or an L2 table that starts inside
 * the file, past the L1 table; every L2 entry is 0 or a cluster-aligned data
 * cluster that starts inside the file past the L1 table (the workloads
 * compress nothing); no cluster is referenced twice, as an L2 table or as
 * data. */
static void qcow1_check(vdisk_io *io, const char *what) {
        const uint8_t *p;
        const void *data;
        size_t len;
        uint64_t size, l1_off, l1_n, l1_end, cs, l2_bytes, *refs, n_refs = 0, cap;
        unsigned cb, l2b;

        ASSERT_OK(vdisk_io_memory_data(io, &data, &len));
        p = data;
        if (len < 48 || memcmp(p, "QFI\xfb", 4) != 0 || p[7] != 1)
                FAIL("%s: qcow: no complete version 1 header (%zu bytes)", what, len);
        size = be64_at(p + 24);
        cb = p[32];
        l2b = p[33];
        l1_off = be64_at(p + 40);
        ASSERT(cb >= 9 && cb <= 16 && l2b >= 6 && l2b <= 16);
        cs = UINT64_C(1) << cb;
        l2_bytes = UINT64_C(8) << l2b;
        l1_n = DIV_ROUND_UP(size, UINT64_C(1) << (cb + l2b));
        l1_end = l1_off + 8 * l1_n;
        if (l1_end > len)
                FAIL("%s: qcow: the L1 table (0x%" PRIx64 "+%" PRIu64 ") ends past the file (%zu)", what,
                     l1_off, 8 * l1_n, len);
        cap = l1_n * (1 + (l2_bytes / 8));
        refs = malloc(cap * sizeof *refs);
        ASSERT(refs);
        for (uint64_t i = 0; i < l1_n; i++) {
                uint64_t l2 = be64_at(p + l1_off + 8 * i);

                if (!l2)
                        continue;
                if (l2 < l1_end || l2 >= len || l2 % 8)
                        FAIL("%s: qcow: L1 entry %" PRIu64 " points at 0x%" PRIx64 " (L1 ends at 0x%" PRIx64
                             ", the file at 0x%zx)", what, i, l2, l1_end, len);
                refs[n_refs++] = l2;
                for (uint64_t j = 0; j < l2_bytes / 8 && l2 + 8 * j + 8 <= len; j++) {
                        uint64_t e = be64_at(p + l2 + 8 * j);

                        if (!e)
                                continue;
                        if (e >> 63)
                                FAIL("%s: qcow: L2 %" PRIu64 " entry %" PRIu64 " is compressed", what, i, j);
                        if (e % cs || e < l1_end || e >= len)
                                FAIL("%s: qcow: L2 %" PRIu64 " entry %" PRIu64 " points at 0x%" PRIx64
                                     " (cluster %" PRIu64 ", file 0x%zx)", what, i, j, e, cs, len);
                        refs[n_refs++] = e;
                }
        }
        qsort(refs, n_refs, sizeof *refs, cmp_u64);
        for (uint64_t i = 1; i < n_refs; i++)
                if (refs[i] == refs[i - 1])
                        FAIL("%s: qcow: host offset 0x%" PRIx64 " referenced twice", what, refs[i]);
        free(refs);
}

/* vdisk_check of image `index` (its bytes: `io`): no corruption, except the
 * documented count-ahead state, which our own parse must confirm. */
static void check_crashed(vdisk_disk *d, unsigned index, vdisk_io *io, const char *what) {
        vdisk_check_report rep;
        const void *data;
        size_t len;
        vdi_header h;
        vdi_map_stats st;

        if (strcmp(g_fmt, "qcow") == 0) {
                qcow1_check(io, what);
                return;
        }
        ASSERT_OK(vdisk_io_memory_data(io, &data, &len));
        if (strcmp(g_fmt, "vdi") != 0) {
                /* Other formats: the library's check alone. */
                check_image_report(d, index, &rep);
                if (rep.check_errors || (rep.corruptions && !copied_lag_only(&rep))) {
                        print_check_messages(&rep);
                        FAIL("%s: image %u: %" PRIu64 " corruptions, %" PRIu64 " check errors", what, index,
                             rep.corruptions, rep.check_errors);
                }
                if (rep.leaks)
                        stats.leaky++;
                vdisk_check_report_clear(&rep);
                return;
        }
        if (vdi_parse(data, len, &h) < 0 || !h.map)
                FAIL("%s: image %u: our parser finds no complete header and map", what, index);
        vdi_map_analyse(&h, len, &st);
        if (st.out_of_range || st.duplicates)
                FAIL("%s: image %u: %" PRIu32 " map entries at or above the allocated count %" PRIu32
                     ", %" PRIu32 " duplicated (our own parse)", what, index, st.out_of_range,
                     h.blocks_allocated,
                     st.duplicates);

        check_image_report(d, index, &rep);
        if (rep.check_errors) {
                print_check_messages(&rep);
                FAIL("%s: image %u: %" PRIu64 " check errors", what, index, rep.check_errors);
        }
        if (rep.corruptions) {
                if (rep.corruptions != 1 || !vdi_count_ahead_only(data, len)) {
                        print_check_messages(&rep);
                        FAIL("%s: image %u: %" PRIu64 " corruptions", what, index, rep.corruptions);
                }
                stats.count_ahead++;
        } else if (h.blocks_allocated > st.referenced)
                stats.count_ahead++;
        if (rep.leaks)
                stats.leaky++;
        vdisk_check_report_clear(&rep);
}

/* qemu-img check's log names no error but the OFLAG_COPIED lag. */
static bool qemu_log_copied_lag_only(const char *log) {
        char line[512];
        bool any = false, other = false;
        FILE *f = fopen(log, "re");

        if (!f)
                return false;
        while (fgets(line, sizeof line, f)) {
                line[strcspn(line, "\n")] = 0;
                if (strncmp(line, "ERROR", 5) != 0)
                        continue;
                if (strstr(line, "OFLAG_COPIED") && strlen(line) > 11 &&
                    strcmp(line + strlen(line) - 11, " refcount=1") == 0)
                        any = true;
                else
                        other = true;
        }
        fclose(f);
        return any && !other;
}

static int run_qemu_check(vdisk_io *io, const char *what) {
        char path[512], log[520];
        const void *data;
        size_t len;
        int fd, status;
        pid_t pid;

        ASSERT_OK(vdisk_io_memory_data(io, &data, &len));
        snprintf(path, sizeof path, "%s/vdisk-crash-XXXXXX.img", tmpdir);
        fd = mkstemps(path, 4);
        ASSERT(fd >= 0);
        ASSERT(write(fd, data, len) == (ssize_t) len);
        close(fd);
        snprintf(log, sizeof log, "%s.log", path);

        pid = fork();
        ASSERT(pid >= 0);
        if (pid == 0) {
                int lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                if (lfd >= 0) {
                        dup2(lfd, 1);
                        dup2(lfd, 2);
                }
                execl(QEMU_IMG, QEMU_IMG, "check", "-f", g_fmt, path, (char *) NULL);
                _exit(127);
        }
        ASSERT(waitpid(pid, &status, 0) == pid);
        stats.qemu_runs++;
        ASSERT(WIFEXITED(status));
        status = WEXITSTATUS(status);
        if (status == 0 || status == 3 ||
            (status == 2 && strcmp(g_fmt, "vdi") == 0 && vdi_count_ahead_only(data, len)) ||
            (status == 2 && g_copied_lag && qemu_log_copied_lag_only(log))) {
                unlink(path);
                unlink(log);
                return status;
        }
        {
                char line[256];
                FILE *f = fopen(log, "re");

                fprintf(stderr, "qemu-img check output (image kept as %s):\n", path);
                while (f && fgets(line, sizeof line, f))
                        fprintf(stderr, "    %s", line);
                if (f)
                        fclose(f);
        }
        FAIL("%s: qemu-img check -f %s exited with %d", what, g_fmt, status);
}

static void parent_of(vdisk_io *io, uint8_t ret[16]) {
        const void *data;
        size_t len;

        ASSERT_OK(vdisk_io_memory_data(io, &data, &len));
        ASSERT(len >= VDI_OFF_END_V1);
        memcpy(ret, (const uint8_t *) data + VDI_OFF_UUID_LINKAGE, 16);
}

/* Which images form the chain now (post[faulted] is the crash or error
 * state; `extra` the rebase's new parent); returns their number. */
static unsigned chain_of(scenario *sc, vdisk_io **post, vdisk_io *extra, vdisk_io **chain, const char *what) {
        unsigned n = 0;

        if (sc->verify == V_MERGE_FWD3) {
                uint8_t p[16];
                parent_of(post[2], p);
                chain[n++] = post[0];
                if (memcmp(p, sc->uuid[1], 16) == 0)
                        chain[n++] = post[1];
                else if (memcmp(p, sc->uuid[0], 16) != 0)
                        FAIL("%s: the top links to neither the base nor the merged image", what);
                chain[n++] = post[2];
        } else if (sc->verify == V_MERGE_BWD) {
                uint8_t p[16];
                parent_of(post[1], p);
                if (memcmp(p, sc->uuid[0], 16) == 0)
                        chain[n++] = post[0];
                else if (!vdisk_uuid_is_null(p))
                        FAIL("%s: the merge target links to an unknown parent", what);
                chain[n++] = post[1];
        } else if (sc->verify == V_REBASE) {
                uint8_t p[16];
                parent_of(post[1], p);
                if (memcmp(p, sc->uuid[0], 16) == 0)
                        chain[n++] = post[0];
                else if (memcmp(p, sc->extra_uuid, 16) == 0)
                        chain[n++] = extra;
                else
                        FAIL("%s: the child links to neither the old nor the new parent", what);
                chain[n++] = post[1];
        } else
                for (unsigned i = 0; i < sc->n; i++)
                        chain[n++] = post[i];
        return n;
}

/* The images after the run (post[faulted] is the crash or error state). */
static void verify(scenario *sc, vdisk_io **post, wl *w, const char *what) {
        vdisk_io *chain[3];
        unsigned n;
        vdisk_disk *d;

        stats.images++;
        n = chain_of(sc, post, w->extra, chain, what);
        d = open_ios(chain, n, VDISK_OPEN_READONLY, what);
        for (unsigned i = 0; i < n; i++)
                check_crashed(d, i, chain[i], what);
        verify_allowed(d, w->a, what);
        vdisk_disk_unref(d);
        verify_snapshot(sc, chain[sc->faulted], what);

        /* a forward merge's target alone: old or merged content per sector */
        if (sc->verify == V_MERGE_FWD || sc->verify == V_MERGE_FWD3) {
                allowed a2;
                char what2[200];

                allowed_init(&a2);
                allowed_reset(&a2, sc->target_old, DISK_SIZE);
                allowed_add(&a2, sc->target_new, 0, DISK_SIZE);
                snprintf(what2, sizeof what2, "%s (the merge target alone)", what);
                d = open_ios(post, 1, VDISK_OPEN_READONLY, what2);
                verify_allowed(d, &a2, what2);
                vdisk_disk_unref(d);
                allowed_free(&a2);
        }

        /* the image is usable: write into it, flush, check, read back */
        {
                vdisk_io *copy[3];
                uint8_t buf[64 * 1024], back[sizeof buf];
                uint64_t size;
                rng r;

                for (unsigned i = 0; i < n; i++)
                        copy[i] = mem_io_clone(chain[i], vdisk_io_name(chain[i]));
                d = open_ios(copy, n, 0, what);
                size = vdisk_disk_size(d);
                rng_seed(&r, stats.images);
                rng_fill(&r, buf, sizeof buf);
                ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 3 * BLOCK + 32 * KiB));
                ASSERT_OK(vdisk_disk_write(d, buf, 512, size - 512));
                ASSERT_OK(vdisk_disk_flush(d));
                ASSERT_OK(vdisk_disk_read(d, back, sizeof back, 3 * BLOCK + 32 * KiB));
                ASSERT_MEMEQ(back, buf, sizeof buf);
                vdisk_disk_unref(d);
                d = open_ios(copy, n, VDISK_OPEN_READONLY, what);
                check_crashed(d, n - 1, copy[n - 1], what);
                ASSERT_OK(vdisk_disk_read(d, back, 512, size - 512));
                ASSERT_MEMEQ(back, buf, 512);
                vdisk_disk_unref(d);
                for (unsigned i = 0; i < n; i++)
                        vdisk_io_unref(copy[i]);
        }
}

/* ---------------------------------------------------------------- running */

static const char *kind_name(vdisk_fault_kind k) {
        switch (k) {
        case VDISK_FAULT_NONE:
                return "none";
        case VDISK_FAULT_EIO:
                return "EIO";
        case VDISK_FAULT_ENOSPC:
                return "ENOSPC";
        case VDISK_FAULT_SHORT:
                return "short";
        case VDISK_FAULT_POWER_CUT:
                return "power-cut";
        }
        return "?";
}

static uint8_t *g_model;
static allowed g_allowed;

/* Runs the scenario with a fault; returns the writes the fault io saw during
 * the operation and the close after it. */
static uint64_t run_case(scenario *sc, vdisk_fault_kind kind, uint64_t after) {
        vdisk_fault f = { .size = sizeof f, .kind = kind, .after = after, .fail_flush = 1 };
        vdisk_io *inner[3], *ios[3], *fio = NULL, *post[3];
        wl w = { .model = g_model, .size = DISK_SIZE, .a = &g_allowed };

        if (sc->extra)
                w.extra = mem_io_clone(sc->extra, vdisk_io_name(sc->extra));
        char what[200];
        uint64_t writes;
        int r = 0, fired;

        snprintf(what, sizeof what, "%s, %s after %" PRIu64 " writes", sc->name, kind_name(kind), after);
        test_set_context("%s (rerun: test-crash %s)", what, sc->name);
        stats.cases++;
        for (unsigned i = 0; i < sc->n; i++) {
                inner[i] = mem_io_clone(sc->tmpl[i], vdisk_io_name(sc->tmpl[i]));
                ios[i] = inner[i];
        }
        ASSERT_OK(vdisk_io_new_fault(inner[sc->faulted], &f, &fio));
        ios[sc->faulted] = fio;
        memset(g_model, 0, MAX_SIZE);
        memcpy(g_model, sc->content, DISK_SIZE);
        allowed_reset(&g_allowed, sc->content, DISK_SIZE);

        w.d = disk_new();
        for (unsigned i = 0; i < sc->n && r == 0; i++)
                r = vdisk_disk_open(w.d, ios[i], g_fmt, 0);
        if (r < 0 && !vdisk_io_fault_fired(fio))
                FAIL("%s: opening the images failed: %d (%s)", what, r, strerror(-r));
        if (r == 0)
                r = sc->op(sc, &w);
        fired = vdisk_io_fault_fired(fio);
        writes = vdisk_io_fault_writes(fio);
        if (r < 0) {
                int want = kind == VDISK_FAULT_ENOSPC ? -ENOSPC : -EIO;

                if (!fired)
                        FAIL("%s: the operation failed without a fault: %d (%s)", what, r, strerror(-r));
                test_check_clean_error(__FILE__, __LINE__, what, r);
                if (r != want)
                        FAIL("%s: the operation failed with %d (%s), expected %d (%s)", what, r,
                             strerror(-r),
                             want, strerror(-want));
        } else if (fired)
                FAIL("%s: the fault fired but the operation reported success", what);
        else if (kind == VDISK_FAULT_NONE && sc->after_success)
                sc->after_success(sc, &w);
        /* closing may write too (a cut there counts as well) */
        w.d = vdisk_disk_unref(w.d);
        writes = MAX(writes, vdisk_io_fault_writes(fio));

        for (unsigned i = 0; i < sc->n; i++)
                post[i] = inner[i];
        if (kind == VDISK_FAULT_POWER_CUT) {
                for (unsigned seed = 0; seed < MIN(n_crash_seeds, sc->max_crash_seeds ? sc->max_crash_seeds :
                                                                                  n_crash_seeds); seed++) {
                        vdisk_io *crash = NULL;
                        char what2[240];

                        snprintf(what2, sizeof what2, "%s, crash image seed %u", what, seed);
                        test_set_context("%s (rerun: test-crash %s)", what2, sc->name);
                        ASSERT_OK(vdisk_io_fault_crash_image(fio, seed, &crash));
                        post[sc->faulted] = crash;
                        verify(sc, post, &w, what2);
                        if (sc->verify_image)
                                sc->verify_image(sc, crash, what2);
                        if (have_qemu && sc->qemu &&
                            (sc->qemu_every ? seed == 0 && after % sc->qemu_every == 0 : seed < 2))
                                run_qemu_check(crash, what2);
                        vdisk_io_unref(crash);
                }
        } else {
                verify(sc, post, &w, what);
                if (sc->verify_image)
                        sc->verify_image(sc, post[sc->faulted], what);
                if (have_qemu && sc->qemu && (!sc->qemu_every || after % sc->qemu_every == 0))
                        run_qemu_check(post[sc->faulted], what);
        }
        if (kind == VDISK_FAULT_NONE) {
                /* what the operation is meant to leave */
                vdisk_io *chain[3];
                unsigned n = chain_of(sc, post, w.extra, chain, what);
                vdisk_disk *d = open_ios(chain, n, VDISK_OPEN_READONLY, what);

                free(sc->intended);
                sc->intended = disk_read_all(d, &sc->intended_size);
                vdisk_disk_unref(d);
        }

        vdisk_io_unref(fio);
        vdisk_io_unref(w.extra);
        free(w.fail_data);
        for (unsigned i = 0; i < sc->n; i++)
                vdisk_io_unref(inner[i]);
        return writes;
}

/* ---------------------------------------------------------------- transient faults */

static char absorbed[2048];

/* What the chain must read right after the call: if it failed, exactly what
 * it read before (a write workload: each sector its content before the failed
 * call or that call's data); if it succeeded, what the operation is meant to
 * leave. A call that failed only in a flush made all its writes: the chain
 * may read as before or as after the operation (a write workload: its
 * writes so far). Returns the bytes read. */
static uint8_t *check_after_call(scenario *sc, wl *w, vdisk_disk *d, int failed, int flush_fault,
                                 uint64_t *ret_size, const char *what) {
        uint64_t size;
        uint8_t *got = disk_read_all(d, &size);

        if (failed && flush_fault && !sc->per_sector && size == sc->intended_size &&
            memcmp(got, sc->intended, size) == 0)
                stats.flush_fault_done++;
        else if (!failed) {
                ASSERT_EQ_U64(size, sc->intended_size);
                if (memcmp(got, sc->intended, size) != 0)
                        FAIL("%s: the call succeeded but the chain does not read what it should", what);
        } else if (sc->per_sector) {
                if (size != w->size)
                        FAIL("%s: the disk size changed from %" PRIu64 " to %" PRIu64, what, w->size, size);
                for (uint64_t off = 0; off < size; off += 512) {
                        if (memcmp(got + off, w->model + off, 512) == 0)
                                continue;
                        if (w->fail_len && off >= w->fail_off && off - w->fail_off < w->fail_len &&
                            memcmp(got + off, w->fail_data + (off - w->fail_off), 512) == 0)
                                continue;
                        FAIL("%s: sector %" PRIu64 " (offset 0x%" PRIx64 ", block %" PRIu64 ") reads neither "
                             "its content before the failed call nor that call's data (it %s zeros)",
                             what, off / 512, off, off / BLOCK, buf_is_zero(got + off, 512) ? "reads" : "does not read");
                }
        } else {
                if (size != DISK_SIZE)
                        FAIL("%s: the failed call changed the disk size from %" PRIu64 " to %" PRIu64, what,
                             DISK_SIZE, size);
                for (uint64_t off = 0; off < size; off += 512)
                        if (memcmp(got + off, sc->content + off, 512) != 0)
                                FAIL("%s: after the failed call, sector %" PRIu64 " (offset 0x%" PRIx64
                                     ", block %" PRIu64 ") no longer reads as before (it %s zeros)", what,
                                     off / 512, off, off / BLOCK,
                                     buf_is_zero(got + off, 512) ? "reads" : "does not read");
        }
        *ret_size = size;
        return got;
}

/* The one corruption a check may report for the documented count-ahead
 * state, seen in memory: the header's allocated count above the map's
 * references (and no reference past the count). */
static int report_count_ahead_only(const vdisk_check_report *rep) {
        int ahead = 0;

        if (rep->corruptions != 1 || !rep->messages)
                return 0;
        for (char **m = rep->messages; *m; m++) {
                unsigned header, refs;

                if (strstr(*m, "past the allocated count"))
                        return 0;
                if (sscanf(*m, "allocated blocks mismatch: the header says %u, the map references %u", &header,
                           &refs) == 2 && header > refs)
                        ahead = 1;
        }
        return ahead;
}

/* vdisk_check of every image of an open chain: no corruption (leaks allowed;
 * so is the count-ahead state, which is a leak our check counts as one
 * corruption, see the top of the file). */
static void check_open_chain(vdisk_disk *d, const char *what) {
        if (strcmp(g_fmt, "qcow") == 0)
                return;   /* no check (callers run qcow1_check on the bytes) */
        for (unsigned i = 0; i < vdisk_disk_count(d); i++) {
                vdisk_check_report rep;

                check_image_report(d, i, &rep);
                if (report_count_ahead_only(&rep) && !rep.check_errors)
                        stats.count_ahead++;
                else if ((rep.corruptions && !copied_lag_only(&rep)) || rep.check_errors) {
                        print_check_messages(&rep);
                        FAIL("%s: image %u: %" PRIu64 " corruptions, %" PRIu64 " check errors", what, i,
                             rep.corruptions, rep.check_errors);
                }
                if (rep.leaks)
                        stats.leaky++;
                vdisk_check_report_clear(&rep);
        }
}

/* One transient fault: write number `after` fails once with `kind` (NONE:
 * no write fault), or flush number `flush_at` (1-based, 0: none) fails once.
 * The call fails with that error, or succeeds when the fault hit a write
 * nothing depended on (counted and listed). Then:
 *   1. the chain, through the same handle, reads as check_after_call() says,
 *      and vdisk_check finds no corruption;
 *   2. a flush (the io has recovered) succeeds; closed and reopened, the chain
 *      reads the same bytes, and passes the structural checks;
 *   3. the operation retried without a fault succeeds, and closed and
 *      reopened, the chain reads what the operation is meant to leave.
 * Returns the writes (high 32 bits: flushes) the faulted io saw up to the end
 * of step 1's flush. */
static uint64_t run_transient(scenario *sc, vdisk_fault_kind kind, uint64_t after, uint64_t flush_at) {
        vdisk_fault f = { .size = sizeof f, .kind = kind, .after = after, .once = 1, .fail_flush_at = flush_at };
        vdisk_io *inner[3], *ios[3], *fio = NULL, *chain[3];
        wl w = { .model = g_model, .size = DISK_SIZE, .a = &g_allowed };
        vdisk_disk *d;
        uint8_t *first, *again;
        uint64_t size, size2, writes, flushes;
        char what[200];
        unsigned n;
        int r = 0, fired;

        if (flush_at)
                snprintf(what, sizeof what, "%s, flush #%" PRIu64 " fails once", sc->name, flush_at);
        else
                snprintf(what, sizeof what, "%s, transient %s at write %" PRIu64, sc->name, kind_name(kind),
                         after);
        test_set_context("%s (rerun: test-crash %s)", what, sc->name);
        stats.transient++;
        for (unsigned i = 0; i < sc->n; i++) {
                inner[i] = mem_io_clone(sc->tmpl[i], vdisk_io_name(sc->tmpl[i]));
                ios[i] = inner[i];
        }
        if (sc->extra)
                w.extra = mem_io_clone(sc->extra, vdisk_io_name(sc->extra));
        ASSERT_OK(vdisk_io_new_fault(inner[sc->faulted], &f, &fio));
        ios[sc->faulted] = fio;
        memset(g_model, 0, MAX_SIZE);
        memcpy(g_model, sc->content, DISK_SIZE);
        allowed_reset(&g_allowed, sc->content, DISK_SIZE);

        w.d = open_ios(ios, sc->n, 0, what);
        r = sc->op(sc, &w);
        if (r >= 0 && !vdisk_io_fault_fired(fio))
                r = vdisk_disk_flush(w.d);      /* what closing would write */
        fired = vdisk_io_fault_fired(fio);
        writes = vdisk_io_fault_writes(fio);
        flushes = vdisk_io_fault_flushes(fio);
        if (r < 0) {
                int want = kind == VDISK_FAULT_ENOSPC ? -ENOSPC : -EIO;

                if (!fired)
                        FAIL("%s: the operation failed without a fault: %d (%s)", what, r, strerror(-r));
                test_check_clean_error(__FILE__, __LINE__, what, r);
                if (r != want)
                        FAIL("%s: the operation failed with %d (%s), expected %d (%s)", what, r, strerror(-r),
                             want, strerror(-want));
        } else if (fired) {
                size_t l = strlen(absorbed);

                stats.absorbed++;
                snprintf(absorbed + l, sizeof absorbed - l, "%s%s", l ? "; " : "", what);
        } else if (kind != VDISK_FAULT_NONE || flush_at)
                FAIL("%s: the fault never fired (the workload wrote less than in the run without a fault)",
                     what);

        /* 1. through the same handle */
        first = check_after_call(sc, &w, w.d, r < 0, flush_at != 0, &size, what);
        check_open_chain(w.d, what);

        /* 2. a later flush persists nothing bad */
        r = vdisk_disk_flush(w.d);
        if (r < 0)
                FAIL("%s: a flush after the fault (the io has recovered) fails: %d (%s)", what, r, strerror(-r));
        w.d = vdisk_disk_unref(w.d);
        n = chain_of(sc, inner, w.extra, chain, what);
        d = open_ios(chain, n, VDISK_OPEN_READONLY, what);
        again = disk_read_all(d, &size2);
        ASSERT_EQ_U64(size2, size);
        if (memcmp(again, first, size) != 0) {
                uint64_t off = 0;

                while (memcmp(again + off, first + off, 512) == 0)
                        off += 512;
                FAIL("%s: flushed, closed and reopened, the chain reads differently from sector %" PRIu64
                     " (block %" PRIu64 ") on: it %s zeros", what, off / 512, off / BLOCK,
                     buf_is_zero(again + off, 512) ? "reads" : "does not read");
        }
        for (unsigned i = 0; i < n; i++)
                check_crashed(d, i, chain[i], what);
        vdisk_disk_unref(d);
        free(first);
        free(again);
        /* qemu-img check is slow (a process and a temporary file): a sample */
        if (have_qemu && sc->qemu && kind == VDISK_FAULT_ENOSPC && after % (sc->qemu_every ? 4 * sc->qemu_every : 8) == 0)
                run_qemu_check(inner[sc->faulted], what);

        /* 3. the retry */
        test_set_context("%s, then retried without a fault (rerun: test-crash %s)", what, sc->name);
        memset(g_model, 0, MAX_SIZE);
        memcpy(g_model, sc->content, DISK_SIZE);
        allowed_reset(&g_allowed, sc->content, DISK_SIZE);
        w.size = DISK_SIZE;
        w.d = open_ios(chain, n, 0, what);
        if (n == sc->n) {
                r = sc->op(sc, &w);
                if (r < 0)
                        FAIL("%s: retried without a fault, the operation fails: %d (%s)", what, r, strerror(-r));
                if (sc->after_success && sc->op != op_compact)
                        sc->after_success(sc, &w);
                stats.retried++;
        }
        ASSERT_OK(vdisk_disk_flush(w.d));
        w.d = vdisk_disk_unref(w.d);
        n = chain_of(sc, inner, w.extra, chain, what);
        d = open_ios(chain, n, VDISK_OPEN_READONLY, what);
        again = disk_read_all(d, &size2);
        ASSERT_EQ_U64(size2, sc->intended_size);
        if (memcmp(again, sc->intended, size2) != 0)
                FAIL("%s: after the retry the chain does not read what the operation should leave", what);
        for (unsigned i = 0; i < n; i++)
                check_crashed(d, i, chain[i], what);
        free(again);
        vdisk_disk_unref(d);
        if (sc->verify == V_MERGE_FWD || sc->verify == V_MERGE_FWD3) {
                /* the target alone holds the merged content */
                d = open_ios(inner, 1, VDISK_OPEN_READONLY, what);
                again = disk_read_all(d, &size2);
                ASSERT_MEMEQ(again, sc->target_new, DISK_SIZE);
                free(again);
                vdisk_disk_unref(d);
        }

        vdisk_io_unref(fio);
        vdisk_io_unref(w.extra);
        free(w.fail_data);
        for (unsigned i = 0; i < sc->n; i++)
                vdisk_io_unref(inner[i]);
        return writes | flushes << 32;
}

static double now(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void run_scenario(scenario *sc) {
        double t0 = now();
        uint64_t w, tw, tf, images0 = stats.images;

        if (sc->n == 0)
                sc->n = 1;
        g_fmt = sc->fmt ? sc->fmt : crash_fmt;
        g_opts = sc->opts;
        g_copied_lag = sc->copied_lag;
        test_set_context("building %s", sc->name);
        sc->build(sc);
        sc->content = read_view(sc->tmpl, sc->n);
        if (sc->verify == V_MERGE_FWD || sc->verify == V_MERGE_FWD3) {
                sc->target_old = read_view(sc->tmpl, 1);
                sc->target_new = read_view(sc->tmpl, 2);
        }
        if (sc->qemu && have_qemu) {
                /* (the repair template has a leaked slot: qemu calls that an
                 * "allocated blocks mismatch", exit 2, accepted as count-ahead) */
                int st;

                test_set_context("%s: the template", sc->name);
                st = run_qemu_check(sc->tmpl[sc->faulted], "template");
                if (sc->op != op_repair)
                        ASSERT_EQ_U64(st, 0);
        }

        w = run_case(sc, VDISK_FAULT_NONE, 0);
        ASSERT(w > 0);
        if (sc->max_writes && w > sc->max_writes)
                FAIL("%s: %" PRIu64 " writes, more than %" PRIu64, sc->name, w, sc->max_writes);
        for (uint64_t n = 0; n <= w; n++) {
                run_case(sc, VDISK_FAULT_POWER_CUT, n);
                run_case(sc, VDISK_FAULT_EIO, n);
                run_case(sc, VDISK_FAULT_ENOSPC, n);
        }
        printf("%-22s %3" PRIu64 " writes, %5" PRIu64 " images verified in %5.1fs\n", sc->name, w,
               stats.images - images0, now() - t0);
        fflush(stdout);

        /* transient faults: every write, every flush */
        t0 = now();
        tw = run_transient(sc, VDISK_FAULT_NONE, 0, 0);
        tf = tw >> 32;
        tw &= UINT32_MAX;
        for (uint64_t n = 0; n < tw; n++) {
                run_transient(sc, VDISK_FAULT_EIO, n, 0);
                run_transient(sc, VDISK_FAULT_ENOSPC, n, 0);
                run_transient(sc, VDISK_FAULT_SHORT, n, 0);
        }
        for (uint64_t n = 1; n <= tf; n++)
                run_transient(sc, VDISK_FAULT_NONE, 0, n);
        printf("%-22s %3" PRIu64 " writes, %3" PRIu64 " flushes failed once each and retried in %5.1fs\n",
               sc->name, tw, tf, now() - t0);
        fflush(stdout);

        for (unsigned i = 0; i < sc->n; i++)
                vdisk_io_unref(sc->tmpl[i]);
        free(sc->content);
        free(sc->target_old);
        free(sc->target_new);
        free(sc->intended);
        vdisk_io_unref(sc->extra);
}

/* ---------------------------------------------------------------- convert: the source never changes */

static void test_copy_faults(void) {
        vdisk_io *src[2];
        uint8_t *src_bytes[2], *content;
        size_t src_len[2];
        uint64_t size, w = 0;
        vdisk_disk *sd = disk_new();
        vdisk_copy_opts o = { .size = sizeof o, .create = { .size = sizeof o.create }, .from_same = -1,
                              .to_same = -1 };
        double t0 = now();
        rng r;

        g_fmt = crash_fmt;   /* after the scenarios of other formats */

        rng_seed(&r, 9);
        src[0] = mem_io("crash-copy-src-0.vdi", NULL, 0);
        src[1] = mem_io("crash-copy-src-1.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(sd, src[0], crash_fmt, DISK_SIZE, base_opts()));
        for (uint64_t b = 0; b < 8; b += 2)
                fill_block(sd, &r, b, 0, BLOCK);
        ASSERT_OK(vdisk_disk_create_diff(sd, src[1], crash_fmt, NULL));
        fill_block(sd, &r, 3, 0, BLOCK);
        fill_block(sd, &r, 4, 4096, 4096);
        sd = vdisk_disk_unref(sd);
        for (unsigned i = 0; i < 2; i++)
                src_bytes[i] = mem_io_copy(src[i], &src_len[i]);
        sd = open_ios(src, 2, 0, "copy source");
        content = disk_read_all(sd, &size);

        /* passes 3-5: transient faults (the destination's file system gets
         * space back); the copy fails all the same and the source is untouched */
        for (int pass = 0; pass < 6; pass++) {
                static const vdisk_fault_kind kinds[] = { VDISK_FAULT_NONE, VDISK_FAULT_EIO, VDISK_FAULT_ENOSPC,
                                                          VDISK_FAULT_EIO, VDISK_FAULT_ENOSPC, VDISK_FAULT_SHORT };
                vdisk_fault_kind kind = kinds[pass];
                uint64_t last = pass == 0 ? 0 : pass < 3 ? w : w - 1;

                for (uint64_t n = 0; n <= last; n++) {
                        vdisk_fault f = { .size = sizeof f, .kind = kind, .after = n, .fail_flush = 1,
                                          .once = pass >= 3 };
                        vdisk_io *dinner = mem_io("crash-copy-dst.vdi", NULL, 0), *dio;
                        vdisk_disk *dd = disk_new();
                        int ret;

                        test_set_context("copy to a destination with %s %s %" PRIu64 " writes",
                                         pass >= 3 ? "transient" : "persistent", kind_name(kind), n);
                        ASSERT_OK(vdisk_io_new_fault(dinner, &f, &dio));
                        ret = vdisk_copy(sd, dd, dio, crash_fmt, &o, NULL);
                        if (pass >= 3 && ret >= 0)
                                FAIL("a copy whose destination failed a write once reported success");
                        if (ret < 0) {
                                int want = kind == VDISK_FAULT_ENOSPC ? -ENOSPC : -EIO;

                                ASSERT(vdisk_io_fault_fired(dio));
                                test_check_clean_error(__FILE__, __LINE__, "vdisk_copy", ret);
                                ASSERT_ERR(ret, want);
                        } else {
                                uint64_t dsize;
                                uint8_t *got;

                                ASSERT(!vdisk_io_fault_fired(dio));
                                got = disk_read_all(dd, &dsize);
                                ASSERT_EQ_U64(dsize, size);
                                ASSERT_MEMEQ(got, content, size);
                                free(got);
                        }
                        if (pass == 0)
                                w = vdisk_io_fault_writes(dio);
                        vdisk_disk_unref(dd);
                        vdisk_io_unref(dio);
                        vdisk_io_unref(dinner);

                        /* the source: same content, same bytes, still clean */
                        {
                                uint64_t s2;
                                uint8_t *again = disk_read_all(sd, &s2);

                                ASSERT_EQ_U64(s2, size);
                                ASSERT_MEMEQ(again, content, size);
                                free(again);
                        }
                        for (unsigned i = 0; i < 2; i++) {
                                size_t len;
                                uint8_t *now_bytes = mem_io_copy(src[i], &len);

                                ASSERT_EQ_U64(len, src_len[i]);
                                ASSERT_MEMEQ(now_bytes, src_bytes[i], len);
                                free(now_bytes);
                        }
                }
        }
        if (fmt_vdi) {
                CHECK_IMAGE_CLEAN(sd, 0);
                CHECK_IMAGE_CLEAN(sd, 1);
        }
        vdisk_disk_unref(sd);
        for (unsigned i = 0; i < 2; i++) {
                size_t len;
                uint8_t *now_bytes = mem_io_copy(src[i], &len);

                ASSERT_EQ_U64(len, src_len[i]);
                ASSERT_MEMEQ(now_bytes, src_bytes[i], len);
                free(now_bytes);
                free(src_bytes[i]);
                vdisk_io_unref(src[i]);
        }
        free(content);
        printf("%-22s %3" PRIu64 " writes, source unchanged through %" PRIu64 " failed copies in %5.1fs\n",
               "copy-source", w, 2 * (w + 1) + 3 * w, now() - t0);
}

/* ---------------------------------------------------------------- compressed convert (qcow2 -c)
 *
 * A copy with compress into a new qcow2 (4 KiB clusters: random, text, zero
 * and low-entropy clusters, a short last cluster) under a destination fault
 * at every write: EIO (persistent and once) and power cuts (crash images of
 * three seeds). Whatever the destination file then holds, if it opens, has no
 * corruption (leaks at worst; qemu-img check agrees on a sample), and every
 * cluster reads either zeros (not written yet) or the source's data. It may
 * fail to open only before its creation was written (EIO) or, after a power
 * cut, before the first flush made it durable (nothing of it is promised
 * before: the incomplete file is the caller's to remove). */

#define CC_SIZE (1 * MiB + 1024)
static const char *const qcow2_4k_zlib[] = { "cluster_size", "4096", NULL };

static bool cc_zero(const uint8_t *p, size_t len) {
        for (size_t i = 0; i < len; i++)
                if (p[i])
                        return false;
        return true;
}

/* Returns the leaks vdisk_check found (UINT64_MAX: the image did not open). */
static uint64_t cc_verify(vdisk_io *img, const uint8_t *content, bool may_fail, bool qemu, const char *what) {
        vdisk_io *io = mem_io_clone(img, "crash-cc-dst.qcow2");
        vdisk_disk *d = disk_new();
        vdisk_check_report rep;
        uint8_t *got;
        uint64_t size, leaks;
        int r;

        r = vdisk_disk_open(d, io, "qcow2", VDISK_OPEN_READONLY);
        if (r < 0) {
                if (!may_fail)
                        FAIL("%s: the destination does not open (%d: %s)", what, r, vdisk_last_error());
                vdisk_disk_unref(d);
                vdisk_io_unref(io);
                return UINT64_MAX;
        }
        check_image_report(d, 0, &rep);
        if (rep.corruptions || rep.check_errors) {
                print_check_messages(&rep);
                FAIL("%s: %" PRIu64 " corruptions, %" PRIu64 " check errors", what, rep.corruptions,
                     rep.check_errors);
        }
        if (rep.leaks)
                stats.leaky++;
        leaks = rep.leaks;
        vdisk_check_report_clear(&rep);
        got = disk_read_all(d, &size);
        ASSERT_EQ_U64(size, CC_SIZE);
        for (uint64_t off = 0; off < size; off += 4096) {
                size_t len = (size_t) MIN((uint64_t) 4096, size - off);

                if (memcmp(got + off, content + off, len) != 0 && !cc_zero(got + off, len))
                        FAIL("%s: the cluster at %" PRIu64 " holds neither zeros nor the source's data", what, off);
        }
        stats.images++;
        free(got);
        vdisk_disk_unref(d);
        if (qemu && have_qemu)
                run_qemu_check(io, what);
        vdisk_io_unref(io);
        return leaks;
}

static void test_compress_copy_faults(void) {
        vdisk_io *src = mem_io("crash-cc-src.qcow2", NULL, 0);
        vdisk_disk *sd = disk_new();
        vdisk_copy_opts o = { .size = sizeof o, .from_same = -1, .to_same = -1, .compress = 1,
                              .create = { .size = sizeof o.create, .options = qcow2_4k_zlib } };
        uint8_t *content = malloc(CC_SIZE);
        uint64_t w = 0, create_writes, size, runs = 0;
        const char *saved_fmt = g_fmt;
        double t0 = now();
        rng r;

        ASSERT(content);
        g_fmt = "qcow2";
        rng_seed(&r, 21);
        for (uint64_t off = 0; off < CC_SIZE; off += 4096) {
                size_t len = (size_t) MIN((uint64_t) 4096, CC_SIZE - off);

                switch (off / 4096 % 4) {
                case 0:
                        rng_fill(&r, content + off, len);
                        break;
                case 1:
                        for (size_t i = 0; i < len; i++)
                                content[off + i] = (uint8_t) "compressed clusters, packed "[(i + off / 7) % 28];
                        break;
                case 2:
                        memset(content + off, 0, len);
                        break;
                default:
                        rng_fill(&r, content + off, len);
                        for (size_t i = 0; i < len; i++)
                                content[off + i] &= 0x0f;
                }
        }
        ASSERT_OK(vdisk_disk_create_base(sd, src, "qcow2", CC_SIZE, NULL));
        ASSERT_OK(vdisk_disk_write(sd, content, CC_SIZE, 0));
        ASSERT_OK(vdisk_disk_flush(sd));

        /* the writes of creating the empty image */
        {
                vdisk_io *inner = mem_io("crash-cc-count.qcow2", NULL, 0), *fio;
                vdisk_fault f = { .size = sizeof f, .kind = VDISK_FAULT_NONE };
                vdisk_disk *dd = disk_new();

                ASSERT_OK(vdisk_io_new_fault(inner, &f, &fio));
                ASSERT_OK(vdisk_disk_create_base(dd, fio, "qcow2", CC_SIZE, &o.create));
                create_writes = vdisk_io_fault_writes(fio);
                vdisk_disk_unref(dd);
                vdisk_io_unref(fio);
                vdisk_io_unref(inner);
        }

        /* pass 0: no fault (counts the writes); 1: EIO from write n on;
         * 2: EIO at write n only; 3: power cut after n writes */
        for (int pass = 0; pass < 4; pass++) {
                for (uint64_t n = 0; n <= (pass == 0 ? 0 : w - 1); n++) {
                        static const vdisk_fault_kind kinds[] = { VDISK_FAULT_NONE, VDISK_FAULT_EIO, VDISK_FAULT_EIO,
                                                                  VDISK_FAULT_POWER_CUT };
                        vdisk_fault f = { .size = sizeof f, .kind = kinds[pass], .after = n, .fail_flush = 1,
                                          .once = pass == 2 };
                        vdisk_io *inner = mem_io("crash-cc-dst.qcow2", NULL, 0), *dio;
                        vdisk_disk *dd = disk_new();
                        char what[160];
                        int ret;

                        snprintf(what, sizeof what, "compressed copy, %s at write %" PRIu64,
                                 pass == 0 ? "no fault" : pass == 1 ? "EIO from" : pass == 2 ? "EIO once" :
                                 "power cut", n);
                        test_set_context("%s (rerun: VDISK_CRASH_FORMAT=qcow2 test-crash qcow2-copy-compress)", what);
                        ASSERT_OK(vdisk_io_new_fault(inner, &f, &dio));
                        ret = vdisk_copy(sd, dd, dio, "qcow2", &o, NULL);
                        runs++;
                        if (pass == 0) {
                                ASSERT_OK(ret);
                                w = vdisk_io_fault_writes(dio);
                                vdisk_disk_unref(dd);
                                dd = NULL;
                                ASSERT_EQ_U64(cc_verify(inner, content, false, true, what), 0);
                                {
                                        vdisk_disk *cd = open_ios(&inner, 1, VDISK_OPEN_READONLY, what);
                                        uint8_t *got = disk_read_all(cd, &size);

                                        ASSERT_MEMEQ(got, content, CC_SIZE);
                                        free(got);
                                        vdisk_disk_unref(cd);
                                }
                        } else {
                                if (ret >= 0)
                                        FAIL("%s: the copy reported success", what);
                                ASSERT(vdisk_io_fault_fired(dio));
                                vdisk_disk_unref(dd);
                                dd = NULL;
                                if (pass == 3) {
                                        bool durable = false;

                                        for (unsigned seed = 0; seed < 3; seed++) {
                                                vdisk_io *crash = NULL;
                                                const void *data;
                                                size_t len;

                                                ASSERT_OK(vdisk_io_fault_crash_image(dio, seed, &crash));
                                                /* seed 0 keeps only what was flushed: once the
                                                 * creation was, every crash image must open */
                                                ASSERT_OK(vdisk_io_memory_data(crash, &data, &len));
                                                if (seed == 0)
                                                        durable = len >= 4 && memcmp(data, "QFI\xfb", 4) == 0;
                                                (void) cc_verify(crash, content, !durable,
                                                                 seed == 0 && n % 16 == 0, what);
                                                vdisk_io_unref(crash);
                                        }
                                } else
                                        (void) cc_verify(inner, content, n < create_writes, n % 32 == 0, what);
                        }
                        vdisk_disk_unref(dd);
                        vdisk_io_unref(dio);
                        vdisk_io_unref(inner);
                }
        }
        {
                uint8_t *again = disk_read_all(sd, &size);

                ASSERT_MEMEQ(again, content, CC_SIZE);
                free(again);
        }
        vdisk_disk_unref(sd);
        vdisk_io_unref(src);
        free(content);
        g_fmt = saved_fmt;
        printf("%-22s %3" PRIu64 " writes (%" PRIu64 " to create), %" PRIu64 " faulted copies in %5.1fs\n",
               "qcow2-copy-compress", w, create_writes, runs, now() - t0);
}

/* VDISK_CRASH_SHARD=i/n: this run takes the i-th of n shares (0-based) of
 * the scenarios it selects, round robin in table order, the copy-source and
 * compress-copy runs last; meson runs the shares as separate tests, in
 * parallel, so no one test holds the whole suite's time (under ASan). */
static unsigned shard_i, shard_n = 1, shard_k;

static bool shard_take(void) {
        return shard_k++ % shard_n == shard_i;
}

static void shard_parse(void) {
        const char *e = getenv("VDISK_CRASH_SHARD");

        if (!e)
                return;
        if (sscanf(e, "%u/%u", &shard_i, &shard_n) != 2 || shard_n == 0 || shard_i >= shard_n)
                FAIL("VDISK_CRASH_SHARD=\"%s\": expected i/n with i < n", e);
        printf("share %u of %u (VDISK_CRASH_SHARD=%s)\n", shard_i, shard_n, e);
}

int main(int argc, char **argv) {
        const char *only = argc > 1 ? argv[1] : "all";
        const char *t = getenv("TMPDIR");
        uint8_t zero[512] = { 0 };
        int matched = 0;

        if (argc > 2)
                n_crash_seeds = (unsigned) strtoul(argv[2], NULL, 0);
        snprintf(tmpdir, sizeof tmpdir, "%s", t && t[0] ? t : "/tmp");
        have_qemu = access(QEMU_IMG, X_OK) == 0;
        if (!have_qemu)
                printf("%s not found: skipping the qemu-img check oracle\n", QEMU_IMG);
        if (getenv("VDISK_CRASH_FORMAT") && strcmp(getenv("VDISK_CRASH_FORMAT"), "qcow2") == 0) {
                /* the qcow2-* scenarios alone (test crash-qcow2) */
                only_qcow2 = true;
#ifdef CRASH_ASAN
                if (strcmp(only, "all") == 0)
                        only = "qcow2-writes-refblocks";
#endif
        } else if (getenv("VDISK_CRASH_FORMAT") && strcmp(getenv("VDISK_CRASH_FORMAT"), "vdi") != 0) {
                ASSERT(strcmp(getenv("VDISK_CRASH_FORMAT"), "vpc") == 0);
                crash_fmt = "vpc";
                fmt_vdi = false;
                have_qemu = 0;   /* qemu-img check has no vpc support */
#ifdef CRASH_ASAN
                /* Under ASan (25x slower) the VDI suite already covers the
                 * core's paths: VHD keeps one base and one top scenario,
                 * the BAT move, and two crash images a cut (no copy-source). */
                if (argc <= 2)
                        n_crash_seeds = 2;
                asan_subset = true;
#endif
                printf("VHD: structure verified by vdisk_check only (qemu-img has no vpc check)\n");
        }
        shard_parse();
        zero_hash = hash64(zero, sizeof zero);
        g_model = malloc(MAX_SIZE);
        ASSERT(g_model);
        allowed_init(&g_allowed);

        for (size_t i = 0; i < ELEMENTSOF(scenarios); i++) {
                if (strcmp(only, "all") != 0 && strcmp(only, scenarios[i].name) != 0)
                        continue;
                /* qcow2-*: in their own test (VDISK_CRASH_FORMAT=qcow2) */
                if (strcmp(only, "all") == 0 && only_qcow2 != (strncmp(scenarios[i].name, "qcow2-", 6) == 0))
                        continue;
                /* (and the bitmaps one in a test of its own: crash-qcow2-bitmaps) */
                if (strcmp(only, "all") == 0 && strcmp(scenarios[i].name, "qcow2-writes-bitmaps") == 0)
                        continue;
                if (!fmt_vdi && strncmp(scenarios[i].name, "writes-", 7) != 0 &&
                    strncmp(scenarios[i].name, "resize-", 7) != 0 &&
                    strncmp(scenarios[i].name, "compact-", 8) != 0 &&
                    strcmp(scenarios[i].name, "convert-existing") != 0)
                        continue;
                if (asan_subset && strcmp(only, "all") == 0 && strcmp(scenarios[i].name, "writes-base") != 0 &&
                    strcmp(scenarios[i].name, "compact-top") != 0 && strcmp(scenarios[i].name, "resize-top") != 0)
                        continue;
#ifdef CRASH_ASAN
                /* Under ASan QED keeps its diff scenario only (the base one
                 * costs a minute of CPU in the plain build). */
                if (strcmp(only, "all") == 0 && strcmp(scenarios[i].name, "qed-writes-base") == 0)
                        continue;
                /* ... and so does QCOW v1 */
                if (strcmp(only, "all") == 0 && strcmp(scenarios[i].name, "qcow-writes-base") == 0)
                        continue;
                /* qcow2-snapshot-writes costs what qcow2-writes-base does;
                 * under ASan, copy on write runs (unfaulted) in the writes
                 * qcow2-snapshot verifies each crash image with */
                if (strcmp(only, "all") == 0 && strcmp(scenarios[i].name, "qcow2-snapshot-writes") == 0)
                        continue;
#endif
                matched = 1;
                if (shard_take())
                        run_scenario(&scenarios[i]);
        }
        g_opts = NULL;
        if ((strcmp(only, "all") == 0 && !asan_subset && !only_qcow2) || strcmp(only, "copy-source") == 0) {
                matched = 1;
                if (shard_take())
                        test_copy_faults();
        }
        if ((strcmp(only, "all") == 0 && only_qcow2) || strcmp(only, "qcow2-copy-compress") == 0) {
                matched = 1;
                if (shard_take())
                        test_compress_copy_faults();
        }
        if (!matched)
                FAIL("no scenario named \"%s\"", only);
        printf("%" PRIu64 " fault runs, %" PRIu64 " resulting images verified (%" PRIu64
               " with the count ahead "
               "of the map, %" PRIu64 " with leaks), %" PRIu64 " qemu-img checks\n",
               stats.cases, stats.images, stats.count_ahead, stats.leaky, stats.qemu_runs);
        if (stats.copied_lag)
                printf("%" PRIu64 " checks found only the OFLAG_COPIED lag of a snapshot create or delete\n", stats.copied_lag);
        if (stats.bitmaps_consistent + stats.bitmaps_in_use > 0) {
                printf("qcow2 bitmaps after a fault: %" PRIu64 " consistent, %" PRIu64 " left in use\n",
                       stats.bitmaps_consistent, stats.bitmaps_in_use);
                /* both states must occur: the cuts fall before and after the marks */
                ASSERT(stats.bitmaps_consistent > 0 && stats.bitmaps_in_use > 0);
        }
        printf("%" PRIu64 " transient faults, %" PRIu64 " retried; %" PRIu64 " hit a write the call did not "
               "depend on%s%s\n", stats.transient, stats.retried, stats.absorbed, absorbed[0] ? ": " : "",
               absorbed);
        printf("%" PRIu64 " operations failed in a flush with their change made (in memory)\n",
               stats.flush_fault_done);
        allowed_free(&g_allowed);
        free(g_model);
        return 0;
}
