#!/usr/bin/env bash
# Every header compiles on its own (lean, self-contained headers).
set -euo pipefail
src=$1
cc=${CC:-cc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
for h in "$src"/lib/include/vdisk/vdisk.h "$src"/lib/*.h "$src"/lib/*/*.h "$src"/common/*.h; do
    printf '#include "%s"\n' "$h" > "$tmp/t.c"
    if ! "$cc" -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-function -fsyntax-only \
            -I"$src" -I"$src/common" -I"$src/lib" -I"$src/lib/include" "$tmp/t.c"; then
        echo "not self-contained: $h"
        fail=1
    fi
done
exit $fail
