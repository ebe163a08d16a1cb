/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Operation objects (/org/vdisk/VDisk1/operation/<n>): one long libvdisk
 * operation on a Disk, run as a task on the disk's queue with a
 * vdisk_progress the main loop samples every 200 ms.
 *
 *   queued → running → (cancelling) → succeeded | failed | cancelled
 *
 * The end goes out in this order: the disk's and the operation's final
 * properties (PropertiesChanged), `Completed`, the replies to pending Waits;
 * then the object lingers (--linger-sec) and is removed. Finished operations
 * are bounded: past --max-finished-operations-per-user (of its starter) or
 * --max-finished-operations (in all), the oldest finished one goes at once.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "vdiskd.h"

#define SAMPLE_USEC OP_PROGRESS_MIN_INTERVAL_USEC

static const char *const kind_names[_OP_KIND_MAX] = {
        [OP_CREATE] = "create",
        [OP_CREATE_DIFF] = "create-diff",
        [OP_COPY] = "copy",
        [OP_MERGE] = "merge",
        [OP_COMPACT] = "compact",
        [OP_RESIZE] = "resize",
        [OP_CHECK] = "check",
        [OP_REPAIR] = "repair",
        [OP_COMPARE] = "compare",
        [OP_COPY_TO] = "copy-to",
        [OP_REBASE] = "rebase",
};

static const char *const state_names[_OP_STATE_MAX] = {
        [OP_QUEUED] = "queued",
        [OP_RUNNING] = "running",
        [OP_CANCELLING] = "cancelling",
        [OP_SUCCEEDED] = "succeeded",
        [OP_FAILED] = "failed",
        [OP_CANCELLED] = "cancelled",
};

const char *op_kind_to_string(OpKind k) {
        return k >= 0 && k < _OP_KIND_MAX ? kind_names[k] : NULL;
}

const char *op_state_to_string(OpState s) {
        return s >= 0 && s < _OP_STATE_MAX ? state_names[s] : NULL;
}

static bool op_finished(const Operation *o) {
        return IN_SET3(o->state, OP_SUCCEEDED, OP_FAILED, OP_CANCELLED);
}

static void strv_free_local(char **v) {
        if (v)
                vdisk_strv_free(v);
}

static int strv_push(char ***v, const char *s) {
        size_t n = 0;
        char **nv, *copy;

        while (*v && (*v)[n])
                n++;
        copy = strdup(s);
        if (!copy)
                return -ENOMEM;
        nv = reallocarray(*v, n + 2, sizeof(char *));
        if (!nv) {
                free(copy);
                return -ENOMEM;
        }
        nv[n] = copy;
        nv[n + 1] = NULL;
        *v = nv;
        return 0;
}

int operation_new(Manager *m, OpKind kind, Disk *d, User *u, Operation **ret) {
        Operation *o;
        int r;

        o = calloc(1, sizeof *o);
        if (!o)
                return -ENOMEM;
        o->manager = m;
        o->id = m->next_operation_id++;
        o->kind = kind;
        o->state = OP_QUEUED;
        o->uid = u->uid;
        o->user = user_ref(u);
        o->cancelable = 1;
        o->fd = -1;
        o->start_time = now_realtime(m);
        op_progress_init(&o->progress, now_monotonic(m));
        LIST_PREPEND(operations, m->operations, o);
        m->n_operations++;
        manager_update_idle(m);
        if (asprintf(&o->path, ROOT_PATH "/operation/%" PRIu64, o->id) < 0) {
                o->path = NULL;
                operation_free(o);
                return -ENOMEM;
        }
        o->disk_path = strdup(d->path);
        o->error_name = strdup("");
        o->error_message = strdup("");
        r = vdisk_progress_new(NULL, NULL, &o->vp);
        if (!o->disk_path || !o->error_name || !o->error_message || r < 0) {
                operation_free(o);
                return -ENOMEM;
        }
        o->disk = disk_ref(d);
        *ret = o;
        return 0;
}

/* Moves the parsed arguments of the starting call into the operation. */
int operation_take_call(Operation *o, Call *c) {
        Disk *d = o->disk;
        int r;

        o->fd = TAKE_FD(c->fd);
        o->fd_writable = c->fd_writable;
        /* The descriptors move from the call's charge to ours until the work ends. */
        o->n_fds_charged = (o->fd >= 0) + !!(c->options.set & OPT_DIRECT_FD) + (unsigned) c->options.n_files;
        user_charge_fds(o->user, o->n_fds_charged, 0);
        o->format = TAKE_PTR(c->format);
        o->options = c->options;
        c->options = (Options) {};
        o->size = c->t1;
        o->from = c->u1;
        o->to = c->u2;
        o->index = c->u1;
        o->image_keys[0] = c->image_keys[0];
        o->image_keys[1] = c->image_keys[1];

        /* The Disk and the Images it works on. */
        r = strv_push(&o->objects, d->path);
        for (unsigned i = 0; r >= 0 && i < d->n_images; i++) {
                bool use;

                switch (o->kind) {
                case OP_MERGE:
                        use = i >= MIN(o->from, o->to) && i <= MAX(o->from, o->to);
                        break;
                case OP_COMPACT:
                case OP_CHECK:
                case OP_REPAIR:
                        use = i == o->index;
                        break;
                case OP_CREATE_DIFF:
                        use = i + 1 == d->n_images;
                        break;
                default:
                        use = true;
                }
                if (use)
                        r = strv_push(&o->objects, d->images[i]->path);
        }
        if (r < 0)
                return r;

        o->create = (vdisk_create_opts) {
                .size = sizeof(vdisk_create_opts),
                .image_flags = o->options.variant && streq(o->options.variant, "fixed") ? VDISK_IMAGE_FLAGS_FIXED : 0,
                .block_size = o->options.block_size,
                .comment = o->options.comment,
                .uuid = o->options.have_uuid ? o->options.uuid : NULL,
                .pchs = o->options.pchs,
                .lchs = o->options.lchs,
                .options = (const char *const *) o->options.format_options,
                .diff_size = o->kind == OP_CREATE_DIFF ? o->options.size : 0,
        };

        if (IN_SET3(o->kind, OP_CREATE, OP_CREATE_DIFF, OP_COPY)) {
                Manager *m = o->manager;

                o->new_image_id = m->next_image_id++;
                if (o->options.display_name && o->options.display_name[0])
                        o->io_name = strdup(o->options.display_name);
                else if (asprintf(&o->io_name, "image %" PRIu64, o->new_image_id) < 0)
                        o->io_name = NULL;
                if (!o->io_name)
                        return -ENOMEM;
        }
        if (o->kind == OP_COPY && o->options.open) {
                const char *sender = sd_bus_message_get_sender(c->message);

                o->new_disk_id = o->manager->next_disk_id++;
                /* The new Disk counts against the starter's limit from now on. */
                o->disk_reserved = true;
                o->user->n_disks++;
                o->manager->n_disks_reserved++;
                if (o->options.persist) {
                        /* check_limits() checked the cap. */
                        o->persist_reserved = true;
                        o->user->n_persistent++;
                }
                /* Tracked from when the Disk exists (op_apply); a starter that
                 * has left by then gets its Disk closed at once. */
                if (sender) {
                        o->starter = strdup(sender);
                        if (!o->starter)
                                return -ENOMEM;
                }
        }
        return 0;
}

int operation_set_other(Operation *o, Disk *other) {
        int r = 0;

        assert(IN_SET3(o->kind, OP_COMPARE, OP_COPY_TO, OP_REBASE) && !o->other);
        o->other_path = strdup(other->path);
        if (!o->other_path)
                return -ENOMEM;
        o->other = disk_ref(other);
        /* Objects: this Disk and its images, the other Disk and the images
         * the work reads (Compare, Rebase: all) or writes (CopyTo: the top). */
        r = strv_push(&o->objects, other->path);
        for (unsigned i = 0; r >= 0 && i < other->n_images; i++)
                if (o->kind != OP_COPY_TO || i + 1 == other->n_images)
                        r = strv_push(&o->objects, other->images[i]->path);
        return r;
}

/* The other Disk is free again: its Operation is "/" and, if its creator
 * left meanwhile, it closes now. */
static void op_release_other(Operation *o) {
        Disk *other = TAKE_PTR(o->other);

        if (!other)
                return;
        if (other->operation == o) {
                other->operation = NULL;
                if (other->exported) {
                        const char *dc[] = { "Operation", NULL };
                        emit_properties_changed(o->manager, OBJECT_DISK, other, dc);
                }
                disk_operation_finished(other);
        }
        disk_unref(other);
}

/* ---------------------------------------------------------------- bus helpers */

static void op_emit(Operation *o, const char **names) {
        if (!o->exported || !names[0])
                return;
        emit_properties_changed(o->manager, OBJECT_OPERATION, o, names);
}

static void op_set_state(Operation *o, OpState s, const char **changed, size_t *n) {
        if (o->state == s)
                return;
        o->state = s;
        changed[(*n)++] = "State";
}

static void op_set_cancelable(Operation *o, int v, const char **changed, size_t *n) {
        if (o->cancelable == v)
                return;
        o->cancelable = v;
        changed[(*n)++] = "Cancelable";
}

static uint64_t expected_end_realtime(Operation *o) {
        uint64_t mono = now_monotonic(o->manager), real = now_realtime(o->manager);

        if (o->progress.expected_end == 0)
                return 0;
        if (o->progress.expected_end >= mono)
                return real + (o->progress.expected_end - mono);
        return real;
}

/* ---------------------------------------------------------------- progress timer */

static int on_progress_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Operation *o = userdata;
        const char *changed[12] = {};
        size_t n = 0;

        if (o->state == OP_QUEUED && task_started(&o->task))
                op_set_state(o, OP_RUNNING, changed, &n);
        /* Create kinds are past stopping as soon as they run (op_run). */
        if (atomic_load(&o->finishing) == OP_FINISHING)
                op_set_cancelable(o, 0, changed, &n);
        if ((o->state == OP_RUNNING || o->state == OP_CANCELLING) &&
            op_progress_sample(&o->progress, vdisk_progress_done(o->vp), vdisk_progress_total(o->vp),
                               now_monotonic(o->manager)) > 0) {
                changed[n++] = "Progress";
                changed[n++] = "BytesDone";
                changed[n++] = "BytesTotal";
                changed[n++] = "Rate";
                changed[n++] = "ExpectedEndTime";
        }
        op_emit(o, changed);
        (void) sd_event_source_set_time(s, usec + SAMPLE_USEC);
        (void) sd_event_source_set_enabled(s, SD_EVENT_ON);
        return 0;
}

/* ---------------------------------------------------------------- worker */

/* Worker: no Cancel can stop the operation any more. Returns true if one was
 * accepted before (then the work stops, or has already completed anyway). */
static bool op_enter_finishing(Operation *o) {
        return atomic_exchange(&o->finishing, OP_FINISHING) == OP_CANCEL_REQUESTED;
}

/* The image an operation writes into, which takes a `direct-fd` (NULL
 * when it has none or the chain is empty). */
static vdisk_image *op_written_image(Operation *o, vdisk_disk *vd) {
        vdisk_disk *wd = o->kind == OP_COPY_TO ? (o->other ? o->other->vd : NULL) : vd;
        unsigned n = wd ? vdisk_disk_count(wd) : 0;

        if (n == 0)
                return NULL;
        switch (o->kind) {
        case OP_MERGE:
                return vdisk_disk_image(wd, o->to);
        case OP_COMPACT:
        case OP_REPAIR:
                return vdisk_disk_image(wd, o->index);
        case OP_COPY_TO:
        case OP_RESIZE:
                return vdisk_disk_image(wd, n - 1);
        default:
                return NULL;
        }
}

static void op_run(Task *t) {
        Operation *o = container_of(t, Operation, task);
        vdisk_disk *vd = o->disk->vd;
        vdisk_disk *dst = NULL;
        vdisk_io *io = NULL;
        vdisk_resolver *res = NULL;
        FilesResolver *fr = NULL;
        bool creates = IN_SET3(o->kind, OP_CREATE, OP_CREATE_DIFF, OP_COPY);
        vdisk_image *direct_img = NULL;
        int r = 0;

        vdisk_clear_error();
        if (!vd) {
                outcome_setf(&o->outcome, -ENXIO, "the disk was closed");
                (void) op_enter_finishing(o);
                return;
        }
        if (o->fd >= 0 && creates) {
                /* The file itself, checked here rather than in the handler
                 * (fstat can block on FUSE/NFS): a regular file, and empty,
                 * because a failure truncates the destination, which is only
                 * harmless while it is empty. Refused, it is left as it was. */
                r = fd_vet(o->fd, FD_NEED_EMPTY, "fd", NULL, &o->outcome);
                /* The output's companion files (extents of a split VMDK),
                 * matched by the name the new image gives them: empty too,
                 * as a failure truncates them. */
                for (size_t i = 0; r >= 0 && i < o->options.n_files; i++) {
                        FileArg *f = &o->options.files[i];
                        struct stat st = {};

                        r = fd_vet(f->fd, FD_NEED_EMPTY, f->name, &st, &o->outcome);
                        f->dev = st.st_dev;
                        f->ino = st.st_ino;
                }
                if (r >= 0 && o->options.n_files > 0) {
                        r = files_resolver_new(o->options.files, o->options.n_files, &fr, &res);
                        if (r < 0)
                                outcome_set(&o->outcome, r);
                }
                if (r < 0) {
                        (void) op_enter_finishing(o);
                        (void) disk_info_read(vd, &o->info);
                        return;
                }
                o->create.resolver = res;
        }
        /* libvdisk's create takes no progress object: it cannot be stopped
         * once it runs, so Cancel is refused from here on (Cancelable false). */
        if ((o->kind == OP_CREATE || o->kind == OP_CREATE_DIFF) && op_enter_finishing(o)) {
                outcome_setf(&o->outcome, -ECANCELED, "the operation was cancelled before it started");
                (void) disk_info_read(vd, &o->info);
                return;
        }
        if (o->fd >= 0) {
                /* -t none/directsync: a copy into a format that appends
                 * its blocks stays direct too (with the direct-fd). */
                r = io_from_fd(TAKE_FD(o->fd), o->options.direct_only ? VDISK_IO_DIRECT_ONLY : 0, o->io_name,
                               &io);
                if (r < 0)
                        goto finish;
                /* Large aligned writes go through the caller's O_DIRECT
                 * descriptor of the same file (libvdisk checks that). */
                if (o->options.set & OPT_DIRECT_FD) {
                        r = vdisk_io_set_direct_fd(io, o->options.direct_fd);
                        /* The io holds its own duplicate: ours goes now, on
                         * this worker, like every caller descriptor. */
                        close(o->options.direct_fd);
                        o->options.set &= ~OPT_DIRECT_FD;
                        if (r < 0)
                                goto finish;
                }
        }
        /* Images addressed by path: where they are in the chain now. */
        for (unsigned k = 0; k < 2 && o->image_keys[k]; k++) {
                unsigned n = vdisk_disk_count(vd), i;

                for (i = 0; i < n; i++)
                        if ((const void *) vdisk_disk_image(vd, i) == o->image_keys[k])
                                break;
                if (i == n) {
                        /* Only Merge, Compact, Check, Repair: no destination fd. */
                        assert(!io);
                        (void) op_enter_finishing(o);
                        outcome_setf(&o->outcome, -EINVAL, "the image left the disk's chain before the "
                                     "operation started");
                        (void) disk_info_read(vd, &o->info);
                        return;
                }
                if (k == 0)
                        o->from = o->index = i;
                else
                        o->to = i;
        }
        /* Merge, Compact, CopyTo, Resize, Repair: the image written gets the
         * caller's O_DIRECT twin of its file for the work
         * (vdisk_image_set_direct_fd checks it is the same file:
         * BadFileDescriptor otherwise). */
        if (o->options.set & OPT_DIRECT_FD) {
                direct_img = op_written_image(o, vd);
                r = direct_img ? vdisk_image_set_direct_fd(direct_img, o->options.direct_fd) : 0;
                close(o->options.direct_fd);
                o->options.set &= ~OPT_DIRECT_FD;
                if (r < 0) {
                        direct_img = NULL;
                        goto finish;
                }
        }
        switch (o->kind) {
        case OP_CREATE:
                r = vdisk_disk_create_base(vd, io, o->format, o->size, &o->create);
                break;
        case OP_CREATE_DIFF:
                if (o->options.parent_name) {
                        /* The caller's name for the parent (relative to the
                         * child's directory, as qemu reads it), and the
                         * parent's format, so nothing probes it. */
                        unsigned n = vdisk_disk_count(vd);
                        const vdisk_backend_info *pb = n > 0 ? vdisk_image_backend(vdisk_disk_image(vd, n - 1)) : NULL;

                        o->create.parent_name = o->options.parent_name;
                        o->create.parent_format = pb ? pb->qemu_name : NULL;
                }
                r = vdisk_disk_create_diff(vd, io, o->format, &o->create);
                break;
        case OP_COPY: {
                vdisk_copy_opts copts = {
                        .size = sizeof(copts),
                        .new_size = o->options.size,
                        .create = o->create,
                        .from_same = -1,
                        .to_same = -1,
                        .sparse_size = o->options.sparse_size,
                        .compress = o->options.compress,
                };

                r = vdisk_disk_new(&dst);
                if (r >= 0)
                        r = vdisk_copy(vd, dst, io, o->format, &copts, o->vp);
                break;
        }
        case OP_MERGE:
                /* The top merged down (vdiskctl commit) is left a valid image
                 * when it is writable: relinked onto `to` (a VMDK's parentCID
                 * follows the new CID of `to`), it then leaves the chain as
                 * Merge says. A read-only top is left as it was. */
                if (o->from > o->to && o->from + 1 == vdisk_disk_count(vd) &&
                    !vdisk_image_readonly(vdisk_disk_image(vd, o->from))) {
                        r = vdisk_commit(vd, o->to, &(vdisk_commit_opts) { .size = sizeof(vdisk_commit_opts),
                                                                           .flags = VDISK_COMMIT_KEEP_TOP },
                                         o->vp, NULL);
                        if (r >= 0)
                                r = vdisk_disk_close_top(vd);
                } else
                        r = vdisk_merge(vd, o->from, o->to, o->vp, NULL);
                break;
        case OP_COMPACT:
                r = vdisk_compact(vd, o->index, o->vp);
                break;
        case OP_COMPARE:
        case OP_COPY_TO: {
                /* The other Disk is ours until the end (its Operation is
                 * this one): no other task touches its container. */
                vdisk_disk *ov = o->other ? o->other->vd : NULL;
                if (!ov) {
                        r = -ENXIO;
                        outcome_setf(&o->outcome, r, "the other disk was closed");
                        break;
                }
                if (o->kind == OP_COPY_TO) {
                        r = vdisk_copy_into(vd, ov, (o->options.target_is_zero ? VDISK_COPY_INTO_TARGET_ZERO : 0) |
                                            (o->options.source_top_only ? VDISK_COPY_INTO_TOP_ONLY : 0) |
                                            (o->options.compress ? VDISK_COPY_INTO_COMPRESS : 0), o->vp);
                        if (r < 0) {
                                /* Name what was left behind, as convert -n would. */
                                outcome_set(&o->outcome, r);
                                outcome_append(&o->outcome, "the target holds a mix of its old content and "
                                               "the source's");
                        }
                        (void) disk_info_read(ov, &o->other_info);
                        break;
                }
                vdisk_compare_result cres = { .size = sizeof(cres) };

                r = vdisk_compare_ex(vd, ov, o->options.strict ? VDISK_COMPARE_STRICT : 0, &cres, o->vp);
                if (r >= 0) {
                        o->w_have_compare = true;
                        o->w_equal = r == 0;
                        o->w_offset = cres.offset;
                        o->w_difference = cres.outcome;
                        o->w_size = vdisk_disk_size(vd);
                        o->w_other_size = vdisk_disk_size(ov);
                        r = 0;
                }
                break;
        }
        case OP_REBASE: {
                /* The new chain is the other Disk (ours until the end), or
                 * none when the call named "/". */
                vdisk_disk *ov = o->other ? o->other->vd : NULL;
                vdisk_rebase_opts bopts = {
                        .size = sizeof(bopts),
                        .flags = o->options.unsafe ? VDISK_REBASE_UNSAFE : 0,
                        .parent_name = o->options.parent_name,
                };
                vdisk_rebase_result bres = { .size = sizeof(bres) };

                if (o->other_path && !ov) {
                        r = -ENXIO;
                        outcome_setf(&o->outcome, r, "the other disk was closed");
                } else {
                        r = vdisk_rebase(vd, ov, &bopts, &bres, o->vp);
                        if (r < 0)
                                outcome_set(&o->outcome, r);
                }
                if (r < 0 && vdisk_disk_count(vd) > 0) {
                        /* What the top is linked to now, as vdisk-img
                         * says: before the link switch, still the old
                         * parent (and it reads as before). */
                        const char *top = vdisk_image_name(vdisk_disk_image(vd, vdisk_disk_count(vd) - 1));

                        if (bres.failed_step == VDISK_REBASE_STEP_LINK)
                                outcome_append(&o->outcome, "writing the new link of '%s' failed: it may name "
                                               "either parent", top);
                        else
                                outcome_append(&o->outcome, "'%s' still uses its old parent", top);
                }
                break;
        }
        case OP_RESIZE: {
                vdisk_resize_opts ropts = {
                        .size = sizeof(ropts),
                        .preallocation = o->options.preallocation,
                };

                r = vdisk_resize_ex(vd, o->size, &ropts, o->vp);
                break;
        }
        case OP_CHECK:
        case OP_REPAIR: {
                uint32_t flags = 0;

                if (o->kind == OP_REPAIR) {
                        flags = o->options.leaks_only ? VDISK_CHECK_REPAIR_LEAKS : VDISK_CHECK_REPAIR_ALL;
                        if (o->options.dry_run)
                                flags |= VDISK_CHECK_DRY_RUN;
                }
                /* Worker-private: the Result getter may run meanwhile; op_done
                 * publishes it. */
                o->w_report = (vdisk_check_report) { .size = sizeof(vdisk_check_report) };
                r = vdisk_check(vd, o->index, flags, &o->w_report, o->vp);
                o->w_have_report = r >= 0;
                break;
        }
        default:
                r = -EINVAL;
        }
finish:
        /* From here on nothing can be stopped any more: a Cancel now gets
         * NotCancelable instead of showing `cancelling` before a success. */
        (void) op_enter_finishing(o);
        if (direct_img)
                (void) vdisk_image_set_direct_fd(direct_img, -1);
        /* Unless the work worded its failure itself (CopyTo). */
        if (!(r < 0 && o->outcome.r < 0))
                outcome_set(&o->outcome, r);
        if (r >= 0 && dst && o->options.open) {
                if (disk_info_read(dst, &o->new_info) >= 0)
                        o->new_vd = TAKE_PTR(dst);
        }
        if (dst) {
                /* Closes (and flushes) the copy: a failure there fails the
                 * operation, and the destination is truncated below. */
                int cr = vdisk_disk_close(TAKE_PTR(dst));

                if (cr < 0 && r >= 0) {
                        r = cr;
                        outcome_set(&o->outcome, r);
                }
        }
        if (r < 0 && io && creates) {
                /* The destination was empty when we got it: leave it so. */
                if (vdisk_io_truncate(io, 0) >= 0)
                        outcome_append(&o->outcome, "the destination file was truncated to 0 bytes");
                for (size_t i = 0; i < o->options.n_files; i++)
                        if (o->options.files[i].writable)
                                (void) ftruncate(o->options.files[i].fd, 0);
        }
        /* A Copy `open` Disk may keep the resolver: it must not look at
         * our options any more. */
        files_resolver_done_opening(fr);
        o->create.resolver = NULL;
        vdisk_resolver_unref(res);
        vdisk_io_unref(io);
        (void) disk_info_read(vd, &o->info);
}

/* ---------------------------------------------------------------- the end */

/* Cuts s to at most max bytes, at a character boundary (UTF-8). */
static void text_clamp(char *s, size_t max) {
        size_t n;

        if (!s || strlen(s) <= max)
                return;
        n = max;
        while (n > 0 && ((unsigned char) s[n] & 0xC0) == 0x80)
                n--;
        s[n] = 0;
}

/* The check report as published: at most RESULT_MESSAGES_MAX messages of
 * RESULT_MESSAGE_MAX bytes (the library bounds them per format already; this
 * keeps an Operation's size fixed whatever an image holds). */
static void report_clamp(vdisk_check_report *rep) {
        size_t n = 0;

        if (!rep->messages)
                return;
        for (; rep->messages[n]; n++) {
                if (n >= RESULT_MESSAGES_MAX) {
                        free(rep->messages[n]);
                        rep->messages[n] = NULL;
                        continue;
                }
                text_clamp(rep->messages[n], RESULT_MESSAGE_MAX);
        }
}

static int on_linger(sd_event_source *s, uint64_t usec, void *userdata) {
        Operation *o = userdata;

        if (o->n_waits > 0) {
                /* Someone still waits: keep the object a while longer. */
                (void) sd_event_source_set_time(s, usec + o->manager->linger_usec);
                (void) sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
                return 0;
        }
        operation_free(o);
        return 0;
}

/* Answers a Wait with what Completed carries, and ends the call. */
static void op_reply_wait(Operation *o, Call *c) {
        int r;

        r = sd_bus_reply_method_return(c->message, "sss", op_state_to_string(o->state), o->error_name,
                                       o->error_message);
        if (r < 0)
                log_error("Failed to reply to Wait: %s", strerror(-r));
        call_free(c);
}

/* ---------------------------------------------------------------- finished operations */

/* Two FIFO lists of finished operations, the manager's and the starter's:
 * appending at the end and reaping from the front are O(1), and so is
 * unlinking one that goes earlier (Dismiss, linger). */
#define FINISHED_APPEND(name, owner, o)                                 \
        do {                                                            \
                (o)->name##_prev = (owner)->finished_tail;              \
                (o)->name##_next = NULL;                                \
                if ((owner)->finished_tail)                             \
                        (owner)->finished_tail->name##_next = (o);      \
                else                                                    \
                        (owner)->finished_head = (o);                   \
                (owner)->finished_tail = (o);                           \
                (owner)->n_finished++;                                  \
        } while (0)
#define FINISHED_REMOVE(name, owner, o)                                 \
        do {                                                            \
                if ((o)->name##_prev)                                   \
                        (o)->name##_prev->name##_next = (o)->name##_next; \
                else                                                    \
                        (owner)->finished_head = (o)->name##_next;      \
                if ((o)->name##_next)                                   \
                        (o)->name##_next->name##_prev = (o)->name##_prev; \
                else                                                    \
                        (owner)->finished_tail = (o)->name##_prev;      \
                (o)->name##_prev = (o)->name##_next = NULL;             \
                (owner)->n_finished--;                                  \
        } while (0)

static void op_list_finished(Operation *o) {
        Manager *m = o->manager;

        assert(!o->finished_listed);
        FINISHED_APPEND(all_finished, m, o);
        FINISHED_APPEND(user_finished, o->user, o);
        o->finished_listed = true;
}

static void op_unlist_finished(Operation *o) {
        if (!o->finished_listed)
                return;
        FINISHED_REMOVE(all_finished, o->manager, o);
        FINISHED_REMOVE(user_finished, o->user, o);
        o->finished_listed = false;
}

/* The newest finished operation o was just listed: the oldest ones of its
 * starter, then the oldest of all, go while a limit is exceeded. Never o
 * itself (both limits are at least 1). Their Waits were answered when they
 * finished. */
static void op_reap_finished(Operation *o) {
        Manager *m = o->manager;
        User *u = o->user;

        while (u->n_finished > m->max_finished_operations_per_user && u->finished_head != o)
                operation_free(u->finished_head);
        while (m->n_finished > m->max_finished_operations && m->finished_head != o)
                operation_free(m->finished_head);
}

/* ErrorName and ErrorMessage of an operation that did not succeed (the
 * message clamped to ERROR_MESSAGE_MAX); both "" when out of memory. */
_printf_(3, 4)
static void op_set_error(Operation *o, const char *name, const char *fmt, ...) {
        va_list ap;
        int r;

        free(o->error_name);
        free(o->error_message);
        o->error_name = strdup(name);
        va_start(ap, fmt);
        r = vasprintf(&o->error_message, fmt, ap);
        va_end(ap);
        if (r < 0)
                o->error_message = NULL;
        text_clamp(o->error_message, ERROR_MESSAGE_MAX);
        if (!o->error_name || !o->error_message) {
                free(o->error_name);
                free(o->error_message);
                o->error_name = strdup("");
                o->error_message = strdup("");
        }
}

/* The end as clients see it: the final PropertiesChanged (`changed`), then
 * Completed, then the replies to the pending Wait calls. */
static void op_emit_end(Operation *o, const char **changed) {
        op_emit(o, changed);
        if (o->exported)
                emit_completed(o);
        for (size_t i = 0; i < o->n_waits; i++)
                op_reply_wait(o, o->waits[i]);
        o->n_waits = 0;
        o->waits = mfree_ptr(o->waits);
}

static void operation_finish(Operation *o) {
        Manager *m = o->manager;
        Disk *d = o->disk;
        const char *changed[16] = {};
        size_t n = 0;
        bool success = o->outcome.r >= 0;
        int r;

        o->timer = sd_event_source_disable_unref(o->timer);
        op_set_state(o, success ? OP_SUCCEEDED : o->outcome.r == -ECANCELED ? OP_CANCELLED : OP_FAILED,
                     changed, &n);
        op_set_cancelable(o, 0, changed, &n);
        o->end_time = now_realtime(m);
        changed[n++] = "EndTime";
        (void) op_progress_finish(&o->progress, success, vdisk_progress_done(o->vp), vdisk_progress_total(o->vp),
                                  now_monotonic(m));
        changed[n++] = "Progress";
        changed[n++] = "BytesDone";
        changed[n++] = "BytesTotal";
        changed[n++] = "Rate";
        changed[n++] = "ExpectedEndTime";
        if (!success) {
                /* Stopped because vdiskd stops, not by a user's Cancel: a name of its own. */
                bool stopping = o->service_stopping && o->outcome.r == -ECANCELED;
                const char *why = o->outcome.message ?: strerror(-o->outcome.r);

                if (stopping)
                        op_set_error(o, ERROR_PREFIX "ServiceStopping", "vdiskd is stopping: %s", why);
                else
                        op_set_error(o, errno_to_error_name(o->outcome.r), "%s", why);
                changed[n++] = "ErrorName";
                changed[n++] = "ErrorMessage";
        }
        if (o->result_objects)
                changed[n++] = "ResultObjects";
        if (o->result.have_report || o->result.removed || o->result.have_compare)
                changed[n++] = "Result";

        /* The disk first: its Operation is "/" again when Completed arrives. */
        if (d) {
                if (d->operation == o) {
                        d->operation = NULL;
                        if (d->exported) {
                                const char *dc[] = { "Operation", NULL };
                                emit_properties_changed(m, OBJECT_DISK, d, dc);
                        }
                }
                o->disk = NULL;
                disk_operation_finished(d);
                disk_unref(d);
        }
        op_release_other(o);
        op_emit_end(o, changed);

        op_list_finished(o);
        op_reap_finished(o);
        if (m->shutting_down)
                return;
        r = sd_event_add_time_relative(m->event, &o->linger, CLOCK_MONOTONIC, m->linger_usec, 0, on_linger, o);
        if (r < 0) {
                log_error("Failed to arm the linger timer: %s", strerror(-r));
                operation_free(o);
        }
        manager_update_idle(m);
}

/* The operation's effects on the objects: runs on the main thread after the
 * worker returned. */
static void op_apply(Operation *o) {
        Manager *m = o->manager;
        Disk *d = o->disk;
        NewImageName name = {
                .io_name = o->io_name,
                .display_name = o->options.display_name ?: "",
                .id = o->new_image_id,
        };
        bool new_on_disk = o->kind == OP_CREATE || o->kind == OP_CREATE_DIFF;

        if (o->info.valid && d && !d->gone) {
                /* Images that leave the chain (merge): their paths are the result. */
                for (unsigned i = 0; i < d->n_images; i++) {
                        bool found = false;

                        for (unsigned k = 0; k < o->info.n_images; k++)
                                if (o->info.images[k].key == d->images[i]->info.key)
                                        found = true;
                        if (!found && o->kind == OP_MERGE)
                                (void) strv_push(&o->result.removed, d->images[i]->path);
                }
                if (o->kind == OP_MERGE && !o->result.removed)
                        o->result.removed = calloc(1, sizeof(char *));
                disk_apply_info(d, &o->info, new_on_disk ? &name : NULL, new_on_disk ? 1 : 0);
                if (new_on_disk && o->outcome.r >= 0)
                        for (unsigned i = 0; i < d->n_images; i++)
                                if (d->images[i]->id == o->new_image_id)
                                        (void) strv_push(&o->result_objects, d->images[i]->path);
        }
        if (o->other && o->other_info.valid && !o->other->gone)
                disk_apply_info(o->other, &o->other_info, NULL, 0);
        if (o->new_vd) {
                Disk *nd;
                int r;

                r = disk_new(m, o->new_disk_id, o->uid, o->options.display_name, o->new_vd, &nd);
                if (r < 0) {
                        log_error("Failed to publish the copy: %s", strerror(-r));
                        return;
                }
                o->new_vd = NULL;
                /* The Disk now counts itself. */
                assert(o->disk_reserved);
                o->disk_reserved = false;
                o->user->n_disks--;
                m->n_disks_reserved--;
                if (o->persist_reserved) {
                        o->persist_reserved = false;
                        o->user->n_persistent--;
                        disk_set_persistent(nd);
                }
                /* Exported complete: InterfacesAdded carries its images. */
                disk_apply_info(nd, &o->new_info, &name, 1);
                (void) disk_export(nd);
                (void) strv_push(&o->result_objects, nd->path);
                for (unsigned i = 0; i < nd->n_images; i++)
                        (void) strv_push(&o->result_objects, nd->images[i]->path);
                if (nd->persistent)
                        return;
                /* Like a Disk from OpenDisk, it follows its creator: the
                 * starter of the Copy. */
                r = disk_track_name(nd, o->starter);
                if (r < 0) {
                        /* Gone already (or not watchable): nobody would ever close it. */
                        if (r != -ENXIO && r != -ESRCH)
                                log_error("Failed to track the starter of %s: %s", o->path, strerror(-r));
                        nd->creator_gone = true;
                        disk_close_async(nd);
                }
        }
}

static void op_done(Task *t, bool cancelled) {
        Operation *o = container_of(t, Operation, task);
        Trash trash = {};

        /* Publish what the worker wrote for itself. */
        o->result.report = o->w_report;
        o->result.have_report = o->w_have_report;
        report_clamp(&o->result.report);
        o->w_report = (vdisk_check_report) {};
        o->w_have_report = false;
        if (o->w_have_compare) {
                o->result.have_compare = true;
                o->result.equal = o->w_equal;
                o->result.offset = o->w_offset;
                o->result.size = o->w_size;
                o->result.other_size = o->w_other_size;
                o->result.difference = o->w_difference;
        }
        /* The destination (and its direct twin), when the work never took
         * them, close now. */
        trash_fd(&trash, TAKE_FD(o->fd));
        if (o->options.set & OPT_DIRECT_FD) {
                trash_fd(&trash, o->options.direct_fd);
                o->options.set &= ~OPT_DIRECT_FD;
        }
        trash_empty(o->manager, o->user, &trash);
        assert(o->user->n_fds >= o->n_fds_charged);
        user_charge_fds(o->user, 0, o->n_fds_charged);
        o->n_fds_charged = 0;

        if (cancelled)
                outcome_setf(&o->outcome, -ECANCELED, "the operation was cancelled before it started");
        else
                op_apply(o);
        operation_finish(o);
}

int operation_start(Operation *o) {
        Manager *m = o->manager;
        Disk *d = o->disk;
        int r;

        r = sd_bus_add_object_vtable(m->bus, &o->slot, o->path, IFACE_OPERATION, operation_vtable, o);
        if (r < 0)
                return r;
        o->exported = true;
        emit_object_added(m, OBJECT_OPERATION, o);

        d->operation = o;
        {
                const char *dc[] = { "Operation", NULL };
                emit_properties_changed(m, OBJECT_DISK, d, dc);
        }
        if (o->other) {
                const char *dc[] = { "Operation", NULL };

                o->other->operation = o;
                emit_properties_changed(m, OBJECT_DISK, o->other, dc);
        }
        r = sd_event_add_time_relative(m->event, &o->timer, CLOCK_MONOTONIC, SAMPLE_USEC, 0, on_progress_timer, o);
        if (r < 0)
                return r;
        o->task.run = op_run;
        o->task.done = op_done;
        return task_submit(m, &o->task, d, o->user);
}

/* Main thread: asks the worker to stop, unless it is past that point. The
 * compare-and-swap pairs with op_enter_finishing(): either the Cancel comes
 * first (the worker sees it) or the worker does (Cancel is refused). */
static bool op_request_cancel(Operation *o) {
        int expected = OP_STOPPABLE;

        if (!atomic_compare_exchange_strong(&o->finishing, &expected, OP_CANCEL_REQUESTED))
                return expected == OP_CANCEL_REQUESTED;
        vdisk_progress_cancel(o->vp);
        return true;
}

/* Stops an operation for shutdown: running ones see the cancel flag, queued
 * ones end now (or when the loop gets to them). They end with
 * Error.ServiceStopping, unless a user's Cancel came first (Error.Cancelled)
 * or the work can no longer be stopped (it ends as it ends). */
void operation_cancel_for_shutdown(Operation *o) {
        const char *changed[4] = {};
        size_t n = 0;

        if (op_finished(o))
                return;
        if (o->state != OP_CANCELLING && op_request_cancel(o)) {
                o->service_stopping = true;
                op_set_state(o, OP_CANCELLING, changed, &n);
                op_set_cancelable(o, 0, changed, &n);
                op_emit(o, changed);
        }
        if (task_pending(&o->task))
                (void) task_cancel_queued(&o->task);
}

/* The stop bound passed and the operation's worker has not returned (it is
 * blocked in the file system): the operation ends for its clients now, with
 * Error.ServiceStopping, Completed and the replies to Wait. Nothing the worker
 * uses is touched (the outcome, the disk, the progress object): the process
 * exits right after this without waiting for the worker. */
void operation_abandon(Operation *o, unsigned stop_timeout_sec) {
        const char *changed[12] = {};
        size_t n = 0;

        if (op_finished(o))
                return;
        o->timer = sd_event_source_disable_unref(o->timer);
        op_set_state(o, OP_CANCELLED, changed, &n);
        op_set_cancelable(o, 0, changed, &n);
        o->end_time = now_realtime(o->manager);
        changed[n++] = "EndTime";
        op_set_error(o, ERROR_PREFIX "ServiceStopping",
                     "vdiskd stopped after %u s while the operation was still blocked in the file system; "
                     "its files are left as the kernel has them (a write in progress may still complete)",
                     stop_timeout_sec);
        changed[n++] = "ErrorName";
        changed[n++] = "ErrorMessage";
        op_emit_end(o, changed);
}

Operation *operation_free(Operation *o) {
        Trash trash = {};
        Manager *m;

        if (!o)
                return NULL;
        m = o->manager;
        assert(!task_pending(&o->task));
        if (o->exported) {
                emit_object_removed(m, OBJECT_OPERATION, o);
                o->slot = sd_bus_slot_unref(o->slot);
        }
        for (size_t i = 0; i < o->n_waits; i++) {
                (void) reply_error(o->waits[i]->message, ERROR_PREFIX "ServiceStopping", "vdiskd is stopping");
                call_free(o->waits[i]);
        }
        free(o->waits);
        op_unlist_finished(o);
        o->timer = sd_event_source_disable_unref(o->timer);
        o->linger = sd_event_source_disable_unref(o->linger);
        if (o->disk) {
                if (o->disk->operation == o)
                        o->disk->operation = NULL;
                disk_unref(o->disk);
        }
        if (o->other) {
                if (o->other->operation == o)
                        o->other->operation = NULL;
                o->other = disk_unref(o->other);
        }
        free(o->other_path);
        disk_info_clear(&o->other_info);
        LIST_REMOVE(operations, m->operations, o);
        m->n_operations--;
        free(o->path);
        free(o->disk_path);
        strv_free_local(o->objects);
        strv_free_local(o->result_objects);
        vdisk_check_report_clear(&o->result.report);
        vdisk_check_report_clear(&o->w_report);
        strv_free_local(o->result.removed);
        free(o->error_name);
        free(o->error_message);
        vdisk_progress_free(o->vp);
        trash_fd(&trash, o->fd);
        free(o->format);
        free(o->io_name);
        options_done(&o->options, &trash);
        free(o->starter);
        outcome_clear(&o->outcome);
        disk_info_clear(&o->info);
        disk_info_clear(&o->new_info);
        trash_vd(&trash, o->new_vd, 1);
        if (o->user) {
                trash_empty(m, o->user, &trash);
                assert(o->user->n_fds >= o->n_fds_charged);
                user_charge_fds(o->user, 0, o->n_fds_charged);
                if (o->disk_reserved) {
                        o->user->n_disks--;
                        m->n_disks_reserved--;
                }
                if (o->persist_reserved)
                        o->user->n_persistent--;
                user_unref(o->user);
        }
        free(o);
        manager_update_idle(m);
        return NULL;
}

/* ---------------------------------------------------------------- properties */

static int property_get_kind(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Operation *o = userdata;

        return sd_bus_message_append(reply, "s", op_kind_to_string(o->kind));
}

static int property_get_state(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Operation *o = userdata;

        return sd_bus_message_append(reply, "s", op_state_to_string(o->state));
}

static int property_get_progress(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Operation *o = userdata;
        const op_progress *p = &o->progress;

        if (streq(property, "Progress"))
                return sd_bus_message_append(reply, "d", p->fraction);
        if (streq(property, "BytesDone"))
                return sd_bus_message_append(reply, "t", p->bytes_done);
        if (streq(property, "BytesTotal"))
                return sd_bus_message_append(reply, "t", p->bytes_total);
        if (streq(property, "Rate"))
                return sd_bus_message_append(reply, "t", p->rate);
        return sd_bus_message_append(reply, "t", expected_end_realtime(o));
}

static int property_get_uid(sd_bus *bus, const char *path, const char *interface, const char *property,
                            sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Operation *o = userdata;

        return sd_bus_message_append(reply, "u", (uint32_t) o->uid);
}

static int property_get_disk_path(sd_bus *bus, const char *path, const char *interface, const char *property,
                                  sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Operation *o = userdata;

        return sd_bus_message_append(reply, "o", o->disk_path);
}

static int property_get_paths(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        char ***v = userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "o");
        if (r < 0)
                return r;
        for (char **p = *v; p && *p; p++) {
                r = sd_bus_message_append(reply, "o", *p);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

static int property_get_result(sd_bus *bus, const char *path, const char *interface, const char *property,
                               sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Operation *o = userdata;
        const vdisk_check_report *rep = &o->result.report;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "{sv}");
        if (r < 0)
                return r;
        if (o->result.have_report) {
                r = sd_bus_message_append(reply, "{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}",
                                          "corruptions", "t", rep->corruptions,
                                          "leaks", "t", rep->leaks,
                                          "check-errors", "t", rep->check_errors,
                                          "corruptions-fixed", "t", rep->corruptions_fixed,
                                          "leaks-fixed", "t", rep->leaks_fixed,
                                          "total-clusters", "t", rep->total_clusters,
                                          "allocated-clusters", "t", rep->allocated_clusters,
                                          "fragmented-clusters", "t", rep->fragmented_clusters,
                                          "compressed-clusters", "t", rep->compressed_clusters,
                                          "image-end-offset", "t", rep->image_end_offset);
                if (r < 0)
                        return r;
                r = bus_append_strv_entry(reply, "messages", 's', (const char *const *) rep->messages);
                if (r < 0)
                        return r;
        }
        if (o->result.removed) {
                r = bus_append_strv_entry(reply, "removed", 'o', (const char *const *) o->result.removed);
                if (r < 0)
                        return r;
        }
        if (o->result.have_compare) {
                r = sd_bus_message_append(reply, "{sv}{sv}{sv}", "equal", "b", (int) o->result.equal,
                                          "size", "t", o->result.size, "other-size", "t", o->result.other_size);
                if (r >= 0 && !o->result.equal)
                        r = sd_bus_message_append(reply, "{sv}{sv}", "offset", "t", o->result.offset, "difference",
                                                  "s", o->result.difference == VDISK_COMPARE_SIZE ? "size" :
                                                  o->result.difference == VDISK_COMPARE_BLOCK_STATUS ?
                                                  "block-status" : "content");
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

static int property_get_string_ptr(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        char **s = userdata;

        return sd_bus_message_append(reply, "s", *s ?: "");
}

/* ---------------------------------------------------------------- methods */

static int cancel_run(Call *c) {
        Operation *o = call_target(c);
        const char *changed[4] = {};
        size_t n = 0;

        if (!o) {
                call_fail(c, 0, SD_BUS_ERROR_UNKNOWN_OBJECT, "The operation does not exist (any more)");
                return 0;
        }
        if (op_finished(o)) {
                call_fail(c, 0, ERROR_PREFIX "NotCancelable", "The operation has already ended (%s)",
                          op_state_to_string(o->state));
                return 0;
        }
        if (o->state == OP_CANCELLING) {
                call_reply_empty(c);
                return 0;
        }
        if (!op_request_cancel(o)) {
                if (o->kind == OP_CREATE || o->kind == OP_CREATE_DIFF)
                        call_fail(c, 0, ERROR_PREFIX "NotCancelable",
                                  "The image is being created: creating cannot be stopped once it runs");
                else
                        call_fail(c, 0, ERROR_PREFIX "NotCancelable",
                                  "The operation is finishing and cannot be stopped");
                return 0;
        }
        op_set_state(o, OP_CANCELLING, changed, &n);
        op_set_cancelable(o, 0, changed, &n);
        op_emit(o, changed);
        /* Not started yet: it ends now (or, if queued in the pool, as soon as
         * the loop gets to it). */
        (void) task_cancel_queued(&o->task);
        call_reply_empty(c);
        return 0;
}

static int dismiss_run(Call *c) {
        Operation *o = call_target(c);

        if (!o) {
                call_fail(c, 0, SD_BUS_ERROR_UNKNOWN_OBJECT, "The operation does not exist (any more)");
                return 0;
        }
        if (!op_finished(o)) {
                call_fail(c, -EBUSY, NULL, "The operation is still %s; cancel it first", op_state_to_string(o->state));
                return 0;
        }
        operation_free(o);
        call_reply_empty(c);
        return 0;
}

/* Wait: the call stays in flight (counted in its caller's calls) until the
 * operation ends; then it gets what Completed carries. */
static int wait_run(Call *c) {
        Operation *o = call_target(c);
        Call **nw;

        if (!o) {
                call_fail(c, 0, SD_BUS_ERROR_UNKNOWN_OBJECT, "The operation does not exist (any more)");
                return 0;
        }
        if (op_finished(o)) {
                op_reply_wait(o, c);
                return 0;
        }
        if (o->n_waits >= o->manager->max_waits_per_operation) {
                call_fail(c, -E2BIG, NULL, "Too many calls wait for %s (at most %u)", o->path,
                          o->manager->max_waits_per_operation);
                return 0;
        }
        nw = reallocarray(o->waits, o->n_waits + 1, sizeof(Call *));
        if (!nw)
                return -ENOMEM;
        o->waits = nw;
        o->waits[o->n_waits++] = c;
        return 0;
}

static const MethodSpec spec_cancel = { "cancel", NULL, OBJECT_OPERATION, cancel_run };
static const MethodSpec spec_dismiss = { "dismiss", NULL, OBJECT_OPERATION, dismiss_run };
/* Wait reads the operation's outcome: one's own needs nothing, another uid's
 * is a read of its object (manage-other-user, privacy.c). */
static const MethodSpec spec_wait = { "wait", NULL, OBJECT_OPERATION, wait_run, .read_access = true };

static int method_common(sd_bus_message *msg, void *userdata, sd_bus_error *error, const MethodSpec *spec) {
        Operation *o = userdata;
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = call_new(o->manager, msg, spec, &c);
        if (r >= 0)
                r = options_parse(msg, 0, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

static int method_cancel(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_common(msg, userdata, error, &spec_cancel);
}

static int method_wait(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_common(msg, userdata, error, &spec_wait);
}

static int method_dismiss(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_common(msg, userdata, error, &spec_dismiss);
}

/* ---------------------------------------------------------------- vtable */

#define EMITS SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE
#define CONST SD_BUS_VTABLE_PROPERTY_CONST

const sd_bus_vtable operation_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Kind", "s", property_get_kind, 0, CONST),
        SD_BUS_PROPERTY("State", "s", property_get_state, 0, EMITS),
        SD_BUS_PROPERTY("Progress", "d", property_get_progress, 0, EMITS),
        SD_BUS_PROPERTY("BytesDone", "t", property_get_progress, 0, EMITS),
        SD_BUS_PROPERTY("BytesTotal", "t", property_get_progress, 0, EMITS),
        SD_BUS_PROPERTY("Rate", "t", property_get_progress, 0, EMITS),
        SD_BUS_PROPERTY("StartTime", "t", NULL, offsetof(Operation, start_time), CONST),
        SD_BUS_PROPERTY("ExpectedEndTime", "t", property_get_progress, 0, EMITS),
        SD_BUS_PROPERTY("EndTime", "t", NULL, offsetof(Operation, end_time), EMITS),
        SD_BUS_PROPERTY("Cancelable", "b", NULL, offsetof(Operation, cancelable), EMITS),
        SD_BUS_PROPERTY("StartedByUID", "u", property_get_uid, 0, CONST),
        SD_BUS_PROPERTY("Disk", "o", property_get_disk_path, 0, CONST),
        SD_BUS_PROPERTY("Objects", "ao", property_get_paths, offsetof(Operation, objects), CONST),
        SD_BUS_PROPERTY("ResultObjects", "ao", property_get_paths, offsetof(Operation, result_objects), EMITS),
        SD_BUS_PROPERTY("Result", "a{sv}", property_get_result, 0, EMITS),
        SD_BUS_PROPERTY("ErrorName", "s", property_get_string_ptr, offsetof(Operation, error_name), EMITS),
        SD_BUS_PROPERTY("ErrorMessage", "s", property_get_string_ptr, offsetof(Operation, error_message), EMITS),
        SD_BUS_METHOD_WITH_NAMES("Cancel", "a{sv}", SD_BUS_PARAM(options), "", , method_cancel,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("Wait", "a{sv}", SD_BUS_PARAM(options), "sss",
                                 SD_BUS_PARAM(state) SD_BUS_PARAM(error_name) SD_BUS_PARAM(error_message),
                                 method_wait, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("Dismiss", "a{sv}", SD_BUS_PARAM(options), "", , method_dismiss,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL_WITH_NAMES("Completed", "sss",
                                 SD_BUS_PARAM(state) SD_BUS_PARAM(error_name) SD_BUS_PARAM(error_message), 0),
        SD_BUS_VTABLE_END,
};
