/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vdiskctl helpers: messages, signals, sizes, paths, small string lists. */

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <pwd.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

#include "vdiskctl.h"

/* ---------------------------------------------------------------- messages */

static bool log_quiet = false;

void log_set_quiet(bool b) {
        log_quiet = b;
}

static void log_va(const char *prefix, const char *fmt, va_list ap) {
        int saved_errno = errno;

        if (log_quiet)
                return;
        fflush(stdout);
        errno = saved_errno;   /* for %m */
        fputs(PROGRAM_NAME ": ", stderr);
        fputs(prefix, stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
}

void log_error(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        log_va("", fmt, ap);
        va_end(ap);
}

void log_warning(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        log_va("warning: ", fmt, ap);
        va_end(ap);
}

void log_notice(const char *fmt, ...) {
        va_list ap;

        if (arg_quiet)
                return;
        va_start(ap, fmt);
        log_va("", fmt, ap);
        va_end(ap);
}

int usage_hint(void) {
        fputs("Try '" PROGRAM_NAME " --help' for more information.\n", stderr);
        return EXIT_USAGE;
}

int usage_error(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        log_va("", fmt, ap);
        va_end(ap);
        return usage_hint();
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

/* ---------------------------------------------------------------- sizes */

static int suffix_shift(char c, unsigned *ret) {
        switch (c) {
        case 'b': case 'B':
                *ret = 0;
                return 0;
        case 'k': case 'K':
                *ret = 10;
                return 0;
        case 'm': case 'M':
                *ret = 20;
                return 0;
        case 'g': case 'G':
                *ret = 30;
                return 0;
        case 't': case 'T':
                *ret = 40;
                return 0;
        case 'p': case 'P':
                *ret = 50;
                return 0;
        case 'e': case 'E':
                *ret = 60;
                return 0;
        default:
                return -EINVAL;
        }
}

int parse_size(const char *s, uint64_t *ret) {
        uint64_t whole = 0, unit = 1, v, part;
        double frac = 0;
        const char *p = s;
        unsigned shift;

        assert(s);
        assert(ret);

        if (*p == '+')
                p++;
        if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
                p += 2;
                if (!isxdigit((unsigned char) *p))
                        return -EINVAL;
                while (isxdigit((unsigned char) *p)) {
                        char c = (char) tolower((unsigned char) *p++);
                        unsigned d = c <= '9' ? (unsigned) (c - '0') : (unsigned) (c - 'a' + 10);

                        if (MUL_OVERFLOW(whole, 16, &whole) || ADD_OVERFLOW(whole, d, &whole))
                                return -ERANGE;
                }
        } else {
                if (!isdigit((unsigned char) *p))
                        return -EINVAL;
                while (isdigit((unsigned char) *p))
                        if (MUL_OVERFLOW(whole, 10, &whole) ||
                            ADD_OVERFLOW(whole, (uint64_t) (*p++ - '0'), &whole))
                                return -ERANGE;
                if (*p == '.') {
                        double scale = 1;

                        p++;
                        if (!isdigit((unsigned char) *p))
                                return -EINVAL;
                        while (isdigit((unsigned char) *p)) {
                                scale /= 10;
                                frac += (*p++ - '0') * scale;
                        }
                }
        }
        if (*p) {
                if (suffix_shift(*p, &shift) < 0 || p[1])
                        return -EINVAL;
                unit = UINT64_C(1) << shift;
        }
        if (frac > 0 && unit == 1)
                return -EINVAL;   /* no fractions of a byte */

        if (MUL_OVERFLOW(whole, unit, &v))
                return -ERANGE;
        part = (uint64_t) (frac * (double) unit);
        if (ADD_OVERFLOW(v, part, &v) || v > INT64_MAX)
                return -ERANGE;
        *ret = v;
        return 0;
}

void log_bad_size(const char *what, const char *s, int r) {
        if (r == -ERANGE)
                log_error("Invalid %s '%s': must be between 0 and %" PRIi64, what, s, INT64_MAX);
        else
                log_error("Invalid %s '%s': use a number of bytes, optionally with a suffix "
                          "k, M, G, T, P or E", what, s);
}

void format_size(uint64_t v, char buf[static 32]) {
        static const char *const prefix[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
        double x = (double) v;
        size_t i = 0;

        /* Three significant digits: move up once four would be needed. */
        while (i + 1 < ELEMENTSOF(prefix) && x >= 1000.0) {
                x /= 1024.0;
                i++;
        }
        snprintf(buf, 32, "%.3g %sB", x, prefix[i]);
}

int parse_uint(const char *s, unsigned *ret) {
        unsigned long v;
        char *end;

        if (!isdigit((unsigned char) s[0]))
                return -EINVAL;
        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno != 0 || *end || v > UINT32_MAX)
                return -EINVAL;
        *ret = (unsigned) v;
        return 0;
}

int parse_output(const char *s, OutputMode *ret) {
        if (streq(s, "human"))
                *ret = OUTPUT_HUMAN;
        else if (streq(s, "json"))
                *ret = OUTPUT_JSON;
        else
                return -EINVAL;
        return 0;
}

/* ---------------------------------------------------------------- UTF-8 */

/* Length of the valid UTF-8 sequence at s (0 when invalid), its code point
 * in *ret. */
size_t utf8_next(const unsigned char *s, uint32_t *ret) {
        size_t len;
        uint32_t c, min;

        if (s[0] < 0x80) {
                *ret = s[0];
                return 1;
        }
        if (s[0] >= 0xc2 && s[0] <= 0xdf) {
                len = 2;
                c = s[0] & 0x1f;
                min = 0x80;
        } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
                len = 3;
                c = s[0] & 0x0f;
                min = 0x800;
        } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
                len = 4;
                c = s[0] & 0x07;
                min = 0x10000;
        } else
                return 0;
        for (size_t i = 1; i < len; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        return 0;   /* also stops at the terminating NUL */
                c = (c << 6) | (s[i] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
                return 0;
        *ret = c;
        return len;
}

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

int path_relative_to(const char *child, const char *name, char **ret) {
        const char *slash = strrchr(child, '/');
        char *s;

        if (name[0] == '/' || !slash)
                s = strdup(name);
        else if (asprintf(&s, "%.*s%s", (int) (slash - child + 1), child, name) < 0)
                s = NULL;
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int path_dirname(const char *path, char **ret) {
        const char *slash = strrchr(path, '/');
        char *s;

        if (!slash)
                s = strdup(".");
        else if (slash == path)
                s = strdup("/");
        else
                s = strndup(path, (size_t) (slash - path));
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
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

char **arg_parent_dirs = NULL;
static size_t n_parent_dirs = 0;

int parent_dirs_add(const char *dir) {
        return strv_push(&arg_parent_dirs, &n_parent_dirs, dir);
}

int common_option(int c, const char *arg, int *ret_exit) {
        switch (c) {
        case 'h':
                print_help();
                *ret_exit = EXIT_OK;
                return 2;
        case 'q':
                arg_quiet = true;
                return 1;
        case ARG_PARENT_DIR:
                if (parent_dirs_add(arg) < 0) {
                        log_error("Out of memory");
                        *ret_exit = EXIT_FAILURE;
                        return 2;
                }
                return 1;
        case '?':
                *ret_exit = usage_hint();
                return 2;
        default:
                return 0;
        }
}
