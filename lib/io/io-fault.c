/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A fault-injecting vdisk_io for tests: EIO, ENOSPC, short writes and power
 * cuts, either persistent (from write N on) or transient (write N only, and
 * optionally one failed flush). For a power cut it keeps a log of every write since the last flush, so
 * that vdisk_io_fault_crash_image() can build what a disk might hold after the
 * cut: the flushed state plus any subset of the later writes, each possibly
 * torn at a 512-byte boundary.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"
#include "util/util.h"

typedef enum { OP_WRITE, OP_TRUNCATE, OP_PUNCH } op_kind;

typedef struct pending_op {
        op_kind kind;
        uint64_t offset, len;   /* TRUNCATE: offset = new size */
        uint8_t *data;          /* OP_WRITE */
} pending_op;

typedef struct fault_io {
        vdisk_io *inner;
        vdisk_fault f;
        uint64_t writes, flushes;
        int fired;              /* the write fault */
        int flush_fired;        /* fail_flush_at */
        /* POWER_CUT only */
        vdisk_io *durable;      /* memory io: the state at the last flush */
        pending_op *ops;
        size_t n_ops, allocated_ops;
} fault_io;

static void pending_clear(fault_io *fi) {
        for (size_t i = 0; i < fi->n_ops; i++)
                free(fi->ops[i].data);
        fi->n_ops = 0;
}

static int pending_add(fault_io *fi, op_kind kind, uint64_t offset, uint64_t len, const void *data) {
        pending_op *op;

        if (!fi->durable)
                return 0;
        if (fi->n_ops == fi->allocated_ops) {
                size_t na = fi->allocated_ops ? fi->allocated_ops * 2 : 64;
                void *p = reallocarray(fi->ops, na, sizeof *fi->ops);
                if (!p)
                        return -ENOMEM;
                fi->ops = p;
                fi->allocated_ops = na;
        }
        op = &fi->ops[fi->n_ops];
        *op = (pending_op) { .kind = kind, .offset = offset, .len = len };
        if (data) {
                op->data = malloc(len ? len : 1);
                if (!op->data)
                        return -ENOMEM;
                memcpy(op->data, data, len);
        }
        fi->n_ops++;
        return 0;
}

static int apply_op(vdisk_io *io, const pending_op *op) {
        switch (op->kind) {
        case OP_WRITE:
                return io->vt->pwrite(io->user, op->data, op->len, op->offset);
        case OP_TRUNCATE:
                return io->vt->truncate(io->user, op->offset);
        case OP_PUNCH:
                return io->vt->punch_hole(io->user, op->offset, op->len);
        }
        return -EINVAL;
}

/* Decides whether write number `n` fails; returns 0 or the error. */
static int fault_write_gate(fault_io *fi, uint64_t grows) {
        uint64_t n = fi->writes++;

        if (fi->f.kind == VDISK_FAULT_POWER_CUT && fi->fired)
                return -EIO;
        if (n < fi->f.after)
                return 0;
        if (fi->f.once && fi->f.kind != VDISK_FAULT_POWER_CUT) {
                /* Transient: this one write, whatever it is, and never again. */
                if (n != fi->f.after)
                        return 0;
                switch (fi->f.kind) {
                case VDISK_FAULT_EIO:
                        fi->fired = 1;
                        return -EIO;
                case VDISK_FAULT_ENOSPC:
                        fi->fired = 1;
                        return -ENOSPC;
                case VDISK_FAULT_SHORT:
                        fi->fired = 1;
                        return -EAGAIN;
                default:
                        return 0;
                }
        }
        switch (fi->f.kind) {
        case VDISK_FAULT_EIO:
                fi->fired = 1;
                return -EIO;
        case VDISK_FAULT_ENOSPC:
                if (!grows)
                        return 0;
                fi->fired = 1;
                return -ENOSPC;
        case VDISK_FAULT_SHORT:
                if (n != fi->f.after)
                        return 0;
                fi->fired = 1;
                return -EAGAIN;   /* handled by the caller: half a write */
        case VDISK_FAULT_POWER_CUT:
                fi->fired = 1;
                return -EIO;
        default:
                return 0;
        }
}

static uint64_t inner_size(fault_io *fi) {
        uint64_t s = 0;
        (void) fi->inner->vt->get_size(fi->inner->user, &s);
        return s;
}

static int fault_pread(void *u, void *buf, size_t len, uint64_t off) {
        fault_io *fi = u;

        if (fi->fired && !fi->f.once && (fi->f.kind == VDISK_FAULT_POWER_CUT ||
                          (fi->f.kind == VDISK_FAULT_EIO && fi->f.fail_reads)))
                return -EIO;
        return fi->inner->vt->pread(fi->inner->user, buf, len, off);
}

static int fault_pwrite(void *u, const void *buf, size_t len, uint64_t off) {
        fault_io *fi = u;
        int r;

        r = fault_write_gate(fi, off + len > inner_size(fi));
        if (r == -EAGAIN) {
                size_t half = ALIGN_DOWN(len / 2, 512);

                if (half > 0) {
                        r = fi->inner->vt->pwrite(fi->inner->user, buf, half, off);
                        if (r >= 0)
                                r = pending_add(fi, OP_WRITE, off, half, buf);
                }
                return -EIO;
        }
        if (r < 0)
                return r;
        r = fi->inner->vt->pwrite(fi->inner->user, buf, len, off);
        if (r < 0)
                return r;
        return pending_add(fi, OP_WRITE, off, len, buf);
}

static int fault_flush(void *u) {
        fault_io *fi = u;
        uint64_t n = ++fi->flushes;
        int r;

        if (fi->fired && !fi->f.once && (fi->f.kind == VDISK_FAULT_POWER_CUT ||
                                         (fi->f.kind == VDISK_FAULT_EIO && fi->f.fail_flush)))
                return -EIO;
        if (fi->f.fail_flush_at != 0 && n == fi->f.fail_flush_at) {
                /* Nothing becomes durable; the pending writes stay pending. */
                fi->flush_fired = 1;
                return -EIO;
        }
        r = fi->inner->vt->flush(fi->inner->user);
        if (r < 0)
                return r;
        if (fi->durable) {
                for (size_t i = 0; i < fi->n_ops; i++) {
                        r = apply_op(fi->durable, &fi->ops[i]);
                        if (r < 0)
                                return r;
                }
                pending_clear(fi);
        }
        return 0;
}

static int fault_get_size(void *u, uint64_t *ret) {
        fault_io *fi = u;

        if (fi->fired && fi->f.kind == VDISK_FAULT_POWER_CUT)
                return -EIO;
        return fi->inner->vt->get_size(fi->inner->user, ret);
}

static int fault_truncate(void *u, uint64_t size) {
        fault_io *fi = u;
        int r;

        if (!fi->inner->vt->truncate)
                return -EOPNOTSUPP;
        r = fault_write_gate(fi, size > inner_size(fi));
        if (r == -EAGAIN)
                return -EIO;
        if (r < 0)
                return r;
        r = fi->inner->vt->truncate(fi->inner->user, size);
        if (r < 0)
                return r;
        /* What the inner io knows of its size (io_covers()) follows: it
         * may be used on its own later. */
        atomic_store(&fi->inner->size_floor, size);
        return pending_add(fi, OP_TRUNCATE, size, 0, NULL);
}

static int fault_punch_hole(void *u, uint64_t off, uint64_t len) {
        fault_io *fi = u;
        int r;

        if (!fi->inner->vt->punch_hole)
                return -EOPNOTSUPP;
        r = fault_write_gate(fi, 0);
        if (r == -EAGAIN)
                return -EIO;
        if (r < 0)
                return r;
        r = fi->inner->vt->punch_hole(fi->inner->user, off, len);
        if (r < 0)
                return r;
        return pending_add(fi, OP_PUNCH, off, len, NULL);
}

/* A reservation changes nothing a reader or a crash image sees: passed on,
 * neither counted nor failed (write faults model the writes themselves). */
static int fault_reserve(void *u, uint64_t off, uint64_t len) {
        fault_io *fi = u;

        if (!fi->inner->vt->reserve)
                return -EOPNOTSUPP;
        return fi->inner->vt->reserve(fi->inner->user, off, len);
}

/* The file underneath, if it is one: faults change no identity. */
static int fault_get_identity(void *u, io_identity *ret) {
        fault_io *fi = u;

        return io_get_identity(fi->inner, ret);
}

static void fault_close(void *u) {
        fault_io *fi = u;

        pending_clear(fi);
        free(fi->ops);
        vdisk_io_unref(fi->durable);
        vdisk_io_unref(fi->inner);
        free(fi);
}

static const io_vtable fault_vtable = {
        .pread = fault_pread,
        .pwrite = fault_pwrite,
        .flush = fault_flush,
        .get_size = fault_get_size,
        .truncate = fault_truncate,
        .punch_hole = fault_punch_hole,
        .reserve = fault_reserve,
        .get_identity = fault_get_identity,
        .close = fault_close,
};

int vdisk_io_new_fault(vdisk_io *inner, const vdisk_fault *fault, vdisk_io **ret) {
        fault_io *fi;
        int r;

        if (!inner || !fault || !ret || fault->size < offsetof(vdisk_fault, once))
                return vdisk_error(-EINVAL, "invalid fault io arguments");
        if (fault->kind == VDISK_FAULT_POWER_CUT && fault->size > offsetof(vdisk_fault, once) &&
            fault->once)
                return vdisk_error(-EINVAL, "a power cut cannot be transient");
        if (fault->kind == VDISK_FAULT_POWER_CUT && inner->kind != IO_KIND_MEMORY)
                return vdisk_error(-EINVAL, "a power cut needs a memory io underneath");
        fi = calloc(1, sizeof *fi);
        if (!fi)
                return vdisk_error(-ENOMEM, "out of memory");
        fi->inner = vdisk_io_ref(inner);
        /* Fields past the caller's `size` (an older struct) stay 0. */
        memcpy(&fi->f, fault, MIN(fault->size, sizeof fi->f));
        fi->f.size = sizeof fi->f;
        if (fault->kind == VDISK_FAULT_POWER_CUT) {
                const void *data;
                size_t len;

                (void) vdisk_io_memory_data(inner, &data, &len);
                r = vdisk_io_new_memory(data, len, inner->name, 0, &fi->durable);
                if (r < 0) {
                        fault_close(fi);
                        return r;
                }
        }
        r = io_new(&fault_vtable, fi, inner->name, inner->flags, IO_KIND_FAULT, ret);
        if (r < 0)
                fault_close(fi);
        return r;
}

uint64_t vdisk_io_fault_writes(vdisk_io *io) {
        return io && io->kind == IO_KIND_FAULT ? ((fault_io *) io->user)->writes : 0;
}

uint64_t vdisk_io_fault_flushes(vdisk_io *io) {
        return io && io->kind == IO_KIND_FAULT ? ((fault_io *) io->user)->flushes : 0;
}

int vdisk_io_fault_fired(vdisk_io *io) {
        fault_io *fi;

        if (!io || io->kind != IO_KIND_FAULT)
                return 0;
        fi = io->user;
        return fi->fired || fi->flush_fired;
}

static uint64_t xorshift(uint64_t *s) {
        uint64_t x = *s;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return *s = x;
}

int vdisk_io_fault_crash_image(vdisk_io *io, uint64_t seed, vdisk_io **ret) {
        _cleanup_(io_unrefp) vdisk_io *img = NULL;
        const void *data;
        fault_io *fi;
        uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
        size_t len;
        int r;

        if (!io || io->kind != IO_KIND_FAULT || !ret)
                return vdisk_error(-EINVAL, "not a fault io");
        fi = io->user;
        if (!fi->durable)
                return vdisk_error(-EINVAL, "not a power-cut fault io");
        (void) vdisk_io_memory_data(fi->durable, &data, &len);
        r = vdisk_io_new_memory(data, len, io->name, 0, &img);
        if (r < 0)
                return r;
        for (size_t i = 0; seed != 0 && i < fi->n_ops; i++) {
                pending_op *op = &fi->ops[i];
                uint64_t roll = xorshift(&s) % 4;

                if (roll == 0)
                        continue;                       /* lost */
                if (roll == 1 && op->kind == OP_WRITE && op->len > 512) {
                        /* torn: each 512-byte piece independently */
                        for (uint64_t o = 0; o < op->len; o += 512) {
                                if (xorshift(&s) & 1)
                                        continue;
                                r = img->vt->pwrite(img->user, op->data + o, MIN((uint64_t) 512, op->len - o),
                                                    op->offset + o);
                                if (r < 0)
                                        return vdisk_error(r, "crash image: %s", strerror(-r));
                        }
                        continue;
                }
                r = apply_op(img, op);
                if (r < 0)
                        return vdisk_error(r, "crash image: %s", strerror(-r));
        }
        *ret = TAKE_PTR(img);
        return 0;
}
