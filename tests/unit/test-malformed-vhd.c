/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `malformed`: hostile VHD images.
 *
 * Samples are made through the API (a dynamic VHD with 64 KiB blocks and
 * data in some of them, a differencing VHD over it, a fixed VHD) and then
 * damaged: truncated at every sector up to the first block and at every
 * block boundary; header fields changed (the checksums sealed again, so the
 * field checks themselves are reached: huge max table entries as in qemu's
 * afl5.img, block sizes, BAT and header offsets, sizes, types, versions);
 * checksums broken; BAT entries pointing into the headers, past the end, or
 * at another block; random bit flips. Every case must open or be refused
 * with a clean error, and whatever opens must read, write and flush with
 * clean results. Checksum damage and the afl5 case must be refused. Cases
 * that must stay valid are read back and compared.
 * The whole list runs twice, each time over samples made anew, and every
 * case must get the same verdict both times: the samples are pinned (the
 * creation time and the random UUID in the footer are fixed, as the bit
 * flips and checksums depend on every byte), so the bytes are the same and
 * any difference is the reader's.
 * Last, a BAT entry another writer changes under an open image, once the
 * page of the BAT that held it was read again: the block reads from its new
 * place with the bitmap found there, never with the one cached before.
 *
 * Usage: test-malformed-vhd [SEED [ITERATIONS]]
 */
#include "tests.h"

#define BLOCK (64 * KiB)
#define DISK (1 * MiB)

typedef struct sample {
        const char *name;
        uint8_t *bytes;
        size_t len;
        uint8_t *content;      /* what it reads (base: the sample alone) */
} sample;

static sample dyn, fixed;
static unsigned n_cases, n_opened, n_refused;

/* The verdict at open of every case of the first pass, checked in the second */
static int *verdicts;
static unsigned n_verdicts;
static bool replay;

static uint32_t be32(const uint8_t *p) {
        return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}
static void put32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t) (v >> 24), p[1] = (uint8_t) (v >> 16), p[2] = (uint8_t) (v >> 8), p[3] = (uint8_t) v;
}
static void put64(uint8_t *p, uint64_t v) {
        put32(p, (uint32_t) (v >> 32));
        put32(p + 4, (uint32_t) v);
}
static uint64_t be64(const uint8_t *p) {
        return (uint64_t) be32(p) << 32 | be32(p + 4);
}

static void seal(uint8_t *p, size_t len, size_t field) {
        uint32_t sum = 0;

        put32(p + field, 0);
        for (size_t i = 0; i < len; i++)
                sum += p[i];
        put32(p + field, ~sum);
}

/* Re-seals every structure of a dynamic sample (footer at 0 and at the end,
 * the dynamic header at 512) so that field checks, not checksums, decide. */
static void seal_all(uint8_t *b, size_t len) {
        if (len >= 512 && memcmp(b, "conectix", 8) == 0)
                seal(b, 512, 64);
        if (len >= 1536 && memcmp(b + 512, "cxsparse", 8) == 0)
                seal(b + 512, 1024, 36);
        if (len >= 512 && memcmp(b + len - 512, "conectix", 8) == 0)
                seal(b + len - 512, 512, 64);
}

typedef enum { ANY, MUST_REFUSE, MUST_READ } expect;

static int try_image(const char *label, const uint8_t *bytes, size_t len, bool writable, expect e,
                     const uint8_t *content) {
        vdisk_io *io = mem_io(label, bytes, len);
        vdisk_disk *d = disk_new();
        int r;

        n_cases++;
        test_set_context("case %s (%zu bytes)", label, len);
        vdisk_clear_error();
        r = vdisk_disk_open(d, io, n_cases % 2 ? "vpc" : NULL, writable ? 0 : VDISK_OPEN_READONLY);
        if (!replay) {
                verdicts = realloc(verdicts, n_cases * sizeof *verdicts);
                ASSERT(verdicts);
                verdicts[n_cases - 1] = r;
                n_verdicts = n_cases;
        } else {
                ASSERT(n_cases <= n_verdicts);
                if (r != verdicts[n_cases - 1])
                        FAIL("%s: verdict %d, but %d on the same bytes before (%s)", label, r,
                             verdicts[n_cases - 1], r < 0 ? vdisk_last_error() : "opened");
        }
        if (r < 0) {
                test_check_clean_error(__FILE__, __LINE__, label, r);
                if (e == MUST_READ)
                        FAIL("%s: a valid image was refused: %d (%s)", label, r, vdisk_last_error());
                n_refused++;
                goto out;
        }
        if (e == MUST_REFUSE)
                FAIL("%s: opened, but it must be refused", label);
        n_opened++;
        {
                uint64_t size = vdisk_disk_size(d);
                uint8_t *buf = malloc(DISK);

                ASSERT(buf);
                if (size > 64 * MiB)
                        size = 64 * MiB;   /* a lying size: read the start only */
                for (uint64_t off = 0; off < size; off += DISK) {
                        size_t n = (size_t) MIN((uint64_t) DISK, size - off);

                        r = vdisk_disk_read(d, buf, n, off);
                        if (r < 0) {
                                test_check_clean_error(__FILE__, __LINE__, "read", r);
                                if (e == MUST_READ)
                                        FAIL("%s: reading a valid image failed: %d", label, r);
                                break;
                        }
                        if (content && off == 0 && memcmp(buf, content, n) != 0)
                                FAIL("%s: content differs", label);
                }
                if (writable && size >= 512) {
                        memset(buf, 0xe7, 4096);
                        r = vdisk_disk_write(d, buf, (size_t) MIN((uint64_t) 4096, size), ALIGN_DOWN(size / 3, 512));
                        if (r < 0)
                                test_check_clean_error(__FILE__, __LINE__, "write", r);
                        r = vdisk_disk_flush(d);
                        if (r < 0)
                                test_check_clean_error(__FILE__, __LINE__, "flush", r);
                }
                free(buf);
        }
out:
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        return r;
}

/* The footer's creation time and UUID, fixed so that every run makes the same bytes */
static void pin_footer(uint8_t *f) {
        put32(f + 24, 0x2b000000);
        memset(f + 68, 0x5a, 16);
        seal(f, 512, 64);
}

static void make_samples(void) {
        vdisk_create_opts o = { .size = sizeof o, .block_size = BLOCK };
        static const char *const fixed_opts[] = { "subformat", "fixed", "force_size", "on", NULL };
        static const char *const dyn_opts[] = { "force_size", "on", NULL };
        uint8_t *buf = malloc(DISK);
        vdisk_disk *d;
        vdisk_io *io;
        rng r;

        ASSERT(buf);
        rng_seed(&r, 7);
        rng_fill(&r, buf, DISK);
        memset(buf + 3 * BLOCK, 0, 5 * BLOCK);      /* holes */

        for (int k = 0; k < 2; k++) {
                sample *s = k ? &fixed : &dyn;

                o.options = k ? fixed_opts : dyn_opts;
                io = mem_io(k ? "fixed.vhd" : "dynamic.vhd", NULL, 0);
                d = disk_new();
                ASSERT_OK(vdisk_disk_create_base(d, io, "vpc", DISK, &o));
                ASSERT_EQ_U64(vdisk_disk_size(d), DISK);
                ASSERT_OK(vdisk_disk_write(d, buf, 3 * BLOCK + 512, 0));
                ASSERT_OK(vdisk_disk_write(d, buf + 9 * BLOCK, DISK - 9 * BLOCK, 9 * BLOCK));
                ASSERT_OK(vdisk_disk_flush(d));
                vdisk_disk_unref(d);
                s->name = k ? "fixed" : "dynamic";
                s->bytes = mem_io_copy(io, &s->len);
                vdisk_io_unref(io);
                pin_footer(s->bytes + s->len - 512);
                if (!k)
                        pin_footer(s->bytes);
                s->content = malloc(DISK);
                ASSERT(s->content);
                memcpy(s->content, buf, DISK);
                memset(s->content + 3 * BLOCK + 512, 0, 6 * BLOCK - 512);
        }
        free(buf);
}

static void test_pristine(void) {
        try_image("dynamic", dyn.bytes, dyn.len, false, MUST_READ, dyn.content);
        try_image("fixed", fixed.bytes, fixed.len, false, MUST_READ, fixed.content);
        try_image("dynamic-rw", dyn.bytes, dyn.len, true, MUST_READ, NULL);
        try_image("fixed-rw", fixed.bytes, fixed.len, true, MUST_READ, NULL);
}

static void test_truncation(const sample *s) {
        char label[96];
        size_t first_block = 1536 + 512 * 1;   /* header + one BAT sector */

        for (size_t len = 0; len < s->len; len += len < first_block + 1024 ? 256 : BLOCK / 2) {
                snprintf(label, sizeof label, "%s-truncated-%zu", s->name, len);
                try_image(label, s->bytes, len, false, ANY, NULL);
                try_image(label, s->bytes, len, true, ANY, NULL);
        }
        for (size_t cut = 1; cut <= 2; cut++) {
                snprintf(label, sizeof label, "%s-minus-%zu", s->name, cut);
                try_image(label, s->bytes, s->len - cut, false, ANY, NULL);
        }
}

static void try_field(const sample *s, const char *what, size_t off, int width, uint64_t v, expect e,
                      bool do_seal) {
        uint8_t *b = malloc(s->len);
        char label[128];

        ASSERT(b);
        memcpy(b, s->bytes, s->len);
        if (width == 4)
                put32(b + off, (uint32_t) v);
        else if (width == 8)
                put64(b + off, v);
        else
                b[off] = (uint8_t) v;
        if (do_seal)
                seal_all(b, s->len);
        snprintf(label, sizeof label, "%s-%s-%#" PRIx64, s->name, what, v);
        try_image(label, b, s->len, false, e, NULL);
        try_image(label, b, s->len, true, e, NULL);
        free(b);
}

static void test_fields(void) {
        static const uint64_t v32[] = { 0, 1, 511, 512, 513, 0x10000, 0x40000001, 0x7fffffff, 0xffffffff };
        static const uint64_t v64[] = { 0, 1, 512, 1536, UINT64_C(1) << 40, UINT64_MAX, UINT64_MAX - 511 };
        const size_t end = dyn.len - 512;

        /* afl5.img: max table entries 1073741825 must be refused */
        try_field(&dyn, "max-entries-afl5", 512 + 28, 4, 1073741825, MUST_REFUSE, true);
        /* checksums */
        try_field(&dyn, "footer0-checksum", 64, 4, be32(dyn.bytes + 64) + 1, ANY, false);
        try_field(&dyn, "dyn-checksum", 512 + 36, 4, be32(dyn.bytes + 512 + 36) + 1, MUST_REFUSE, false);
        try_field(&fixed, "footer-checksum", fixed.len - 512 + 64, 4, be32(fixed.bytes + fixed.len - 448) + 1,
                  MUST_REFUSE, false);
        {
                /* both footers of a dynamic image bad: refused */
                uint8_t *b = malloc(dyn.len);
                ASSERT(b);
                memcpy(b, dyn.bytes, dyn.len);
                b[100] ^= 1;
                b[end + 100] ^= 1;
                try_image("dynamic-both-footers-bad", b, dyn.len, false, MUST_REFUSE, NULL);
                free(b);
        }
        for (size_t i = 0; i < ELEMENTSOF(v32); i++) {
                try_field(&dyn, "max-entries", 512 + 28, 4, v32[i], ANY, true);
                try_field(&dyn, "block-size", 512 + 32, 4, v32[i], ANY, true);
                try_field(&dyn, "type", 60, 4, v32[i], ANY, true);
                try_field(&dyn, "version", 12, 4, v32[i], ANY, true);
                try_field(&dyn, "dyn-version", 512 + 24, 4, v32[i], ANY, true);
                try_field(&fixed, "type", fixed.len - 512 + 60, 4, v32[i], ANY, true);
                try_field(&dyn, "bat-entry0", 1536, 4, v32[i], ANY, true);
                try_field(&dyn, "bat-entry1", 1540, 4, v32[i], ANY, true);
                try_field(&dyn, "cylinders", 56, 4, v32[i] << 16 | 0x10ff, ANY, true);
        }
        for (size_t i = 0; i < ELEMENTSOF(v64); i++) {
                try_field(&dyn, "data-offset", 16, 8, v64[i], ANY, true);
                try_field(&dyn, "bat-offset", 512 + 16, 8, v64[i], ANY, true);
                try_field(&dyn, "current-size", 48, 8, v64[i], ANY, true);
                try_field(&fixed, "current-size", fixed.len - 512 + 48, 8, v64[i], ANY, true);
        }
        /* a BAT entry equal to another: overlapping blocks */
        try_field(&dyn, "bat-dup", 1540, 4, be32(dyn.bytes + 1536), ANY, true);
        /* a BAT entry into the headers */
        try_field(&dyn, "bat-into-header", 1536, 4, 1, ANY, true);
        /* creator vpc with a tiny geometry: the size follows CHS (T1) */
        {
                uint8_t *b = malloc(dyn.len);
                ASSERT(b);
                memcpy(b, dyn.bytes, dyn.len);
                memcpy(b + 28, "vpc ", 4);
                put32(b + 56, (1u << 16) | (1u << 8) | 1);   /* 1/1/1: 512 bytes */
                memcpy(b + end, b, 512);
                seal_all(b, dyn.len);
                try_image("dynamic-vpc-chs", b, dyn.len, false, MUST_READ, NULL);
                {
                        vdisk_io *io = mem_io("chs", b, dyn.len);
                        vdisk_disk *d = disk_new();
                        ASSERT_OK(vdisk_disk_open(d, io, "vpc", VDISK_OPEN_READONLY));
                        ASSERT_EQ_U64(vdisk_disk_size(d), 512);
                        vdisk_disk_unref(d);
                        vdisk_io_unref(io);
                }
                free(b);
        }
        /* A fixed VHD whose data begins with another VHD's footer (a disk
         * holding an image): still the fixed image, by its end footer. */
        {
                uint8_t *b = malloc(fixed.len), *c = malloc(DISK);
                ASSERT(b && c);
                memcpy(b, fixed.bytes, fixed.len);
                memcpy(b, dyn.bytes, 512);
                memcpy(c, fixed.content, DISK);
                memcpy(c, dyn.bytes, 512);
                try_image("fixed-holding-a-footer", b, fixed.len, false, MUST_READ, c);
                free(b);
                free(c);
        }
        (void) be64;
}

static void free_sample(sample *s) {
        free(s->bytes);
        free(s->content);
        *s = (sample) {};
}

static void fuzz(const sample *s, uint64_t seed, unsigned iterations) {
        uint8_t *b = malloc(s->len);
        rng r;

        ASSERT(b);
        rng_seed(&r, seed);
        for (unsigned it = 0; it < iterations; it++) {
                unsigned flips = (unsigned) rng_range(&r, 1, 8);
                char label[96];

                memcpy(b, s->bytes, s->len);
                for (unsigned f = 0; f < flips; f++) {
                        size_t at;

                        if (rng_chance(&r, 60))
                                at = (size_t) rng_below(&r, 1536 + 512);   /* footer, header, BAT */
                        else
                                at = s->len - 512 + (size_t) rng_below(&r, 512);
                        b[at] ^= (uint8_t) (1u << rng_below(&r, 8));
                }
                if (rng_chance(&r, 80))
                        seal_all(b, s->len);
                snprintf(label, sizeof label, "fuzz-%s-seed%" PRIu64 "-iter%u", s->name, seed, it);
                try_image(label, b, s->len, rng_chance(&r, 25), ANY, NULL);
        }
        free(b);
}

/* Reads every BAT page of `d` once (2 MiB of BAT, a 1 MiB budget): the
 * first ones are dropped. */
static void walk_bat(vdisk_disk *d) {
        vdisk_metadata_stats st = { .size = sizeof st };
        uint64_t off = 0, size = vdisk_disk_size(d);

        while (off < size) {
                vdisk_extent e;

                ASSERT_OK(vdisk_disk_block_status(d, off, size - off, &e));
                off += e.length;
        }
        ASSERT_OK(vdisk_disk_get_metadata_stats(d, &st));
        ASSERT(st.evictions > 0);
}

/* Points block 0's BAT entry at the last block, as another writer of the
 * file would, and marks that block's sectors 64..127 (its second half)
 * clear. */
static void move_block0(vdisk_io *io, uint64_t last) {
        uint8_t dyn_hdr[1024], ent[4], clear[8] = { 0 };
        uint64_t bat;

        ASSERT_OK(vdisk_io_pread(io, dyn_hdr, sizeof dyn_hdr, 512));
        bat = be64(dyn_hdr + 16);
        ASSERT_OK(vdisk_io_pread(io, ent, 4, bat + 4 * (last / BLOCK)));
        ASSERT_OK(vdisk_io_pwrite(io, ent, 4, bat));
        ASSERT_OK(vdisk_io_pwrite(io, clear, sizeof clear, (uint64_t) be32(ent) * 512 + 8));
}

/* A cached bitmap never outlives its BAT entry: another writer moves block 0
 * under a read-only open, and once the BAT page is read again, block 0 reads
 * from its new place with the bitmap found there (data where it is set,
 * zeros where it is clear). (A writable open cannot drop a BAT page alone:
 * its first write charges a table as large as the BAT.) */
static void test_bat_changed_under(void) {
        static const char *const opts[] = { "force_size", "on", NULL };
        vdisk_create_opts o = { .size = sizeof o, .block_size = BLOCK, .options = opts };
        const uint64_t size = 32ull << 30, last = size - BLOCK;    /* 524288 entries */
        uint8_t buf[BLOCK];
        vdisk_disk *d = disk_new();
        vdisk_io *io = mem_io("changed.vhd", NULL, 0);

        test_set_context("%s", "BAT entry changed under the open image");
        ASSERT_OK(vdisk_disk_create_base(d, io, "vpc", size, &o));
        memset(buf, 0x11, BLOCK);
        ASSERT_OK(vdisk_disk_write(d, buf, BLOCK, 0));
        memset(buf, 0x22, BLOCK);
        ASSERT_OK(vdisk_disk_write(d, buf, BLOCK, last));
        ASSERT_OK(vdisk_disk_flush(d));
        vdisk_disk_unref(d);
        d = disk_new();
        ASSERT_OK(vdisk_disk_set_metadata_budget(d, 1 * MiB));
        ASSERT_OK(vdisk_disk_open(d, io, "vpc", VDISK_OPEN_READONLY));
        ASSERT_OK(vdisk_disk_read(d, buf, BLOCK, 0));
        ASSERT(buf[0] == 0x11 && buf[BLOCK - 1] == 0x11);
        move_block0(io, last);
        walk_bat(d);
        ASSERT_OK(vdisk_disk_read(d, buf, BLOCK, 0));
        ASSERT(buf[0] == 0x22 && buf[BLOCK / 2 - 1] == 0x22);
        ASSERT(buf_is_zero(buf + BLOCK / 2, BLOCK / 2));
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        test_set_context("%s", "");
}

int main(int argc, char **argv) {
        uint64_t seed = 20261206;
        unsigned iterations = 1500;

        if (argc > 1)
                seed = strtoull(argv[1], NULL, 0);
        if (argc > 2)
                iterations = (unsigned) strtoul(argv[2], NULL, 0);

        for (int pass = 0; pass < 2; pass++) {
                sample first_dyn = dyn, first_fixed = fixed;

                make_samples();
                if (pass) {
                        ASSERT(dyn.len == first_dyn.len && memcmp(dyn.bytes, first_dyn.bytes, dyn.len) == 0);
                        ASSERT(fixed.len == first_fixed.len &&
                               memcmp(fixed.bytes, first_fixed.bytes, fixed.len) == 0);
                        free_sample(&first_dyn);
                        free_sample(&first_fixed);
                        replay = true;
                        n_cases = 0;
                }
                test_pristine();
                test_truncation(&dyn);
                test_truncation(&fixed);
                test_fields();
                fuzz(&dyn, seed, iterations);
                fuzz(&fixed, seed + 1, iterations / 3);
                if (!pass)
                        printf("test-malformed-vhd: %u cases, %u opened, %u refused at open\n", n_cases,
                               n_opened, n_refused);
        }
        ASSERT(n_cases == n_verdicts);
        test_bat_changed_under();
        free_sample(&dyn);
        free_sample(&fixed);
        free(verdicts);
        return 0;
}
