/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * VMDK vmfsSparse ("COWD", ESX 3/4 redo logs and snapshots) extents,
 * read-only: see vmdk-cowd.c and docs/formats/vmdk.md. Used by vmdk.c for
 * extent lines of type VMFSSPARSE.
 */
#pragma once

#include <stdint.h>

#include "backend.h"
#include "fmt/grainmap.h"

typedef struct vmdk_cowd vmdk_cowd;

/* Validates the header of the extent in `io` (`file_size` bytes, `sectors`
 * long as the descriptor says) and sets up its grain directory and tables
 * under `budget`. -EUCLEAN corrupt, -EOPNOTSUPP another version. */
int vmdk_cowd_open(tc_budget *budget, vdisk_io *io, uint64_t file_size, uint64_t sectors, const char *name,
                   vmdk_cowd **ret);
vmdk_cowd *vmdk_cowd_free(vmdk_cowd *c);
/* The grain size in bytes. */
uint64_t vmdk_cowd_grain(const vmdk_cowd *c);
/* Block status and counting (lib/fmt/grainmap) over the extent; valid while it is open. */
grain_map vmdk_cowd_grain_map(vmdk_cowd *c);
