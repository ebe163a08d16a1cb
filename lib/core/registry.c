/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The backend table: explicit and immutable; probe order is table order
 * (RAW last: it matches anything). */
#include <string.h>
#include <strings.h>

#include "core/core.h"

static const vdisk_backend *const backends[] = {
        &backend_vdi,
        &backend_vhd,
        &backend_vmdk,
        &backend_qcow,      /* "QFI\xfb" version 1; QCOW2 takes the others */
        &backend_qcow2,
        &backend_qed,
        &backend_raw,
};

size_t backend_table_size(void) {
        return ELEMENTSOF(backends);
}

const vdisk_backend *backend_table_get(size_t i) {
        return i < ELEMENTSOF(backends) ? backends[i] : NULL;
}

const vdisk_backend *backend_lookup(const char *name) {
        if (!name)
                return NULL;
        for (size_t i = 0; i < ELEMENTSOF(backends); i++) {
                const vdisk_backend *be = backends[i];

                if (strcasecmp(name, be->info.name) == 0 || strcasecmp(name, be->info.qemu_name) == 0)
                        return be;
                for (const char *const *a = be->aliases; a && *a; a++)
                        if (strcasecmp(name, *a) == 0)
                                return be;
        }
        return NULL;
}

const vdisk_backend *backend_from_info(const vdisk_backend_info *info) {
        for (size_t i = 0; i < ELEMENTSOF(backends); i++)
                if (&backends[i]->info == info)
                        return backends[i];
        return NULL;
}

size_t vdisk_backend_count(void) {
        return ELEMENTSOF(backends);
}

const vdisk_backend_info *vdisk_backend_get(size_t index) {
        return index < ELEMENTSOF(backends) ? &backends[index]->info : NULL;
}

const vdisk_backend_info *vdisk_backend_find(const char *name) {
        const vdisk_backend *be = backend_lookup(name);
        return be ? &be->info : NULL;
}

const vdisk_option_desc *vdisk_backend_option(const vdisk_backend_info *info, const char *key) {
        if (!info || !key)
                return NULL;
        for (const vdisk_option_desc *o = info->create_options; o && o->name; o++)
                if (streq(o->name, key))
                        return o;
        /* qemu's file layer options, which every writable format takes */
        return prealloc_file_option(backend_from_info(info), key);
}

/* Keys every creator passes as arguments of their own, never as options. */
static bool option_is_generic(const char *key) {
        return streq(key, "size") || streq(key, "backing_file") || streq(key, "backing_fmt");
}

static bool is_decimal(const char *v) {
        return v[0] && strspn(v, "0123456789") == strlen(v);
}

int backend_check_options(const vdisk_backend *be, const char *const *options) {
        for (const char *const *o = options; o && o[0]; o += 2) {
                const vdisk_option_desc *d = vdisk_backend_option(&be->info, o[0]);
                const char *v = o[1];

                if (!v)
                        return vdisk_error(-EINVAL, "%s: option '%s' has no value", be->info.qemu_name, o[0]);
                if (!d || option_is_generic(o[0]))
                        return vdisk_error(-EINVAL, "%s: unknown option '%s'", be->info.qemu_name, o[0]);
                switch (d->type) {
                case VDISK_OPTION_BOOL:
                        if (!streq(v, "on") && !streq(v, "off"))
                                return vdisk_error(-EINVAL, "%s: option '%s' takes on or off, not '%s'",
                                                   be->info.qemu_name, o[0], v);
                        break;
                case VDISK_OPTION_SIZE:
                case VDISK_OPTION_NUMBER:
                        if (!is_decimal(v) || strlen(v) > 20)
                                return vdisk_error(-EINVAL, "%s: option '%s' takes a number of %s, not '%s'",
                                                   be->info.qemu_name, o[0],
                                                   d->type == VDISK_OPTION_SIZE ? "bytes" : "units", v);
                        break;
                case VDISK_OPTION_STRING:
                        break;
                }
        }
        return 0;
}
