/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdiskd: the D-Bus service for virtual disk images (docs/dbus-api.md).
 * One main thread runs sd-event and sd-bus; a worker pool does every
 * blocking file access.
 */
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-id128.h>

#include "config.h"
#include "vdiskd.h"

typedef struct Args {
        bool session;
        const char *address;
        const char *introspect;
        long linger_sec, idle_sec, stop_timeout_sec, workers, max_ops, max_ops_user;
        long max_disks_user, max_calls_user, max_fds_user, max_workers_user;
        long max_finished, max_finished_user, max_disks, max_calls, max_waits, max_fds;
        long max_persistent_user, max_file_sets_user, file_set_timeout_sec, max_fds_call;
        long max_peers, max_peers_user;
} Args;

static void help(void) {
        printf("Usage: vdiskd [OPTIONS...]\n\n"
               "The D-Bus service for virtual disk images (bus name " BUS_NAME ").\n\n"
               "  --system                      Serve on the system bus (default)\n"
               "  --session                     Serve on the session bus, or on --address\n"
               "  --address=ADDRESS             Connect to this D-Bus address\n"
               "  --bus-introspect=INTERFACE    Print an interface's introspection XML and exit\n"
               "                                ('list' prints the interface names)\n"
               "  --linger-sec=N                Keep finished operations N seconds (default 60)\n"
               "  --idle-exit-sec=N             Exit after N idle seconds, 0 = never\n"
               "                                (default 30 with --system, 0 with --session)\n"
               "  --stop-timeout-sec=N          On SIGTERM/SIGINT, exit after at most N seconds,\n"
               "                                even with workers blocked in a file system\n"
               "                                (default %d; exit status %d then)\n"
               "  --workers=N                   Worker threads (default: CPUs + 1, at least 3)\n"
               "  --max-operations=N            Operations at once in total (default 64)\n"
               "  --max-operations-per-user=N   Operations at once per user (default 32)\n"
               "  --max-disks-per-user=N        Open disks per user (default 256)\n"
               "  --max-persistent-disks-per-user=N\n"
               "                                Disks opened with 'persist' per user (default 16)\n"
               "  --max-calls-per-user=N        Calls in progress per user (default 64)\n"
               "  --max-fds-per-user=N          File descriptors held per user (default 1024,\n"
               "                                or a quarter of RLIMIT_NOFILE if less)\n"
               "  --max-workers-per-user=N      Workers one user may occupy at once\n"
               "                                (default: workers - 1, at least 1)\n"
               "  --max-finished-operations=N   Finished operations kept in total; past it the\n"
               "                                oldest goes at once (default 512)\n"
               "  --max-finished-operations-per-user=N\n"
               "                                Finished operations kept per user (default 64)\n"
               "  --max-disks=N                 Open disks in total (default 1024)\n"
               "  --max-calls=N                 Calls in progress in total (default 4096)\n"
               "  --max-waits-per-operation=N   Pending Operation.Wait calls per operation\n"
               "                                (default 16)\n"
               "  --max-fds=N                   File descriptors held in total (default 4096,\n"
               "                                or half of RLIMIT_NOFILE if less)\n"
               "  --max-fds-per-call=N          File descriptors one call may carry (default 16,\n"
               "                                the system bus's own limit per message)\n"
               "  --max-file-sets-per-user=N    File sets per user (default 4)\n"
               "  --file-set-timeout-sec=N      Drop a file set N seconds after its last Add\n"
               "                                (default 60, 0 = never)\n"
               "  --max-peers=N                 Client connections known at once (default 4096)\n"
               "  --max-peers-per-user=N        Client connections of one user (default 64)\n"
               "  --version                     Print the version and exit\n"
               "  --help                        Print this help and exit\n",
               STOP_TIMEOUT_SEC_DEFAULT, VDISKD_EXIT_STOP_TIMEOUT);
}

static int parse_number(const char *opt, const char *s, long min, long max, long *ret) {
        char *end;
        long v;

        errno = 0;
        v = strtol(s, &end, 10);
        if (errno != 0 || end == s || *end || v < min || v > max) {
                log_error("Invalid value for %s: '%s' (expected %ld..%ld).", opt, s, min, max);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

static int parse_args(int argc, char *argv[], Args *a) {
        enum {
                ARG_SYSTEM = 0x100,
                ARG_SESSION,
                ARG_ADDRESS,
                ARG_INTROSPECT,
                ARG_LINGER,
                ARG_IDLE,
                ARG_STOP_TIMEOUT,
                ARG_WORKERS,
                ARG_MAX_OPS,
                ARG_MAX_OPS_USER,
                ARG_MAX_DISKS_USER,
                ARG_MAX_CALLS_USER,
                ARG_MAX_FDS_USER,
                ARG_MAX_WORKERS_USER,
                ARG_MAX_FINISHED,
                ARG_MAX_FINISHED_USER,
                ARG_MAX_DISKS,
                ARG_MAX_CALLS,
                ARG_MAX_WAITS,
                ARG_MAX_FDS,
                ARG_MAX_PERSISTENT_USER,
                ARG_MAX_FILE_SETS_USER,
                ARG_FILE_SET_TIMEOUT,
                ARG_MAX_FDS_CALL,
                ARG_MAX_PEERS,
                ARG_MAX_PEERS_USER,
                ARG_VERSION,
                ARG_HELP,
        };
        static const struct option options[] = {
                { "system",                  no_argument,       NULL, ARG_SYSTEM },
                { "session",                 no_argument,       NULL, ARG_SESSION },
                { "address",                 required_argument, NULL, ARG_ADDRESS },
                { "bus-introspect",          required_argument, NULL, ARG_INTROSPECT },
                { "linger-sec",              required_argument, NULL, ARG_LINGER },
                { "idle-exit-sec",           required_argument, NULL, ARG_IDLE },
                { "stop-timeout-sec",        required_argument, NULL, ARG_STOP_TIMEOUT },
                { "workers",                 required_argument, NULL, ARG_WORKERS },
                { "max-operations",          required_argument, NULL, ARG_MAX_OPS },
                { "max-operations-per-user", required_argument, NULL, ARG_MAX_OPS_USER },
                { "max-disks-per-user",      required_argument, NULL, ARG_MAX_DISKS_USER },
                { "max-calls-per-user",      required_argument, NULL, ARG_MAX_CALLS_USER },
                { "max-fds-per-user",        required_argument, NULL, ARG_MAX_FDS_USER },
                { "max-workers-per-user",    required_argument, NULL, ARG_MAX_WORKERS_USER },
                { "max-finished-operations", required_argument, NULL, ARG_MAX_FINISHED },
                { "max-finished-operations-per-user", required_argument, NULL, ARG_MAX_FINISHED_USER },
                { "max-disks",               required_argument, NULL, ARG_MAX_DISKS },
                { "max-calls",               required_argument, NULL, ARG_MAX_CALLS },
                { "max-waits-per-operation", required_argument, NULL, ARG_MAX_WAITS },
                { "max-fds",                 required_argument, NULL, ARG_MAX_FDS },
                { "max-persistent-disks-per-user", required_argument, NULL, ARG_MAX_PERSISTENT_USER },
                { "max-file-sets-per-user",  required_argument, NULL, ARG_MAX_FILE_SETS_USER },
                { "file-set-timeout-sec",    required_argument, NULL, ARG_FILE_SET_TIMEOUT },
                { "max-fds-per-call",        required_argument, NULL, ARG_MAX_FDS_CALL },
                { "max-peers",               required_argument, NULL, ARG_MAX_PEERS },
                { "max-peers-per-user",      required_argument, NULL, ARG_MAX_PEERS_USER },
                { "version",                 no_argument,       NULL, ARG_VERSION },
                { "help",                    no_argument,       NULL, ARG_HELP },
                {}
        };
        int c, r = 0;

        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
                switch (c) {
                case ARG_SYSTEM:
                        a->session = false;
                        break;
                case ARG_SESSION:
                        a->session = true;
                        break;
                case ARG_ADDRESS:
                        a->address = optarg;
                        break;
                case ARG_INTROSPECT:
                        a->introspect = optarg;
                        break;
                case ARG_LINGER:
                        r = parse_number("--linger-sec", optarg, 0, 86400 * 365, &a->linger_sec);
                        break;
                case ARG_IDLE:
                        r = parse_number("--idle-exit-sec", optarg, 0, 86400 * 365, &a->idle_sec);
                        break;
                case ARG_STOP_TIMEOUT:
                        r = parse_number("--stop-timeout-sec", optarg, 1, 86400, &a->stop_timeout_sec);
                        break;
                case ARG_WORKERS:
                        r = parse_number("--workers", optarg, 1, 1024, &a->workers);
                        break;
                case ARG_MAX_OPS:
                        r = parse_number("--max-operations", optarg, 1, 1000000, &a->max_ops);
                        break;
                case ARG_MAX_OPS_USER:
                        r = parse_number("--max-operations-per-user", optarg, 1, 1000000, &a->max_ops_user);
                        break;
                case ARG_MAX_DISKS_USER:
                        r = parse_number("--max-disks-per-user", optarg, 1, 1000000, &a->max_disks_user);
                        break;
                case ARG_MAX_CALLS_USER:
                        r = parse_number("--max-calls-per-user", optarg, 1, 1000000, &a->max_calls_user);
                        break;
                case ARG_MAX_PEERS:
                        r = parse_number("--max-peers", optarg, 1, 1000000, &a->max_peers);
                        break;
                case ARG_MAX_PEERS_USER:
                        r = parse_number("--max-peers-per-user", optarg, 1, 1000000, &a->max_peers_user);
                        break;
                case ARG_MAX_FDS_USER:
                        /* A call may carry 16 fds on the system bus (and a few more elsewhere). */
                        r = parse_number("--max-fds-per-user", optarg, 16, 1000000, &a->max_fds_user);
                        break;
                case ARG_MAX_WORKERS_USER:
                        r = parse_number("--max-workers-per-user", optarg, 1, 1024, &a->max_workers_user);
                        break;
                case ARG_MAX_FINISHED:
                        r = parse_number("--max-finished-operations", optarg, 1, 1000000, &a->max_finished);
                        break;
                case ARG_MAX_FINISHED_USER:
                        r = parse_number("--max-finished-operations-per-user", optarg, 1, 1000000,
                                         &a->max_finished_user);
                        break;
                case ARG_MAX_DISKS:
                        r = parse_number("--max-disks", optarg, 1, 1000000, &a->max_disks);
                        break;
                case ARG_MAX_CALLS:
                        r = parse_number("--max-calls", optarg, 1, 1000000, &a->max_calls);
                        break;
                case ARG_MAX_WAITS:
                        r = parse_number("--max-waits-per-operation", optarg, 1, 1000000, &a->max_waits);
                        break;
                case ARG_MAX_FDS:
                        r = parse_number("--max-fds", optarg, 16, 10000000, &a->max_fds);
                        break;
                case ARG_MAX_PERSISTENT_USER:
                        r = parse_number("--max-persistent-disks-per-user", optarg, 0, 1000000,
                                         &a->max_persistent_user);
                        break;
                case ARG_MAX_FILE_SETS_USER:
                        r = parse_number("--max-file-sets-per-user", optarg, 0, 1000000, &a->max_file_sets_user);
                        break;
                case ARG_FILE_SET_TIMEOUT:
                        r = parse_number("--file-set-timeout-sec", optarg, 0, 86400 * 365, &a->file_set_timeout_sec);
                        break;
                case ARG_MAX_FDS_CALL:
                        /* The kernel passes at most 253 descriptors in one sendmsg(). */
                        r = parse_number("--max-fds-per-call", optarg, 1, 253, &a->max_fds_call);
                        break;
                case ARG_VERSION:
                        printf("vdiskd %s\n", VDISK_VERSION);
                        return 0;
                case ARG_HELP:
                        help();
                        return 0;
                default:
                        return -EINVAL;
                }
                if (r < 0)
                        return r;
        }
        if (optind < argc) {
                log_error("Unexpected argument '%s'.", argv[optind]);
                return -EINVAL;
        }
        return 1;
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        if (m->shutting_down)
                return 0;
        (void) sd_notify(false, "STOPPING=1");
        manager_shutdown(m);
        return 0;
}

static int open_bus(const Args *a, sd_bus **ret) {
        sd_bus *bus = NULL;
        int r;

        if (a->address) {
                r = sd_bus_new(&bus);
                if (r >= 0)
                        r = sd_bus_set_address(bus, a->address);
                if (r >= 0)
                        r = sd_bus_set_bus_client(bus, true);
                if (r >= 0)
                        r = sd_bus_set_trusted(bus, false);
                if (r >= 0)
                        r = sd_bus_start(bus);
        } else if (a->session)
                r = sd_bus_open_user(&bus);
        else
                r = sd_bus_open_system(&bus);
        if (r < 0) {
                sd_bus_unref(bus);
                return r;
        }
        *ret = bus;
        return 0;
}

int main(int argc, char *argv[]) {
        Args a = { .linger_sec = 60, .idle_sec = -1, .stop_timeout_sec = STOP_TIMEOUT_SEC_DEFAULT,
                   .workers = 0, .max_ops = 64, .max_ops_user = 32,
                   .max_disks_user = 256, .max_calls_user = 64, .max_fds_user = 0, .max_workers_user = 0,
                   .max_finished = 512, .max_finished_user = 64, .max_disks = 1024, .max_calls = 4096,
                   .max_waits = 16, .max_fds = 0,
                   .max_persistent_user = 16, .max_file_sets_user = 4, .file_set_timeout_sec = 60,
                   .max_fds_call = 16, .max_peers = 4096, .max_peers_user = 64 };
        Manager *m = NULL;
        sigset_t mask;
        long n_cpus;
        int r;

        r = parse_args(argc, argv, &a);
        if (r <= 0)
                return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
        if (a.introspect)
                return introspect_print(a.introspect) < 0 ? EXIT_FAILURE : EXIT_SUCCESS;

        /* Before any thread exists, so the workers inherit the mask. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        (void) sigprocmask(SIG_BLOCK, &mask, NULL);
        (void) signal(SIGPIPE, SIG_IGN);

        /* Nothing may open a path once requests are served (a test audits it):
         * settle what libraries read lazily now. sd-event reads the boot id
         * the first time it coalesces timers (cached per thread; the loop runs
         * on this one), and glibc reads /proc/sys/vm/overcommit_memory the first
         * time it shrinks a per-thread arena, so keep all threads on the main
         * arena. */
        {
                sd_id128_t boot_id;
                (void) sd_id128_get_boot(&boot_id);
        }
        (void) mallopt(M_ARENA_MAX, 1);

        /* One more worker than CPUs (at least 3): with the per-user share
         * below, a single user still runs as many tasks as there are CPUs
         * (at least 2), and one worker stays free for everybody else. */
        if (a.workers == 0) {
                n_cpus = sysconf(_SC_NPROCESSORS_ONLN);
                a.workers = MAX(n_cpus + 1, 3L);
        }
        /* One user never gets every worker: files that hang (FUSE, NFS) must
         * not stall everybody. */
        if (a.max_workers_user == 0)
                a.max_workers_user = MAX(a.workers - 1, 1L);
        a.max_workers_user = MIN(a.max_workers_user, a.workers);
        /* The descriptor budget follows the process's limit: one user may hold
         * a quarter of it at most (the unit sets LimitNOFILE=16384). */
        if (a.max_fds_user == 0) {
                struct rlimit rl;

                a.max_fds_user = 1024;
                if (getrlimit(RLIMIT_NOFILE, &rl) >= 0 && rl.rlim_cur != RLIM_INFINITY &&
                    rl.rlim_cur / 4 < (rlim_t) a.max_fds_user)
                        a.max_fds_user = MAX((long) (rl.rlim_cur / 4), 16L);
        }

        /* In all: half the process's limit (the rest: the bus, sd-event,
         * libraries, what workers open meanwhile). */
        if (a.max_fds == 0) {
                struct rlimit rl;

                a.max_fds = 4096;
                if (getrlimit(RLIMIT_NOFILE, &rl) >= 0 && rl.rlim_cur != RLIM_INFINITY &&
                    rl.rlim_cur / 2 < (rlim_t) a.max_fds)
                        a.max_fds = MAX((long) (rl.rlim_cur / 2), 16L);
        }

        r = manager_new(&m);
        if (r < 0) {
                log_oom();
                return EXIT_FAILURE;
        }
        m->session = a.session;
        m->workers = (unsigned) a.workers;
        m->max_operations = (unsigned) a.max_ops;
        m->max_operations_per_user = (unsigned) a.max_ops_user;
        m->max_disks_per_user = (unsigned) a.max_disks_user;
        m->max_calls_per_user = (unsigned) a.max_calls_user;
        m->max_peers = (unsigned) a.max_peers;
        m->max_peers_per_user = (unsigned) a.max_peers_user;
        m->max_fds_per_user = (unsigned) a.max_fds_user;
        m->max_workers_per_user = (unsigned) a.max_workers_user;
        m->max_finished_operations = (unsigned) a.max_finished;
        m->max_finished_operations_per_user = (unsigned) a.max_finished_user;
        m->max_disks = (unsigned) a.max_disks;
        m->max_calls = (unsigned) a.max_calls;
        m->max_waits_per_operation = (unsigned) a.max_waits;
        m->max_fds = (unsigned) a.max_fds;
        m->max_persistent_disks_per_user = (unsigned) a.max_persistent_user;
        m->max_file_sets_per_user = (unsigned) a.max_file_sets_user;
        m->file_set_timeout_usec = (uint64_t) a.file_set_timeout_sec * 1000000u;
        m->max_fds_per_call = (unsigned) a.max_fds_call;
        m->linger_usec = (uint64_t) a.linger_sec * 1000000u;
        m->stop_timeout_sec = (unsigned) a.stop_timeout_sec;
        m->idle_usec = (uint64_t) (a.idle_sec >= 0 ? a.idle_sec : a.session ? 0 : 30) * 1000000u;

        r = sd_event_default(&m->event);
        if (r < 0) {
                log_error("Failed to allocate the event loop: %s", strerror(-r));
                goto finish;
        }
        /* Pings systemd's watchdog (WatchdogSec= in the unit) from the loop:
         * a main loop that ever blocks gets the service restarted. */
        (void) sd_event_set_watchdog(m->event, true);
        r = sd_event_add_signal(m->event, NULL, SIGTERM, on_signal, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGINT, on_signal, m);
        if (r < 0) {
                log_error("Failed to watch signals: %s", strerror(-r));
                goto finish;
        }
        r = open_bus(&a, &m->bus);
        if (r < 0) {
                log_error("Failed to connect to the %s bus: %s", a.address ? "given" : a.session ? "session" : "system",
                          strerror(-r));
                goto finish;
        }
        /* Losing the bus ends the service (the event loop returns 1). */
        r = sd_bus_set_exit_on_disconnect(m->bus, true);
        if (r >= 0)
                r = sd_bus_attach_event(m->bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0) {
                log_error("Failed to attach the bus to the event loop: %s", strerror(-r));
                goto finish;
        }
        r = worker_pool_new(m->event, m->workers, &m->pool);
        if (r < 0) {
                log_error("Failed to start the worker threads: %s", strerror(-r));
                goto finish;
        }
        r = manager_start(m);
        if (r < 0)
                goto finish;
        (void) sd_notify(false, "READY=1\nSTATUS=Serving.");

        r = sd_event_loop(m->event);
        if (r < 0)
                log_error("Event loop failed: %s", strerror(-r));
        else if (r > 0) {
                log_error("Lost the connection to the bus.");
                r = -ECONNRESET;
        }
finish:
        manager_free(m);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
