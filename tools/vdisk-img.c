/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdisk-img: the offline disk image tool of vdisk.
 *
 * The command line follows qemu-img's (info, create, convert, check, commit,
 * compare, map, resize, rebase), so scripts written for qemu-img work
 * unchanged, plus vbox-img's extras (compact, setuuid, comment, repair).
 * Everything goes through the public libvdisk API.
 *
 * The commands live in img-query.c (reading), img-create.c (creating) and
 * img-modify.c (changing), img-amend.c, img-bitmap.c and img-dd.c (amend,
 * bitmap, dd); img-opts.c --image-opts and --object; img-util.c the helpers.
 */

#include <string.h>

#include "img.h"

FrontDialect front_dialect = {
        .tool = FRONT_IMG,
        .program = PROGRAM_NAME,
        .hint = "Try '" PROGRAM_NAME " --help' for more information\n",
        .exit_usage = EXIT_ERROR,
        .drop_repeated_name = true,
};

/* The command of each verb (parsed in shared/front.c); NULL: vdiskctl's only. */
static int (*const commands[_VERB_MAX])(Request *req) = {
        [VERB_AMEND] = cmd_amend,
        [VERB_BITMAP] = cmd_bitmap,
        [VERB_CHECK] = cmd_check,
        [VERB_COMMIT] = cmd_commit,
        [VERB_COMPACT] = cmd_compact,
        [VERB_COMPARE] = cmd_compare,
        [VERB_COMMENT] = cmd_comment,
        [VERB_CONVERT] = cmd_convert,
        [VERB_CREATE] = cmd_create,
        [VERB_DD] = cmd_dd,
        [VERB_INFO] = cmd_info,
        [VERB_MAP] = cmd_map,
        [VERB_MEASURE] = cmd_measure,
        [VERB_REBASE] = cmd_rebase,
        [VERB_REPAIR] = cmd_check,
        [VERB_RESIZE] = cmd_resize,
        [VERB_SETUUID] = cmd_setuuid,
        [VERB_SNAPSHOT] = cmd_snapshot,
};

void print_help(void) {
        printf("vdisk-img version %s\n"
               "usage: " PROGRAM_NAME " [-h | -V] command [command options]\n"
               "Virtual disk image utility, command-line compatible with qemu-img\n"
               "\n"
               "    '-h', '--help'       display this help and exit\n"
               "    '-V', '--version'    output version information and exit\n"
               "\n"
               "Command syntax:\n"
               "  amend [-f fmt] [-p] [-q] -o options filename\n"
               "  bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...\n"
               "         [-b source_file [-F source_fmt]] [-g granularity] [-f fmt] filename bitmap\n"
               "  check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-U] filename\n"
               "  commit [-q] [-f fmt] [-b base] [-d] [-p] filename\n"
               "  compare [-f fmt] [-F fmt] [-p] [-q] [-s] [-U] filename1 filename2\n"
               "  convert [-U] [-p] [-q] [-n] [--target-is-zero] [-f fmt] [-O output_fmt]\n"
               "          [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] [-S sparse_size]\n"
               "          filename output_filename\n"
               "  create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]\n"
               "  dd [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output\n"
               "  info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename\n"
               "  map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename\n"
               "  measure [--output=ofmt] [-O output_fmt] [-o options]\n"
               "          [--size N | [-f fmt] [-l snapshot_param] filename]\n"
               "  rebase [-q] [-f fmt] [-p] [-u] -b backing_file [-F backing_fmt] filename\n"
               "  resize [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size\n"
               "  snapshot [-f fmt] [-q] [-U] [-l | -a snapshot | -c snapshot | -d snapshot] filename\n"
               "\n"
               "vbox-img commands:\n"
               "  compact [-f fmt] [-p] [-q] filename\n"
               "  setuuid [-f fmt] [--uuid uuid] [--parentuuid uuid | --zeroparentuuid]\n"
               "          [--modificationuuid uuid] [--parentmodificationuuid uuid] filename\n"
               "  comment [-f fmt] [--clear] filename [text]\n"
               "  repair [-f fmt] [--dry-run] filename\n"
               "\n"
               "Every command that opens images also takes '--parent-dir DIR' (repeatable): a directory\n"
               "searched for parents that an image names by UUID only (VDI differencing images),\n"
               "'--image-opts' (image names are option lists: driver=FMT,file.filename=FILE) and\n"
               "'--object TYPE,id=ID,...' (secrets are checked and kept; encrypted images are not supported).\n"
               "\n"
               "Command parameters:\n"
               "  'filename' is a disk image filename\n"
               "  'fmt' is the disk image format (qemu's or VirtualBox's name); probed when not given\n"
               "  'size' is the disk image size in bytes. Optional suffixes 'k' or 'K' (1024),\n"
               "    'M' (1024k), 'G' (1024M), 'T' (1024G), 'P' (1024T) and 'E' (1024P); 'b' is ignored.\n"
               "  'options' is a comma separated list of format specific options in a name=value\n"
               "    format. Use -o help for an overview of the options of a format\n"
               "  '-p' show progress of the command\n"
               "  '-q' quiet mode: print nothing but errors\n"
               "  '-S' the number of consecutive zero bytes (default 4k) that convert leaves unwritten\n"
               "  '--output' takes the format of the output: human or json\n"
               "  'bs', 'count', 'skip', 'if', 'of' (dd): block size (default 512), blocks to copy from the\n"
               "    start of the input, blocks to skip, input and output file\n"
               "\n"
               "See vdisk-img(1) for every option and the exit codes.\n"
               "\n"
               "Supported formats:",
               vdisk_version());
        for (size_t i = 0; i < vdisk_backend_count(); i++) {
                const vdisk_backend_info *info = vdisk_backend_get(i);
                if (info)
                        printf(" %s", info->qemu_name);
        }
        printf("\n");
}

/* The qemu-img release whose command line vdisk-img follows: what it says
 * it is when installed as qemu-img (see -Dqemu_img_name). */
#define QEMU_IMG_COMPAT_VERSION "7.2.0"

/* Invoked as "qemu-img" (a symlink or an alternative of that name)? */
static bool invoked_as_qemu_img(const char *argv0) {
        const char *base;

        if (!argv0)
                return false;
        base = strrchr(argv0, '/');
        return streq(base ? base + 1 : argv0, "qemu-img");
}

/* vdisk-img is built with libvdisk and versioned with it. Under the name
 * qemu-img, the first line is qemu-img's, which scripts parse for the
 * version ("qemu-img version N.N.N"), and vdisk's own follows. */
static void print_version(bool as_qemu_img) {
        if (as_qemu_img)
                printf("qemu-img version " QEMU_IMG_COMPAT_VERSION "\n");
        printf("vdisk-img version %s\n", vdisk_version());
}

int main(int argc, char **argv) {
        const char *cmd;
        bool as_qemu_img = invoked_as_qemu_img(argv[0]);
        FrontVerbId verb;
        Request req = {};
        int ex;

        if (as_qemu_img)
                front_dialect.program = "qemu-img";
        if (argc < 2)
                return usage_error("Not enough arguments");

        cmd = argv[1];
        if (streq(cmd, "-h") || streq(cmd, "--help")) {
                print_help();
                return EXIT_OK;
        }
        if (streq(cmd, "-V") || streq(cmd, "--version")) {
                print_version(as_qemu_img);
                return EXIT_OK;
        }
        if (cmd[0] == '-')
                return usage_error("Unknown option '%s'", cmd);
        if (front_verb_find(cmd, &verb) < 0 || !commands[verb])
                return usage_error("Command not found: %s", cmd);

        /* getopt names the program after argv[0] in its messages. */
        argv[1] = (char *) front_dialect.program;
        ex = front_parse(verb, argc - 1, argv + 1, &req);
        if (ex < 0)
                ex = commands[verb](&req);
        request_done(&req);
        return flush_output(ex);
}
