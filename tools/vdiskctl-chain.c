/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Resolving a chain of images with the user's rights.
 *
 * vdiskd never opens a path and never follows a name recorded inside an
 * image: the client hands it every file of the chain as an fd. vdiskctl asks
 * the daemon what each file is (Manager.ProbeFormat) and finds the parents
 * the way vdisk-img does:
 *
 *   - a parent recorded by file name is opened relative to the child's
 *     directory (absolute names as they are), following symlinks like
 *     qemu-img;
 *   - a parent recorded by UUID only (VDI) is looked for among the regular
 *     files (no symlinks) with the child's extension or the parent format's
 *     extensions, in the child's directory and in every --parent-dir; two
 *     different files with the wanted UUID are an error, since guessing could
 *     merge data into the wrong image.
 *
 * Candidates are opened read-only; an element that a command writes is
 * reopened read-write afterwards, by the same path, and must be the same
 * inode. The chain then goes to Manager.OpenDisk base first, with the format
 * of every element spelled out.
 *
 * An image of several files (a VMDK descriptor and its extents) names its
 * companion files in ProbeFormat's `files`: vdiskctl opens each one relative
 * to the image's directory (never an absolute name or one with "..", never
 * through a symlink: the rules of libvdisk's path resolver), with the access
 * the image gets, and passes them in OpenDisk's `files` keyed by the name the
 * image records. A chain with more descriptors than one call carries goes
 * through a FileSet.
 */

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "vdiskctl.h"

typedef struct Candidate {
        dev_t dev;
        ino_t ino;
        char *uuid;      /* "" when the file is no image or has no UUID */
} Candidate;

typedef struct Resolver {
        Ctx *ctx;
        Candidate *cands;
        size_t n_cands;
} Resolver;

static void resolver_done(Resolver *res) {
        for (size_t i = 0; i < res->n_cands; i++)
                free(res->cands[i].uuid);
        free(res->cands);
}

static void elem_clear(ChainElem *e) {
        for (size_t i = 0; i < e->n_files; i++)
                if (e->file_fds[i] >= 0)
                        close(e->file_fds[i]);
        free(e->file_fds);
        free(e->file_st);
        strv_free(e->files);
        if (e->fd >= 0)
                close(e->fd);
        free(e->path);
        free(e->name);
        free(e->format);
        free(e->qemu_format);
        value_clear(&e->info);
        *e = (ChainElem) { .fd = -1 };
}

static int elem_make_writable(ChainElem *e);

/* Manager.ProbeFormat: the backend name and the info dictionary. */
static int probe_fd(Ctx *ctx, int fd, sd_bus_error *error, char **ret_format, Value *ret_info) {
        _cleanup_msg_ sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_value_ Value info = {};
        const char *format, *media;
        char *f;
        int r;

        r = bus_new_simple_call(ctx, VDISK_PATH, VDISK_IFACE_MANAGER, "ProbeFormat", &m, "h", fd);
        if (r < 0)
                return sd_bus_error_set_errno(error, r);
        r = bus_call(ctx, m, 0, error, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "ss", &format, &media);
        if (r >= 0)
                r = value_read(reply, &info);
        if (r < 0)
                return sd_bus_error_set_errno(error, r);
        f = strdup(format);
        if (!f)
                return sd_bus_error_set_errno(error, -ENOMEM);
        *ret_format = f;
        *ret_info = info;
        info = (Value) {};
        return 0;
}

static int open_errno_exit(int err) {
        switch (err) {
        case ENOENT:
        case ENOTDIR:
                return EXIT_NOT_FOUND;
        case EACCES:
        case EPERM:
        case EROFS:
                return EXIT_PERMISSION;
        default:
                return EXIT_FAILURE;
        }
}

/* Whether a companion name stays inside the image's directory. */
static bool companion_name_ok(const char *name) {
        if (!name[0] || name[0] == '/')
                return false;
        for (const char *p = name; *p;) {
                size_t n = strcspn(p, "/");

                if (n == 2 && p[0] == '.' && p[1] == '.')
                        return false;
                p += n;
                p += strspn(p, "/");
        }
        return true;
}

/* Opens one companion file of e, with the image's access. Logs; exit code. */
static int companion_open(const ChainElem *e, const char *name, bool writable, int *ret_fd, struct stat *ret_st) {
        _cleanup_free_ char *dir = NULL;
        _cleanup_close_ int dfd = -1, fd = -1;
        int err;

        if (!companion_name_ok(name)) {
                /* vdiskd refuses these images already; never open such a name. */
                log_error("%s: Refusing the file name it records for a part of it (companion files must be named "
                          "relative to the image, inside its directory)", e->path);
                return EXIT_FAILURE;
        }
        if (path_dirname(e->path, &dir) < 0)
                return log_oom();
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0)
                fd = openat(dfd, name, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW);
        if (dfd < 0 || fd < 0) {
                err = errno;
                log_error("%s: Could not open its file '%s': %s", e->path, name,
                          err == ELOOP ? "a symbolic link (companion files are never followed through links)" :
                                         strerror(err));
                return open_errno_exit(err);
        }
        if (fstat(fd, ret_st) < 0 || !S_ISREG(ret_st->st_mode) || fcntl(fd, F_SETFL, 0) < 0) {
                log_error("%s: Its file '%s' is not a regular file", e->path, name);
                return EXIT_FAILURE;
        }
        *ret_fd = TAKE_FD(fd);
        return 0;
}

/* Opens every companion file ProbeFormat named. Logs; exit code. */
static int elem_open_files(ChainElem *e) {
        const Value *files = value_get(&e->info, "files");
        size_t n = 0;
        int r;

        if (!files || files->type != VALUE_ARRAY || files->c.n == 0)
                return 0;
        e->files = calloc(files->c.n + 1, sizeof(char *));
        e->file_fds = calloc(files->c.n, sizeof(int));
        e->file_st = calloc(files->c.n, sizeof(struct stat));
        if (!e->files || !e->file_fds || !e->file_st)
                return log_oom();
        for (size_t i = 0; i < files->c.n; i++) {
                const Value *v = &files->c.items[i];

                if (v->type != VALUE_STRING)
                        continue;
                e->files[n] = strdup(v->s);
                if (!e->files[n])
                        return log_oom();
                e->file_fds[n] = -1;
                e->n_files = ++n;
                r = companion_open(e, v->s, e->writable, &e->file_fds[n - 1], &e->file_st[n - 1]);
                if (r != 0)
                        return r;
        }
        return 0;
}

/* Opens path as a chain element and asks vdiskd what it is. `what` names
 * the file in messages ("the image", "its parent"). */
static int elem_open(Resolver *res, const char *path, bool writable, bool follow, const char *what,
                     ChainElem *ret) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(elem_clear) ChainElem e = { .fd = -1 };
        int r;

        e.path = strdup(path);
        if (e.path)
                e.name = utf8_sanitize(path_basename(e.path));
        if (!e.name)
                return log_oom();
        e.writable = writable;
        e.follow = follow;
        /* O_NONBLOCK: a FIFO in place of an image must not hang the open. */
        e.fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY | O_NONBLOCK |
                                  (follow ? 0 : O_NOFOLLOW));
        if (e.fd < 0) {
                int err = errno;

                log_error("%s: Could not open %s: %s", path, what, strerror(err));
                return open_errno_exit(err);
        }
        if (fstat(e.fd, &e.st) < 0 || !S_ISREG(e.st.st_mode) || fcntl(e.fd, F_SETFL, 0) < 0) {
                log_error("%s: Not a regular file", path);
                return EXIT_FAILURE;
        }
        r = probe_fd(res->ctx, e.fd, &error, &e.format, &e.info);
        if (r < 0)
                return log_bus_error(path, &error, r);
        *ret = e;
        e = (ChainElem) { .fd = -1 };
        return 0;
}

/* Extensions a parent of `child` recorded by UUID may have. */
static int parent_extensions(Resolver *res, const ChainElem *child, char ***ret) {
        _cleanup_(strv_freep) char **l = NULL;
        const char *dot = strrchr(child->name, '.'), *pfmt;
        const Value *info, *exts;
        size_t n = 0;

        if (dot && dot[1] && strv_push(&l, &n, dot + 1) < 0)
                return -ENOMEM;
        pfmt = value_str(&child->info, "parent-format", "");
        if (!*pfmt)
                pfmt = child->format;
        info = backend_find(res->ctx, pfmt, NULL);
        exts = value_get(info, "extensions");
        if (exts && exts->type == VALUE_ARRAY)
                for (size_t i = 0; i < exts->c.n; i++)
                        if (exts->c.items[i].type == VALUE_STRING &&
                            strv_push(&l, &n, exts->c.items[i].s) < 0)
                                return -ENOMEM;
        *ret = TAKE_PTR(l);
        return 0;
}

static bool name_has_extension(const char *name, char **exts) {
        const char *dot = strrchr(name, '.');

        if (!exts || !exts[0])
                return true;   /* nothing known: every regular file is a candidate */
        if (!dot)
                return false;
        for (char **e = exts; *e; e++)
                if (strcasecmp(dot + 1, *e) == 0)
                        return true;
        return false;
}

static bool in_chain(const ChainElem *elems, unsigned n, const struct stat *st) {
        for (unsigned i = 0; i < n; i++)
                if (elems[i].st.st_dev == st->st_dev && elems[i].st.st_ino == st->st_ino)
                        return true;
        return false;
}

/* Whether the file dir/name has the UUID `uuid` (probing it once per
 * inode): 1 or 0, < 0 on OOM. */
static int candidate_check(Resolver *res, int dfd, const char *name, const struct stat *st, const char *uuid) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_value_ Value info = {};
        _cleanup_free_ char *format = NULL;
        _cleanup_close_ int fd = -1;
        Candidate *cands, *c = NULL;
        struct stat st2;

        for (size_t i = 0; i < res->n_cands; i++)
                if (res->cands[i].dev == st->st_dev && res->cands[i].ino == st->st_ino) {
                        c = &res->cands[i];
                        break;
                }
        if (c)
                return strcasecmp(c->uuid, uuid) == 0;

        fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK);
        if (fd < 0 || fstat(fd, &st2) < 0 || st2.st_dev != st->st_dev || st2.st_ino != st->st_ino ||
            !S_ISREG(st2.st_mode))
                return 0;

        cands = realloc(res->cands, (res->n_cands + 1) * sizeof(Candidate));
        if (!cands)
                return -ENOMEM;
        res->cands = cands;
        c = &cands[res->n_cands];
        *c = (Candidate) { .dev = st->st_dev, .ino = st->st_ino };

        /* A file vdiskd cannot read as an image is simply no candidate. */
        if (probe_fd(res->ctx, fd, &error, &format, &info) < 0 || value_bool(&info, "guessed-raw", false))
                c->uuid = strdup("");
        else
                c->uuid = strdup(value_str(&info, "uuid", ""));
        if (!c->uuid)
                return -ENOMEM;
        res->n_cands++;

        return *c->uuid && strcasecmp(c->uuid, uuid) == 0;
}

static void closedirp(DIR **d) {
        if (*d)
                closedir(*d);
}

/* One directory of the search for the parent with `uuid` of elems[n-1]:
 * a match goes to *found (named `prefix` + its name), a second one is an
 * error. Logs; exit code. */
static int search_dir(Resolver *res, const ChainElem *elems, unsigned n, const char *uuid, char **exts,
                      const char *dir_name, const char *prefix, char **found, struct stat *found_st) {
        const ChainElem *child = &elems[n - 1];
        _cleanup_(closedirp) DIR *dir = opendir(dir_name);
        struct dirent *de;
        int r;

        if (!dir) {
                log_warning("Could not read the directory '%s' while looking for the parent of '%s': %s",
                            dir_name, child->path, strerror(errno));
                return 0;
        }
        while ((de = readdir(dir))) {
                struct stat st;

                if (streq(de->d_name, ".") || streq(de->d_name, "..") || !name_has_extension(de->d_name, exts))
                        continue;
                if (fstatat(dirfd(dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode) ||
                    in_chain(elems, n, &st))
                        continue;
                if (*found && st.st_dev == found_st->st_dev && st.st_ino == found_st->st_ino)
                        continue;   /* the same file again (another name or directory) */

                r = candidate_check(res, dirfd(dir), de->d_name, &st, uuid);
                if (r < 0)
                        return log_oom();
                if (r == 0)
                        continue;
                if (*found) {
                        log_error("%s: Two different files have the UUID %s of its parent: '%s' and '%s%s'; "
                                  "refusing to guess", child->path, uuid, *found, prefix, de->d_name);
                        return EXIT_FAILURE;
                }
                if (asprintf(found, "%s%s", prefix, de->d_name) < 0) {
                        *found = NULL;
                        return log_oom();
                }
                *found_st = st;
        }
        return 0;
}

/* Looks for the parent with `uuid` of elems[n-1], in its directory and in
 * every --parent-dir. On success, *ret_path is the file found. Logs; exit
 * code. */
static int find_parent_by_uuid(Resolver *res, const ChainElem *elems, unsigned n, const char *uuid,
                               char **ret_path) {
        const ChainElem *child = &elems[n - 1];
        const char *slash = strrchr(child->path, '/');
        _cleanup_(strv_freep) char **exts = NULL;
        _cleanup_free_ char *found = NULL, *searched = NULL, *prefix = NULL;
        struct stat found_st = {};
        int r;

        /* Names are shown as the user would write them: "mid.vdi" beside
         * "top.vdi", "dir/mid.vdi" for --parent-dir dir. */
        prefix = strndup(child->path, slash ? (size_t) (slash - child->path + 1) : 0);
        if (!prefix || parent_extensions(res, child, &exts) < 0 || path_dirname(child->path, &searched) < 0)
                return log_oom();
        r = search_dir(res, elems, n, uuid, exts, searched, prefix, &found, &found_st);
        for (char **d = arg_parent_dirs; r == 0 && d && *d; d++) {
                size_t len = strlen(*d);
                char *s;

                free(prefix);
                if (asprintf(&prefix, "%s%s", *d, len > 0 && (*d)[len - 1] == '/' ? "" : "/") < 0)
                        prefix = NULL;
                if (!prefix || asprintf(&s, "%s, %s", searched, *d) < 0)
                        return log_oom();
                free(searched);
                searched = s;
                r = search_dir(res, elems, n, uuid, exts, *d, prefix, &found, &found_st);
        }
        if (r != 0)
                return r;
        if (!found) {
                log_error("%s: Parent image with UUID %s not found (searched %s); use --parent-dir DIR to "
                          "search more directories", child->path, uuid, searched);
                return EXIT_NOT_FOUND;
        }
        *ret_path = TAKE_PTR(found);
        return 0;
}

static int set_qemu_format(Resolver *res, ChainElem *e) {
        const Value *info = backend_find(res->ctx, e->format, NULL);
        const char *q = value_str(info, "qemu-name", NULL);

        if (!q)
                q = value_str(&e->info, "qemu-name", NULL);
        e->qemu_format = strdup(q ? q : e->format);
        if (!e->qemu_format)
                return log_oom();
        /* lower-case fallback for display when vdiskd gave no qemu name */
        if (!q)
                for (char *p = e->qemu_format; *p; p++)
                        *p = (char) tolower((unsigned char) *p);
        return 0;
}

/* Opens the parent of elems[n-1] into elems[n]. Logs; exit code. */
static int open_parent(Resolver *res, ChainElem *elems, unsigned n) {
        const ChainElem *child = &elems[n - 1];
        const char *pname = value_str(&child->info, "parent-name", "");
        const char *puuid = value_str(&child->info, "parent-uuid", "");
        const char *pfmt = value_str(&child->info, "parent-format", "");
        const char *bname = NULL, *uuid;
        _cleanup_(elem_clear) ChainElem e = { .fd = -1 };
        _cleanup_free_ char *path = NULL;
        int r;

        if (*pname) {
                if (path_relative_to(child->path, pname, &path) < 0)
                        return log_oom();
        } else if (*puuid) {
                r = find_parent_by_uuid(res, elems, n, puuid, &path);
                if (r != 0)
                        return r;
        } else {
                log_error("%s: The image needs a parent but names none", child->path);
                return EXIT_FAILURE;
        }

        /* A parent named by file follows symlinks like qemu-img; one found by UUID never. */
        r = elem_open(res, path, false, *pname != '\0', "its parent", &e);
        if (r != 0) {
                if (*pname)
                        log_error("%s: Its parent '%s' could not be opened", child->path, pname);
                return r;
        }
        if (in_chain(elems, n, &e.st)) {
                log_error("%s: The chain loops back to '%s'", child->path, e.path);
                return EXIT_FAILURE;
        }

        /* Parents are opened with the format the child records, never a
         * probed guess. Its companion files are those of the probed format. */
        if (*pfmt && !backend_find(res->ctx, pfmt, &bname))
                bname = NULL;
        if (!*pfmt || strcasecmp(pfmt, e.format) == 0 || (bname && strcasecmp(bname, e.format) == 0)) {
                r = elem_open_files(&e);
                if (r != 0)
                        return r;
        }
        if (*pfmt) {
                free(e.format);
                e.format = strdup(bname ?: pfmt);
                if (!e.format)
                        return log_oom();
        } else if (value_bool(&e.info, "guessed-raw", false)) {
                log_error("%s: Could not tell the format of its parent '%s'", child->path, e.path);
                return EXIT_FAILURE;
        }

        uuid = value_str(&e.info, "uuid", "");
        if (*puuid && *uuid && strcasecmp(uuid, puuid) != 0) {
                log_error("%s: Its parent '%s' has the UUID %s, not %s as recorded", child->path, e.path,
                          uuid, puuid);
                return EXIT_FAILURE;
        }
        r = set_qemu_format(res, &e);
        if (r != 0)
                return r;
        elems[n] = e;
        e = (ChainElem) { .fd = -1 };
        return 0;
}

int chain_resolve(Ctx *ctx, const char *filename, const char *format, unsigned flags, Chain *ret) {
        _cleanup_(resolver_done) Resolver res = { .ctx = ctx };
        ChainElem *elems = ret->elems;   /* top first until the end */
        const char *backend = NULL;
        unsigned n = 0;
        int r;

        *ret = (Chain) {};
        for (unsigned i = 0; i < CHAIN_MAX; i++)
                elems[i].fd = -1;

        if (format && !backend_find(ctx, format, &backend)) {
                if (ctx->have_backends) {
                        log_error("Unknown file format '%s'", format);
                        return EXIT_NOT_SUPPORTED;
                }
                backend = format;   /* let vdiskd judge */
        }

        r = elem_open(&res, filename, flags & (CHAIN_TOP_WRITABLE | CHAIN_ALL_WRITABLE), true, "the image",
                      &elems[0]);
        if (r != 0)
                return r;
        n = 1;

        /* Read as another format, the probe's parent info and companion
         * files are moot. */
        if (backend && strcasecmp(backend, elems[0].format) != 0)
                flags |= CHAIN_TOP_ONLY;
        else
                r = elem_open_files(&elems[0]);
        if (r == 0 && backend) {
                free(elems[0].format);
                elems[0].format = strdup(backend);
                if (!elems[0].format)
                        r = log_oom();
        }
        if (r != 0)
                goto fail;
        if (!backend && value_bool(&elems[0].info, "guessed-raw", false)) {
                ret->guessed_raw = true;
                if (elems[0].writable && (flags & CHAIN_GUESSED_RAW_OK)) {
                        fflush(stdout);
                        fprintf(stderr,
                                "WARNING: Image format was not specified for '%s' and probing guessed raw.\n"
                                "         Specify the 'raw' format explicitly to remove this warning.\n",
                                filename);
                } else if (elems[0].writable) {
                        log_error("%s: The format was not given and probing guessed raw; writing to it "
                                  "needs '-f raw' (a guessed raw image could be turned into another format "
                                  "by what is written)", filename);
                        r = EXIT_FAILURE;
                        goto fail;
                }
        }
        r = set_qemu_format(&res, &elems[0]);
        if (r != 0)
                goto fail;

        while (!(flags & CHAIN_TOP_ONLY) && value_bool(&elems[n - 1].info, "needs-parent", false)) {
                if (n >= CHAIN_MAX) {
                        log_error("%s: The chain is longer than %u images", filename, CHAIN_MAX);
                        r = EXIT_FAILURE;
                        goto fail;
                }
                r = open_parent(&res, elems, n);
                if (r != 0)
                        goto fail;
                n++;
                if (flags & CHAIN_ALL_WRITABLE) {
                        r = elem_make_writable(&elems[n - 1]);
                        if (r != 0)
                                goto fail;
                }
        }

        /* Base first. */
        for (unsigned i = 0; i < n / 2; i++) {
                ChainElem t = elems[i];

                elems[i] = elems[n - 1 - i];
                elems[n - 1 - i] = t;
        }
        ret->n = n;
        return 0;

fail:
        for (unsigned i = 0; i < n; i++)
                elem_clear(&elems[i]);
        *ret = (Chain) {};
        return r;
}

static int elem_make_writable(ChainElem *e) {
        _cleanup_close_ int fd = -1;
        struct stat st;
        int r;

        if (e->writable)
                return 0;
        fd = open(e->path, O_RDWR | O_CLOEXEC | O_NOCTTY | (e->follow ? 0 : O_NOFOLLOW));
        if (fd < 0) {
                int err = errno;

                log_error("%s: Could not open for writing: %s", e->path, strerror(err));
                return open_errno_exit(err);
        }
        if (fstat(fd, &st) < 0 || st.st_dev != e->st.st_dev || st.st_ino != e->st.st_ino) {
                log_error("%s: The file changed while vdiskctl was opening the chain", e->path);
                return EXIT_FAILURE;
        }
        /* Its companion files too: the same inodes, read-write. */
        for (size_t i = 0; i < e->n_files; i++) {
                _cleanup_close_ int ffd = -1;
                struct stat fst;

                r = companion_open(e, e->files[i], true, &ffd, &fst);
                if (r != 0)
                        return r;
                if (fst.st_dev != e->file_st[i].st_dev || fst.st_ino != e->file_st[i].st_ino) {
                        log_error("%s: Its file '%s' changed while vdiskctl was opening the chain", e->path,
                                  e->files[i]);
                        return EXIT_FAILURE;
                }
                close(e->file_fds[i]);
                e->file_fds[i] = TAKE_FD(ffd);
        }
        close(e->fd);
        e->fd = TAKE_FD(fd);
        e->writable = true;
        return 0;
}

int chain_make_writable(Chain *c, unsigned i) {
        assert(i < c->n);
        return elem_make_writable(&c->elems[i]);
}

bool chain_contains(const Chain *c, const struct stat *st) {
        return in_chain(c->elems, c->n, st);
}

static int append_element(sd_bus_message *m, const ChainElem *e) {
        int r;

        r = sd_bus_message_open_container(m, 'r', "hsa{sv}");
        if (r >= 0)
                r = sd_bus_message_append(m, "hs", e->fd, e->format);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0)
                r = bus_append_opt_string(m, "display-name", e->name);
        if (r >= 0 && !e->writable)
                r = bus_append_opt_bool(m, "read-only", true);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

/* Descriptors one call may carry: vdiskd's MaxFdsPerCall, and never more than
 * the system bus lets through in one message (it disconnects a client that
 * sends more). */
unsigned call_fds_max(Ctx *ctx) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_value_ Value props = {};
        uint64_t n;

        if (bus_get_all(ctx, VDISK_PATH, VDISK_IFACE_MANAGER, &error, &props) < 0)
                return MESSAGE_FDS_MAX;
        n = value_uint(&props, "MaxFdsPerCall", MESSAGE_FDS_MAX);
        return (unsigned) MAX(MIN(n, (uint64_t) MESSAGE_FDS_MAX), 1u);
}

void named_fds_free(NamedFd *l, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(l[i].key);
        free(l);
}

int named_fds_push(NamedFd **l, size_t *n, char *key, int fd) {
        NamedFd *nl;

        if (!key)
                return -ENOMEM;
        nl = reallocarray(*l, *n + 1, sizeof(NamedFd));
        if (!nl) {
                free(key);
                return -ENOMEM;
        }
        *l = nl;
        nl[(*n)++] = (NamedFd) { .key = key, .fd = fd };
        return 0;
}

/* The companion files of every element, keyed by the name the image records
 * (vdiskd matches them by that name). One file named by two images is passed
 * once; two different files under one name cannot be told apart by vdiskd:
 * refused. Logs; exit code. */
static int chain_companions(const Chain *c, NamedFd **ret, size_t *ret_n) {
        NamedFd *l = NULL;
        size_t n = 0;

        for (unsigned i = 0; i < c->n; i++) {
                const ChainElem *e = &c->elems[i];

                for (size_t k = 0; k < e->n_files; k++) {
                        bool dup = false;

                        for (unsigned j = 0; j <= i && !dup; j++)
                                for (size_t q = 0; q < (j == i ? k : c->elems[j].n_files); q++) {
                                        const ChainElem *o = &c->elems[j];

                                        if (!streq(o->files[q], e->files[k]))
                                                continue;
                                        if (o->file_st[q].st_dev != e->file_st[k].st_dev ||
                                            o->file_st[q].st_ino != e->file_st[k].st_ino) {
                                                log_error("%s: Its file '%s' and the file '%s' of '%s' have the "
                                                          "same name but are different files; vdiskd matches "
                                                          "them by name and could not tell them apart",
                                                          e->path, e->files[k], o->files[q], o->path);
                                                named_fds_free(l, n);
                                                return EXIT_FAILURE;
                                        }
                                        dup = true;
                                        break;
                                }
                        if (dup)
                                continue;
                        if (named_fds_push(&l, &n, strdup(e->files[k]), e->file_fds[k]) < 0) {
                                named_fds_free(l, n);
                                return log_oom();
                        }
                }
        }
        *ret = l;
        *ret_n = n;
        return 0;
}

int file_set_new_filled(Ctx *ctx, const NamedFd *l, size_t n, unsigned per_call, const char *what, char **ret) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_msg_ sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_free_ char *fs = NULL;
        const char *path;
        int r;

        r = bus_new_simple_call(ctx, VDISK_PATH, VDISK_IFACE_MANAGER, "CreateFileSet", &m, NULL);
        if (r < 0)
                return log_build_failed(NULL, r);
        r = bus_call(ctx, m, 0, &error, &reply);
        if (r < 0) {
                if (sd_bus_error_has_name(&error, SD_BUS_ERROR_UNKNOWN_METHOD))
                        return -EOPNOTSUPP;
                return log_bus_error(what, &error, r);
        }
        r = sd_bus_message_read(reply, "o", &path);
        if (r < 0 || !(fs = strdup(path))) {
                log_error("%s: Bad reply from vdiskd", what);
                return EXIT_FAILURE;
        }
        for (size_t i = 0; i < n; i += per_call) {
                _cleanup_msg_ sd_bus_message *m2 = NULL;

                r = bus_new_call(ctx, fs, VDISK_IFACE_FILE_SET, "Add", &m2);
                if (r >= 0)
                        r = sd_bus_message_open_container(m2, 'a', "{sh}");
                for (size_t k = i; r >= 0 && k < MIN(i + per_call, n); k++)
                        r = sd_bus_message_append(m2, "{sh}", l[k].key, l[k].fd);
                if (r >= 0)
                        r = sd_bus_message_close_container(m2);
                if (r >= 0)
                        r = bus_options_open(m2);
                if (r >= 0)
                        r = bus_options_close(m2);
                if (r < 0)
                        return log_build_failed(NULL, r);
                r = bus_call(ctx, m2, 0, &error, NULL);
                if (r < 0)
                        return log_bus_error(what, &error, r);
        }
        *ret = TAKE_PTR(fs);
        return 0;
}

int bus_append_opt_files(sd_bus_message *m, const NamedFd *l, size_t n) {
        int r;

        r = sd_bus_message_open_container(m, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", "files");
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'v', "a{sh}");
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sh}");
        for (size_t k = 0; r >= 0 && k < n; k++)
                r = sd_bus_message_append(m, "{sh}", l[k].key, l[k].fd);
        for (int q = 0; r >= 0 && q < 3; q++)
                r = sd_bus_message_close_container(m);
        return r;
}

/* A FileSet holding every element but the top and every companion file,
 * filled in calls of at most per_call descriptors. Returns 0 with *ret set,
 * -EOPNOTSUPP when vdiskd has no FileSets, or an exit code (logged). */
static int chain_file_set(Ctx *ctx, Chain *c, const NamedFd *extra, size_t n_extra, unsigned per_call,
                          char **ret) {
        NamedFd *l = NULL;
        size_t n = 0;
        int r;

        /* Parents by their base name (public: it names the Image), made
         * unique within the set; then the companions. */
        for (unsigned k = 0; k + 1 < c->n; k++) {
                char *key = NULL;
                unsigned same = 0;

                for (unsigned j = 0; j < k; j++)
                        if (streq(c->elems[j].name, c->elems[k].name))
                                same++;
                if (same == 0)
                        key = strdup(c->elems[k].name);
                else if (asprintf(&key, "%s (%u)", c->elems[k].name, same + 1) < 0)
                        key = NULL;
                if (named_fds_push(&l, &n, key, c->elems[k].fd) < 0)
                        goto oom;
        }
        for (size_t k = 0; k < n_extra; k++)
                if (named_fds_push(&l, &n, strdup(extra[k].key), extra[k].fd) < 0)
                        goto oom;

        r = file_set_new_filled(ctx, l, n, per_call, c->elems[c->n - 1].path, ret);
        named_fds_free(l, n);
        return r;
oom:
        named_fds_free(l, n);
        return log_oom();
}

int chain_open_disk(Ctx *ctx, Chain *c, bool read_only) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_msg_ sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_free_ char *file_set = NULL;
        const ChainElem *top = &c->elems[c->n - 1];
        unsigned per_call = MESSAGE_FDS_MAX;
        NamedFd *extra = NULL;
        size_t n_extra = 0;
        const char *disk;
        int r;

        assert(c->n > 0);

        r = chain_companions(c, &extra, &n_extra);
        if (r != 0)
                return r;

        /* More files than one call carries: the parents and the companion
         * files go into a FileSet first, and one OpenDisk with just the top
         * opens the whole chain. */
        if (c->n + n_extra > 1)
                per_call = call_fds_max(ctx);
        if (c->n + n_extra > per_call) {
                r = chain_file_set(ctx, c, extra, n_extra, per_call, &file_set);
                if (r == -EOPNOTSUPP) {
                        log_error("%s: The image has more files (%zu) than one call may carry, and vdiskd has no "
                                  "FileSets", top->path, c->n + n_extra);
                        r = EXIT_NOT_SUPPORTED;
                }
                if (r != 0)
                        goto finish;
        }

        r = bus_new_call(ctx, VDISK_PATH, VDISK_IFACE_MANAGER, "OpenDisk", &m);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(hsa{sv})");
        if (file_set)
                r = r >= 0 ? append_element(m, top) : r;
        else
                for (unsigned i = 0; r >= 0 && i < c->n; i++)
                        r = append_element(m, &c->elems[i]);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = bus_options_open(m);
        if (r >= 0)
                r = bus_append_opt_string(m, "display-name", top->name);
        if (r >= 0 && read_only)
                r = bus_append_opt_bool(m, "read-only", true);
        if (r >= 0 && file_set)
                r = sd_bus_message_append(m, "{sv}", "file-set", "o", file_set);
        if (r >= 0 && !file_set && n_extra > 0)
                r = bus_append_opt_files(m, extra, n_extra);
        if (r >= 0)
                r = bus_options_close(m);
        if (r < 0) {
                r = log_build_failed(top->path, r);
                goto finish;
        }
        r = bus_call(ctx, m, 0, &error, &reply);
        if (r < 0) {
                r = log_bus_error(top->path, &error, r);
                goto finish;
        }
        r = sd_bus_message_read(reply, "o", &disk);
        if (r < 0 || !(c->disk = strdup(disk))) {
                log_error("%s: Bad reply from vdiskd", top->path);
                r = EXIT_FAILURE;
                goto finish;
        }

        r = 0;
finish:
        named_fds_free(extra, n_extra);
        return r;
}

int chain_open(Ctx *ctx, const char *file, const char *format, unsigned flags, bool read_only, Chain *ret) {
        int r;

        r = chain_resolve(ctx, file, format, flags, ret);
        if (r != 0)
                return r;
        r = chain_open_disk(ctx, ret, read_only);
        if (r != 0)
                chain_done(ctx, ret);
        return r;
}

int chain_image_paths(Ctx *ctx, Chain *c, char ***ret) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_value_ Value props = {};
        _cleanup_(strv_freep) char **l = NULL;
        const Value *images;
        size_t n = 0;
        int r;

        if (!c->disk)
                return -ENOENT;
        r = bus_get_all(ctx, c->disk, VDISK_IFACE_DISK, &error, &props);
        if (r < 0)
                return r;
        images = value_get(&props, "Images");
        if (!images || images->type != VALUE_ARRAY)
                return -EBADMSG;
        l = calloc(1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < images->c.n; i++)
                if (images->c.items[i].type == VALUE_STRING && strv_push(&l, &n, images->c.items[i].s) < 0)
                        return -ENOMEM;
        if (n != c->n)
                return -EBADMSG;
        *ret = TAKE_PTR(l);
        return 0;
}

void chain_done(Ctx *ctx, Chain *c) {
        if (c->disk && ctx->bus) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_msg_ sd_bus_message *m = NULL;
                int r;

                /* Best effort: vdiskd also closes our disks when we go. */
                r = bus_new_simple_call(ctx, c->disk, VDISK_IFACE_DISK, "Close", &m, NULL);
                if (r >= 0)
                        (void) bus_call(ctx, m, CALL_UNINTERRUPTIBLE, &error, NULL);
        }
        for (unsigned i = 0; i < c->n; i++)
                elem_clear(&c->elems[i]);
        free(c->disk);
        *c = (Chain) {};
}
