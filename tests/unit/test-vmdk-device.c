/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * VMDK raw-device descriptors (createType fullDevice / partitionedDevice):
 * an extent naming "/dev/..." opens only through an io the caller hands in
 * for that name (here the fd of a regular temporary file as the "device",
 * through the resolver's open_companion, as vdiskd hands an fd; a loop
 * device would need root); reads and writes land at the
 * extent's offset in it; without it the open fails with a message; a
 * device named by any other createType, or a name that climbs out of /dev,
 * is refused; the path resolver (vdisk-img) never opens the device.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests.h"

#define DEV_SECTORS 2048u
#define PT_SECTORS 63u

static vdisk_io *dev_io, *pt_io;
static int dev_fd;
static unsigned dev_opens;

static int res_open_name(void *user, const char *name, const char *child_name, int writable, vdisk_io **ret) {
        return -ENOENT;
}

static int res_find_uuid(void *user, const uint8_t uuid[16], const char *format, const char *child_name,
                         int writable, vdisk_io **ret) {
        return -ENOENT;
}

static int res_companion(void *user, const char *name, const char *image_name, uint32_t flags, vdisk_io **ret) {
        int hand_device = *(int *) user;

        if (strcmp(name, "/dev/vdisk-test0") == 0 && hand_device) {
                dev_opens++;
                *ret = vdisk_io_ref(dev_io);
                return 0;
        }
        if (strcmp(name, "disk-pt.vmdk") == 0) {
                *ret = vdisk_io_ref(pt_io);
                return 0;
        }
        return -ENOENT;
}

static int open_desc(const char *text, int hand_device, int writable, vdisk_disk **ret) {
        vdisk_resolver_ops ops = {
                .size = sizeof ops, .open_name = res_open_name, .find_uuid = res_find_uuid,
                .open_companion = res_companion,
        };
        vdisk_resolver *res = NULL;
        vdisk_io *io = mem_io("raw.vmdk", text, strlen(text));
        vdisk_disk *d = disk_new();
        int r;

        ASSERT_OK(vdisk_resolver_new_ops(&ops, &hand_device, &res));
        ASSERT_OK(vdisk_disk_set_resolver(d, res));
        vdisk_resolver_unref(res);
        vdisk_clear_error();
        r = vdisk_disk_open(d, io, "vmdk", writable ? 0 : VDISK_OPEN_READONLY);
        vdisk_io_unref(io);
        if (r < 0) {
                test_check_clean_error(__FILE__, __LINE__, "open", r);
                vdisk_disk_unref(d);
                d = NULL;
        }
        *ret = d;
        return r;
}

static const char full_desc[] =
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"fullDevice\"\n\n"
        "RW 2048 FLAT \"/dev/vdisk-test0\" 0\n\nddb.adapterType = \"lsilogic\"\n";
static const char part_desc[] =
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"partitionedDevice\"\n\n"
        "RW 63 FLAT \"disk-pt.vmdk\" 0\n"
        "RW 1000 FLAT \"/dev/vdisk-test0\" 63\n"
        "RW 985 ZERO\n";

int main(void) {
        uint8_t *dev = malloc(DEV_SECTORS * 512), *pt = malloc(PT_SECTORS * 512), *buf = malloc(DEV_SECTORS * 512);
        const uint8_t *cur;
        size_t cur_len;
        vdisk_disk *d;
        rng r;

        ASSERT(dev && pt && buf);
        rng_seed(&r, 77);
        rng_fill(&r, dev, DEV_SECTORS * 512);
        rng_fill(&r, pt, PT_SECTORS * 512);
        {
                char path[] = "/tmp/vdisk-test-device.XXXXXX";
                int fd = mkstemp(path);

                ASSERT(fd >= 0);
                ASSERT(unlink(path) == 0);
                ASSERT(pwrite(fd, dev, DEV_SECTORS * 512, 0) == (ssize_t) (DEV_SECTORS * 512));
                ASSERT_OK(vdisk_io_new_fd(fd, "/dev/vdisk-test0", VDISK_IO_OWN_FD, &dev_io));
                dev_fd = fd;
        }
        pt_io = mem_io("disk-pt.vmdk", pt, PT_SECTORS * 512);

        /* fullDevice: the whole device, read and written through the handed io. */
        ASSERT_OK(open_desc(full_desc, 1, 1, &d));
        ASSERT(dev_opens == 1);
        ASSERT_EQ_U64(vdisk_disk_size(d), DEV_SECTORS * 512);
        ASSERT_OK(vdisk_disk_read(d, buf, DEV_SECTORS * 512, 0));
        ASSERT_MEMEQ(buf, dev, DEV_SECTORS * 512);
        memset(buf, 0xd7, 4096);
        ASSERT_OK(vdisk_disk_write(d, buf, 4096, 100 * 512));
        ASSERT_OK(vdisk_disk_close(d));
        cur = malloc(DEV_SECTORS * 512 + 1);
        ASSERT(cur);
        cur_len = (size_t) pread(dev_fd, (void *) cur, DEV_SECTORS * 512 + 1, 0);
        ASSERT(cur_len == DEV_SECTORS * 512);
        ASSERT_MEMEQ(cur + 100 * 512, buf, 4096);
        memcpy(dev + 100 * 512, buf, 4096);
        ASSERT_MEMEQ(cur, dev, DEV_SECTORS * 512);
        free((void *) cur);

        /* partitionedDevice: the partition table copy, then the device from
         * sector 63, then zeros. */
        ASSERT_OK(open_desc(part_desc, 1, 0, &d));
        ASSERT_EQ_U64(vdisk_disk_size(d), (uint64_t) (63 + 1000 + 985) * 512);
        ASSERT_OK(vdisk_disk_read(d, buf, (63 + 1000 + 985) * 512, 0));
        ASSERT_MEMEQ(buf, pt, 63 * 512);
        ASSERT_MEMEQ(buf + 63 * 512, dev + 63 * 512, 1000 * 512);
        ASSERT(buf_is_zero(buf + 1063 * 512, 985 * 512));
        vdisk_disk_unref(d);

        /* Without the device handed in: refused, the message names the extent. */
        ASSERT(open_desc(full_desc, 0, 0, &d) == -ENOENT);
        printf("no fd: %s\n", vdisk_last_error());

        /* A device in a descriptor of another type, or climbing out of /dev. */
        static const char *const bad[] = {
                "version=1\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"/dev/vdisk-test0\" 0\n",
                "version=1\ncreateType=\"fullDevice\"\nRW 2048 FLAT \"/dev/../etc/shadow\" 0\n",
                "version=1\ncreateType=\"fullDevice\"\nRW 2048 FLAT \"/dev//etc/shadow\" 0\n",
                "version=1\ncreateType=\"fullDevice\"\nRW 2048 FLAT \"/etc/shadow\" 0\n",
                "version=1\ncreateType=\"fullDevice\"\nRW 2048 SPARSE \"/dev/vdisk-test0\"\n",
                "version=1\ncreateType=\"fullDevice\"\nRW 2048 VMFS \"/dev/vdisk-test0\"\n",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                unsigned before = dev_opens;

                test_set_context("bad descriptor %zu", i);
                ASSERT(open_desc(bad[i], 1, 0, &d) < 0);
                ASSERT(dev_opens == before);
                printf("bad %zu: %s\n", i, vdisk_last_error());
        }

        /* The path resolver (vdisk-img) never opens it: refused by name. */
        {
                vdisk_resolver *res = NULL;
                vdisk_io *io = mem_io("raw.vmdk", full_desc, strlen(full_desc));
                vdisk_disk *pd = disk_new();
                int rr;

                ASSERT_OK(vdisk_resolver_new_path(NULL, &res));
                ASSERT_OK(vdisk_disk_set_resolver(pd, res));
                vdisk_resolver_unref(res);
                rr = vdisk_disk_open(pd, io, "vmdk", VDISK_OPEN_READONLY);
                ASSERT(rr == -EPERM);
                ASSERT(strstr(vdisk_last_error(), "raw device"));
                printf("path resolver: %s\n", vdisk_last_error());
                vdisk_disk_unref(pd);
                vdisk_io_unref(io);
        }

        vdisk_io_unref(dev_io);
        vdisk_io_unref(pt_io);
        free(dev);
        free(pt);
        free(buf);
        printf("test-vmdk-device: ok\n");
        return 0;
}
