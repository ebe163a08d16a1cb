/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * lib/fmt/vmdk-desc: the VMDK text descriptor (VMware "Virtual Disk Format
 * 5.0", section "The Descriptor File"): parsed into key/value pairs (kept in
 * file order, unknown keys included) and extent lines, and written back.
 *
 * Parsing is strict about bounds and lenient about style: CRLF or LF line
 * ends, blank and comment lines, spaces around '=', quoted or bare values,
 * keys we do not know (kept and written back). Limits: the text at most
 * VMDK_DESC_MAX bytes (an embedded descriptor padded with NULs ends at the
 * first NUL), lines at most VMDK_DESC_LINE_MAX, at most VMDK_DESC_EXTENTS_MAX
 * extents and VMDK_DESC_KEYS_MAX keys. Extent file names must be relative
 * and must not climb (`..`): vmdk_desc_name_valid().
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VMDK_DESC_MAX          (UINT32_C(1) << 20)
#define VMDK_DESC_LINE_MAX     4096u
#define VMDK_DESC_EXTENTS_MAX  4096u
#define VMDK_DESC_KEYS_MAX     1024u
#define VMDK_DESC_NAME_MAX     1024u

typedef enum vmdk_access {
        VMDK_ACCESS_RW,
        VMDK_ACCESS_RDONLY,
        VMDK_ACCESS_NOACCESS,
} vmdk_access;

typedef enum vmdk_extent_type {
        VMDK_EXTENT_FLAT,
        VMDK_EXTENT_SPARSE,
        VMDK_EXTENT_ZERO,
        VMDK_EXTENT_VMFS,
        VMDK_EXTENT_VMFSSPARSE,
        VMDK_EXTENT_SESPARSE,
        VMDK_EXTENT_VMFSRDM,
        VMDK_EXTENT_VMFSRAW,
} vmdk_extent_type;

typedef struct vmdk_extent_desc {
        vmdk_access access;
        vmdk_extent_type type;
        uint64_t sectors;
        char *file;             /* NULL for ZERO extents */
        uint64_t offset;        /* sectors into the file (FLAT/VMFS only) */
} vmdk_extent_desc;

typedef struct vmdk_desc_kv {
        char *key, *value;      /* value without its quotes */
        bool quoted;
} vmdk_desc_kv;

typedef struct vmdk_desc {
        vmdk_desc_kv *kv;
        size_t n_kv;
        vmdk_extent_desc *extents;
        size_t n_extents;
} vmdk_desc;

/* Parses `len` bytes of text (stops at the first NUL). -EUCLEAN with a
 * message on anything out of bounds or unparsable, -EMEDIUMTYPE when it is no
 * descriptor at all (no "version"/"createType" key and no extent). */
int vmdk_desc_parse(const char *text, size_t len, vmdk_desc *ret);
void vmdk_desc_done(vmdk_desc *d);

/* The value of `key` (case-insensitive), or NULL. */
const char *vmdk_desc_get(const vmdk_desc *d, const char *key);
/* Parses a hex (CID) or decimal value; -ENOENT when absent, -EUCLEAN when bad. */
int vmdk_desc_get_cid(const vmdk_desc *d, const char *key, uint32_t *ret);
int vmdk_desc_get_u64(const vmdk_desc *d, const char *key, uint64_t *ret);
/* Sets (or appends) key = value; `quoted` for string values. */
int vmdk_desc_set(vmdk_desc *d, const char *key, const char *value, bool quoted);
int vmdk_desc_add_extent(vmdk_desc *d, vmdk_access access, vmdk_extent_type type, uint64_t sectors,
                         const char *file, uint64_t offset);

/* The descriptor as text (malloc'ed, NUL-terminated, *ret_len without the
 * NUL): header keys, the extents, then the "ddb." keys, LF line ends. */
int vmdk_desc_format(const vmdk_desc *d, char **ret, size_t *ret_len);

/* An extent name we resolve: not empty, not absolute, no ".." component, no
 * control characters, at most VMDK_DESC_NAME_MAX bytes. */
bool vmdk_desc_name_valid(const char *name);
/* A raw device a fullDevice/partitionedDevice descriptor names: "/dev/"
 * and a name under it that is valid by the rules above. Such an extent
 * opens only through a file descriptor the caller hands in (the path
 * resolver refuses absolute names). */
bool vmdk_desc_name_is_device(const char *name);

const char *vmdk_extent_type_name(vmdk_extent_type t);
