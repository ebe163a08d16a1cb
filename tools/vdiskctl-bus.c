/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdiskctl's bus plumbing: connecting, method calls that keep dispatching
 * signals while they wait (so that an Operation's progress is never missed)
 * and that survive Ctrl-C where they must, the standard options, and the
 * mapping of D-Bus errors to messages and exit codes.
 */

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "vdiskctl.h"

/* ---------------------------------------------------------------- connecting */

int ctx_connect(Ctx *ctx) {
        sd_bus *bus = NULL;
        int r;

        switch (arg_transport) {
        case TRANSPORT_SYSTEM:
                r = sd_bus_open_system(&bus);
                break;
        case TRANSPORT_SESSION:
                r = sd_bus_open_user(&bus);
                break;
        case TRANSPORT_ADDRESS:
                r = sd_bus_new(&bus);
                if (r < 0)
                        break;
                r = sd_bus_set_address(bus, arg_address);
                if (r >= 0)
                        r = sd_bus_set_bus_client(bus, true);
                if (r >= 0)
                        r = sd_bus_negotiate_fds(bus, true);
                if (r >= 0)
                        r = sd_bus_start(bus);
                break;
        default:
                assert(false);
                r = -EINVAL;
        }
        if (r < 0) {
                sd_bus_unref(bus);
                if (arg_transport == TRANSPORT_ADDRESS)
                        log_error("Could not connect to the bus at %s: %s", arg_address, strerror(-r));
                else
                        log_error("Could not connect to the %s bus: %s",
                                  arg_transport == TRANSPORT_SYSTEM ? "system" : "session", strerror(-r));
                return EXIT_UNAVAILABLE;
        }
        *ctx = (Ctx) { .bus = bus };
        return 0;
}

void ctx_done(Ctx *ctx) {
        if (ctx->bus) {
                (void) sd_bus_flush(ctx->bus);
                ctx->bus = sd_bus_flush_close_unref(ctx->bus);
        }
        free(ctx->daemon);
        value_clear(&ctx->backends);
        *ctx = (Ctx) {};
}

static bool interactive(void) {
        return arg_ask_password && isatty(STDIN_FILENO);
}

int bus_name_owner(Ctx *ctx, char **ret) {
        sd_bus_creds *creds = NULL;
        const char *unique;
        int r;

        r = sd_bus_get_name_creds(ctx->bus, VDISK_BUS_NAME, SD_BUS_CREDS_UNIQUE_NAME, &creds);
        if (r < 0)
                return r;
        r = sd_bus_creds_get_unique_name(creds, &unique);
        if (r >= 0) {
                *ret = strdup(unique);
                if (!*ret)
                        r = -ENOMEM;
        }
        sd_bus_creds_unref(creds);
        return r;
}

int ctx_daemon_name(Ctx *ctx, const char **ret) {
        int r;

        if (!ctx->daemon) {
                r = bus_name_owner(ctx, &ctx->daemon);
                if (r < 0) {
                        /* Not running: a Ping through the well-known name
                         * starts it where the bus can activate it. */
                        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                        _cleanup_msg_ sd_bus_message *m = NULL, *reply = NULL;

                        r = sd_bus_message_new_method_call(ctx->bus, &m, VDISK_BUS_NAME, VDISK_PATH,
                                                           "org.freedesktop.DBus.Peer", "Ping");
                        if (r >= 0)
                                r = bus_call(ctx, m, 0, &error, &reply);
                        if (r >= 0)
                                r = bus_name_owner(ctx, &ctx->daemon);
                        if (r < 0)
                                return r;
                }
        }
        *ret = ctx->daemon;
        return 0;
}

/* ---------------------------------------------------------------- calls */

int bus_new_call(Ctx *ctx, const char *path, const char *iface, const char *member, sd_bus_message **ret) {
        sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(ctx->bus, &m, VDISK_BUS_NAME, path, iface, member);
        if (r < 0)
                return r;
        r = sd_bus_message_set_allow_interactive_authorization(m, interactive());
        if (r < 0) {
                sd_bus_message_unref(m);
                return r;
        }
        *ret = m;
        return 0;
}

int bus_options_open(sd_bus_message *m) {
        return sd_bus_message_open_container(m, 'a', "{sv}");
}

int bus_options_close(sd_bus_message *m) {
        int r;

        if (!arg_ask_password) {
                r = bus_append_opt_bool(m, "auth.no_user_interaction", true);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(m);
}

int bus_append_opt_bool(sd_bus_message *m, const char *key, bool v) {
        return sd_bus_message_append(m, "{sv}", key, "b", (int) v);
}

int bus_append_opt_string(sd_bus_message *m, const char *key, const char *v) {
        return sd_bus_message_append(m, "{sv}", key, "s", v);
}

int bus_append_opt_u64(sd_bus_message *m, const char *key, uint64_t v) {
        return sd_bus_message_append(m, "{sv}", key, "t", v);
}

int bus_new_simple_call(Ctx *ctx, const char *path, const char *iface, const char *member, sd_bus_message **ret,
                        const char *types, ...) {
        sd_bus_message *m = NULL;
        va_list ap;
        int r;

        r = bus_new_call(ctx, path, iface, member, &m);
        if (r >= 0 && types) {
                va_start(ap, types);
                r = sd_bus_message_appendv(m, types, ap);
                va_end(ap);
        }
        if (r >= 0)
                r = bus_options_open(m);
        if (r >= 0)
                r = bus_options_close(m);
        if (r < 0) {
                sd_bus_message_unref(m);
                return r;
        }
        *ret = m;
        return 0;
}

int log_build_failed(const char *what, int r) {
        if (what)
                log_error("%s: Could not build the request: %s", what, strerror(-r));
        else
                log_error("Could not build the request: %s", strerror(-r));
        return EXIT_FAILURE;
}

int bus_step(Ctx *ctx, uint64_t timeout_usec) {
        int r;

        r = sd_bus_process(ctx->bus, NULL);
        if (r == 0)
                r = sd_bus_wait(ctx->bus, timeout_usec);
        return r == -EINTR ? 0 : r;
}

typedef struct PendingCall {
        bool done;
        sd_bus_message *reply;
} PendingCall;

static int pending_call_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        PendingCall *p = userdata;

        p->done = true;
        p->reply = sd_bus_message_ref(m);
        return 1;
}

int bus_call(Ctx *ctx, sd_bus_message *m, unsigned flags, sd_bus_error *error, sd_bus_message **ret) {
        sd_bus_slot *slot = NULL;
        PendingCall p = {};
        uint64_t timeout = 0;
        unsigned signals_at_start = (unsigned) signals_received;
        int r;

        /* An interactive polkit dialog may take its time. */
        if (sd_bus_message_get_allow_interactive_authorization(m) > 0)
                timeout = UINT64_MAX;

        r = sd_bus_call_async(ctx->bus, &slot, m, pending_call_reply, &p, timeout);
        if (r < 0)
                return sd_bus_error_set_errno(error, r);

        while (!p.done) {
                unsigned sigs = (unsigned) signals_received - signals_at_start;

                /* Ctrl-C: give up, unless the caller must see the reply (it
                 * may name an Operation to cancel); a second one always. */
                if (sigs >= 2 || (sigs >= 1 && !(flags & CALL_UNINTERRUPTIBLE))) {
                        r = -EINTR;
                        break;
                }
                r = bus_step(ctx, UINT64_MAX);
                if (r < 0)
                        break;
        }
        sd_bus_slot_unref(slot);

        if (!p.done)
                return sd_bus_error_set_errno(error, r);
        if (sd_bus_message_is_method_error(p.reply, NULL)) {
                r = sd_bus_error_copy(error, sd_bus_message_get_error(p.reply));
                sd_bus_message_unref(p.reply);
                return r < 0 ? r : -EIO;
        }
        if (ret)
                *ret = p.reply;
        else
                sd_bus_message_unref(p.reply);
        return 0;
}

/* Calls iface.member (a freedesktop interface) on vdiskd's `path` with the
 * arguments `types`, and reads its whole reply into *ret. */
static int call_value(Ctx *ctx, const char *path, const char *iface, const char *member, sd_bus_error *error,
                      Value *ret, const char *types, ...) {
        _cleanup_msg_ sd_bus_message *m = NULL, *reply = NULL;
        va_list ap;
        int r;

        r = sd_bus_message_new_method_call(ctx->bus, &m, VDISK_BUS_NAME, path, iface, member);
        if (r >= 0 && types) {
                va_start(ap, types);
                r = sd_bus_message_appendv(m, types, ap);
                va_end(ap);
        }
        if (r < 0)
                return sd_bus_error_set_errno(error, r);
        r = bus_call(ctx, m, 0, error, &reply);
        if (r < 0)
                return r;
        r = value_read(reply, ret);
        if (r < 0)
                return sd_bus_error_set_errno(error, r);
        return 0;
}

int bus_get_all(Ctx *ctx, const char *path, const char *iface, sd_bus_error *error, Value *ret) {
        return call_value(ctx, path, "org.freedesktop.DBus.Properties", "GetAll", error, ret, "s", iface);
}

int bus_get_property(Ctx *ctx, const char *path, const char *iface, const char *name, sd_bus_error *error,
                     Value *ret) {
        return call_value(ctx, path, "org.freedesktop.DBus.Properties", "Get", error, ret, "ss", iface, name);
}

int bus_get_objects(Ctx *ctx, sd_bus_error *error, Value *ret) {
        return call_value(ctx, VDISK_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", error, ret,
                          NULL);
}

const Value *bus_backends(Ctx *ctx) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        if (ctx->have_backends)
                return &ctx->backends;
        r = bus_get_property(ctx, VDISK_PATH, VDISK_IFACE_MANAGER, "Backends", &error, &ctx->backends);
        if (r < 0 || ctx->backends.type != VALUE_ARRAY) {
                (void) log_bus_error("Could not ask vdiskd for its formats", &error, r);
                value_clear(&ctx->backends);
                return NULL;
        }
        ctx->have_backends = true;
        return &ctx->backends;
}

const Value *backend_find(Ctx *ctx, const char *name, const char **ret_name) {
        const Value *b = bus_backends(ctx);

        if (!b)
                return NULL;
        /* Each element is (s name, a{sv} info). */
        for (size_t i = 0; i < b->c.n; i++) {
                const Value *e = &b->c.items[i];
                const char *bname, *qname;

                if (e->type != VALUE_ARRAY || e->c.n != 2 || e->c.items[0].type != VALUE_STRING)
                        continue;
                bname = e->c.items[0].s;
                qname = value_str(&e->c.items[1], "qemu-name", "");
                if (strcasecmp(name, bname) == 0 || strcasecmp(name, qname) == 0) {
                        if (ret_name)
                                *ret_name = bname;
                        return &e->c.items[1];
                }
        }
        return NULL;
}

/* ---------------------------------------------------------------- errors */

bool error_is(const sd_bus_error *error, const char *short_name) {
        size_t n = strlen(VDISK_ERROR_PREFIX);

        return error && error->name && strncmp(error->name, VDISK_ERROR_PREFIX, n) == 0 &&
               streq(error->name + n, short_name);
}

int exit_code_from_error(const sd_bus_error *error, int r) {
        static const struct {
                const char *name;
                int code;
        } table[] = {
                { SD_BUS_ERROR_ACCESS_DENIED,                      EXIT_PERMISSION },
                { SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED, EXIT_PERMISSION },
                { VDISK_ERROR_PREFIX "NotAuthorizedDismissed",     EXIT_PERMISSION },
                { VDISK_ERROR_PREFIX "FileNeeded",                 EXIT_NOT_FOUND },
                { SD_BUS_ERROR_UNKNOWN_OBJECT,                     EXIT_NOT_FOUND },
                { VDISK_ERROR_PREFIX "NotSupported",               EXIT_NOT_SUPPORTED },
                { VDISK_ERROR_PREFIX "UnknownFormat",              EXIT_NOT_SUPPORTED },
                { SD_BUS_ERROR_UNKNOWN_METHOD,                     EXIT_NOT_SUPPORTED },
                { VDISK_ERROR_PREFIX "Busy",                       EXIT_BUSY },
                { SD_BUS_ERROR_LIMITS_EXCEEDED,                    EXIT_BUSY },
                { VDISK_ERROR_PREFIX "Cancelled",                  EXIT_CANCELLED },
                { VDISK_ERROR_PREFIX "ServiceStopping",            EXIT_UNAVAILABLE },
                { SD_BUS_ERROR_SERVICE_UNKNOWN,                    EXIT_UNAVAILABLE },
                { SD_BUS_ERROR_NAME_HAS_NO_OWNER,                  EXIT_UNAVAILABLE },
                { SD_BUS_ERROR_NO_REPLY,                           EXIT_UNAVAILABLE },
                { SD_BUS_ERROR_DISCONNECTED,                       EXIT_UNAVAILABLE },
                { "org.freedesktop.DBus.Error.Spawn.Failed",       EXIT_UNAVAILABLE },
        };

        if (error && error->name)
                for (size_t i = 0; i < ELEMENTSOF(table); i++)
                        if (streq(error->name, table[i].name))
                                return table[i].code;
        if (error && sd_bus_error_is_set(error) && !sd_bus_error_has_name(error, SD_BUS_ERROR_FAILED) &&
            strncmp(error->name, "System.Error.", 13) != 0)
                return EXIT_FAILURE;

        switch (r < 0 ? -r : r) {
        case EINTR:
        case ECANCELED:
                return EXIT_CANCELLED;
        case EACCES:
        case EPERM:
                return EXIT_PERMISSION;
        case ENOENT:
                return EXIT_NOT_FOUND;
        case ECONNREFUSED:
        case ECONNRESET:
        case ENOTCONN:
        case EPIPE:
        case ETIMEDOUT:
                return EXIT_UNAVAILABLE;
        default:
                return EXIT_FAILURE;
        }
}

int log_bus_error(const char *what, const sd_bus_error *error, int r) {
        const char *msg = NULL;

        if (error && sd_bus_error_is_set(error))
                msg = error->message && *error->message ? error->message : error->name;
        if (!msg)
                msg = r == -EINTR ? "Interrupted" : strerror(r < 0 ? -r : r);

        if (sd_bus_error_has_names(error, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                log_error("%s: vdiskd is not running on this bus (%s)", what, msg);
        else if (sd_bus_error_has_names(error, SD_BUS_ERROR_NO_REPLY, SD_BUS_ERROR_DISCONNECTED))
                log_error("%s: vdiskd did not answer (%s)", what, msg);
        else if (sd_bus_error_has_name(error, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED))
                log_error("%s: %s (authentication is needed: run vdiskctl from a terminal without "
                          "--no-ask-password)", what, msg);
        else
                log_error("%s: %s", what, msg);
        return exit_code_from_error(error, r);
}
