/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Choosing an internal snapshot to open (qemu-img's -l); creating,
 * applying and deleting snapshots (qemu-img snapshot -c/-a/-d). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core.h"

int snapshot_find(const vdisk_snapshot *v, size_t n, const snapshot_sel *sel, size_t *ret) {
        for (size_t i = 0; i < n; i++)
                if ((!sel->id || streq(v[i].id, sel->id)) && (!sel->name || streq(v[i].name, sel->name))) {
                        *ret = i;
                        return 0;
                }
        if (sel->id_or_name && sel->id)
                for (size_t i = 0; i < n; i++)
                        if (streq(v[i].name, sel->id)) {
                                *ret = i;
                                return 0;
                        }
        if (sel->id && sel->name)
                return vdisk_error(-ENOENT, "no snapshot with id '%s' and name '%s'", sel->id, sel->name);
        if (sel->id_or_name)
                return vdisk_error(-ENOENT, "no snapshot with id or name '%s'", sel->id);
        return vdisk_error(-ENOENT, "no snapshot with %s '%s'", sel->id ? "id" : "name",
                           sel->id ? sel->id : sel->name);
}

void snap_hold_done(struct snap_hold *h) {
        free(h->id);
        free(h->name);
        *h = (struct snap_hold) {};
}

void snap_hold_take(vdisk_disk *d, struct snap_hold *ret) {
        *ret = d->snap;
        d->snap = (struct snap_hold) {};
}

/* "snapshot.id=ID[,snapshot.name=NAME]" in either order, or a bare id or name.
 * A comma inside a value is written twice (",,"), as qemu's option syntax has it. */
static int parse_spec(const char *spec, char **ret_id, char **ret_name, int *ret_either) {
        _cleanup_free_ char *id = NULL, *name = NULL;
        const char *p = spec;

        *ret_either = 0;
        if (strncmp(spec, "snapshot.", 9) != 0) {
                if (!*spec)
                        return vdisk_error(-EINVAL, "empty snapshot name");
                id = strdup(spec);
                if (!id)
                        return -ENOMEM;
                *ret_id = TAKE_PTR(id);
                *ret_name = NULL;
                *ret_either = 1;
                return 0;
        }
        while (*p) {
                char **dst;
                char *v;
                size_t k = 0;

                if (strncmp(p, "snapshot.id=", 12) == 0) {
                        dst = &id;
                        p += 12;
                } else if (strncmp(p, "snapshot.name=", 14) == 0) {
                        dst = &name;
                        p += 14;
                } else
                        return vdisk_error(-EINVAL, "invalid snapshot option '%s' (snapshot.id=ID, "
                                           "snapshot.name=NAME)", p);
                if (*dst)
                        return vdisk_error(-EINVAL, "snapshot option given twice in '%s'", spec);
                v = calloc(1, strlen(p) + 1);
                if (!v)
                        return -ENOMEM;
                while (*p) {
                        if (*p == ',') {
                                if (p[1] != ',')
                                        break;
                                p++;
                        }
                        v[k++] = *p++;
                }
                *dst = v;
                if (k == 0)
                        return vdisk_error(-EINVAL, "empty value in snapshot option '%s'", spec);
                if (*p == ',')
                        p++;
        }
        *ret_id = TAKE_PTR(id);
        *ret_name = TAKE_PTR(name);
        return 0;
}

int vdisk_disk_set_snapshot(vdisk_disk *d, const char *spec) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        char *id = NULL, *name = NULL;
        int either, r;

        if (!d)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        snap_hold_done(&d->snap);
        if (!spec)
                return 0;
        r = parse_spec(spec, &id, &name, &either);
        if (r < 0)
                return r == -ENOMEM ? vdisk_error(r, "out of memory") : r;
        d->snap = (struct snap_hold) {
                .set = true,
                .sel = { .id = id, .name = name, .id_or_name = either },
                .id = id,
                .name = name,
        };
        return 0;
}

/* ---------------------------------------------------------------- snapshot -c/-a/-d */

enum { SNAP_CREATE, SNAP_APPLY, SNAP_DELETE };

static int disk_snapshot(vdisk_disk *d, int op, const char *arg) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        vdisk_snapshot *v = NULL;
        vdisk_image *img;
        size_t n = 0, i = 0;
        int r;

        if (!d || !arg)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        if (d->n == 0)
                return vdisk_error(-EINVAL, "the container is empty");
        img = d->images[d->n - 1];
        if (!img->be->snapshot_create)
                return vdisk_error(-EOPNOTSUPP, "%s: %s images have no writable internal snapshots",
                                   vdisk_io_name(img->io), img->be->info.name);
        /* apply changes the disk size */
        if (op == SNAP_APPLY) {
                r = disk_may_reshape(d);
                if (r < 0)
                        return r;
        }
        r = disk_make_writable(d, d->n - 1);
        if (r < 0)
                return r;
        img = d->images[d->n - 1];
        r = image_flush(img);
        if (r < 0)
                return r;
        if (op != SNAP_CREATE) {
                snapshot_sel sel = { .id = arg, .id_or_name = 1 };

                r = img->be->list_snapshots(img->state, &v, &n);
                if (r < 0)
                        return vdisk_error_prefix(r, vdisk_io_name(img->io));
                r = snapshot_find(v, n, &sel, &i);
                vdisk_snapshots_free(v, n);
                if (r < 0)
                        return r;
        }
        if (op == SNAP_CREATE) {
                struct timespec ts = {};

                (void) clock_gettime(CLOCK_REALTIME, &ts);
                r = img->be->snapshot_create(img->state, arg, (int64_t) ts.tv_sec, (uint32_t) ts.tv_nsec);
        } else if (op == SNAP_APPLY)
                r = img->be->snapshot_apply(img->state, i);
        else
                r = img->be->snapshot_delete(img->state, i);
        image_refresh(img);
        return r < 0 ? vdisk_error_prefix(r, vdisk_io_name(img->io)) : 0;
}

int vdisk_disk_snapshot_create(vdisk_disk *d, const char *name) {
        return disk_snapshot(d, SNAP_CREATE, name);
}

int vdisk_disk_snapshot_apply(vdisk_disk *d, const char *id_or_name) {
        return disk_snapshot(d, SNAP_APPLY, id_or_name);
}

int vdisk_disk_snapshot_delete(vdisk_disk *d, const char *id_or_name) {
        return disk_snapshot(d, SNAP_DELETE, id_or_name);
}
