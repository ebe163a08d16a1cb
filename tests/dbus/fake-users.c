/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * LD_PRELOAD shim for the private test dbus-daemon only (never for vdiskd).
 *
 * dbus-daemon refuses a connection whose uid has no passwd entry: its
 * "may this uid connect" check looks the user's groups up first and rejects on
 * failure, even with <allow user="*"/>. The dbus suite runs vdiskd and its
 * clients as fixed uids (61001...) that need no entry in /etc/passwd, so this
 * shim answers getpwuid_r()/getpwnam_r()/getgrouplist() for the uids listed in
 * $VDISK_TEST_FAKE_UIDS (comma separated) and passes everything else on.
 * Names are "vdisktest<uid>", primary group = uid, no supplementary groups.
 */
#include <dlfcn.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#define FAKE_PREFIX "vdisktest"

static int fake_uid(uid_t uid) {
        const char *list = getenv("VDISK_TEST_FAKE_UIDS");
        char *end;

        if (!list)
                return 0;
        while (*list) {
                unsigned long v = strtoul(list, &end, 10);

                if (end == list)
                        return 0;
                if (v == (unsigned long) uid)
                        return 1;
                list = *end == ',' ? end + 1 : end;
        }
        return 0;
}

/* "vdisktest61001" -> 61001 if that uid is a fake one, else (uid_t) -1 */
static uid_t fake_name(const char *name) {
        char *end;
        unsigned long v;

        if (!name || strncmp(name, FAKE_PREFIX, strlen(FAKE_PREFIX)) != 0)
                return (uid_t) -1;
        v = strtoul(name + strlen(FAKE_PREFIX), &end, 10);
        if (*end || !fake_uid((uid_t) v))
                return (uid_t) -1;
        return (uid_t) v;
}

static int fill(uid_t uid, struct passwd *pw, char *buf, size_t buflen, struct passwd **result) {
        int n = snprintf(buf, buflen, FAKE_PREFIX "%u%c/%c/usr/sbin/nologin%c", (unsigned) uid, 0, 0, 0);
        size_t name_len;

        if (n < 0 || (size_t) n >= buflen) {
                *result = NULL;
                return ERANGE;
        }
        name_len = strlen(buf);
        pw->pw_name = buf;
        pw->pw_passwd = buf + name_len;       /* "" */
        pw->pw_uid = uid;
        pw->pw_gid = (gid_t) uid;
        pw->pw_gecos = buf + name_len;        /* "" */
        pw->pw_dir = buf + name_len + 1;      /* "/" */
        pw->pw_shell = buf + name_len + 3;    /* "/usr/sbin/nologin" */
        *result = pw;
        return 0;
}

int getpwuid_r(uid_t uid, struct passwd *pw, char *buf, size_t buflen, struct passwd **result) {
        static int (*real)(uid_t, struct passwd *, char *, size_t, struct passwd **);

        if (fake_uid(uid))
                return fill(uid, pw, buf, buflen, result);
        if (!real)
                real = (int (*)(uid_t, struct passwd *, char *, size_t, struct passwd **))
                        dlsym(RTLD_NEXT, "getpwuid_r");
        return real(uid, pw, buf, buflen, result);
}

int getpwnam_r(const char *name, struct passwd *pw, char *buf, size_t buflen, struct passwd **result) {
        static int (*real)(const char *, struct passwd *, char *, size_t, struct passwd **);
        uid_t uid = fake_name(name);

        if (uid != (uid_t) -1)
                return fill(uid, pw, buf, buflen, result);
        if (!real)
                real = (int (*)(const char *, struct passwd *, char *, size_t, struct passwd **))
                        dlsym(RTLD_NEXT, "getpwnam_r");
        return real(name, pw, buf, buflen, result);
}

struct passwd *getpwuid(uid_t uid) {
        static __thread struct passwd pw;
        static __thread char buf[128];
        static struct passwd *(*real)(uid_t);
        struct passwd *res;

        if (fake_uid(uid))
                return fill(uid, &pw, buf, sizeof buf, &res) == 0 ? res : NULL;
        if (!real)
                real = (struct passwd *(*)(uid_t)) dlsym(RTLD_NEXT, "getpwuid");
        return real(uid);
}

struct passwd *getpwnam(const char *name) {
        static __thread struct passwd pw;
        static __thread char buf[128];
        static struct passwd *(*real)(const char *);
        struct passwd *res;
        uid_t uid = fake_name(name);

        if (uid != (uid_t) -1)
                return fill(uid, &pw, buf, sizeof buf, &res) == 0 ? res : NULL;
        if (!real)
                real = (struct passwd *(*)(const char *)) dlsym(RTLD_NEXT, "getpwnam");
        return real(name);
}

int getgrouplist(const char *user, gid_t group, gid_t *groups, int *ngroups) {
        static int (*real)(const char *, gid_t, gid_t *, int *);

        if (fake_name(user) != (uid_t) -1) {
                int room = *ngroups;

                *ngroups = 1;
                if (room < 1)
                        return -1;
                groups[0] = group;
                return 1;
        }
        if (!real)
                real = (int (*)(const char *, gid_t, gid_t *, int *)) dlsym(RTLD_NEXT, "getgrouplist");
        return real(user, group, groups, ngroups);
}
