/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `model`: the VDI (and VMDK) differencing-chain model test.
 *
 * A chain of VDI images on memory ios (a base and at least two diffs) is driven
 * by random operations while a flat byte array (the model) mirrors every
 * change the guest can see: reads are checked against it, writes (512 bytes to
 * 3 MiB, sector aligned, often straddling block boundaries, random / pattern /
 * all-zero content), discards, flushes, closing and reopening the whole chain,
 * closing and reopening the top, merges in both directions (adjacent and not),
 * compaction of any image, growing and shrinking, and periodic vdisk_check of
 * every image. Two geometries: 1 MiB blocks (the VDI default) on a 48 MiB disk
 * and 64 KiB blocks on a 3 MiB disk.
 *
 * VDISK_MODEL_FORMAT=vpc runs the same chains of VHD images (exact sizes:
 * force_size=on; 2 MiB default blocks).
 *
 * VDISK_MODEL_FORMAT=mixed runs chains whose images are VDI, VMDK and VHD in
 * turn (a VDI base, a VMDK diff, a VHD diff, a VDI diff ...; merges then make
 * every pairing): each diff links to a parent of another format. Operations
 * a format cannot do yet (VMDK resize of a diff) are tried, and must fail
 * with -EOPNOTSUPP leaving the disk as it was.
 *
 * VDISK_MODEL_FORMAT=qcow2-datafile runs QCOW2 chains whose every image keeps
 * its data in an external data file (data_file; companion memory ios through
 * a resolver): compact gives clusters that read as what shows through back
 * (unallocated, their ranges punched out of the data file) and moves the
 * metadata file's tables.
 *
 * VDISK_MODEL_FORMAT=mixed-qcow mixes all six formats, QCOW2, QCOW and QED
 * included (VDI and VHD never above one of those three: they have no UUID).
 *
 * Usage: test-model [SEED [OPS [CONFIG]]]  (default: 4 fixed seeds, both
 * configurations, 1500 operations each = 12,000 operations).
 * On failure the last operations are printed; rerun with the printed seed.
 */
#include <time.h>

#include "tests.h"
#include "vdi-layout.h"

#if defined(__SANITIZE_ADDRESS__)
#define MODEL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MODEL_ASAN 1
#endif
#endif

#define MAX_DEPTH 6
#define MIN_DEPTH 3
#define IO_CHUNK (4 * MiB)
#define HISTORY 32

typedef struct model_cfg {
        const char *name;
        uint32_t block_size;   /* passed in vdisk_create_opts; 0 = the format's default */
        uint32_t eff_block;    /* the block size in effect */
        uint64_t size;         /* initial disk size */
        uint64_t min_size;     /* shrink bound */
        uint64_t max_size;     /* grow bound (the model's capacity) */
        uint64_t max_write;
        const char *fmt;       /* NULL = "vdi" */
        uint32_t no_ops;       /* (1 << OP_*) the format cannot do yet */
        const char *const *options;     /* create options of its images (NULL: the format's) */
        /* qcow2 only: every image keeps its data in an external data file
         * (the data_file create option), a companion memory io */
        bool data_file;
} model_cfg;

static const model_cfg vdi_configs[] = {
        { "1MiB-blocks", 0, 1 * MiB, 48 * MiB, 24 * MiB, 64 * MiB, 3 * MiB },
        { "64KiB-blocks", 64 * KiB, 64 * KiB, 3 * MiB, 1536 * KiB, 4 * MiB, 1 * MiB },
        /* VMDK monolithicSparse, 64 KiB grains (compact included). */
        { "vmdk-64KiB", 0, 64 * KiB, 3 * MiB, 1536 * KiB, 4 * MiB, 1 * MiB, "vmdk" },
        /* QCOW v1 (4 KiB clusters in diffs too: block_size; qemu's 512-byte
         * diff clusters are in test-qcow-qed) and QED (64 KiB clusters): no
         * compact (bit 7), no resize (bit 8: QCOW v1 cannot resize, QED only
         * grows). */
        { "qcow-4KiB", 4 * KiB, 4 * KiB, 3 * MiB, 1536 * KiB, 4 * MiB, 1 * MiB, "qcow", 1u << 7 | 1u << 8 },
        { "qed-64KiB", 0, 64 * KiB, 3 * MiB, 1536 * KiB, 4 * MiB, 1 * MiB, "qed", 1u << 7 | 1u << 8 },
};
static const model_cfg vhd_configs[] = {
        { "2MiB-blocks", 0, 2 * MiB, 48 * MiB, 24 * MiB, 64 * MiB, 3 * MiB },
        { "64KiB-blocks", 64 * KiB, 64 * KiB, 3 * MiB, 1536 * KiB, 4 * MiB, 1 * MiB },
};
/* fmt "mixed": VDI, VMDK, VHD in turn; 64 KiB blocks in all three, then
 * each format's default (1 MiB, 64 KiB grains, 2 MiB). */
static const model_cfg mixed_configs[] = {
        { "mixed-64KiB", 64 * KiB, 64 * KiB, 3 * MiB, 1536 * KiB, 4 * MiB, 1 * MiB, "mixed" },
        { "mixed-default", 0, 1 * MiB, 48 * MiB, 24 * MiB, 64 * MiB, 3 * MiB, "mixed" },
};
/* fmt "mixed-qcow" (VDISK_MODEL_FORMAT=mixed-qcow): chains that mix all six
 * formats, each new image of a random format among those that can sit on the
 * chain: VDI and VHD diffs link by UUID and QCOW2, QCOW and QED have none, so
 * no VDI or VHD image ever sits above one of the QCOW family (merges keep the
 * order of the images, so this holds through them); VMDK and the QCOW family
 * take any parent. 64 KiB clusters in all six. What a format cannot do (compact
 * of QCOW and QED, resize of QCOW, shrinking QED) is tried and must be
 * refused with -EOPNOTSUPP, the disk as it was. */
static const model_cfg mixed_qcow_configs[] = {
        { "mixed-qcow-64KiB", 64 * KiB, 64 * KiB, 3 * MiB, 1536 * KiB, 4 * MiB, 1 * MiB, "mixed-qcow" },
};
/* QCOW2 (VDISK_MODEL_FORMAT=qcow2): diffs link their parent by name; every
 * operation, compact and resize included. 512-byte clusters move the
 * refcount table as the files grow. */
static const char *const qcow2_extl2_options[] = { "extended_l2", "on", NULL };
static const model_cfg qcow2_configs[] = {
        { "qcow2-64KiB", 0, 64 * KiB, 3 * MiB, 1536 * KiB, 4 * MiB, 1 * MiB, "qcow2", 0 },
        { "qcow2-512B", 512, 512, 3 * MiB, 1536 * KiB, 4 * MiB, 256 * KiB, "qcow2", 0 },
        /* extended L2 (2 KiB subclusters): partial writes allocate
         * subclusters, discards of whole subclusters drop them */
        { "qcow2-extl2-64KiB", 0, 64 * KiB, 3 * MiB, 1536 * KiB, 4 * MiB, 1 * MiB, "qcow2", 0,
          qcow2_extl2_options },
        /* External data files (VDISK_MODEL_FORMAT=qcow2-datafile): each
         * image's guest data in a companion file at the guest offsets; the
         * metadata file holds the tables (compacted as any other). */
        { "qcow2-datafile", 0, 64 * KiB, 3 * MiB, 1536 * KiB, 4 * MiB, 1 * MiB, "qcow2", 0, NULL, true },
};
static const model_cfg *configs = vdi_configs;
static const char *model_fmt = "vdi";
static const char *const vhd_options[] = { "force_size", "on", NULL };

enum {
        OP_READ,
        OP_WRITE,
        OP_DISCARD,
        OP_FLUSH,
        OP_REOPEN,
        OP_REOPEN_TOP,
        OP_MERGE,
        OP_COMPACT,
        OP_RESIZE,
        OP_NEW_DIFF,
        OP_MAX,
};

_Static_assert(OP_COMPACT == 7, "model_cfg.no_ops of the qcow and qed configs");
_Static_assert(OP_RESIZE == 8, "model_cfg.no_ops of the qcow2, qcow and qed configs");

/* The format of the next new image: the config's, or in a mixed chain VDI,
 * VMDK and VHD in turn. */
static bool is_fmt(const char *fmt, const char *name) {
        return strcmp(fmt, name) == 0;
}

static const char *const all_fmts[] = { "vdi", "vmdk", "vpc", "qcow2", "qcow", "qed" };

static unsigned fmt_index(const char *fmt) {
        for (unsigned i = 0; i < ELEMENTSOF(all_fmts); i++)
                if (is_fmt(fmt, all_fmts[i]))
                        return i;
        FAIL("unknown format %s", fmt);
}

/* QCOW2, QCOW and QED record no UUID: a child that links by UUID alone (VDI)
 * or records its parent's UUID (VHD) cannot sit on one of them. */
static bool fmt_has_uuid(const char *fmt) {
        return !is_fmt(fmt, "qcow2") && !is_fmt(fmt, "qcow") && !is_fmt(fmt, "qed");
}

/* A format that cannot resize (QCOW), or only grow (QED), or (formerly) VMDK:
 * a resize refused with
 * -EOPNOTSUPP leaves the disk as it was. */
static bool fmt_resize_limited(const char *fmt) {
        return is_fmt(fmt, "vmdk") || is_fmt(fmt, "qcow") || is_fmt(fmt, "qed");
}

/* A diff of this format names its parent (the QCOW family by file name
 * alone, VMDK by parentFileNameHint and CID): any parent will do. */
static bool fmt_links_by_name(const char *fmt) {
        return !fmt_has_uuid(fmt) || is_fmt(fmt, "vmdk");
}

static const char *const op_names[OP_MAX] = {
        "read", "write", "discard", "flush", "reopen", "reopen-top", "merge", "compact", "resize",
        "new-diff",
};

/* Relative weights of the random operations. */
static unsigned op_weights[OP_MAX] = {
        [OP_READ] = 30, [OP_WRITE] = 42, [OP_DISCARD] = 9, [OP_FLUSH] = 5, [OP_REOPEN] = 2,
        [OP_REOPEN_TOP] = 1, [OP_MERGE] = 3, [OP_COMPACT] = 3, [OP_RESIZE] = 3, [OP_NEW_DIFF] = 2,
};

typedef struct run {
        const model_cfg *cfg;
        uint64_t seed;
        rng r;
        vdisk_disk *d;
        vdisk_io *ios[MAX_DEPTH];     /* our references, base first */
        const char *fmts[MAX_DEPTH];  /* the format of each */
        unsigned n;
        unsigned next_id;
        uint8_t *model;               /* cfg->max_size bytes; the first `size` are the disk */
        uint64_t size;
        uint8_t *buf;                 /* IO_CHUNK bytes (>= max_write) */
        uint64_t op;
        uint64_t counts[OP_MAX];
        uint64_t merges_fwd, merges_bwd, merges_adjacent, merges_apart;
        uint64_t shrinks_refused, shrinks_done, grows;
        uint64_t checks, leaks, max_leaks;
        uint64_t refused;             /* mixed: VMDK resize/grow-merge, -EOPNOTSUPP */
        uint64_t pairs;               /* mixed-qcow: (parent, child) format pairs seen, a bit each */
} run;

/* The format of the next new image: the config's; in a "mixed" chain VDI,
 * VMDK and VHD in turn; in a "mixed-qcow" chain a random one of the six that
 * may sit on the chain (see mixed_qcow_configs). */
static const char *next_fmt(run *s) {
        static const char *const mixed[] = { "vdi", "vmdk", "vpc" };
        const model_cfg *cfg = s->cfg;
        bool uuid_below = true;

        if (cfg->fmt && is_fmt(cfg->fmt, "mixed"))
                return mixed[s->next_id % ELEMENTSOF(mixed)];
        if (!cfg->fmt || !is_fmt(cfg->fmt, "mixed-qcow"))
                return cfg->fmt ? cfg->fmt : model_fmt;
        for (unsigned i = 0; i < s->n; i++)
                if (!fmt_has_uuid(s->fmts[i]))
                        uuid_below = false;
        /* While the chain is all VDI, VMDK and VHD, mostly one of those three
         * (the QCOW family, once in, keeps VDI and VHD out). */
        if (uuid_below && rng_chance(&s->r, 70))
                return all_fmts[rng_below(&s->r, 3)];
        for (;;) {
                const char *f = all_fmts[rng_below(&s->r, ELEMENTSOF(all_fmts))];

                if (uuid_below || fmt_links_by_name(f))
                        return f;
        }
}

/* The last operations, printed when a test fails. */
static char history[HISTORY][160];
static unsigned history_pos;
static int run_active;

static void __attribute__((format(printf, 2, 3))) note(run *s, const char *fmt, ...) {
        char *h = history[history_pos++ % HISTORY];
        int k;
        va_list ap;

        k = snprintf(h, sizeof history[0], "op %" PRIu64 ": ", s->op);
        va_start(ap, fmt);
        vsnprintf(h + k, sizeof history[0] - (size_t) k, fmt, ap);
        va_end(ap);
}

static void dump_history(void) {
        if (!run_active)
                return;
        fprintf(stderr, "  last operations (oldest first):\n");
        for (unsigned i = 0; i < HISTORY; i++) {
                const char *h = history[(history_pos + i) % HISTORY];
                if (h[0])
                        fprintf(stderr, "    %s\n", h);
        }
}

static void set_context(run *s) {
        test_set_context("seed=%" PRIu64 " config=%s op=%" PRIu64 " chain depth=%u size=%" PRIu64
                         " (rerun: test-model %" PRIu64 " %" PRIu64 " %u)",
                         s->seed, s->cfg->name, s->op, s->n, s->size, s->seed, s->op + 1,
                         (unsigned) (s->cfg - configs));
}

/* ---- comparing the disk with the model */

static void compare_range(run *s, uint64_t off, uint64_t len, const char *what) {
        while (len > 0) {
                size_t n = (size_t) (len < IO_CHUNK ? len : IO_CHUNK);
                int r = vdisk_disk_read(s->d, s->buf, n, off);

                if (r < 0)
                        FAIL("%s: reading %zu bytes at 0x%" PRIx64 " failed: %d (%s)", what, n, off, r,
                             strerror(-r));
                if (memcmp(s->buf, s->model + off, n) != 0) {
                        size_t i = 0;
                        vdisk_extent e = { 0 };
                        uint64_t at;

                        while (s->buf[i] == s->model[off + i])
                                i++;
                        at = off + i;
                        vdisk_disk_block_status(s->d, at, s->size - at, &e);
                        FAIL("%s: disk and model differ at 0x%" PRIx64 " (block %" PRIu64
                             "): disk 0x%02x, model 0x%02x; extent there: flags 0x%x depth %d",
                             what, at, at / s->cfg->eff_block, s->buf[i], s->model[at], e.flags,
                             e.depth);
                }
                off += n;
                len -= n;
        }
}

static void compare_all(run *s, const char *what) {
        ASSERT_EQ_U64(vdisk_disk_size(s->d), s->size);
        compare_range(s, 0, s->size, what);
}

/* The container's images are our ios in order, and each diff links to the
 * image below it. */
static void verify_chain(run *s) {
        uint8_t uuid[16], parent[16];
        int r;

        ASSERT_EQ_U64(vdisk_disk_count(s->d), s->n);
        for (unsigned i = 0; i < s->n; i++) {
                vdisk_image *img = vdisk_disk_image(s->d, i);

                ASSERT(img);
                ASSERT_STREQ(vdisk_image_name(img), vdisk_io_name(s->ios[i]));
                ASSERT_EQ_U64(vdisk_image_index(img), i);
                if (i > 0)
                        s->pairs |= UINT64_C(1) << (fmt_index(s->fmts[i - 1]) * 8 + fmt_index(s->fmts[i]));
                /* A VMDK made on a parent without a UUID records no
                 * ddb.uuid.parent; a merge that relinks it onto a parent
                 * with a UUID writes that one (checked below). */
                if (i > 0 && is_fmt(s->fmts[i], "vmdk") && vdisk_image_get_parent_uuid(img, parent) == -EOPNOTSUPP) {
                        vdisk_clear_error();
                        if (fmt_has_uuid(s->fmts[i - 1]))
                                FAIL("image %u (%s, vmdk) records no parent UUID, its parent %s has one", i,
                                     vdisk_image_name(img), s->fmts[i - 1]);
                        goto by_name;
                }
                if (!fmt_has_uuid(s->fmts[i]) || (i > 0 && !fmt_has_uuid(s->fmts[i - 1]))) {
                        /* no UUIDs (or a VMDK on a parent without one):
                         * linked by name alone, the image below's */
                        const char *pn, *pf;
                by_name:
                        pn = pf = NULL;

                        r = vdisk_image_get_parent_name(img, &pn, &pf);
                        if (i == 0) {
                                if (r >= 0 && pn && pn[0])
                                        FAIL("base image %s names a backing file '%s'", vdisk_image_name(img), pn);
                                continue;
                        }
                        if (r < 0)
                                FAIL("image %u (%s, on a %s) names no parent: %d (%s)", i, vdisk_image_name(img),
                                     s->fmts[i - 1], r, strerror(-r));
                        if (!pn || strcmp(pn, vdisk_io_name(s->ios[i - 1])) != 0)
                                FAIL("image %u (%s) names '%s' as its parent, not image %u", i,
                                     vdisk_image_name(img), pn ? pn : "(none)", i - 1);
                        continue;
                }
                r = vdisk_image_get_parent_uuid(img, parent);
                /* VMDK records no parent UUID in a base (no ddb.uuid.parent) */
                if (r == -EOPNOTSUPP && i == 0 && is_fmt(s->fmts[0], "vmdk"))
                        memset(parent, 0, 16);
                else
                        ASSERT_OK(r);
                if (i == 0) {
                        ASSERT(vdisk_uuid_is_null(parent));
                        continue;
                }
                ASSERT_OK(vdisk_image_get_uuid(vdisk_disk_image(s->d, i - 1), uuid));
                if (memcmp(parent, uuid, 16) != 0)
                        FAIL("image %u (%s) does not link to image %u", i, vdisk_image_name(img), i - 1);
        }
        ASSERT(!vdisk_disk_image(s->d, s->n));
}

static void check_all(run *s) {
        for (unsigned i = 0; i < s->n; i++) {
                if (is_fmt(s->fmts[i], "qcow"))
                        continue;   /* QCOW v1 has no check (nor has qemu one) */
                uint64_t leaks = CHECK_IMAGE_CLEAN(s->d, i);

                s->leaks += leaks;
                if (leaks > s->max_leaks)
                        s->max_leaks = leaks;
        }
        s->checks++;
}

/* ---- picking ranges and contents */

static uint64_t sectors_up_to(run *s, uint64_t max) {
        return rng_range(&s->r, 1, max / 512) * 512;
}

static void pick_range(run *s, uint64_t max_len, uint64_t *ret_off, uint64_t *ret_len) {
        uint64_t bs = s->cfg->eff_block, len, off;
        unsigned c = (unsigned) rng_below(&s->r, 100);

        if (c < 45)
                len = rng_range(&s->r, 1, 16) * 512;
        else if (c < 75)
                len = sectors_up_to(s, 512 * KiB);
        else
                len = sectors_up_to(s, max_len);
        len = MIN(len, max_len);
        len = MIN(len, s->size);

        if (rng_chance(&s->r, 50) && s->size > bs && len > 512) {
                /* straddle a block boundary */
                uint64_t boundary = rng_range(&s->r, 1, (s->size - 1) / bs) * bs;
                uint64_t before = rng_range(&s->r, 1, len / 512 - 1) * 512;

                off = boundary >= before ? boundary - before : 0;
        } else {
                off = rng_below(&s->r, (s->size - len) / 512 + 1) * 512;
        }
        if (off + len > s->size)
                off = s->size - len;
        *ret_off = off;
        *ret_len = len;
}

static const char *fill(run *s, uint8_t *buf, uint64_t off, uint64_t len) {
        unsigned c = (unsigned) rng_below(&s->r, 100);

        if (c < 40) {
                rng_fill(&s->r, buf, len);
                return "random";
        }
        if (c < 70) {
                for (uint64_t i = 0; i < len; i += 8) {
                        uint64_t v = (s->op << 40) ^ (off + i) ^ UINT64_C(0x5a5a000000000000);
                        memcpy(buf + i, &v, 8);
                }
                return "pattern";
        }
        memset(buf, 0, len);
        return "zero";
}

/* ---- companion files (qcow2 data files): memory ios by name */

#define MAX_COMPANIONS 64
static struct {
        char name[128];
        vdisk_io *io;
} companions[MAX_COMPANIONS];
static vdisk_resolver *companion_resolver;

static int companion_open(void *user, const char *name, const char *image_name, uint32_t flags,
                          vdisk_io **ret_io) {
        unsigned free_slot = MAX_COMPANIONS;

        for (unsigned i = 0; i < MAX_COMPANIONS; i++) {
                if (!companions[i].io) {
                        if (free_slot == MAX_COMPANIONS)
                                free_slot = i;
                        continue;
                }
                if (strcmp(companions[i].name, name) != 0)
                        continue;
                if (flags & VDISK_COMPANION_CREATE)
                        return -EEXIST;
                *ret_io = vdisk_io_ref(companions[i].io);
                return 0;
        }
        if (!(flags & VDISK_COMPANION_CREATE))
                return -ENOENT;
        ASSERT(free_slot < MAX_COMPANIONS);
        snprintf(companions[free_slot].name, sizeof companions[0].name, "%s", name);
        companions[free_slot].io = mem_io(name, NULL, 0);
        *ret_io = vdisk_io_ref(companions[free_slot].io);
        return 0;
}

static vdisk_resolver *get_companion_resolver(void) {
        static const vdisk_resolver_ops ops = { .size = sizeof ops, .open_companion = companion_open };

        if (!companion_resolver)
                ASSERT_OK(vdisk_resolver_new_ops(&ops, NULL, &companion_resolver));
        return companion_resolver;
}

/* The image `image_name` left the chain: its data file goes too. */
static void companion_drop(const char *image_name) {
        char name[160];

        snprintf(name, sizeof name, "%s.data", image_name);
        for (unsigned i = 0; i < MAX_COMPANIONS; i++)
                if (companions[i].io && strcmp(companions[i].name, name) == 0)
                        companions[i].io = vdisk_io_unref(companions[i].io);
}

static void companions_free(void) {
        for (unsigned i = 0; i < MAX_COMPANIONS; i++)
                companions[i].io = vdisk_io_unref(companions[i].io);
        companion_resolver = vdisk_resolver_unref(companion_resolver);
}

/* ---- the chain */

/* The create options of a format: VHD sizes exactly (force_size=on). */
static const char *const *fmt_options(const model_cfg *cfg, const char *fmt) {
        if (cfg->options)
                return cfg->options;
        return is_fmt(fmt, "vpc") ? vhd_options : NULL;
}

/* The create options of a new image `io`: the format's; with data files, its
 * own companion (name.data) through the companion resolver. `opts` holds the
 * option vector and `buf` the name. */
static void image_options(run *s, vdisk_io *io, const char *fmt, vdisk_create_opts *o, const char *opts[3],
                          char *buf, size_t buf_size) {
        o->options = fmt_options(s->cfg, fmt);
        if (!s->cfg->data_file)
                return;
        snprintf(buf, buf_size, "%s.data", vdisk_io_name(io));
        opts[0] = "data_file";
        opts[1] = buf;
        opts[2] = NULL;
        o->options = opts;
        o->resolver = get_companion_resolver();
}

/* A new container; with data files it opens companions through the
 * companion resolver. */
static vdisk_disk *model_disk_new(run *s) {
        vdisk_disk *d = disk_new();

        if (s->cfg->data_file)
                ASSERT_OK(vdisk_disk_set_resolver(d, get_companion_resolver()));
        return d;
}

static vdisk_io *new_image_io(run *s, const char **ret_fmt) {
        const char *fmt = next_fmt(s);
        char name[96];

        snprintf(name, sizeof name, "model-%" PRIu64 "-%s-img%u.%s", s->seed, s->cfg->name, s->next_id++, fmt);
        *ret_fmt = fmt;
        return mem_io(name, NULL, 0);
}

static void create_diff(run *s) {
        vdisk_create_opts o = { .size = sizeof o, .block_size = s->cfg->block_size };
        const char *fmt, *opts[3];
        char df[160];
        vdisk_io *io;

        ASSERT(s->n < MAX_DEPTH);
        io = new_image_io(s, &fmt);
        image_options(s, io, fmt, &o, opts, df, sizeof df);
        if (!fmt_has_uuid(fmt) || !fmt_has_uuid(s->fmts[s->n - 1])) {
                /* linked by name alone (no UUIDs): the parent's */
                o.parent_name = vdisk_io_name(s->ios[s->n - 1]);
                o.parent_format = s->fmts[s->n - 1];
        }
        note(s, "create diff %s on top of %u images", vdisk_io_name(io), s->n);
        ASSERT_OK(vdisk_disk_create_diff(s->d, io, fmt, &o));
        s->fmts[s->n] = fmt;
        s->ios[s->n++] = io;
        ASSERT_EQ_U64(vdisk_disk_count(s->d), s->n);
        ASSERT_EQ_U64(vdisk_disk_size(s->d), s->size);
        ASSERT(!vdisk_disk_readonly(s->d));
}

static void do_write(run *s, int readback) {
        uint64_t off, len;
        const char *kind;

        pick_range(s, s->cfg->max_write, &off, &len);
        kind = fill(s, s->buf, off, len);
        note(s, "write 0x%" PRIx64 "+0x%" PRIx64 " (%s)", off, len, kind);
        ASSERT_OK(vdisk_disk_write(s->d, s->buf, len, off));
        memcpy(s->model + off, s->buf, len);
        if (readback)
                compare_range(s, off, len, "read back after write");
}

static void do_read(run *s) {
        uint64_t off, len;

        pick_range(s, s->cfg->max_write, &off, &len);
        note(s, "read 0x%" PRIx64 "+0x%" PRIx64, off, len);
        compare_range(s, off, len, "read");
}

static void do_discard(run *s) {
        uint64_t bs = s->cfg->eff_block, off, len, lo, hi;

        if (rng_chance(&s->r, 50)) {
                /* whole blocks */
                uint64_t blocks = DIV_ROUND_UP(s->size, bs);
                uint64_t first = rng_below(&s->r, blocks);

                off = first * bs;
                len = rng_range(&s->r, 1, 4) * bs;
                len = MIN(len, s->size - off);
        } else {
                pick_range(s, 4 * bs, &off, &len);
        }
        note(s, "discard 0x%" PRIx64 "+0x%" PRIx64, off, len);
        ASSERT_OK(vdisk_disk_discard(s->d, off, len));
        memset(s->model + off, 0, len);
        /* the range and its neighbourhood (discard must not touch it) */
        lo = off >= bs ? ALIGN_DOWN(off, bs) - bs : 0;
        hi = MIN(ALIGN_UP(off + len, bs) + bs, s->size);
        compare_range(s, lo, hi - lo, "read after discard");
}

static void open_chain(run *s, uint32_t flags) {
        s->d = model_disk_new(s);
        for (unsigned i = 0; i < s->n; i++) {
                int r = vdisk_disk_open(s->d, s->ios[i], s->fmts[i], flags);
                if (r < 0)
                        FAIL("reopening image %u (%s) failed: %d (%s)", i, vdisk_io_name(s->ios[i]), r,
                             strerror(-r));
        }
        ASSERT_EQ_U64(vdisk_disk_count(s->d), s->n);
        ASSERT_EQ_U64(vdisk_disk_size(s->d), s->size);
}

static void do_reopen(run *s) {
        int ro = rng_chance(&s->r, 30);

        note(s, "close and reopen the chain%s", ro ? " (read-only first)" : "");
        s->d = vdisk_disk_unref(s->d);
        ASSERT(!s->d);
        if (ro) {
                uint8_t sector[512] = { 1 };

                open_chain(s, VDISK_OPEN_READONLY);
                ASSERT(vdisk_disk_readonly(s->d));
                verify_chain(s);
                compare_all(s, "read-only reopen");
                ASSERT_ERR(vdisk_disk_write(s->d, sector, sizeof sector, 0), -EROFS);
                s->d = vdisk_disk_unref(s->d);
        }
        open_chain(s, 0);
        ASSERT(!vdisk_disk_readonly(s->d));
        verify_chain(s);
        compare_all(s, "reopen");
}

static void do_reopen_top(run *s) {
        note(s, "close and reopen the top (%s)", vdisk_io_name(s->ios[s->n - 1]));
        ASSERT_OK(vdisk_disk_close_top(s->d));
        ASSERT_EQ_U64(vdisk_disk_count(s->d), s->n - 1);
        ASSERT_OK(vdisk_disk_open(s->d, s->ios[s->n - 1], s->fmts[s->n - 1], 0));
        verify_chain(s);
        compare_all(s, "reopen of the top");
}

static void do_merge(run *s) {
        unsigned from, to, lo, hi, k = 0;
        vdisk_io *keep[MAX_DEPTH];
        const char *keep_fmts[MAX_DEPTH];
        char **removed = NULL;
        size_t n_removed = 0;
        int r;

        from = (unsigned) rng_below(&s->r, s->n);
        do
                to = (unsigned) rng_below(&s->r, s->n);
        while (to == from);
        lo = MIN(from, to);
        hi = MAX(from, to);
        note(s, "merge %u -> %u (%s, %s) of %u images", from, to, from > to ? "forward" : "backward",
             hi - lo == 1 ? "adjacent" : "apart", s->n);
        set_context(s);
        r = vdisk_merge(s->d, from, to, NULL, &removed);
        if (r == -EOPNOTSUPP && fmt_resize_limited(s->fmts[to]) && from > to &&
            vdisk_image_size(vdisk_disk_image(s->d, to)) < vdisk_image_size(vdisk_disk_image(s->d, from))) {
                /* `to` would have to grow: VMDK cannot resize yet. */
                note(s, "merge refused: %s cannot grow", vdisk_io_name(s->ios[to]));
                ASSERT(vdisk_last_error()[0]);
                s->refused++;
                verify_chain(s);
                compare_all(s, "after a refused merge");
                return;
        }
        if (r < 0)
                FAIL("vdisk_merge(%u -> %u) of %u images failed: %d (%s)", from, to, s->n, r, strerror(-r));
        if (from > to)
                s->merges_fwd++;
        else
                s->merges_bwd++;
        if (hi - lo == 1)
                s->merges_adjacent++;
        else
                s->merges_apart++;

        /* The images in [lo, hi] but `to` left the chain; *removed names them. */
        ASSERT(removed);
        for (char **p = removed; *p; p++)
                n_removed++;
        ASSERT_EQ_U64(n_removed, hi - lo);
        for (unsigned i = 0; i < s->n; i++) {
                int gone = i >= lo && i <= hi && i != to;

                if (!gone) {
                        keep_fmts[k] = s->fmts[i];
                        keep[k++] = s->ios[i];
                        continue;
                }
                int found = 0;
                for (char **p = removed; *p; p++)
                        if (strcmp(*p, vdisk_io_name(s->ios[i])) == 0)
                                found = 1;
                if (!found)
                        FAIL("merge %u -> %u: image %u (%s) should have left the chain but is not "
                             "among the removed names", from, to, i, vdisk_io_name(s->ios[i]));
                companion_drop(vdisk_io_name(s->ios[i]));
                vdisk_io_unref(s->ios[i]);
        }
        vdisk_strv_free(removed);
        memcpy(s->ios, keep, sizeof keep[0] * k);
        memcpy(s->fmts, keep_fmts, sizeof keep_fmts[0] * k);
        s->n = k;
        /* A forward merge of the top into a larger ancestor never shrinks the
         * ancestor (its data past the old top's end stays, as VDMerge does):
         * the disk takes the ancestor's size, and that tail is the ancestor's
         * own data, unknown to the model. Adopt it. */
        if (from > to && to == s->n - 1 && vdisk_disk_size(s->d) > s->size) {
                uint64_t grown = vdisk_disk_size(s->d), at = s->size;

                ASSERT(grown <= s->cfg->max_size);
                note(s, "merge grew the disk from %" PRIu64 " to %" PRIu64 " bytes", s->size, grown);
                while (at < grown) {
                        size_t n = (size_t) MIN(grown - at, (uint64_t) 1 << 20);
                        ASSERT_OK(vdisk_disk_read(s->d, s->model + at, n, at));
                        at += n;
                }
                s->size = grown;
        }
        set_context(s);
        verify_chain(s);
        ASSERT(!vdisk_disk_readonly(s->d));
        compare_all(s, "after merge");
        check_all(s);
        while (s->n < MIN_DEPTH)
                create_diff(s);
}

static void do_compact(run *s) {
        unsigned idx = (unsigned) rng_below(&s->r, s->n);
        vdisk_image *img = vdisk_disk_image(s->d, idx);
        uint64_t before, after;
        const void *data;
        size_t len;
        vdi_header h;
        vdi_map_stats st;
        int r;

        ASSERT(img);
        /* Measure after a flush: flushing may extend the file over the last
         * block's unwritten (sparse) tail, which compact must not count as growth. */
        ASSERT_OK(vdisk_disk_flush(s->d));
        ASSERT_OK(vdisk_image_file_size(img, &before));
        note(s, "compact image %u of %u (%s, %" PRIu64 " bytes)", idx, s->n, vdisk_image_name(img), before);
        r = vdisk_compact(s->d, idx, NULL);
        if (r == -EOPNOTSUPP && (is_fmt(s->fmts[idx], "qcow") || is_fmt(s->fmts[idx], "qed"))) {
                /* QCOW and QED cannot compact: a clean refusal */
                note(s, "compact refused: %s cannot compact", s->fmts[idx]);
                ASSERT(vdisk_last_error()[0]);
                s->refused++;
                verify_chain(s);
                compare_all(s, "after a refused compact");
                return;
        }
        if (r < 0)
                FAIL("vdisk_compact(%u) of %u images failed: %d (%s)", idx, s->n, r, strerror(-r));
        verify_chain(s);
        img = vdisk_disk_image(s->d, idx);
        ASSERT_OK(vdisk_image_file_size(img, &after));
        if (after > before)
                FAIL("compacting image %u made it grow from %" PRIu64 " to %" PRIu64 " bytes", idx, before,
                     after);
        compare_all(s, "after compact");
        check_all(s);

        if (!is_fmt(s->fmts[idx], "vdi")) {
                /* VHD: no whole-block room left unused; VMDK: nothing past
                 * the last grain or table (check counts both as leaks) */
                vdisk_check_report rep;

                check_image_report(s->d, idx, &rep);
                if (rep.leaks) {
                        print_check_messages(&rep);
                        FAIL("compacted image %u still has %" PRIu64 " leaked blocks", idx, rep.leaks);
                }
                vdisk_check_report_clear(&rep);
                return;
        }
        /* "no larger than header + map + live blocks" */
        ASSERT_OK(vdisk_disk_flush(s->d));
        ASSERT_OK(vdisk_io_memory_data(s->ios[idx], &data, &len));
        ASSERT(vdi_parse(data, len, &h) == 0 && h.map);
        vdi_map_analyse(&h, len, &st);
        if (len > vdi_slot_offset(&h, st.referenced))
                FAIL("compacted image %u holds %zu bytes, more than header + map + %" PRIu32
                     " live blocks (%" PRIu64 ")", idx, len, st.referenced,
                     vdi_slot_offset(&h, st.referenced));
}

static bool resize_unsupported(run *s, int r) {
        if (r != -EOPNOTSUPP || !fmt_resize_limited(s->fmts[s->n - 1]))
                return false;
        ASSERT(vdisk_last_error()[0]);
        note(s, "resize refused: %s cannot resize so", s->fmts[s->n - 1]);
        s->refused++;
        ASSERT_EQ_U64(vdisk_disk_size(s->d), s->size);
        compare_all(s, "after a refused resize");
        return true;
}

static void do_resize(run *s) {
        uint64_t bs = s->cfg->eff_block, old = s->size, new_size;
        int grow = s->size < s->cfg->max_size && (s->size <= s->cfg->min_size || rng_chance(&s->r, 50));
        int r;

        if (grow) {
                new_size = old + sectors_up_to(s, s->cfg->max_size - old);
                if (rng_chance(&s->r, 50))
                        new_size = MIN(ALIGN_UP(new_size, bs), s->cfg->max_size);
                note(s, "grow 0x%" PRIx64 " -> 0x%" PRIx64, old, new_size);
                r = vdisk_resize(s->d, new_size, NULL);
                if (resize_unsupported(s, r))
                        return;
                if (r < 0)
                        FAIL("growing 0x%" PRIx64 " -> 0x%" PRIx64 " failed: %d (%s)", old, new_size, r,
                             strerror(-r));
                memset(s->model + old, 0, new_size - old);
                s->size = new_size;
                s->grows++;
                set_context(s);
                compare_range(s, old >= bs ? old - bs : 0, new_size - (old >= bs ? old - bs : 0),
                              "new area after grow");
        } else {
                new_size = s->cfg->min_size + sectors_up_to(s, old - s->cfg->min_size) - 512;
                if (rng_chance(&s->r, 50))
                        new_size = MAX(ALIGN_DOWN(new_size, bs), s->cfg->min_size);
                if (new_size >= old)
                        new_size = old - 512;
                if (buf_is_zero(s->model + new_size, old - new_size) && rng_chance(&s->r, 70)) {
                        /* put data in the tail so that the refusal is tested too */
                        uint64_t at = new_size + rng_below(&s->r, (old - new_size) / 512) * 512;

                        rng_fill(&s->r, s->buf, 512);
                        note(s, "write 0x%" PRIx64 "+0x200 (random, in the tail to cut)", at);
                        ASSERT_OK(vdisk_disk_write(s->d, s->buf, 512, at));
                        memcpy(s->model + at, s->buf, 512);
                        s->op++;
                }
                if (!buf_is_zero(s->model + new_size, old - new_size)) {
                        note(s, "shrink 0x%" PRIx64 " -> 0x%" PRIx64 " with data in the tail (must fail)",
                             old, new_size);
                        set_context(s);
                        ASSERT_ERR(vdisk_resize(s->d, new_size, NULL), -ENOTEMPTY);
                        s->shrinks_refused++;
                        compare_all(s, "after a refused shrink");
                        note(s, "discard the tail 0x%" PRIx64 "+0x%" PRIx64, new_size, old - new_size);
                        ASSERT_OK(vdisk_disk_discard(s->d, new_size, old - new_size));
                        memset(s->model + new_size, 0, old - new_size);
                        s->op++;
                }
                note(s, "shrink 0x%" PRIx64 " -> 0x%" PRIx64, old, new_size);
                set_context(s);
                r = vdisk_resize(s->d, new_size, NULL);
                if (resize_unsupported(s, r))
                        return;
                if (r < 0)
                        FAIL("shrinking 0x%" PRIx64 " -> 0x%" PRIx64 " (the tail reads zeros) failed: "
                             "%d (%s)",
                             old, new_size, r, strerror(-r));
                s->size = new_size;
                s->shrinks_done++;
                set_context(s);
                compare_all(s, "after shrink");
        }
        ASSERT_EQ_U64(vdisk_image_size(vdisk_disk_image(s->d, s->n - 1)), s->size);
        check_all(s);
}

static unsigned pick_op(run *s) {
        unsigned total = 0, x;

        for (unsigned i = 0; i < OP_MAX; i++)
                if (!(s->cfg->no_ops & (1u << i)))
                        total += op_weights[i];
        x = (unsigned) rng_below(&s->r, total);
        for (unsigned i = 0; i < OP_MAX; i++) {
                if (s->cfg->no_ops & (1u << i))
                        continue;
                if (x < op_weights[i])
                        return i;
                x -= op_weights[i];
        }
        return OP_READ;
}

static double now(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static uint64_t total_pairs;

static uint64_t run_one(const model_cfg *cfg, uint64_t seed, uint64_t n_ops) {
        vdisk_create_opts o = { .size = sizeof o, .block_size = cfg->block_size };
        run s = { .cfg = cfg, .seed = seed, .size = cfg->size };
        const char *base_opts[3];
        char base_df[160];
        double t0 = now();

        rng_seed(&s.r, seed ^ (uint64_t) (cfg - configs) << 56);
        s.model = calloc(cfg->max_size, 1);
        s.buf = malloc(IO_CHUNK);
        ASSERT(s.model && s.buf);
        memset(history, 0, sizeof history);
        run_active = 1;
        set_context(&s);

        /* base, some data in it, a diff, more data, another diff */
        s.d = model_disk_new(&s);
        s.ios[0] = new_image_io(&s, &s.fmts[0]);
        image_options(&s, s.ios[0], s.fmts[0], &o, base_opts, base_df, sizeof base_df);
        note(&s, "create base %s (%s, 0x%" PRIx64 " bytes)", vdisk_io_name(s.ios[0]), cfg->name, cfg->size);
        ASSERT_OK(vdisk_disk_create_base(s.d, s.ios[0], s.fmts[0], cfg->size, &o));
        s.n = 1;
        {
                vdisk_image_info info = { .size = sizeof info };
                ASSERT_OK(vdisk_image_get_info(vdisk_disk_image(s.d, 0), &info));
                ASSERT_EQ_U64(info.cluster_size, cfg->eff_block);
                ASSERT_EQ_U64(info.virtual_size, cfg->size);
        }
        for (unsigned level = 0; level < MIN_DEPTH; level++) {
                if (level > 0)
                        create_diff(&s);
                for (unsigned i = 0; i < 40 && s.op < n_ops; i++, s.op++) {
                        set_context(&s);
                        do_write(&s, 0);
                        s.counts[OP_WRITE]++;
                }
        }
        verify_chain(&s);
        compare_all(&s, "after building the chain");
        check_all(&s);

        for (; s.op < n_ops; s.op++) {
                unsigned op = pick_op(&s);

                set_context(&s);
                switch (op) {
                case OP_READ:
                        do_read(&s);
                        break;
                case OP_WRITE:
                        do_write(&s, rng_chance(&s.r, 10));
                        break;
                case OP_DISCARD:
                        do_discard(&s);
                        break;
                case OP_FLUSH:
                        note(&s, "flush");
                        ASSERT_OK(vdisk_disk_flush(s.d));
                        break;
                case OP_REOPEN:
                        do_reopen(&s);
                        break;
                case OP_REOPEN_TOP:
                        do_reopen_top(&s);
                        break;
                case OP_MERGE:
                        do_merge(&s);
                        break;
                case OP_COMPACT:
                        do_compact(&s);
                        break;
                case OP_RESIZE:
                        do_resize(&s);
                        break;
                case OP_NEW_DIFF:
                        if (s.n >= MAX_DEPTH - 1) {
                                op = OP_READ;
                                do_read(&s);
                        } else
                                create_diff(&s);
                        break;
                }
                s.counts[op]++;
                if (s.op % 100 == 99)
                        check_all(&s);
                if (s.op % 250 == 249)
                        compare_all(&s, "periodic full comparison");
        }

        set_context(&s);
        note(&s, "final checks");
        check_all(&s);
        compare_all(&s, "at the end");
        s.d = vdisk_disk_unref(s.d);
        open_chain(&s, 0);
        verify_chain(&s);
        compare_all(&s, "final reopen");
        check_all(&s);

        printf("seed %" PRIu64 " %-12s %5" PRIu64 " ops in %5.1fs:", seed, cfg->name, s.op, now() - t0);
        for (unsigned i = 0; i < OP_MAX; i++)
                printf(" %s=%" PRIu64, op_names[i], s.counts[i]);
        printf("\n    merges fwd=%" PRIu64 " bwd=%" PRIu64 " adjacent=%" PRIu64 " apart=%" PRIu64
               "; shrinks refused=%" PRIu64 " done=%" PRIu64 "; grows=%" PRIu64 "; checks=%" PRIu64
               " leaks seen=%" PRIu64 " (max %" PRIu64 " in one image)\n",
               s.merges_fwd, s.merges_bwd, s.merges_adjacent, s.merges_apart, s.shrinks_refused,
               s.shrinks_done, s.grows, s.checks, s.leaks, s.max_leaks);
        if (cfg->fmt && is_fmt(cfg->fmt, "mixed-qcow")) {
                printf("    parent <- child pairs seen (%u):", (unsigned) __builtin_popcountll(s.pairs));
                for (unsigned a = 0; a < ELEMENTSOF(all_fmts); a++)
                        for (unsigned b = 0; b < ELEMENTSOF(all_fmts); b++)
                                if (s.pairs & UINT64_C(1) << (a * 8 + b))
                                        printf(" %s<-%s", all_fmts[a], all_fmts[b]);
                printf("\n");
                total_pairs |= s.pairs;
        }
        if (s.refused)
                printf("    refused as not supported (resize, grow-merge, compact): %" PRIu64 "\n", s.refused);
        fflush(stdout);

        s.d = vdisk_disk_unref(s.d);
        for (unsigned i = 0; i < s.n; i++)
                vdisk_io_unref(s.ios[i]);
        companions_free();
        free(s.model);
        free(s.buf);
        run_active = 0;
        test_set_context("%s", "");
        return s.op;
}

int main(int argc, char **argv) {
        static const uint64_t default_seeds[] = { 1, 2, 3, 0xdeadbeef };
        uint64_t seeds[4], n_seeds = 4, n_ops = 1500, total = 0;
        const char *e = getenv("VDISK_MODEL_FORMAT");
        unsigned cfg_lo = 0, cfg_hi = ELEMENTSOF(vdi_configs);

        if (e && strcmp(e, "qcow2-datafile") == 0) {
                /* the last qcow2 config alone */
                model_fmt = "qcow2";
                configs = qcow2_configs;
                cfg_lo = ELEMENTSOF(qcow2_configs) - 1;
                cfg_hi = ELEMENTSOF(qcow2_configs);
#ifdef MODEL_ASAN
                if (argc == 1)
                        n_seeds = 1;
#endif
        } else if (e && strcmp(e, "qcow2") == 0) {
                model_fmt = "qcow2";
                configs = qcow2_configs;
                cfg_hi = ELEMENTSOF(qcow2_configs) - 1;   /* the data file one: its own test */
#ifdef MODEL_ASAN
                if (argc == 1)
                        n_seeds = 1;
#endif
        } else if (e && strcmp(e, "mixed-qcow") == 0) {
                configs = mixed_qcow_configs;
                cfg_hi = ELEMENTSOF(mixed_qcow_configs);
#ifdef MODEL_ASAN
                if (argc == 1)
                        n_seeds = 1;
#endif
        } else if (e && strcmp(e, "mixed") == 0) {
                configs = mixed_configs;
                cfg_hi = ELEMENTSOF(mixed_configs);
#ifdef MODEL_ASAN
                if (argc == 1)
                        n_seeds = 1;
#endif
        } else if (e && strcmp(e, "vdi") != 0) {
                ASSERT(strcmp(e, "vpc") == 0);
                model_fmt = "vpc";
                configs = vhd_configs;
                cfg_hi = ELEMENTSOF(vhd_configs);
#ifdef MODEL_ASAN
                /* Under ASan: one seed (3,000 operations); the plain
                 * build runs all four. */
                if (argc == 1)
                        n_seeds = 1;
#endif
        }

        memcpy(seeds, default_seeds, sizeof seeds);
        if (argc > 1) {
                seeds[0] = strtoull(argv[1], NULL, 0);
                n_seeds = 1;
        }
        if (argc > 2)
                n_ops = strtoull(argv[2], NULL, 0);
        if (argc > 3) {
                cfg_lo = (unsigned) strtoul(argv[3], NULL, 0);
                ASSERT(cfg_lo < cfg_hi);
                cfg_hi = cfg_lo + 1;
        }
        atexit(dump_history);

        for (uint64_t i = 0; i < n_seeds; i++)
                for (unsigned c = cfg_lo; c < cfg_hi; c++) {
#ifdef MODEL_ASAN
                        /* Under ASan: QCOW and QED on the first seed only
                         * (the plain build runs all four: 12,000 each). */
                        if (argc == 1 && i > 0 && configs[c].fmt &&
                            (is_fmt(configs[c].fmt, "qcow") || is_fmt(configs[c].fmt, "qed")))
                                continue;
#endif
                        /* VMDK: twice the operations, >= 10,000 over the default seeds */
                        total += run_one(&configs[c], seeds[i],
                                         configs[c].fmt && !is_fmt(configs[c].fmt, "mixed") && argc <= 2 ?
                                         2 * n_ops : n_ops);
                }
        printf("%" PRIu64 " operations in total\n", total);
        /* Every pairing the formats allow: 4 x 6 under a VDI, VMDK or VHD
         * parent less VDI and VHD on the QCOW family (6 pairs): 30. */
        if (argc == 1 && n_seeds == 4 && configs == mixed_qcow_configs &&
            __builtin_popcountll(total_pairs) < 30)
                FAIL("only %d of the 30 possible parent <- child format pairs were seen",
                     __builtin_popcountll(total_pairs));
        if (argc == 1 && n_seeds == 4)
                ASSERT(total >= 10000);
        return 0;
}
