/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Messages on stderr for vdisk-img and vdiskctl: "PROGRAM: message", and
 * the hint after a bad command line. What differs between the tools is in
 * front_dialect (shared/front.h), which each tool defines.
 */
#pragma once

#include <stdarg.h>
#include <stdbool.h>

#include "macro.h"

void log_error(const char *fmt, ...) _printf_(1, 2);
void log_warning(const char *fmt, ...) _printf_(1, 2);
/* "PROGRAM: <prefix><message>" (the other two are this with "" and "warning: "). */
void log_msgv(const char *prefix, const char *fmt, va_list ap) _printf_(2, 0);
/* Logs the message when `cond` holds, and returns cond: a chain of checks
 * `refused(a, ...) || refused(b, ...)` logs the first refusal only. */
bool refused(bool cond, const char *fmt, ...) _printf_(2, 3);
/* Drops every message while set (trying something that may fail quietly). */
void log_set_quiet(bool b);
/* Prints the hint ("Try '... --help' ...") and returns the usage exit code. */
int usage_hint(void);
/* Logs a bad command line, then the hint; returns the usage exit code. */
int usage_error(const char *fmt, ...) _printf_(1, 2);
/* A command's end: flushes stdout; a write that failed is logged, and turns
 * the exit code ex, when 0, into 1. */
int flush_output(int ex);
