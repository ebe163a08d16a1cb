/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * QCOW2 amend (qemu-img amend -o ...): the options an existing image can
 * change, with qemu-img 7.2's rules and messages.
 *
 *   compat=1.1       (upgrade) the header becomes a version 3 header
 *                    (header_length 112, the extensions moved behind it).
 *   refcount_bits=N  (version 3) the refcount structures are rewritten at
 *                    the new width: a new refcount table and new blocks
 *                    are appended, filled with the old counts (each must
 *                    fit the new width), written and flushed; then one
 *                    write of the header's first 104 bytes (one sector)
 *                    switches offset, size and width together; then the
 *                    old table and blocks are unreferenced. A crash before
 *                    the switch leaves the old image (the appended space is
 *                    counted by nobody), after it at most leaks.
 *   lazy_refcounts   (version 3) the compatible feature bit, written after
 *                    everything is flushed (so the image is clean).
 *   compat=0.10      (downgrade) refused while version 3 features that a
 *                    version 2 reader cannot see are in use: extended L2
 *                    entries, an external data file, persistent bitmaps,
 *                    zstd-compressed clusters, refcount widths other than
 *                    16, internal snapshots whose size is not the disk's
 *                    (qemu's rule). Zero clusters (v3 only) are rewritten as
 *                    qemu does, in the snapshots' L2 tables too: an
 *                    allocated one gets its host cluster zeroed; an
 *                    unallocated one is dropped in an image without a
 *                    backing file and gets a new zeroed cluster in one with
 *                    a backing file (expand_table: what a snapshot shares).
 *                    Data first, then refcounts, then the L2 entries; the
 *                    header goes to version 2 last, after everything is
 *                    flushed.
 *   size             the core resizes (not here).
 *   backing_file, backing_fmt
 *                    qemu-img 7.2's rule: accepted only when both are given
 *                    and equal the image's (a no-op); any other value, or
 *                    only one of them, is refused ("Cannot amend the backing
 *                    file": rebase changes it).
 *   data_file=NAME   (images with an external data file) the name in the
 *                    header changes; the data file itself is not touched or
 *                    opened (as with qemu, it may be renamed afterwards). The
 *                    header is rewritten so that a crash or a failed write
 *                    leaves the old or the new header, never a mix (see
 *                    rename_data_file()). Unlike qemu, an empty name (which
 *                    leaves an image no one opens without an option) and
 *                    names vdisk would refuse to open (absolute, "..", a
 *                    protocol prefix) are refused.
 *   data_file_raw    off: the autoclear bit is cleared (one 8-byte write);
 *                    on: only where it is already set (qemu: "data-file-raw
 *                    cannot be set on existing images").
 * Options only creation takes (cluster_size, extended_l2, preallocation,
 * compression_type, encryption) are refused with qemu's words.
 *
 * The order of the steps is qemu's: upgrade, refcount width, lazy refcounts,
 * downgrade. Each step leaves a valid image.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "qcow2-int.h"
#include "util/util.h"

#define HDR_REFT_OFFSET    48u
#define HDR_INCOMPAT       72u
#define HDR_COMPAT         80u
#define HDR_AUTOCLEAR      88u
#define HDR_REFCOUNT_ORDER 96u
#define REFT_MASK          UINT64_C(0xfffffffffffffe00)

typedef struct amend_req {
        uint32_t version;       /* 0: unchanged */
        int lazy;               /* -1: unchanged */
        int refcount_order;     /* -1: unchanged */
        /* backing file, data file */
        const char *backing_file, *backing_fmt;   /* NULL: not given */
        const char *data_file;                     /* NULL: unchanged */
        int data_file_raw;                         /* -1: not given */
} amend_req;

/* qemu's boolean option values */
static int parse_bool(const char *k, const char *v, int *ret) {
        if (streq(v, "on") || streq(v, "yes") || streq(v, "true"))
                *ret = 1;
        else if (streq(v, "off") || streq(v, "no") || streq(v, "false"))
                *ret = 0;
        else
                return vdisk_error(-EINVAL, "Parameter '%s' expects 'on' or 'off'", k);
        return 0;
}

static bool has_prefix_ci(const char *s, const char *prefix) {
        return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

/* A data file name vdisk can open again: relative, inside the image's
 * directory, a file name (no protocol), within the header's limits. */
static int check_data_file_name(const char *v) {
        static const char *const protocols[] = {
                "json:", "nbd:", "nbd+", "http:", "https:", "ftp:", "ftps:", "ssh:", "file:", NULL,
        };
        size_t len = strlen(v);

        if (len == 0)
                return vdisk_error(-EINVAL, "data-file cannot be empty: the image could not be opened without "
                                   "naming its data file");
        if (len > QCOW2_BACKING_NAME_MAX)
                return vdisk_error(-EINVAL, "qcow2: data file name of %zu bytes (at most %u)", len,
                                   QCOW2_BACKING_NAME_MAX);
        if (v[0] == '/')
                return vdisk_error(-EINVAL, "refusing the absolute data file name '%s' (companion files must be "
                                   "named relative to the image)", v);
        for (const char *p = v; *p;) {
                size_t n = strcspn(p, "/");

                if (n == 2 && p[0] == '.' && p[1] == '.')
                        return vdisk_error(-EINVAL, "refusing the data file name '%s' (companion files must stay "
                                           "inside the image's directory)", v);
                p += n;
                p += strspn(p, "/");
        }
        for (const char *const *p = protocols; *p; p++)
                if (has_prefix_ci(v, *p))
                        return vdisk_error(-EINVAL, "refusing the data file name '%s': a protocol name, not a "
                                           "file name", v);
        return 0;
}

static bool str_eq0(const char *a, const char *b) {
        return a == b || (a && b && streq(a, b));
}

static int parse_request(const qcow2_state *s, const char *const *options, amend_req *ret) {
        amend_req q = { .lazy = -1, .refcount_order = -1 };

        for (const char *const *kv = options; kv && kv[0]; kv += 2) {
                const char *k = kv[0], *v = kv[1];

                if (streq(k, "compat")) {
                        if (streq(v, "0.10") || streq(v, "v2"))
                                q.version = 2;
                        else if (streq(v, "1.1") || streq(v, "v3"))
                                q.version = 3;
                        else
                                return vdisk_error(-EINVAL, "Unknown compatibility level %s", v);
                } else if (streq(k, "refcount_bits")) {
                        char *end;
                        unsigned long long n = strtoull(v, &end, 10);

                        if (!v[0] || *end || n < 1 || n > 64 || !IS_POWER_OF_2(n))
                                return vdisk_error(-EINVAL, "Refcount width must be a power of two and may not "
                                                   "exceed 64 bits");
                        q.refcount_order = __builtin_ctzll(n);
                } else if (streq(k, "lazy_refcounts"))
                        q.lazy = streq(v, "on");
                else if (streq(k, "backing_file"))
                        q.backing_file = v;
                else if (streq(k, "backing_fmt"))
                        q.backing_fmt = v;
                else if (streq(k, "data_file")) {
                        int r;

                        if (!s->data_file_name)
                                return vdisk_error(-EINVAL, "data-file can only be set for images that use an "
                                                   "external data file");
                        r = check_data_file_name(v);
                        if (r < 0)
                                return r;
                        q.data_file = v;
                } else if (streq(k, "data_file_raw")) {
                        int r = parse_bool(k, v, &q.data_file_raw);

                        if (r < 0)
                                return r;
                        if (q.data_file_raw == 1 && !(s->autoclear & AUTOCLEAR_DATA_RAW))
                                return vdisk_error(-EINVAL, "data-file-raw cannot be set on existing images");
                } else
                        return vdisk_error(-EINVAL, "Invalid parameter '%s': this option is only supported for "
                                           "image creation", k);
        }
        /* qemu-img 7.2: both as the image has them (each may be absent),
         * or refused */
        if ((q.backing_file || q.backing_fmt) &&
            (!str_eq0(q.backing_file, s->backing_name) || !str_eq0(q.backing_fmt, s->backing_format)))
                return vdisk_error(-EINVAL, "Cannot amend the backing file (you can use rebase instead)");
        *ret = q;
        return 0;
}

/* Checks the whole request against the image before anything changes. */
static int check_request(const qcow2_state *s, const amend_req *q) {
        uint32_t version = q->version ?: s->version;
        uint32_t order = q->refcount_order >= 0 ? (uint32_t) q->refcount_order : s->refcount_order;

        if (version == 2) {
                if (q->refcount_order >= 0 && q->refcount_order != 4)
                        return vdisk_error(-EINVAL, "Refcount widths other than 16 bits require compatibility "
                                           "level 1.1 or above (use compat=1.1 or greater)");
                if (q->lazy == 1)
                        return vdisk_error(-EINVAL, "Lazy refcounts only supported with compatibility level 1.1 "
                                           "and above (use compat=1.1 or greater)");
                if (order != 4)
                        return vdisk_error(-EINVAL, "compat=0.10 requires refcount_bits=16");
        }
        if (version == 2 && s->version == 3) {
                uint64_t bad = s->incompat & ~(uint64_t) (INCOMPAT_DIRTY | INCOMPAT_COMPRESSION);

                if (s->incompat & INCOMPAT_DATA_FILE)
                        return vdisk_error(-EOPNOTSUPP, "Cannot downgrade an image with a data file");
                if (bad)
                        return vdisk_error(-EOPNOTSUPP, "Cannot downgrade an image with incompatible features "
                                           "%#" PRIx64 " set", bad);
                if (s->nb_bitmaps > 0 || (s->autoclear & AUTOCLEAR_BITMAPS))
                        return vdisk_error(-EOPNOTSUPP, "Cannot downgrade an image with persistent bitmaps");
        }
        return 0;
}

/* Rewrites the header cluster as a version `version` header: the fields of
 * the state, the extensions of the old header (a version 2 header keeps
 * neither the feature name table nor the bitmaps extension), the backing
 * file name. Flushed. */
static int write_header(qcow2_state *s, uint32_t version, uint64_t compat) {
        size_t cs = (size_t) s->cluster_size, hlen = version == 3 ? 112 : QCOW2_V2_HEADER, pos, end, used;
        _cleanup_free_ uint8_t *old = calloc(1, cs), *hdr = calloc(1, cs);
        uint64_t boff, bsize;
        int r;

        if (!old || !hdr)
                return -ENOMEM;
        r = io_pread_zerofill(s->io, old, cs, 0);
        if (r < 0)
                return r;
        memcpy(hdr, old, QCOW2_V2_HEADER);
        put_be32(hdr + 4, version);
        if (version == 3) {
                put_be64(hdr + HDR_INCOMPAT, s->incompat & ~(uint64_t) INCOMPAT_DIRTY);
                put_be64(hdr + HDR_COMPAT, compat);
                put_be64(hdr + 88, s->autoclear);
                put_be32(hdr + HDR_REFCOUNT_ORDER, s->refcount_order);
                put_be32(hdr + 100, (uint32_t) hlen);
                hdr[104] = (uint8_t) s->compression_type;
        }
        boff = get_be64(old + 8);
        bsize = get_be32(old + 16);
        end = boff != 0 && bsize != 0 && boff < cs ? (size_t) boff : cs;
        used = boff != 0 && bsize != 0 && boff < cs ? (size_t) MIN(boff + bsize, (uint64_t) cs) : s->header_length;
        pos = hlen;
        for (size_t off = s->header_length; off + 8 <= end;) {
                uint32_t type = get_be32(old + off), len = get_be32(old + off + 4);
                size_t step = 8 + ALIGN_UP((size_t) len, 8);

                if (type == EXT_END || step > end - off)
                        break;
                if (version == 3 || (type != EXT_FEATURES && type != EXT_BITMAPS)) {
                        if (pos + step + 8 > cs)
                                return vdisk_error(-ENOSPC, "qcow2: the header extensions do not fit in the "
                                                   "header cluster");
                        memcpy(hdr + pos, old + off, step);
                        pos += step;
                }
                off += step;
                used = MAX(used, off + 8);
        }
        pos += 8;   /* the end marker (zeros) */
        if (boff != 0 && bsize != 0) {
                if (pos + bsize > cs || boff + bsize > cs)
                        return vdisk_error(-ENOSPC, "qcow2: the backing file name does not fit in the header "
                                           "cluster");
                memcpy(hdr + pos, old + boff, bsize);
                put_be64(hdr + 8, pos);
                pos += bsize;
        }
        r = io_pwrite(s->io, hdr, MAX(pos, used), 0);
        if (r >= 0)
                r = io_flush(s->io);
        if (r < 0)
                return r;
        s->version = version;
        s->header_length = (uint32_t) hlen;
        if (version == 2) {
                s->incompat = s->compat = s->autoclear = 0;
                s->compression_type = 0;
        } else {
                s->compat = compat;
                s->incompat &= ~(uint64_t) INCOMPAT_DIRTY;
        }
        return 0;
}

static int set_lazy(qcow2_state *s, bool on) {
        uint64_t compat = on ? s->compat | COMPAT_LAZY_REFCOUNTS : s->compat & ~(uint64_t) COMPAT_LAZY_REFCOUNTS;
        uint8_t b[8];
        int r;

        if (compat == s->compat)
                return 0;
        /* clean first: the flush clears the dirty bit lazy refcounts set */
        r = qcow2_flush(s);
        if (r < 0)
                return r;
        put_be64(b, compat);
        r = io_pwrite(s->io, b, sizeof b, HDR_COMPAT);
        if (r >= 0)
                r = io_flush(s->io);
        if (r < 0)
                return r;
        s->compat = compat;
        return 0;
}

/* ---------------------------------------------------------------- data file name */

#define SECTOR 512u

/* Composes in `out` (one zeroed cluster) the header of `old` with the data
 * file extension's name replaced by `name` (the other extensions in their
 * order; the feature name table only `with_features`), the end marker, and
 * the backing file name at `name_at` (0: right behind the end marker).
 * *ret_chain_end: where the end marker ends; *ret_used: the bytes used. */
static int compose_header(qcow2_state *s, const uint8_t *old, uint8_t *out, bool with_features, const char *name,
                          size_t name_at, size_t *ret_chain_end, size_t *ret_used) {
        size_t cs = (size_t) s->cluster_size, nlen = strlen(name), pos, end, bpos;
        uint64_t boff = get_be64(old + 8), bsize = get_be32(old + 16);

        memset(out, 0, cs);
        memcpy(out, old, s->header_length);
        end = boff != 0 && bsize != 0 && boff < cs ? (size_t) boff : cs;
        pos = s->header_length;
        for (size_t off = s->header_length; off + 8 <= end;) {
                uint32_t type = get_be32(old + off), len = get_be32(old + off + 4);
                size_t step = 8 + ALIGN_UP((size_t) len, 8);

                if (type == EXT_END || step > end - off)
                        break;
                off += step;
                if (type == EXT_FEATURES && !with_features)
                        continue;
                if (type == EXT_DATA_FILE) {
                        size_t nstep = 8 + ALIGN_UP(nlen, (size_t) 8);

                        if (pos + nstep + 8 > cs)
                                goto full;
                        put_be32(out + pos, EXT_DATA_FILE);
                        put_be32(out + pos + 4, (uint32_t) nlen);
                        memcpy(out + pos + 8, name, nlen);
                        pos += nstep;
                        continue;
                }
                if (pos + step + 8 > cs)
                        goto full;
                memcpy(out + pos, old + off - step, step);
                pos += step;
        }
        pos += 8;   /* the end marker (zeros) */
        *ret_chain_end = pos;
        bpos = name_at ?: pos;
        if (boff != 0 && bsize != 0) {
                if (bpos < pos || bsize > cs || bpos + bsize > cs || boff + bsize > cs)
                        goto full;
                memcpy(out + bpos, old + boff, bsize);
                put_be64(out + 8, bpos);
                pos = bpos + bsize;
        }
        *ret_used = pos;
        return 0;
full:
        return vdisk_error(-ENOSPC, "qcow2: the header extensions and the backing file name do not fit in the "
                           "header cluster");
}

static int write_flush(qcow2_state *s, const uint8_t *buf, size_t len, uint64_t at) {
        int r;

        if (len == 0)
                return 0;
        r = io_pwrite(s->io, buf, len, at);
        return r < 0 ? r : io_flush(s->io);
}

/* Writes the header `hdr` (`used` bytes) over one whose bytes past the first
 * sector are all either outside [SECTOR, used) or equal there: the bytes
 * past the first sector first (no reader of the current header looks at
 * them), then the first sector in one write. */
static int switch_header(qcow2_state *s, const uint8_t *hdr, size_t used) {
        int r;

        if (used > SECTOR) {
                r = write_flush(s, hdr + SECTOR, used - SECTOR, SECTOR);
                if (r < 0)
                        return r;
        }
        return write_flush(s, hdr, MIN(used, (size_t) SECTOR), 0);
}

/* The data file extension names `name`. Every write is either one sector
 * (which disks, and the crash model, write whole) or into bytes the header
 * on disk does not use (or holds already), so a crash or a failed write
 * leaves the old header or the new one. With c the header on disk and t the
 * new one (each: the extensions up to the end marker, then the backing file
 * name):
 *   - t fits in the first sector: one write;
 *   - c's extensions fit in the first sector: t's bytes past it (its backing
 *     file name where c has it, or behind its extensions), then its first
 *     sector; c's backing file name is moved out of the way first when t's
 *     extensions reach it;
 *   - t's extensions fit in the first sector: its backing file name past
 *     both, then its first sector;
 *   - neither: first a shorter header with the old name (without the
 *     feature name table, which only names bits, and with the backing file
 *     name moved past both) that fits in the first sector, then as above.
 * Headers too big for that (an old name of several hundred bytes, or no room
 * left in the cluster for the moved backing file name) are refused (qemu
 * writes every header in one call; vdisk does not tear a header); two
 * renames through a short name do it. */
static int rename_data_file(qcow2_state *s, const char *name) {
        size_t cs = (size_t) s->cluster_size, c_chain, c_used, t_chain, t_used, m_chain, m_used, far, tb;
        _cleanup_free_ uint8_t *cur = malloc(cs), *t = malloc(cs), *m = malloc(cs);
        uint64_t cb, bs;
        char *dup;
        int r;

        if (!cur || !t || !m)
                return -ENOMEM;
        dup = strdup(name);
        if (!dup)
                return -ENOMEM;
        /* refused before anything is written when no order can do it */
        r = io_pread_zerofill(s->io, cur, cs, 0);
        if (r >= 0)
                r = compose_header(s, cur, t, true, name, 0, &t_chain, &t_used);
        if (r >= 0)
                r = compose_header(s, cur, m, false, s->data_file_name, 0, &m_chain, &m_used);
        if (r < 0)
                goto fail;
        if (t_used > SECTOR && t_chain > SECTOR && m_chain > SECTOR)
                goto refuse;
        for (unsigned step = 0; step < 4; step++) {
                r = io_pread_zerofill(s->io, cur, cs, 0);
                if (r < 0)
                        goto fail;
                cb = get_be64(cur + 8);
                bs = get_be32(cur + 16);
                if (cb == 0 || bs == 0 || cb >= cs || bs > cs - cb)
                        cb = bs = 0;
                /* c's layout: its extensions composed again end where they do */
                r = compose_header(s, cur, m, true, s->data_file_name, 0, &c_chain, &c_used);
                if (r >= 0)
                        r = compose_header(s, cur, t, true, name, 0, &t_chain, &t_used);
                if (r < 0)
                        goto fail;
                c_used = MAX(c_chain, (size_t) (cb + bs));
                if (t_used <= SECTOR) {
                        r = write_flush(s, t, SECTOR, 0);
                        goto done;
                }
                far = ALIGN_UP(MAX(c_used, t_chain), (size_t) 8);
                if (c_chain <= SECTOR) {
                        bool c_out = bs && cb + bs > SECTOR;

                        if (c_out && cb < t_chain) {
                                /* c's backing file name is in the way: moved first */
                                if (compose_header(s, cur, m, true, s->data_file_name, far, &m_chain, &m_used) < 0)
                                        break;
                                r = write_flush(s, m + far, m_used - far, far);
                                if (r >= 0)
                                        r = write_flush(s, m, SECTOR, 0);
                                if (r < 0)
                                        goto fail;
                                continue;
                        }
                        tb = c_out ? cb : t_chain;   /* c's name: the same bytes */
                        if (compose_header(s, cur, t, true, name, tb, &t_chain, &t_used) < 0)
                                break;
                        r = switch_header(s, t, t_used);
                        goto done;
                }
                if (t_chain <= SECTOR) {
                        tb = bs && cb >= SECTOR ? cb : ALIGN_UP(MAX(c_used, (size_t) SECTOR), (size_t) 8);
                        if (compose_header(s, cur, t, true, name, tb, &t_chain, &t_used) < 0)
                                break;
                        r = write_flush(s, t + tb, t_used - tb, tb);
                        if (r >= 0)
                                r = write_flush(s, t, SECTOR, 0);
                        goto done;
                }
                if (compose_header(s, cur, m, false, s->data_file_name, bs ? far : 0, &m_chain, &m_used) < 0 ||
                    m_chain > SECTOR)
                        break;
                if (bs)
                        r = write_flush(s, m + far, m_used - far, far);
                if (r >= 0)
                        r = write_flush(s, m, SECTOR, 0);
                if (r < 0)
                        goto fail;
        }
        /* no order of one-sector switches: refused rather than torn */
refuse:
        r = vdisk_error(-EOPNOTSUPP, "qcow2: the data file name of %zu bytes cannot become one of %zu bytes with "
                        "a crash-safe header update (the old header and the new one are both too long for the "
                        "header's first sector); rename through a shorter name in two steps",
                        strlen(s->data_file_name), strlen(name));
        goto fail;
done:
        if (r < 0)
                goto fail;
        free(s->data_file_name);
        s->data_file_name = dup;
        return 0;
fail:
        free(dup);
        return r;
}

static int clear_data_file_raw(qcow2_state *s) {
        uint8_t b[8];
        int r;

        if (!(s->autoclear & AUTOCLEAR_DATA_RAW))
                return 0;
        put_be64(b, s->autoclear & ~(uint64_t) AUTOCLEAR_DATA_RAW);
        r = write_flush(s, b, sizeof b, HDR_AUTOCLEAR);
        if (r < 0)
                return r;
        s->autoclear &= ~(uint64_t) AUTOCLEAR_DATA_RAW;
        return 0;
}

/* ---------------------------------------------------------------- refcount width */

/* Reads the old refcounts in cluster order, one block at a time. */
typedef struct old_counts {
        qcow2_state *s;
        uint8_t *reft, *blk;
        uint64_t n_reft, cur;   /* cur: the index of the block in blk, UINT64_MAX none */
} old_counts;

static int old_count(old_counts *o, uint64_t c, uint64_t *ret) {
        qcow2_state *s = o->s;
        uint64_t rti = c / s->rb_entries, b;
        int r;

        *ret = 0;
        if (rti >= o->n_reft)
                return 0;
        b = get_be64(o->reft + rti * 8) & REFT_MASK;
        if (b == 0)
                return 0;
        if (rti != o->cur) {
                if (b % s->cluster_size != 0 || !range_within(b, s->cluster_size, s->file_size))
                        return vdisk_error(-EUCLEAN, "qcow2: refcount block %" PRIu64 " at %" PRIu64 " is not "
                                           "cluster-aligned within the file (repair the image first)", rti, b);
                r = io_pread(s->io, o->blk, s->cluster_size, b);
                if (r < 0)
                        return r;
                o->cur = rti;
        }
        *ret = qcow2_rc_entry_get(o->blk, c % s->rb_entries, s->refcount_order);
        return 0;
}

static int change_refcount_order(qcow2_state *s, uint32_t order, vdisk_progress *p) {
        uint64_t cs = s->cluster_size, new_rbe = (cs * 8) >> order, old_file = s->file_size;
        uint64_t new_max = order == 6 ? UINT64_MAX : (UINT64_C(1) << (1u << order)) - 1;
        uint64_t start, n_old, nb = 0, rt = 0, total, base, old_reft = s->reft_offset, old_reft_bytes = s->reft_bytes;
        _cleanup_free_ uint8_t *old_reft_buf = NULL, *old_blk = NULL, *new_reft = NULL, *blk = NULL;
        old_counts o = { .s = s, .cur = UINT64_MAX };
        uint8_t hdr[QCOW2_V3_HEADER];
        int r;

        r = qcow2_flush(s);
        if (r < 0)
                return r;
        /* appended where the next cluster would go; what lies past it (a
         * released reservation's data) is referenced by nothing */
        start = ALIGN_UP(hostalloc_next(&s->alloc), cs) / cs;
        n_old = MIN(DIV_ROUND_UP(s->file_size, cs), start);
        /* the smallest table and block counts that also count themselves */
        for (;;) {
                uint64_t nb2, rt2;

                total = start + rt + nb;
                nb2 = DIV_ROUND_UP(total, new_rbe);
                rt2 = DIV_ROUND_UP(nb2 * 8, cs);
                if (nb2 == nb && rt2 == rt)
                        break;
                nb = MAX(nb, nb2);
                rt = MAX(rt, rt2);
        }
        if (rt * cs > QCOW2_REFT_MAX_BYTES)
                return vdisk_error(-EFBIG, "qcow2: a refcount table for %u-bit refcounts would take more than "
                                   "%" PRIu64 " bytes", 1u << order, QCOW2_REFT_MAX_BYTES);

        old_reft_buf = malloc(s->reft_bytes ? s->reft_bytes : 1);
        old_blk = malloc(cs);
        new_reft = calloc(rt, cs);
        blk = malloc(cs);
        if (!old_reft_buf || !old_blk || !new_reft || !blk)
                return -ENOMEM;
        r = io_pread(s->io, old_reft_buf, s->reft_bytes, s->reft_offset);
        if (r < 0)
                return r;
        o.reft = old_reft_buf;
        o.blk = old_blk;
        o.n_reft = s->reft_bytes / 8;

        /* every count must fit the new width: checked before anything is written */
        for (uint64_t c = 0; c < n_old; c++) {
                uint64_t v;

                r = old_count(&o, c, &v);
                if (r < 0)
                        return r;
                if (v > new_max)
                        return vdisk_error(-EINVAL, "Cannot decrease refcount entry width to %u bits: Cluster at "
                                           "offset %#" PRIx64 " has a refcount of %" PRIu64, 1u << order, c * cs, v);
        }

        r = hostalloc_alloc(&s->alloc, (rt + nb) * cs, QCOW2_HOST_LIMIT, &base, NULL);
        if (r < 0)
                return r;
        if (base != start * cs) {
                hostalloc_rewind(&s->alloc, base);
                return vdisk_error(-EIO, "qcow2: the new refcount structures are not where they were planned");
        }
        progress_set_total(p, nb * cs);
        for (uint64_t k = 0; k < nb; k++) {
                memset(blk, 0, cs);
                for (uint64_t j = 0; j < new_rbe; j++) {
                        uint64_t c = k * new_rbe + j, v = 0;

                        if (c >= total)
                                break;
                        if (c >= start)
                                v = 1;   /* the new table and blocks */
                        else if (c < n_old) {
                                r = old_count(&o, c, &v);
                                if (r < 0)
                                        goto undo;
                        }
                        qcow2_rc_entry_set(blk, j, order, v);
                }
                put_be64(new_reft + k * 8, base + (rt + k) * cs);
                r = io_pwrite(s->io, blk, cs, base + (rt + k) * cs);
                if (r >= 0)
                        r = progress_add(p, cs);
                if (r < 0)
                        goto undo;
        }
        r = io_pwrite(s->io, new_reft, rt * cs, base);
        if (r >= 0)
                r = io_flush(s->io);
        if (r >= 0)
                r = progress_check(p);
        if (r < 0)
                goto undo;

        /* the switch: offset, size and width in one write of one sector */
        r = io_pread(s->io, hdr, sizeof hdr, 0);
        if (r < 0)
                goto undo;
        put_be64(hdr + HDR_REFT_OFFSET, base);
        put_be32(hdr + HDR_REFT_OFFSET + 8, (uint32_t) rt);
        put_be32(hdr + HDR_REFCOUNT_ORDER, order);
        r = io_pwrite(s->io, hdr, sizeof hdr, 0);
        if (r >= 0)
                r = io_flush(s->io);
        if (r < 0)
                return r;   /* the header may be either: the appended space is no harm */

        r = qcow2_cover_file(s, base + (rt + nb) * cs);
        if (r < 0)
                return r;
        for (size_t i = 0; i < QCOW2_RB_SLOTS; i++) {
                s->rb_slots[i].t = tc_table_free(s->rb_slots[i].t);
                s->rb_slots[i].offset = 0;
        }
        s->refcount_order = order;
        s->rb_entries = new_rbe;
        s->reft_offset = base;
        s->reft_bytes = rt * cs;
        r = qcow2_reft_view(s);
        if (r < 0)
                return r;
        /* the old table and blocks are no longer referenced */
        r = qcow2_uncount(s, old_reft, old_reft_bytes);
        if (r < 0)
                return r;
        for (uint64_t i = 0; i < o.n_reft; i++) {
                uint64_t b = get_be64(old_reft_buf + i * 8) & REFT_MASK;

                if (b == 0)
                        continue;
                r = qcow2_rc_update(s, b, -1, NULL);
                if (r < 0)
                        return r;
        }
        return qcow2_flush(s);

undo:
        /* nothing points at the appended space yet: give it back */
        hostalloc_rewind(&s->alloc, base);
        if (io_truncate(s->io, old_file) >= 0)
                hostalloc_truncated(&s->alloc, old_file);
        return r;
}

/* ---------------------------------------------------------------- downgrade */

/* The zero entries of one L2 table `l2` (at `l2off`, named by `rc_t` L1
 * tables: the active one and the snapshots' that share it), rewritten for
 * version 2 (which has no zero clusters); `active`: the active tree names
 * it (COPIED kept where the refcount is 1). With `dry`, nothing changes:
 * -EOPNOTSUPP for what cannot be downgraded (checked before anything
 * changes): zstd-compressed clusters (a version 2 reader has only deflate),
 * and what is described last below.
 *   - a zero cluster whose host cluster only this table names (its refcount
 *     is the table's): the host cluster zeroed (TC_AFTER_DATA), the flag
 *     cleared;
 *   - one without a host cluster, or whose host cluster is named elsewhere
 *     too (a snapshot's data the active tree zeroed): no backing file, the
 *     entry 0; a backing file, a new zeroed cluster (counted before the L2
 *     page goes out). The host cluster, if any, loses this table's
 *     reference at the flush (after the L2 page).
 *   Only in a table of refcount 1: in a shared table, a new cluster would
 *   need one count per tree, and dropping a cluster named elsewhere one
 *   decrement per tree; both are refused ("shared with internal
 *   snapshots"). */
static int expand_table(qcow2_state *s, uint64_t l2off, bool active, bool dry, const uint8_t *zeros) {
        uint64_t cs = s->cluster_size, rc_t = 1;
        tc_table *l2;
        int r;

        r = qcow2_get_l2(s, l2off, &l2);
        if (r >= 0 && s->nb_snapshots > 0)
                r = qcow2_rc_get(s, l2off, &rc_t);
        if (r < 0)
                return r;
        for (uint64_t i = 0; i < s->l2_entries; i++) {
                uint64_t e, host, h, rc_h = rc_t;
                int fresh = 0;

                r = qcow2_get_l2(s, l2off, &l2);
                if (r >= 0)
                        r = tc_get(l2, i, &e);
                if (r < 0)
                        return r;
                if ((e & L2E_COMPRESSED) && s->compression_type != 0)
                        return vdisk_error(-EOPNOTSUPP, "Cannot downgrade an image with zstd-compressed "
                                           "clusters");
                if ((e & L2E_COMPRESSED) || !(e & L2E_ZERO))
                        continue;
                host = e & OFFSET_MASK;
                if (host != 0 && s->nb_snapshots > 0) {
                        r = qcow2_rc_get(s, host, &rc_h);
                        if (r < 0)
                                return r;
                }
                if (host != 0 && rc_h == rc_t) {
                        if (dry)
                                continue;
                        r = io_pwrite(s->io, zeros, cs, host);
                        if (r >= 0)
                                r = qcow2_cover_file(s, host + cs);
                        if (r >= 0)
                                r = tc_set(l2, i, host | (active && rc_t == 1 ? e & L2E_COPIED : 0), TC_AFTER_DATA);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (rc_t != 1 && (host != 0 || s->backing_name))
                        return vdisk_error(-EOPNOTSUPP, "Cannot downgrade an image whose zero clusters are shared "
                                           "with internal snapshots (the L2 table at %" PRIu64 ")", l2off);
                if (dry)
                        continue;
                if (!s->backing_name) {
                        r = tc_set(l2, i, 0, 0);
                        if (r < 0)
                                return r;
                        if (host != 0)
                                qcow2_queue_free(s, host);
                        continue;
                }
                r = hostalloc_alloc(&s->alloc, cs, QCOW2_HOST_LIMIT, &h, &fresh);
                if (r >= 0 && !fresh)
                        r = io_pwrite(s->io, zeros, cs, h);
                if (r >= 0)
                        r = qcow2_cover_file(s, h + cs);
                if (r >= 0)
                        r = qcow2_l2_set_counted(s, l2, i, h | (active ? L2E_COPIED : 0), h, TC_AFTER_DATA);
                if (r < 0)
                        return r;
                if (host != 0)
                        qcow2_queue_free(s, host);
        }
        return 0;
}

/* Every L2 table of the L1 table `n` entries long at `l1off` (the active one
 * through its view; a snapshot's read from the file), through expand_table;
 * a table two L1 tables share is seen twice: the second time it has no
 * zero entry left. */
static int expand_l1(qcow2_state *s, uint64_t l1off, uint32_t n, bool active, bool dry, const uint8_t *zeros,
                     vdisk_progress *p) {
        int r;

        for (uint64_t l1i = 0; l1i < n; l1i++) {
                uint64_t l1e;
                uint8_t b[8];

                if (active)
                        r = tc_get(s->l1, l1i, &l1e);
                else {
                        r = io_pread(s->io, b, sizeof b, l1off + l1i * 8);
                        l1e = get_be64(b);
                }
                if (r < 0)
                        return r;
                if ((l1e & OFFSET_MASK) != 0) {
                        r = expand_table(s, l1e & OFFSET_MASK, active, dry, zeros);
                        if (r < 0)
                                return r;
                }
                if (!dry && active) {
                        r = progress_add(p, s->cluster_size);
                        if (r < 0) {
                                /* still a valid version 3 image with the same content */
                                int k = qcow2_flush(s);
                                return k < 0 ? k : r;
                        }
                }
        }
        return 0;
}

/* The active tree, then each snapshot's (see expand_table). */
static int expand_zero_clusters(qcow2_state *s, const qcow2_snap *snaps, size_t n_snaps, bool dry,
                                vdisk_progress *p) {
        _cleanup_free_ uint8_t *zeros = calloc(1, s->cluster_size);
        int r;

        if (!zeros)
                return -ENOMEM;
        if (!dry)
                progress_set_total(p, (uint64_t) s->l1_size * s->cluster_size);
        r = expand_l1(s, s->l1_offset, s->l1_size, true, dry, zeros, p);
        for (size_t i = 0; i < n_snaps && r >= 0; i++)
                r = expand_l1(s, snaps[i].l1_offset, snaps[i].l1_size, false, dry, zeros, p);
        if (r < 0 || dry)
                return r;
        return qcow2_flush(s);
}

/* Internal snapshots: kept as they are (their 24 bytes of extra data too,
 * which a version 2 reader may skip), as qemu-img 7.2 keeps them, and
 * refused as it refuses them when one's size is not the disk's or its VM
 * state does not fit the version 2 entry's 32 bits (a version 2 reader
 * would take the wrong ones). */
static int downgrade(qcow2_state *s, vdisk_progress *p) {
        vdisk_snapshot *v = NULL;
        _cleanup_free_ qcow2_snap *e = NULL;
        size_t n = 0;
        int r = 0;

        if (s->nb_snapshots > 0)
                r = qcow2_read_snapshots(s, &v, &e, &n);
        for (size_t i = 0; i < n && r >= 0; i++) {
                if (v[i].disk_size != s->size || v[i].vm_state_size > UINT32_MAX)
                        r = vdisk_error(-EOPNOTSUPP, "Internal snapshots prevent downgrade of image");
                else if (!qcow2_l1_ok(s, e[i].l1_offset, e[i].l1_size))
                        r = vdisk_error(-EUCLEAN, "qcow2: snapshot %zu has its L1 table at %" PRIu64 " (%" PRIu32
                                        " entries), not within the file", i, e[i].l1_offset, e[i].l1_size);
        }
        vdisk_snapshots_free(v, n);
        if (r >= 0 && (n > 0 || s->compression_type != 0))
                r = expand_zero_clusters(s, e, n, true, p);
        if (r >= 0)
                r = set_lazy(s, false);
        if (r >= 0)
                r = expand_zero_clusters(s, e, n, false, p);
        if (r < 0)
                return r;
        return write_header(s, 2, 0);
}

int qcow2_amend(void *state, const char *const *options, vdisk_progress *p) {
        qcow2_state *s = state;
        amend_req q = {};
        int r;

        r = parse_request(s, options, &q);
        if (r < 0)
                return r;
        r = check_request(s, &q);
        if (r < 0)
                return r;
        if (!s->writable)
                return vdisk_error(-EROFS, "qcow2: the image is read-only");
        r = qcow2_flush(s);
        if (r < 0)
                return r;
        if (q.version == 3 && s->version == 2) {
                r = write_header(s, 3, q.lazy == 1 ? COMPAT_LAZY_REFCOUNTS : 0);
                if (r < 0)
                        return r;
        }
        if (q.refcount_order >= 0 && (uint32_t) q.refcount_order != s->refcount_order) {
                r = change_refcount_order(s, (uint32_t) q.refcount_order, p);
                if (r < 0)
                        return r;
        }
        if (q.lazy >= 0 && s->version == 3) {
                r = set_lazy(s, q.lazy);
                if (r < 0)
                        return r;
        }
        if (q.data_file && !streq(q.data_file, s->data_file_name)) {
                r = rename_data_file(s, q.data_file);
                if (r < 0)
                        return r;
        }
        if (q.data_file_raw == 0) {
                r = clear_data_file_raw(s);
                if (r < 0)
                        return r;
        }
        if (q.version == 2 && s->version == 3)
                return downgrade(s, p);
        return 0;
}
