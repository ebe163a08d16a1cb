/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* libvdisk's negative errno codes → the D-Bus error names of docs/dbus-api.md. */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "vdiskd.h"

const char *errno_to_error_name(int r) {
        switch (-r) {
        case ECANCELED:
                return ERROR_PREFIX "Cancelled";
        case ESHUTDOWN:         /* the daemon is stopping (never a library code) */
                return ERROR_PREFIX "ServiceStopping";
        case EOPNOTSUPP:
                return ERROR_PREFIX "NotSupported";
        case EMEDIUMTYPE:
                return ERROR_PREFIX "UnknownFormat";
        case EUCLEAN:
                return ERROR_PREFIX "InvalidImage";
        case ESTALE:
        case ELOOP:
        case ENOTUNIQ:
                return ERROR_PREFIX "ChainBroken";
        case ENOENT:
                return ERROR_PREFIX "FileNeeded";
        case EBADF:
                return ERROR_PREFIX "BadFileDescriptor";
        case EROFS:
                return ERROR_PREFIX "ReadOnly";
        case EBUSY:
                return ERROR_PREFIX "Busy";
        case ENOSPC:
        case EDQUOT:
                return ERROR_PREFIX "NoSpace";
        case EFBIG:
                return ERROR_PREFIX "TooLarge";
        case ENOTEMPTY:
                return ERROR_PREFIX "NotEmpty";
        case EINVAL:
                /* Found by the worker or the library: an Operation's errors
                 * and worker replies use our own names only. Arguments the
                 * method call itself gets wrong are InvalidArgs (call_fail). */
                return ERROR_PREFIX "InvalidArgument";
        case E2BIG:
                return SD_BUS_ERROR_LIMITS_EXCEEDED;
        case ENOMEM:
                return SD_BUS_ERROR_NO_MEMORY;
        default:
                return ERROR_PREFIX "Failed";
        }
}

void outcome_clear(Outcome *o) {
        o->message = mfree_str(o->message);
        o->r = 0;
}

void outcome_set(Outcome *o, int r) {
        const char *e = vdisk_last_error();

        free(o->message);
        o->r = r;
        o->message = r < 0 ? strdup(e && e[0] ? e : strerror(-r)) : NULL;
}

void outcome_setf(Outcome *o, int r, const char *fmt, ...) {
        va_list ap;

        free(o->message);
        o->message = NULL;
        o->r = r;
        va_start(ap, fmt);
        if (vasprintf(&o->message, fmt, ap) < 0)
                o->message = NULL;
        va_end(ap);
}

void outcome_append(Outcome *o, const char *fmt, ...) {
        _cleanup_free_ char *what = NULL;
        char *msg;
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&what, fmt, ap);
        va_end(ap);
        if (r < 0 || asprintf(&msg, "%s; %s", o->message ? o->message : strerror(-o->r), what) < 0)
                return;
        free(o->message);
        o->message = msg;
}

int reply_outcome_error(sd_bus_message *m, const Outcome *o) {
        return reply_error(m, errno_to_error_name(o->r), "%s", o->message ? o->message : strerror(-o->r));
}

int reply_error(sd_bus_message *m, const char *name, const char *fmt, ...) {
        _cleanup_free_ char *s = NULL;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        e.name = name;
        e.message = s ? s : "Out of memory";
        r = sd_bus_reply_method_error(m, &e);
        if (r < 0)
                log_error("Failed to send an error reply: %s", strerror(-r));
        return r;
}

int set_error(sd_bus_error *e, const char *name, const char *fmt, ...) {
        _cleanup_free_ char *s = NULL;
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        return sd_bus_error_set(e, name, s ? s : "Out of memory");
}

int bus_append_strv_entry(sd_bus_message *m, const char *key, char type, const char *const *strv) {
        const char sig[] = { 'a', type, 0 };
        int r;

        assert(type == 's' || type == 'o');
        r = sd_bus_message_open_container(m, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", key);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'v', sig);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', sig + 1);
        for (; r >= 0 && strv && *strv; strv++)
                r = sd_bus_message_append_basic(m, type, *strv);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}
