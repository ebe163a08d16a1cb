/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests of lib/fmt/vmdk-desc: the VMDK text descriptor parser and
 * writer: CRLF, quotes, unknown keys, every extent kind, bounds, names. */
#include <string.h>

#include "fmt/vmdk-desc.h"
#include "tests.h"
#include "util/util.h"

static const char sample[] =
        "# Disk DescriptorFile\r\n"
        "version=1\r\n"
        "encoding=\"UTF-8\"\r\n"
        "CID=7e5c1a2b\r\n"
        "parentCID=ffffffff\r\n"
        "isNativeSnapshot = \"no\"\r\n"
        "createType=\"twoGbMaxExtentSparse\"\r\n"
        "parentFileNameHint=\"base dir/parent.vmdk\"\r\n"
        "\r\n"
        "# Extent description\r\n"
        "RW 4192256 SPARSE \"disk-s001.vmdk\"\r\n"
        "RDONLY 2048 FLAT \"disk-f001.vmdk\" 128\r\n"
        "NOACCESS 100 ZERO\r\n"
        "RW 8 VMFS \"disk-flat.vmdk\"\r\n"
        "RW 8 VMFSSPARSE \"disk-delta.vmdk\"\r\n"
        "RW 8 SESPARSE \"disk-sesparse.vmdk\"\r\n"
        "\r\n"
        "# The Disk Data Base\r\n"
        "#DDB\r\n"
        "\r\n"
        "ddb.adapterType = \"lsilogic\"\r\n"
        "ddb.geometry.cylinders = \"16383\"\r\n"
        "ddb.geometry.heads = \"16\"\r\n"
        "ddb.geometry.sectors = \"63\"\r\n"
        "ddb.uuid.image=\"0e2f8a0c-1b51-4d2c-9c0e-3f1e2d4c5b6a\"\r\n"
        "ddb.uuid.parent=\"00000000-0000-0000-0000-000000000000\"\r\n"
        "ddb.virtualHWVersion = \"4\"\r\n"
        "ddb.someFutureKey = \"kept\"\r\n";

static void test_parse(void) {
        vmdk_desc d = {};
        uint32_t cid;
        uint64_t v;

        ASSERT_OK(vmdk_desc_parse(sample, sizeof sample - 1, &d));
        ASSERT_STREQ(vmdk_desc_get(&d, "createType"), "twoGbMaxExtentSparse");
        ASSERT_STREQ(vmdk_desc_get(&d, "createtype"), "twoGbMaxExtentSparse");
        ASSERT_STREQ(vmdk_desc_get(&d, "parentFileNameHint"), "base dir/parent.vmdk");
        ASSERT_STREQ(vmdk_desc_get(&d, "isNativeSnapshot"), "no");
        ASSERT_STREQ(vmdk_desc_get(&d, "ddb.adapterType"), "lsilogic");
        ASSERT_STREQ(vmdk_desc_get(&d, "ddb.uuid.image"), "0e2f8a0c-1b51-4d2c-9c0e-3f1e2d4c5b6a");
        ASSERT_STREQ(vmdk_desc_get(&d, "ddb.someFutureKey"), "kept");
        ASSERT(vmdk_desc_get(&d, "nothere") == NULL);
        ASSERT_OK(vmdk_desc_get_cid(&d, "CID", &cid));
        ASSERT(cid == 0x7e5c1a2b);
        ASSERT_OK(vmdk_desc_get_cid(&d, "parentCID", &cid));
        ASSERT(cid == 0xffffffff);
        ASSERT_OK(vmdk_desc_get_u64(&d, "ddb.virtualHWVersion", &v));
        ASSERT(v == 4);
        ASSERT_OK(vmdk_desc_get_u64(&d, "ddb.geometry.cylinders", &v));
        ASSERT(v == 16383);

        ASSERT(d.n_extents == 6);
        ASSERT(d.extents[0].access == VMDK_ACCESS_RW && d.extents[0].type == VMDK_EXTENT_SPARSE);
        ASSERT(d.extents[0].sectors == 4192256 && d.extents[0].offset == 0);
        ASSERT_STREQ(d.extents[0].file, "disk-s001.vmdk");
        ASSERT(d.extents[1].access == VMDK_ACCESS_RDONLY && d.extents[1].type == VMDK_EXTENT_FLAT);
        ASSERT(d.extents[1].offset == 128);
        ASSERT(d.extents[2].access == VMDK_ACCESS_NOACCESS && d.extents[2].type == VMDK_EXTENT_ZERO);
        ASSERT(d.extents[2].file == NULL && d.extents[2].sectors == 100);
        ASSERT(d.extents[3].type == VMDK_EXTENT_VMFS);
        ASSERT(d.extents[4].type == VMDK_EXTENT_VMFSSPARSE);
        ASSERT(d.extents[5].type == VMDK_EXTENT_SESPARSE);

        /* Written back and parsed again: the same keys and extents. */
        char *text;
        size_t len;
        vmdk_desc d2 = {};
        ASSERT_OK(vmdk_desc_format(&d, &text, &len));
        ASSERT(strlen(text) == len);
        ASSERT(strstr(text, "createType=\"twoGbMaxExtentSparse\"\n"));
        ASSERT(strstr(text, "CID=7e5c1a2b\n"));
        ASSERT(strstr(text, "RDONLY 2048 FLAT \"disk-f001.vmdk\" 128\n"));
        ASSERT(strstr(text, "NOACCESS 100 ZERO\n"));
        ASSERT(strstr(text, "ddb.someFutureKey = \"kept\"\n"));
        ASSERT_OK(vmdk_desc_parse(text, len, &d2));
        ASSERT(d2.n_kv == d.n_kv && d2.n_extents == d.n_extents);
        for (size_t i = 0; i < d.n_kv; i++) {
                ASSERT_STREQ(d2.kv[i].key, d.kv[i].key);
                ASSERT_STREQ(d2.kv[i].value, d.kv[i].value);
        }
        free(text);
        vmdk_desc_done(&d2);

        /* set replaces in place, then appends. */
        ASSERT_OK(vmdk_desc_set(&d, "cid", "00000001", false));
        ASSERT_OK(vmdk_desc_get_cid(&d, "CID", &cid));
        ASSERT(cid == 1);
        vmdk_desc_done(&d);

        /* An embedded descriptor padded with NULs ends at the first NUL. */
        char padded[512] = "version=1\nRW 1 ZERO\n";
        ASSERT_OK(vmdk_desc_parse(padded, sizeof padded, &d));
        ASSERT(d.n_extents == 1);
        vmdk_desc_done(&d);
}

static void refused(const char *text, int code) {
        vmdk_desc d = {};

        test_set_context("descriptor: %s", text);
        ASSERT_ERR(vmdk_desc_parse(text, strlen(text), &d), code);
        ASSERT(d.n_kv == 0 && d.n_extents == 0);
}

static void test_refused(void) {
        refused("", -EMEDIUMTYPE);
        refused("# only a comment\n", -EMEDIUMTYPE);
        refused("hello world\n", -EUCLEAN);
        refused("version=1\nRW 10 SPARSE \"../escape.vmdk\"\n", -EUCLEAN);
        refused("version=1\nRW 10 SPARSE \"a/../../x.vmdk\"\n", -EUCLEAN);
        refused("version=1\nRW 10 FLAT \"/etc/passwd\"\n", -EUCLEAN);
        refused("version=1\nRW 10 FLAT \"\"\n", -EUCLEAN);
        refused("version=1\nRW 10 FLAT \"a\x01b\"\n", -EUCLEAN);
        refused("version=1\nRW 10 FLAT noquote.vmdk\n", -EUCLEAN);
        refused("version=1\nRW 10 FLAT \"unterminated\n", -EUCLEAN);
        refused("version=1\nRW 10 BOGUS \"x\"\n", -EUCLEAN);
        refused("version=1\nRW -1 FLAT \"x\"\n", -EUCLEAN);
        refused("version=1\nRW 0 FLAT \"x\"\n", -EUCLEAN);
        refused("version=1\nRW 99999999999999999999999 FLAT \"x\"\n", -EUCLEAN);
        refused("version=1\nRW 10 SPARSE \"x\" 5\n", -EUCLEAN);
        refused("version=1\nRW 10 ZERO \"x\"\n", -EUCLEAN);
        refused("version=1\nRW 10 FLAT \"x\" 12abc\n", -EUCLEAN);
        refused("version=1\ncreateType=\"unterminated\n", -EUCLEAN);
        refused("ver sion=1\n", -EUCLEAN);
        refused("=1\n", -EUCLEAN);

        vmdk_desc d = {};
        ASSERT_OK(vmdk_desc_parse("version=1\nCID=xyz\n", 18, &d));
        uint32_t cid;
        ASSERT_ERR(vmdk_desc_get_cid(&d, "CID", &cid), -EUCLEAN);
        ASSERT_ERR(vmdk_desc_get_cid(&d, "parentCID", &cid), -ENOENT);
        vmdk_desc_done(&d);

        /* Bounds: line length, extent count, total size. */
        size_t n = VMDK_DESC_LINE_MAX + 100;
        char *big = malloc(n + 20);
        ASSERT(big);
        strcpy(big, "version=1\ncomment=");
        memset(big + strlen(big), 'a', n);
        big[n + 18] = 0;
        refused(big, -EUCLEAN);
        free(big);

        size_t cap = (VMDK_DESC_EXTENTS_MAX + 1) * 16 + 16, len = 0;
        char *many = malloc(cap);
        ASSERT(many);
        len += (size_t) sprintf(many, "version=1\n");
        for (unsigned i = 0; i <= VMDK_DESC_EXTENTS_MAX; i++)
                len += (size_t) sprintf(many + len, "RW 1 ZERO\n");
        refused(many, -EUCLEAN);
        free(many);

        char *huge = malloc(VMDK_DESC_MAX + 2);
        ASSERT(huge);
        memset(huge, '\n', VMDK_DESC_MAX + 1);
        memcpy(huge, "version=1", 9);
        huge[VMDK_DESC_MAX + 1] = 0;
        refused(huge, -EUCLEAN);
        free(huge);
}

static void test_names(void) {
        ASSERT(vmdk_desc_name_valid("disk-s001.vmdk"));
        ASSERT(vmdk_desc_name_valid("sub/disk.vmdk"));
        ASSERT(vmdk_desc_name_valid("a..b.vmdk"));
        ASSERT(vmdk_desc_name_valid("with space.vmdk"));
        ASSERT(!vmdk_desc_name_valid(""));
        ASSERT(!vmdk_desc_name_valid(".."));
        ASSERT(!vmdk_desc_name_valid("../x"));
        ASSERT(!vmdk_desc_name_valid("x/.."));
        ASSERT(!vmdk_desc_name_valid("x\\..\\y"));
        ASSERT(!vmdk_desc_name_valid("/abs"));
        ASSERT(!vmdk_desc_name_valid("\\abs"));
        ASSERT(!vmdk_desc_name_valid(NULL));
}

int main(void) {
        test_parse();
        test_refused();
        test_names();
        printf("ok\n");
        return 0;
}
