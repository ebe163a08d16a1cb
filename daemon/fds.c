/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Files arrive as fds. The method handler checks the flags (no O_PATH, an
 * access mode that fits, no O_APPEND where we write) and duplicates the fd;
 * the worker that uses it first checks the file itself (a regular file, empty
 * where required), because fstat() on a user's FUSE file can block. libvdisk
 * gets an io over our copy named after the caller's display name, never a path.
 *
 * Parents of a differencing image are found among the `files` of the same call
 * by a resolver: by UUID (read from each candidate's header alone; only the
 * match is opened as an image), or by the name the child records (exact match
 * or base name). Two fds of one file (same st_dev and st_ino) are one
 * candidate; two different files with the wanted UUID are ChainBroken. A
 * parent that is the same file as an image already in the chain (the top
 * passed again in `files`, say) is a loop, which libvdisk reports. Nothing is
 * ever opened by path.
 */
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

#include "vdiskd.h"

/* sd_bus_message_read() of an 'h' whose index is not among the fds the
 * message carries fails with -EBADMSG (sd-bus bounds-checks the index): that
 * is a bad descriptor from the caller, reported as such. */
int fd_read_failed(int r, sd_bus_error *error) {
        if (r == -EBADMSG)
                return set_error(error, ERROR_PREFIX "BadFileDescriptor",
                                 "The call names a file descriptor it does not carry (index out of range)");
        return r;
}

int fd_accept(int fd, uint32_t flags, const char *what, int *ret_fd, int *ret_writable, sd_bus_error *error) {
        int fl, acc, copy;

        /* Only what the descriptor's flags say: fstat() would ask the file
         * system, and a FUSE server can take its time answering. The rest is
         * fd_vet(), on a worker. */
        fl = fcntl(fd, F_GETFL);
        if (fl < 0)
                return set_error(error, ERROR_PREFIX "BadFileDescriptor", "%s: file descriptor not usable", what);
        if (fl & O_PATH)
                return set_error(error, ERROR_PREFIX "BadFileDescriptor",
                                 "%s: O_PATH file descriptors are refused: pass a descriptor opened for reading", what);
        acc = fl & O_ACCMODE;
        if (acc == O_WRONLY)
                return set_error(error, ERROR_PREFIX "BadFileDescriptor",
                                 "%s: opened write-only: the descriptor must be readable", what);
        if ((flags & FD_NEED_WRITE) && acc != O_RDWR)
                return set_error(error, ERROR_PREFIX "BadFileDescriptor",
                                 "%s: opened read-only: this method writes and needs an O_RDWR descriptor", what);
        if (acc == O_RDWR && (fl & O_APPEND))
                return set_error(error, ERROR_PREFIX "BadFileDescriptor",
                                 "%s: opened with O_APPEND: positioned writes would land at the end", what);
        copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (copy < 0)
                return set_error(error, ERROR_PREFIX "BadFileDescriptor", "%s: cannot duplicate the descriptor", what);
        *ret_fd = copy;
        *ret_writable = acc == O_RDWR;
        return 0;
}

int fd_accept_direct(int fd, const char *what, int *ret_fd, sd_bus_error *error) {
        int fl, copy;

        /* Flags only, as in fd_accept(); libvdisk checks on the worker that
         * it is the same file as the output (vdisk_io_set_direct_fd()). */
        fl = fcntl(fd, F_GETFL);
        if (fl < 0)
                return set_error(error, ERROR_PREFIX "BadFileDescriptor", "%s: file descriptor not usable", what);
        if ((fl & O_PATH) || !(fl & O_DIRECT) || (fl & O_ACCMODE) == O_RDONLY || (fl & O_APPEND))
                return set_error(error, ERROR_PREFIX "BadFileDescriptor",
                                 "%s: must be the output file opened for writing with O_DIRECT (and without O_APPEND)",
                                 what);
        copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (copy < 0)
                return set_error(error, ERROR_PREFIX "BadFileDescriptor", "%s: cannot duplicate the descriptor", what);
        *ret_fd = copy;
        return 0;
}

int fd_vet(int fd, uint32_t flags, const char *what, struct stat *ret_st, Outcome *o) {
        struct stat st;

        if (fstat(fd, &st) < 0) {
                outcome_setf(o, -EBADF, "%s: cannot stat the file descriptor", what);
                return -EBADF;
        }
        if (!S_ISREG(st.st_mode)) {
                outcome_setf(o, -EBADF, "%s: not a regular file", what);
                return -EBADF;
        }
        if ((flags & FD_NEED_EMPTY) && st.st_size != 0) {
                outcome_setf(o, -EBADF, "%s: not empty (%" PRIu64 " bytes): pass a new, empty file", what,
                             (uint64_t) st.st_size);
                return -EBADF;
        }
        if (ret_st)
                *ret_st = st;
        return 0;
}

int files_vet(FileArg *files, size_t n_files, Outcome *o) {
        for (size_t i = 0; i < n_files; i++) {
                struct stat st;
                int r;

                r = fd_vet(files[i].fd, 0, files[i].name, &st, o);
                if (r < 0)
                        return r;
                files[i].dev = st.st_dev;
                files[i].ino = st.st_ino;
        }
        return 0;
}

int io_from_fd(int fd, uint32_t flags, const char *name, vdisk_io **ret) {
        int r;

        r = vdisk_io_new_fd(fd, name, VDISK_IO_OWN_FD | flags, ret);
        if (r < 0)
                close(fd);
        return r;
}

/* An io over a duplicate of a candidate's fd (the candidate keeps its own).
 * libvdisk asks for parents read-only; a writable one comes from
 * files_reopen() when an operation writes into it. */
static int candidate_io(const FileArg *f, int writable, vdisk_io **ret) {
        return vdisk_io_new_fd(f->fd, f->name, (writable && f->writable) ? 0 : VDISK_IO_READONLY, ret);
}

/* The caller's writable descriptors, kept for the life of the disk: the one
 * an operation needs to write into a parent is found here by file identity
 * (files_reopen). */
typedef struct WritableFile {
        int fd;                 /* our own duplicate */
        dev_t dev;
        ino_t ino;
        char *name;             /* the caller's name for it (`files` key), or NULL */
} WritableFile;

struct FilesResolver {
        FileArg *files;         /* borrowed from the opening call; NULL once it returned */
        size_t n_files;
        WritableFile *writable;
        size_t n_writable;
};

/* A candidate's UUID, from its header alone (vdisk_peek_ids: at most 64 KiB
 * read, no table loaded, whatever the header claims). Only the match is
 * opened as an image, by the library's chain code. */
static int candidate_uuid(const FileArg *f, uint8_t ret[16]) {
        vdisk_image_ids ids = { .size = sizeof(ids) };
        vdisk_io *io = NULL;
        int r;

        r = candidate_io(f, 0, &io);
        if (r < 0)
                return r;
        /* Any format: a chain may mix them (a VHD diff on a VDI). */
        r = vdisk_peek_ids(io, NULL, &ids);
        vdisk_io_unref(io);
        if (r < 0)
                return r;
        if (!(ids.mask & VDISK_IDS_UUID))
                return -EOPNOTSUPP;
        memcpy(ret, ids.uuid, 16);
        return 0;
}

static int files_find_uuid(void *user, const uint8_t uuid[16], const char *format, const char *child_name,
                           int writable, vdisk_io **ret_io) {
        FilesResolver *fr = user;
        const FileArg *found = NULL;

        for (size_t i = 0; i < fr->n_files; i++) {
                const FileArg *f = &fr->files[i];
                uint8_t u[16];

                if (candidate_uuid(f, u) < 0 || memcmp(u, uuid, 16) != 0)
                        continue;
                if (found && (found->dev != f->dev || found->ino != f->ino)) {
                        /* Guessing could merge into the wrong parent; the
                         * library words the message (naming the UUID). */
                        vdisk_clear_error();
                        return -ENOTUNIQ;
                }
                if (!found)
                        found = f;
        }
        /* Candidates that failed the peek left their messages behind: clear
         * them so the library words the failure itself (naming the UUID). */
        vdisk_clear_error();
        if (!found)
                return -ENOENT;
        return candidate_io(found, writable, ret_io);
}

static const char *base_name(const char *s) {
        const char *p = strrchr(s, '/'), *q = strrchr(s, '\\');

        if (q && (!p || q > p))
                p = q;
        return p ? p + 1 : s;
}

static int files_open_name(void *user, const char *name, const char *child_name, int writable, vdisk_io **ret_io) {
        FilesResolver *fr = user;

        for (size_t i = 0; i < fr->n_files; i++)
                if (streq(fr->files[i].name, name))
                        return candidate_io(&fr->files[i], writable, ret_io);
        for (size_t i = 0; i < fr->n_files; i++)
                if (streq(base_name(fr->files[i].name), base_name(name)))
                        return candidate_io(&fr->files[i], writable, ret_io);
        vdisk_clear_error();
        return -ENOENT;
}

/* Companion files (VMDK extents, a qcow2 data file) are matched by the name
 * the image records, among the call's files, like parents named by file.
 * Written ones must have come writable; new ones (create) empty. */
static int files_open_companion(void *user, const char *name, const char *image_name, uint32_t flags,
                                vdisk_io **ret_io) {
        FilesResolver *fr = user;
        const FileArg *f = NULL;
        struct stat st;

        for (size_t i = 0; i < fr->n_files && !f; i++)
                if (streq(fr->files[i].name, name))
                        f = &fr->files[i];
        for (size_t i = 0; i < fr->n_files && !f; i++)
                if (streq(base_name(fr->files[i].name), base_name(name)))
                        f = &fr->files[i];
        vdisk_clear_error();
        if (!f && !(flags & VDISK_COMPANION_CREATE)) {
                /* After the open (an image below the top reopened writable
                 * for a merge, or as the new top): the writable descriptors
                 * the caller handed over, by the same names. */
                for (size_t i = 0; i < fr->n_writable; i++)
                        if (fr->writable[i].name && streq(fr->writable[i].name, name))
                                return vdisk_io_new_fd(fr->writable[i].fd, name, 0, ret_io);
                return -ENOENT;
        }
        if (!f)
                return -ENOENT;
        /* libvdisk words these, naming the file. */
        if ((flags & (VDISK_COMPANION_WRITE | VDISK_COMPANION_CREATE)) && !f->writable)
                return -EROFS;
        if (flags & VDISK_COMPANION_CREATE) {
                if (fstat(f->fd, &st) < 0)
                        return -errno;
                if (st.st_size != 0)
                        return -EEXIST;
        }
        return candidate_io(f, !!(flags & (VDISK_COMPANION_WRITE | VDISK_COMPANION_CREATE)), ret_io);
}

/* Parents are opened read-only; when an operation must write into one (the
 * image a Merge writes into, the child it relinks, Compact or Repair of a
 * lower image, SetComment on one), libvdisk asks for a writable io on the
 * same file. vdiskd never opens a path: it looks among the writable
 * descriptors the caller handed over for one on the same file (device and
 * inode), and otherwise fails with FileNeeded naming the image. */
static int files_reopen(void *user, vdisk_io *io, vdisk_io **ret_io) {
        FilesResolver *fr = user;
        uint64_t dev, ino;
        int r;

        r = vdisk_io_get_file_id(io, &dev, &ino);
        if (r < 0)
                return r;
        for (size_t i = 0; i < fr->n_writable; i++)
                if ((uint64_t) fr->writable[i].dev == dev && (uint64_t) fr->writable[i].ino == ino)
                        return vdisk_io_new_fd(fr->writable[i].fd, vdisk_io_name(io), 0, ret_io);
        /* libvdisk words it, naming the image: FileNeeded. */
        vdisk_clear_error();
        return -ENOENT;
}

static void files_free(void *user) {
        FilesResolver *fr = user;

        for (size_t i = 0; i < fr->n_writable; i++) {
                close(fr->writable[i].fd);
                free(fr->writable[i].name);
        }
        free(fr->writable);
        free(fr);
}

static const vdisk_resolver_ops files_ops = {
        .size = sizeof(vdisk_resolver_ops),
        .open_name = files_open_name,
        .find_uuid = files_find_uuid,
        .free = files_free,
        .reopen = files_reopen,
        .open_companion = files_open_companion,
};

static int resolver_add_writable(FilesResolver *fr, int fd, dev_t dev, ino_t ino, const char *name) {
        WritableFile *w;
        char *n = NULL;
        int copy;

        for (size_t i = 0; i < fr->n_writable; i++)
                if (fr->writable[i].dev == dev && fr->writable[i].ino == ino)
                        return 0;
        w = reallocarray(fr->writable, fr->n_writable + 1, sizeof *w);
        if (!w)
                return -ENOMEM;
        fr->writable = w;
        if (name) {
                n = strdup(name);
                if (!n)
                        return -ENOMEM;
        }
        copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (copy < 0) {
                free(n);
                return -errno;
        }
        fr->writable[fr->n_writable++] = (WritableFile) { .fd = copy, .dev = dev, .ino = ino, .name = n };
        return 0;
}

int files_resolver_add_writable(FilesResolver *fr, int fd, dev_t dev, ino_t ino) {
        return resolver_add_writable(fr, fd, dev, ino, NULL);
}

void files_resolver_done_opening(FilesResolver *fr) {
        if (!fr)
                return;
        fr->files = NULL;
        fr->n_files = 0;
}

unsigned files_resolver_n_writable(const FilesResolver *fr) {
        return fr ? (unsigned) MIN(fr->n_writable, (size_t) UINT_MAX / 4) : 0;
}

int files_resolver_begin_opening(FilesResolver *fr, FileArg *files, size_t n_files) {
        int r;

        for (size_t i = 0; i < n_files; i++)
                if (files[i].writable) {
                        r = resolver_add_writable(fr, files[i].fd, files[i].dev, files[i].ino, files[i].name);
                        if (r < 0)
                                return r;
                }
        fr->files = files;
        fr->n_files = n_files;
        return 0;
}

int files_resolver_new(FileArg *files, size_t n_files, FilesResolver **ret_fr, vdisk_resolver **ret) {
        FilesResolver *fr;
        int r;

        fr = calloc(1, sizeof *fr);
        if (!fr)
                return -ENOMEM;
        fr->files = files;
        fr->n_files = n_files;
        for (size_t i = 0; i < n_files; i++)
                if (files[i].writable) {
                        r = resolver_add_writable(fr, files[i].fd, files[i].dev, files[i].ino, files[i].name);
                        if (r < 0) {
                                files_free(fr);
                                return r;
                        }
                }
        r = vdisk_resolver_new_ops(&files_ops, fr, ret);
        if (r < 0) {
                files_free(fr);
                return r;
        }
        if (ret_fr)
                *ret_fr = fr;
        return 0;
}
