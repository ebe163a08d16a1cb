/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include "backend.h"

/* qcow2-measure.c: qemu-img measure for QCOW2 and the creation options it
 * reads (qemu-img's qcow2 options, in the order of its help). */
extern const vdisk_option_desc qcow2_create_options[];
int qcow2_measure(const measure_params *p, measure_result *ret);
