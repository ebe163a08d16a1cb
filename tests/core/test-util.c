/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests of lib/util and lib/io: endian helpers, CRC32, UUID byte orders
 * and text form, bitmaps, extent lists, progress, memory and fault ios. Uses
 * the library's internal headers. */
#include <fcntl.h>
#include <unistd.h>

#include "io/io.h"
#include "tests.h"
#include "util/util.h"

static void test_endian(void) {
        uint8_t b[8];

        put_le16(b, 0x1234);
        ASSERT(b[0] == 0x34 && b[1] == 0x12 && get_le16(b) == 0x1234);
        put_be16(b, 0x1234);
        ASSERT(b[0] == 0x12 && b[1] == 0x34 && get_be16(b) == 0x1234);
        put_le32(b, 0xBEDA107F);
        ASSERT(b[0] == 0x7F && b[3] == 0xBE && get_le32(b) == 0xBEDA107F);
        put_be32(b, 0xBEDA107F);
        ASSERT(b[0] == 0xBE && b[3] == 0x7F && get_be32(b) == 0xBEDA107F);
        put_le64(b, UINT64_C(0x0102030405060708));
        ASSERT(b[0] == 0x08 && b[7] == 0x01 && get_le64(b) == UINT64_C(0x0102030405060708));
        put_be64(b, UINT64_C(0x0102030405060708));
        ASSERT(b[0] == 0x01 && b[7] == 0x08 && get_be64(b) == UINT64_C(0x0102030405060708));
}

static void test_crc32(void) {
        /* The standard check value of CRC-32/ISO-HDLC. */
        ASSERT(crc32_update(0, "123456789", 9) == 0xCBF43926);
        ASSERT(crc32_update(crc32_update(0, "1234", 4), "56789", 5) == 0xCBF43926);
        ASSERT(crc32_update(0, "", 0) == 0);
}

static void test_uuid(void) {
        uint8_t u[16], v[16];
        char s[37];

        /* GUID layout: stored bytes 78 56 34 12 ... print as 12345678-... */
        ASSERT_OK(vdisk_uuid_parse("12345678-9abc-def0-1122-334455667788", u));
        ASSERT(u[0] == 0x78 && u[3] == 0x12 && u[4] == 0xbc && u[5] == 0x9a && u[6] == 0xf0 && u[8] == 0x11);
        vdisk_uuid_format(u, s);
        ASSERT(strcmp(s, "12345678-9abc-def0-1122-334455667788") == 0);
        memcpy(v, u, 16);
        uuid_swap_guid_rfc(v);
        ASSERT(v[0] == 0x12 && v[3] == 0x78 && v[15] == 0x88);
        uuid_swap_guid_rfc(v);
        ASSERT(memcmp(u, v, 16) == 0);
        ASSERT(vdisk_uuid_parse("not-a-uuid", u) == -EINVAL);
        memset(u, 0, 16);
        ASSERT(vdisk_uuid_is_null(u));
        vdisk_uuid_generate(u);
        vdisk_uuid_generate(v);
        ASSERT(!vdisk_uuid_is_null(u) && memcmp(u, v, 16) != 0);
}

static void test_bitmap_extents(void) {
        uint64_t *b = bitmap_new(130);
        extent_list l = {};

        ASSERT(b);
        ASSERT(!bitmap_get(b, 0) && !bitmap_get(b, 129));
        bitmap_set(b, 0);
        bitmap_set(b, 64);
        bitmap_set(b, 129);
        ASSERT(bitmap_get(b, 0) && bitmap_get(b, 64) && bitmap_get(b, 129) && !bitmap_get(b, 63));
        bitmap_clear(b, 64);
        ASSERT(!bitmap_get(b, 64));
        free(b);
        ASSERT(bitmap_new(UINT64_MAX) == NULL);

        ASSERT_OK(extent_list_append(&l, 0, 10));
        ASSERT_OK(extent_list_append(&l, 10, 5));     /* merges */
        ASSERT_OK(extent_list_append(&l, 20, 5));
        ASSERT_OK(extent_list_append(&l, 30, 0));     /* ignored */
        ASSERT(l.n == 2 && l.v[0].offset == 0 && l.v[0].length == 15 && l.v[1].offset == 20);
        extent_list_clear(&l);
        ASSERT(l.n == 0 && l.v == NULL);
}

static unsigned callbacks;
static void on_progress(vdisk_progress *p, void *user) {
        callbacks++;
}

static void test_progress(void) {
        vdisk_progress *p;
        uint64_t last = 0;

        ASSERT_OK(vdisk_progress_new(on_progress, NULL, &p));
        progress_set_total(p, 1000 << 20);
        for (int i = 0; i < 1000; i++) {
                ASSERT_OK(progress_add(p, 1 << 20));
                ASSERT(vdisk_progress_done(p) >= last);
                last = vdisk_progress_done(p);
        }
        ASSERT(vdisk_progress_done(p) == vdisk_progress_total(p));
        ASSERT(callbacks > 100 && callbacks <= 1000);
        progress_add(p, 1 << 20);   /* never beyond the total */
        ASSERT(vdisk_progress_done(p) == vdisk_progress_total(p));
        vdisk_progress_cancel(p);
        ASSERT(vdisk_progress_cancelled(p));
        ASSERT(progress_add(p, 1) == -ECANCELED);
        ASSERT(progress_check(p) == -ECANCELED);
        vdisk_progress_free(p);
        ASSERT(progress_add(NULL, 5) == 0);
}

static void test_memory_io(void) {
        vdisk_io *io;
        uint8_t buf[16];
        uint64_t size;

        ASSERT_OK(vdisk_io_new_memory("abcd", 4, "mem", 0, &io));
        ASSERT(strcmp(vdisk_io_name(io), "mem") == 0);
        ASSERT_OK(vdisk_io_get_size(io, &size));
        ASSERT(size == 4);
        ASSERT_OK(vdisk_io_pwrite(io, "xy", 2, 8));   /* grows, gap reads zero */
        ASSERT_OK(vdisk_io_get_size(io, &size));
        ASSERT(size == 10);
        ASSERT_OK(vdisk_io_pread(io, buf, 10, 0));
        ASSERT(memcmp(buf, "abcd\0\0\0\0xy", 10) == 0);
        ASSERT(vdisk_io_pread(io, buf, 4, 8) < 0);    /* past the end */
        ASSERT(strstr(vdisk_last_error(), "mem") != NULL);
        ASSERT_OK(io_pread_zerofill(io, buf, 4, 8));
        ASSERT(memcmp(buf, "xy\0\0", 4) == 0);
        ASSERT_OK(io_punch_hole(io, 0, 2));
        ASSERT_OK(vdisk_io_pread(io, buf, 4, 0));
        ASSERT(memcmp(buf, "\0\0cd", 4) == 0);
        ASSERT_OK(vdisk_io_truncate(io, 3));
        ASSERT_OK(vdisk_io_get_size(io, &size));
        ASSERT(size == 3);
        vdisk_io_unref(io);

        ASSERT_OK(vdisk_io_new_memory(NULL, 0, "ro", VDISK_IO_READONLY, &io));
        ASSERT(vdisk_io_pwrite(io, "x", 1, 0) == -EROFS);
        vdisk_io_unref(io);
}

static void test_fd_io(void) {
        char path[] = "/tmp/vdisk-test-XXXXXX";
        int fd = mkstemp(path);
        vdisk_io *io;
        uint8_t buf[4];

        ASSERT(fd >= 0);
        unlink(path);
        ASSERT_OK(vdisk_io_new_fd(fd, "tmpfile", 0, &io));
        close(fd);   /* the io holds its own duplicate */
        ASSERT_OK(vdisk_io_pwrite(io, "data", 4, 4096));
        ASSERT_OK(vdisk_io_flush(io));
        ASSERT_OK(vdisk_io_pread(io, buf, 4, 4096));
        ASSERT(memcmp(buf, "data", 4) == 0);
        vdisk_io_unref(io);

        fd = open("/tmp", O_PATH | O_CLOEXEC);
        ASSERT(fd >= 0);
        ASSERT(vdisk_io_new_fd(fd, "path-fd", 0, &io) == -EBADF);
        close(fd);
        fd = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        ASSERT(vdisk_io_new_fd(fd, "dir", 0, &io) == -EBADF);
        close(fd);
        ASSERT(vdisk_io_open_path("/nonexistent/x", 0, &io) == -ENOENT);
        ASSERT(strstr(vdisk_last_error(), "/nonexistent/x") != NULL);
}

static void test_fault_io(void) {
        vdisk_io *mem, *f, *crash;
        vdisk_fault spec = { .size = sizeof spec, .kind = VDISK_FAULT_POWER_CUT, .after = 2 };
        uint8_t sector[1024], buf[1024];
        const void *data;
        size_t len;

        memset(sector, 0xAA, sizeof sector);
        ASSERT_OK(vdisk_io_new_memory(NULL, 0, "disk", 0, &mem));
        ASSERT_OK(vdisk_io_new_fault(mem, &spec, &f));
        ASSERT_OK(vdisk_io_pwrite(f, sector, 512, 0));          /* write 0 */
        ASSERT_OK(vdisk_io_flush(f));
        memset(sector, 0xBB, sizeof sector);
        ASSERT_OK(vdisk_io_pwrite(f, sector, 1024, 0));         /* write 1, not flushed */
        ASSERT(vdisk_io_pwrite(f, sector, 512, 0) == -EIO);     /* write 2: the cut */
        ASSERT(vdisk_io_fault_fired(f));
        ASSERT(vdisk_io_flush(f) == -EIO);
        ASSERT(vdisk_io_fault_writes(f) == 3);

        /* seed 0: every unflushed write lost */
        ASSERT_OK(vdisk_io_fault_crash_image(f, 0, &crash));
        ASSERT_OK(vdisk_io_memory_data(crash, &data, &len));
        ASSERT(len == 512 && ((const uint8_t *) data)[0] == 0xAA);
        vdisk_io_unref(crash);
        /* other seeds: each 512-byte sector is old or new */
        for (uint64_t seed = 1; seed < 64; seed++) {
                uint64_t size;

                ASSERT_OK(vdisk_io_fault_crash_image(f, seed, &crash));
                ASSERT_OK(vdisk_io_get_size(crash, &size));
                ASSERT(size == 512 || size == 1024);
                ASSERT_OK(vdisk_io_pread(crash, buf, size, 0));
                ASSERT(buf[0] == 0xAA || buf[0] == 0xBB);
                for (uint64_t i = 0; i < size; i += 512)
                        for (uint64_t j = 1; j < 512; j++)
                                ASSERT(buf[i + j] == buf[i]);
                vdisk_io_unref(crash);
        }
        vdisk_io_unref(f);
        vdisk_io_unref(mem);

        /* ENOSPC only for writes that grow the file */
        spec = (vdisk_fault) { .size = sizeof spec, .kind = VDISK_FAULT_ENOSPC, .after = 0 };
        ASSERT_OK(vdisk_io_new_memory(sector, 1024, "disk", 0, &mem));
        ASSERT_OK(vdisk_io_new_fault(mem, &spec, &f));
        ASSERT_OK(vdisk_io_pwrite(f, sector, 512, 512));
        ASSERT(vdisk_io_pwrite(f, sector, 512, 1024) == -ENOSPC);
        vdisk_io_unref(f);
        vdisk_io_unref(mem);

        /* a short write stores half and fails */
        spec = (vdisk_fault) { .size = sizeof spec, .kind = VDISK_FAULT_SHORT, .after = 0 };
        ASSERT_OK(vdisk_io_new_memory(NULL, 0, "disk", 0, &mem));
        ASSERT_OK(vdisk_io_new_fault(mem, &spec, &f));
        ASSERT(vdisk_io_pwrite(f, sector, 1024, 0) == -EIO);
        ASSERT_OK(vdisk_io_memory_data(mem, &data, &len));
        ASSERT(len == 512);
        vdisk_io_unref(f);
        vdisk_io_unref(mem);
}

int main(void) {
        test_endian();
        test_crc32();
        test_uuid();
        test_bitmap_extents();
        test_progress();
        test_memory_io();
        test_fd_io();
        test_fault_io();
        printf("test-util: ok\n");
        return 0;
}
