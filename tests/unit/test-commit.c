/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdisk_commit (qemu-img commit; vdisk-img commit and vdiskd's Merge of the
 * top): the data goes into the image below, then the top is emptied (a new
 * file, which vdisk-img renames over it) or kept and relinked. A transient
 * EIO at each write of that step leaves every file valid:
 *
 * - emptied VMDK top: the base reads the committed data; the new top reads
 *   the same over it, or (the fault) the old top does, relinked onto the
 *   base's new CID (it recorded the old one: no tool opened it on the merged
 *   base, the fault vdiskctl commit used to leave);
 * - kept top (qcow2, VMDK): what the commit reports is what the top's file
 *   holds, right after the call and after the close. A write or flush that
 *   fails once is tried again: the commit succeeds with the new link (a
 *   VMDK's parentCID the base's new CID). Writes that keep failing: the
 *   commit fails and the top keeps its old link (the close does not write
 *   the new one later): a qcow2 top still reads through mid, a VMDK top
 *   needs rebase -u; either way a retried commit then succeeds;
 * - refusals: a top without a parent, `to` not below the top, an emptied top
 *   without its file, KEEP_TOP with one.
 */
#include "tests.h"

#define SIZE (4 * MiB)

static void unref_ios(vdisk_io *a, vdisk_io *b, vdisk_io *c) {
        vdisk_io_unref(a);
        vdisk_io_unref(b);
        vdisk_io_unref(c);
}

/* base <- top, or base <- mid <- top (ret_mid), each naming its parent,
 * with data in each; *ret_ref gets what the top reads. */
static void make_chain(const char *format, vdisk_io **ret_base, vdisk_io **ret_mid, vdisk_io **ret_top,
                       uint8_t **ret_ref) {
        char bname[32], mname[32], tname[32];
        vdisk_disk *d = disk_new();
        uint64_t size;

        snprintf(bname, sizeof bname, "base.%s", format);
        snprintf(mname, sizeof mname, "mid.%s", format);
        snprintf(tname, sizeof tname, "top.%s", format);
        *ret_base = mem_io(bname, NULL, 0);
        *ret_top = mem_io(tname, NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(d, *ret_base, format, SIZE, NULL));
        disk_fill(d, 0, MiB, 0x11);
        disk_fill(d, 3 * MiB, 4096, 0x12);
        if (ret_mid) {
                *ret_mid = mem_io(mname, NULL, 0);
                ASSERT_OK(vdisk_disk_create_diff(d, *ret_mid, format, &(vdisk_create_opts) {
                        .size = sizeof(vdisk_create_opts), .parent_name = bname, .parent_format = format }));
                disk_fill(d, MiB, 65536, 0x21);
        }
        ASSERT_OK(vdisk_disk_create_diff(d, *ret_top, format, &(vdisk_create_opts) {
                .size = sizeof(vdisk_create_opts), .parent_name = ret_mid ? mname : bname, .parent_format = format }));
        disk_fill(d, 65536, 4096, 0x31);
        disk_fill(d, 2 * MiB, 65536, 0x32);
        *ret_ref = disk_read_all(d, &size);
        ASSERT_OK(vdisk_disk_close(d));
}

/* The chain of `ios` (base first, n of them) opens with every check and
 * reads `ref`. */
static void reads_as(const char *format, vdisk_io *const *ios, unsigned n, const uint8_t *ref) {
        vdisk_disk *d = disk_new();
        uint8_t *buf;
        uint64_t size;

        for (unsigned i = 0; i < n; i++)
                ASSERT_OK(vdisk_disk_open(d, ios[i], format, VDISK_OPEN_READONLY));
        buf = disk_read_all(d, &size);
        ASSERT_EQ_U64(size, SIZE);
        ASSERT_MEMEQ(buf, ref, SIZE);
        free(buf);
        vdisk_disk_unref(d);
}

/* What the image on `io` alone records: its parent's name, its parent's
 * content ID (0 when none); the descriptor must parse. */
static void links_of(const char *format, vdisk_io *io, char *name, size_t len, uint32_t *ret_pcid) {
        vdisk_disk *d = disk_new();
        const char *n = NULL;

        ASSERT_OK(vdisk_disk_open(d, io, format, VDISK_OPEN_READONLY | VDISK_OPEN_SKIP_CHECKS));
        if (vdisk_image_get_parent_name(vdisk_disk_image(d, 0), &n, NULL) < 0 || !n)
                n = "";
        snprintf(name, len, "%s", n);
        *ret_pcid = 0;
        (void) vdisk_image_get_parent_content_id(vdisk_disk_image(d, 0), ret_pcid);
        vdisk_disk_unref(d);
}

static uint32_t cid_of(vdisk_io *io) {
        vdisk_disk *d = disk_new();
        uint32_t cid = 0;

        ASSERT_OK(vdisk_disk_open(d, io, "vmdk", VDISK_OPEN_READONLY | VDISK_OPEN_SKIP_CHECKS));
        ASSERT_OK(vdisk_image_get_content_id(vdisk_disk_image(d, 0), &cid));
        vdisk_disk_unref(d);
        return cid;
}

static vdisk_disk *open_ios(const char *format, vdisk_io *const *ios, unsigned n) {
        vdisk_disk *d = disk_new();

        for (unsigned i = 0; i < n; i++)
                ASSERT_OK(vdisk_disk_open(d, ios[i], format, 0));
        return d;
}

static void test_empty_vmdk_faults(void) {
        vdisk_io *base, *top;
        uint8_t *ref;
        bool done = false;
        uint64_t n;

        make_chain("vmdk", &base, NULL, &top, &ref);
        for (n = 0; !done; n++) {
                vdisk_io *b = mem_io_clone(base, "base.vmdk"), *t = mem_io_clone(top, "top.vmdk");
                vdisk_io *fresh = mem_io("top.vmdk", NULL, 0), *fio = NULL;
                vdisk_fault f = { .size = sizeof(f), .kind = VDISK_FAULT_EIO, .after = n, .once = 1 };
                vdisk_commit_result res = { .size = sizeof(res) };
                vdisk_disk *d;
                int r;

                ASSERT(n < 200);
                test_set_context("empty, write %" PRIu64 " fails", n);
                ASSERT_OK(vdisk_io_new_fault(fresh, &f, &fio));
                d = open_ios("vmdk", (vdisk_io *[]) { b, t }, 2);
                r = vdisk_commit(d, 0, &(vdisk_commit_opts) { .size = sizeof(vdisk_commit_opts), .new_top = fio },
                                 NULL, &res);
                done = !vdisk_io_fault_fired(fio);
                ASSERT_OK(vdisk_disk_close(d));
                vdisk_io_unref(fio);
                reads_as("vmdk", (vdisk_io *[]) { b }, 1, ref);
                if (done) {
                        ASSERT_OK(r);
                        ASSERT(res.failed_step == VDISK_COMMIT_STEP_NONE);
                        reads_as("vmdk", (vdisk_io *[]) { b, fresh }, 2, ref);
                } else {
                        ASSERT_ERR(r, -EIO);
                        ASSERT(res.failed_step == VDISK_COMMIT_STEP_TOP);
                        /* the old top, relinked: opens on the base and reads the same */
                        reads_as("vmdk", (vdisk_io *[]) { b, t }, 2, ref);
                }
                unref_ios(b, t, fresh);
        }
        test_set_context("%s", "");
        printf("%s: a fault at each of %" PRIu64 " writes\n", __func__, n - 1);
        ASSERT(n >= 2);   /* at least one write faulted */
        free(ref);
        unref_ios(base, top, NULL);
}

/* What the top on `io` alone links to, as its file holds it: its parent's
 * name, and for a VMDK the parent CID it records. */
static void link_of(const char *format, vdisk_io *io, char *buf, size_t len) {
        char name[64];
        uint32_t pcid;

        links_of(format, io, name, sizeof name, &pcid);
        snprintf(buf, len, "%s %08" PRIx32, name, pcid);
}

typedef enum { FAULT_ONCE, FAULT_PERSISTENT, FAULT_FLUSH, FAULT_WRITE0_AND_FLUSH } fault_mode;

/* Commits the chain `below` (base first) + `t` into the base, keeping the
 * top, with write `n` of the top failing once (FAULT_ONCE), every write from
 * the nth on (FAULT_PERSISTENT), flush n once (FAULT_FLUSH), or the first
 * write and flush n (FAULT_WRITE0_AND_FLUSH: the relink's retry written but
 * not flushed). What the call
 * reports is what the top's file holds, right after it and after the close:
 * success with a new link, or -EIO in the relink step with the old link
 * `old` (never the new link written later by the close). Returns whether the
 * fault fired; *ret_ok whether the commit succeeded. */
static bool keep_commit_faulted(const char *format, vdisk_io *const *below, unsigned n_below, vdisk_io *t,
                                uint64_t n, fault_mode mode, const char *old, bool *ret_ok) {
        vdisk_fault f = { .size = sizeof(f), .kind = mode == FAULT_FLUSH ? VDISK_FAULT_NONE : VDISK_FAULT_EIO,
                          .after = mode == FAULT_WRITE0_AND_FLUSH ? 0 : n, .once = mode != FAULT_PERSISTENT,
                          .fail_flush_at = mode == FAULT_FLUSH || mode == FAULT_WRITE0_AND_FLUSH ? n : 0 };
        vdisk_commit_opts opts = { .size = sizeof(opts), .flags = VDISK_COMMIT_KEEP_TOP };
        vdisk_commit_result res = { .size = sizeof(res) };
        vdisk_io *fio = NULL, *ios[4];
        char now[96], closed[96];
        vdisk_disk *d;
        bool fired;
        int r;

        ASSERT(n < 100 && n_below < 4);
        test_set_context("keep %s, %s %" PRIu64 " fails%s", format, mode >= FAULT_FLUSH ? "flush" : "write", n,
                         mode == FAULT_PERSISTENT ? " and every one after" :
                         mode == FAULT_WRITE0_AND_FLUSH ? ", write 0 too" : "");
        ASSERT_OK(vdisk_io_new_fault(t, &f, &fio));
        memcpy(ios, below, n_below * sizeof(ios[0]));
        ios[n_below] = fio;
        d = open_ios(format, ios, n_below + 1);
        r = vdisk_commit(d, 0, &opts, NULL, &res);
        fired = vdisk_io_fault_fired(fio);
        link_of(format, t, now, sizeof now);
        if (r >= 0) {
                ASSERT_EQ_U64(vdisk_disk_count(d), 2);
                if (streq(now, old))
                        FAIL("the commit succeeded, but the top's file still links to '%s'", old);
        } else {
                ASSERT(fired);
                ASSERT_ERR(r, -EIO);
                ASSERT(res.failed_step == VDISK_COMMIT_STEP_TOP);
                ASSERT_STREQ(now, old);
        }
        r = vdisk_disk_close(d);
        if (mode == FAULT_ONCE)
                ASSERT_OK(r);
        link_of(format, t, closed, sizeof closed);
        ASSERT_STREQ(closed, now);
        vdisk_io_unref(fio);
        *ret_ok = streq(now, old) == 0;
        return fired;
}

static void test_keep_qcow2_faults(void) {
        vdisk_io *base, *mid, *top;
        char old[96];
        uint8_t *ref;
        bool fired = true, ok;
        uint64_t n;

        make_chain("qcow2", &base, &mid, &top, &ref);
        link_of("qcow2", top, old, sizeof old);
        /* A write failing once is tried again: the commit succeeds. */
        for (n = 0; fired; n++) {
                vdisk_io *b = mem_io_clone(base, "base.qcow2"), *t = mem_io_clone(top, "top.qcow2");

                fired = keep_commit_faulted("qcow2", (vdisk_io *[]) { b, mid }, 2, t, n, FAULT_ONCE, old, &ok);
                ASSERT(ok);
                reads_as("qcow2", (vdisk_io *[]) { b, t }, 2, ref);
                unref_ios(b, t, NULL);
        }
        test_set_context("%s", "");
        printf("%s: a transient fault at each of %" PRIu64 " writes\n", __func__, n - 1);
        ASSERT(n >= 2);   /* at least one write faulted */
        /* Writes that keep failing: the top names mid, and the chain through
         * it reads the same; a retry of the whole commit then succeeds. */
        fired = true;
        for (n = 0; fired; n++) {
                vdisk_io *b = mem_io_clone(base, "base.qcow2"), *t = mem_io_clone(top, "top.qcow2");
                vdisk_commit_opts opts = { .size = sizeof(opts), .flags = VDISK_COMMIT_KEEP_TOP };
                vdisk_disk *d;

                fired = keep_commit_faulted("qcow2", (vdisk_io *[]) { b, mid }, 2, t, n, FAULT_PERSISTENT, old,
                                            &ok);
                ASSERT(ok != fired);
                if (ok) {
                        reads_as("qcow2", (vdisk_io *[]) { b, t }, 2, ref);
                } else {
                        reads_as("qcow2", (vdisk_io *[]) { b, mid, t }, 3, ref);
                        d = open_ios("qcow2", (vdisk_io *[]) { b, mid, t }, 3);
                        ASSERT_OK(vdisk_commit(d, 0, &opts, NULL, NULL));
                        ASSERT_OK(vdisk_disk_close(d));
                        reads_as("qcow2", (vdisk_io *[]) { b, t }, 2, ref);
                }
                unref_ios(b, t, NULL);
        }
        test_set_context("%s", "");
        printf("%s: a persistent fault from each of %" PRIu64 " writes\n", __func__, n - 1);
        /* A failing flush: tried again as well. */
        fired = true;
        for (n = 1; fired; n++) {
                vdisk_io *b = mem_io_clone(base, "base.qcow2"), *t = mem_io_clone(top, "top.qcow2");

                fired = keep_commit_faulted("qcow2", (vdisk_io *[]) { b, mid }, 2, t, n, FAULT_FLUSH, old, &ok);
                if (ok)
                        reads_as("qcow2", (vdisk_io *[]) { b, t }, 2, ref);
                else
                        reads_as("qcow2", (vdisk_io *[]) { b, mid, t }, 3, ref);
                unref_ios(b, t, NULL);
        }
        test_set_context("%s", "");
        printf("%s: a fault at each of %" PRIu64 " flushes\n", __func__, n - 2);
        ASSERT(n >= 3);   /* at least one flush failed */
        free(ref);
        unref_ios(base, mid, top);
}

static void test_keep_vmdk_faults(void) {
        vdisk_io *base, *top;
        char old[96];
        uint32_t old_cid;
        uint8_t *ref;
        bool fired = true, ok;
        uint64_t n;

        make_chain("vmdk", &base, NULL, &top, &ref);
        old_cid = cid_of(base);
        link_of("vmdk", top, old, sizeof old);
        /* A write failing once is tried again: the commit succeeds, and the
         * top records the base's new CID. */
        for (n = 0; fired; n++) {
                vdisk_io *b = mem_io_clone(base, "base.vmdk"), *t = mem_io_clone(top, "top.vmdk");
                char name[64];
                uint32_t pcid;

                fired = keep_commit_faulted("vmdk", (vdisk_io *[]) { b }, 1, t, n, FAULT_ONCE, old, &ok);
                ASSERT(ok);
                ASSERT(cid_of(b) != old_cid);
                links_of("vmdk", t, name, sizeof name, &pcid);
                ASSERT_STREQ(name, "base.vmdk");
                ASSERT_EQ_U64(pcid, cid_of(b));
                reads_as("vmdk", (vdisk_io *[]) { b, t }, 2, ref);
                unref_ios(b, t, NULL);
        }
        test_set_context("%s", "");
        printf("%s: a transient fault at each of %" PRIu64 " writes\n", __func__, n - 1);
        ASSERT(n >= 2);   /* at least one write faulted */
        /* Writes that keep failing: the top keeps the base's old CID (whole
         * descriptor: it opens alone); relinked by hand (rebase -u), the
         * retried commit succeeds and the chain reads the same. */
        fired = true;
        for (n = 0; fired; n++) {
                vdisk_io *b = mem_io_clone(base, "base.vmdk"), *t = mem_io_clone(top, "top.vmdk");
                vdisk_commit_opts opts = { .size = sizeof(opts), .flags = VDISK_COMMIT_KEEP_TOP };
                vdisk_disk *d;

                fired = keep_commit_faulted("vmdk", (vdisk_io *[]) { b }, 1, t, n, FAULT_PERSISTENT, old, &ok);
                ASSERT(ok != fired);
                if (!ok) {
                        d = disk_new();
                        ASSERT_OK(vdisk_disk_open(d, b, "vmdk", 0));
                        ASSERT_ERR(vdisk_disk_open(d, t, "vmdk", 0), -ESTALE);
                        ASSERT_OK(vdisk_disk_open(d, t, "vmdk", VDISK_OPEN_SKIP_CHECKS));
                        ASSERT_OK(vdisk_commit(d, 0, &opts, NULL, NULL));
                        ASSERT_OK(vdisk_disk_close(d));
                }
                reads_as("vmdk", (vdisk_io *[]) { b, t }, 2, ref);
                unref_ios(b, t, NULL);
        }
        test_set_context("%s", "");
        printf("%s: a persistent fault from each of %" PRIu64 " writes\n", __func__, n - 1);
        /* The first write fails and then a flush (the retry's, for one n):
         * the old link is written back, and the close keeps it. */
        {
                unsigned failed = 0;

                for (n = 1; n <= 6; n++) {
                        vdisk_io *b = mem_io_clone(base, "base.vmdk"), *t = mem_io_clone(top, "top.vmdk");

                        (void) keep_commit_faulted("vmdk", (vdisk_io *[]) { b }, 1, t, n, FAULT_WRITE0_AND_FLUSH,
                                                   old, &ok);
                        failed += !ok;
                        if (ok)
                                reads_as("vmdk", (vdisk_io *[]) { b, t }, 2, ref);
                        unref_ios(b, t, NULL);
                }
                test_set_context("%s", "");
                printf("%s: %u of 6 flushes failing after a failed write failed the commit\n", __func__, failed);
                ASSERT(failed >= 1);
        }
        free(ref);
        unref_ios(base, top, NULL);
}

static void test_refused(void) {
        vdisk_io *base, *top, *fresh = mem_io("new.vdi", NULL, 0);
        vdisk_commit_result res = { .size = sizeof(res) };
        vdisk_commit_opts keep = { .size = sizeof(keep), .flags = VDISK_COMMIT_KEEP_TOP };
        uint8_t *ref;
        vdisk_disk *d;

        make_chain("vdi", &base, NULL, &top, &ref);
        d = open_ios("vdi", (vdisk_io *[]) { base }, 1);
        ASSERT_ERR(vdisk_commit(d, 0, &keep, NULL, &res), -EINVAL);
        vdisk_disk_unref(d);
        d = open_ios("vdi", (vdisk_io *[]) { base, top }, 2);
        ASSERT_ERR(vdisk_commit(d, 1, &keep, NULL, &res), -EINVAL);
        ASSERT_ERR(vdisk_commit(d, 0, NULL, NULL, &res), -EINVAL);
        ASSERT_ERR(vdisk_commit(d, 0, &(vdisk_commit_opts) { .size = sizeof(keep), .flags = VDISK_COMMIT_KEEP_TOP,
                                                             .new_top = fresh }, NULL, &res), -EINVAL);
        ASSERT_ERR(vdisk_commit(d, 0, &(vdisk_commit_opts) { .size = sizeof(keep), .flags = 1u << 7 }, NULL, &res),
                   -EINVAL);
        ASSERT(res.failed_step == VDISK_COMMIT_STEP_NONE);
        ASSERT_EQ_U64(vdisk_disk_count(d), 2);
        vdisk_disk_unref(d);
        reads_as("vdi", (vdisk_io *[]) { base, top }, 2, ref);
        free(ref);
        unref_ios(base, top, fresh);
}

int main(void) {
        test_refused();
        test_empty_vmdk_faults();
        test_keep_qcow2_faults();
        test_keep_vmdk_faults();
        printf("ok\n");
        return 0;
}
