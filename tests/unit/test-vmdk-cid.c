/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `unit`: a VMDK's content ID (CID) is renewed on the first write of
 * an open, whatever the write does, as VMware and qemu renew it, so that a
 * diff made on the old content is refused at open. Real files in a scratch
 * directory, the path resolver:
 *   - monolithicSparse: a write that overwrites an allocated grain in place
 *     (no allocation, no table change) gives a new CID in the file, and the
 *     diff made before it (parentCID = the old CID) no longer opens
 *     (-ESTALE); a discard over an allocated grain (no new grain
 *     either) does the same;
 *   - monolithicFlat and twoGbMaxExtentFlat (writes never allocate): the
 *     same;
 *   - a read-only open with reads, and a writable open that writes nothing,
 *     leave every byte of the files as they were;
 *   - one new CID per open: a second write in the same open keeps it;
 *   - a forward merge (commit) of a diff into its VMDK base that fails with
 *     ENOSPC at write N, for every N (memory ios under a fault io): the base
 *     got a new CID with the first write, and the diff must have been
 *     relinked to it, so that the chain opens again (no -ESTALE), reads as
 *     before, and the retried merge succeeds;
 *   - a VMDK diff made on a parent without a UUID (QCOW2, QED: no
 *     ddb.uuid.parent in its descriptor) that a merge relinks onto a parent
 *     with one (VDI, VHD, VMDK; backward and forward merges) records that
 *     UUID: `ddb.uuid.parent = "<uuid>"` in the descriptor bytes after close,
 *     and the chain reopened from the bytes links by it.
 */
#include <unistd.h>

#include "tests.h"

static char dir[256];

static char *path_of(const char *name) {
        return dir_path(dir, name);
}

static uint8_t *read_file(const char *name, size_t *ret_len) {
        return file_read_all(path_of(name), ret_len);
}

/* The CID the descriptor in the file records (embedded or separate). */
static uint32_t file_cid(const char *name) {
        size_t len;
        uint8_t *b = read_file(name, &len);
        const char *p = NULL;
        uint32_t cid;

        for (size_t i = 0; i + 5 <= len; i++)
                if ((i == 0 || b[i - 1] == '\n') && memcmp(b + i, "CID=", 4) == 0) {
                        p = (const char *) b + i + 4;
                        break;
                }
        if (!p)
                FAIL("%s: no CID= line", name);
        cid = (uint32_t) strtoul(p, NULL, 16);
        free(b);
        return cid;
}

static vdisk_disk *open_one(const char *name, bool writable) {
        vdisk_disk *d = NULL;

        ASSERT_OK(open_chain_path(path_of(name), "vmdk", writable ? 0 : VDISK_OPEN_READONLY, &d));
        return d;
}

static int open_chain(const char *name) {
        return open_chain_path(path_of(name), "vmdk", VDISK_OPEN_READONLY, NULL);
}

/* base (of `subformat`) with data at 0 .. 128 KiB, and diff.vmdk on it. */
static void make_pair(const char *base, const char *subformat) {
        const char *opts[] = { "subformat", subformat, NULL };
        vdisk_create_opts o = { .size = sizeof o, .options = opts };
        vdisk_resolver *res = NULL;
        vdisk_disk *d = disk_new();
        vdisk_io *bio = NULL, *dio = NULL;
        uint8_t buf[128 * 1024];

        ASSERT_OK(vdisk_resolver_new_path(NULL, &res));
        o.resolver = res;
        ASSERT_OK(vdisk_disk_set_resolver(d, res));
        ASSERT_OK(vdisk_io_open_path(path_of(base), VDISK_PATH_WRITE | VDISK_PATH_CREATE | VDISK_PATH_TRUNC,
                                     &bio));
        ASSERT_OK(vdisk_io_open_path(path_of("diff.vmdk"),
                                     VDISK_PATH_WRITE | VDISK_PATH_CREATE | VDISK_PATH_TRUNC, &dio));
        ASSERT_OK(vdisk_disk_create_base(d, bio, "vmdk", 4 * MiB, &o));
        memset(buf, 0xa5, sizeof buf);
        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 0));
        o = (vdisk_create_opts) { .size = sizeof o, .parent_name = base };
        ASSERT_OK(vdisk_disk_create_diff(d, dio, "vmdk", &o));
        ASSERT_OK(vdisk_disk_close(d));
        vdisk_io_unref(bio);
        vdisk_io_unref(dio);
        vdisk_resolver_unref(res);
        ASSERT_OK(open_chain("diff.vmdk"));
}

/* Opens base writable, runs `op` at offset 4 KiB (inside the data), closes:
 * a new CID in the file, and diff.vmdk is refused. A second write in the
 * same open keeps the CID it got. */
enum { OP_WRITE, OP_ZEROES };
static void expect_renewed(const char *base, int op, const char *what) {
        uint32_t before = file_cid(base), during;
        vdisk_disk *d = open_one(base, true);
        uint8_t buf[4096], back[4096];
        uint32_t cid;

        test_set_context("%s: %s", base, what);
        memset(buf, 0x3c, sizeof buf);
        if (op == OP_WRITE)
                ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 4096));
        else
                ASSERT_OK(vdisk_disk_discard(d, 4096, sizeof buf));
        ASSERT_OK(vdisk_image_get_content_id(vdisk_disk_image(d, 0), &during));
        ASSERT(during != before);
        ASSERT(during != VDISK_CONTENT_ID_NONE && during != 0xfffffffe);
        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 8192));
        ASSERT_OK(vdisk_image_get_content_id(vdisk_disk_image(d, 0), &cid));
        ASSERT(cid == during);
        ASSERT_OK(vdisk_disk_close(d));
        cid = file_cid(base);
        if (cid == before)
                FAIL("the CID %08x did not change", cid);
        ASSERT(cid == during);
        ASSERT_ERR(open_chain("diff.vmdk"), -ESTALE);
        /* the data went where it should */
        d = open_one(base, false);
        ASSERT_OK(vdisk_disk_read(d, back, sizeof back, 4096));
        if (op == OP_WRITE)
                ASSERT_MEMEQ(back, buf, sizeof buf);
        else
                ASSERT(buf_is_zero(back, sizeof back));
        vdisk_disk_unref(d);
        test_set_context("%s", "");
}

/* Files compared byte for byte before and after. */
static void expect_untouched(const char *const *files, bool writable) {
        uint8_t *before[4], *after;
        size_t len[4], alen;
        size_t n = 0;
        vdisk_disk *d;
        uint8_t buf[65536];

        for (; files[n]; n++)
                before[n] = read_file(files[n], &len[n]);
        d = open_one(files[0], writable);
        for (uint64_t off = 0; off < 4 * MiB; off += sizeof buf)
                ASSERT_OK(vdisk_disk_read(d, buf, sizeof buf, off));
        ASSERT_OK(vdisk_disk_flush(d));
        ASSERT_OK(vdisk_disk_close(d));
        for (size_t i = 0; i < n; i++) {
                after = read_file(files[i], &alen);
                if (alen != len[i] || memcmp(after, before[i], alen) != 0)
                        FAIL("%s changed by a %s open that wrote nothing", files[i],
                             writable ? "writable" : "read-only");
                free(after);
                free(before[i]);
        }
}

static vdisk_disk *open_mem_chain(vdisk_io *base, vdisk_io *top) {
        vdisk_disk *d = disk_new();

        ASSERT_OK(vdisk_disk_open(d, base, "vmdk", 0));
        ASSERT_OK(vdisk_disk_open(d, top, "vmdk", 0));
        return d;
}

static void failed_merge_relinks(void) {
        vdisk_create_opts o = { .size = sizeof o };
        vdisk_io *base = mem_io("m-base.vmdk", NULL, 0), *top = mem_io("m-top.vmdk", NULL, 0);
        uint8_t *want, *buf = malloc(MiB);
        uint64_t size, n_writes = 0;
        vdisk_disk *d = disk_new();

        ASSERT(buf);
        ASSERT_OK(vdisk_disk_create_base(d, base, "vmdk", 4 * MiB, &o));
        memset(buf, 0x11, MiB);
        ASSERT_OK(vdisk_disk_write(d, buf, MiB, 0));
        ASSERT_OK(vdisk_disk_create_diff(d, top, "vmdk", &o));
        memset(buf, 0x22, MiB);
        ASSERT_OK(vdisk_disk_write(d, buf, MiB, 512 * KiB));
        ASSERT_OK(vdisk_disk_write(d, buf, 64 * KiB, 3 * MiB));
        want = disk_read_all(d, &size);
        vdisk_disk_unref(d);

        for (uint64_t n = 0;; n++) {
                vdisk_io *b = mem_io_clone(base, "m-base.vmdk"), *t = mem_io_clone(top, "m-top.vmdk"), *fb;
                vdisk_fault f = { .size = sizeof f, .kind = VDISK_FAULT_ENOSPC, .after = n };
                uint8_t *got;
                uint64_t got_size;
                char **removed = NULL;
                int r;

                test_set_context("merge with ENOSPC at the base's write %" PRIu64, n);
                ASSERT_OK(vdisk_io_new_fault(b, &f, &fb));
                d = open_mem_chain(fb, t);
                r = vdisk_merge(d, 1, 0, NULL, &removed);
                vdisk_strv_free(removed);
                vdisk_disk_unref(d);
                vdisk_io_unref(fb);
                if (r >= 0) {
                        n_writes = n;
                        vdisk_io_unref(b);
                        vdisk_io_unref(t);
                        break;
                }
                ASSERT(r == -ENOSPC);
                /* the chain opens and reads as before; the retry succeeds */
                d = open_mem_chain(b, t);
                got = disk_read_all(d, &got_size);
                ASSERT_EQ_U64(got_size, size);
                ASSERT_MEMEQ(got, want, size);
                free(got);
                ASSERT_OK(vdisk_merge(d, 1, 0, NULL, &removed));
                vdisk_strv_free(removed);
                got = disk_read_all(d, &got_size);
                ASSERT_MEMEQ(got, want, size);
                free(got);
                vdisk_disk_unref(d);
                vdisk_io_unref(b);
                vdisk_io_unref(t);
        }
        test_set_context("%s", "");
        printf("failed merges: ENOSPC at each of the base's %" PRIu64 " writes, the chain opened again\n", n_writes);
        ASSERT(n_writes > 2);
        free(want);
        free(buf);
        vdisk_io_unref(base);
        vdisk_io_unref(top);
}

/* The value of `key = "..."` in the descriptor bytes `b` (NULL: none). */
static char *desc_value(const uint8_t *b, size_t len, const char *key) {
        size_t kl = strlen(key);

        for (size_t i = 0; i + kl < len; i++)
                if ((i == 0 || b[i - 1] == '\n') && memcmp(b + i, key, kl) == 0) {
                        const char *p = (const char *) b + i + kl, *e;

                        while (p < (const char *) b + len && (*p == ' ' || *p == '=' || *p == '"'))
                                p++;
                        e = memchr(p, '"', (size_t) ((const char *) b + len - p));
                        ASSERT(e);
                        return strndup(p, (size_t) (e - p));
                }
        return NULL;
}

/* base (pfmt, with a UUID) <- mid (qcow2 or qed, none) <- top.vmdk, mid
 * merged into base (1, 0) or into top (1, 2): top.vmdk ends on base and
 * records base's UUID. */
static void relink_records_uuid(const char *pfmt, const char *midfmt, unsigned from, unsigned to) {
        vdisk_create_opts o = { .size = sizeof o };
        vdisk_io *a = mem_io("u-base", NULL, 0), *b = mem_io("u-mid", NULL, 0), *c = mem_io("u-top.vmdk", NULL, 0);
        vdisk_disk *d = disk_new();
        uint8_t u[16], pu[16], *bytes;
        char want[37], **removed = NULL, *got;
        size_t len;

        test_set_context("%s <- %s <- vmdk, merge %u into %u", pfmt, midfmt, from, to);
        ASSERT_OK(vdisk_disk_create_base(d, a, pfmt, 4 * MiB, &o));
        o.parent_name = "u-base";
        ASSERT_OK(vdisk_disk_create_diff(d, b, midfmt, &o));
        o.parent_name = "u-mid";
        ASSERT_OK(vdisk_disk_create_diff(d, c, "vmdk", &o));
        /* made on a parent without a UUID: no ddb.uuid.parent */
        ASSERT(vdisk_image_get_parent_uuid(vdisk_disk_image(d, 2), pu) == -EOPNOTSUPP);
        vdisk_clear_error();
        ASSERT_OK(vdisk_merge(d, from, to, NULL, &removed));
        vdisk_strv_free(removed);
        ASSERT_OK(vdisk_image_get_uuid(vdisk_disk_image(d, 0), u));
        vdisk_uuid_format(u, want);
        vdisk_disk_unref(d);

        bytes = mem_io_copy(c, &len);
        got = desc_value(bytes, len, "ddb.uuid.parent");
        if (!got || strcmp(got, want) != 0)
                FAIL("the relinked VMDK records ddb.uuid.parent \"%s\", want \"%s\"", got ? got : "(none)", want);
        free(got);
        free(bytes);

        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, a, pfmt, 0));
        ASSERT_OK(vdisk_disk_open(d, c, "vmdk", 0));
        ASSERT_OK(vdisk_image_get_parent_uuid(vdisk_disk_image(d, 1), pu));
        ASSERT_MEMEQ(pu, u, 16);
        vdisk_disk_unref(d);
        vdisk_io_unref(a);
        vdisk_io_unref(b);
        vdisk_io_unref(c);
        test_set_context("%s", "");
}

int main(void) {
        static const char *const sparse_files[] = { "sparse.vmdk", NULL };
        static const char *const flat_files[] = { "flat.vmdk", "flat-flat.vmdk", NULL };
        static const char *const split_files[] = { "split.vmdk", "split-f001.vmdk", NULL };
        const char *tmp = getenv("TMPDIR");

        snprintf(dir, sizeof dir, "%s/vdisk-cid-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        ASSERT(mkdtemp(dir));

        failed_merge_relinks();
        /* the mid merged down (the VMDK above relinked) and up into the VMDK */
        relink_records_uuid("vdi", "qcow2", 1, 0);
        relink_records_uuid("vdi", "qcow2", 1, 2);
        relink_records_uuid("vpc", "qed", 1, 0);
        relink_records_uuid("vpc", "qed", 1, 2);
        relink_records_uuid("vmdk", "qcow2", 1, 0);
        relink_records_uuid("vmdk", "qed", 1, 2);
        printf("a VMDK diff made on a QCOW2/QED parent and relinked onto a VDI, VHD or VMDK parent records its "
               "UUID (ddb.uuid.parent)\n");

        make_pair("sparse.vmdk", "monolithicSparse");
        expect_untouched(sparse_files, false);
        expect_untouched(sparse_files, true);
        expect_renewed("sparse.vmdk", OP_WRITE, "overwrite of an allocated grain in place");
        make_pair("sparse.vmdk", "monolithicSparse");
        expect_renewed("sparse.vmdk", OP_ZEROES, "discard over an allocated grain");

        make_pair("flat.vmdk", "monolithicFlat");
        expect_untouched(flat_files, false);
        expect_untouched(flat_files, true);
        expect_renewed("flat.vmdk", OP_WRITE, "write into a flat extent");

        make_pair("split.vmdk", "twoGbMaxExtentFlat");
        expect_untouched(split_files, false);
        expect_renewed("split.vmdk", OP_WRITE, "write into a split flat extent");

        {
                static const char *const rm[] = { "sparse.vmdk", "flat.vmdk", "flat-flat.vmdk", "split.vmdk",
                                                  "split-f001.vmdk", "diff.vmdk" };

                for (size_t i = 0; i < ELEMENTSOF(rm); i++)
                        (void) unlink(path_of(rm[i]));
                ASSERT(rmdir(dir) == 0);
        }
        printf("ok\n");
        return 0;
}
