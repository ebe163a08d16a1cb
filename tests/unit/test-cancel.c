/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `unit`: progress and cancellation of the long operations.
 *
 * A vdisk_progress callback cancels after the first report that is not the
 * final one: vdisk_copy, vdisk_merge (both directions) and vdisk_compact return
 * -ECANCELED, every image still checks clean, the content is unchanged (merge,
 * compact: the container's, and also after reopening the images from their
 * bytes) and a convert's source bytes never change. A progress cancelled before
 * the call stops the operation before it changes anything. A cancelled
 * compressed copy into qcow2 leaves a destination without corruption.
 * Uncancelled runs
 * report monotonic progress that ends exactly at the total; compact keeps
 * reporting past the scan while it moves blocks (VMDK and QCOW2 also when
 * cancelled then), and a VDI shrink reports the blocks it packs below the
 * new end.
 */
#include "tests.h"

#define DISK_SIZE (32 * MiB)

typedef struct watch {
        int cancel;           /* cancel at the first report with cancel_from < done < total */
        uint64_t cancel_from;
        unsigned calls;
        uint64_t last_done, last_total;
        int went_back;        /* done decreased */
        int over_total;       /* done > total (total known) */
        int cancelled_at_call;
        unsigned past_size;   /* reports with DISK_SIZE < done < total (compact: moving blocks) */
} watch;

static void on_progress(vdisk_progress *p, void *user) {
        watch *w = user;
        uint64_t done = vdisk_progress_done(p), total = vdisk_progress_total(p);

        w->calls++;
        if (done < w->last_done)
                w->went_back = 1;
        if (total && done > total)
                w->over_total = 1;
        w->last_done = done;
        w->last_total = total;
        if (done > DISK_SIZE && done < total)
                w->past_size++;
        if (w->cancel && !w->cancelled_at_call && done > w->cancel_from && total > 0 && done < total) {
                vdisk_progress_cancel(p);
                w->cancelled_at_call = (int) w->calls;
        }
}

static vdisk_progress *progress_new(watch *w, int cancel) {
        vdisk_progress *p = NULL;

        memset(w, 0, sizeof *w);
        w->cancel = cancel;
        ASSERT_OK(vdisk_progress_new(on_progress, w, &p));
        return p;
}

/* An uncancelled run: monotonic, ends at the total. */
static void assert_progress_complete(const watch *w, vdisk_progress *p) {
        ASSERT(w->calls > 0);
        ASSERT(!w->went_back);
        ASSERT(!w->over_total);
        ASSERT(vdisk_progress_total(p) > 0);
        ASSERT_EQ_U64(vdisk_progress_done(p), vdisk_progress_total(p));
        ASSERT_EQ_U64(w->last_done, vdisk_progress_total(p));
        ASSERT(!vdisk_progress_cancelled(p));
}

/* A cancelled run: the cancel happened in the middle and the operation saw it. */
static void assert_progress_cancelled(const watch *w, vdisk_progress *p, const char *op) {
        if (!w->cancelled_at_call)
                FAIL("%s: the progress callback was never called with 0 < done < total (%u calls), "
                     "so it could not cancel in the middle", op, w->calls);
        ASSERT(!w->went_back);
        ASSERT(!w->over_total);
        ASSERT(vdisk_progress_cancelled(p));
}

/* ---- fixtures */

typedef struct chain {
        vdisk_io *ios[3];
        unsigned n;
        vdisk_disk *d;
} chain;

static void fill_blocks(vdisk_disk *d, rng *r, unsigned every, unsigned phase, int zero_blocks) {
        uint8_t *buf = malloc(1 * MiB);

        ASSERT(buf);
        for (uint64_t b = phase, k = 0; b < DISK_SIZE / MiB; b += every, k++) {
                if (zero_blocks && k % 3 == 0)
                        memset(buf, 0, 1 * MiB);
                else
                        rng_fill(r, buf, 1 * MiB);
                ASSERT_OK(vdisk_disk_write(d, buf, 1 * MiB, b * MiB));
        }
        free(buf);
}

/* base (every block, every 3rd of them zeros) + diff (every 2nd block) + diff
 * (every 3rd block, every 3rd of them zeros) */
/* The format of the chains (the compact tests run on VMDK too). */
static const char *chain_fmt = "vdi";

static void make_chain(chain *c, const char *tag, uint64_t seed) {
        char name[64];
        rng r;

        rng_seed(&r, seed);
        memset(c, 0, sizeof *c);
        c->d = disk_new();
        for (unsigned i = 0; i < 3; i++) {
                snprintf(name, sizeof name, "cancel-%s-%u.%s", tag, i, chain_fmt);
                c->ios[i] = mem_io(name, NULL, 0);
                if (i == 0)
                        ASSERT_OK(vdisk_disk_create_base(c->d, c->ios[0], chain_fmt, DISK_SIZE, NULL));
                else if (strcmp(chain_fmt, "qcow2") == 0) {
                        /* linked by name alone */
                        vdisk_create_opts o = { .size = sizeof o, .parent_name = vdisk_io_name(c->ios[i - 1]),
                                                .parent_format = "qcow2" };

                        ASSERT_OK(vdisk_disk_create_diff(c->d, c->ios[i], chain_fmt, &o));
                } else
                        ASSERT_OK(vdisk_disk_create_diff(c->d, c->ios[i], chain_fmt, NULL));
                /* VMDK (and QCOW2) write no grain for zeros where there is
                 * none: random data first, so that the zero blocks are grains
                 * holding zeros (what compact drops) */
                if (strcmp(chain_fmt, "vmdk") == 0 || strcmp(chain_fmt, "qcow2") == 0)
                        fill_blocks(c->d, &r, i + 1, i, 0);
                fill_blocks(c->d, &r, i + 1, i, i != 1);
        }
        c->n = 3;
        ASSERT_OK(vdisk_disk_flush(c->d));
}

static void chain_free(chain *c) {
        c->d = vdisk_disk_unref(c->d);
        for (unsigned i = 0; i < c->n; i++)
                vdisk_io_unref(c->ios[i]);
}

static void assert_content(vdisk_disk *d, const uint8_t *expected, uint64_t size, const char *what) {
        uint64_t got_size;
        uint8_t *got = disk_read_all(d, &got_size);

        ASSERT_EQ_U64(got_size, size);
        if (memcmp(got, expected, size) != 0) {
                uint64_t i = 0;
                while (got[i] == expected[i])
                        i++;
                FAIL("%s: content changed at 0x%" PRIx64, what, i);
        }
        free(got);
}

static void check_all_clean(vdisk_disk *d) {
        for (unsigned i = 0; i < vdisk_disk_count(d); i++)
                CHECK_IMAGE_CLEAN(d, i);
}

/* Reopens the chain's images from their bytes and compares the content. */
static void assert_reopened_content(chain *c, const uint8_t *expected, const char *what) {
        vdisk_disk *d = disk_new();

        for (unsigned i = 0; i < c->n; i++)
                ASSERT_OK(vdisk_disk_open(d, c->ios[i], chain_fmt, VDISK_OPEN_READONLY));
        check_all_clean(d);
        assert_content(d, expected, DISK_SIZE, what);
        vdisk_disk_unref(d);
}

/* ---- copy */

static void test_copy(void) {
        chain c;
        uint8_t *before, *src_bytes[3], *after_bytes;
        size_t src_len[3], len;
        uint64_t size;
        vdisk_copy_opts o = { .size = sizeof o, .create = { .size = sizeof o.create },
                              .from_same = -1, .to_same = -1 };
        vdisk_progress *p;
        watch w;

        make_chain(&c, "copy", 1);
        before = disk_read_all(c.d, &size);
        for (unsigned i = 0; i < 3; i++)
                src_bytes[i] = mem_io_copy(c.ios[i], &src_len[i]);

        for (int pre = 0; pre < 2; pre++) {
                vdisk_disk *dst = disk_new();
                vdisk_io *dio = mem_io("cancel-copy-dst.vdi", NULL, 0);

                p = progress_new(&w, !pre);
                if (pre)
                        vdisk_progress_cancel(p);
                test_set_context("copy, cancelled %s", pre ? "before the call" : "in the middle");
                ASSERT_ERR(vdisk_copy(c.d, dst, dio, "vdi", &o, p), -ECANCELED);
                if (!pre)
                        assert_progress_cancelled(&w, p, "vdisk_copy");
                vdisk_progress_free(p);
                /* the source is untouched */
                check_all_clean(c.d);
                assert_content(c.d, before, size, "copy source after cancel");
                for (unsigned i = 0; i < 3; i++) {
                        after_bytes = mem_io_copy(c.ios[i], &len);
                        ASSERT_EQ_U64(len, src_len[i]);
                        ASSERT_MEMEQ(after_bytes, src_bytes[i], len);
                        free(after_bytes);
                }
                vdisk_disk_unref(dst);
                vdisk_io_unref(dio);
        }

        /* uncancelled: complete progress, equal content */
        {
                vdisk_disk *dst = disk_new();
                vdisk_io *dio = mem_io("cancel-copy-dst.vdi", NULL, 0);

                test_set_context("copy, not cancelled");
                p = progress_new(&w, 0);
                ASSERT_OK(vdisk_copy(c.d, dst, dio, "vdi", &o, p));
                assert_progress_complete(&w, p);
                vdisk_progress_free(p);
                ASSERT_EQ_U64(vdisk_disk_count(dst), 1);
                assert_content(dst, before, size, "copy destination");
                check_all_clean(dst);
                vdisk_disk_unref(dst);
                vdisk_io_unref(dio);
        }
        for (unsigned i = 0; i < 3; i++)
                free(src_bytes[i]);
        free(before);
        chain_free(&c);
}

/* ---- merge */

static void test_merge(unsigned from, unsigned to) {
        chain c;
        uint8_t *before;
        uint64_t size;
        vdisk_progress *p;
        watch w;
        char what[64];

        snprintf(what, sizeof what, "merge %u -> %u", from, to);
        make_chain(&c, "merge", 2);
        before = disk_read_all(c.d, &size);

        for (int pre = 0; pre < 2; pre++) {
                test_set_context("%s, cancelled %s", what, pre ? "before the call" : "in the middle");
                p = progress_new(&w, !pre);
                if (pre)
                        vdisk_progress_cancel(p);
                ASSERT_ERR(vdisk_merge(c.d, from, to, p, NULL), -ECANCELED);
                if (!pre)
                        assert_progress_cancelled(&w, p, what);
                vdisk_progress_free(p);
                /* no image left the chain; content and images intact */
                ASSERT_EQ_U64(vdisk_disk_count(c.d), 3);
                for (unsigned i = 0; i < 3; i++)
                        ASSERT_STREQ(vdisk_image_name(vdisk_disk_image(c.d, i)), vdisk_io_name(c.ios[i]));
                check_all_clean(c.d);
                assert_content(c.d, before, size, what);
                ASSERT_OK(vdisk_disk_flush(c.d));
                assert_reopened_content(&c, before, what);
                /* and the container still works */
                ASSERT_OK(vdisk_disk_write(c.d, before, 4096, 0));
        }

        /* uncancelled */
        test_set_context("%s, not cancelled", what);
        p = progress_new(&w, 0);
        ASSERT_OK(vdisk_merge(c.d, from, to, p, NULL));
        assert_progress_complete(&w, p);
        vdisk_progress_free(p);
        ASSERT_EQ_U64(vdisk_disk_count(c.d), 3 - (from > to ? from - to : to - from));
        check_all_clean(c.d);
        assert_content(c.d, before, size, what);
        free(before);
        chain_free(&c);
}

/* ---- compact */

static void test_compact(unsigned index) {
        chain c;
        uint8_t *before;
        uint64_t size, fsize_before, fsize_after;
        vdisk_progress *p;
        watch w;
        char what[64];

        snprintf(what, sizeof what, "%s compact of image %u", chain_fmt, index);
        make_chain(&c, "compact", 3);
        before = disk_read_all(c.d, &size);
        ASSERT_OK(vdisk_image_file_size(vdisk_disk_image(c.d, index), &fsize_before));

        if (strcmp(chain_fmt, "vmdk") == 0 || strcmp(chain_fmt, "qcow2") == 0) {
                uint64_t fs;

                /* Cancelled while grains move (progress past the scan of
                 * the disk): the batches done stay done, the tail they
                 * freed is cut, the image reads the same and checks clean. */
                test_set_context("%s, cancelled while moving", what);
                p = progress_new(&w, 1);
                w.cancel_from = DISK_SIZE;
                ASSERT_ERR(vdisk_compact(c.d, index, p), -ECANCELED);
                assert_progress_cancelled(&w, p, what);
                ASSERT(w.last_done > DISK_SIZE);
                vdisk_progress_free(p);
                check_all_clean(c.d);
                assert_content(c.d, before, size, what);
                ASSERT_OK(vdisk_image_file_size(vdisk_disk_image(c.d, index), &fs));
                ASSERT(fs < fsize_before);
                ASSERT_OK(vdisk_disk_flush(c.d));
                assert_reopened_content(&c, before, what);
                fsize_before = fs;
        }

        for (int pre = 0; pre < 2; pre++) {
                uint64_t fs;

                test_set_context("%s, cancelled %s", what, pre ? "before the call" : "in the middle");
                p = progress_new(&w, !pre);
                if (pre)
                        vdisk_progress_cancel(p);
                ASSERT_ERR(vdisk_compact(c.d, index, p), -ECANCELED);
                if (!pre)
                        assert_progress_cancelled(&w, p, what);
                vdisk_progress_free(p);
                ASSERT_EQ_U64(vdisk_disk_count(c.d), 3);
                check_all_clean(c.d);
                assert_content(c.d, before, size, what);
                ASSERT_OK(vdisk_image_file_size(vdisk_disk_image(c.d, index), &fs));
                ASSERT(fs <= fsize_before);
                ASSERT_OK(vdisk_disk_flush(c.d));
                assert_reopened_content(&c, before, what);
        }

        test_set_context("%s, not cancelled", what);
        p = progress_new(&w, 0);
        ASSERT_OK(vdisk_compact(c.d, index, p));
        assert_progress_complete(&w, p);
        /* the scan counts the disk's size; moving the blocks reports beyond it */
        ASSERT(vdisk_progress_total(p) > DISK_SIZE);
        ASSERT(w.past_size > 0);
        vdisk_progress_free(p);
        check_all_clean(c.d);
        assert_content(c.d, before, size, what);
        ASSERT_OK(vdisk_image_file_size(vdisk_disk_image(c.d, index), &fsize_after));
        ASSERT(fsize_after <= fsize_before);
        /* the image's all-zero blocks are gone */
        ASSERT(fsize_after < fsize_before);
        free(before);
        chain_free(&c);
}

/* ---- shrink: a VDI packs its blocks below the new end and reports them */

static void test_shrink_progress(void) {
        vdisk_disk *d = disk_new();
        vdisk_io *io = mem_io("cancel-shrink.vdi", NULL, 0);
        uint8_t *buf = malloc(MiB), *before;
        uint64_t size;
        vdisk_progress *p;
        watch w;
        rng r;

        ASSERT(buf);
        rng_seed(&r, 77);
        test_set_context("shrink with block moves");
        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", DISK_SIZE, NULL));
        /* blocks 20..29 take slots 0..9, then blocks 0..4 slots 10..14 */
        for (uint64_t b = 20; b < 30; b++) {
                rng_fill(&r, buf, MiB);
                ASSERT_OK(vdisk_disk_write(d, buf, MiB, b * MiB));
        }
        for (uint64_t b = 0; b < 5; b++) {
                rng_fill(&r, buf, MiB);
                ASSERT_OK(vdisk_disk_write(d, buf, MiB, b * MiB));
        }
        ASSERT_OK(vdisk_disk_discard(d, 20 * MiB, 10 * MiB));
        ASSERT_OK(vdisk_disk_flush(d));
        before = disk_read_all(d, &size);

        p = progress_new(&w, 0);
        ASSERT_OK(vdisk_resize(d, DISK_SIZE / 2, p));
        assert_progress_complete(&w, p);
        /* five blocks moved from slots 10..14 into 0..4, reported as they went */
        ASSERT_EQ_U64(vdisk_progress_total(p), 5 * MiB);
        ASSERT(w.calls >= 5);
        vdisk_progress_free(p);
        ASSERT_EQ_U64(vdisk_disk_size(d), DISK_SIZE / 2);
        assert_content(d, before, DISK_SIZE / 2, "shrink");
        ASSERT(CHECK_IMAGE_CLEAN(d, 0) == 0);
        free(before);
        free(buf);
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
}

/* ---- compressed copy (qcow2 -c): cancelled, the source is untouched and
 * the incomplete destination, reopened from its bytes, has no corruption
 * and reads the source's data or zeros cluster by cluster */

static void test_copy_compress(void) {
        static const char *const opts[] = { "cluster_size", "4096", "compression_type", "zstd", NULL };
        vdisk_copy_opts o = { .size = sizeof o, .from_same = -1, .to_same = -1, .compress = 1,
                              .create = { .size = sizeof o.create, .options = opts } };
        vdisk_io *sio = mem_io("cancel-cc-src.qcow2", NULL, 0), *dio = mem_io("cancel-cc-dst.qcow2", NULL, 0);
        vdisk_disk *sd = disk_new(), *dst = disk_new(), *re = disk_new();
        uint8_t *content = malloc(DISK_SIZE), *got, *src_bytes, *after;
        uint64_t size;
        size_t src_len, len;
        vdisk_progress *p;
        watch w;
        rng r;

        ASSERT(content);
        rng_seed(&r, 5);
        /* compressible: random bytes masked to 4 bits, every 4th 64 KiB random */
        rng_fill(&r, content, DISK_SIZE);
        for (uint64_t i = 0; i < DISK_SIZE; i++)
                if (i / 65536 % 4 != 0)
                        content[i] &= 0x0f;
        ASSERT_OK(vdisk_disk_create_base(sd, sio, "qcow2", DISK_SIZE, NULL));
        ASSERT_OK(vdisk_disk_write(sd, content, DISK_SIZE, 0));
        ASSERT_OK(vdisk_disk_flush(sd));
        src_bytes = mem_io_copy(sio, &src_len);

        test_set_context("compressed copy, cancelled in the middle");
        p = progress_new(&w, 1);
        ASSERT_ERR(vdisk_copy(sd, dst, dio, "qcow2", &o, p), -ECANCELED);
        assert_progress_cancelled(&w, p, "vdisk_copy (compress)");
        vdisk_progress_free(p);
        assert_content(sd, content, DISK_SIZE, "compressed copy source after cancel");
        after = mem_io_copy(sio, &len);
        ASSERT_EQ_U64(len, src_len);
        ASSERT_MEMEQ(after, src_bytes, len);
        free(after);

        ASSERT_OK(vdisk_disk_open(re, dio, "qcow2", VDISK_OPEN_READONLY));
        (void) CHECK_IMAGE_CLEAN(re, 0);
        got = disk_read_all(re, &size);
        ASSERT_EQ_U64(size, DISK_SIZE);
        for (uint64_t off = 0; off < size; off += 4096) {
                bool zero = true;

                for (size_t i = 0; i < 4096 && zero; i++)
                        zero = got[off + i] == 0;
                if (!zero && memcmp(got + off, content + off, 4096) != 0)
                        FAIL("cancelled compressed copy: the cluster at %" PRIu64 " holds neither zeros nor "
                             "the source's data", off);
        }
        free(got);

        /* not cancelled: the content, clean */
        vdisk_disk_unref(dst);
        vdisk_io_unref(dio);
        dst = disk_new();
        dio = mem_io("cancel-cc-dst2.qcow2", NULL, 0);
        test_set_context("compressed copy, not cancelled");
        p = progress_new(&w, 0);
        ASSERT_OK(vdisk_copy(sd, dst, dio, "qcow2", &o, p));
        assert_progress_complete(&w, p);
        vdisk_progress_free(p);
        assert_content(dst, content, DISK_SIZE, "compressed copy destination");
        ASSERT_EQ_U64(CHECK_IMAGE_CLEAN(dst, 0), 0);
        /* compressed indeed: 3/4 of the data halves at least */
        ASSERT_OK(vdisk_io_memory_data(dio, (const void **) &got, &len));
        ASSERT(len < DISK_SIZE / 4 * 3);

        free(src_bytes);
        free(content);
        vdisk_disk_unref(re);
        vdisk_disk_unref(dst);
        vdisk_disk_unref(sd);
        vdisk_io_unref(dio);
        vdisk_io_unref(sio);
}

int main(void) {
        test_copy();
        test_copy_compress();
        test_merge(2, 0);   /* forward, apart */
        test_merge(2, 1);   /* forward, adjacent */
        test_merge(0, 2);   /* backward, apart */
        test_merge(0, 1);   /* backward, adjacent */
        test_compact(0);
        test_compact(2);
        chain_fmt = "vmdk";
        test_compact(0);
        chain_fmt = "qcow2";
        test_compact(0);
        chain_fmt = "vdi";
        test_shrink_progress();
        printf("test-cancel: all passed\n");
        return 0;
}
