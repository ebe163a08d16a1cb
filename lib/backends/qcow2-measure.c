/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * QCOW2 measure: the size of a new image as qemu-img measure computes it,
 * from the layout the spec (qemu's docs/interop/qcow2.txt) implies for a
 * fully allocated image:
 *
 *   header           one cluster
 *   L2 tables        one entry (8 bytes, 16 with extended L2) per cluster of
 *                    the disk, in whole tables
 *   L1 table         one 8-byte entry per L2 table, in whole clusters
 *   refcounts        blocks of cluster_size * 8 / refcount_bits counts and
 *                    a table of 8-byte block offsets, enough to count every
 *                    cluster of the file, themselves included (the smallest
 *                    fixed point)
 *   data             the disk, rounded up to a cluster
 *
 * "fully allocated" is that sum; "required" drops the data clusters that
 * would not be written: those in which the input has no data (all of them
 * for an empty image), unless preallocation=falloc/full, or a backing file
 * is given (then every cluster is counted: what the backing file shares
 * with the input is unknown). The metadata stays counted in full (qemu's
 * overestimate, kept so that the figures are equal). "bitmaps size" (0:
 * bitmaps are not copied) is printed for v3 output from a qcow2 input, as
 * qemu-img does.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2-measure.h"
#include "util/util.h"

/* In the order of qemu-img create's "Formatting" line. Measure takes them
 * all; create (qcow2.c) refuses the ones it cannot write yet. */
const vdisk_option_desc qcow2_create_options[] = {
        { "cluster_size",     VDISK_OPTION_SIZE,   "qcow2 cluster size", "65536" },
        { "extended_l2",      VDISK_OPTION_BOOL,   "Extended L2 tables", "off" },
        { "preallocation",    VDISK_OPTION_STRING, "Preallocation mode (allowed values: off, metadata, falloc, "
                                                   "full)" },
        { "compression_type", VDISK_OPTION_STRING, "Compression method used for image cluster compression",
          "zlib" },
        { "size",             VDISK_OPTION_SIZE,   "Virtual disk size" },
        { "compat",           VDISK_OPTION_STRING, "Compatibility level (v2 [0.10] or v3 [1.1])" },
        { "backing_file",     VDISK_OPTION_STRING, "File name of a base image" },
        { "backing_fmt",      VDISK_OPTION_STRING, "Image format of the base image" },
        { "data_file",        VDISK_OPTION_STRING, "File name of an external data file" },
        { "data_file_raw",    VDISK_OPTION_BOOL,   "The external data file must stay valid as a raw image" },
        { "encryption",       VDISK_OPTION_BOOL,   "Encrypt the image with format 'aes' (not supported)" },
        { "encrypt.format",   VDISK_OPTION_STRING, "Encrypt the image (not supported)" },
        { "lazy_refcounts",   VDISK_OPTION_BOOL,   "Postpone refcount updates", "off" },
        { "refcount_bits",    VDISK_OPTION_NUMBER, "Width of a reference count entry in bits", "16" },
        {}
};

/* Refcount blocks and table clusters for `clusters` clusters of data and
 * other metadata: the smallest counts that also count themselves. */
static uint64_t refcount_bytes(uint64_t clusters, uint64_t cluster_size, unsigned refcount_order) {
        uint64_t per_block = cluster_size * 8 >> refcount_order, per_table = cluster_size / 8;
        uint64_t blocks = 0, table = 0, n = 0, last;

        do {
                last = n;
                blocks = DIV_ROUND_UP(clusters + table + blocks, per_block);
                table = DIV_ROUND_UP(blocks, per_table);
                n = clusters + blocks + table;
        } while (n != last);
        return (blocks + table) * cluster_size;
}

static uint64_t full_size(uint64_t virtual_size, uint64_t cluster_size, unsigned refcount_order, bool extl2) {
        uint64_t l2e = extl2 ? 16 : 8, md = cluster_size, n_l2e, n_l1e;

        n_l2e = ALIGN_UP(virtual_size / cluster_size, cluster_size / l2e);
        md += n_l2e * l2e;
        n_l1e = ALIGN_UP(n_l2e * l2e / cluster_size, cluster_size / 8);
        md += n_l1e * 8;
        md += refcount_bytes((md + virtual_size) / cluster_size, cluster_size, refcount_order);
        return md + virtual_size;
}

int qcow2_measure(const measure_params *p, measure_result *ret) {
        uint64_t cluster_size = 65536, refcount_bits = 16, virtual_size, data = 0;
        unsigned version = 3, order;
        bool extl2 = false, full = false, rb_given = false;

        for (const char *const *o = p->options; o && o[0]; o += 2) {
                const char *k = o[0], *v = o[1];

                if (streq(k, "cluster_size"))
                        cluster_size = strtoull(v, NULL, 10);
                else if (streq(k, "compat")) {
                        if (streq(v, "0.10") || streq(v, "v2"))
                                version = 2;
                        else if (streq(v, "1.1") || streq(v, "v3"))
                                version = 3;
                        else
                                return vdisk_error(-EINVAL, "qcow2: Invalid parameter value for 'compat': '%s'", v);
                } else if (streq(k, "extended_l2"))
                        extl2 = streq(v, "on");
                else if (streq(k, "refcount_bits")) {
                        refcount_bits = strtoull(v, NULL, 10);
                        rb_given = true;
                } else if (streq(k, "preallocation")) {
                        if (streq(v, "full") || streq(v, "falloc"))
                                full = true;
                        else if (!streq(v, "off") && !streq(v, "metadata"))
                                return vdisk_error(-EINVAL, "qcow2: Invalid preallocation mode: '%s'", v);
                } else if (streq(k, "compression_type")) {
                        if (!streq(v, "zlib") && !streq(v, "zstd"))
                                return vdisk_error(-EINVAL, "qcow2: Invalid compression type '%s'", v);
                } else if (streq(k, "encrypt.format") || (streq(k, "encryption") && streq(v, "on")))
                        return vdisk_error(-EOPNOTSUPP, "qcow2: encrypted images are not supported");
        }
        if (cluster_size < 512 || cluster_size > (UINT64_C(2) << 20) || !IS_POWER_OF_2(cluster_size))
                return vdisk_error(-EINVAL, "qcow2: Cluster size must be a power of two between 512 and 2048k");
        if (extl2 && cluster_size < 16384)
                return vdisk_error(-EINVAL, "qcow2: Extended L2 entries are only supported with cluster sizes of "
                                   "at least 16384 bytes");
        if (extl2 && version < 3)
                return vdisk_error(-EINVAL, "qcow2: Extended L2 entries are only supported with compatibility "
                                   "level 1.1 and above (use compat=1.1 or greater)");
        if (refcount_bits == 0 || refcount_bits > 64 || !IS_POWER_OF_2(refcount_bits))
                return vdisk_error(-EINVAL, "qcow2: Refcount width must be a power of two and may not exceed "
                                   "64 bits");
        if (version < 3 && rb_given && refcount_bits != 16)
                return vdisk_error(-EINVAL, "qcow2: Different refcount widths than 16 bits require compatibility "
                                   "level 1.1 or above (use compat=1.1 or greater)");
        order = (unsigned) __builtin_ctzll(refcount_bits);

        virtual_size = ALIGN_UP(p->size, cluster_size);
        if (p->has_input) {
                if (p->has_backing)
                        data = virtual_size;
                else {
                        uint64_t n;
                        int r = p->count_units(p->ctx, cluster_size, &n);

                        if (r < 0)
                                return r;
                        data = n * cluster_size;
                }
        }
        if (full)
                data = virtual_size;
        ret->fully_allocated = full_size(virtual_size, cluster_size, order, extl2);
        ret->required = ret->fully_allocated - virtual_size + data;
        ret->has_bitmaps = version >= 3 && p->has_input && p->input_is_qcow2;
        ret->bitmaps = 0;
        if (ret->has_bitmaps && p->n_bitmaps > 0) {
                /* what convert --bitmaps adds, as qemu counts it: every data
                 * cluster of each bitmap, its table, and the directory */
                uint64_t dir = 0;

                for (size_t i = 0; i < p->n_bitmaps; i++) {
                        uint64_t bits = DIV_ROUND_UP(p->size, p->bitmaps[i].granularity);
                        uint64_t clusters = DIV_ROUND_UP(DIV_ROUND_UP(bits, UINT64_C(8)), cluster_size);

                        ret->bitmaps += clusters * cluster_size + ALIGN_UP(clusters * 8, cluster_size);
                        dir += ALIGN_UP(24 + (uint64_t) strlen(p->bitmaps[i].name), UINT64_C(8));
                }
                ret->bitmaps += ALIGN_UP(dir, cluster_size);
        }
        return 0;
}
