/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Messages on stderr for both tools (see log.h). */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "front.h"
#include "log.h"

static bool log_quiet = false;

void log_set_quiet(bool b) {
        log_quiet = b;
}

/* libvdisk's messages start with the file they concern, and so do vdisk-img's:
 * "'a.vdi': a.vdi: bad signature" says the name twice. Drops the second one. */
static void drop_repeated_name(char *msg) {
        for (char *p = msg; *p; p++) {
                char *sep = strstr(p, ": ");
                bool quoted;
                size_t n;

                if (!sep)
                        return;
                /* p..sep is a candidate name, optionally quoted: n bytes of it
                 * at p, repeated after sep as "name: " */
                n = (size_t) (sep - p);
                quoted = n > 2 && p[0] == '\'' && sep[-1] == '\'';
                if (quoted)
                        n -= 2;
                if (n > 0 && strncmp(sep + 2, quoted ? p + 1 : p, n) == 0 && strncmp(sep + 2 + n, ": ", 2) == 0) {
                        memmove(sep + 2, sep + 4 + n, strlen(sep + 4 + n) + 1);
                        return;
                }
                /* next candidate starts after the next space */
                p = strchr(p, ' ');
                if (!p)
                        return;
        }
}

void log_msgv(const char *prefix, const char *fmt, va_list ap) {
        int saved_errno = errno;
        char *msg = NULL;

        if (log_quiet)
                return;
        fflush(stdout);
        errno = saved_errno;   /* for %m */
        fputs(front_dialect.program, stderr);
        fputs(": ", stderr);
        fputs(prefix, stderr);
        if (vasprintf(&msg, fmt, ap) < 0) {
                fputs("(out of memory)\n", stderr);
                return;
        }
        if (front_dialect.drop_repeated_name)
                drop_repeated_name(msg);
        fputs(msg, stderr);
        fputc('\n', stderr);
        free(msg);
}

void log_error(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        log_msgv("", fmt, ap);
        va_end(ap);
}

void log_warning(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        log_msgv("warning: ", fmt, ap);
        va_end(ap);
}

bool refused(bool cond, const char *fmt, ...) {
        va_list ap;

        if (!cond)
                return false;
        va_start(ap, fmt);
        log_msgv("", fmt, ap);
        va_end(ap);
        return true;
}

int usage_hint(void) {
        fputs(front_dialect.hint, stderr);
        return front_dialect.exit_usage;
}

int usage_error(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        log_msgv("", fmt, ap);
        va_end(ap);
        return usage_hint();
}

int flush_output(int ex) {
        if (fflush(stdout) == 0 && !ferror(stdout))
                return ex;
        log_error("Could not write the output: %s", strerror(errno));
        return ex == 0 ? 1 : ex;
}
