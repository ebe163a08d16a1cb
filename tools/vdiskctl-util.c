/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vdiskctl helpers: messages, signals, sizes, paths, small string lists. */

#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

#include "vdiskctl.h"

/* ---------------------------------------------------------------- messages */

void log_notice(const char *fmt, ...) {
        va_list ap;

        if (arg_quiet)
                return;
        va_start(ap, fmt);
        log_msgv("", fmt, ap);
        va_end(ap);
}

/* ---------------------------------------------------------------- signals */

volatile sig_atomic_t signals_received = 0;

/* Signals closer together than this are one request: timeout(1) and a
 * terminal's process-group signal may deliver the same "stop" twice. */
#define SIGNAL_REPEAT_USEC 1000000u

static volatile uint64_t last_signal_usec = 0;

static void signal_handler(int sig) {
        struct timespec ts;
        uint64_t now;

        /* clock_gettime() is async-signal-safe. */
        clock_gettime(CLOCK_MONOTONIC, &ts);
        now = (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
        if (signals_received > 0 && now - last_signal_usec < SIGNAL_REPEAT_USEC)
                return;
        last_signal_usec = now;
        signals_received++;
}

void install_signal_handlers(void) {
        /* No SA_RESTART: a blocking poll() returns EINTR, so waits notice. */
        struct sigaction sa = {
                .sa_handler = signal_handler,
        };

        sigemptyset(&sa.sa_mask);
        (void) sigaction(SIGINT, &sa, NULL);
        (void) sigaction(SIGTERM, &sa, NULL);
        (void) sigaction(SIGHUP, &sa, NULL);
        /* A closed pipe on stdout is an error on write, not a death. */
        (void) signal(SIGPIPE, SIG_IGN);
}

/* ---------------------------------------------------------------- UTF-8 */

char *utf8_sanitize(const char *s) {
        const unsigned char *p = (const unsigned char *) s;
        char *out, *o;

        /* Each invalid byte becomes U+FFFD (3 bytes). */
        out = malloc(strlen(s) * 3 + 1);
        if (!out)
                return NULL;
        o = out;
        while (*p) {
                uint32_t c;
                size_t n = utf8_next(p, &c);

                if (n == 0) {
                        memcpy(o, "\xef\xbf\xbd", 3);
                        o += 3;
                        p++;
                } else {
                        memcpy(o, p, n);
                        o += n;
                        p += n;
                }
        }
        *o = '\0';
        return out;
}

/* ---------------------------------------------------------------- paths and names */

const char *path_basename(const char *path) {
        const char *slash = strrchr(path, '/');

        if (!slash)
                return path;
        if (slash[1])
                return slash + 1;
        return path;   /* "dir/": keep it whole, the daemon only shows it */
}

const char *object_short(const char *path) {
        if (!path)
                return "-";
        if (strncmp(path, VDISK_PATH "/", strlen(VDISK_PATH "/")) == 0)
                return path + strlen(VDISK_PATH "/");
        return path;
}

void format_uid(uint32_t uid, char buf[static 64]) {
        struct passwd *pw = getpwuid(uid);

        if (pw && pw->pw_name && strlen(pw->pw_name) < 64)
                snprintf(buf, 64, "%s", pw->pw_name);
        else
                snprintf(buf, 64, "%" PRIu32, uid);
}

uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

void format_timestamp(uint64_t usec, char buf[static 64]) {
        time_t t = (time_t) (usec / 1000000u);
        struct tm tm;

        if (usec == 0 || !localtime_r(&t, &tm) || strftime(buf, 64, "%Y-%m-%d %H:%M:%S", &tm) == 0)
                snprintf(buf, 64, "-");
}

void strv_free(char **l) {
        for (char **p = l; p && *p; p++)
                free(*p);
        free(l);
}

int strv_push(char ***l, size_t *n, const char *s) {
        char **m;

        m = realloc(*l, (*n + 2) * sizeof(char *));
        if (!m)
                return -ENOMEM;
        *l = m;
        m[*n] = strdup(s);
        if (!m[*n]) {
                m[*n] = NULL;
                return -ENOMEM;
        }
        m[++*n] = NULL;
        return 0;
}

/* ---------------------------------------------------------------- options */

int common_option(int c, const char *arg, int *ret_exit) {
        if (c == 'q') {
                arg_quiet = true;
                return 1;
        }
        return front_common_option(c, arg, ret_exit);
}

/* ---------------------------------------------------------------- files */

int open_direct(int fd) {
        char path[64];

        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        return open(path, O_WRONLY | O_DIRECT | O_CLOEXEC | O_NOCTTY);
}
