/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdiskctl rebase: vdisk-img rebase's arguments (-b, -F, -u, -f, -p, -q),
 * run by vdiskd's Disk.Rebase. vdiskctl opens the image with its chain (the
 * top writable) and the new backing file with its chain (read-only), each as
 * a Disk from its own descriptors; vdiskd compares, copies and relinks.
 * -u needs both chains to open too: vdiskd never opens a file by name.
 */

#include <errno.h>

#include "vdiskctl.h"

int cmd_rebase(Ctx *ctx, Request *req) {
        _cleanup_msg_ sd_bus_message *m = NULL;
        _cleanup_free_ char *backing_path = NULL;
        const char *file = req->files[0], *backing = req->backing;
        Chain chain = {}, new_chain = {};
        OpWatch w = {};
        int r, ex = EXIT_FAILURE;

        if (!backing)
                return usage_error("Must specify backing file (-b) or use unsafe mode (-u)");
        /* As qemu-img 7.2: a new backing file needs its format named. */
        if (*backing && !req->backing_format) {
                log_error("Could not change the backing file to '%s': backing format must be specified", backing);
                return EXIT_FAILURE;
        }

        r = chain_open(ctx, file, req->format, CHAIN_TOP_WRITABLE, false, &chain);
        if (r != 0)
                return r;
        if (*backing) {
                /* Named relative to the image's directory, as it records it. */
                r = path_relative_to(file, backing, &backing_path);
                if (r < 0) {
                        ex = log_oom();
                        goto finish;
                }
                r = chain_open(ctx, backing_path, req->backing_format, 0, true, &new_chain);
                if (r != 0) {
                        ex = r;
                        goto finish;
                }
        }

        r = bus_new_call(ctx, chain.disk, VDISK_IFACE_DISK, "Rebase", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "o", new_chain.disk ?: "/");
        if (r >= 0)
                r = bus_options_open(m);
        if (r >= 0 && req->unsafe)
                r = bus_append_opt_bool(m, "unsafe", true);
        if (r >= 0 && *backing)
                r = bus_append_opt_string(m, "parent-name", backing);
        if (r >= 0)
                r = bus_options_close(m);
        if (r < 0) {
                ex = log_build_failed(file, r);
                goto finish;
        }
        r = op_run(ctx, m, progress_wanted(req->progress), file, &w);
        ex = op_finish(&w, file, r);

finish:
        op_watch_done(&w);
        chain_done(ctx, &new_chain);
        chain_done(ctx, &chain);
        return ex;
}
