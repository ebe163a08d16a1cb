/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * --bus-introspect: the introspection XML of our interfaces, generated from
 * the same sd_bus_vtable arrays the bus serves and written in the shape
 * sd-bus's own Introspect uses, so the two can be compared.
 */
#include <stdio.h>
#include <string.h>

#include "vdiskd.h"

static const struct {
        const char *name;
        const sd_bus_vtable *vtable;
} interfaces[] = {
        { IFACE_MANAGER, manager_vtable },
        { IFACE_DISK, disk_vtable },
        { IFACE_IMAGE, image_vtable },
        { IFACE_OPERATION, operation_vtable },
        { IFACE_FILE_SET, file_set_vtable },
};

/* Length of the single complete type at the start of s (0 on error). */
static size_t complete_type_length(const char *s) {
        switch (*s) {
        case 0:
                return 0;
        case 'a': {
                size_t l = complete_type_length(s + 1);
                return l ? l + 1 : 0;
        }
        case '(':
        case '{': {
                char close = *s == '(' ? ')' : '}';
                size_t n = 1;

                while (s[n] && s[n] != close) {
                        size_t l = complete_type_length(s + n);
                        if (l == 0)
                                return 0;
                        n += l;
                }
                return s[n] ? n + 1 : 0;
        }
        default:
                return 1;
        }
}

static void write_args(FILE *f, const char *signature, const char **names, const char *direction) {
        while (signature && *signature) {
                size_t l = complete_type_length(signature);

                if (l == 0)
                        return;
                fprintf(f, "   <arg type=\"%.*s\"", (int) l, signature);
                if (**names) {
                        fprintf(f, " name=\"%s\"", *names);
                        *names += strlen(*names) + 1;
                }
                if (direction)
                        fprintf(f, " direction=\"%s\"/>\n", direction);
                else
                        fputs("/>\n", f);
                signature += l;
        }
}

static void write_flags(FILE *f, int type, uint64_t flags) {
        if (flags & SD_BUS_VTABLE_DEPRECATED)
                fputs("   <annotation name=\"org.freedesktop.DBus.Deprecated\" value=\"true\"/>\n", f);
        if (type == _SD_BUS_VTABLE_METHOD && (flags & SD_BUS_VTABLE_METHOD_NO_REPLY))
                fputs("   <annotation name=\"org.freedesktop.DBus.Method.NoReply\" value=\"true\"/>\n", f);
        if (type == _SD_BUS_VTABLE_PROPERTY || type == _SD_BUS_VTABLE_WRITABLE_PROPERTY) {
                if (flags & SD_BUS_VTABLE_PROPERTY_EXPLICIT)
                        fputs("   <annotation name=\"org.freedesktop.systemd1.Explicit\" value=\"true\"/>\n", f);
                if (flags & SD_BUS_VTABLE_PROPERTY_CONST)
                        fputs("   <annotation name=\"org.freedesktop.DBus.Property.EmitsChangedSignal\" "
                              "value=\"const\"/>\n", f);
                else if (flags & SD_BUS_VTABLE_PROPERTY_EMITS_INVALIDATION)
                        fputs("   <annotation name=\"org.freedesktop.DBus.Property.EmitsChangedSignal\" "
                              "value=\"invalidates\"/>\n", f);
                else if (!(flags & SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE))
                        fputs("   <annotation name=\"org.freedesktop.DBus.Property.EmitsChangedSignal\" "
                              "value=\"false\"/>\n", f);
        }
        if ((type == _SD_BUS_VTABLE_METHOD || type == _SD_BUS_VTABLE_WRITABLE_PROPERTY) &&
            !(flags & SD_BUS_VTABLE_UNPRIVILEGED))
                fputs("   <annotation name=\"org.freedesktop.systemd1.Privileged\" value=\"true\"/>\n", f);
}

static void write_interface(FILE *f, const char *name, const sd_bus_vtable *v) {
        fprintf(f, " <interface name=\"%s\">\n", name);
        for (; v->type != _SD_BUS_VTABLE_END; v++) {
                const char *names = "";

                if (v->type != _SD_BUS_VTABLE_START && (v->flags & SD_BUS_VTABLE_HIDDEN))
                        continue;
                switch (v->type) {
                case _SD_BUS_VTABLE_START:
                        if (v->flags & SD_BUS_VTABLE_DEPRECATED)
                                fputs("  <annotation name=\"org.freedesktop.DBus.Deprecated\" value=\"true\"/>\n", f);
                        break;
                case _SD_BUS_VTABLE_METHOD:
                        fprintf(f, "  <method name=\"%s\">\n", v->x.method.member);
                        names = v->x.method.names ?: "";
                        write_args(f, v->x.method.signature, &names, "in");
                        write_args(f, v->x.method.result, &names, "out");
                        write_flags(f, v->type, v->flags);
                        fputs("  </method>\n", f);
                        break;
                case _SD_BUS_VTABLE_PROPERTY:
                case _SD_BUS_VTABLE_WRITABLE_PROPERTY:
                        fprintf(f, "  <property name=\"%s\" type=\"%s\" access=\"%s\">\n", v->x.property.member,
                                v->x.property.signature,
                                v->type == _SD_BUS_VTABLE_WRITABLE_PROPERTY ? "readwrite" : "read");
                        write_flags(f, v->type, v->flags);
                        fputs("  </property>\n", f);
                        break;
                case _SD_BUS_VTABLE_SIGNAL:
                        fprintf(f, "  <signal name=\"%s\">\n", v->x.signal.member);
                        names = v->x.signal.names ?: "";
                        write_args(f, v->x.signal.signature, &names, NULL);
                        write_flags(f, v->type, v->flags);
                        fputs("  </signal>\n", f);
                        break;
                }
        }
        fputs(" </interface>\n", f);
}

int introspect_print(const char *interface) {
        if (streq(interface, "list")) {
                for (size_t i = 0; i < ELEMENTSOF(interfaces); i++)
                        printf("%s\n", interfaces[i].name);
                return 0;
        }
        for (size_t i = 0; i < ELEMENTSOF(interfaces); i++) {
                if (!streq(interfaces[i].name, interface))
                        continue;
                fputs("<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n"
                      "\"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n"
                      "<node>\n", stdout);
                write_interface(stdout, interfaces[i].name, interfaces[i].vtable);
                fputs("</node>\n", stdout);
                return fflush(stdout) == 0 ? 0 : -EIO;
        }
        log_error("Unknown interface '%s' (try --bus-introspect=list).", interface);
        return -EINVAL;
}
