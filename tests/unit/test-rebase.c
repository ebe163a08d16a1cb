/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdisk_rebase (qemu-img rebase; vdisk-img rebase and vdiskd's Disk.Rebase):
 *
 * - safe: the top, rebased onto a new base holding other data, reads through
 *   its new chain exactly what it read through the old one, and names the
 *   new base; onto nothing (NULL), it reads the same alone;
 * - unsafe: only the link changes (the top's data is not touched: the chain
 *   then reads the new base where the top has no data);
 * - refusals change nothing: the top in the new chain (-ELOOP), the same
 *   disk twice, unknown flags, a cancel before it starts (-ECANCELED);
 * - the cost follows the data: 2 TiB chains holding a few MiB, rebased
 *   safely, make a few thousand block map look-ups on each side;
 * - a qcow2 top names its backing file: the link switch is one header
 *   write, so a transient EIO at any write (or a failing flush) leaves it
 *   naming its old backing file or the new one, never none (the name and
 *   the parent UUID used to be two writes: qcow2 dropped its backing file at
 *   the first); a rebase without the new name is refused.
 */
#include "tests.h"

#define SIZE (8 * MiB)
#define HUGE (UINT64_C(2) << 40)
#define LOOKUPS_MAX 20000

static vdisk_io *make_base(const char *name, uint64_t size, uint8_t v) {
        vdisk_disk *d = disk_new();
        vdisk_io *io = mem_io(name, NULL, 0);

        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", size, NULL));
        disk_fill(d, 0, 64 * KiB, 0x11);                         /* the same in both bases */
        disk_fill(d, 3 * MiB + 512, 100000, v);
        disk_fill(d, size - 2 * MiB, MiB, v);
        vdisk_disk_unref(d);
        return io;
}

/* old <- top (with data of its own), and new. */
static void make_chain(uint64_t size, vdisk_io **ret_old, vdisk_io **ret_top, vdisk_io **ret_new) {
        vdisk_disk *d = disk_new();

        *ret_old = make_base("old.vdi", size, 0x22);
        *ret_new = make_base("new.vdi", size, 0x33);
        *ret_top = mem_io("top.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_open(d, *ret_old, "vdi", 0));
        ASSERT_OK(vdisk_disk_create_diff(d, *ret_top, "vdi", NULL));
        disk_fill(d, 3 * MiB, 4096, 0x44);                       /* over the old base's data */
        disk_fill(d, 5 * MiB, 4096, 0x55);
        vdisk_disk_unref(d);
}

static vdisk_disk *open_ios(vdisk_io *a, vdisk_io *b, uint32_t flags) {
        vdisk_disk *d = disk_new();

        ASSERT_OK(vdisk_disk_open(d, a, "vdi", flags));
        if (b)
                ASSERT_OK(vdisk_disk_open(d, b, "vdi", flags));
        return d;
}

/* The chain a (<- b) reads `want` (SIZE bytes). */
static void reads_as(vdisk_io *a, vdisk_io *b, const uint8_t *want) {
        vdisk_disk *d = open_ios(a, b, VDISK_OPEN_READONLY);
        uint64_t size;
        uint8_t *got = disk_read_all(d, &size);

        ASSERT_EQ_U64(size, SIZE);
        ASSERT_MEMEQ(got, want, SIZE);
        CHECK_IMAGE_CLEAN(d, b ? 1 : 0);
        free(got);
        vdisk_disk_unref(d);
}

static void unref_ios(vdisk_io *a, vdisk_io *b, vdisk_io *c) {
        vdisk_io_unref(a);
        vdisk_io_unref(b);
        vdisk_io_unref(c);
}

static void uuid_of(vdisk_io *io, bool parent, uint8_t ret[16]) {
        vdisk_disk *d = disk_new();

        ASSERT_OK(vdisk_disk_open(d, io, "vdi", VDISK_OPEN_READONLY | VDISK_OPEN_SKIP_CHECKS));
        if (parent)
                ASSERT_OK(vdisk_image_get_parent_uuid(vdisk_disk_image(d, 0), ret));
        else
                ASSERT_OK(vdisk_image_get_uuid(vdisk_disk_image(d, 0), ret));
        vdisk_disk_unref(d);
}

static void test_safe(void) {
        vdisk_io *old, *top, *new;
        vdisk_disk *d, *nd;
        uint8_t *before, *after, u[16], want[16];
        uint64_t size;

        make_chain(SIZE, &old, &top, &new);
        d = open_ios(old, top, 0);
        before = disk_read_all(d, &size);
        nd = open_ios(new, NULL, VDISK_OPEN_READONLY);
        ASSERT_OK(vdisk_rebase(d, nd, NULL, NULL, NULL));
        vdisk_disk_unref(nd);
        /* the disk still reads what it read */
        after = disk_read_all(d, &size);
        ASSERT_MEMEQ(after, before, SIZE);
        free(after);
        vdisk_disk_unref(d);

        uuid_of(top, true, u);
        uuid_of(new, false, want);
        ASSERT_MEMEQ(u, want, 16);
        reads_as(new, top, before);

        /* then onto nothing: the top alone reads the same */
        d = open_ios(new, top, 0);
        ASSERT_OK(vdisk_rebase(d, NULL, NULL, NULL, NULL));
        vdisk_disk_unref(d);
        uuid_of(top, true, u);
        ASSERT(vdisk_uuid_is_null(u));
        reads_as(top, NULL, before);
        free(before);
        unref_ios(old, top, new);
}

static void test_unsafe(void) {
        vdisk_rebase_opts opts = { .size = sizeof(opts), .flags = VDISK_REBASE_UNSAFE };
        vdisk_io *old, *top, *new;
        vdisk_disk *d, *nd;
        uint8_t u[16], want[16], buf[4096];

        make_chain(SIZE, &old, &top, &new);
        /* the top alone, as qemu-img rebase -u opens it */
        d = open_ios(top, NULL, VDISK_OPEN_SKIP_CHECKS);
        nd = open_ios(new, NULL, VDISK_OPEN_READONLY);
        ASSERT_OK(vdisk_rebase(d, nd, &opts, NULL, NULL));
        vdisk_disk_unref(nd);
        vdisk_disk_unref(d);
        uuid_of(top, true, u);
        uuid_of(new, false, want);
        ASSERT_MEMEQ(u, want, 16);
        /* nothing was copied: the new base shows where the top has no data */
        d = open_ios(new, top, VDISK_OPEN_READONLY);
        ASSERT_OK(vdisk_disk_read(d, buf, sizeof buf, SIZE - 2 * MiB));
        ASSERT(buf[0] == 0x33 && buf[4095] == 0x33);
        ASSERT_OK(vdisk_disk_read(d, buf, sizeof buf, 5 * MiB));
        ASSERT(buf[0] == 0x55);
        vdisk_disk_unref(d);
        unref_ios(old, top, new);
}

static void test_refused(void) {
        vdisk_rebase_opts bad = { .size = sizeof(bad), .flags = 1u << 7 };
        vdisk_rebase_result res = { .size = sizeof(res) };
        vdisk_io *old, *top, *new;
        vdisk_disk *d, *nd;
        vdisk_progress *p = NULL;
        uint8_t u[16], want[16], *before, *after;
        size_t n_before, n_after;

        make_chain(SIZE, &old, &top, &new);
        uuid_of(old, false, want);
        before = mem_io_copy(top, &n_before);
        d = open_ios(old, top, 0);

        ASSERT_ERR(vdisk_rebase(d, d, NULL, NULL, NULL), -EINVAL);
        nd = open_ios(new, NULL, VDISK_OPEN_READONLY);
        ASSERT_ERR(vdisk_rebase(d, nd, &bad, NULL, NULL), -EINVAL);
        /* cancelled before it starts */
        ASSERT_OK(vdisk_progress_new(NULL, NULL, &p));
        vdisk_progress_cancel(p);
        ASSERT_ERR(vdisk_rebase(d, nd, NULL, &res, p), -ECANCELED);
        vdisk_progress_free(p);
        vdisk_disk_unref(nd);
        /* the top is an image of the new chain (its own io, or its file) */
        nd = open_ios(old, top, VDISK_OPEN_READONLY);
        ASSERT_ERR(vdisk_rebase(d, nd, NULL, &res, NULL), -ELOOP);
        ASSERT(strstr(vdisk_last_error(), "top.vdi"));
        ASSERT_EQ_U64(res.failed_step, VDISK_REBASE_STEP_NONE);
        vdisk_disk_unref(nd);
        vdisk_disk_unref(d);

        uuid_of(top, true, u);
        ASSERT_MEMEQ(u, want, 16);
        after = mem_io_copy(top, &n_after);
        ASSERT_EQ_U64(n_after, n_before);
        ASSERT_MEMEQ(after, before, n_before);
        free(before);
        free(after);
        unref_ios(old, top, new);
}

static uint64_t lookups(vdisk_disk *d) {
        vdisk_metadata_stats s = { .size = sizeof s };

        ASSERT_OK(vdisk_disk_get_metadata_stats(d, &s));
        return s.hits + s.misses;
}

static void test_cost_follows_data(void) {
        vdisk_io *old, *top, *new;
        vdisk_disk *d, *nd;
        uint8_t buf[4096];
        uint64_t la, lb;

        make_chain(HUGE, &old, &top, &new);
        d = open_ios(old, top, 0);
        nd = open_ios(new, NULL, VDISK_OPEN_READONLY);
        la = lookups(d);
        lb = lookups(nd);
        ASSERT_OK(vdisk_rebase(d, nd, NULL, NULL, NULL));
        la = lookups(d) - la;
        lb = lookups(nd) - lb;
        printf("2 TiB rebase: %" PRIu64 " + %" PRIu64 " block map look-ups\n", la, lb);
        ASSERT(la < LOOKUPS_MAX && lb < LOOKUPS_MAX);
        vdisk_disk_unref(nd);
        vdisk_disk_unref(d);
        d = open_ios(new, top, VDISK_OPEN_READONLY);
        ASSERT_OK(vdisk_disk_read(d, buf, sizeof buf, HUGE - 2 * MiB));
        ASSERT(buf[0] == 0x22 && buf[4095] == 0x22);
        ASSERT_OK(vdisk_disk_read(d, buf, sizeof buf, 3 * MiB));
        ASSERT(buf[0] == 0x44);
        vdisk_disk_unref(d);
        unref_ios(old, top, new);
}

static const char *parent_name(vdisk_io *io) {
        static char name[64];
        vdisk_disk *d = disk_new();
        const char *n = NULL;

        ASSERT_OK(vdisk_disk_open(d, io, "qcow2", VDISK_OPEN_READONLY | VDISK_OPEN_SKIP_CHECKS));
        if (vdisk_image_get_parent_name(vdisk_disk_image(d, 0), &n, NULL) < 0 || !n)
                n = "";
        snprintf(name, sizeof name, "%s", n);
        vdisk_disk_unref(d);
        return name;
}

static void test_qcow2_link_one_write(void) {
        vdisk_create_opts copts = { .size = sizeof(copts), .parent_name = "old.qcow2", .parent_format = "qcow2" };
        vdisk_rebase_opts ropts = { .size = sizeof(ropts), .flags = VDISK_REBASE_UNSAFE,
                                    .parent_name = "new.qcow2" };
        vdisk_io *old = mem_io("old.qcow2", NULL, 0), *new = mem_io("new.qcow2", NULL, 0);
        vdisk_io *top = mem_io("top.qcow2", NULL, 0);
        vdisk_disk *d = disk_new(), *nd = disk_new();
        bool done = false;

        ASSERT_OK(vdisk_disk_create_base(d, old, "qcow2", SIZE, NULL));
        ASSERT_OK(vdisk_disk_create_diff(d, top, "qcow2", &copts));
        vdisk_disk_unref(d);
        ASSERT_OK(vdisk_disk_create_base(nd, new, "qcow2", SIZE, NULL));
        ASSERT_STREQ(parent_name(top), "old.qcow2");

        /* no name for a top that names its parent: refused, nothing changed */
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, top, "qcow2", VDISK_OPEN_SKIP_CHECKS));
        ASSERT_ERR(vdisk_rebase(d, nd, &(vdisk_rebase_opts) { .size = sizeof(ropts) }, NULL, NULL), -EINVAL);
        vdisk_disk_unref(d);
        ASSERT_STREQ(parent_name(top), "old.qcow2");

        /* write N fails once (then, past the last write, flush N) */
        for (uint64_t n = 0; !done; n++) {
                vdisk_io *inner = mem_io_clone(top, "top.qcow2"), *fio = NULL;
                vdisk_fault f = { .size = sizeof(f), .kind = VDISK_FAULT_EIO, .after = n, .once = 1 };
                int r;

                ASSERT(n < 100);
                ASSERT_OK(vdisk_io_new_fault(inner, &f, &fio));
                d = disk_new();
                ASSERT_OK(vdisk_disk_open(d, fio, "qcow2", VDISK_OPEN_SKIP_CHECKS));
                r = vdisk_rebase(d, nd, &ropts, NULL, NULL);
                done = !vdisk_io_fault_fired(fio);
                vdisk_disk_unref(d);
                vdisk_io_unref(fio);
                if (done)
                        ASSERT_OK(r);
                else
                        ASSERT_ERR(r, -EIO);
                ASSERT_STREQ(parent_name(inner), r < 0 ? "old.qcow2" : "new.qcow2");
                vdisk_io_unref(inner);
        }
        for (uint64_t n = 1; n < 4; n++) {
                vdisk_io *inner = mem_io_clone(top, "top.qcow2"), *fio = NULL;
                vdisk_fault f = { .size = sizeof(f), .fail_flush_at = n };
                int r;

                ASSERT_OK(vdisk_io_new_fault(inner, &f, &fio));
                d = disk_new();
                ASSERT_OK(vdisk_disk_open(d, fio, "qcow2", VDISK_OPEN_SKIP_CHECKS));
                r = vdisk_rebase(d, nd, &ropts, NULL, NULL);
                vdisk_disk_unref(d);
                vdisk_io_unref(fio);
                ASSERT(strlen(parent_name(inner)) > 0);
                if (r >= 0)
                        ASSERT_STREQ(parent_name(inner), "new.qcow2");
                vdisk_io_unref(inner);
        }
        vdisk_disk_unref(nd);
        unref_ios(old, top, new);
}

int main(void) {
        test_safe();
        test_unsafe();
        test_refused();
        test_cost_follows_data();
        test_qcow2_link_one_write();
        printf("ok\n");
        return 0;
}
