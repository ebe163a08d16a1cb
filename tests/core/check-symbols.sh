#!/usr/bin/env bash
# libvdisk.so must export the public vdisk_* API and nothing else, and no
# internal helper that happens to share the prefix.
set -euo pipefail
lib=$1
bad=$(nm -D --defined-only "$lib" | awk '$2 ~ /[TDBR]/ {print $3}' | grep -v '^vdisk_' || true)
if [ -n "$bad" ]; then
    echo "exported symbols outside vdisk_*:"; echo "$bad"; exit 1
fi
for internal in vdisk_error vdisk_error_prefix; do
    if nm -D --defined-only "$lib" | awk '{print $3}' | grep -qx "$internal"; then
        echo "internal symbol $internal is exported"; exit 1
    fi
done
n=$(nm -D --defined-only "$lib" | grep -c ' T vdisk_')
[ "$n" -gt 50 ] || { echo "only $n public functions exported"; exit 1; }
echo "ok: $n public functions"
