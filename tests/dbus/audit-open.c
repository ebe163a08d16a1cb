/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * LD_PRELOAD shim for vdiskd in the dbus suite: logs every path the process
 * asks the C library to open, so a test can prove the daemon opens no file by
 * name while it serves requests (docs/dbus-api.md: "It never opens a path").
 *
 * Covered: open, open64, openat, openat64, __open_2, __open64_2, __openat_2,
 * __openat64_2, creat, creat64, fopen, fopen64, freopen, freopen64, opendir,
 * and syscall(SYS_open / SYS_openat / SYS_openat2 / SYS_creat). Raw system
 * calls that bypass libc are not seen here; the suite also runs strace.
 *
 * $VDISK_AUDIT_LOG names the log file (opened once, at load time). Each line:
 *   <CLOCK_MONOTONIC ns> <tid> <function> <dirfd|-> <path>
 * Tests keep only the lines after the moment the daemon was ready (same clock
 * as Python's time.monotonic_ns()). Without the variable the shim only passes
 * calls through.
 */
/* The 64-bit names are defined separately below; no redirection of open() to open64(). */
#undef _FILE_OFFSET_BITS
#include <dlfcn.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

#define LOG_FD_MIN 900

static int log_fd = -1;

__attribute__((constructor))
static void audit_init(void) {
        const char *path = getenv("VDISK_AUDIT_LOG");
        int fd;

        if (!path || !*path)
                return;
        fd = (int) syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0)
                return;
        /* Out of the way of the low numbers the daemon's own fds take. */
        log_fd = fcntl(fd, F_DUPFD_CLOEXEC, LOG_FD_MIN);
        close(fd);
}

static void audit(const char *fn, int dirfd, const char *path) {
        char line[4200];
        struct timespec ts;
        int errsv = errno, n;

        if (log_fd < 0)
                return;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if (dirfd == AT_FDCWD)
                n = snprintf(line, sizeof line, "%lld %ld %s - %s\n",
                             (long long) ts.tv_sec * 1000000000LL + ts.tv_nsec,
                             (long) syscall(SYS_gettid), fn, path ? path : "(null)");
        else
                n = snprintf(line, sizeof line, "%lld %ld %s %d %s\n",
                             (long long) ts.tv_sec * 1000000000LL + ts.tv_nsec,
                             (long) syscall(SYS_gettid), fn, dirfd, path ? path : "(null)");
        if (n > 0) {
                if ((size_t) n >= sizeof line)
                        n = sizeof line - 1;
                if (write(log_fd, line, (size_t) n) < 0) {
                        /* nothing to do: the test sees a missing line */
                }
        }
        errno = errsv;
}

#define REAL(name, type) \
        static __typeof__(type) real_##name; \
        if (!real_##name) \
                real_##name = (type) dlsym(RTLD_NEXT, #name)

static mode_t mode_arg(int flags, va_list ap) {
        if (flags & (O_CREAT | __O_TMPFILE))
                return (mode_t) va_arg(ap, unsigned int);
        return 0;
}

int open(const char *path, int flags, ...) {
        va_list ap;
        mode_t mode;
        REAL(open, int (*)(const char *, int, ...));

        va_start(ap, flags);
        mode = mode_arg(flags, ap);
        va_end(ap);
        audit("open", AT_FDCWD, path);
        return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
        va_list ap;
        mode_t mode;
        REAL(open64, int (*)(const char *, int, ...));

        va_start(ap, flags);
        mode = mode_arg(flags, ap);
        va_end(ap);
        audit("open64", AT_FDCWD, path);
        return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
        va_list ap;
        mode_t mode;
        REAL(openat, int (*)(int, const char *, int, ...));

        va_start(ap, flags);
        mode = mode_arg(flags, ap);
        va_end(ap);
        audit("openat", dirfd, path);
        return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
        va_list ap;
        mode_t mode;
        REAL(openat64, int (*)(int, const char *, int, ...));

        va_start(ap, flags);
        mode = mode_arg(flags, ap);
        va_end(ap);
        audit("openat64", dirfd, path);
        return real_openat64(dirfd, path, flags, mode);
}

/* The _FORTIFY_SOURCE entry points. */
int __open_2(const char *path, int flags);
int __open_2(const char *path, int flags) {
        REAL(__open_2, int (*)(const char *, int));

        audit("__open_2", AT_FDCWD, path);
        return real___open_2(path, flags);
}

int __open64_2(const char *path, int flags);
int __open64_2(const char *path, int flags) {
        REAL(__open64_2, int (*)(const char *, int));

        audit("__open64_2", AT_FDCWD, path);
        return real___open64_2(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags) {
        REAL(__openat_2, int (*)(int, const char *, int));

        audit("__openat_2", dirfd, path);
        return real___openat_2(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags) {
        REAL(__openat64_2, int (*)(int, const char *, int));

        audit("__openat64_2", dirfd, path);
        return real___openat64_2(dirfd, path, flags);
}

int creat(const char *path, mode_t mode) {
        REAL(creat, int (*)(const char *, mode_t));

        audit("creat", AT_FDCWD, path);
        return real_creat(path, mode);
}

int creat64(const char *path, mode_t mode) {
        REAL(creat64, int (*)(const char *, mode_t));

        audit("creat64", AT_FDCWD, path);
        return real_creat64(path, mode);
}

FILE *fopen(const char *path, const char *mode) {
        REAL(fopen, FILE *(*)(const char *, const char *));

        audit("fopen", AT_FDCWD, path);
        return real_fopen(path, mode);
}

FILE *fopen64(const char *path, const char *mode) {
        REAL(fopen64, FILE *(*)(const char *, const char *));

        audit("fopen64", AT_FDCWD, path);
        return real_fopen64(path, mode);
}

FILE *freopen(const char *path, const char *mode, FILE *f) {
        REAL(freopen, FILE *(*)(const char *, const char *, FILE *));

        audit("freopen", AT_FDCWD, path);
        return real_freopen(path, mode, f);
}

FILE *freopen64(const char *path, const char *mode, FILE *f) {
        REAL(freopen64, FILE *(*)(const char *, const char *, FILE *));

        audit("freopen64", AT_FDCWD, path);
        return real_freopen64(path, mode, f);
}

DIR *opendir(const char *path) {
        REAL(opendir, DIR *(*)(const char *));

        audit("opendir", AT_FDCWD, path);
        return real_opendir(path);
}

/* glibc 2.36 has no openat2() wrapper: a caller uses syscall(). */
long syscall(long nr, ...) {
        va_list ap;
        long a[6];
        REAL(syscall, long (*)(long, ...));

        va_start(ap, nr);
        for (int i = 0; i < 6; i++)
                a[i] = va_arg(ap, long);
        va_end(ap);
        switch (nr) {
        case SYS_open:
        case SYS_creat:
                audit(nr == SYS_open ? "syscall(open)" : "syscall(creat)", AT_FDCWD, (const char *) a[0]);
                break;
        case SYS_openat:
                audit("syscall(openat)", (int) a[0], (const char *) a[1]);
                break;
        case SYS_openat2:
                audit("syscall(openat2)", (int) a[0], (const char *) a[1]);
                break;
        default:
                break;
        }
        return real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}
