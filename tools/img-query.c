/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdisk-img info, map, check, repair and compare: the commands that look at
 * images (repair and check -r also fix them). Their output follows qemu-img's
 * byte for byte where qemu-img has the same command; vdisk's additions (UUIDs,
 * comments) come after qemu's lines or inside "format-specific".
 */

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "img.h"

/* ---------------------------------------------------------------- info */

/* One image's info: what the shared printers take (shared/info.c) and the
 * storage its strings point into. */
typedef struct InfoEntry {
        InfoView v;
        char uuids[4][37];
        char *backing;            /* as the image names it, or the parent found */
        char *full_backing;       /* resolved against the image's directory */
        vdisk_snapshot *snaps;    /* internal snapshots (qcow2), oldest first */
        InfoSnapshot *snaps_view;
        char **fmt_kv;            /* qemu's "Format specific information" (qcow2, vmdk), key/value pairs */
} InfoEntry;

static void info_entry_done(InfoEntry *e) {
        free(e->backing);
        free(e->full_backing);
        vdisk_snapshots_free(e->snaps, e->v.n_snapshots);
        free(e->snaps_view);
        vdisk_strv_free(e->fmt_kv);
}

/* libvdisk's snapshots as the shared printers take them (the strings
 * borrowed); NULL when there are none, or out of memory. */
static InfoSnapshot *snapshots_view(const vdisk_snapshot *v, size_t n) {
        InfoSnapshot *l = n > 0 ? calloc(n, sizeof(*l)) : NULL;

        for (size_t i = 0; l && i < n; i++)
                l[i] = (InfoSnapshot) {
                        .id = v[i].id, .name = v[i].name, .vm_state_size = v[i].vm_state_size,
                        .date_sec = v[i].date_sec, .date_nsec = v[i].date_nsec,
                        .vm_clock_nsec = v[i].vm_clock_nsec, .icount = v[i].icount,
                };
        return l;
}

/* A UUID of the image as text in buf, or NULL when the format has none (or,
 * with skip_null, when it is the null UUID). */
static const char *uuid_text(vdisk_image *image, int (*get)(vdisk_image *, uint8_t[16]), bool skip_null,
                             char buf[static 37]) {
        uint8_t u[16];

        if (get(image, u) < 0 || (skip_null && vdisk_uuid_is_null(u)))
                return NULL;
        vdisk_uuid_format(u, buf);
        return buf;
}

/* `name`: what the child calls this image, used when it is the file that was
 * opened (NULL: the name it was opened by). Fills *e (zeroed) in place: the
 * view points into it. Frees what it took on failure. */
static int info_collect(Img *img, unsigned index, const char *name, InfoEntry *e) {
        vdisk_image *image = vdisk_disk_image(img->disk, index);
        vdisk_image_info ii = { .size = sizeof(ii) };
        const char *pname = NULL, *pfmt = NULL;
        InfoView *v = &e->v;
        int r;

        assert(image);

        v->filename = index == vdisk_disk_count(img->disk) - 1 ? img->filename : vdisk_image_name(image);
        /* ... unless the image found is another file (a stale name, the
         * parent found by UUID). */
        if (index < vdisk_disk_count(img->disk) - 1 && name && same_file(name, v->filename) > 0)
                v->filename = name;
        v->format = vdisk_image_backend(image)->qemu_name;

        v->have_sizes = vdisk_image_get_info(image, &ii) >= 0;
        if (v->have_sizes) {
                v->virtual_size = ii.virtual_size;
                v->actual_size = ii.actual_size;
                v->cluster_size = ii.cluster_size;
                v->dirty = ii.dirty;
                v->variant = ii.variant;
        }
        v->have_dirty = true;

        v->uuid = uuid_text(image, vdisk_image_get_uuid, false, e->uuids[0]);
        v->mod_uuid = uuid_text(image, vdisk_image_get_modification_uuid, false, e->uuids[1]);
        v->parent_uuid = uuid_text(image, vdisk_image_get_parent_uuid, true, e->uuids[2]);
        if (v->parent_uuid)
                v->parent_mod_uuid = uuid_text(image, vdisk_image_get_parent_modification_uuid, true, e->uuids[3]);
        if (vdisk_image_get_comment(image, &v->comment) < 0)
                v->comment = NULL;
        v->have_version = vdisk_image_get_version(image, &v->version) >= 0;
        if (vdisk_image_list_snapshots(image, &e->snaps, &v->n_snapshots) < 0)
                e->snaps = NULL, v->n_snapshots = 0;   /* a damaged table hides the list, not the image */
        v->snapshots = e->snaps_view = snapshots_view(e->snaps, v->n_snapshots);
        if (v->n_snapshots > 0 && !e->snaps_view)
                goto oom;
        /* The formats whose format information is qemu-img's own (keys,
         * order and values); the others' (VHD creator) are vdisk's and
         * stay out of qemu's section. */
        if ((streq(v->format, "qcow2") || streq(v->format, "vmdk")) &&
            vdisk_image_get_format_info(image, &e->fmt_kv) < 0)
                e->fmt_kv = NULL;
        v->fmt_kv = e->fmt_kv;

        /* The parent: the file name the image records (qcow2, VHD ...), or,
         * for formats that link by UUID only (VDI), the file the resolver
         * found, when the chain is open. */
        r = vdisk_image_get_parent_name(image, &pname, &pfmt);
        if (r >= 0 && pname && *pname) {
                e->backing = strdup(pname);
                if (!e->backing || path_relative_to(v->filename, pname, &e->full_backing) < 0)
                        goto oom;
                v->backing_format = pfmt;
        } else if (index > 0) {
                vdisk_image *parent = vdisk_disk_image(img->disk, index - 1);

                e->backing = strdup(vdisk_image_name(parent));
                e->full_backing = strdup(vdisk_image_name(parent));
                if (!e->backing || !e->full_backing)
                        goto oom;
                v->backing_format = pfmt ? pfmt : vdisk_image_backend(parent)->qemu_name;
        }
        v->backing = e->backing;
        v->full_backing = e->full_backing;
        return 0;

oom:
        info_entry_done(e);
        log_error("Out of memory");
        return -ENOMEM;
}

int cmd_info(Request *req) {
        const char *fmt = req->format, *filename = req->files[0];
        bool backing_chain = req->backing_chain;
        _cleanup_free_ InfoEntry *entries = NULL;
        _cleanup_free_ InfoView *views = NULL;
        Img img = {};
        unsigned n, count = 0;
        int r, ex = EXIT_ERROR;

        if (backing_chain)
                r = img_open(filename, fmt, IMG_CHAIN | IMG_INFO, &img);
        else {
                /* The chain is opened only to name the parent of formats
                 * that record no file name; a missing parent is no error. */
                r = img_open(filename, fmt, IMG_CHAIN | IMG_INFO | IMG_QUIET, &img);
                if (r < 0)
                        r = img_open(filename, fmt, IMG_INFO | IMG_SKIP_CHECKS, &img);
        }
        if (r < 0)
                return EXIT_ERROR;

        n = vdisk_disk_count(img.disk);
        entries = calloc(n, sizeof(*entries));
        views = calloc(n, sizeof(*views));
        if (!entries || !views) {
                log_error("Out of memory");
                goto finish;
        }
        /* Top first. qemu-img names a parent as its child names it (the
         * child's full-backing-filename), not as the resolver opened it. */
        for (unsigned i = n; i-- > 0 && (count == 0 || backing_chain); count++) {
                r = info_collect(&img, i, count > 0 ? entries[count - 1].full_backing : NULL, &entries[count]);
                if (r < 0)
                        goto finish;
                views[count] = entries[count].v;
        }
        info_print(views, count, req->output, backing_chain);
        ex = EXIT_OK;

finish:
        for (unsigned i = 0; i < count; i++)
                info_entry_done(&entries[i]);
        return img_close_exit(&img, ex);
}

/* ---------------------------------------------------------------- map */

typedef struct MapEntry {
        uint64_t start, length;
        int depth;
        bool present, zero, data, has_offset;
        uint64_t offset;
        const char *filename;
} MapEntry;

static bool map_entry_mergeable(const MapEntry *cur, const MapEntry *next) {
        if (cur->depth != next->depth || cur->present != next->present || cur->zero != next->zero ||
            cur->data != next->data || cur->has_offset != next->has_offset)
                return false;
        if (cur->filename != next->filename &&
            (!cur->filename || !next->filename || !streq(cur->filename, next->filename)))
                return false;
        return !cur->has_offset || cur->offset + cur->length == next->offset;
}

/* Prints an entry: a JSON object (*first: no separator before it), or a line
 * of the human table (only data is listed). */
static int map_print(const MapEntry *e, OutputFormat output, bool *first) {
        if (output == OUTPUT_JSON) {
                printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %d,"
                       " \"present\": %s, \"zero\": %s, \"data\": %s",
                       *first ? "" : ",\n", e->start, e->length, e->depth,
                       e->present ? "true" : "false", e->zero ? "true" : "false", e->data ? "true" : "false");
                if (e->has_offset)
                        printf(", \"offset\": %" PRIu64, e->offset);
                putchar('}');
                *first = false;
                return 0;
        }
        if (refused(e->data && !e->has_offset, "File contains external, encrypted or compressed clusters."))
                return -EOPNOTSUPP;
        if (e->data && !e->zero)
                printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n",
                       e->start, e->length, e->offset, e->filename);
        return 0;
}

/* qemu's VDI and VPC drivers report blocks a base image never allocated as
 * present zeros (the format defines them as zero); match that. */
static bool base_defines_zeros(Img *img) {
        vdisk_image *base = vdisk_disk_image(img->disk, 0);
        return base && (streq(vdisk_image_backend(base)->qemu_name, "vdi") ||
                        streq(vdisk_image_backend(base)->qemu_name, "vpc"));
}

int cmd_map(Request *req) {
        const char *filename = req->files[0];
        OutputFormat output = req->output;
        uint64_t start = req->start_offset, max_length = req->max_length, end, off, size;
        MapEntry cur = {};
        bool have_cur = false, first = true, zero_base;
        unsigned n;
        Img img = {};
        int r, ex = EXIT_ERROR;

        r = img_open(filename, req->format, IMG_CHAIN, &img);
        if (r < 0)
                return EXIT_ERROR;

        n = vdisk_disk_count(img.disk);
        size = vdisk_disk_size(img.disk);
        zero_base = base_defines_zeros(&img);
        end = start + MIN(max_length, UINT64_MAX - start);
        end = MIN(end, size);

        if (output == OUTPUT_HUMAN)
                printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
        else
                putchar('[');

        /* Nothing to map: qemu-img's JSON shows one empty entry. */
        cur = (MapEntry) { .start = start };
        have_cur = start >= end && output == OUTPUT_JSON;

        for (off = start; off < end;) {
                vdisk_image *image;
                vdisk_extent ext;
                MapEntry e;

                vdisk_clear_error();
                r = vdisk_disk_map_status(img.disk, off, end - off, &ext);
                if (r < 0) {
                        if (output == OUTPUT_JSON)
                                printf("]\n");
                        fflush(stdout);
                        log_error("Could not read the allocation of '%s' at offset %" PRIu64 ": %s",
                                  filename, off, error_detail(r));
                        goto finish;
                }
                if (ext.length == 0 || ext.length > end - off)
                        ext.length = end - off;

                e = (MapEntry) {
                        .start = off,
                        .length = ext.length,
                        .present = ext.flags & VDISK_EXTENT_ALLOCATED,
                        .zero = ext.flags & VDISK_EXTENT_ZERO,
                        .data = ext.flags & VDISK_EXTENT_DATA,
                        .has_offset = ext.host_offset_valid,
                        .offset = ext.host_offset,
                };
                if (ext.depth >= 0 && (unsigned) ext.depth < n)
                        e.depth = ext.depth;
                else {
                        /* Defined nowhere: qemu reports the bottom of the chain. */
                        e.depth = (int) n - 1;
                        e.present = zero_base;
                        e.zero = true;
                        e.data = false;
                }
                image = img_at_depth(&img, (unsigned) e.depth);
                e.filename = e.depth == 0 ? filename : vdisk_image_name(image);
                /* Data in a companion file (a VMDK extent) names that file. */
                if (e.has_offset && ext.file)
                        e.filename = ext.file;
                /* A raw file maps the disk one to one, holes included. */
                if (!e.has_offset && e.present && streq(vdisk_image_backend(image)->qemu_name, "raw")) {
                        e.has_offset = true;
                        e.offset = off;
                }

                if (have_cur && map_entry_mergeable(&cur, &e))
                        cur.length += e.length;
                else {
                        if (have_cur && map_print(&cur, output, &first) < 0)
                                goto finish;
                        cur = e;
                        have_cur = true;
                }
                off += e.length;
        }
        if (have_cur && map_print(&cur, output, &first) < 0)
                goto finish;

        if (output == OUTPUT_JSON)
                printf("]\n");
        ex = EXIT_OK;
finish:
        return img_close_exit(&img, ex);
}

/* ---------------------------------------------------------------- check and repair */

static void check_print_messages(const vdisk_check_report *rep, FILE *f) {
        fflush(stdout);
        for (char **m = rep->messages; m && *m; m++)
                fprintf(f, "%s\n", *m);
        fflush(f);
}

static CheckCounts check_counts(const vdisk_check_report *r) {
        return (CheckCounts) {
                .corruptions = r->corruptions, .leaks = r->leaks, .check_errors = r->check_errors,
                .corruptions_fixed = r->corruptions_fixed, .leaks_fixed = r->leaks_fixed,
                .total_clusters = r->total_clusters, .allocated_clusters = r->allocated_clusters,
                .fragmented_clusters = r->fragmented_clusters, .compressed_clusters = r->compressed_clusters,
                .image_end_offset = r->image_end_offset,
        };
}

/* Runs vdisk_check; after a real repair checks again, like qemu-img, so the
 * result describes the image as it is now. *ret_fixed gets the first pass. */
static int check_run(Img *img, uint32_t flags, ProgressBar *bar, vdisk_check_report *ret,
                     vdisk_check_report *ret_fixed) {
        int r;

        *ret = (vdisk_check_report) { .size = sizeof(*ret) };
        *ret_fixed = (vdisk_check_report) { .size = sizeof(*ret_fixed) };

        vdisk_clear_error();
        r = vdisk_check(img->disk, vdisk_disk_count(img->disk) - 1, flags, ret, bar->p);
        if (r < 0)
                return r;
        if ((flags & (VDISK_CHECK_REPAIR_LEAKS | VDISK_CHECK_REPAIR_ALL)) && !(flags & VDISK_CHECK_DRY_RUN) &&
            (ret->corruptions_fixed || ret->leaks_fixed)) {
                *ret_fixed = *ret;
                *ret = (vdisk_check_report) { .size = sizeof(*ret) };
                vdisk_clear_error();
                r = vdisk_check(img->disk, vdisk_disk_count(img->disk) - 1, 0, ret, bar->p);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* check, and vbox-img's repair: check -r all (or its dry run) with repair's
 * summary instead of check's report. */
int cmd_check(Request *req) {
        static const uint32_t mode_flags[CHECK_DRY_RUN + 1] = {
                [CHECK_REPAIR_LEAKS] = VDISK_CHECK_REPAIR_LEAKS,
                [CHECK_REPAIR_ALL] = VDISK_CHECK_REPAIR_ALL,
                [CHECK_DRY_RUN] = VDISK_CHECK_REPAIR_ALL | VDISK_CHECK_DRY_RUN,
        };
        const char *fmt = req->format, *filename = req->files[0];
        vdisk_check_report rep = {}, fixed = {};
        CheckCounts now, was;
        uint32_t flags = mode_flags[req->check_mode];
        bool repair = req->verb == VERB_REPAIR, dry_run = req->check_mode == CHECK_DRY_RUN, quiet = req->quiet;
        ProgressBar bar = {};
        Img img = {};
        int r, ex = EXIT_ERROR;

        /* Only the named image is checked; its parents are not needed. */
        r = img_open(filename, fmt, IMG_SKIP_CHECKS | (flags && !dry_run ? IMG_WRITE : 0), &img);
        if (r < 0)
                return EXIT_ERROR;

        if (progress_bar_init(&bar, false) < 0)
                goto finish;

        r = check_run(&img, flags, &bar, &rep, &fixed);
        progress_bar_done(&bar, r >= 0);
        if (r == -EOPNOTSUPP) {
                if (repair)
                        log_error("The format of '%s' does not support repairs", filename);
                else
                        log_error("This image format does not support checks");
                ex = CHECK_EXIT_UNSUPPORTED;
                goto finish;
        }
        if (r < 0) {
                if (repair)
                        log_error("Could not repair '%s': %s", filename, error_detail(r));
                else
                        log_error("Check failed: %s", error_detail(r));
                ex = CHECK_EXIT_ERROR;
                goto finish;
        }

        now = check_counts(&rep);
        was = check_counts(&fixed);
        if (repair) {
                /* the repair itself: the first pass when the check ran again */
                bool again = was.corruptions_fixed || was.leaks_fixed;
                const CheckCounts *pass = again ? &was : &now;

                if (!quiet) {
                        check_print_messages(again ? &fixed : &rep, stdout);
                        repair_print_summary(pass, &now, dry_run);
                }
                ex = check_exit_code(&now);
        } else {
                check_print_messages(&fixed, stderr);
                check_print_messages(&rep, stderr);
                ex = check_report(&now, &was, req->output, quiet, filename, img.backend->qemu_name);
        }

finish:
        vdisk_check_report_clear(&rep);
        vdisk_check_report_clear(&fixed);
        return img_close_exit(&img, ex);
}

/* ---------------------------------------------------------------- compare */

#define COMPARE_EXIT_DIFFERENT 1
#define COMPARE_EXIT_OPEN      2
#define COMPARE_EXIT_STATUS    3
#define COMPARE_EXIT_READ      4

/* vdisk_compare_ex() does the work (block status on both sides); this says
 * its verdict in qemu-img compare's words and exit codes. */
static int compare_report(Img *img[2], int r, const vdisk_compare_result *res, bool quiet) {
        if (r < 0) {
                Img *f = img[res->failed_side ? 1 : 0];

                if (r == -ECANCELED) {
                        log_error("Comparison cancelled");
                        return EXIT_ERROR;
                }
                if (res->failed_status) {
                        log_error("Could not read the allocation of '%s' at offset %" PRIu64 ": %s",
                                  f->filename, res->failed_offset, error_detail(r));
                        return COMPARE_EXIT_STATUS;
                }
                log_error("Error while reading offset %" PRIu64 " of '%s': %s", res->failed_offset,
                          f->filename, error_detail(r));
                return COMPARE_EXIT_READ;
        }
        /* libvdisk's outcomes are the verdicts, in the same order */
        _Static_assert(VDISK_COMPARE_CONTENT == (int) VERDICT_CONTENT && VDISK_COMPARE_SIZE == (int) VERDICT_SIZE &&
                       VDISK_COMPARE_BLOCK_STATUS == (int) VERDICT_BLOCK_STATUS, "compare outcomes");
        return compare_print_verdict(r > 0 ? (CompareVerdict) res->outcome : VERDICT_EQUAL, res->offset,
                                     res->size_a, res->size_b, quiet);
}

int cmd_compare(Request *req) {
        vdisk_compare_result res = { .size = sizeof(res) };
        ProgressBar bar = {};
        Img a = {}, b = {};
        int r, ex = EXIT_ERROR;

        if (img_open(req->files[0], req->format, IMG_CHAIN, &a) < 0)
                return COMPARE_EXIT_OPEN;
        if (img_open(req->files[1], req->format2, IMG_CHAIN, &b) < 0) {
                ex = COMPARE_EXIT_OPEN;
                goto finish;
        }

        if (progress_bar_init(&bar, req->progress) < 0)
                goto finish;
        bar.min_step = 2.0;   /* qemu-img compare's step */

        vdisk_clear_error();
        r = vdisk_compare_ex(a.disk, b.disk, req->strict ? VDISK_COMPARE_STRICT : 0, &res, bar.p);
        ex = compare_report((Img *[2]) { &a, &b }, r, &res, req->quiet);
        /* qemu-img ends the progress line after the verdict. */
        progress_bar_done(&bar, false);

finish:
        ex = img_close_exit(&a, ex);
        return img_close_exit(&b, ex);
}

/* ---------------------------------------------------------------- snapshot */

/* qemu-img creates, applies and deletes internal snapshots in qcow2 only;
 * vdisk lists (and reads) the ones of other formats too. */
static bool format_has_internal_snapshots(const vdisk_backend_info *info) {
        return info && streq(info->qemu_name, "qcow2");
}

/* -c, -a, -d: the image alone (no backing file), writable; qemu-img 7.2's
 * messages and exit codes. */
static int snapshot_change(const char *filename, const char *fmt, char action, const char *arg) {
        Img img = {};
        int r;

        r = img_open(filename, fmt, IMG_WRITE | IMG_SKIP_CHECKS, &img);
        if (r < 0)
                return EXIT_ERROR;
        vdisk_clear_error();
        switch (action) {
        case 'c':
                r = vdisk_disk_snapshot_create(img.disk, arg);
                if (r < 0)
                        log_error("Could not create snapshot '%s': %d (%s)", arg, r, error_detail(r));
                break;
        case 'a':
                r = vdisk_disk_snapshot_apply(img.disk, arg);
                if (r == -ENOENT)
                        log_error("Could not apply snapshot '%s': Failed to load snapshot: %s", arg, strerror(-r));
                else if (r < 0)
                        log_error("Could not apply snapshot '%s': %s", arg, error_detail(r));
                break;
        default:
                r = vdisk_disk_snapshot_delete(img.disk, arg);
                if (r == -ENOENT)
                        log_error("Could not delete snapshot '%s': snapshot not found", arg);
                else if (r < 0)
                        log_error("Could not delete snapshot '%s': %s", arg, error_detail(r));
                break;
        }
        return img_close_exit(&img, r < 0 ? EXIT_ERROR : EXIT_OK);
}

int cmd_snapshot(Request *req) {
        const char *fmt = req->format, *filename = req->files[0], *arg = req->action_arg;
        vdisk_snapshot *v = NULL;
        _cleanup_free_ InfoSnapshot *view = NULL;
        size_t n = 0;
        Img img = {};
        char action = req->action;
        int r, ex = EXIT_OK;

        r = img_open(filename, fmt, IMG_INFO | IMG_SKIP_CHECKS, &img);
        if (r < 0)
                return EXIT_ERROR;
        if (action && action != 'l') {
                /* Formats without internal snapshots: qemu-img's refusal. */
                if (!format_has_internal_snapshots(img.backend))
                        return img_close_exit(&img, snapshot_refuse(action, arg));
                img_close(&img);
                return snapshot_change(filename, fmt, action, arg);
        }

        vdisk_clear_error();
        r = vdisk_image_list_snapshots(vdisk_disk_image(img.disk, 0), &v, &n);
        if (r < 0) {
                log_error("Could not list the snapshots of '%s': %s", filename, error_detail(r));
                return img_close_exit(&img, EXIT_ERROR);
        }
        view = snapshots_view(v, n);
        if (n > 0 && !view) {
                log_error("Out of memory");
                ex = EXIT_ERROR;
        } else if (!req->quiet)
                snapshot_list_print(view, n);
        vdisk_snapshots_free(v, n);
        return img_close_exit(&img, ex);
}
