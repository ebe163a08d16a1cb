/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * VMDK vmfsSparse (COWD) extents (lib/backends/vmdk-cowd.c) through a
 * descriptor, the extent built here from the spec's layout: the pristine
 * extent reads the grains put there (512-byte grains, tables missing, a
 * partial last table); then truncation at every sector, every header field
 * edited, grain directory and grain table entries into the header, into the
 * GD, past the end: a clean error each (negative errno with a message, never
 * -ENOMEM), no crash, reads never outside the file.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests.h"

#define S 512u
#define CAP 20000u                    /* sectors: 5 tables of 4096 one-sector grains */
#define GD_OFF 4u
static const uint32_t gt_at[5] = { 8, 0, 40, 0, 72 };
#define FIRST_GRAIN 104u

static uint8_t *img, *want;
static size_t img_len;
static unsigned n_cases, n_refused;
static int last_read;

static void put32(uint8_t *p, uint32_t v) {
        for (unsigned i = 0; i < 4; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

static void make(void) {
        static const uint32_t sectors[] = { 0, 1, 2, 100, 4095, 8199, 16384, 16385, 19999 };
        rng r;

        img_len = (FIRST_GRAIN + ELEMENTSOF(sectors)) * S;
        img = calloc(1, img_len);
        want = calloc(1, CAP * S);
        ASSERT(img && want);
        put32(img + 0, 0x44574f43);
        put32(img + 4, 1);
        put32(img + 8, 3);
        put32(img + 12, CAP);
        put32(img + 16, 1);
        put32(img + 20, GD_OFF);
        put32(img + 24, 5);
        put32(img + 28, FIRST_GRAIN + (uint32_t) ELEMENTSOF(sectors));
        for (unsigned t = 0; t < 5; t++)
                put32(img + GD_OFF * S + 4 * t, gt_at[t]);
        rng_seed(&r, 5);
        for (size_t i = 0; i < ELEMENTSOF(sectors); i++) {
                uint32_t sct = sectors[i], t = sct / 4096, at = FIRST_GRAIN + (uint32_t) i;

                ASSERT(gt_at[t]);
                put32(img + gt_at[t] * S + 4 * (sct % 4096), at);
                rng_fill(&r, img + at * S, S);
                memcpy(want + (size_t) sct * S, img + at * S, S);
        }
}

static int res_companion(void *user, const char *name, const char *image_name, uint32_t flags, vdisk_io **ret) {
        const uint8_t **in = user;

        if (strcmp(name, "delta.vmdk") != 0)
                return -ENOENT;
        *ret = mem_io(name, in[0], (size_t) (in[1] - in[0]));
        return 0;
}

static int try_cowd(const char *label, const uint8_t *b, size_t len, int must) {
        static const char desc[] = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n"
                                   "createType=\"vmfsSparse\"\nRW 20000 VMFSSPARSE \"delta.vmdk\"\n";
        const uint8_t *in[2] = { b, b + len };
        vdisk_resolver_ops ops = { .size = sizeof ops, .open_companion = res_companion };
        vdisk_resolver *res = NULL;
        vdisk_io *io = mem_io("cowd.vmdk", desc, strlen(desc));
        vdisk_disk *d = disk_new();
        uint8_t *buf = malloc(CAP * S);
        int r;

        ASSERT(buf);
        n_cases++;
        last_read = 0;
        test_set_context("COWD case %s (%zu bytes)", label, len);
        ASSERT_OK(vdisk_resolver_new_ops(&ops, in, &res));
        ASSERT_OK(vdisk_disk_set_resolver(d, res));
        vdisk_resolver_unref(res);
        vdisk_clear_error();
        r = vdisk_disk_open(d, io, "vmdk", VDISK_OPEN_READONLY);
        if (r < 0) {
                test_check_clean_error(__FILE__, __LINE__, label, r);
                if (must)
                        FAIL("%s: refused: %s", label, vdisk_last_error());
                n_refused++;
        } else {
                last_read = vdisk_disk_read(d, buf, CAP * S, 0);
                if (last_read < 0)
                        test_check_clean_error(__FILE__, __LINE__, "read", last_read);
                if (must) {
                        ASSERT_OK(last_read);
                        ASSERT_MEMEQ(buf, want, CAP * S);
                }
        }
        free(buf);
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        return r;
}

static int edit(const char *what, size_t off, uint32_t v) {
        uint8_t *b = malloc(img_len);
        char label[64];
        int r;

        ASSERT(b);
        memcpy(b, img, img_len);
        put32(b + off, v);
        snprintf(label, sizeof label, "%s=%#" PRIx32, what, v);
        r = try_cowd(label, b, img_len, 0);
        free(b);
        return r;
}

int main(void) {
        static const uint32_t any[] = { 0, 1, 2, 3, 4, 7, 8, 103, 104, 112, 113, 4096, 20000, 20001, 0x7fffffff,
                                        0xffffffff };
        static const char *const names[] = { "magic", "version", "flags", "capacity", "grain", "gd", "gd-n",
                                             "free" };

        make();
        try_cowd("pristine", img, img_len, 1);
        for (size_t l = 0; l <= img_len; l += S) {
                char label[32];

                snprintf(label, sizeof label, "trunc-%zu", l);
                if (try_cowd(label, img, l, 0) >= 0 && l < img_len)
                        ASSERT(last_read == -EUCLEAN);   /* a table or grain it uses is cut */
                if (l > 0)
                        try_cowd(label, img, l - 1, 0);
        }
        for (size_t f = 0; f < ELEMENTSOF(names); f++)
                for (size_t i = 0; i < ELEMENTSOF(any); i++)
                        edit(names[f], 4 * f, any[i]);
        ASSERT(edit("version", 4, 2) == -EOPNOTSUPP);
        ASSERT(edit("gd-n", 24, 4) == -EUCLEAN);
        ASSERT(edit("gd-into-header", 20, 2) == -EUCLEAN);
        ASSERT(edit("capacity", 12, CAP - 1) == -EUCLEAN);
        for (size_t i = 0; i < ELEMENTSOF(any); i++) {
                uint32_t v = any[i];

                if (edit("gde0", GD_OFF * S, v) >= 0 && v != 0 && v != 8)
                        ASSERT(last_read == -EUCLEAN || (v >= 5 && v * S + 16384 <= img_len));
                if (edit("gte0", gt_at[0] * S, v) >= 0 && v != 0)
                        ASSERT(last_read == -EUCLEAN || (v >= 5 && v < img_len / S));
        }
        printf("test-cowd: %u cases, %u refused at open\n", n_cases, n_refused);
        ASSERT(n_refused > 50);
        free(img);
        free(want);
        return 0;
}
