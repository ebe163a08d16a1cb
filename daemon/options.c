/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The trailing `a{sv} options` of every method: each method names the keys it
 * takes; an unknown key, a key given twice or a value of the wrong type is
 * InvalidArgs naming the key, so a typo never passes silently.
 */
#include <fcntl.h>
#include <string.h>

#include "vdiskd.h"

typedef struct OptionDef {
        const char *key;
        const char *signature;
        uint32_t bit;
} OptionDef;

static const OptionDef option_defs[] = {
        { "auth.no_user_interaction", "b",     OPT_NO_USER_INTERACTION },
        { "display-name",             "s",     OPT_DISPLAY_NAME },
        { "read-only",                "b",     OPT_READ_ONLY },
        { "files",                    "a{sh}", OPT_FILES },
        { "skip-consistency-checks",  "b",     OPT_SKIP_CHECKS },
        { "variant",                  "s",     OPT_VARIANT },
        { "block-size",               "u",     OPT_BLOCK_SIZE },
        { "uuid",                     "s",     OPT_UUID },
        { "comment",                  "s",     OPT_COMMENT },
        { "pchs",                     "(uuu)", OPT_PCHS },
        { "lchs",                     "(uuu)", OPT_LCHS },
        { "format-options",           "a{ss}", OPT_FORMAT_OPTIONS },
        { "size",                     "t",     OPT_SIZE },
        { "sparse-size",              "t",     OPT_SPARSE_SIZE },
        { "open",                     "b",     OPT_OPEN },
        { "allow-shrink",             "b",     OPT_ALLOW_SHRINK },
        { "dry-run",                  "b",     OPT_DRY_RUN },
        { "leaks-only",               "b",     OPT_LEAKS_ONLY },
        { "top-only",                 "b",     OPT_TOP_ONLY },
        { "direct-fd",                "h",     OPT_DIRECT_FD },
        { "persist",                  "b",     OPT_PERSIST },
        { "file-set",                 "o",     OPT_FILE_SET },
        { "preallocation",            "s",     OPT_PREALLOCATION },
        { "compress",                 "b",     OPT_COMPRESS },
        { "direct-only",              "b",     OPT_DIRECT_ONLY },
        { "strict",                   "b",     OPT_STRICT },
        { "target-is-zero",           "b",     OPT_TARGET_IS_ZERO },
        { "source-top-only",          "b",     OPT_SOURCE_TOP_ONLY },
        { "parent-name",              "s",     OPT_PARENT_NAME },
        { "unsafe",                   "b",     OPT_UNSAFE },
};

void options_done(Options *o, Trash *t) {
        free(o->display_name);
        free(o->variant);
        free(o->comment);
        free(o->file_set);
        free(o->preallocation);
        free(o->parent_name);
        if (o->format_options)
                vdisk_strv_free(o->format_options);
        for (size_t i = 0; i < o->n_files; i++) {
                free(o->files[i].name);
                trash_fd(t, o->files[i].fd);
        }
        free(o->files);
        if (o->set & OPT_DIRECT_FD)
                trash_fd(t, o->direct_fd);
        *o = (Options) {};
}

static int read_bool(sd_bus_message *m, int *ret) {
        int b, r;

        r = sd_bus_message_read(m, "b", &b);
        if (r < 0)
                return r;
        *ret = !!b;
        return 0;
}

static int read_string(sd_bus_message *m, char **ret) {
        const char *s;
        char *copy;
        int r;

        r = sd_bus_message_read(m, "s", &s);
        if (r < 0)
                return r;
        copy = strdup(s);
        if (!copy)
                return -ENOMEM;
        free(*ret);
        *ret = copy;
        return 0;
}

static int read_geometry(sd_bus_message *m, vdisk_geometry *ret) {
        return sd_bus_message_read(m, "(uuu)", &ret->cylinders, &ret->heads, &ret->sectors);
}

static int read_string_map(sd_bus_message *m, char ***ret) {
        char **v = NULL;
        size_t n = 0;
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{ss}");
        if (r < 0)
                return r;
        for (;;) {
                const char *k, *val;
                char **nv;

                r = sd_bus_message_read(m, "{ss}", &k, &val);
                if (r < 0)
                        goto fail;
                if (r == 0)
                        break;
                nv = reallocarray(v, n + 3, sizeof(char *));
                if (!nv) {
                        r = -ENOMEM;
                        goto fail;
                }
                v = nv;
                v[n] = strdup(k);
                v[n + 1] = strdup(val);
                v[n + 2] = NULL;
                n += 2;
                if (!v[n - 2] || !v[n - 1]) {
                        r = -ENOMEM;
                        goto fail;
                }
        }
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                goto fail;
        if (!v) {
                v = calloc(1, sizeof(char *));
                if (!v)
                        return -ENOMEM;
        }
        *ret = v;
        return 0;
fail:
        if (v)
                vdisk_strv_free(v);
        return r;
}

int files_read(sd_bus_message *m, const char *what, FileArg **files, size_t *n_files, sd_bus_error *error) {
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sh}");
        if (r < 0)
                return r;
        for (;;) {
                const char *name;
                FileArg *nf, *f;
                int fd;

                r = sd_bus_message_read(m, "{sh}", &name, &fd);
                if (r < 0)
                        return fd_read_failed(r, error);
                if (r == 0)
                        break;
                if (!name[0] || strlen(name) > 4096)
                        return set_error(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "%s: names must be non-empty and shorter than 4096 bytes", what);
                for (size_t i = 0; i < *n_files; i++)
                        if (streq((*files)[i].name, name))
                                return set_error(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "%s: name '%s' given twice", what, name);
                nf = reallocarray(*files, *n_files + 1, sizeof(FileArg));
                if (!nf)
                        return -ENOMEM;
                *files = nf;
                /* In the array before the fd is duplicated: options_done()
                 * (or the FileSet) hands every copy to a worker to close. The
                 * file itself is checked on the worker (files_vet()). */
                f = &(*files)[(*n_files)++];
                *f = (FileArg) { .fd = -1 };
                f->name = strdup(name);
                if (!f->name)
                        return -ENOMEM;
                r = fd_accept(fd, 0, name, &f->fd, &f->writable, error);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_exit_container(m);
}

/* Create, CreateDiff, Copy: "preallocation" is a creation option like
 * those of format-options (qemu-img's -o preallocation=), where it goes. */
static int fold_preallocation(Options *o, sd_bus_error *error) {
        size_t n = 0;
        char **nv;

        for (char **k = o->format_options; k && k[0]; k += 2, n += 2)
                if (streq(k[0], "preallocation"))
                        return set_error(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Option 'preallocation' given twice (also in 'format-options')");
        nv = reallocarray(o->format_options, n + 3, sizeof(char *));
        if (!nv)
                return -ENOMEM;
        o->format_options = nv;
        nv[n] = strdup("preallocation");
        nv[n + 1] = strdup(o->preallocation);
        nv[n + 2] = NULL;
        if (!nv[n] || !nv[n + 1])
                return -ENOMEM;
        return 0;
}

static int check_text(const char *key, const char *s, size_t max, sd_bus_error *error) {
        if (strlen(s) > max)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "Option '%s' is too long", key);
        return 0;
}

int options_parse(sd_bus_message *m, uint32_t allowed, Options *o, sd_bus_error *error) {
        int r;

        allowed |= OPT_NO_USER_INTERACTION;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        for (;;) {
                const OptionDef *def = NULL;
                const char *key, *contents;
                char type;

                r = sd_bus_message_enter_container(m, 'e', "sv");
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                r = sd_bus_message_read(m, "s", &key);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < ELEMENTSOF(option_defs); i++)
                        if (streq(option_defs[i].key, key)) {
                                def = &option_defs[i];
                                break;
                        }
                if (!def || !(allowed & def->bit))
                        return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "Unknown option '%s'", key);
                if (o->set & def->bit)
                        return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "Option '%s' given twice", key);
                r = sd_bus_message_peek_type(m, &type, &contents);
                if (r < 0)
                        return r;
                if (type != 'v' || !contents || !streq(contents, def->signature))
                        return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "Option '%s' must be of type '%s'",
                                         key, def->signature);
                r = sd_bus_message_enter_container(m, 'v', def->signature);
                if (r < 0)
                        return r;
                switch (def->bit) {
                case OPT_NO_USER_INTERACTION:
                        r = read_bool(m, &o->no_user_interaction);
                        break;
                case OPT_DISPLAY_NAME:
                        r = read_string(m, &o->display_name);
                        if (r >= 0)
                                r = check_text(key, o->display_name, DISPLAY_NAME_MAX, error);
                        break;
                case OPT_READ_ONLY:
                        r = read_bool(m, &o->read_only);
                        break;
                case OPT_FILES:
                        r = files_read(m, "Option 'files'", &o->files, &o->n_files, error);
                        break;
                case OPT_SKIP_CHECKS:
                        r = read_bool(m, &o->skip_checks);
                        break;
                case OPT_VARIANT:
                        r = read_string(m, &o->variant);
                        if (r >= 0 && !streq(o->variant, "dynamic") && !streq(o->variant, "fixed"))
                                r = set_error(error, SD_BUS_ERROR_INVALID_ARGS,
                                              "Option 'variant' must be 'dynamic' or 'fixed'");
                        break;
                case OPT_BLOCK_SIZE:
                        r = sd_bus_message_read(m, "u", &o->block_size);
                        /* What libvdisk refuses for every format (a format may
                         * narrow the range: that shows on the Operation); 0 is
                         * the format's default. */
                        if (r >= 0 && o->block_size != 0 &&
                            (o->block_size < 512 || (o->block_size & (o->block_size - 1))))
                                r = set_error(error, SD_BUS_ERROR_INVALID_ARGS,
                                              "Option 'block-size' must be 0 (the format's default) or a "
                                              "power of two of at least 512");
                        break;
                case OPT_UUID: {
                        const char *s;

                        r = sd_bus_message_read(m, "s", &s);
                        if (r >= 0 && s[0]) {
                                if (vdisk_uuid_parse(s, o->uuid) < 0)
                                        r = set_error(error, SD_BUS_ERROR_INVALID_ARGS,
                                                      "Option 'uuid' is not a valid UUID");
                                else
                                        o->have_uuid = true;
                        }
                        break;
                }
                case OPT_COMMENT:
                        r = read_string(m, &o->comment);
                        if (r >= 0)
                                r = check_text(key, o->comment, COMMENT_MAX, error);
                        break;
                case OPT_PCHS:
                        r = read_geometry(m, &o->pchs);
                        break;
                case OPT_LCHS:
                        r = read_geometry(m, &o->lchs);
                        break;
                case OPT_FORMAT_OPTIONS:
                        r = read_string_map(m, &o->format_options);
                        break;
                case OPT_SIZE:
                        r = sd_bus_message_read(m, "t", &o->size);
                        if (r >= 0 && o->size > IMAGE_SIZE_MAX)
                                r = set_error(error, SD_BUS_ERROR_INVALID_ARGS,
                                              "Option 'size' is beyond the largest image size (%" PRIu64
                                              " bytes)", (uint64_t) IMAGE_SIZE_MAX);
                        break;
                case OPT_SPARSE_SIZE:
                        r = sd_bus_message_read(m, "t", &o->sparse_size);
                        if (r >= 0 && (o->sparse_size % 512 || o->sparse_size > SPARSE_SIZE_MAX))
                                r = set_error(error, SD_BUS_ERROR_INVALID_ARGS,
                                              "Option 'sparse-size' must be a multiple of 512 up to %u",
                                              SPARSE_SIZE_MAX);
                        break;
                case OPT_OPEN:
                        r = read_bool(m, &o->open);
                        break;
                case OPT_COMPRESS:
                        r = read_bool(m, &o->compress);
                        break;
                case OPT_DIRECT_ONLY:
                        r = read_bool(m, &o->direct_only);
                        break;
                case OPT_ALLOW_SHRINK:
                        r = read_bool(m, &o->allow_shrink);
                        break;
                case OPT_DRY_RUN:
                        r = read_bool(m, &o->dry_run);
                        break;
                case OPT_LEAKS_ONLY:
                        r = read_bool(m, &o->leaks_only);
                        break;
                case OPT_TOP_ONLY:
                        r = read_bool(m, &o->top_only);
                        break;
                case OPT_PERSIST:
                        r = read_bool(m, &o->persist);
                        break;
                case OPT_STRICT:
                        r = read_bool(m, &o->strict);
                        break;
                case OPT_TARGET_IS_ZERO:
                        r = read_bool(m, &o->target_is_zero);
                        break;
                case OPT_SOURCE_TOP_ONLY:
                        r = read_bool(m, &o->source_top_only);
                        break;
                case OPT_UNSAFE:
                        r = read_bool(m, &o->unsafe);
                        break;
                case OPT_PARENT_NAME:
                        /* A name relative to the child's directory, as qemu
                         * takes a backing name; vdiskd never opens it. */
                        r = read_string(m, &o->parent_name);
                        if (r >= 0 && (o->parent_name[0] == 0 || strlen(o->parent_name) > PARENT_NAME_MAX))
                                r = set_error(error, SD_BUS_ERROR_INVALID_ARGS,
                                              "Option 'parent-name' must be 1 to %u bytes", PARENT_NAME_MAX);
                        break;
                case OPT_FILE_SET: {
                        const char *p;

                        r = sd_bus_message_read(m, "o", &p);
                        if (r >= 0) {
                                o->file_set = strdup(p);
                                if (!o->file_set)
                                        r = -ENOMEM;
                        }
                        break;
                }
                case OPT_PREALLOCATION:
                        r = read_string(m, &o->preallocation);
                        if (r >= 0 && !streq(o->preallocation, "off") && !streq(o->preallocation, "metadata") &&
                            !streq(o->preallocation, "falloc") && !streq(o->preallocation, "full"))
                                r = set_error(error, SD_BUS_ERROR_INVALID_ARGS,
                                              "Option 'preallocation' must be 'off', 'metadata', 'falloc' or 'full'");
                        break;
                case OPT_DIRECT_FD: {
                        int fd;

                        r = sd_bus_message_read(m, "h", &fd);
                        if (r < 0)
                                r = fd_read_failed(r, error);
                        else
                                r = fd_accept_direct(fd, "direct-fd", &o->direct_fd, error);
                        break;
                }
                default:
                        assert(0);
                }
                if (r < 0)
                        return r;
                o->set |= def->bit;
                r = sd_bus_message_exit_container(m);   /* v */
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);   /* e */
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        if ((o->set & OPT_PREALLOCATION) && (allowed & OPT_FORMAT_OPTIONS))
                return fold_preallocation(o, error);
        return 0;
}
