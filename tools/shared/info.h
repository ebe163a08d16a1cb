/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* qemu-img info's human and JSON output, once for both tools: vdisk-img
 * fills an InfoView from libvdisk's image accessors, vdiskctl from the
 * Image properties and ProbeFormat. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "front.h"
#include "json.h"

/* An internal snapshot (qcow2), as info and snapshot -l show it. */
typedef struct InfoSnapshot {
        const char *id, *name;
        uint64_t vm_state_size;
        int64_t date_sec;               /* the wall clock time it was taken */
        uint32_t date_nsec;
        uint64_t vm_clock_nsec;         /* guest clock */
        uint64_t icount;                /* UINT64_MAX: not recorded */
} InfoSnapshot;

typedef struct InfoView {
        const char *filename, *format;
        bool have_sizes;                /* false: "disk size: unavailable" */
        uint64_t virtual_size, actual_size;
        uint64_t cluster_size;          /* 0: none */
        bool have_dirty, dirty;         /* have_dirty: "dirty-flag" is shown */
        const char *backing;            /* NULL: none */
        const char *full_backing;       /* NULL: backing */
        const char *backing_format;
        /* vdisk's additions (NULL: none; a present comment may be empty) */
        const char *uuid, *mod_uuid, *parent_uuid, *parent_mod_uuid, *comment, *variant, *media_type;
        bool have_version;
        uint32_t version;
        bool have_pchs, have_lchs;
        uint32_t pchs[3], lchs[3];      /* cylinders, heads, sectors */
        char **fmt_kv;                  /* qemu's "Format specific information": key/value pairs */
        const InfoSnapshot *snapshots;  /* oldest first */
        size_t n_snapshots;
} InfoView;

/* info's output of n images (top first): with `chain` (--backing-chain),
 * JSON is an array of them. */
void info_print(const InfoView *v, size_t n, OutputFormat output, bool chain);

/* qemu-img's "Snapshot list:" and its table (info, snapshot -l); nothing
 * when there are none. */
void snapshot_list_print(const InfoSnapshot *l, size_t n);
/* qemu-img 7.2's failure for snapshot -c/-a/-d ('c', 'a', 'd') on a format
 * without internal snapshots (logged); returns 1, both tools' exit code. */
int snapshot_refuse(char action, const char *name);
