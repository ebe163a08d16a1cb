/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdisk-discard IMAGE FORMAT OFFSET:LENGTH...: opens IMAGE (its backing
 * chain through the path resolver) writable and discards each range with
 * vdisk_disk_discard(), then flushes and closes. vdisk-img has no discard
 * verb (qemu-img has none either); the interop tests use this instead.
 * Exit 0, or 1 with the library's error on stderr.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <vdisk/vdisk.h>

static int fail(const char *what, int r) {
        fprintf(stderr, "vdisk-discard: %s: error %d: %s\n", what, r, vdisk_last_error());
        return 1;
}

int main(int argc, char **argv) {
        vdisk_resolver *res = NULL;
        vdisk_disk *d = NULL;
        vdisk_io *io = NULL;
        int r;

        if (argc < 4) {
                fprintf(stderr, "usage: vdisk-discard IMAGE FORMAT OFFSET:LENGTH...\n");
                return 2;
        }
        r = vdisk_io_open_path(argv[1], VDISK_PATH_WRITE, &io);
        if (r < 0)
                return fail("open", r);
        r = vdisk_resolver_new_path(NULL, &res);
        if (r >= 0)
                r = vdisk_disk_new(&d);
        if (r >= 0)
                r = vdisk_disk_open_chain(d, res, io, argv[2], 0);
        vdisk_io_unref(io);
        if (r < 0)
                return fail("open chain", r);
        for (int i = 3; i < argc; i++) {
                char *end;
                uint64_t off = strtoull(argv[i], &end, 0), len;

                if (*end != ':')
                        return fail("bad range (OFFSET:LENGTH)", -22);
                len = strtoull(end + 1, &end, 0);
                r = vdisk_disk_discard(d, off, len);
                if (r < 0)
                        return fail(argv[i], r);
        }
        r = vdisk_disk_flush(d);
        if (r < 0)
                return fail("flush", r);
        r = vdisk_disk_close(d);
        if (r < 0)
                return fail("close", r);
        vdisk_resolver_unref(res);
        return 0;
}
