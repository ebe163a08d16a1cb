/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests of the encode pool (lib/ops/encode.c) on a toy backend whose
 * encode() tags and reverses a unit and whose stream_write_encoded() checks
 * every unit it gets: offsets rising, content the one the test put there,
 * the calling thread. The test plays copy: a ring of buffers, each poisoned
 * as soon as the pool gives it back, so a buffer given back before its units
 * were encoded shows as wrong content. Cases: order and content with 1 to 8
 * threads and 1 to 4 buffers in the pool (short, empty, all-zero and
 * partial-unit buffers among them); a failed encode() and a failed write in
 * the middle (nothing written after it, the error returned, later calls
 * too); a stop with buffers still in the pool (nothing written); and no
 * barrier at the end of a buffer: while one unit of the first buffer is held
 * back, the next buffers are taken and encoded (a pool that waits at a
 * buffer's end hangs there: the test's timeout fails it).
 */
#include <pthread.h>

#include "core/core.h"
#include "tests.h"

#define UNIT 4096u
#define BUF_UNITS (OP_BUFFER_SIZE / UNIT)
#define HDR 16u

typedef struct toy {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        pthread_t caller;
        uint64_t last_end;              /* offset after the last unit written */
        uint64_t n_written, n_encoded;
        uint64_t fail_encode_at;        /* offset whose encode() fails (UINT64_MAX: none) */
        uint64_t fail_write_at;         /* offset whose write fails */
        uint64_t gate_at;               /* offset whose encode() waits for the gate */
        bool gate_open;
        bool bad;                       /* something wrong was seen (message printed) */
        uint8_t *seen;                  /* per unit of the image: written */
        uint64_t size;
} toy;

static toy T;

/* The content of the image at `offset`, as the test hands it over: every
 * 7th unit all zeros, the rest a function of the offset. */
static uint8_t byte_at(uint64_t offset) {
        uint64_t u = offset / UNIT;

        if (u % 7 == 3)
                return 0;
        return (uint8_t) ((u * UINT64_C(0x9e3779b97f4a7c15)) >> 56) ^ (uint8_t) offset ^ (uint8_t) (offset >> 9);
}

static size_t toy_bound(const void *st, size_t len) {
        (void) st;
        return len + HDR;
}

static int toy_encode(const void *st, const void *in, size_t len, void *out, size_t *ret_len) {
        const uint8_t *i = in;
        uint8_t *o = out;
        uint64_t first;

        (void) st;
        /* The offset is not passed: the first bytes tell it (see fill). */
        memcpy(&first, i, sizeof first);
        pthread_mutex_lock(&T.lock);
        while (!T.gate_open && T.gate_at != UINT64_MAX && len >= 8 && first == T.gate_at)
                pthread_cond_wait(&T.cond, &T.lock);
        T.n_encoded++;
        pthread_cond_broadcast(&T.cond);
        pthread_mutex_unlock(&T.lock);
        if (first == T.fail_encode_at)
                return -EIO;
        memcpy(o, "TOYENC", 6);
        memcpy(o + 8, &len, sizeof(uint64_t));
        for (size_t k = 0; k < len; k++)
                o[HDR + k] = i[len - 1 - k];
        *ret_len = len + HDR;
        return 0;
}

#define BAD(...) do { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); T.bad = true; } while (0)

static int toy_write_encoded(void *st, uint64_t offset, size_t len, const void *enc, size_t enc_len) {
        const uint8_t *e = enc;
        uint64_t l;

        (void) st;
        if (!pthread_equal(pthread_self(), T.caller))
                BAD("unit %" PRIu64 " written by another thread than the caller's", offset);
        if (offset < T.last_end || offset % UNIT)
                BAD("unit %" PRIu64 " written after %" PRIu64 " (not in order)", offset, T.last_end);
        if (offset == T.fail_write_at)
                return -ENOSPC;
        memcpy(&l, e + 8, sizeof l);
        if (enc_len != len + HDR || memcmp(e, "TOYENC", 6) || l != len)
                BAD("unit %" PRIu64 ": not what encode() made (%zu bytes for %zu)", offset, enc_len, len);
        else
                for (size_t k = 0; k < len; k++) {
                        uint64_t off = offset + len - 1 - k;
                        uint8_t want = off % UNIT < 8 ? ((const uint8_t *) &(uint64_t) { offset })[off % UNIT]
                                                      : byte_at(off);

                        if (e[HDR + k] != want) {
                                BAD("unit %" PRIu64 ": wrong byte at %" PRIu64 " (a buffer given back too early?)",
                                    offset, off);
                                break;
                        }
                }
        if (T.seen[offset / UNIT])
                BAD("unit %" PRIu64 " written twice", offset);
        T.seen[offset / UNIT] = 1;
        T.last_end = offset + len;
        T.n_written++;
        return 0;
}

static const vdisk_backend toy_backend = {
        .encode_bound = toy_bound,
        .encode = toy_encode,
        .stream_write_encoded = toy_write_encoded,
};

/* Fills `buf` with the image's bytes [offset, offset + len): each non-zero
 * unit starts with its offset (so encode() knows where it is). */
static void fill(uint8_t *buf, uint64_t offset, uint64_t len) {
        for (uint64_t i = 0; i < len; i++)
                buf[i] = byte_at(offset + i);
        for (uint64_t u = 0; u < len; u += UNIT)
                if (!mem_is_zero(buf + u, (size_t) MIN(UNIT, len - u)) && MIN(UNIT, len - u) >= 8)
                        memcpy(buf + u, &(uint64_t) { offset + u }, 8);
}

static void toy_reset(uint64_t size) {
        free(T.seen);
        T.seen = calloc((size_t) DIV_ROUND_UP(size, UNIT), 1);
        ASSERT(T.seen);
        T.size = size;
        T.caller = pthread_self();
        T.last_end = T.n_written = T.n_encoded = 0;
        T.fail_encode_at = T.fail_write_at = T.gate_at = UINT64_MAX;
        T.gate_open = false;
        T.bad = false;
}

static vdisk_image toy_image(void) {
        return (vdisk_image) { .be = &toy_backend, .layout = { .cluster_size = UNIT } };
}

/* The plan of a stream: buffer lengths (0: a skipped range of `skip`). */
typedef struct piece {
        uint64_t len, skip;
} piece;

static size_t make_plan(piece *plan, size_t max, uint64_t *ret_size) {
        static const uint64_t lens[] = { OP_BUFFER_SIZE, 3 * UNIT, OP_BUFFER_SIZE, 0, UNIT, OP_BUFFER_SIZE / 2,
                                         OP_BUFFER_SIZE, 0, 5 * UNIT, OP_BUFFER_SIZE };
        uint64_t off = 0;
        size_t n = 0;

        for (unsigned round = 0; round < 2; round++)
                for (size_t i = 0; i < ELEMENTSOF(lens) && n < max; i++, n++) {
                        plan[n] = (piece) { .len = lens[i], .skip = lens[i] ? 0 : 2 * UNIT };
                        off += lens[i] + plan[n].skip;
                }
        /* The image ends in a partial unit. */
        plan[n++] = (piece) { .len = UNIT + 1000 };
        off += UNIT + 1000;
        *ret_size = off;
        return n;
}

/* Plays copy over the plan with buffers + 1 ring slots, encode() failing at
 * `fail_encode`, the write at `fail_write` (UINT64_MAX: nowhere); stops
 * after `stop_after` submits (SIZE_MAX: never) and frees the pool with what
 * it holds. Returns the first error of the pool (0: none). */
static int play(unsigned threads, unsigned buffers, size_t stop_after, uint64_t fail_encode, uint64_t fail_write,
                uint64_t *ret_size) {
        piece plan[64];
        uint64_t size, off = 0;
        size_t n = make_plan(plan, 60, &size), head = 0, next = 0;
        unsigned slots = buffers + 1, pending = 0;
        vdisk_image img = toy_image();
        uint8_t *ring[ENCODE_BUFFERS_MAX + 1];
        encode_pool *p = NULL;
        int r = 0;

        toy_reset(size);
        T.fail_encode_at = fail_encode;
        T.fail_write_at = fail_write;
        *ret_size = size;
        for (unsigned i = 0; i < slots; i++)
                ASSERT((ring[i] = malloc(OP_BUFFER_SIZE)));
        ASSERT(encode_pool_new(&img, threads, false, buffers, &p) == 0);
        for (; next < n && next != stop_after; next++) {
                const piece *pc = &plan[next];
                uint8_t *b = ring[next % slots];

                ASSERT(pending < slots);
                fill(b, off, pc->len);
                r = encode_pool_submit(p, pc->len ? b : NULL, pc->len, off);
                if (r < 0)
                        break;
                pending++;
                ASSERT((unsigned) r <= pending);
                ASSERT(encode_pool_pending(p) == pending - (unsigned) r);
                ASSERT(encode_pool_pending(p) <= buffers);
                /* Given back: poison them at once (the ring reuses them). */
                for (int k = 0; k < r; k++, head++, pending--)
                        memset(ring[head % slots], 0xa5, OP_BUFFER_SIZE);
                off += pc->len + pc->skip;
        }
        if (r >= 0 && next == n) {
                r = encode_pool_drain(p);
                if (r >= 0) {
                        ASSERT((unsigned) r == pending);
                        ASSERT(encode_pool_pending(p) == 0);
                        head += (size_t) r;
                        ASSERT(head == n);
                        r = 0;
                }
        }
        if (r < 0) {
                /* Every later call returns the failure, and writes nothing. */
                uint64_t w = T.n_written;

                ASSERT(encode_pool_drain(p) == r);
                ASSERT(encode_pool_submit(p, NULL, 0, size) == r);
                ASSERT(T.n_written == w);
        }
        encode_pool_free(p);
        for (unsigned i = 0; i < slots; i++)
                free(ring[i]);
        return MIN(r, 0);
}

/* Every non-zero unit below `end` was written, none at or above it. */
static void assert_written_below(uint64_t end, uint64_t size) {
        piece plan[64];
        uint64_t s, off = 0;
        size_t n = make_plan(plan, 60, &s);

        ASSERT(s == size);
        for (size_t i = 0; i < n; i++) {
                for (uint64_t u = off; u < off + plan[i].len; u += UNIT) {
                        bool want = (u / UNIT) % 7 != 3 && u < end;

                        if (T.seen[u / UNIT] != want)
                                FAIL("unit at %" PRIu64 ": written %d, expected %d (end %" PRIu64 ")", u,
                                     T.seen[u / UNIT], want, end);
                }
                for (uint64_t u = off + plan[i].len; u < off + plan[i].len + plan[i].skip; u += UNIT)
                        ASSERT(!T.seen[u / UNIT]);
                off += plan[i].len + plan[i].skip;
        }
}

static void test_order(void) {
        static const unsigned threads[] = { 1, 2, 8 };

        for (size_t t = 0; t < ELEMENTSOF(threads); t++)
                for (unsigned buffers = 1; buffers <= ENCODE_BUFFERS_MAX; buffers++) {
                        uint64_t size;

                        test_set_context("order: %u threads, %u buffers", threads[t], buffers);
                        ASSERT(play(threads[t], buffers, SIZE_MAX, UINT64_MAX, UINT64_MAX, &size) == 0);
                        ASSERT(!T.bad);
                        assert_written_below(UINT64_MAX, size);
                }
}

static void test_failures(void) {
        /* A unit of the third buffer (plan: 4 MiB, 3 units, 4 MiB ...). */
        const uint64_t at = OP_BUFFER_SIZE + 3 * UNIT + OP_BUFFER_SIZE / 2 + 2 * UNIT;
        static const unsigned threads[] = { 1, 3 };

        ASSERT((at / UNIT) % 7 != 3);
        for (size_t t = 0; t < ELEMENTSOF(threads); t++)
                for (unsigned buffers = 1; buffers <= 3; buffers += 2) {
                        uint64_t size;

                        test_set_context("failed encode: %u threads, %u buffers", threads[t], buffers);
                        ASSERT(play(threads[t], buffers, SIZE_MAX, at, UINT64_MAX, &size) == -EIO);
                        ASSERT(!T.bad);
                        assert_written_below(at, size);

                        test_set_context("failed write: %u threads, %u buffers", threads[t], buffers);
                        ASSERT(play(threads[t], buffers, SIZE_MAX, UINT64_MAX, at, &size) == -ENOSPC);
                        ASSERT(!T.bad);
                        assert_written_below(at, size);
                }
}

/* Stopped (a cancelled copy) with buffers in the pool: freeing it writes
 * nothing more, and what was written is a prefix in order. */
static void test_stop(void) {
        for (unsigned buffers = 1; buffers <= 3; buffers++) {
                uint64_t size, w;

                test_set_context("stop: %u buffers", buffers);
                ASSERT(play(4, buffers, 5, UINT64_MAX, UINT64_MAX, &size) == 0);
                ASSERT(!T.bad);
                w = T.n_written;
                ASSERT(w > 0);
                /* Pieces 0-4 end at 2 x 4 MiB + 3 + 2 (skipped) + 1 units. */
                ASSERT(T.last_end <= 2 * (uint64_t) OP_BUFFER_SIZE + 6 * UNIT);
                /* The written units are exactly those below the last one's end. */
                assert_written_below(T.last_end, size);
        }
}

static void *open_gate(void *arg) {
        (void) arg;
        pthread_mutex_lock(&T.lock);
        T.gate_open = true;
        pthread_cond_broadcast(&T.cond);
        pthread_mutex_unlock(&T.lock);
        return NULL;
}

/* No barrier at a buffer's end: with the first unit held back in encode(),
 * three buffers are taken without waiting, and the workers encode every
 * unit of all three but the one held back; nothing is written before it. */
static void test_no_barrier(void) {
        vdisk_image img = toy_image();
        uint8_t *bufs[3];
        encode_pool *p;
        uint64_t total = 3 * (uint64_t) BUF_UNITS, data = 0;

        test_set_context("no barrier");
        toy_reset(3 * (uint64_t) OP_BUFFER_SIZE);
        T.gate_at = 0;
        for (unsigned i = 0; i < 3; i++) {
                ASSERT((bufs[i] = malloc(OP_BUFFER_SIZE)));
                fill(bufs[i], (uint64_t) i * OP_BUFFER_SIZE, OP_BUFFER_SIZE);
        }
        for (uint64_t u = 0; u < total; u++)
                data += u % 7 != 3;
        /* Two workers and the caller; three buffers in the pool. */
        ASSERT(encode_pool_new(&img, 3, false, 3, &p) == 0);
        for (unsigned i = 0; i < 3; i++)
                ASSERT(encode_pool_submit(p, bufs[i], OP_BUFFER_SIZE, (uint64_t) i * OP_BUFFER_SIZE) == 0);
        ASSERT(encode_pool_pending(p) == 3);
        pthread_mutex_lock(&T.lock);
        /* One worker waits at the gate; the other encodes the rest. */
        while (T.n_encoded < data - 1)
                pthread_cond_wait(&T.cond, &T.lock);
        ASSERT(T.n_written == 0);
        pthread_mutex_unlock(&T.lock);
        ASSERT(open_gate(NULL) == NULL);
        ASSERT(encode_pool_drain(p) == 3);
        ASSERT(T.n_written == data);
        ASSERT(!T.bad);
        encode_pool_free(p);
        for (unsigned i = 0; i < 3; i++)
                free(bufs[i]);
}

/* Misuse is refused: a buffer larger than OP_BUFFER_SIZE, an unaligned
 * offset, a falling offset. */
static void test_refusals(void) {
        vdisk_image img = toy_image();
        uint8_t *b = calloc(1, 2 * UNIT);
        encode_pool *p;

        ASSERT(b);
        toy_reset(OP_BUFFER_SIZE * 4);
        ASSERT(encode_pool_new(&img, 2, false, 2, &p) == 0);
        ASSERT(encode_pool_submit(p, b, (uint64_t) OP_BUFFER_SIZE + UNIT, 0) == -EINVAL);
        ASSERT(encode_pool_submit(p, b, UNIT, 512) == -EINVAL);
        ASSERT(encode_pool_submit(p, b, UNIT, 4 * UNIT) >= 0);
        ASSERT(encode_pool_submit(p, b, UNIT, 2 * UNIT) == -EINVAL);
        ASSERT(encode_pool_drain(p) >= 0);
        encode_pool_free(p);
        free(b);
}

int main(void) {
        pthread_mutex_init(&T.lock, NULL);
        pthread_cond_init(&T.cond, NULL);
        test_order();
        test_failures();
        test_stop();
        test_no_barrier();
        test_refusals();
        free(T.seen);
        printf("encode: ok\n");
        return 0;
}
