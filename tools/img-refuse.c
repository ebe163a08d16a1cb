/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What vdisk-img says where a format has no internal snapshots or no
 * persistent bitmaps: qemu-img 7.2's texts and exit codes, which consumers
 * match, kept in one place per capability. The formats that have them plug
 * in through format_has_internal_snapshots() / format_has_persistent_bitmaps().
 *
 * Also the `bitmap` verb's command line (qemu-img 7.2's syntax and checks);
 * until the qcow2 part lands, it refuses for every format.
 */

#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "img.h"

/* ---------------------------------------------------------------- capabilities */

bool format_has_internal_snapshots(const vdisk_backend_info *info) {
        /* qemu-img creates, applies and deletes internal snapshots in qcow2
         * only; vdisk lists (and reads) the ones of other formats too. */
        return info && streq(info->qemu_name, "qcow2");
}

bool format_has_persistent_bitmaps(const vdisk_backend_info *info) {
        return info && streq(info->qemu_name, "qcow2");
}

/* ---------------------------------------------------------------- refusals */

int snapshot_refuse(char action, const char *name) {
        switch (action) {
        case 'c':
                log_error("Could not create snapshot '%s': -%d (%s)", name, EOPNOTSUPP, strerror(EOPNOTSUPP));
                break;
        case 'a':
                log_error("Could not apply snapshot '%s': Block driver does not support snapshots", name);
                break;
        case 'd':
                log_error("Could not delete snapshot '%s': snapshot not found", name);
                break;
        default:
                abort();
        }
        return EXIT_ERROR;
}

int bitmap_refuse(const char *op, const char *bitmap, const char *filename) {
        /* qemu names its internal node ("#block123"); the file is the
         * stable name of the same thing. */
        if (streq(op, "add"))
                log_error("Operation add on bitmap %s failed: Can't store persistent bitmaps to %s: %s",
                          bitmap, filename, strerror(EOPNOTSUPP));
        else
                log_error("Operation %s on bitmap %s failed: Dirty bitmap '%s' not found", op, bitmap, bitmap);
        return EXIT_ERROR;
}

/* ---------------------------------------------------------------- bitmap */

enum {
        ARG_BITMAP_ADD = 0x200,
        ARG_BITMAP_REMOVE,
        ARG_BITMAP_CLEAR,
        ARG_BITMAP_ENABLE,
        ARG_BITMAP_DISABLE,
        ARG_BITMAP_MERGE,
};

int cmd_bitmap(int argc, char **argv) {
        static const struct option options[] = {
                COMMON_LONG_OPTIONS,
                { "add",         no_argument,       NULL, ARG_BITMAP_ADD },
                { "remove",      no_argument,       NULL, ARG_BITMAP_REMOVE },
                { "clear",       no_argument,       NULL, ARG_BITMAP_CLEAR },
                { "enable",      no_argument,       NULL, ARG_BITMAP_ENABLE },
                { "disable",     no_argument,       NULL, ARG_BITMAP_DISABLE },
                { "merge",       required_argument, NULL, ARG_BITMAP_MERGE },
                { "granularity", required_argument, NULL, 'g' },
                {}
        };
        /* The operations in command-line order, as qemu-img runs them. */
        const char *ops[16];
        size_t n_ops = 0;
        const char *fmt = NULL, *source_file = NULL, *source_fmt = NULL, *granularity = NULL, *filename, *bitmap;
        uint64_t gran = 0;
        Img img = {};
        int c, r, ex = EXIT_ERROR;

        /* qemu-img bitmap has no -q and no -U. */
        while ((c = getopt_long(argc, argv, "b:f:F:g:h", options, NULL)) >= 0) {
                switch (c) {
                case 'b':
                        source_file = optarg;
                        break;
                case 'f':
                        fmt = optarg;
                        break;
                case 'F':
                        source_fmt = optarg;
                        break;
                case 'g':
                        granularity = optarg;
                        if (parse_size(optarg, &gran) < 0) {
                                log_error("Invalid granularity specified. You may use k, M, G, T, P or E suffixes for");
                                log_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
                                return EXIT_ERROR;
                        }
                        break;
                case ARG_BITMAP_ADD:
                case ARG_BITMAP_REMOVE:
                case ARG_BITMAP_CLEAR:
                case ARG_BITMAP_ENABLE:
                case ARG_BITMAP_DISABLE:
                case ARG_BITMAP_MERGE: {
                        static const char *const names[] = { "add", "remove", "clear", "enable", "disable", "merge" };

                        if (n_ops == ELEMENTSOF(ops)) {
                                log_error("Too many bitmap operations");
                                return EXIT_ERROR;
                        }
                        ops[n_ops++] = names[c - ARG_BITMAP_ADD];
                        break;
                }
                case 'U':
                        log_error("unrecognized option '%s'", argv[optind - 1]);
                        return usage_hint();
                default:
                        if (common_option(c, optarg, &ex) == 2)
                                return ex;
                }
        }

        if (n_ops == 0) {
                log_error("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge");
                return EXIT_ERROR;
        }
        if (granularity) {
                bool add = false;

                for (size_t i = 0; i < n_ops; i++)
                        add = add || streq(ops[i], "add");
                if (!add) {
                        log_error("granularity only supported with --add");
                        return EXIT_ERROR;
                }
        }
        if (source_fmt && !source_file) {
                log_error("-F only supported with -b");
                return EXIT_ERROR;
        }
        if (source_file) {
                bool merge = false;

                for (size_t i = 0; i < n_ops; i++)
                        merge = merge || streq(ops[i], "merge");
                if (!merge) {
                        log_error("Merge bitmap source file only supported with --merge");
                        return EXIT_ERROR;
                }
        }
        if (argc - optind != 2) {
                log_error("Expecting filename and bitmap name");
                return EXIT_ERROR;
        }
        filename = argv[optind];
        bitmap = argv[optind + 1];

        r = img_open(filename, fmt, IMG_INFO | IMG_SKIP_CHECKS, &img);
        if (r < 0)
                return EXIT_ERROR;
        if (streq(ops[0], "add") && granularity && (gran < 512 || gran > UINT32_MAX || (gran & (gran - 1)))) {
                log_error("Operation add on bitmap %s failed: Granularity must be power of 2 and at least 512",
                          bitmap);
                return img_close_exit(&img, EXIT_ERROR);
        }
        if (!format_has_persistent_bitmaps(img.backend))
                return img_close_exit(&img, bitmap_refuse(ops[0], bitmap, img.filename));

        log_error("Operation %s on bitmap %s failed: persistent bitmaps are not supported yet", ops[0], bitmap);
        return img_close_exit(&img, EXIT_ERROR);
}
