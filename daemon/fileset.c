/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * FileSet objects (/org/vdisk/VDisk1/fileset/<n>): named descriptors a client
 * collects over several calls, because one bus message carries only a few
 * (the system bus's max_message_unix_fds, 16 by default), and then hands to
 * OpenDisk or Disk.Open (option `file-set`) as the candidate parents of a
 * chain of any length. The open consumes the set. A set belongs to the uid
 * that created it; its descriptors are charged to that uid's descriptor limit
 * and a uid holds at most --max-file-sets-per-user sets. A set nobody
 * consumes or closes goes --file-set-timeout-sec after its last Add.
 */
#include <stdio.h>
#include <string.h>

#include "vdiskd.h"

FileSet *manager_find_file_set(Manager *m, const char *path) {
        if (!path)
                return NULL;
        for (FileSet *fs = m->file_sets; fs; fs = fs->file_sets_next)
                if (streq(fs->path, path))
                        return fs;
        return NULL;
}

/* Unexports the set and closes its descriptors (on a worker). */
FileSet *file_set_free(FileSet *fs) {
        Manager *m;
        Trash trash = {};

        if (!fs)
                return NULL;
        m = fs->manager;
        if (fs->slot) {
                emit_object_removed(m, OBJECT_FILE_SET, fs);
                fs->slot = sd_bus_slot_unref(fs->slot);
        }
        fs->timer = sd_event_source_disable_unref(fs->timer);
        for (size_t i = 0; i < fs->n_files; i++) {
                free(fs->files[i].name);
                trash_fd(&trash, fs->files[i].fd);
        }
        free(fs->files);
        trash_empty(m, fs->user, &trash);
        assert(fs->user->n_fds >= fs->n_files && fs->user->n_file_sets > 0);
        user_charge_fds(fs->user, 0, fs->n_files);
        fs->user->n_file_sets--;
        user_unref(fs->user);
        LIST_REMOVE(file_sets, m->file_sets, fs);
        free(fs->path);
        free(fs);
        manager_update_idle(m);
        return NULL;
}

static int on_file_set_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        file_set_free(userdata);
        return 0;
}

static int file_set_arm_timer(FileSet *fs) {
        Manager *m = fs->manager;

        if (m->file_set_timeout_usec == 0 || !m->event)
                return 0;
        fs->timer = sd_event_source_disable_unref(fs->timer);
        return sd_event_add_time_relative(m->event, &fs->timer, CLOCK_MONOTONIC, m->file_set_timeout_usec, 0,
                                          on_file_set_timeout, fs);
}

/* ---------------------------------------------------------------- properties */

static int property_get_owner(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        FileSet *fs = userdata;

        return sd_bus_message_append(reply, "u", (uint32_t) fs->owner);
}

static int property_get_count(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        FileSet *fs = userdata;

        return sd_bus_message_append(reply, "u", (uint32_t) fs->n_files);
}

/* ---------------------------------------------------------------- CreateFileSet */

int manager_create_file_set(Call *c) {
        Manager *m = c->manager;
        FileSet *fs;
        int r;

        if (c->user->n_file_sets >= m->max_file_sets_per_user) {
                call_fail(c, -E2BIG, NULL, "Too many file sets for user %u (at most %u)", (unsigned) c->uid,
                          m->max_file_sets_per_user);
                return 0;
        }
        fs = calloc(1, sizeof *fs);
        if (!fs)
                return -ENOMEM;
        fs->manager = m;
        fs->id = m->next_file_set_id++;
        fs->owner = c->uid;
        fs->user = user_ref(c->user);
        fs->user->n_file_sets++;
        LIST_PREPEND(file_sets, m->file_sets, fs);
        if (asprintf(&fs->path, ROOT_PATH "/fileset/%" PRIu64, fs->id) < 0) {
                fs->path = NULL;
                file_set_free(fs);
                return -ENOMEM;
        }
        r = file_set_arm_timer(fs);
        if (r >= 0)
                r = sd_bus_add_object_vtable(m->bus, &fs->slot, fs->path, IFACE_FILE_SET, file_set_vtable, fs);
        if (r < 0) {
                file_set_free(fs);
                return r;
        }
        emit_object_added(m, OBJECT_FILE_SET, fs);
        manager_update_idle(m);
        r = sd_bus_reply_method_return(c->message, "o", fs->path);
        if (r < 0)
                log_error("Failed to reply to CreateFileSet: %s", strerror(-r));
        call_free(c);
        return 0;
}

/* ---------------------------------------------------------------- consuming */

/* Moves the set's files into the call's `files` (after those the call
 * carries itself) and frees the set. The descriptors stay charged to the
 * same uid: from the set's charge to the call's. */
int file_set_consume(Call *c, FileSet *fs) {
        FileArg *nf;

        assert(fs->owner == c->uid && fs->user == c->user);
        for (size_t i = 0; i < fs->n_files; i++)
                for (size_t k = 0; k < c->options.n_files; k++)
                        if (streq(fs->files[i].name, c->options.files[k].name)) {
                                call_fail(c, 0, SD_BUS_ERROR_INVALID_ARGS,
                                          "Name '%s' is both in option 'files' and in the file set",
                                          fs->files[i].name);
                                /* Consumed all the same: a set serves one open. */
                                file_set_free(fs);
                                return -EEXIST;
                        }
        if (fs->n_files > 0) {
                nf = reallocarray(c->options.files, c->options.n_files + fs->n_files, sizeof(FileArg));
                if (!nf)
                        return -ENOMEM;
                c->options.files = nf;
                memcpy(&nf[c->options.n_files], fs->files, fs->n_files * sizeof(FileArg));
                c->options.n_files += fs->n_files;
                c->options.set |= OPT_FILES;
        }
        /* The set's charge moves to the call: the uid's count stays. */
        c->n_fds_charged += fs->n_files;
        free(fs->files);
        fs->files = NULL;
        fs->n_files = 0;
        file_set_free(fs);
        return 0;
}

/* ---------------------------------------------------------------- methods */

static FileSet *call_file_set(Call *c) {
        FileSet *fs = call_target(c);

        if (!fs)
                call_fail(c, 0, SD_BUS_ERROR_UNKNOWN_OBJECT, "The file set does not exist (any more)");
        return fs;
}

static int add_run(Call *c) {
        FileSet *fs = call_file_set(c);
        FileArg *nf;
        size_t n = c->options.n_files;
        int r;

        if (!fs)
                return 0;
        /* The descriptors are charged to the set's owner: only it fills it. */
        if (fs->user != c->user) {
                call_fail(c, 0, SD_BUS_ERROR_ACCESS_DENIED, "Only the owner of a file set adds files to it");
                return 0;
        }
        for (size_t i = 0; i < n; i++)
                for (size_t k = 0; k < fs->n_files; k++)
                        if (streq(c->options.files[i].name, fs->files[k].name)) {
                                call_fail(c, 0, SD_BUS_ERROR_INVALID_ARGS, "The file set already holds '%s'",
                                          fs->files[k].name);
                                return 0;
                        }
        if (n > 0) {
                nf = reallocarray(fs->files, fs->n_files + n, sizeof(FileArg));
                if (!nf)
                        return -ENOMEM;
                fs->files = nf;
                memcpy(&nf[fs->n_files], c->options.files, n * sizeof(FileArg));
                fs->n_files += n;
                free(c->options.files);
                c->options.files = NULL;
                c->options.n_files = 0;
                /* The descriptors' charge moves from the call to the set. */
                assert(c->n_fds_charged >= n);
                c->n_fds_charged -= n;
        }
        r = file_set_arm_timer(fs);
        if (r < 0)
                log_error("Failed to re-arm the timeout of %s: %s", fs->path, strerror(-r));
        if (n > 0) {
                const char *changed[] = { "Count", NULL };

                emit_properties_changed(c->manager, OBJECT_FILE_SET, fs, changed);
        }
        call_reply_empty(c);
        return 0;
}

static int close_run(Call *c) {
        FileSet *fs = call_file_set(c);

        if (!fs)
                return 0;
        file_set_free(fs);
        call_reply_empty(c);
        return 0;
}

static const MethodSpec spec_add = { "file-set-add", NULL, OBJECT_FILE_SET, add_run };
static const MethodSpec spec_close = { "file-set-close", NULL, OBJECT_FILE_SET, close_run };

static int method_add(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        FileSet *fs = userdata;
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = call_new(fs->manager, msg, &spec_add, &c);
        if (r >= 0)
                r = files_read(msg, "files", &c->options.files, &c->options.n_files, error);
        if (r >= 0)
                r = options_parse(msg, 0, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

static int method_close(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        FileSet *fs = userdata;
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = call_new(fs->manager, msg, &spec_close, &c);
        if (r >= 0)
                r = options_parse(msg, 0, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

const sd_bus_vtable file_set_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("OwnerUID", "u", property_get_owner, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Count", "u", property_get_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_METHOD_WITH_NAMES("Add", "a{sh}a{sv}", SD_BUS_PARAM(files) SD_BUS_PARAM(options), "", ,
                                 method_add, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("Close", "a{sv}", SD_BUS_PARAM(options), "", , method_close,
                                 SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};
