/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * VMDK seSparse ("space-efficient sparse") extents, read-only: see
 * vmdk-sesparse.c and docs/formats/vmdk.md. Used by vmdk.c for extent lines
 * of type SESPARSE; the bare extent is no image of its own (it probes as raw).
 */
#pragma once

#include <stdint.h>

#include "backend.h"
#include "fmt/grainmap.h"

#define VMDK_SE_MAGIC UINT64_C(0xcafebabe)
#define VMDK_SE_GRAIN 4096u

typedef struct vmdk_se vmdk_se;

/* Validates the constant and volatile headers of the extent in `io`
 * (`file_size` bytes, `sectors` long as the descriptor says) and sets up its
 * grain directory and grain tables under `budget`. `name` for messages.
 * -EUCLEAN corrupt, -EOPNOTSUPP a valid variant we do not read (another
 * version, grain or table size, a journal to replay). */
int vmdk_se_open(tc_budget *budget, vdisk_io *io, uint64_t file_size, uint64_t sectors, const char *name,
                 vmdk_se **ret);
vmdk_se *vmdk_se_free(vmdk_se *se);
/* Block status and counting (lib/fmt/grainmap) over the extent; valid while it is open. */
grain_map vmdk_se_grain_map(vmdk_se *se);
