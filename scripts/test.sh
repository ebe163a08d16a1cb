#!/usr/bin/env bash
# Installs what is needed (qemu-utils included), builds, and runs every test
# suite: the normal build (all suites), an ASan+UBSan build (unit, malformed,
# model, crash, dbus), a TSan build (dbus, the worker pool and the locking
# tests) and a minute of fuzzing. Ends with a line "N passed, M failed".
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

scripts/install-deps.sh --test || exit 1

werror=false
[ "${CI:-}" = "true" ] && werror=true

passed=0
failed=0

# count_results LOGFILE: adds meson's summary counts to passed/failed.
count_results() {
    local ok fail timeout xpass
    ok=$(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$1" | tail -n1)
    fail=$(sed -n 's/^Fail: *\([0-9]*\).*/\1/p' "$1" | tail -n1)
    timeout=$(sed -n 's/^Timeout: *\([0-9]*\).*/\1/p' "$1" | tail -n1)
    xpass=$(sed -n 's/^Unexpected Pass: *\([0-9]*\).*/\1/p' "$1" | tail -n1)
    passed=$((passed + ${ok:-0}))
    failed=$((failed + ${fail:-0} + ${timeout:-0} + ${xpass:-0}))
}

run_suites() { # BUILDDIR LOG [meson test args...]
    local dir=$1 log=$2
    shift 2
    meson test -C "$dir" --print-errorlogs --num-processes 2 "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    count_results "$log"
    if ! grep -q '^Ok:' "$log"; then
        echo "meson test in $dir did not run (exit $rc)"
        failed=$((failed + 1))
    fi
}

# build BUILDDIR [meson setup args...] [-- TARGET...]: sets up BUILDDIR and
# builds TARGETs, or everything without "--". A build that runs a few suites
# names what they need (meson test builds any other target its tests depend
# on anyway): building all of it cost the TSan and fuzz builds minutes of
# compiling (every unit, model, malformed and crash test) that nothing ran.
build() {
    local dir=$1 setup=() targets=()
    shift
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        setup+=("$1")
        shift
    done
    [ $# -gt 0 ] && shift
    targets=("$@")
    if [ ! -d "$dir" ]; then
        meson setup "$dir" -Dwerror=$werror "${setup[@]}" || return 1
    fi
    ninja -C "$dir" "${targets[@]}"
}

logs=$(mktemp -d)
if build build; then
    run_suites build "$logs/main.log"
else
    echo "build failed"
    failed=$((failed + 1))
fi

# Sanitizer builds at -O1 (what the sanitizers' authors recommend: -O0 runs
# the malformed and model suites 10-15x slower than the plain build), and
# timeouts scaled for the sanitizers' overhead.
if build build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=plain -Doptimization=1 \
        -Ddebug=true; then
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        run_suites build-asan "$logs/asan.log" --timeout-multiplier 2 --suite unit --suite malformed --suite model --suite crash \
        --suite dbus
else
    echo "sanitizer build failed"
    failed=$((failed + 1))
fi
# ThreadSanitizer: the daemon's worker pool, the library's lock model
# (test-locking: opposite copies/compares, reads during a copy, one io on
# several threads) and the whole dbus suite.
if build build-tsan -Db_sanitize=thread -Db_lundef=false -Dbuildtype=plain -Doptimization=1 -Ddebug=true -- \
        daemon/vdiskd tools/vdiskctl tools/vdisk-img tests/dbus/audit-open.so tests/dbus/fake-users.so \
        tests/unit/test-worker tests/unit/test-locking; then
    TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
        run_suites build-tsan "$logs/tsan.log" --timeout-multiplier 2 --suite dbus
    TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
        run_suites build-tsan "$logs/tsan-worker.log" --timeout-multiplier 2 worker locking
else
    echo "thread-sanitizer build failed"
    failed=$((failed + 1))
fi
# Fuzzing, briefly: the libFuzzer harness over a seed corpus for 60 s.
if command -v clang >/dev/null && CC=clang build build-fuzz -Dfuzzing=true -Db_sanitize=address,undefined \
        -Db_lundef=false -- tests/fuzz/fuzz-image; then
    corpus=$(mktemp -d)
    tests/fuzz/make-seeds.sh "$corpus/seeds"
    mkdir -p "$corpus/work"
    if (cd "$corpus" && "$top/build-fuzz/tests/fuzz/fuzz-image" -max_total_time=60 -rss_limit_mb=1024 \
            -malloc_limit_mb=96 -print_final_stats=1 work seeds > fuzz.log 2>&1); then
        echo "fuzz-image: $(grep -o 'Done [0-9]* runs' "$corpus/fuzz.log"), no crash"
        passed=$((passed + 1))
    else
        tail -n 40 "$corpus/fuzz.log"
        echo "fuzz-image: FAILED (artifacts in $corpus)"
        failed=$((failed + 1))
    fi
    [ "$failed" -eq 0 ] && rm -rf "$corpus"
else
    echo "fuzz build failed"
    failed=$((failed + 1))
fi
rm -rf "$logs"

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
