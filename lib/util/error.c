/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Thread-local error detail: the library records, the tools and daemon print. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "util/util.h"

#define ERROR_MAX 1024

static _Thread_local char error_buf[ERROR_MAX];

int vdisk_error(int r, const char *fmt, ...) {
        char tmp[ERROR_MAX];
        va_list ap;

        /* Through a copy: the arguments may include vdisk_last_error(). */
        va_start(ap, fmt);
        vsnprintf(tmp, sizeof tmp, fmt, ap);
        va_end(ap);
        memcpy(error_buf, tmp, sizeof tmp);
        return r;
}

int vdisk_error_prefix(int r, const char *name) {
        char tmp[ERROR_MAX];

        if (!name || !name[0])
                return r;
        if (!error_buf[0])
                snprintf(tmp, sizeof tmp, "%.256s: %s", name, strerror(r < 0 ? -r : r));
        else if (strncmp(error_buf, name, strlen(name)) == 0)
                return r;
        else
                snprintf(tmp, sizeof tmp, "%.256s: %.700s", name, error_buf);
        memcpy(error_buf, tmp, sizeof tmp);
        return r;
}

const char *vdisk_last_error(void) {
        return error_buf;
}

void vdisk_clear_error(void) {
        error_buf[0] = 0;
}
