/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * File resolvers: how a chain finds the parents its images name.
 *
 * The path resolver (vdisk-img) follows a parent's recorded file name relative
 * to the child's directory, like qemu-img. For formats that link by UUID only
 * (VDI, VHD), it scans the child's directory and the directories the user named
 * for regular files with the extension of any format (a chain may mix them),
 * opened with O_NOFOLLOW, probed (never as raw), and
 * matches their UUIDs, read from each candidate's header alone (image_peek):
 * a full open would load each candidate's block map, up to 64 MiB that a
 * crafted sparse file claims for free, once per level of the chain. Only the
 * match is opened as an image, by vdisk_disk_open_chain(). Two different
 * files with the wanted UUID are an error: guessing could merge into the
 * wrong parent.
 *
 * Lives in core (not io) because matching a UUID means reading an image header.
 */
#include <dirent.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/core.h"

typedef struct path_resolver {
        char **dirs;            /* NULL-terminated */
        uint32_t write_flags;   /* VDISK_PATH_* of images reopened for writing */
} path_resolver;

static char *dir_of(const char *path) {
        _cleanup_free_ char *copy = strdup(path);

        if (!copy)
                return NULL;
        return strdup(dirname(copy));
}

static int path_open_name(void *user, const char *name, const char *child_name, int writable, vdisk_io **ret) {
        _cleanup_free_ char *dir = NULL, *full = NULL;

        if (!name || !name[0])
                return vdisk_error(-EINVAL, "empty parent file name");
        if (name[0] == '/')
                return vdisk_io_open_path(name, writable ? VDISK_PATH_WRITE | VDISK_PATH_DIRECT : 0, ret);
        dir = dir_of(child_name);
        if (!dir)
                return vdisk_error(-ENOMEM, "out of memory");
        full = strdup_printf("%s/%s", dir, name);
        if (!full)
                return vdisk_error(-ENOMEM, "out of memory");
        return vdisk_io_open_path(full, writable ? VDISK_PATH_WRITE | VDISK_PATH_DIRECT : 0, ret);
}

static bool has_extension(const char *name, const char *const *exts) {
        const char *dot = strrchr(name, '.');

        if (!dot || !exts)
                return false;
        for (; *exts; exts++)
                if (strcasecmp(dot + 1, *exts) == 0)
                        return true;
        return false;
}

/* A parent found by UUID may be of any format (a VHD diff on a VDI, a VDI
 * diff on a VMDK): the candidates are the files with the extension of any
 * format but raw (raw records no UUID). */
static bool is_candidate_name(const char *name) {
        for (size_t i = 0; i < backend_table_size(); i++) {
                const vdisk_backend *be = backend_table_get(i);

                if (be != &backend_raw && has_extension(name, be->info.extensions))
                        return true;
        }
        return false;
}

/* Opens `dir/name` read-only if it is a regular file (no symlinks), probes
 * its format (never raw) and reads its UUID from the header alone
 * (image_peek: no table is loaded, whatever the header claims). Only the match is opened as an image, by the chain
 * code, and reopened writable first if needed (reopen_writable), so no other
 * file is ever opened for writing. */
static int candidate_uuid(int dfd, const char *dir, const char *name, uint8_t ret_uuid[16], struct stat *ret_st,
                          vdisk_io **ret_io) {
        _cleanup_(io_unrefp) vdisk_io *io = NULL;
        const vdisk_backend *be;
        _cleanup_free_ char *full = NULL;
        _cleanup_free_ uint8_t *head = NULL;
        _cleanup_close_ int fd = -1;
        struct stat st;
        meta m = {};
        int r;

        fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
                return -EBADF;
        /* O_NONBLOCK only guarded the open against FIFOs; clear it. */
        (void) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        full = strcmp(dir, ".") == 0 ? strdup(name) : strdup_printf("%s/%s", dir, name);
        if (!full)
                return -ENOMEM;
        r = vdisk_io_new_fd(fd, full, VDISK_IO_OWN_FD, &io);
        if (r < 0)
                return r;
        TAKE_FD(fd);
        r = probe_candidate(io, full, &be);
        if (r < 0)
                return r;
        r = image_peek(be, io, &m, &head);
        if (r < 0)
                return r;
        if (!(m.mask & META_UUID))
                return -EOPNOTSUPP;
        memcpy(ret_uuid, m.uuid, 16);
        *ret_st = st;
        *ret_io = TAKE_PTR(io);
        return 0;
}

/* Replaces the read-only io of the chosen candidate by a writable one on the
 * same file (same device and inode, no symlinks). Without write permission
 * the read-only io stays: opening the chain writable then fails later with a
 * clear -EROFS when something must be written to it. */
static int reopen_writable(vdisk_io **io, const struct stat *st) {
        _cleanup_close_ int fd = -1;
        vdisk_io *rw = NULL;
        struct stat st2;
        int r;

        fd = open(vdisk_io_name(*io), O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return errno == EACCES || errno == EROFS ? 0 : -errno;
        if (fstat(fd, &st2) < 0)
                return -errno;
        if (!S_ISREG(st2.st_mode) || st2.st_dev != st->st_dev || st2.st_ino != st->st_ino)
                return vdisk_error(-ESTALE, "'%s' was replaced while it was being opened", vdisk_io_name(*io));
        (void) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        r = vdisk_io_new_fd(fd, vdisk_io_name(*io), VDISK_IO_OWN_FD | VDISK_IO_DIRECT, &rw);
        if (r < 0)
                return r;
        TAKE_FD(fd);
        vdisk_io_unref(*io);
        *io = rw;
        return 0;
}

static int path_find_uuid(void *user, const uint8_t uuid[16], const char *format, const char *child_name,
                          int writable, vdisk_io **ret) {
        path_resolver *pr = user;
        _cleanup_(io_unrefp) vdisk_io *found = NULL;
        _cleanup_free_ char *child_dir = NULL;
        struct stat found_st = {}, child_st = {};
        char uuid_text[37];
        bool have_child;

        /* `format` is the child's: the parent may be of any format. */
        child_dir = dir_of(child_name);
        if (!child_dir)
                return vdisk_error(-ENOMEM, "out of memory");
        have_child = stat(child_name, &child_st) == 0;

        for (size_t i = 0;; i++) {
                const char *dir = i == 0 ? child_dir : pr->dirs ? pr->dirs[i - 1] : NULL;
                _cleanup_close_ int dfd = -1;
                DIR *d;
                struct dirent *de;

                if (!dir)
                        break;
                dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (dfd < 0)
                        continue;
                d = fdopendir(dup(dfd));
                if (!d)
                        continue;
                while ((de = readdir(d))) {
                        _cleanup_(io_unrefp) vdisk_io *io = NULL;
                        uint8_t u[16];
                        struct stat st = {};

                        if (de->d_type != DT_REG && de->d_type != DT_UNKNOWN)
                                continue;
                        if (!is_candidate_name(de->d_name))
                                continue;
                        if (candidate_uuid(dfd, dir, de->d_name, u, &st, &io) < 0)
                                continue;
                        if (memcmp(u, uuid, 16) != 0)
                                continue;
                        if (have_child && st.st_dev == child_st.st_dev && st.st_ino == child_st.st_ino)
                                continue;
                        if (found) {
                                if (st.st_dev == found_st.st_dev && st.st_ino == found_st.st_ino)
                                        continue;   /* the same file through another directory */
                                vdisk_uuid_format(uuid, uuid_text);
                                closedir(d);
                                return vdisk_error(-ENOTUNIQ, "two images have UUID {%s}: '%s' and '%s'",
                                                   uuid_text, vdisk_io_name(found), vdisk_io_name(io));
                        }
                        found = TAKE_PTR(io);
                        found_st = st;
                }
                closedir(d);
        }
        if (!found) {
                vdisk_uuid_format(uuid, uuid_text);
                return vdisk_error(-ENOENT, "parent image with UUID {%s} of '%s' not found (searched %s%s)",
                                   uuid_text, child_name, child_dir,
                                   pr->dirs && pr->dirs[0] ? " and the --parent-dir directories" : "");
        }
        if (writable) {
                int r = reopen_writable(&found, &found_st);
                if (r < 0)
                        return r;
        }
        *ret = TAKE_PTR(found);
        return 0;
}

/* Companions must live inside the image's directory: relative, no "..",
 * and the last component no symlink. A hostile image cannot make vdisk-img
 * read (and copy out) or write a file elsewhere that its user can reach. */
static int path_open_companion(void *user, const char *name, const char *image_name, uint32_t flags,
                               vdisk_io **ret) {
        _cleanup_free_ char *dir = NULL, *full = NULL;
        uint32_t pf = VDISK_PATH_NOFOLLOW;

        if (name[0] == '/')
                return vdisk_error(-EPERM, "%s: refusing the absolute file name '%s' (companion files must be "
                                   "named relative to the image)", image_name, name);
        for (const char *p = name; *p;) {
                size_t n = strcspn(p, "/");

                if (n == 2 && p[0] == '.' && p[1] == '.')
                        return vdisk_error(-EPERM, "%s: refusing the file name '%s' (companion files must stay "
                                           "inside the image's directory)", image_name, name);
                p += n;
                p += strspn(p, "/");
        }
        dir = dir_of(image_name);
        if (!dir)
                return vdisk_error(-ENOMEM, "out of memory");
        full = strcmp(dir, ".") == 0 ? strdup(name) : strdup_printf("%s/%s", dir, name);
        if (!full)
                return vdisk_error(-ENOMEM, "out of memory");
        if (flags & VDISK_COMPANION_WRITE)
                pf |= VDISK_PATH_WRITE;
        if (flags & VDISK_COMPANION_CREATE)
                pf |= VDISK_PATH_CREATE;
        return vdisk_io_open_path(full, pf, ret);
}

/* Parents are opened read-only; an operation that writes into one asks for
 * a writable io on the same file. The name is opened again, but with
 * O_NOFOLLOW: a parent named through a symlink is reopened at the symlink's
 * target (the name it was opened by may have been a link). Either way the
 * new descriptor must be the file the chain has open (device and inode), not
 * whatever the name points to now. */
static int path_reopen(void *user, vdisk_io *io, vdisk_io **ret) {
        path_resolver *pr = user;
        const char *name = vdisk_io_name(io);
        _cleanup_free_ char *real = NULL;
        _cleanup_close_ int fd = -1;
        uint64_t dev, ino;
        struct stat st;
        int r;

        r = vdisk_io_get_file_id(io, &dev, &ino);
        if (r < 0)
                return r;
        fd = open(name, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);
        if (fd < 0 && errno == ELOOP) {
                real = realpath(name, NULL);
                if (real)
                        fd = open(real, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);
                else
                        errno = ELOOP;
        }
        if (fd < 0) {
                if (errno == ENOENT)
                        return vdisk_error(-ESTALE, "'%s' must be written, but it no longer exists under "
                                           "that name", name);
                if (errno == EACCES || errno == EPERM || errno == EROFS || errno == ETXTBSY)
                        return vdisk_error(errno == EROFS ? -EROFS : -EACCES,
                                           "'%s' must be written, but cannot be opened for writing: %m", name);
                return vdisk_error(-errno, "Could not open '%s' for writing: %m", name);
        }
        if (fstat(fd, &st) < 0)
                return vdisk_error(-errno, "Could not stat '%s': %m", name);
        if (!S_ISREG(st.st_mode) || (uint64_t) st.st_dev != dev || (uint64_t) st.st_ino != ino)
                return vdisk_error(-ESTALE, "'%s' was replaced by another file since it was opened", name);
        /* O_NONBLOCK only guarded the open against FIFOs; clear it. */
        (void) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        r = vdisk_io_new_fd(fd, name, VDISK_IO_OWN_FD |
                            ((pr->write_flags & VDISK_PATH_DIRECT) ? VDISK_IO_DIRECT : 0) |
                            ((pr->write_flags & VDISK_PATH_DIRECT_ONLY) ? VDISK_IO_DIRECT_ONLY : 0) |
                            ((pr->write_flags & VDISK_PATH_NOSYNC) ? VDISK_IO_NOSYNC : 0), ret);
        if (r < 0)
                return r;
        TAKE_FD(fd);
        return 0;
}

/* The absolute name of the file `io` has open, when `name` leads to it:
 * realpath() of the name, checked against the io's device and inode. */
static char *abs_name_of(vdisk_io *io, const char *name) {
        _cleanup_free_ char *real = NULL;
        uint64_t dev, ino;
        struct stat st;

        if (vdisk_io_get_file_id(io, &dev, &ino) < 0) {
                vdisk_clear_error();
                return NULL;
        }
        real = realpath(name, NULL);
        if (!real || stat(real, &st) < 0 || (uint64_t) st.st_dev != dev || (uint64_t) st.st_ino != ino)
                return NULL;
        return TAKE_PTR(real);
}

/* `to` relative to the directory `from`; both absolute and canonical
 * (realpath(): no "." or "..", no repeated or trailing slash). */
static char *relative_to(const char *from, const char *to) {
        size_t i = 0, common = 0, ups = 0;
        char *out, *o;

        /* `common`: the end of the last whole component both share. */
        for (;; i++) {
                bool f_end = from[i] == 0 || from[i] == '/', t_end = to[i] == 0 || to[i] == '/';

                if (f_end && t_end)
                        common = i;
                if (from[i] == 0 || to[i] == 0 || from[i] != to[i])
                        break;
        }
        /* The components of `from` past `common` each take a "..". */
        for (const char *p = from + common; *p; p++)
                if (*p == '/' && p[1])
                        ups++;
        to += common;
        if (*to == '/')
                to++;
        out = malloc(ups * 3 + strlen(to) + 1);
        if (!out)
                return NULL;
        o = out;
        for (size_t k = 0; k < ups; k++) {
                memcpy(o, "../", 3);
                o += 3;
        }
        strcpy(o, to);
        return out;
}

int resolver_link_names(vdisk_resolver *r, vdisk_io *child, vdisk_io *parent, char **ret_rel, char **ret_abs) {
        _cleanup_free_ char *abs = NULL, *child_abs = NULL, *child_dir = NULL;

        *ret_rel = *ret_abs = NULL;
        /* Only the path resolver's ios are named by paths (vdiskd's names are
         * the caller's words, memory ios have none). */
        if (!r || r->ops.open_name != path_open_name || !child || !parent)
                return 0;
        abs = abs_name_of(parent, vdisk_io_name(parent));
        child_abs = abs_name_of(child, vdisk_io_name(child));
        if (!abs || !child_abs)
                return 0;
        child_dir = dir_of(child_abs);
        if (!child_dir)
                return -ENOMEM;
        *ret_rel = relative_to(child_dir, abs);
        if (!*ret_rel)
                return -ENOMEM;
        *ret_abs = TAKE_PTR(abs);
        return 0;
}

int resolver_parent_name(vdisk_resolver *r, vdisk_io *child, vdisk_io *parent, char **ret_name, char **ret_abs) {
        _cleanup_free_ char *rel = NULL, *abs = NULL;
        const char *pn = vdisk_io_name(parent), *base = strrchr(pn, '/');
        int k;

        k = resolver_link_names(r, child, parent, &rel, &abs);
        if (k < 0)
                return k;
        if (!rel && !(rel = strdup(base ? base + 1 : pn)))
                return -ENOMEM;
        *ret_name = TAKE_PTR(rel);
        *ret_abs = TAKE_PTR(abs);
        return 0;
}

char *resolver_abs_name(vdisk_resolver *r, vdisk_io *child, const char *name) {
        _cleanup_free_ char *dir = NULL, *full = NULL;

        if (!r || r->ops.open_name != path_open_name || !name || !name[0])
                return NULL;
        if (name[0] == '/')
                return realpath(name, NULL);
        dir = dir_of(vdisk_io_name(child));
        if (!dir)
                return NULL;
        full = strdup_printf("%s/%s", dir, name);
        return full ? realpath(full, NULL) : NULL;
}

static void path_free(void *user) {
        path_resolver *pr = user;

        vdisk_strv_free(pr->dirs);
        free(pr);
}

static const vdisk_resolver_ops path_ops = {
        .size = sizeof(vdisk_resolver_ops),
        .open_name = path_open_name,
        .find_uuid = path_find_uuid,
        .free = path_free,
        .open_companion = path_open_companion,
        .reopen = path_reopen,
};

int vdisk_resolver_new_path(const char *const *extra_dirs, vdisk_resolver **ret) {
        path_resolver *pr;
        size_t n = 0;
        int r;

        if (!ret)
                return vdisk_error(-EINVAL, "invalid arguments");
        pr = calloc(1, sizeof *pr);
        if (!pr)
                return vdisk_error(-ENOMEM, "out of memory");
        while (extra_dirs && extra_dirs[n])
                n++;
        pr->write_flags = VDISK_PATH_DIRECT;
        pr->dirs = calloc(n + 1, sizeof(char *));
        if (!pr->dirs) {
                free(pr);
                return vdisk_error(-ENOMEM, "out of memory");
        }
        for (size_t i = 0; i < n; i++)
                if (!(pr->dirs[i] = strdup(extra_dirs[i]))) {
                        path_free(pr);
                        return vdisk_error(-ENOMEM, "out of memory");
                }
        r = vdisk_resolver_new_ops(&path_ops, pr, ret);
        if (r < 0)
                path_free(pr);
        return r;
}

int vdisk_resolver_set_write_flags(vdisk_resolver *r, uint32_t path_flags) {
        path_resolver *pr;

        if (!r || r->ops.reopen != path_reopen ||
            (path_flags & ~(uint32_t) (VDISK_PATH_DIRECT | VDISK_PATH_DIRECT_ONLY | VDISK_PATH_NOSYNC)) ||
            ((path_flags & VDISK_PATH_DIRECT_ONLY) && !(path_flags & VDISK_PATH_DIRECT)))
                return vdisk_error(-EINVAL, "invalid arguments");
        pr = r->user;
        pr->write_flags = path_flags;
        return 0;
}

int vdisk_resolver_new_ops(const vdisk_resolver_ops *ops, void *user, vdisk_resolver **ret) {
        vdisk_resolver *r;

        if (!ops || !ret || ops->size < offsetof(vdisk_resolver_ops, free))
                return vdisk_error(-EINVAL, "invalid resolver ops");
        r = calloc(1, sizeof *r);
        if (!r)
                return vdisk_error(-ENOMEM, "out of memory");
        /* Callers built before a member existed pass a smaller size: the
         * members past it stay NULL. */
        memcpy(&r->ops, ops, MIN(ops->size, sizeof r->ops));
        r->ops.size = MIN(ops->size, sizeof r->ops);
        r->n_ref = 1;
        r->user = user;
        *ret = r;
        return 0;
}

vdisk_resolver *vdisk_resolver_ref(vdisk_resolver *r) {
        if (r)
                r->n_ref++;
        return r;
}

vdisk_resolver *vdisk_resolver_unref(vdisk_resolver *r) {
        if (!r)
                return NULL;
        if (--r->n_ref > 0)
                return NULL;
        if (r->ops.size >= offsetof(vdisk_resolver_ops, free) + sizeof(r->ops.free) && r->ops.free)
                r->ops.free(r->user);
        free(r);
        return NULL;
}

vdisk_resolver *vdisk_resolver_free(vdisk_resolver *r) {
        return vdisk_resolver_unref(r);
}

int resolver_reopen(vdisk_resolver *r, vdisk_io *io, vdisk_io **ret) {
        vdisk_io *rw = NULL;
        int k;

        if (!r || !r->ops.reopen)
                return vdisk_error(-EROFS, "%s: image is read-only (opened without a way to reopen it for "
                                   "writing)", vdisk_io_name(io));
        vdisk_clear_error();
        k = r->ops.reopen(r->user, io, &rw);
        if (k < 0) {
                if (vdisk_last_error()[0])
                        return k;
                if (k == -ENOENT)
                        return vdisk_error(k, "%s: must be written by this operation, but no writable "
                                           "descriptor of it was supplied", vdisk_io_name(io));
                return vdisk_error(k, "%s: cannot reopen it for writing: %s", vdisk_io_name(io), strerror(-k));
        }
        if (!rw || vdisk_io_readonly(rw)) {
                vdisk_io_unref(rw);
                return vdisk_error(-EROFS, "%s: the resolver returned a read-only io for writing",
                                   vdisk_io_name(io));
        }
        *ret = rw;
        return 0;
}

int resolver_open_name(vdisk_resolver *r, const char *name, const char *child, int writable, vdisk_io **ret) {
        int k;

        if (!r->ops.open_name)
                return vdisk_error(-ENOENT, "no way to open parent '%s'", name);
        vdisk_clear_error();
        k = r->ops.open_name(r->user, name, child, writable, ret);
        if (k < 0 && !vdisk_last_error()[0])
                return vdisk_error(k, "%s: cannot open parent '%s': %s", child, name, strerror(-k));
        return k;
}

int resolver_find_uuid(vdisk_resolver *r, const uint8_t uuid[16], const char *format, const char *child,
                       int writable, vdisk_io **ret) {
        char t[37];
        int k;

        if (!r->ops.find_uuid) {
                vdisk_uuid_format(uuid, t);
                return vdisk_error(-ENOENT, "parent with UUID {%s} not supplied", t);
        }
        vdisk_clear_error();
        k = r->ops.find_uuid(r->user, uuid, format, child, writable, ret);
        if (k < 0 && !vdisk_last_error()[0]) {
                vdisk_uuid_format(uuid, t);
                return vdisk_error(k, "%s: parent with UUID {%s} not found: %s", child, t, strerror(-k));
        }
        return k;
}
