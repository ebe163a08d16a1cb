#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The UUID parent search looks at candidates' headers only.

A directory holds 16 crafted sparse VDIs linked by UUID, each header claiming
a 64 MiB block map that is a hole in the file (68 KiB on disk each), plus
decoy .vdi files (not an image, a header cut short, a sparse VDI that nothing
links to). `vdisk-img info --backing-chain --output=json` on the top must list
the 16 images top to bottom.

  search   (default) under `strace -f -y -e trace=pread64`: the bytes read past
           each file's first 64 KiB (the head a peek may read) are at most one
           map's worth per chain image, and none at all for the decoys. A
           search that opens each candidate as an image reads every earlier
           layer's map again at each level (about 16*16/2 maps). Without a
           sanitizer the plain run must also take at most 30 s of CPU time
           (user + system; the wall time is printed, not asserted, since the
           machine may be shared) and end within 150 s; with full opens of the
           candidates it took 80-200 s. Skips (77) without strace.
  memory   the peak RSS of vdisk-img (ru_maxrss) is at most 256 MiB: the
           search holds no candidate, and the 16 matches' maps go through the
           table cache under the per-disk metadata budget (before it, the 16
           opened maps alone held 1 GiB).

Usage: test-uuid-search.py VDISK_IMG [search|memory]
"""
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import craftvdi  # noqa: E402

DEPTH = 16
MAP_BYTES = 64 << 20
HEAD = 64 << 10              # PEEK_HEAD_MAX: what a peek (or a probe) may read
TIME_LIMIT = 30.0
STRACE_LIMIT = 150.0         # a quadratic search takes 300 s and more under strace
RSS_LIMIT_KIB = 256 << 10

PREAD = re.compile(r'pread64\(\d+<([^>]*)>, .*, (\d+), (\d+)\) += (-?\d+)')


def fail(msg):
    print('FAIL: ' + msg, file=sys.stderr)
    sys.exit(1)


def run_info(cmd, limit=None, env=None):
    """Runs cmd, returns (stdout, CPU seconds, wall seconds, peak RSS of the
    child in KiB). A run longer than `limit` seconds is killed and fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        fail('%s did not end within %.0f s' % (' '.join(cmd), limit))
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of RUSAGE_CHILDREN: the largest child waited for so far (each
    # mode runs one vdisk-img only, or strace and its child).
    if p.returncode != 0:
        fail('%s exited %d: %s' % (' '.join(cmd), p.returncode, err.decode(errors='replace')))
    return out, cpu, wall, after.ru_maxrss


def check_chain(out, paths):
    chain = json.loads(out)
    names = [os.path.basename(i['filename']) for i in chain]
    want = [os.path.basename(p) for p in reversed(paths)]
    if names != want:
        fail('backing chain is %s, expected %s' % (names, want))


def search(vdisk_img, d, paths, sanitized):
    strace = shutil.which('strace')
    if not strace:
        print('SKIP: strace is not installed (scripts/install-deps.sh --test)')
        sys.exit(77)
    top = paths[-1]
    trace = os.path.join(d, 'strace.log')
    # LeakSanitizer cannot run under ptrace; the plain run below checks leaks.
    env = dict(os.environ)
    env['ASAN_OPTIONS'] = (env.get('ASAN_OPTIONS', '') + ':detect_leaks=0').lstrip(':')
    out, _, seconds, _ = run_info([strace, '-f', '-qq', '-y', '-e', 'trace=pread64', '-e', 'signal=none',
                                '-o', trace, vdisk_img, 'info', '--backing-chain', '--output=json', top],
                               limit=None if sanitized else STRACE_LIMIT, env=env)
    check_chain(out, paths)
    beyond_head = {}          # file -> bytes read at offsets >= HEAD
    for line in open(trace, errors='replace'):
        m = PREAD.search(line)
        if not m:
            continue
        name, offset, result = m.group(1), int(m.group(3)), int(m.group(4))
        if result <= 0:
            continue
        end = offset + result
        if end > HEAD:
            beyond_head[name] = beyond_head.get(name, 0) + end - max(offset, HEAD)
    for name, n in sorted(beyond_head.items()):
        print('read past the head: %-40s %6.1f MiB' % (os.path.basename(name), n / (1 << 20)))
    total = sum(beyond_head.values())
    print('total past the heads: %.1f MiB (16 full maps: %d MiB); %.1f s under strace'
          % (total / (1 << 20), DEPTH * MAP_BYTES >> 20, seconds))
    for name, n in beyond_head.items():
        base = os.path.basename(name)
        if base.startswith('decoy'):
            fail('decoy %s was read past its header (%d bytes): it was opened as an image' % (base, n))
        if n > MAP_BYTES:
            fail('%s: %d bytes read past its header, more than its one map (%d): '
                 'a candidate was opened fully' % (base, n, MAP_BYTES))
    if total > DEPTH * MAP_BYTES:
        fail('%d bytes read past the heads, more than the %d maps of the chain' % (total, DEPTH))

    out, cpu, wall, _ = run_info([vdisk_img, 'info', '--backing-chain', '--output=json', top],
                                 limit=None if sanitized else 150)
    check_chain(out, paths)
    print('info --backing-chain: %.1f s CPU, %.1f s wall' % (cpu, wall))
    if sanitized:
        print('sanitizer build: no time bound')
    elif cpu > TIME_LIMIT:
        fail('info --backing-chain took %.1f s of CPU time (limit %.0f s)' % (cpu, TIME_LIMIT))


def memory(vdisk_img, paths):
    out, cpu, wall, rss = run_info([vdisk_img, 'info', '--backing-chain', '--output=json', paths[-1]], limit=150)
    check_chain(out, paths)
    print('info --backing-chain: %.1f s CPU, %.1f s wall, peak RSS %d MiB (limit %d MiB)'
          % (cpu, wall, rss >> 10, RSS_LIMIT_KIB >> 10))
    if rss > RSS_LIMIT_KIB:
        fail('peak RSS %d MiB is above %d MiB' % (rss >> 10, RSS_LIMIT_KIB >> 10))


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    vdisk_img = os.path.abspath(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else 'search'
    sanitized = bool(os.environ.get('VDISK_TEST_SANITIZED'))
    d = tempfile.mkdtemp(prefix='vdisk-uuid-search-')
    try:
        paths = craftvdi.make_sparse_chain(d, DEPTH, MAP_BYTES, decoys=6)
        if mode == 'search':
            search(vdisk_img, d, paths, sanitized)
        elif mode == 'memory':
            memory(vdisk_img, paths)
        else:
            fail('unknown mode ' + mode)
    finally:
        if os.environ.get('KEEP_TMP'):
            print('kept ' + d)
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == '__main__':
    main()
