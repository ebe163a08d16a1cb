/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Following an Operation until it ends.
 *
 * The order matters, so that a fast operation is never missed and a slow one
 * never hangs vdiskctl:
 *
 *   1. op_watch_start() subscribes to PropertiesChanged and Completed of
 *      every Operation of vdiskd (by its unique name), before the method that
 *      starts the operation is called;
 *   2. the method returns the Operation's path; signals that came before the
 *      reply are dispatched only now, when the path is known;
 *   3. op_follow() calls Operation.Wait (no timeout: the authoritative end,
 *      also when vdiskd goes away, since the bus then answers NoReply), reads
 *      the properties once (catches an operation that ended before we
 *      looked), then shows the progress the signals bring until Completed,
 *      a terminal State or the Wait reply, whichever comes first;
 *   4. a last GetAll picks up the final Result (check reports).
 *
 * Ctrl-C sends Operation.Cancel and keeps waiting, so the daemon's cleanup
 * (truncating an output, keeping every image valid) is done when vdiskctl
 * returns; a second Ctrl-C stops waiting.
 */

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "vdiskctl.h"

#define PROGRESS_REDRAW_USEC 250000u
#define QUEUED_QUIET_USEC 1000000u

static bool state_terminal(const char *s) {
        return s && (streq(s, "succeeded") || streq(s, "failed") || streq(s, "cancelled"));
}

static int set_string(char **p, const char *s) {
        char *c = strdup(s);

        if (!c)
                return -ENOMEM;
        free(*p);
        *p = c;
        return 0;
}

static void op_state_set_end(OpState *st, const char *state, const char *name, const char *message) {
        (void) set_string(&st->state, state);
        (void) set_string(&st->error_name, name);
        (void) set_string(&st->error_message, message);
}

/* Takes the values it keeps (Result) out of props. */
static void op_state_update(OpState *st, Value *props) {
        Value *v;

        for (size_t i = 0; props && props->type == VALUE_DICT && i < props->c.n; i++) {
                const char *key = props->c.keys[i];

                v = &props->c.items[i];
                if (streq(key, "State") && v->type == VALUE_STRING)
                        (void) set_string(&st->state, v->s);
                else if (streq(key, "ErrorName") && v->type == VALUE_STRING)
                        (void) set_string(&st->error_name, v->s);
                else if (streq(key, "ErrorMessage") && v->type == VALUE_STRING)
                        (void) set_string(&st->error_message, v->s);
                else if (streq(key, "Progress") && v->type == VALUE_DOUBLE)
                        st->progress = v->d;
                else if (streq(key, "BytesDone") && v->type == VALUE_UINT)
                        st->bytes_done = v->u;
                else if (streq(key, "BytesTotal") && v->type == VALUE_UINT)
                        st->bytes_total = v->u;
                else if (streq(key, "Rate") && v->type == VALUE_UINT)
                        st->rate = v->u;
                else if (streq(key, "ExpectedEndTime") && v->type == VALUE_UINT)
                        st->expected_end = v->u;
                else if (streq(key, "Result") && v->type == VALUE_DICT) {
                        value_clear(&st->result);
                        st->result = *v;
                        *v = (Value) {};
                }
        }
        if (state_terminal(st->state))
                st->ended = true;
}

/* ---------------------------------------------------------------- progress bar */

static void format_duration(uint64_t sec, char buf[static 32]) {
        if (sec >= 3600)
                snprintf(buf, 32, "%" PRIu64 ":%02u:%02u", sec / 3600, (unsigned) (sec / 60 % 60),
                         (unsigned) (sec % 60));
        else
                snprintf(buf, 32, "%u:%02u", (unsigned) (sec / 60), (unsigned) (sec % 60));
}

static void bar_draw(OpWatch *w, bool final) {
        const OpState *st = &w->st;
        char line[256], a[32], b[32], c[32];
        size_t len;
        int n;

        if (!w->progress)
                return;
        /* Most operations leave the queue at once: say "queued" only when
         * it lasts. */
        if (!final && streq_ptr(st->state, "queued") && now_usec() - w->follow_start < QUEUED_QUIET_USEC)
                return;
        if (st->state && streq(st->state, "queued"))
                n = snprintf(line, sizeof line, "queued (waiting for a free worker)");
        else {
                n = snprintf(line, sizeof line, "%5.1f%%", st->progress * 100.0);
                if (st->bytes_total > 0) {
                        format_size(st->bytes_done, a);
                        format_size(st->bytes_total, b);
                        n += snprintf(line + n, sizeof line - (size_t) n, "  %s / %s", a, b);
                }
                if (!final && st->rate > 0) {
                        format_size(st->rate, c);
                        n += snprintf(line + n, sizeof line - (size_t) n, "  %s/s", c);
                }
                if (!final && st->expected_end > 0) {
                        uint64_t now = now_usec();

                        format_duration(
                                st->expected_end > now ? (st->expected_end - now + 999999) / 1000000 : 0, c);
                        n += snprintf(line + n, sizeof line - (size_t) n, "  ETA %s", c);
                }
                if (st->state && streq(st->state, "cancelling"))
                        n += snprintf(line + n, sizeof line - (size_t) n, "  (cancelling)");
        }
        len = n > 0 ? MIN((size_t) n, sizeof line - 1) : 0;
        /* Overwrite what the previous line left. */
        fprintf(stderr, "\r%s%*s", line, w->bar_len > len ? (int) (w->bar_len - len) : 0, "");
        if (final)
                fputc('\n', stderr);
        fflush(stderr);
        w->bar_len = final ? 0 : len;
        w->bar_shown = !final;
}

/* ---------------------------------------------------------------- signals */

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        OpWatch *w = userdata;
        _cleanup_value_ Value changed = {};
        const char *iface;

        if (!w->st.path || !streq_ptr(sd_bus_message_get_path(m), w->st.path))
                return 0;
        if (sd_bus_message_read(m, "s", &iface) < 0 || !streq(iface, VDISK_IFACE_OPERATION))
                return 0;
        if (value_read(m, &changed) < 0)
                return 0;
        op_state_update(&w->st, &changed);
        if (!w->st.ended)
                bar_draw(w, false);
        return 0;
}

static int on_completed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        OpWatch *w = userdata;
        const char *state, *name, *message;

        if (!w->st.path || !streq_ptr(sd_bus_message_get_path(m), w->st.path))
                return 0;
        if (sd_bus_message_read(m, "sss", &state, &name, &message) < 0)
                return 0;
        op_state_set_end(&w->st, state, name, message);
        w->st.ended = true;
        return 0;
}

/* Wait replies (state, error_name, error_message) like Completed; an error
 * reply is about the Wait call itself. */
static int on_wait_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        OpWatch *w = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        const char *state, *name, *message;

        if (e && sd_bus_error_has_name(e, SD_BUS_ERROR_LIMITS_EXCEEDED))
                return 1;   /* too many waiters: the signals still tell the end */
        if (!e && sd_bus_message_read(m, "sss", &state, &name, &message) >= 0 && state_terminal(state)) {
                if (!state_terminal(w->st.state))
                        op_state_set_end(&w->st, state, name, message);
        } else if (!state_terminal(w->st.state)) {
                /* Ended (or vdiskd went away) without us seeing the final properties. */
                bool cancelled = e && (error_is(e, "Cancelled") || error_is(e, "ServiceStopping"));

                op_state_set_end(&w->st, cancelled ? "cancelled" : "failed", e && e->name ? e->name : "",
                                 e && e->message ? e->message : "malformed Wait reply");
        }
        w->st.ended = true;
        return 1;
}

static int on_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        OpWatch *w = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0)
                return 0;
        if (w->ctx->daemon && streq(old_owner, w->ctx->daemon))
                w->daemon_gone = true;
        return 0;
}

/* Subscribes to the signals of operations; call before the method that
 * starts one, so that no signal is missed. */
static int op_watch_start(Ctx *ctx, bool progress, OpWatch *ret) {
        _cleanup_free_ char *rule_props = NULL, *rule_completed = NULL;
        const char *daemon;
        int r;

        *ret = (OpWatch) { .ctx = ctx, .progress = progress && !arg_quiet };

        r = ctx_daemon_name(ctx, &daemon);
        if (r < 0) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;

                sd_bus_error_set_const(&error, SD_BUS_ERROR_SERVICE_UNKNOWN, "no owner of " VDISK_BUS_NAME);
                return log_bus_error("Could not reach vdiskd", &error, r);
        }
        if (asprintf(&rule_props,
                     "type='signal',sender='%s',interface='org.freedesktop.DBus.Properties',"
                     "member='PropertiesChanged',path_namespace='" VDISK_PATH "/operation',"
                     "arg0='" VDISK_IFACE_OPERATION "'", daemon) < 0 ||
            asprintf(&rule_completed,
                     "type='signal',sender='%s',interface='" VDISK_IFACE_OPERATION "',member='Completed'",
                     daemon) < 0)
                return log_oom();

        /* sd_bus_add_match() waits until the bus has installed the rule. */
        r = sd_bus_add_match(ctx->bus, &ret->props_slot, rule_props, on_properties_changed, ret);
        if (r >= 0)
                r = sd_bus_add_match(ctx->bus, &ret->completed_slot, rule_completed, on_completed, ret);
        if (r >= 0)
                r = sd_bus_add_match(
                        ctx->bus, &ret->owner_slot,
                        "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                        "interface='org.freedesktop.DBus',member='NameOwnerChanged',"
                        "arg0='" VDISK_BUS_NAME "'",
                        on_owner_changed, ret);
        if (r < 0) {
                log_error("Could not subscribe to vdiskd's signals: %s", strerror(-r));
                op_watch_done(ret);
                return EXIT_FAILURE;
        }
        return 0;
}

void op_watch_done(OpWatch *w) {
        if (w->bar_shown)
                bar_draw(w, true);
        w->props_slot = sd_bus_slot_unref(w->props_slot);
        w->completed_slot = sd_bus_slot_unref(w->completed_slot);
        w->wait_slot = sd_bus_slot_unref(w->wait_slot);
        w->owner_slot = sd_bus_slot_unref(w->owner_slot);
        free(w->st.path);
        free(w->st.state);
        free(w->st.error_name);
        free(w->st.error_message);
        value_clear(&w->st.result);
        w->st = (OpState) {};
}

static int send_wait(OpWatch *w) {
        _cleanup_msg_ sd_bus_message *m = NULL;
        int r;

        r = bus_new_simple_call(w->ctx, w->st.path, VDISK_IFACE_OPERATION, "Wait", &m, NULL);
        if (r >= 0)
                r = sd_bus_call_async(w->ctx->bus, &w->wait_slot, m, on_wait_reply, w, UINT64_MAX);
        return r;
}

static void send_cancel(OpWatch *w) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_msg_ sd_bus_message *m = NULL;
        int r;

        w->st.cancel_sent = true;
        if (w->bar_shown) {
                fputc('\n', stderr);
                w->bar_shown = false;
                w->bar_len = 0;
        }
        if (!arg_quiet)
                fprintf(stderr, "Cancelling %s (press Ctrl-C again to stop waiting)...\n",
                        object_short(w->st.path));

        r = bus_new_simple_call(w->ctx, w->st.path, VDISK_IFACE_OPERATION, "Cancel", &m, NULL);
        if (r >= 0)
                r = bus_call(w->ctx, m, CALL_UNINTERRUPTIBLE, &error, NULL);
        if (r >= 0 || w->st.ended)
                return;   /* (an operation that ended meanwhile is no news) */
        if (error_is(&error, "NotCancelable"))
                log_warning("%s cannot be cancelled in this phase; waiting for it to end",
                            object_short(w->st.path));
        else if (!sd_bus_error_has_name(&error, SD_BUS_ERROR_UNKNOWN_OBJECT))
                (void) log_bus_error("Could not cancel the operation", &error, r);
}

static int refresh(OpWatch *w) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_value_ Value props = {};
        int r;

        r = bus_get_all(w->ctx, w->st.path, VDISK_IFACE_OPERATION, &error, &props);
        if (r < 0)
                return r;
        op_state_update(&w->st, &props);
        return 0;
}

/* Follows the operation at `path` until it ends. Ctrl-C sends Cancel and
 * keeps waiting; a second Ctrl-C stops waiting. Returns 0 on success,
 * -ECANCELED when cancelled, -EIO when it failed (st has the error), another
 * negative errno when following failed (logged). */
static int op_follow(OpWatch *w, const char *path) {
        unsigned sigs_handled = 0;
        uint64_t last_draw = 0;
        int r;

        w->follow_start = now_usec();
        w->st.path = strdup(path);
        if (!w->st.path) {
                log_error("Out of memory");
                return -ENOMEM;
        }

        r = send_wait(w);
        if (r < 0) {
                log_error("Could not follow %s: %s", object_short(path), strerror(-r));
                return r;
        }
        /* Signals queued before the reply are dispatched from here on. */
        (void) refresh(w);

        while (!w->st.ended) {
                uint64_t now;

                if ((unsigned) signals_received > sigs_handled) {
                        sigs_handled = (unsigned) signals_received;
                        if (!w->st.cancel_sent)
                                send_cancel(w);
                        else {
                                if (w->bar_shown)
                                        bar_draw(w, true);
                                log_error("Not waiting for %s to end; it goes on in vdiskd "
                                          "(see 'vdiskctl status %s')",
                                          object_short(path), object_short(path));
                                return -EINTR;
                        }
                        continue;
                }
                if (w->daemon_gone) {
                        /* The Wait reply (NoReply) is on its way; do not rely on it. */
                        if (w->bar_shown)
                                bar_draw(w, true);
                        log_error("vdiskd went away while %s was running", object_short(path));
                        return -ECONNRESET;
                }

                now = now_usec();
                if (now - last_draw >= PROGRESS_REDRAW_USEC) {
                        bar_draw(w, false);
                        last_draw = now;
                }

                r = bus_step(w->ctx, PROGRESS_REDRAW_USEC);
                if (r < 0) {
                        log_error("Lost the connection to the bus: %s", strerror(-r));
                        return r;
                }
        }

        /* The final properties, for the Result; the operation lingers. A
         * bar asked for shows its last state even when the operation ended
         * before the first redraw (as qemu-img -p prints 100%). */
        (void) refresh(w);
        if (w->bar_shown || w->progress)
                bar_draw(w, true);

        if (streq_ptr(w->st.state, "succeeded"))
                return 0;
        if (streq_ptr(w->st.state, "cancelled"))
                return -ECANCELED;
        return -EIO;
}

int op_finish(OpWatch *w, const char *what, int r) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *name = w->st.error_name && *w->st.error_name ? w->st.error_name : NULL;
        const char *msg = w->st.error_message && *w->st.error_message ? w->st.error_message : NULL;

        if (r >= 0)
                return r;
        if (r == -ECANCELED) {
                if (msg)
                        log_error("%s: cancelled (%s)", what, msg);
                else
                        log_error("%s: cancelled", what);
                return EXIT_CANCELLED;
        }
        if (r == -EINTR)
                return EXIT_CANCELLED;
        if (r != -EIO)
                return exit_code_from_error(NULL, r);

        sd_bus_error_set_const(&error, name ? name : VDISK_ERROR_PREFIX "Failed", msg);
        log_error("%s: %s", what, msg ? msg : name ? name : "the operation failed");
        return exit_code_from_error(&error, -EIO);
}

bool progress_wanted(bool forced) {
        if (arg_quiet)
                return false;
        return forced || isatty(STDERR_FILENO);
}

int op_run(Ctx *ctx, sd_bus_message *m, bool progress, const char *what, OpWatch *w) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_msg_ sd_bus_message *reply = NULL;
        const char *path;
        int r;

        r = op_watch_start(ctx, progress, w);
        if (r != 0)
                return r;
        if (signals_received > 0) {
                log_error("%s: interrupted", what);
                return EXIT_CANCELLED;
        }
        /* Once sent, the reply must be seen: it names the operation that
         * Ctrl-C then cancels. */
        r = bus_call(ctx, m, CALL_UNINTERRUPTIBLE, &error, &reply);
        if (r < 0)
                return log_bus_error(what, &error, r);
        r = sd_bus_message_read(reply, "o", &path);
        if (r < 0) {
                log_error("%s: Bad reply from vdiskd", what);
                return EXIT_FAILURE;
        }
        r = op_follow(w, path);
        if (r == -EIO || r == -ECANCELED || r == -EINTR)
                return r;
        if (r < 0)
                return exit_code_from_error(NULL, r);
        return 0;
}
