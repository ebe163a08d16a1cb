/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdiskctl: control vdiskd, the virtual disk image service, over D-Bus.
 *
 * The image commands take vdisk-img's arguments (info, create, convert,
 * compare, check, commit, compact, resize, repair, snapshot) but run in
 * vdiskd: vdiskctl opens the files with the caller's rights, resolves the
 * chain of parents, passes the fds, and follows the Operation the daemon
 * starts, with a progress bar and Ctrl-C as Cancel. list, status and monitor
 * show the daemon's objects.
 *
 * vdiskctl.c: global options and dispatch; vdiskctl-list.c: list, status,
 * monitor; vdiskctl-image.c: info, check, repair, compare, snapshot;
 * vdiskctl-modify.c: create, convert, merge, commit, compact, resize;
 * vdiskctl-chain.c: chains; vdiskctl-op.c: following operations;
 * vdiskctl-bus.c, -value.c, -util.c: helpers; shared/: the command line and
 * the printers vdisk-img uses too.
 */

#include <getopt.h>
#include <string.h>

#include "config.h"
#include "vdiskctl.h"

BusTransport arg_transport = TRANSPORT_SYSTEM;
const char *arg_address = NULL;
bool arg_ask_password = true;
OutputFormat arg_output = OUTPUT_HUMAN;
bool arg_quiet = false;

FrontDialect front_dialect = {
        .tool = FRONT_CTL,
        .program = PROGRAM_NAME,
        .hint = "Try '" PROGRAM_NAME " --help' for more information.\n",
        .exit_usage = EXIT_USAGE,
        .drop_repeated_name = true,   /* vdiskd's messages name the file too */
};

/* The command of each verb (parsed in shared/front.c, "copy" is convert);
 * NULL: vdisk-img's only. */
static int (*const commands[_VERB_MAX])(Ctx *ctx, Request *req) = {
        [VERB_CANCEL] = cmd_cancel,
        [VERB_CHECK] = cmd_check,
        [VERB_COMMIT] = cmd_commit,
        [VERB_COMPACT] = cmd_compact,
        [VERB_COMPARE] = cmd_compare,
        [VERB_CONVERT] = cmd_convert,
        [VERB_CREATE] = cmd_create,
        [VERB_INFO] = cmd_info,
        [VERB_LIST] = cmd_list,
        [VERB_MERGE] = cmd_merge,
        [VERB_MONITOR] = cmd_monitor,
        [VERB_REBASE] = cmd_rebase,
        [VERB_REPAIR] = cmd_check,
        [VERB_RESIZE] = cmd_resize,
        [VERB_SNAPSHOT] = cmd_snapshot,
        [VERB_STATUS] = cmd_status,
};

void print_help(void) {
        printf("vdiskctl version %s\n"
               "usage: " PROGRAM_NAME " [OPTIONS] COMMAND [COMMAND OPTIONS] ...\n"
               "Control vdiskd, the virtual disk image service, over D-Bus.\n"
               "\n"
               "Options:\n"
               "  --system              talk to vdiskd on the system bus (default)\n"
               "  --session, --user     talk to vdiskd on the user's session bus\n"
               "  --address=ADDRESS     talk to vdiskd on the bus at ADDRESS\n"
               "                        (default: $VDISKCTL_ADDRESS when set)\n"
               "  --no-ask-password     never ask for authentication\n"
               "  --output=human|json   output format of list, status, info, check, monitor\n"
               "  -q, --quiet           print nothing but errors and requested data\n"
               "  -h, --help            show this help\n"
               "  --version             show the version\n"
               "\n"
               "Service commands:\n"
               "  list                            disks, images and operations\n"
               "  status [OPERATION|DISK|IMAGE]   vdiskd's state, or one object's details\n"
               "  monitor                         print vdiskd's events until Ctrl-C\n"
               "  cancel OPERATION                cancel a running operation\n"
               "\n"
               "Image commands (vdisk-img's arguments; run by vdiskd):\n"
               "  info [-f FMT] [--output=FMT] [--backing-chain] FILE\n"
               "  create [-q] -f FMT [-o OPTIONS] [-b BACKING -F BACKING_FMT] FILE [SIZE]\n"
               "  convert [-p] [-q] [-c] [-f FMT] [-O OUTPUT_FMT] [-o OPTIONS] [-S SPARSE_SIZE] FILE OUTPUT\n"
               "  convert -n [--target-is-zero] [-c | -B BACKING] [-p] [-q] [-f FMT] [-O OUTPUT_FMT] FILE\n"
               "          EXISTING_OUTPUT\n"
               "  copy ...                        the same as convert\n"
               "  compare [-p] [-q] [-s] [-f FMT] [-F FMT] FILE1 FILE2\n"
               "  check [-q] [-f FMT] [--output=FMT] [-r leaks|all] FILE\n"
               "  repair [-q] [-f FMT] [--dry-run] FILE\n"
               "  merge [-p] [-q] [-f FMT] FILE --from N --to M   (or: merge FILE N M)\n"
               "  commit [-p] [-q] [-f FMT] FILE\n"
               "  compact [-p] [-q] [-f FMT] [--image N] FILE\n"
               "  rebase [-p] [-q] [-f FMT] [-u] -b BACKING [-F BACKING_FMT] FILE\n"
               "  resize [-q] [-f FMT] [--shrink] [--preallocation=MODE] FILE [+|-]SIZE\n"
               "  snapshot [-q] [-f FMT] [-l | -c NAME | -a SNAPSHOT | -d SNAPSHOT] FILE\n"
               "\n"
               "Image commands also take '--parent-dir DIR' (repeatable): a directory searched for\n"
               "parents named by UUID only (VDI differencing images). OPERATION is a number, as\n"
               "in 'operation/3', or an object path. Sizes take k, M, G, T, P, E suffixes (1024).\n"
               "\n"
               "See vdiskctl(1) for every option and the exit codes.\n",
               VDISK_VERSION);
}

static int parse_global(int argc, char **argv) {
        static const struct option options[] = {
                { "help",            no_argument,       NULL, 'h' },
                { "version",         no_argument,       NULL, ARG_VERSION },
                { "quiet",           no_argument,       NULL, 'q' },
                { "system",          no_argument,       NULL, ARG_SYSTEM },
                { "session",         no_argument,       NULL, ARG_SESSION },
                { "user",            no_argument,       NULL, ARG_SESSION },
                { "address",         required_argument, NULL, ARG_ADDRESS },
                { "no-ask-password", no_argument,       NULL, ARG_NO_ASK_PASSWORD },
                { "output",          required_argument, NULL, ARG_OUTPUT },
                {}
        };
        bool transport_given = false;
        const char *env;
        int c;

        /* '+': stop at the command; its options are its own. */
        while ((c = getopt_long(argc, argv, "+hq", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        print_help();
                        return 0;
                case ARG_VERSION:
                        printf("vdiskctl version %s\n", VDISK_VERSION);
                        return 0;
                case 'q':
                        arg_quiet = true;
                        break;
                case ARG_SYSTEM:
                        arg_transport = TRANSPORT_SYSTEM;
                        transport_given = true;
                        break;
                case ARG_SESSION:
                        arg_transport = TRANSPORT_SESSION;
                        transport_given = true;
                        break;
                case ARG_ADDRESS:
                        if (!*optarg)
                                return usage_error("--address needs a bus address");
                        arg_transport = TRANSPORT_ADDRESS;
                        arg_address = optarg;
                        transport_given = true;
                        break;
                case ARG_NO_ASK_PASSWORD:
                        arg_ask_password = false;
                        break;
                case ARG_OUTPUT:
                        if (front_parse_output(optarg, &arg_output) < 0)
                                return usage_error("--output takes 'human' or 'json', not '%s'", optarg);
                        break;
                case '?':
                        return usage_hint();
                default:
                        assert(false);
                }
        }

        env = getenv("VDISKCTL_ADDRESS");
        if (!transport_given && env && *env) {
                arg_transport = TRANSPORT_ADDRESS;
                arg_address = env;
        }
        return -1;   /* go on */
}

int main(int argc, char **argv) {
        FrontVerbId verb = VERB_INFO;
        Request req = {};
        Ctx ctx = {};
        int ex;

        ex = parse_global(argc, argv);
        if (ex >= 0)
                return ex;
        if (optind >= argc) {
                log_error("Missing command");
                return usage_hint();
        }

        if (front_verb_find(argv[optind], &verb) < 0 || !commands[verb]) {
                log_error("Unknown command '%s'", argv[optind]);
                return usage_hint();
        }

        /* "COMMAND --help" needs no bus. */
        for (int i = optind + 1; i < argc; i++) {
                if (streq(argv[i], "--"))
                        break;
                if (streq(argv[i], "-h") || streq(argv[i], "--help")) {
                        print_help();
                        return EXIT_OK;
                }
        }

        /* Ctrl-C is a request (Cancel, or stop waiting), never a sudden death
         * that would leave a half-written output behind. */
        install_signal_handlers();

        argc -= optind;
        argv += optind;
        optind = 0;   /* the command parses its own options (getopt re-initializes) */

        /* The global -q and --output hold unless the verb's own say otherwise. */
        req.quiet = arg_quiet;
        req.output = arg_output;
        ex = front_parse(verb, argc, argv, &req);
        arg_quiet = req.quiet;
        arg_output = req.output;
        if (ex >= 0) {
                request_done(&req);
                return ex;
        }

        ex = ctx_connect(&ctx);
        if (ex == 0) {
                ex = commands[verb](&ctx, &req);
                ctx_done(&ctx);
        }
        request_done(&req);
        return flush_output(ex);
}
