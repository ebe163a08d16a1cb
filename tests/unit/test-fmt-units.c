/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests of lib/fmt/units' compression side: units_compress() output
 * decodes with qemu's settings (raw deflate, 4 KiB window: units_inflate;
 * zstd frames), a result that would not fit is reported (1), the
 * compressors of several threads do not interfere, and
 * units_incompressible() tells random bytes from compressible ones. */
#include <pthread.h>
#include <zstd.h>

#include "fmt/units.h"
#include "tests.h"
#include "util/util.h"

#define CL 65536

static void fill_text(uint8_t *p, size_t len, rng *r) {
        static const char *const words[] = { "cluster ", "qcow2 ", "refcount ", "zstd ", "deflate ", "table " };

        for (size_t i = 0; i < len;) {
                const char *w = words[rng_next(r) % ELEMENTSOF(words)];

                for (size_t k = 0; w[k] && i < len; k++)
                        p[i++] = (uint8_t) w[k];
        }
}

/* Compresses `in` with `codec` and decodes it back. */
static void roundtrip(units_codec codec, const uint8_t *in, size_t *ret_len) {
        uint8_t *enc = malloc(CL), *dec = malloc(CL);
        size_t n = 0;

        ASSERT(enc && dec);
        ASSERT(units_compress(codec, in, CL, enc, CL - 1, &n) == 0);
        ASSERT(n > 0 && n < CL - 1);
        if (codec == UNITS_DEFLATE12) {
                map_result m = { .kind = MAP_ENCODED, .unit_length = CL, .encoded_length = (uint32_t) n };
                uint64_t total;
                bool end, bad;

                ASSERT_OK(units_inflate(CL, &m, enc, dec, &total, &end, &bad));
                ASSERT(end && !bad && total == CL);
        } else
                ASSERT(ZSTD_decompress(dec, CL, enc, n) == CL);
        ASSERT_MEMEQ(dec, in, CL);
        *ret_len = n;
        free(enc);
        free(dec);
}

typedef struct job {
        units_codec codec;
        uint64_t seed;
} job;

static void *thread_main(void *arg) {
        const job *j = arg;
        uint8_t *in = malloc(CL);
        rng r;

        ASSERT(in);
        rng_seed(&r, j->seed);
        for (int i = 0; i < 20; i++) {
                size_t n;

                fill_text(in, CL, &r);
                roundtrip(j->codec, in, &n);
        }
        free(in);
        return NULL;
}

int main(void) {
        uint8_t *in = malloc(CL), *out = malloc(CL);
        size_t n_deflate, n_zstd, n = 0;
        pthread_t t[4];
        job jobs[4];
        rng r;

        ASSERT(in && out);
        rng_seed(&r, 1);

        /* text: both codecs shrink it a lot and give the bytes back */
        fill_text(in, CL, &r);
        roundtrip(UNITS_DEFLATE12, in, &n_deflate);
        roundtrip(UNITS_ZSTD, in, &n_zstd);
        ASSERT(n_deflate < CL / 4 && n_zstd < CL / 4);
        ASSERT(!units_incompressible(in, CL));

        /* a 4 KiB window: a match 8 KiB back is not used (qemu inflates
         * with windowBits -12); 8 KiB of random bytes repeated once */
        rng_fill(&r, in, 8192);
        memcpy(in + 8192, in, 8192);
        memset(in + 16384, 0, CL - 16384);
        roundtrip(UNITS_DEFLATE12, in, &n);
        ASSERT(n > 16000);

        /* random bytes: do not fit in less than the input, and look random */
        rng_fill(&r, in, CL);
        ASSERT(units_compress(UNITS_DEFLATE12, in, CL, out, CL - 1, &n) == 1);
        ASSERT(units_compress(UNITS_ZSTD, in, CL, out, CL - 1, &n) == 1);
        ASSERT(units_incompressible(in, CL));
        /* random in one part, text in another: not incompressible */
        fill_text(in + CL / 2, CL / 2, &r);
        ASSERT(!units_incompressible(in, CL));
        /* too short to tell */
        ASSERT(!units_incompressible(in, 1000));

        /* several threads, each with its own compressors */
        for (unsigned i = 0; i < ELEMENTSOF(t); i++) {
                jobs[i] = (job) { .codec = i % 2 ? UNITS_ZSTD : UNITS_DEFLATE12, .seed = 100 + i };
                ASSERT(pthread_create(&t[i], NULL, thread_main, &jobs[i]) == 0);
        }
        for (unsigned i = 0; i < ELEMENTSOF(t); i++)
                ASSERT(pthread_join(t[i], NULL) == 0);

        free(in);
        free(out);
        printf("test-fmt-units: all passed\n");
        return 0;
}
