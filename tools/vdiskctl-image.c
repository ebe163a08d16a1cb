/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdiskctl info, check and repair: the commands that look at images through
 * vdiskd. Their output follows vdisk-img's (and so qemu-img's) where the
 * information is the same; what only vdiskd knows (the file size it sees,
 * the geometry) comes after.
 */

#include <errno.h>
#include <string.h>
#include <strings.h>

#include "shared/info.h"
#include "vdiskctl.h"

/* The qemu name of a format vdiskd calls `name` ("VDI" -> "vdi"). */
static const char *qemu_name(Ctx *ctx, const char *name) {
        const Value *info = backend_find(ctx, name, NULL);

        return value_str(info, "qemu-name", name);
}

/* ---------------------------------------------------------------- snapshots */

/* The fields of one entry of Image.Snapshots (id, name, vm-state size,
 * date µs, guest clock ns, disk size, icount); NULL when it is malformed. */
static const Value *snapshot_fields(const Value *e) {
        const Value *f;

        if (e->type != VALUE_ARRAY || e->c.n != 7)
                return NULL;
        f = e->c.items;
        if (f[0].type != VALUE_STRING || f[1].type != VALUE_STRING || f[2].type != VALUE_UINT ||
            f[3].type != VALUE_UINT || f[4].type != VALUE_UINT || f[6].type != VALUE_UINT)
                return NULL;
        return f;
}

/* The Snapshots of `image` into *ret (an array); a warning when vdiskd
 * lists fewer than the image holds (it lists the newest 64). */
static int snapshots_get(Ctx *ctx, const char *image, const char *file, Value *ret) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_value_ Value props = {}, list = {};
        uint64_t count;
        int r;

        r = bus_get_all(ctx, image, VDISK_IFACE_IMAGE, &error, &props);
        if (r >= 0)
                r = bus_get_property(ctx, image, VDISK_IFACE_IMAGE, "Snapshots", &error, &list);
        if (r < 0)
                return log_bus_error(file, &error, r);
        if (list.type != VALUE_ARRAY) {
                log_error("%s: Bad reply from vdiskd", file);
                return EXIT_FAILURE;
        }
        count = value_uint(&props, "SnapshotCount", list.c.n);
        if (count > list.c.n)
                log_warning("%s: %" PRIu64 " older snapshots not listed (vdiskd lists the newest %zu)", file,
                            count - list.c.n, list.c.n);
        *ret = list;
        list = (Value) {};
        return EXIT_OK;
}

/* The list as the shared printers take it (the strings borrowed), leaving
 * out malformed entries; NULL when out of memory. */
static InfoSnapshot *snapshots_view(const Value *list, size_t *ret_n) {
        InfoSnapshot *l = calloc(list->c.n ?: 1, sizeof(*l));
        size_t n = 0;

        for (size_t i = 0; l && i < list->c.n; i++) {
                const Value *f = snapshot_fields(&list->c.items[i]);

                if (f)
                        l[n++] = (InfoSnapshot) {
                                .id = f[0].s, .name = f[1].s, .vm_state_size = f[2].u,
                                .date_sec = (int64_t) (f[3].u / 1000000),
                                .date_nsec = (uint32_t) (f[3].u % 1000000 * 1000),
                                .vm_clock_nsec = f[4].u, .icount = f[6].u,
                        };
        }
        *ret_n = n;
        return l;
}

/* ---------------------------------------------------------------- info */

typedef struct InfoEntry {
        const ChainElem *elem;
        const ChainElem *parent;       /* the element below, when opened */
        Value props;                   /* Image properties; empty when only probed */
        Value snapshots;               /* its Snapshots, with the properties */
        InfoSnapshot *snaps_view;
        size_t n_snaps;
        bool have_props;
} InfoEntry;

static const char *entry_str(const InfoEntry *e, const char *prop, const char *probe_key) {
        if (e->have_props)
                return value_str(&e->props, prop, "");
        return probe_key ? value_str(&e->elem->info, probe_key, "") : "";
}

static uint64_t entry_uint(const InfoEntry *e, const char *prop, const char *probe_key) {
        if (e->have_props)
                return value_uint(&e->props, prop, 0);
        return value_uint(&e->elem->info, probe_key, 0);
}

/* The backing file as the image names it, and as resolved. */
static void entry_backing(Ctx *ctx, const InfoEntry *e, const char **ret_name, char **ret_full,
                          const char **ret_format) {
        const char *pname = value_str(&e->elem->info, "parent-name", "");
        const char *pfmt = value_str(&e->elem->info, "parent-format", "");

        *ret_name = NULL;
        *ret_full = NULL;
        *ret_format = NULL;
        if (*pname) {
                *ret_name = pname;
                if (path_relative_to(e->elem->path, pname, ret_full) < 0)
                        *ret_full = NULL;
        } else if (e->parent) {
                /* Linked by UUID: the file that was found. */
                *ret_name = e->parent->path;
                *ret_full = strdup(e->parent->path);
        }
        if (*ret_name)
                *ret_format = *pfmt ? qemu_name(ctx, pfmt) : e->parent ? e->parent->qemu_format : NULL;
}

/* A string property, NULL when empty. */
static const char *nonempty(const char *s) {
        return s && *s ? s : NULL;
}

/* The entry as the shared printers take it (shared/info.c); *full is the
 * resolved backing file name, freed by the caller. */
static InfoView info_view(Ctx *ctx, const InfoEntry *e, char **full) {
        const char *backing, *backing_fmt;
        InfoView v = {
                .filename = e->elem->path,
                .format = e->have_props ? value_str(&e->props, "QemuFormat", e->elem->qemu_format)
                                        : e->elem->qemu_format,
                .have_sizes = true,
                .virtual_size = entry_uint(e, "Size", "size"),
                .actual_size = (uint64_t) e->elem->st.st_blocks * 512u,
                .cluster_size = e->have_props ? value_uint(&e->props, "ClusterSize", 0) : 0,
                .have_dirty = e->have_props,
                .dirty = e->have_props && value_bool(&e->props, "Dirty", false),
                .uuid = nonempty(entry_str(e, "Uuid", "uuid")),
                .mod_uuid = nonempty(entry_str(e, "ModificationUuid", NULL)),
                .parent_uuid = nonempty(entry_str(e, "ParentUuid", "parent-uuid")),
                .parent_mod_uuid = nonempty(entry_str(e, "ParentModificationUuid", NULL)),
                .comment = nonempty(entry_str(e, "Comment", NULL)),
                .variant = nonempty(entry_str(e, "Variant", "variant")),
                .media_type = e->have_props ? nonempty(value_str(&e->props, "MediaType", "")) : NULL,
                .have_version = e->have_props && value_get(&e->props, "Version"),
                .version = e->have_props ? (uint32_t) value_uint(&e->props, "Version", 0) : 0,
        };

        entry_backing(ctx, e, &backing, full, &backing_fmt);
        v.backing = backing;
        v.full_backing = *full;
        v.backing_format = backing_fmt;
        if (e->have_props) {
                v.have_pchs = value_geometry(&e->props, "PCHSGeometry", v.pchs);
                v.have_lchs = value_geometry(&e->props, "LCHSGeometry", v.lchs);
                v.snapshots = e->snaps_view;
                v.n_snapshots = e->n_snaps;
        }
        return v;
}

int cmd_info(Ctx *ctx, Request *req) {
        const char *fmt = req->format, *file = req->files[0];
        bool backing_chain = req->backing_chain, opened = false;
        _cleanup_(strv_freep) char **images = NULL;
        InfoEntry entries[CHAIN_MAX] = {};
        InfoView views[CHAIN_MAX];
        char *full_backing[CHAIN_MAX] = {};   /* the views' */
        Chain chain = {};
        unsigned n_entries = 0;
        int r, ex = EXIT_FAILURE;

        /* The image itself: every failure here is an error. */
        r = chain_resolve(ctx, file, fmt, backing_chain ? 0 : CHAIN_TOP_ONLY, &chain);
        if (r != 0) {
                ex = r;
                goto finish;
        }
        if (!backing_chain && value_bool(&chain.elems[0].info, "needs-parent", false)) {
                /* The chain is opened to name the parent a VDI records by
                 * UUID only; without --backing-chain a missing parent is no
                 * error: the probe's information is shown. */
                Chain full = {};

                log_set_quiet(true);
                r = chain_open(ctx, file, fmt, 0, true, &full);
                log_set_quiet(false);
                if (r == 0) {
                        chain_done(ctx, &chain);
                        chain = full;
                        opened = true;
                } else if (r == EXIT_UNAVAILABLE || r == EXIT_CANCELLED) {
                        log_error("%s: Could not open its parents: %s", file,
                                  r == EXIT_CANCELLED ? "interrupted" : "vdiskd went away");
                        ex = r;
                        goto finish;
                }
        } else {
                r = chain_open_disk(ctx, &chain, true);
                if (r != 0) {
                        ex = r;
                        goto finish;
                }
                opened = true;
        }

        if (opened) {
                r = chain_image_paths(ctx, &chain, &images);
                if (r < 0) {
                        log_error("%s: Could not list the images vdiskd opened: %s", file, strerror(-r));
                        goto finish;
                }
        }

        for (unsigned i = chain.n; i-- > 0;) {
                InfoEntry *e = &entries[n_entries++];

                e->elem = &chain.elems[i];
                e->parent = i > 0 ? &chain.elems[i - 1] : NULL;
                if (images) {
                        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;

                        r = bus_get_all(ctx, images[i], VDISK_IFACE_IMAGE, &error, &e->props);
                        if (r < 0) {
                                ex = log_bus_error(e->elem->path, &error, r);
                                goto finish;
                        }
                        r = snapshots_get(ctx, images[i], e->elem->path, &e->snapshots);
                        if (r != EXIT_OK) {
                                ex = r;
                                goto finish;
                        }
                        e->snaps_view = snapshots_view(&e->snapshots, &e->n_snaps);
                        if (!e->snaps_view) {
                                ex = log_oom();
                                goto finish;
                        }
                        e->have_props = true;
                }
                if (!backing_chain)
                        break;
        }

        for (unsigned i = 0; i < n_entries; i++)
                views[i] = info_view(ctx, &entries[i], &full_backing[i]);
        info_print(views, n_entries, arg_output, backing_chain);
        ex = EXIT_OK;

finish:
        for (unsigned i = 0; i < n_entries; i++) {
                value_clear(&entries[i].props);
                value_clear(&entries[i].snapshots);
                free(entries[i].snaps_view);
                free(full_backing[i]);
        }
        chain_done(ctx, &chain);
        return ex;
}

/* ---------------------------------------------------------------- check and repair */

typedef struct Report {
        CheckCounts n;
        const Value *messages;
} Report;

static void report_from(const Value *result, Report *ret) {
        *ret = (Report) {
                .n.corruptions = value_uint(result, "corruptions", 0),
                .n.leaks = value_uint(result, "leaks", 0),
                .n.check_errors = value_uint(result, "check-errors", 0),
                .n.corruptions_fixed = value_uint(result, "corruptions-fixed", 0),
                .n.leaks_fixed = value_uint(result, "leaks-fixed", 0),
                .n.total_clusters = value_uint(result, "total-clusters", 0),
                .n.allocated_clusters = value_uint(result, "allocated-clusters", 0),
                .n.fragmented_clusters = value_uint(result, "fragmented-clusters", 0),
                .n.compressed_clusters = value_uint(result, "compressed-clusters", 0),
                .n.image_end_offset = value_uint(result, "image-end-offset", 0),
                .messages = value_get(result, "messages"),
        };
}

static void report_messages(const Report *rep, FILE *f) {
        const Value *m = rep->messages;

        fflush(stdout);
        for (size_t i = 0; m && m->type == VALUE_ARRAY && i < m->c.n; i++)
                if (m->c.items[i].type == VALUE_STRING)
                        fprintf(f, "%s\n", m->c.items[i].s);
        fflush(f);
}

/* One Check or Repair operation on the top image; *ret gets its Result. A
 * repair that writes writes `direct` (vdiskd's `direct-fd`), as vdisk-img.
 * Returns 0, or the (negative) op_run() result, or an exit code. */
static int check_once(Ctx *ctx, Chain *c, CheckMode mode, bool direct, bool progress, Value *ret) {
        _cleanup_msg_ sd_bus_message *m = NULL;
        _cleanup_(strv_freep) char **images = NULL;
        _cleanup_close_ int direct_fd = -1;
        OpWatch w = {};
        int r;

        if (direct && (mode == CHECK_REPAIR_LEAKS || mode == CHECK_REPAIR_ALL))
                direct_fd = open_direct(c->elems[c->n - 1].fd);
        /* The image by its object path (Image.Check/Repair), not by index. */
        r = chain_image_paths(ctx, c, &images);
        if (r >= 0)
                r = bus_new_call(ctx, images[c->n - 1], VDISK_IFACE_IMAGE, mode == CHECK_ONLY ? "Check" : "Repair",
                                 &m);
        if (r >= 0)
                r = bus_options_open(m);
        if (r >= 0 && mode == CHECK_REPAIR_LEAKS)
                r = bus_append_opt_bool(m, "leaks-only", true);
        if (r >= 0 && mode == CHECK_DRY_RUN)
                r = bus_append_opt_bool(m, "dry-run", true);
        if (r >= 0 && direct_fd >= 0)
                r = sd_bus_message_append(m, "{sv}", "direct-fd", "h", direct_fd);
        if (r >= 0)
                r = bus_options_close(m);
        if (r < 0)
                return log_build_failed(NULL, r);
        r = op_run(ctx, m, progress, c->elems[c->n - 1].path, &w);
        if (r == -EIO || r == -ECANCELED || r == -EINTR) {
                if (r == -EIO && streq_ptr(w.st.error_name, VDISK_ERROR_PREFIX "NotSupported")) {
                        op_watch_done(&w);
                        return -EOPNOTSUPP;
                }
                if (r == -EIO) {
                        log_error("Check failed: %s",
                                  w.st.error_message && *w.st.error_message ? w.st.error_message
                                  : w.st.error_name                         ? w.st.error_name
                                                                            : "unknown error");
                        r = EXIT_FAILURE;
                } else
                        r = op_finish(&w, c->elems[c->n - 1].path, r);
                op_watch_done(&w);
                return r;
        }
        if (r == 0) {
                *ret = w.st.result;
                w.st.result = (Value) {};
        }
        op_watch_done(&w);
        return r;
}

/* check, and repair: check -r all (or its dry run) with repair's summary
 * instead of check's report. */
int cmd_check(Ctx *ctx, Request *req) {
        _cleanup_value_ Value result = {}, fixed_result = {};
        const char *fmt = req->format, *file = req->files[0];
        CheckMode mode = req->check_mode;
        bool repair = req->verb == VERB_REPAIR, read_only = mode == CHECK_ONLY || mode == CHECK_DRY_RUN;
        Report rep, fixed = {};
        bool have_fixed = false;
        Chain chain = {};
        int r, ex;

        r = chain_open(ctx, file, fmt, read_only ? 0 : CHAIN_TOP_WRITABLE, read_only, &chain);
        if (r != 0)
                return r == EXIT_CANCELLED ? r : CHECK_EXIT_ERROR;

        /* repair writes direct whatever -T says, as vdisk-img */
        r = check_once(ctx, &chain, mode, repair || cache_mode_direct(req->src_cache), progress_wanted(false),
                       &result);
        if (r == 0 && !read_only) {
                report_from(&result, &fixed);
                if (fixed.n.corruptions_fixed || fixed.n.leaks_fixed) {
                        /* As qemu-img: describe the image as it is now. */
                        have_fixed = true;
                        fixed_result = result;
                        result = (Value) {};
                        report_from(&fixed_result, &fixed);
                        r = check_once(ctx, &chain, CHECK_ONLY, false, progress_wanted(false), &result);
                }
        }
        if (r == -EOPNOTSUPP) {
                if (repair)
                        log_error("The format of '%s' does not support repairs", file);
                else
                        log_error("This image format does not support checks");
                ex = CHECK_EXIT_UNSUPPORTED;
                goto finish;
        }
        if (r != 0) {
                ex = r == EXIT_CANCELLED ? r : CHECK_EXIT_ERROR;
                goto finish;
        }

        report_from(&result, &rep);
        if (repair) {
                if (!arg_quiet) {
                        report_messages(have_fixed ? &fixed : &rep, stdout);
                        repair_print_summary(have_fixed ? &fixed.n : &rep.n, &rep.n, mode == CHECK_DRY_RUN);
                }
                ex = check_exit_code(&rep.n);
                goto finish;
        }
        if (have_fixed)
                report_messages(&fixed, stderr);
        report_messages(&rep, stderr);
        ex = check_report(&rep.n, have_fixed ? &fixed.n : NULL, arg_output, arg_quiet, file,
                          chain.elems[chain.n - 1].qemu_format);

finish:
        chain_done(ctx, &chain);
        return ex;
}

/* ---------------------------------------------------------------- compare */

/* qemu-img compare through vdiskd (Disk.Compare): vdisk-img's verdict and
 * exit codes (0 same, 1 different, 2 an image could not be opened). */
int cmd_compare(Ctx *ctx, Request *req) {
        _cleanup_msg_ sd_bus_message *m = NULL;
        Chain a = {}, b = {};
        OpWatch w = {};
        int r, ex = 2;

        if (chain_open(ctx, req->files[0], req->format, 0, true, &a) != 0)
                return ex;
        if (chain_open(ctx, req->files[1], req->format2, 0, true, &b) != 0)
                goto finish;

        r = bus_new_call(ctx, a.disk, VDISK_IFACE_DISK, "Compare", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "o", b.disk);
        if (r >= 0)
                r = bus_options_open(m);
        if (r >= 0 && req->strict)
                r = bus_append_opt_bool(m, "strict", true);
        if (r >= 0)
                r = bus_options_close(m);
        if (r < 0) {
                ex = log_build_failed(NULL, r);
                goto finish;
        }
        r = op_run(ctx, m, progress_wanted(req->progress), req->files[1], &w);
        if (r > 0)
                ex = r;
        else if (r < 0)
                /* cancelled, or a read failed (vdisk-img: 3 or 4) */
                ex = r == -EIO ? (op_finish(&w, req->files[1], r), 4) : op_finish(&w, req->files[1], r);
        else {
                const char *d = value_str(&w.st.result, "difference", "content");
                CompareVerdict v = value_bool(&w.st.result, "equal", false) ? VERDICT_EQUAL :
                                   streq(d, "size")                         ? VERDICT_SIZE :
                                   streq(d, "block-status")                 ? VERDICT_BLOCK_STATUS
                                                                            : VERDICT_CONTENT;

                ex = compare_print_verdict(v, value_uint(&w.st.result, "offset", 0),
                                           value_uint(&w.st.result, "size", 0),
                                           value_uint(&w.st.result, "other-size", 0), req->quiet);
        }
        op_watch_done(&w);

finish:
        chain_done(ctx, &b);
        chain_done(ctx, &a);
        return ex;
}

/* ---------------------------------------------------------------- snapshot */

/* -l: the top image's Snapshots, as vdisk-img's snapshot -l. */
static int snapshot_list(Ctx *ctx, const char *image, const char *file, bool quiet) {
        _cleanup_value_ Value list = {};
        _cleanup_free_ InfoSnapshot *view = NULL;
        size_t n;
        int r;

        r = snapshots_get(ctx, image, file, &list);
        if (r != EXIT_OK)
                return r;
        view = snapshots_view(&list, &n);
        if (!view)
                return log_oom();
        if (!quiet)
                snapshot_list_print(view, n);
        return EXIT_OK;
}

/* qemu-img snapshot through vdiskd: -l reads the top image's Snapshots,
 * -c, -a and -d call its CreateSnapshot, ApplySnapshot, DeleteSnapshot;
 * vdisk-img's output, messages and exit codes (qemu-img 7.2's). */
int cmd_snapshot(Ctx *ctx, Request *req) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_msg_ sd_bus_message *m = NULL;
        _cleanup_(strv_freep) char **images = NULL;
        const char *file = req->files[0], *arg = req->action_arg;
        char action = req->action ?: 'l';
        Chain chain = {};
        int r, ex;

        ex = chain_open(ctx, file, req->format, action == 'l' ? 0 : CHAIN_TOP_WRITABLE, action == 'l', &chain);
        if (ex != 0)
                return ex;
        r = chain_image_paths(ctx, &chain, &images);
        if (r < 0) {
                log_error("%s: Could not list the images vdiskd opened: %s", file, strerror(-r));
                ex = EXIT_FAILURE;
                goto finish;
        }
        if (action == 'l') {
                ex = snapshot_list(ctx, images[chain.n - 1], file, req->quiet);
                goto finish;
        }

        r = bus_new_simple_call(ctx, images[chain.n - 1], VDISK_IFACE_IMAGE,
                                action == 'c' ? "CreateSnapshot" : action == 'a' ? "ApplySnapshot" : "DeleteSnapshot",
                                &m, "s", arg);
        if (r < 0) {
                ex = log_build_failed(file, r);
                goto finish;
        }
        r = bus_call(ctx, m, CALL_UNINTERRUPTIBLE, &error, NULL);
        if (r >= 0)
                ex = EXIT_OK;
        else if (error_is(&error, "NotSupported"))
                ex = snapshot_refuse(action, arg);
        else if (action == 'a' && error_is(&error, "InvalidArgument")) {
                log_error("Could not apply snapshot '%s': Failed to load snapshot: %s", arg, strerror(ENOENT));
                ex = EXIT_FAILURE;
        } else if (action == 'd' && error_is(&error, "InvalidArgument")) {
                log_error("Could not delete snapshot '%s': snapshot not found", arg);
                ex = EXIT_FAILURE;
        } else
                ex = log_bus_error(file, &error, r);

finish:
        chain_done(ctx, &chain);
        return ex;
}
