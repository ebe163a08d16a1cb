/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The backend table: explicit and immutable; probe order is table order
 * (RAW last: it matches anything). */
#include <strings.h>

#include "core/core.h"

static const vdisk_backend *const backends[] = {
        &backend_vdi,
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
