/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Access model: vdisk_disk_open_chain opens parents read-only, and an
 * operation that writes into one reopens just that image writable through
 * the resolver, after checking it is the same file. Over real files in a
 * temporary directory (the path resolver), checked through the process's own
 * descriptors (/proc/self/fd): which of them are open O_RDWR on which file.
 *   - open_chain: top O_RDWR, parents O_RDONLY; data reads through
 *   - a setter on a parent reopens only that parent; the vdisk_image pointer
 *     the caller holds stays valid (the same object, now writable)
 *   - a forward merge into the base reopens the base and the relinked child
 *     only, and the chain reads the same afterwards
 *   - a file replaced under its name: -ESTALE naming it, nothing written
 *   - a chain opened VDISK_OPEN_READONLY: -EROFS, nothing reopened
 *   - a resolver without reopen (caller ops): -EROFS, as before
 *   - the disk keeps its own reference: the caller may unref the resolver
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests.h"

#define SIZE (4 * MiB)

static char dir[PATH_MAX - 64];

static void path_of(const char *name, char *buf) {
        snprintf(buf, PATH_MAX, "%s/%s", dir, name);
}

/* How many descriptors of this process are open on `name`, and how many of
 * them for writing. */
static void fds_on(const char *name, int *ret_total, int *ret_rw) {
        char want[PATH_MAX], link[PATH_MAX], target[PATH_MAX];
        DIR *d;
        struct dirent *de;

        path_of(name, want);
        *ret_total = *ret_rw = 0;
        d = opendir("/proc/self/fd");
        ASSERT(d);
        while ((de = readdir(d))) {
                ssize_t n;
                int fd, fl;

                if (de->d_name[0] == '.')
                        continue;
                fd = atoi(de->d_name);
                snprintf(link, sizeof link, "/proc/self/fd/%s", de->d_name);
                n = readlink(link, target, sizeof target - 1);
                if (n < 0)
                        continue;
                target[n] = 0;
                if (strcmp(target, want) != 0)
                        continue;
                fl = fcntl(fd, F_GETFL);
                if (fl < 0)
                        continue;
                (*ret_total)++;
                if ((fl & O_ACCMODE) != O_RDONLY)
                        (*ret_rw)++;
        }
        closedir(d);
}

static void assert_access(const char *name, int want_open, int want_rw) {
        int total, rw;

        fds_on(name, &total, &rw);
        test_set_context("file %s: %d descriptors, %d writable", name, total, rw);
        if (want_open)
                ASSERT(total > 0);
        if (want_rw)
                ASSERT(rw > 0);
        else
                ASSERT(rw == 0);
        test_set_context("%s", "");
}

static void fill(uint8_t *buf, size_t len, uint8_t seed) {
        for (size_t i = 0; i < len; i++)
                buf[i] = (uint8_t) (seed + i * 7 + (i >> 9));
}

/* base.vdi <- d1.vdi <- d2.vdi; each writes its own 1 MiB range. */
static void make_chain(void) {
        static const char *const names[] = { "base.vdi", "d1.vdi", "d2.vdi" };
        uint8_t *buf = malloc(MiB);
        vdisk_disk *d;
        char p[PATH_MAX];

        ASSERT(buf);
        ASSERT_OK(vdisk_disk_new(&d));
        for (unsigned i = 0; i < 3; i++) {
                vdisk_io *io;
                vdisk_create_opts o = { .size = sizeof o };

                path_of(names[i], p);
                unlink(p);
                ASSERT_OK(vdisk_io_open_path(p, VDISK_PATH_WRITE | VDISK_PATH_CREATE, &io));
                if (i == 0)
                        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", SIZE, &o));
                else
                        ASSERT_OK(vdisk_disk_create_diff(d, io, "vdi", &o));
                vdisk_io_unref(io);
                fill(buf, MiB, (uint8_t) (i + 1));
                ASSERT_OK(vdisk_disk_write(d, buf, MiB, i * MiB));
                ASSERT_OK(vdisk_disk_flush(d));
        }
        vdisk_disk_unref(d);
        free(buf);
}

static void check_content(vdisk_disk *d) {
        uint8_t *buf = malloc(MiB), *want = malloc(MiB);

        ASSERT(buf && want);
        for (unsigned i = 0; i < 3; i++) {
                fill(want, MiB, (uint8_t) (i + 1));
                ASSERT_OK(vdisk_disk_read(d, buf, MiB, i * MiB));
                ASSERT(memcmp(buf, want, MiB) == 0);
        }
        ASSERT_OK(vdisk_disk_read(d, buf, MiB, 3 * MiB));
        for (size_t i = 0; i < MiB; i++)
                ASSERT(buf[i] == 0);
        free(buf);
        free(want);
}

static vdisk_disk *open_chain(uint32_t flags, vdisk_resolver *res) {
        vdisk_resolver *own = NULL;
        vdisk_disk *d;
        vdisk_io *io;
        char p[PATH_MAX];

        path_of("d2.vdi", p);
        ASSERT_OK(vdisk_io_open_path(p, (flags & VDISK_OPEN_READONLY) ? 0 : VDISK_PATH_WRITE, &io));
        if (!res)
                ASSERT_OK(vdisk_resolver_new_path(NULL, &own));
        ASSERT_OK(vdisk_disk_new(&d));
        ASSERT_OK(vdisk_disk_open_chain(d, res ? res : own, io, "vdi", flags));
        /* The disk holds its own reference: dropping ours is fine. */
        vdisk_resolver_unref(own);
        vdisk_io_unref(io);
        return d;
}

static void test_parents_read_only(void) {
        vdisk_disk *d = open_chain(0, NULL);
        vdisk_image *base = vdisk_disk_image(d, 0);
        const char *comment;

        ASSERT(vdisk_disk_count(d) == 3);
        assert_access("d2.vdi", 1, 1);
        assert_access("d1.vdi", 1, 0);
        assert_access("base.vdi", 1, 0);
        check_content(d);

        /* A setter on the base reopens the base, and only the base. */
        ASSERT_OK(vdisk_image_set_comment(base, "reopened"));
        assert_access("base.vdi", 1, 1);
        assert_access("d1.vdi", 1, 0);
        /* The pointer the caller held is still the base, and valid. */
        ASSERT(vdisk_disk_image(d, 0) == base);
        ASSERT_OK(vdisk_image_get_comment(base, &comment));
        ASSERT(strcmp(comment, "reopened") == 0);
        check_content(d);
        vdisk_disk_unref(d);
        assert_access("base.vdi", 0, 0);
}

static void test_merge_reopens_target_only(void) {
        vdisk_disk *d = open_chain(0, NULL);
        char **removed = NULL;

        /* Forward merge of d1 into the base: writes the base and relinks d2. */
        ASSERT_OK(vdisk_merge(d, 1, 0, NULL, &removed));
        ASSERT(removed && removed[0] && strstr(removed[0], "d1.vdi") && !removed[1]);
        vdisk_strv_free(removed);
        ASSERT(vdisk_disk_count(d) == 2);
        assert_access("base.vdi", 1, 1);
        assert_access("d1.vdi", 0, 0);
        check_content(d);
        vdisk_disk_unref(d);

        /* On disk too: the new chain reads the same. */
        d = open_chain(VDISK_OPEN_READONLY, NULL);
        ASSERT(vdisk_disk_count(d) == 2);
        check_content(d);
        vdisk_disk_unref(d);
}

static void test_replaced_file(void) {
        char p[PATH_MAX], tmp[PATH_MAX];
        vdisk_disk *d;
        struct stat before, after;

        make_chain();
        d = open_chain(0, NULL);
        /* Another file takes d1.vdi's name (a copy: same content, same UUID). */
        path_of("d1.vdi", p);
        path_of("d1.copy", tmp);
        {
                int in = open(p, O_RDONLY | O_CLOEXEC), out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                char buf[65536];
                ssize_t n;

                ASSERT(in >= 0 && out >= 0);
                while ((n = read(in, buf, sizeof buf)) > 0)
                        ASSERT(write(out, buf, (size_t) n) == n);
                close(in);
                close(out);
        }
        ASSERT(rename(tmp, p) == 0);
        ASSERT(stat(p, &before) == 0);
        /* Merging d2 into d1 must write d1: the name is another file now. */
        ASSERT_ERR(vdisk_merge(d, 2, 1, NULL, NULL), -ESTALE);
        ASSERT(strstr(vdisk_last_error(), "d1.vdi"));
        ASSERT(vdisk_disk_count(d) == 3);
        assert_access("d1.vdi", 0, 0);   /* the replacement was never kept open */
        check_content(d);
        vdisk_disk_unref(d);
        ASSERT(stat(p, &after) == 0);
        ASSERT(after.st_mtime == before.st_mtime && after.st_size == before.st_size);
}

static void test_read_only_chain(void) {
        vdisk_disk *d;

        make_chain();
        d = open_chain(VDISK_OPEN_READONLY, NULL);
        assert_access("d2.vdi", 1, 0);
        ASSERT_ERR(vdisk_merge(d, 2, 1, NULL, NULL), -EROFS);
        ASSERT_ERR(vdisk_image_set_comment(vdisk_disk_image(d, 0), "x"), -EROFS);
        assert_access("d1.vdi", 1, 0);
        assert_access("base.vdi", 1, 0);
        vdisk_disk_unref(d);
}

/* Caller ops without reopen: parents found by a caller's resolver stay
 * read-only, and writing into one fails with -EROFS as it always did. */
static int ops_find_uuid(void *user, const uint8_t uuid[16], const char *format, const char *child_name,
                         int writable, vdisk_io **ret) {
        static const char *const names[] = { "d1.vdi", "base.vdi" };

        (void) user;
        (void) child_name;
        (void) writable;
        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                char p[PATH_MAX];
                vdisk_io *io;
                vdisk_disk *s;
                uint8_t u[16];
                int r;

                path_of(names[i], p);
                ASSERT_OK(vdisk_io_open_path(p, 0, &io));
                ASSERT_OK(vdisk_disk_new(&s));
                r = vdisk_disk_open(s, io, format, VDISK_OPEN_READONLY | VDISK_OPEN_INFO);
                if (r >= 0)
                        r = vdisk_image_get_uuid(vdisk_disk_image(s, 0), u);
                vdisk_disk_unref(s);
                if (r >= 0 && memcmp(u, uuid, 16) == 0) {
                        *ret = io;
                        return 0;
                }
                vdisk_io_unref(io);
        }
        return -ENOENT;
}

static void test_ops_without_reopen(void) {
        /* An ops struct of the size older callers passed (up to free). */
        vdisk_resolver_ops ops = {
                .size = offsetof(vdisk_resolver_ops, free) + sizeof(ops.free),
                .find_uuid = ops_find_uuid,
        };
        vdisk_resolver *res;
        vdisk_disk *d;

        make_chain();
        ASSERT_OK(vdisk_resolver_new_ops(&ops, NULL, &res));
        d = open_chain(0, res);
        vdisk_resolver_unref(res);
        assert_access("base.vdi", 1, 0);
        ASSERT_ERR(vdisk_merge(d, 2, 1, NULL, NULL), -EROFS);
        check_content(d);
        vdisk_disk_unref(d);
}

int main(void) {
        const char *t = getenv("TMPDIR");
        char p[PATH_MAX];

        snprintf(dir, sizeof dir, "%s/vdisk-test-reopen.XXXXXX", t ? t : "/tmp");
        ASSERT(mkdtemp(dir));
        /* /proc/self/fd shows canonical paths. */
        {
                char *real = realpath(dir, NULL);

                ASSERT(real);
                snprintf(dir, sizeof dir, "%s", real);
                free(real);
        }
        if (access("/proc/self/fd", R_OK) < 0) {
                rmdir(dir);
                return EXIT_TEST_SKIP;
        }

        make_chain();
        test_parents_read_only();
        test_merge_reopens_target_only();
        test_replaced_file();
        test_read_only_chain();
        test_ops_without_reopen();

        for (const char *const *n = (const char *const[]) { "base.vdi", "d1.vdi", "d2.vdi", "d1.copy", NULL };
             *n; n++) {
                path_of(*n, p);
                unlink(p);
        }
        rmdir(dir);
        printf("ok\n");
        return 0;
}
