/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* lib/io: struct vdisk_io, the one choke point for all image I/O. Every
 * backend and operation reads and writes through these functions, so fault
 * injection (io-fault.c) sees every byte. Positional I/O only. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "vdisk/vdisk.h"

/* A host file's identity: two ios with equal identities are the same file,
 * whatever names they were opened by (hard links, symlinks, two fds). */
typedef struct io_identity {
        uint64_t dev, ino;
} io_identity;

typedef struct io_vtable {
        int (*pread)(void *user, void *buf, size_t len, uint64_t offset);
        int (*pwrite)(void *user, const void *buf, size_t len, uint64_t offset);
        int (*flush)(void *user);
        int (*get_size)(void *user, uint64_t *ret);
        int (*truncate)(void *user, uint64_t size);
        int (*punch_hole)(void *user, uint64_t offset, uint64_t len);
        /* Reserves host space for [offset, offset+len) without changing the
         * size or the content (fallocate KEEP_SIZE); optional. */
        int (*reserve)(void *user, uint64_t offset, uint64_t len);
        /* Bytes the host really uses (st_blocks * 512); optional. */
        int (*get_allocated)(void *user, uint64_t *ret);
        /* Next data/hole boundary (SEEK_DATA/SEEK_HOLE); optional. */
        int (*seek_data)(void *user, uint64_t offset, int hole, uint64_t *ret);
        /* Which file this is (st_dev, st_ino); optional: ios that are no
         * host file (memory, caller ops) have no identity. */
        int (*get_identity)(void *user, io_identity *ret);
        /* Write-behind (io-fd.c; optional, see io_queue_begin()): depth 0
         * for IO_PATH_DIRECT means no queue (synchronous direct writes). */
        int (*queue_begin)(void *user, int path, unsigned depth, size_t chunk);
        /* Waits for the writes in flight and ends what queue_begin() set. */
        void (*queue_end)(void *user);
        /* Queues the write if it can go behind: 1 queued, 0 not queueable
         * (the caller drains, then writes it synchronously), < 0 a queued
         * write failed (io_drain() reports it). */
        int (*queue_write)(void *user, const void *buf, size_t len, uint64_t offset);
        /* Waits for every queued write; on failure returns the first error
         * (sticky until the queue ends) and the range it hit. */
        int (*drain)(void *user, uint64_t *ret_offset, size_t *ret_len);
        void (*close)(void *user);
        /* Sets the file's "no copy-on-write" attribute (FS_NOCOW_FL) where
         * the file system has one (btrfs); optional. */
        int (*set_nocow)(void *user);
} io_vtable;

struct vdisk_io {
        _Atomic unsigned n_ref;
        const io_vtable *vt;
        void *user;
        char *name;
        uint32_t flags;            /* VDISK_IO_READONLY */
        int kind;                  /* IO_KIND_* */
        _Atomic int queued;        /* io_queue_begin() took: writes may be behind */
        /* Bytes the file is known to hold (io_covers()): the size io_get_size()
         * last returned or io_truncate() set, raised by where this io's
         * completed writes ended. */
        _Atomic uint64_t size_floor;
};

enum { IO_KIND_OPS, IO_KIND_FD, IO_KIND_MEMORY, IO_KIND_FAULT };

int io_new(const io_vtable *vt, void *user, const char *name, uint32_t flags, int kind, vdisk_io **ret);

/* Range-checked wrappers that record an error naming the file. */
int io_pread(vdisk_io *io, void *buf, size_t len, uint64_t offset);
/* Reads what the file holds; bytes past its end read as zeros. */
int io_pread_zerofill(vdisk_io *io, void *buf, size_t len, uint64_t offset);
int io_pwrite(vdisk_io *io, const void *buf, size_t len, uint64_t offset);
int io_flush(vdisk_io *io);
int io_get_size(vdisk_io *io, uint64_t *ret);
int io_truncate(vdisk_io *io, uint64_t size);
/* Whether the file holds at least `end` bytes: 1 or 0, or an error. Asks the
 * file's size only when what this io saw of it (sizes asked, its own
 * truncates, where its writes ended) does not cover `end`: for checks made
 * per table page or per allocated cluster. A file shrunk other than through
 * this io is seen at the next io_get_size(). *ret_size (may be NULL) gets
 * the bytes known: at least `end` when covered, the file's size when not. */
int io_covers(vdisk_io *io, uint64_t end, uint64_t *ret_size);
/* Deallocates a range so it reads as zeros; -EOPNOTSUPP when the io cannot,
 * in which case callers write zeros instead. */
int io_punch_hole(vdisk_io *io, uint64_t offset, uint64_t len);
/* Reserves host space for a range the caller will write (holes in the file
 * take space when written), so that an operation that must not stop half
 * way can fail before it starts: -ENOSPC then, -EOPNOTSUPP when the io
 * cannot tell (memory, file systems without fallocate). */
int io_reserve(vdisk_io *io, uint64_t offset, uint64_t len);
/* Writes zeros: punches a hole when possible, else writes zero buffers. */
int io_write_zeroes(vdisk_io *io, uint64_t offset, uint64_t len);
/* Writes zero bytes (never a hole): the space is allocated and written,
 * as preallocation=full wants. */
int io_write_zero_data(vdisk_io *io, uint64_t offset, uint64_t len);
/* Sets FS_NOCOW_FL on the file (qemu-img's nocow=on): 0 when set, -EOPNOTSUPP
 * (no error recorded) where the io or its file system has no such
 * attribute; a hint, so callers go on either way. */
int io_set_nocow(vdisk_io *io);
int io_get_allocated(vdisk_io *io, uint64_t *ret);
/* The next data (hole = 0) or hole (hole = 1) boundary at or after offset
 * (SEEK_DATA/SEEK_HOLE); -EOPNOTSUPP when the io cannot tell. */
int io_seek_data(vdisk_io *io, uint64_t offset, int hole, uint64_t *ret);
/* The file's identity; -EOPNOTSUPP for ios that are no host file (memory,
 * caller ops), for which callers fall back to comparing UUIDs. No error is
 * recorded: a missing identity is an answer, not a failure. */
int io_get_identity(vdisk_io *io, io_identity *ret);
static inline bool io_identity_equal(const io_identity *a, const io_identity *b) {
        return a->dev == b->dev && a->ino == b->ino;
}
/* For a fd io: stops using its O_DIRECT twin (vdisk_io_set_direct_fd),
 * after the writes in flight through it; writes go through the io's own
 * descriptor again. Nothing for other ios. */
void io_drop_direct_fd(vdisk_io *io);
/* For a fd io: is [offset, offset+len) known to be a hole in the host file? */
int io_is_hole(vdisk_io *io, uint64_t offset, uint64_t len);

/* Write-behind for an operation that writes a file in bulk (copy, merge).
 * Between io_queue_begin() and io_queue_end(), the large aligned writes of
 * a fd io take the path the caller chose:
 * - IO_PATH_DIRECT: they return at once and up to `depth` of them (copied
 *   into chunks of `chunk` bytes the io owns) are in flight as direct writes,
 *   through io_uring. Everything else on the io (reads, small writes, flush,
 *   truncate, size...) first drains the queue, so it is ordered after the
 *   writes before it; a queued write's error is returned by the next write,
 *   drain or flush, naming the file, the range and the cause, and stays
 *   until io_queue_end(). Without an O_DIRECT descriptor, io_uring, or with
 *   VDISK_IO_URING=0, io_queue_begin() returns -EOPNOTSUPP (no error
 *   recorded) and writes stay synchronous.
 * - IO_PATH_CACHED: they go through the page cache, synchronously, with the
 *   write-behind window (io_fd_window_*() below), as every write of an io
 *   without an O_DIRECT descriptor does: cheaper where a format appends its
 *   new blocks to a growing file (docs/performance.md, "The write path per
 *   output"). A failed wait of the window fails that write and the next
 *   flush. Past CACHED_LIMIT bytes of large writes (VDISK_IO_CACHED_LIMIT
 *   in MiB) the queue takes the direct path for the rest, where a copy of
 *   gigabytes is faster (docs/performance.md, "At 8 GiB").
 * VDISK_IO_DIRECT_WRITES=0 or 1 in the environment forces one path for
 * every queue (and for the writes outside any queue), for measuring. Ios
 * other than fd ios return -EOPNOTSUPP. depth 0 and chunk 0 take the
 * defaults (VDISK_IO_QUEUE_DEPTH, VDISK_IO_QUEUE_CHUNK, or IO_QUEUE_DEPTH x
 * IO_QUEUE_CHUNK); depth 1 still lets one write overlap the caller's work. */
typedef enum io_path {
        IO_PATH_DIRECT,
        IO_PATH_CACHED,
} io_path;
#define IO_QUEUE_DEPTH 8u
#define IO_QUEUE_CHUNK (1u << 20)
#define IO_QUEUE_MAX_DEPTH 64u
#define IO_QUEUE_MAX_CHUNK (64u << 20)
int io_queue_begin(vdisk_io *io, io_path path, unsigned depth, size_t chunk);
/* Waits for every queued write: the point where the core orders data before
 * metadata that points at it. Returns the first queued write's error. */
int io_drain(vdisk_io *io);
/* Drains, returns the queue's error, and makes writes synchronous again
 * (and direct or not as outside a queue). */
int io_queue_end(vdisk_io *io);
/* The queue parameters from the environment, or the defaults. */
void io_queue_params(unsigned *ret_depth, size_t *ret_chunk);
/* Tests: the n-th queued write of a fd io from now (0: the next) completes
 * with error `err` without writing anything. */
int io_fd_queue_inject(vdisk_io *io, unsigned n, int err);

/* The write-behind window of a fd io's durable page-cache writes
 * (io-fd.c, wb_note_write()). Tests: its counters, its step and window
 * (window 0: none, a whole-file writeback kick every step), and the n-th
 * span from now whose wait fails with `err`. */
typedef struct io_window_stats {
        uint64_t kicks;         /* writeback started (sync_file_range WRITE) */
        uint64_t waits;         /* spans waited for */
        uint64_t wait_errors;   /* writes that got a failed wait */
        uint64_t max_pending;   /* most bytes written and not yet waited for, seen after a write */
} io_window_stats;
int io_fd_window_set(vdisk_io *io, uint64_t step, uint64_t window);
int io_fd_window_stats(vdisk_io *io, io_window_stats *ret);
int io_fd_window_inject(vdisk_io *io, unsigned n, int err);
/* Tests: would a large aligned write of a fd io go direct now? (1 yes, 0 no,
 * -EINVAL for other ios) */
int io_fd_writes_direct(vdisk_io *io);

static inline void io_unrefp(vdisk_io **p) {
        vdisk_io_unref(*p);
}
