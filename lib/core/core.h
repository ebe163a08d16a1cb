/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* lib/core: images (one layer), the disk (the chain), the generic data path.
 * Operations (lib/ops) build on these; backends never see them. */
#pragma once

#include <pthread.h>
#include <stdint.h>

#include "backend.h"
#include "fmt/tablecache.h"
#include "io/io.h"
#include "util/util.h"

struct vdisk_image {
        vdisk_disk *disk;
        const vdisk_backend *be;
        void *state;            /* be->state_size bytes */
        vdisk_io *io;           /* a reference */
        unsigned index;         /* position in the chain, 0 = base */
        int writable;           /* opened for writing */
        int info_only;          /* VDISK_OPEN_INFO */
        int open_ok;            /* be->open/create succeeded: close() needed */
        uint64_t size;          /* cached be->get_size() */
        uint32_t block_size;    /* cached be->block_size() */
        int modified;           /* written since open (modification UUID renewed) */
        char *comment_cache;
        tc_budget *budget;      /* a reference: the disk's, or its own when opened alone */
};

struct vdisk_disk {
        pthread_mutex_t lock;   /* serializes every call on this disk */
        vdisk_image *images[VDISK_CHAIN_MAX];
        unsigned n;
        char **warnings;        /* NULL-terminated */
        size_t n_warnings;
        tc_budget *budget;      /* metadata budget of every image of the chain */
};

/* registry.c */
const vdisk_backend *backend_lookup(const char *name);
size_t backend_table_size(void);
const vdisk_backend *backend_table_get(size_t i);
const vdisk_backend *backend_from_info(const vdisk_backend_info *info);

/* probe.c: best backend for io, or -EMEDIUMTYPE. */
int probe_backend(vdisk_io *io, const char *name, int allow_raw, const vdisk_backend **ret,
                  int *ret_guessed_raw);

/* image.c. `budget` is the metadata budget the image's tables count against
 * (its disk's, so that the whole chain shares one); NULL gives the image a
 * default budget of its own (images looked at outside a disk). */
int image_open(const vdisk_backend *be, vdisk_io *io, int writable, int info_only, tc_budget *budget,
               vdisk_image **ret);
int image_create(const vdisk_backend *be, vdisk_io *io, const create_params *p, tc_budget *budget,
                 vdisk_image **ret);
vdisk_image *image_free(vdisk_image *img);   /* flushes if writable, then closes */
int image_flush(vdisk_image *img);
int image_get_meta(vdisk_image *img, meta *m);
int image_set_meta(vdisk_image *img, const meta *m, uint32_t mask);
/* Re-reads the cached size and block size after a resize. */
void image_refresh(vdisk_image *img);
/* Before the first write: renews the modification UUID (VirtualBox does). */
int image_mark_modified(vdisk_image *img);

/* disk.c */
int disk_add_warning(vdisk_disk *d, const char *fmt, ...) _printf_(2, 3);
/* Pushes an opened image on top; checks linkage unless skip_checks. */
int disk_push(vdisk_disk *d, vdisk_image *img, int skip_checks);
/* Takes images [lo, hi] out of the chain, closing them; renumbers the rest. */
void disk_remove_range(vdisk_disk *d, unsigned lo, unsigned hi);
/* vdisk_disk_create_base/diff without taking the lock. */
int disk_create_base(vdisk_disk *d, vdisk_io *io, const char *format, uint64_t size,
                     const vdisk_create_opts *opts);
int disk_create_diff(vdisk_disk *d, vdisk_io *io, const char *format, const vdisk_create_opts *opts);
/* ops/resize.c: resizes image `level` alone (no checks of the content). */
int resize_image(vdisk_disk *d, unsigned level, uint64_t new_size, vdisk_progress *p);

/* rw.c: the generic data path. `level` is an image index: the view at level L
 * is what image L shows with its ancestors below it. */

/* Reads the view at `level`. Past an image's end, reads zeros. */
int rw_read(vdisk_disk *d, unsigned level, void *buf, size_t len, uint64_t offset);
/* Writes into image `level`, copying partial blocks from the view at level-1. */
int rw_write(vdisk_disk *d, unsigned level, const void *buf, size_t len, uint64_t offset);
/* Makes [offset, offset+len) of image `level` read zeros, using the format's
 * zero marker for whole blocks where it has one. `below` is the level whose
 * view will show through unallocated ranges of `level` (normally level - 1;
 * -1: nothing, zeros): where it reads zeros, nothing needs writing. A merge
 * that is about to relink `level` passes the future parent. */
int rw_write_zeroes(vdisk_disk *d, unsigned level, int below, uint64_t offset, uint64_t len);
/* Discards at the top: reads zero afterwards; host space is released. */
int rw_discard(vdisk_disk *d, uint64_t offset, uint64_t len);
/* Status of the view restricted to images [bottom, top]: ret->depth counts
 * from `top` down (0 = image top) and is -1 when none of them defines the range. */
int rw_status(vdisk_disk *d, unsigned bottom, unsigned top, uint64_t offset, uint64_t len,
              vdisk_extent *ret);
/* Does the view at `level` read zeros in the range? (level -1: yes) */
int rw_is_zero(vdisk_disk *d, int level, uint64_t offset, uint64_t len, bool *ret);
/* Size of the view at `level` (= image level's size). */
uint64_t rw_size(vdisk_disk *d, unsigned level);

/* Data buffer size for operations: big enough to keep the disk busy, small
 * enough for the 64 MiB memory bound with two stages in flight. */
#define OP_BUFFER_SIZE (4u << 20)

/* A scoped lock: _cleanup_(disk_unlockp) vdisk_disk *l = disk_lock(d); */
static inline vdisk_disk *disk_lock(vdisk_disk *d) {
        pthread_mutex_lock(&d->lock);
        return d;
}
static inline void disk_unlockp(vdisk_disk **d) {
        if (*d)
                pthread_mutex_unlock(&(*d)->lock);
}

/* resolver.c */
int resolver_open_name(vdisk_resolver *r, const char *name, const char *child, int writable, vdisk_io **ret);
int resolver_find_uuid(vdisk_resolver *r, const uint8_t uuid[16], const char *format, const char *child,
                       int writable, vdisk_io **ret);
