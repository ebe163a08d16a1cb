/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * polkit, asynchronously: CheckAuthorization((sa{sv})sa{ss}us) for the
 * subject ("system-bus-name", {"name": sender}). The call stays parked (its
 * message referenced) until polkit answers; meanwhile the main loop serves
 * everyone else. A polkit that is missing or fails means AccessDenied.
 */
#include <stdio.h>
#include <string.h>

#include "vdiskd.h"

#define POLKIT_INTERACTIVE_TIMEOUT_USEC (300u * 1000000u)
/* A check that only widens a call (GetManagedObjects listing everyone's
 * objects): a polkit that does not answer soon gives the narrow answer. */
#define POLKIT_SOFT_TIMEOUT_USEC (5u * 1000000u)

/* Peeks at the first field of a CheckAuthorization reply. */
static bool polkit_authorized(sd_bus_message *reply) {
        int authorized = 0, r;

        r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
        if (r >= 0)
                r = sd_bus_message_read(reply, "b", &authorized);
        (void) sd_bus_message_rewind(reply, true);
        return r >= 0 && authorized;
}

static int on_polkit_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        Call *c = userdata;
        int authorized, challenge, r;
        bool dismissed = false;

        c->slot = sd_bus_slot_unref(c->slot);
        if (c->auth_soft && (sd_bus_message_is_method_error(reply, NULL) || !polkit_authorized(reply))) {
                /* A check that only widens what the call does: refused, it
                 * runs the narrower way. */
                c->auth_soft = false;
                c->auth_refused = true;
                call_rerun(c);
                return 0;
        }
        if (sd_bus_message_is_method_error(reply, NULL)) {
                const sd_bus_error *e = sd_bus_message_get_error(reply);

                log_error("polkit check failed: %s", e && e->message ? e->message : "unknown error");
                call_fail(c, 0, SD_BUS_ERROR_ACCESS_DENIED, "Access denied: the authorization check failed");
                return 0;
        }
        r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
        if (r >= 0)
                r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', "{ss}");
        while (r >= 0) {
                const char *k, *v;

                r = sd_bus_message_read(reply, "{ss}", &k, &v);
                if (r <= 0)
                        break;
                if (streq(k, "polkit.dismissed") && streq(v, "true"))
                        dismissed = true;
        }
        if (r < 0) {
                call_fail(c, 0, SD_BUS_ERROR_ACCESS_DENIED, "Access denied: malformed authorization reply");
                return 0;
        }
        if (authorized) {
                call_auth_granted(c);
                return 0;
        }
        if (dismissed)
                call_fail(c, 0, ERROR_PREFIX "NotAuthorizedDismissed", "The authentication dialog was dismissed");
        else if (challenge && !c->auth_interactive)
                call_fail(c, 0, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED,
                          "Interactive authentication required");
        else
                call_fail(c, 0, SD_BUS_ERROR_ACCESS_DENIED, "Access denied");
        return 0;
}

static const char *action_verb(const char *action) {
        if (streq(action, "org.vdisk.vdisk1.manage-other-user"))
                return "act on another user's virtual disk";
        if (streq(action, "org.vdisk.vdisk1.cancel-other-user"))
                return "stop another user's disk operation";
        if (streq(action, "org.vdisk.vdisk1.modify"))
                return "modify a virtual disk image";
        return "open a virtual disk image";
}

int auth_check(Call *c, const char *action, uid_t owner, const char *format, const char *display_name,
               const char *new_format, const char *new_display_name) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *message = NULL;
        char owner_text[32];
        const char *shown;
        bool interactive;
        const char *sender = sd_bus_message_get_sender(c->message);
        int r;

        if (!sender)
                return -EPERM;
        interactive = sd_bus_message_get_allow_interactive_authorization(c->message) &&
                      !c->options.no_user_interaction;
        c->auth_interactive = interactive;
        snprintf(owner_text, sizeof owner_text, "%u", (unsigned) owner);
        /* The dialog names the object acted on; only a method without one
         * (CreateDisk, OpenDisk) shows the name the caller chose. */
        shown = display_name && display_name[0] ? display_name : new_display_name;
        if (shown && shown[0])
                r = asprintf(&message, "Authentication is required to %s (%s “%s”)", action_verb(action),
                             c->spec->operation, shown);
        else
                r = asprintf(&message, "Authentication is required to %s (%s)", action_verb(action),
                             c->spec->operation);
        if (r < 0)
                return -ENOMEM;

        r = sd_bus_message_new_method_call(c->manager->bus, &m, "org.freedesktop.PolicyKit1",
                                           "/org/freedesktop/PolicyKit1/Authority",
                                           "org.freedesktop.PolicyKit1.Authority", "CheckAuthorization");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "(sa{sv})s", "system-bus-name", 1, "name", "s", sender, action);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(m, 'a', "{ss}");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "{ss}{ss}{ss}", "operation", c->spec->operation, "owner-uid", owner_text,
                                  "polkit.message", message);
        if (r >= 0 && format && format[0])
                r = sd_bus_message_append(m, "{ss}", "format", format);
        if (r >= 0 && display_name && display_name[0])
                r = sd_bus_message_append(m, "{ss}", "display-name", display_name);
        if (r >= 0 && new_format && new_format[0])
                r = sd_bus_message_append(m, "{ss}", "new-format", new_format);
        if (r >= 0 && new_display_name && new_display_name[0])
                r = sd_bus_message_append(m, "{ss}", "new-display-name", new_display_name);
        if (r < 0)
                return r;
        r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "us", (uint32_t) (interactive ? 1 : 0), "");
        if (r < 0)
                return r;
        r = sd_bus_call_async(c->manager->bus, &c->slot, m, on_polkit_reply, c,
                              c->auth_soft ? POLKIT_SOFT_TIMEOUT_USEC :
                              interactive ? POLKIT_INTERACTIVE_TIMEOUT_USEC : 0);
        if (r < 0)
                return r;
        return 0;
}
