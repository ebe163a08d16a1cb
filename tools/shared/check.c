/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The check report as qemu-img check prints it (see check.h). */

#include <inttypes.h>
#include <stdio.h>

#include "check.h"
#include "json.h"
#include "log.h"
#include "text.h"

static void check_print_human(const CheckCounts *rep, const CheckCounts *fixed) {
        if (fixed && (fixed->corruptions_fixed || fixed->leaks_fixed))
                printf("The following inconsistencies were found and repaired:\n\n"
                       "    %" PRIu64 " leaked clusters\n"
                       "    %" PRIu64 " corruptions\n\n"
                       "Double checking the fixed image now...\n",
                       fixed->leaks_fixed, fixed->corruptions_fixed);

        if (!rep->corruptions && !rep->leaks && !rep->check_errors)
                printf("No errors were found on the image.\n");
        else {
                if (rep->corruptions)
                        printf("\n%" PRIu64 " errors were found on the image.\n"
                               "Data may be corrupted, or further writes to the image may corrupt it.\n",
                               rep->corruptions);
                if (rep->leaks)
                        printf("\n%" PRIu64 " leaked clusters were found on the image.\n"
                               "This means waste of disk space, but no harm to data.\n",
                               rep->leaks);
                if (rep->check_errors)
                        printf("\n%" PRIu64 " internal errors have occurred during the check.\n",
                               rep->check_errors);
        }

        if (rep->total_clusters && rep->allocated_clusters)
                printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, "
                       "%0.2f%% compressed clusters\n",
                       rep->allocated_clusters, rep->total_clusters,
                       (double) rep->allocated_clusters * 100.0 / (double) rep->total_clusters,
                       (double) rep->fragmented_clusters * 100.0 / (double) rep->allocated_clusters,
                       (double) rep->compressed_clusters * 100.0 / (double) rep->allocated_clusters);
        if (rep->image_end_offset)
                printf("Image end offset: %" PRIu64 "\n", rep->image_end_offset);
}

static void check_print_json(const CheckCounts *rep, const CheckCounts *fixed, const char *filename,
                             const char *format) {
        uint64_t corruptions_fixed = fixed ? fixed->corruptions_fixed : 0;
        uint64_t leaks_fixed = fixed ? fixed->leaks_fixed : 0;
        Json w;

        /* Keys in qemu-img's order; counters that are 0 are left out. */
        json_begin(&w, stdout, true);
        json_object_open(&w, NULL);
        if (rep->image_end_offset)
                json_uint(&w, "image-end-offset", rep->image_end_offset);
        if (rep->compressed_clusters)
                json_uint(&w, "compressed-clusters", rep->compressed_clusters);
        if (rep->total_clusters)
                json_uint(&w, "total-clusters", rep->total_clusters);
        if (rep->corruptions)
                json_uint(&w, "corruptions", rep->corruptions);
        if (corruptions_fixed)
                json_uint(&w, "corruptions-fixed", corruptions_fixed);
        json_uint(&w, "check-errors", rep->check_errors);
        if (rep->leaks)
                json_uint(&w, "leaks", rep->leaks);
        if (leaks_fixed)
                json_uint(&w, "leaks-fixed", leaks_fixed);
        if (rep->allocated_clusters)
                json_uint(&w, "allocated-clusters", rep->allocated_clusters);
        json_string(&w, "filename", filename);
        json_string(&w, "format", format);
        if (rep->fragmented_clusters)
                json_uint(&w, "fragmented-clusters", rep->fragmented_clusters);
        json_object_close(&w);
        json_end(&w);
}

/* Leaves out the statistics qemu-img's check does not show for the format. */
static void check_hide_stats(CheckCounts *rep, const char *qemu_format) {
        bool no_clusters = streq_ptr(qemu_format, "vdi") || streq_ptr(qemu_format, "vhdx") ||
                           streq_ptr(qemu_format, "vmdk");

        if (no_clusters || streq_ptr(qemu_format, "qed"))
                rep->image_end_offset = 0;
        if (no_clusters)
                rep->total_clusters = rep->allocated_clusters = rep->fragmented_clusters = rep->compressed_clusters = 0;
}

int check_report(const CheckCounts *rep, const CheckCounts *fixed, OutputFormat output, bool quiet,
                 const char *filename, const char *qemu_format) {
        CheckCounts shown = *rep;

        check_hide_stats(&shown, qemu_format);
        if (!quiet && output == OUTPUT_JSON)
                check_print_json(&shown, fixed, filename, qemu_format);
        else if (!quiet)
                check_print_human(&shown, fixed);
        if (rep->check_errors)
                log_error("Check failed");
        return check_exit_code(rep);
}

int check_exit_code(const CheckCounts *rep) {
        if (rep->check_errors)
                return CHECK_EXIT_ERROR;
        if (rep->corruptions)
                return CHECK_EXIT_CORRUPT;
        if (rep->leaks)
                return CHECK_EXIT_LEAKS;
        return 0;
}

void repair_print_summary(const CheckCounts *pass, const CheckCounts *now, bool dry_run) {
        if (dry_run && !pass->corruptions && !pass->leaks)
                printf("No errors were found on the image.\n");
        else if (dry_run)
                printf("%" PRIu64 " corruptions and %" PRIu64 " leaked clusters found; "
                       "a repair would fix %" PRIu64 " and %" PRIu64 " of them (dry run, nothing changed).\n",
                       pass->corruptions, pass->leaks, pass->corruptions_fixed, pass->leaks_fixed);
        else if (pass->corruptions_fixed || pass->leaks_fixed)
                printf("Repaired %" PRIu64 " corruptions and %" PRIu64 " leaked clusters.\n",
                       pass->corruptions_fixed, pass->leaks_fixed);
        else
                printf("No repairs were needed.\n");
        if (!dry_run && (now->corruptions || now->leaks))
                printf("%" PRIu64 " corruptions and %" PRIu64 " leaked clusters remain.\n", now->corruptions,
                       now->leaks);
}
