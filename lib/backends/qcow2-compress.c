/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * QCOW2 compressed writing (qemu-img convert -c): the encode_bound, encode
 * and stream_write_encoded callbacks that copy's encode pool
 * (lib/ops/encode.c) drives, encoding on worker threads and writing here,
 * in order, under the image's lock.
 *
 * encode(): one cluster (the image's last one zero-padded to a whole
 * cluster, as qemu reads it) into raw deflate with a 4 KiB window (qemu
 * inflates with windowBits -12, so a longer distance would not decode
 * there) or into one zstd frame, by the image's compression_type. Only a
 * result shorter than the unit's data counts; otherwise the data itself is
 * handed on (enc_len == len says "plain"), as qemu writes a cluster that does
 * not shrink uncompressed. Bytes that look random are not tried at all
 * (units_incompressible()).
 *
 * stream_write_encoded(): a plain unit takes the ordinary allocate/write/
 * commit path. A compressed one is packed right after the previous one in
 * the host cluster being filled (s->comp_host); when it does not fit, it
 * runs on into the next host cluster if that is the next one the allocator
 * hands out (nothing else was allocated in between), else it starts a new
 * host cluster and the rest of the old one stays unused. Each host cluster
 * a compressed cluster touches gets +1 on its refcount (so a host cluster
 * holding five has refcount 5, as qemu counts them); when the refcount would
 * pass the width's maximum (refcount_bits=1), a new host cluster is started.
 *
 * Ordering (the rules of qcow2.c): the compressed bytes are written, the
 * refcounts go up, then the L2 entry (TC_AFTER_DATA, depending on the
 * refcount block pages): a crash leaks at worst. A unit whose data write
 * fails leaves no entry and gives its new host cluster back.
 */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backends/qcow2-int.h"
#include "fmt/units.h"

/* The plain data, or the compressed cluster when shorter: out holds one
 * cluster at most. */
size_t qcow2_encode_bound(const void *state, size_t len) {
        const qcow2_state *s = state;

        return (size_t) MAX((uint64_t) len, s->cluster_size);
}

int qcow2_encode(const void *state, const void *in, size_t len, void *out, size_t *ret_len) {
        const qcow2_state *s = state;
        _cleanup_free_ uint8_t *padded = NULL;
        const uint8_t *src = in;
        size_t n = 0;
        int r;

        if (len == 0 || len > s->cluster_size)
                return vdisk_error(-EINVAL, "qcow2: a compressed unit is one cluster");
        if (len < 2 || units_incompressible(in, len))
                goto plain;
        if (len < s->cluster_size) {
                /* the last cluster of the image: compressed as a whole cluster */
                padded = calloc(1, s->cluster_size);
                if (!padded)
                        return vdisk_error(-ENOMEM, "out of memory");
                memcpy(padded, in, len);
                src = padded;
        }
        /* At most len - 1 bytes: a result must shrink the data to count. */
        r = units_compress(s->compression_type == 1 ? UNITS_ZSTD : UNITS_DEFLATE12, src, s->cluster_size, out,
                           len - 1, &n);
        if (r < 0)
                return vdisk_error_prefix(r, "qcow2");
        if (r == 0) {
                *ret_len = n;
                return 0;
        }
plain:
        memcpy(out, in, len);
        *ret_len = len;
        return 0;
}

/* A unit that did not shrink: the ordinary allocate, write, commit. */
static int write_plain(qcow2_state *s, uint64_t offset, size_t len, const void *data) {
        reservation res;
        int r;

        r = qcow2_allocate_unit(s, offset, len, &res);
        if (r < 0)
                return r;
        if (res.unit_offset != offset || res.length < len) {
                qcow2_release_unit(s, &res);
                return vdisk_error(-EOPNOTSUPP, "qcow2: compressed writes go to clusters not written yet");
        }
        r = io_pwrite(res.file ? res.file : s->io, data, len, res.host_offset);
        if (r < 0) {
                qcow2_release_unit(s, &res);
                return r;
        }
        return qcow2_commit_unit(s, &res);
}

/* A new host cluster for packing; *ret_new is it. */
static int new_pack_cluster(qcow2_state *s, uint64_t *ret_new) {
        return hostalloc_alloc(&s->alloc, s->cluster_size, QCOW2_HOST_LIMIT, ret_new, NULL);
}

int qcow2_write_encoded(void *state, uint64_t offset, size_t len, const void *enc, size_t enc_len) {
        qcow2_state *s = state;
        uint64_t cs = s->cluster_size, cl = offset >> s->cluster_bits, l1i = cl / s->l2_entries;
        uint64_t l2i = cl % s->l2_entries, e, bitmap, pos, nsec, touched[2], new_host = 0;
        uint64_t pack_host, pack_used, pack_refs;
        unsigned n_touched = 0;
        tc_page *rbpg[2] = {}, *l2pg = NULL;
        tc_table *l2;
        int r;

        assert(s->writable);
        if (offset % cs || len == 0 || len > cs || (len < cs && offset + len != s->size) || enc_len > len)
                return vdisk_error(-EOPNOTSUPP, "qcow2: compressed writes take whole clusters");
        if (s->data_io)
                return vdisk_error(-EOPNOTSUPP, "qcow2: images with an external data file hold no compressed "
                                   "clusters");
        r = qcow2_mark_dirty(s);
        if (r < 0)
                return r;
        if (enc_len == len)
                return write_plain(s, offset, len, enc);

        r = qcow2_l2_entry(s, cl, &e, &bitmap);
        if (r < 0)
                return r;
        if (!(e & L2E_COMPRESSED) && ((e & OFFSET_MASK) != 0 || (s->extended_l2 && (uint32_t) bitmap != 0)))
                return vdisk_error(-EOPNOTSUPP, "qcow2: compressed writes go to clusters not written yet "
                                   "(the cluster at %" PRIu64 " is allocated)", offset);

        /* Where the bytes go: see the comment at the top. */
        if (s->comp_host != 0 && s->comp_used < cs && s->comp_refs < qcow2_rc_max(s) &&
            (s->comp_used + enc_len <= cs || hostalloc_next(&s->alloc) == s->comp_host + cs)) {
                pos = s->comp_host + s->comp_used;
                touched[n_touched++] = s->comp_host;
                pack_host = s->comp_host;
                pack_used = s->comp_used + enc_len;
                pack_refs = s->comp_refs + 1;
                if (pack_used > cs) {
                        r = new_pack_cluster(s, &new_host);
                        if (r < 0)
                                return r;
                        assert(new_host == s->comp_host + cs);
                        touched[n_touched++] = new_host;
                        pack_host = new_host;
                        pack_used -= cs;
                        pack_refs = 1;
                }
        } else {
                r = new_pack_cluster(s, &new_host);
                if (r < 0)
                        return r;
                pos = new_host;
                touched[n_touched++] = new_host;
                pack_host = new_host;
                pack_used = enc_len;
                pack_refs = 1;
        }
        if (pos + enc_len - 1 > s->coffset_mask) {
                r = vdisk_error(-EFBIG, "qcow2: compressed data at %" PRIu64 " lies beyond what an L2 entry "
                                "can point to", pos);
                goto undo;
        }

        r = io_pwrite(s->io, enc, enc_len, pos);
        if (r < 0)
                goto undo;
        qcow2_note_file_end(s, pos + enc_len);

        /* From here on a failure leaks at worst; the packing restarts. */
        s->comp_host = 0;
        for (unsigned i = 0; i < n_touched; i++) {
                r = qcow2_rc_update(s, touched[i], +1, &rbpg[i]);
                if (r < 0)
                        goto out;
        }
        r = qcow2_l2_for_write(s, l1i, &l2);
        if (r < 0)
                goto out;
        if (e & L2E_COMPRESSED)
                qcow2_queue_free_compressed(s, e);
        nsec = (pos + enc_len - 1) / 512 - pos / 512;
        e = L2E_COMPRESSED | (nsec << s->csize_shift) | pos;
        r = tc_set(l2, s->extended_l2 ? 2 * l2i : l2i, e, TC_AFTER_DATA);
        if (r >= 0 && s->extended_l2)
                r = tc_set(l2, 2 * l2i + 1, 0, TC_AFTER_DATA);
        if (r >= 0)
                r = tc_page_get(l2, 0, &l2pg);
        for (unsigned i = 0; r >= 0 && i < n_touched; i++)
                r = tc_page_depends(l2pg, rbpg[i]);
        if (r >= 0) {
                s->comp_host = pack_host;
                s->comp_used = pack_used;
                s->comp_refs = pack_refs;
        }
out:
        if (l2pg)
                tc_page_put(l2pg);
        for (unsigned i = 0; i < n_touched; i++)
                if (rbpg[i])
                        tc_page_put(rbpg[i]);
        return r;
undo:
        /* Nothing points at the new host cluster: the allocator takes it back. */
        if (new_host != 0 && hostalloc_next(&s->alloc) == new_host + cs)
                hostalloc_rewind(&s->alloc, new_host);
        return r;
}
