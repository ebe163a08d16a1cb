#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The consumers' invocation suite (issue 13): qemu-img command lines as the
# storage layers of real VM managers run them, each run against qemu-img and
# against vdisk-img on identical copies of the same inputs, then compared.
#
# The command lines are written from those projects' usage (argument order,
# options, what they parse): libvirt's storage backend, OpenStack nova and
# cinder, KubeVirt CDI, oVirt vdsm and ovirt-imageio, Proxmox pve-storage,
# Packer's qemu builder, Vagrant (vagrant-libvirt, vagrant-mutate), lima and
# cloud-utils. Per invocation:
#   - the exit codes are equal;
#   - what the consumer parses is equal: stdout (exact, or the JSON keys it
#     reads, or the `-p` progress records "(NN.NN/100%)\r" on a pipe), and
#     stderr where it matches an error text;
#   - every image written passes `qemu-img check` and reads the same as
#     qemu-img's own output (`qemu-img compare`).
# Texts are compared with the program name and the scratch directories
# normalized ("vdisk-img: " reads as "qemu-img: ").
#
# Known gaps another helper is closing are marked expected-to-fail (XFAIL)
# with the reason: they run, and print what differs; a "XPASS" line says one
# now passes and its mark can go. Nothing is skipped silently.
#
# Inputs: a patterned raw image (data, holes, explicit zeros, first and last
# sector) and its VDI, qcow2 and VMDK conversions made by qemu-img, a qcow2
# chain, a qcow2 with an internal snapshot.

source "$(dirname "$0")/lib.sh" "$@"

# The consumers call the tool by the name qemu-img: vdisk-img runs under
# that name, as a drop-in install (-Dqemu_img_name=true) would put it.
mkdir -p "$T/bin"
ln -s "$VDISK_IMG" "$T/bin/qemu-img"
VDISK_AS_QEMU=$T/bin/qemu-img

TPL=$T/tpl
mkdir -p "$TPL"
(
        cd "$TPL"
        mkpattern disk.raw 40M 1
        mkpattern other.raw 40M 2
        "$QEMU_IMG" convert -f raw -O vdi disk.raw disk.vdi
        "$QEMU_IMG" convert -f raw -O qcow2 disk.raw disk.qcow2
        "$QEMU_IMG" convert -f raw -O vmdk disk.raw disk.vmdk
        cp disk.qcow2 base.qcow2
        "$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
        "$QEMU_IO" -f qcow2 -c 'write -P 0x33 1M 64k' -c 'write -z 8M 1M' -c 'write -P 0x44 39M 512k' top.qcow2 >/dev/null
        cp disk.qcow2 snap.qcow2
        "$QEMU_IMG" snapshot -c snap1 snap.qcow2
        "$QEMU_IO" -f qcow2 -c 'write -P 0x55 0 2M' snap.qcow2 >/dev/null
        cp --sparse=always disk.qcow2 holey.qcow2   # holes in the host file inside allocated clusters
        "$QEMU_IMG" create -q -f raw pre.raw 40M
        "$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 pre.qcow2
        mkpattern seed.raw 1M 3
)

NXFAIL=0
NXPASS=0
SUMMARY=()

# Normalizes one output file for comparison: the program name and the
# scratch directory of each side.
norm() {
        sed -e "s|$T/[qv]/|@D@/|g" -e "s|$T/[qv]|@D@|g" -e 's/vdisk-img/qemu-img/g' "$1"
}

# json_keys A B KEY...: the values at dotted KEYs (list elements by number,
# a list at the top compares element by element) are equal.
json_keys() {
        "$PY" - "$@" <<'EOF'
import json, os, sys
a, b, keys = sys.argv[1], sys.argv[2], sys.argv[3:]
def load(p):
    with open(p) as f:
        return json.load(f)
def get(j, k):
    for part in k.split('.'):
        if isinstance(j, list):
            j = j[int(part)] if part.isdigit() and int(part) < len(j) else None
        elif isinstance(j, dict):
            j = j.get(part)
        else:
            return '<absent>'
        if j is None:
            return '<absent>'
    return j
try:
    ja, jb = load(a), load(b)
except Exception as e:
    print('bad JSON: %s' % e)
    sys.exit(1)
la = ja if isinstance(ja, list) else [ja]
lb = jb if isinstance(jb, list) else [jb]
bad = 0
if len(la) != len(lb):
    print('%d vs %d entries' % (len(la), len(lb)))
    bad = 1
def allocated(side, e):
    # what actual-size means: the file's allocation (st_blocks), read from
    # the side's own copy; the two copies may differ by an extent-tree block
    name = e.get('filename') if isinstance(e, dict) else None
    if not isinstance(name, str):
        return None
    try:
        return os.stat(os.path.join(side, name)).st_blocks * 512
    except OSError:
        return None
for i, (ea, eb) in enumerate(zip(la, lb)):
    for k in keys:
        va, vb = get(ea, k), get(eb, k)
        if k == 'actual-size' and isinstance(va, int) and isinstance(vb, int):
            ta, tb = allocated(a[:-len('.out')], ea), allocated(b[:-len('.out')], eb)
            if ta is not None and tb is not None:
                if va != ta or vb != tb:
                    print('[%d] actual-size: %d vs %d, the files hold %d and %d' % (i, va, vb, ta, tb))
                    bad = 1
                continue
        if va != vb:
            print('[%d] %s: %s vs %s' % (i, k, json.dumps(va), json.dumps(vb)))
            bad = 1
sys.exit(bad)
EOF
}

# progress_ok FILE: qemu-img's -p records on a pipe, as CDI, vdsm and Proxmox
# parse them: "    (NN.NN/100%)\r" records, never decreasing, ending at
# 100.00 and a newline; what follows (commit's "Image committed.") goes to
# FILE.rest for the caller to compare.
progress_ok() {
        "$PY" - "$1" <<'EOF'
import re, sys
s = open(sys.argv[1], 'rb').read().decode()
end = s.find('\r\n')
if end < 0:
    print('no \\r\\n after the records: %r' % s[-40:]); sys.exit(1)
open(sys.argv[1] + '.rest', 'w').write(s[end + 2:])
recs = s[:end + 1].split('\r')
last = -1.0
for r in recs[:-1]:
    m = re.fullmatch(r'    \((\d+\.\d\d)/100%\)', r)
    if not m:
        print('bad record %r' % r); sys.exit(1)
    v = float(m.group(1))
    if v < last:
        print('progress went back: %s after %s' % (v, last)); sys.exit(1)
    last = v
if last != 100.0:
    print('last record %s' % last); sys.exit(1)
EOF
}

# map_same A B: `map --output=json` lists describe the same ranges (start,
# length, data, zero, depth, present; neighbours that differ only in their
# host offset merged, as consumers treat them).
map_same() {
        "$PY" - "$1" "$2" <<'EOF'
import json, sys
def norm(p):
    out = []
    for e in json.load(open(p)):
        k = (e['data'], e['zero'], e.get('depth'), e.get('present'))
        if out and out[-1][2] == k and out[-1][0] + out[-1][1] == e['start']:
            out[-1][1] += e['length']
        else:
            out.append([e['start'], e['length'], k])
    return out
a, b = norm(sys.argv[1]), norm(sys.argv[2])
if a != b:
    for x, y in zip(a, b):
        if x != y:
            print('first difference: %s vs %s' % (x, y)); break
    else:
        print('%d vs %d ranges' % (len(a), len(b)))
    sys.exit(1)
EOF
}

# tc ID CONSUMER INPUTS CHECKS FILES XFAIL -- ARGS...
#   INPUTS  comma-separated files of the template each side starts with ("-": none)
#   CHECKS  comma-separated ("-": the exit code only): out (stdout equal),
#           lines (every line qemu-img prints, vdisk-img prints too), json=k1:k2 (JSON keys equal),
#           map (map JSON equal without host offsets), progress, err (stderr
#           equal), errre=TEXT (both stderrs contain TEXT), out1re=ERE (the first
#           stdout line of vdisk-img matches), first4k (FILES' first 4 KiB allocated)
#   FILES   comma-separated FILE:FMT written by the command: checked and compared ("-": none)
#   XFAIL   "-", or the reason this is a known gap
#   ARGS    the command line after the program name; "@D@" is the side's directory
tc() {
        local id=$1 consumer=$2 inputs=$3 checks=$4 files=$5 xfail=$6 t0
        shift 7
        t0=$(date +%s%N)
        local side dir tool a fails=() args
        for side in q v; do
                dir=$T/$side
                rm -rf "$dir"
                mkdir "$dir"
                if [[ $inputs != - ]]; then
                        local f
                        IFS=, read -ra ins <<<"$inputs"
                        for f in "${ins[@]}"; do cp "$TPL/$f" "$dir/$f"; done
                        # written back before either tool looks: ext4 counts a
                        # delayed extent-tree block in st_blocks only from then
                        (cd "$dir" && sync "${ins[@]}")
                fi
                args=()
                for a in "$@"; do args+=("${a//@D@/$dir}"); done
                if [[ $side == q ]]; then tool=$QEMU_IMG; else tool=$VDISK_AS_QEMU; fi
                local rc=0
                (cd "$dir" && exec ${WRAP:-} "$tool" "${args[@]}" >"$T/$side.out" 2>"$T/$side.err" </dev/null) || rc=$?
                echo $rc >"$T/$side.rc"
        done
        cd "$T"
        local qrc vrc
        qrc=$(cat q.rc)
        vrc=$(cat v.rc)
        [[ $qrc == "$vrc" ]] || fails+=("exit $vrc, qemu-img $qrc")

        local c
        IFS=, read -ra cs <<<"$checks"
        for c in "${cs[@]}"; do
                case $c in
                out)
                        if ! diff <(norm q.out) <(norm v.out) >diff.txt; then
                                fails+=("stdout differs: $(head -c 400 diff.txt | tr '\n\r' '|^')")
                        fi ;;
                err)
                        if ! diff <(norm q.err) <(norm v.err) >diff.txt; then
                                fails+=("stderr differs: $(head -c 400 diff.txt | tr '\n' '|')")
                        fi ;;
                errre=*)
                        grep -q -- "${c#errre=}" q.err || fails+=("qemu-img's stderr lacks '${c#errre=}' (test bug)")
                        grep -q -- "${c#errre=}" v.err || fails+=("stderr lacks '${c#errre=}': $(head -c 200 v.err)") ;;
                out1re=*)
                        head -n1 v.out | grep -Eq -- "${c#out1re=}" ||
                                fails+=("first stdout line '$(head -n1 v.out)' does not match ${c#out1re=}") ;;
                json=*)
                        local msg
                        IFS=: read -ra ks <<<"${c#json=}"
                        msg=$(json_keys q.out v.out "${ks[@]}") || fails+=("JSON differs: $(echo "$msg" | head -5 | tr '\n' '|')") ;;
                map)
                        local msg
                        msg=$(map_same q.out v.out 2>&1) || fails+=("map differs: $(echo "$msg" | head -3 | tr '\n' '|')") ;;
                progress)
                        local msg
                        msg=$(progress_ok q.out) || fails+=("qemu-img's progress: $msg (test bug)")
                        msg=$(progress_ok v.out) || fails+=("progress: $msg")
                        if [[ -e q.out.rest && -e v.out.rest ]] && ! diff <(norm q.out.rest) <(norm v.out.rest) >diff.txt; then
                                fails+=("stdout after the progress differs: $(head -c 300 diff.txt | tr '\n' '|')")
                        fi
                        rm -f q.out.rest v.out.rest ;;
                lines)
                        local l
                        while IFS= read -r l; do
                                grep -qxF -- "$l" <(norm v.out) || fails+=("stdout lacks qemu-img's line '$l'")
                        done < <(norm q.out) ;;
                -)
                        ;;
                first4k)
                        ;;
                *)
                        fails+=("unknown check $c (test bug)") ;;
                esac
        done

        if [[ $files != - && $qrc == 0 && $vrc == 0 ]]; then
                local spec file fmt
                IFS=, read -ra fs <<<"$files"
                for spec in "${fs[@]}"; do
                        file=${spec%%:*}
                        fmt=${spec#*:}
                        if [[ ! -e v/$file ]]; then
                                fails+=("$file not written")
                                continue
                        fi
                        if [[ $fmt != raw ]] && ! "$QEMU_IMG" check -q -f "$fmt" "v/$file" >check.txt 2>&1; then
                                fails+=("qemu-img check $file: $(head -c 300 check.txt | tr '\n' '|')")
                        fi
                        if ! "$QEMU_IMG" compare -q -f "$fmt" -F "$fmt" "q/$file" "v/$file" >cmp.txt 2>&1; then
                                fails+=("qemu-img compare $file with qemu-img's: $(head -c 300 cmp.txt | tr '\n' '|')")
                        fi
                        if [[ ,$checks, == *,first4k,* ]]; then
                                "$QEMU_IMG" map -f "$fmt" --output=json "v/$file" >map.txt 2>&1 || true
                                if ! "$PY" -c 'import json,sys; e=json.load(open(sys.argv[1]))[0]; sys.exit(0 if e["data"] and e["length"] >= 4096 else 1)' map.txt 2>/dev/null; then
                                        fails+=("the first 4 KiB of $file are not allocated: $(head -c 200 map.txt | tr '\n' ' ')")
                                fi
                        fi
                done
        fi

        local label="$id ($consumer): ${*//$T\//}" ms=$((($(date +%s%N) - t0) / 1000000))
        (( ms < 2000 )) || echo "# $id took $ms ms"
        if (( ${#fails[@]} == 0 )); then
                if [[ $xfail != - ]]; then
                        NXPASS=$((NXPASS + 1))
                        # strict: a gap that closed must lose its mark
                        notok "$label # XPASS: passes now, drop its expected-failure mark ($xfail)"
                        SUMMARY+=("XPASS  $id  ($xfail)")
                else
                        ok "$label"
                        SUMMARY+=("pass   $id")
                fi
        elif [[ $xfail != - ]]; then
                NXFAIL=$((NXFAIL + 1))
                ok "$label # XFAIL known gap: $xfail"
                local f
                for f in "${fails[@]}"; do echo "#   differs: $f"; done
                SUMMARY+=("XFAIL  $id  ($xfail)")
        else
                notok "$label" "${fails[@]}"
                SUMMARY+=("FAIL   $id")
        fi
}

D=@D@
# nova and cinder run `info` under prlimit (1 GiB of address space, 30 s of CPU).
LIMIT=
if command -v prlimit >/dev/null 2>&1; then
        LIMIT="prlimit --as=1073741824 --cpu=30 --"
else
        echo "# prlimit not found: the nova/cinder info invocations run without their limits"
fi
INFO_KEYS=json=format:virtual-size:actual-size:cluster-size:backing-filename:backing-filename-format:dirty-flag:encrypted:snapshots
QINFO_KEYS=json=format-specific.type:format-specific.data.compat:format-specific.data.lazy-refcounts:format-specific.data.refcount-bits:format-specific.data.corrupt
CHECK_KEYS=json=check-errors:corruptions:leaks:image-end-offset:total-clusters:allocated-clusters:format:filename
MEASURE_KEYS=json=required:fully-allocated:bitmaps

# ---- libvirt (src/storage/storage_util.c: sizes in K, options in one -o, backing in -o)
tc lv-create-raw libvirt - out vol.img:raw - -- create -f raw vol.img 10240K
tc lv-create-qcow2 libvirt - out vol.qcow2:qcow2 - -- create -f qcow2 -o compat=1.1,lazy_refcounts vol.qcow2 10240K
tc lv-create-qcow2-prealloc libvirt - out vol.qcow2:qcow2 - -- create -f qcow2 -o preallocation=metadata,compat=1.1 vol.qcow2 10240K
tc lv-create-backing libvirt disk.qcow2 out vol.qcow2:qcow2 - -- create -f qcow2 -o backing_fmt=qcow2,backing_file=$D/disk.qcow2,compat=1.1 vol.qcow2 40960K
tc lv-create-nocow libvirt - out vol.img:raw - -- create -f raw -o nocow=on vol.img 10240K
tc lv-create-raw-falloc libvirt - out vol.img:raw - -- create -f raw -o preallocation=falloc vol.img 10240K
tc lv-clone-raw-qcow2 libvirt disk.raw out clone.qcow2:qcow2 - -- convert -f raw -O qcow2 -o compat=1.1 disk.raw clone.qcow2
tc lv-clone-vdi-raw libvirt disk.vdi out clone.img:raw - -- convert -f vdi -O raw disk.vdi clone.img
tc lv-resize libvirt disk.qcow2 out disk.qcow2:qcow2 - -- resize disk.qcow2 61440K
tc lv-resize-shrink libvirt disk.raw out disk.raw:raw - -- resize -f raw --shrink disk.raw 20M
tc lv-info libvirt disk.qcow2 "$INFO_KEYS" - - -- info --output=json -U disk.qcow2
tc lv-info-vmdk libvirt disk.vmdk "$INFO_KEYS" - - -- info --output=json -U disk.vmdk

# ---- OpenStack nova (nova/virt/images.py, nova/virt/libvirt/utils.py)
tc nova-info nova disk.qcow2 "$INFO_KEYS" - - -- info -f qcow2 --output=json --force-share disk.qcow2
tc nova-info-qcow2-specific nova disk.qcow2 "$QINFO_KEYS" - - -- info -f qcow2 --output=json --force-share disk.qcow2
tc nova-info-raw nova disk.raw "$INFO_KEYS" - - -- info --output=json --force-share disk.raw
tc nova-info-vdi nova disk.vdi "$INFO_KEYS" - - -- info -f vdi --output=json --force-share disk.vdi
WRAP=$LIMIT tc nova-info-prlimit nova disk.vdi "$INFO_KEYS" - - -- info -f vdi --output=json --force-share disk.vdi
tc nova-fetch-to-raw nova disk.qcow2 out disk.part:raw - -- convert -t none -O raw -f qcow2 disk.qcow2 disk.part
tc nova-fetch-vdi-to-raw nova disk.vdi out disk.part:raw - -- convert -t none -O raw -f vdi disk.vdi disk.part
tc nova-snapshot nova disk.raw out snap.qcow2:qcow2 - -- convert -t writeback -O qcow2 -f raw disk.raw snap.qcow2
tc nova-snapshot-compress nova disk.raw out snap.qcow2:qcow2 - -- convert -t none -O qcow2 -c -f raw disk.raw snap.qcow2
tc nova-cow nova disk.raw out inst.qcow2:qcow2 - -- create -f qcow2 -o backing_file=$D/disk.raw,backing_fmt=raw inst.qcow2
tc nova-cow-size nova disk.raw out inst.qcow2:qcow2 - -- create -f qcow2 -o backing_file=$D/disk.raw,backing_fmt=raw inst.qcow2 64M
tc nova-create-raw nova - out disk.eph0:raw - -- create -f raw disk.eph0 1G
tc nova-resize nova disk.qcow2 out disk.qcow2:qcow2 - -- resize disk.qcow2 64M
tc nova-rebase-unsafe nova top.qcow2,base.qcow2,disk.qcow2 out top.qcow2:qcow2 - -- rebase -u -b disk.qcow2 -F qcow2 -f qcow2 top.qcow2
tc nova-flatten nova top.qcow2,base.qcow2 out top.qcow2:qcow2 - -- rebase -f qcow2 -b "" top.qcow2
tc nova-image-opts nova disk.qcow2 "$INFO_KEYS" - - -- info --output=json --object secret,id=sec0,data=x --image-opts driver=qcow2,file.filename=disk.qcow2

# ---- OpenStack cinder (cinder/image/image_utils.py, remotefs)
WRAP=$LIMIT tc cinder-info cinder disk.qcow2 "$INFO_KEYS" - - -- info --output=json -f qcow2 disk.qcow2
tc cinder-info-human cinder disk.vdi lines - - -- info -f vdi disk.vdi
tc cinder-to-raw cinder disk.vdi out volume:raw - -- convert -O raw -t none -f vdi disk.vdi volume
tc cinder-to-raw-falloc cinder disk.qcow2 out volume:raw - -- convert -O raw -o preallocation=falloc -t none -f qcow2 disk.qcow2 volume
tc cinder-upload-qcow2 cinder disk.raw out upload.qcow2:qcow2 - -- convert -O qcow2 -t none -f raw disk.raw upload.qcow2
tc cinder-upload-vdi cinder disk.raw out upload.vdi:vdi - -- convert -O vdi -f raw disk.raw upload.vdi
tc cinder-resize cinder disk.raw out disk.raw:raw - -- resize -f raw disk.raw 1G
tc cinder-version cinder - out1re='^qemu-img version [0-9]+\.[0-9]+\.[0-9]+' - - -- --version
tc cinder-snap-create cinder disk.raw out disk.snap:qcow2 - -- create -f qcow2 -o backing_file=disk.raw,backing_fmt=raw disk.snap 41943040
tc cinder-commit cinder top.qcow2,base.qcow2 out base.qcow2:qcow2 - -- commit -q -f qcow2 top.qcow2
tc cinder-rebase cinder top.qcow2,base.qcow2,disk.qcow2 out top.qcow2:qcow2 - -- rebase -u -b disk.qcow2 -F qcow2 -f qcow2 top.qcow2

# ---- KubeVirt CDI (pkg/image/qemu.go: progress parsed from stdout)
tc cdi-info cdi disk.qcow2 json=virtual-size:format:backing-filename:actual-size:filename - - -- info --output=json disk.qcow2
tc cdi-info-vdi cdi disk.vdi json=virtual-size:format:backing-filename:actual-size:filename - - -- info --output=json disk.vdi
tc cdi-convert cdi disk.qcow2 progress disk.img:raw - -- convert -t writeback -p -O raw disk.qcow2 disk.img
tc cdi-convert-vdi cdi disk.vdi progress disk.img:raw - -- convert -t writeback -p -O raw disk.vdi disk.img
tc cdi-convert-vmdk cdi disk.vmdk progress disk.img:raw - -- convert -t writeback -p -O raw disk.vmdk disk.img
tc cdi-convert-falloc cdi disk.qcow2 progress disk.img:raw - -- convert -t writeback -p -O raw -o preallocation=falloc disk.qcow2 disk.img
tc cdi-blank cdi - out disk.img:raw - -- create -f raw disk.img 64M
tc cdi-blank-falloc cdi - out disk.img:raw - -- create -f raw disk.img 64M -o preallocation=falloc
tc cdi-prealloc-unsupported cdi - errre="Unsupported preallocation mode" - - -- create -f raw -o preallocation=metadata disk.img 64M
tc cdi-resize cdi disk.raw out disk.raw:raw - -- resize -f raw disk.raw 64M
tc cdi-resize-falloc cdi disk.raw out disk.raw:raw - -- resize -f raw --preallocation=falloc disk.raw 64M

# ---- oVirt vdsm (lib/vdsm/storage/qemuimg.py: -O after the source, json output)
tc vdsm-info vdsm disk.qcow2 "$INFO_KEYS" - - -- info --output json -f qcow2 -U disk.qcow2
tc vdsm-info-compat vdsm disk.qcow2 "$QINFO_KEYS" - - -- info --output json -f qcow2 -U disk.qcow2
tc vdsm-info-chain vdsm top.qcow2,base.qcow2 json=filename:format:virtual-size:backing-filename:backing-filename-format:full-backing-filename:cluster-size - - -- info --output json -f qcow2 -U --backing-chain top.qcow2
tc vdsm-create-qcow2 vdsm - out vol:qcow2 - -- create -f qcow2 -o compat=1.1 vol 41943040
tc vdsm-create-qcow2-backing vdsm disk.raw out vol:qcow2 - -- create -f qcow2 -o compat=1.1 -b disk.raw -F raw -u vol 41943040
tc vdsm-create-raw-falloc vdsm - out vol:raw - -- create -f raw -o preallocation=falloc vol 41943040
tc vdsm-copy vdsm disk.raw progress vol:qcow2 - -- convert -p -t none -T none -f raw disk.raw -O qcow2 -o compat=1.1 vol
tc vdsm-copy-vdi vdsm disk.vdi progress vol:raw - -- convert -p -t none -T none -f vdi disk.vdi -O raw vol
tc vdsm-copy-n vdsm disk.raw,pre.raw progress pre.raw:raw - -- convert -p -t none -T none -f raw disk.raw -O raw -n -W pre.raw
tc vdsm-copy-n-backing vdsm top.qcow2,base.qcow2,pre.qcow2 progress pre.qcow2:qcow2 - -- convert -p -t none -T none -f qcow2 top.qcow2 -O qcow2 -n -B base.qcow2 pre.qcow2
tc vdsm-copy-backing vdsm top.qcow2,base.qcow2 progress vol:qcow2 - -- convert -p -t none -T none -f qcow2 top.qcow2 -O qcow2 -o compat=1.1,backing_file=base.qcow2,backing_fmt=qcow2 vol
tc vdsm-check vdsm disk.qcow2 "$CHECK_KEYS" - - -- check --output json -f qcow2 disk.qcow2
tc vdsm-check-vdi vdsm disk.vdi out - - -- check -f vdi disk.vdi
tc vdsm-measure vdsm disk.raw "$MEASURE_KEYS" - - -- measure --output json -f raw -O qcow2 disk.raw
tc vdsm-measure-vdi vdsm disk.vdi "$MEASURE_KEYS" - - -- measure --output json -f vdi -O raw disk.vdi
tc vdsm-compare vdsm disk.raw,disk.qcow2 out - - -- compare -f raw -F qcow2 disk.raw disk.qcow2
tc vdsm-compare-diff vdsm disk.raw,other.raw out - - -- compare -f raw -F raw disk.raw other.raw
tc vdsm-commit vdsm top.qcow2,base.qcow2 progress base.qcow2:qcow2 - -- commit -p -t none -b base.qcow2 -d top.qcow2
tc vdsm-rebase-unsafe vdsm top.qcow2,base.qcow2,disk.qcow2 out top.qcow2:qcow2 - -- rebase -u -t none -T none -f qcow2 -b disk.qcow2 -F qcow2 top.qcow2
tc vdsm-amend vdsm disk.qcow2 out disk.qcow2:qcow2 - -- amend -f qcow2 -o compat=1.1 disk.qcow2
tc vdsm-map vdsm disk.qcow2 map - - -- map --output json -f qcow2 disk.qcow2
tc vdsm-map-holey vdsm holey.qcow2 map - - -- map --output json -f qcow2 holey.qcow2
tc vdsm-resize vdsm disk.qcow2 out disk.qcow2:qcow2 - -- resize -f qcow2 disk.qcow2 64M
tc vdsm-bitmap-add vdsm disk.qcow2 out disk.qcow2:qcow2 - -- bitmap --add --enable -f qcow2 disk.qcow2 bm0
tc vdsm-bitmap-raw vdsm disk.raw errre="Operation add on bitmap bm0 failed: Can't store persistent bitmaps to" - - -- bitmap --add -f raw disk.raw bm0

# ---- ovirt-imageio (ovirt_imageio/_internal/qemu_img.py)
tc imageio-create-raw imageio - out,first4k disk.img:raw - -- create -q -f raw disk.img 10M
tc imageio-create-qcow2 imageio - out disk.qcow2:qcow2 - -- create -q -f qcow2 -o compat=1.1 disk.qcow2 10M
tc imageio-create-backing imageio disk.qcow2 out top:qcow2 - -- create -q -f qcow2 -o compat=1.1 -b disk.qcow2 -F qcow2 top 40M
tc imageio-map-raw imageio disk.raw map - - -- map --output json -f raw disk.raw
tc imageio-map-vdi imageio disk.vdi map - - -- map --output json -f vdi disk.vdi
tc imageio-compare-strict imageio disk.raw,disk.qcow2 out - - -- compare -s -f raw -F qcow2 disk.raw disk.qcow2
tc imageio-compare-raw-vdi imageio disk.raw,disk.vdi out - - -- compare -f raw -F vdi disk.raw disk.vdi
tc imageio-measure imageio disk.qcow2 "$MEASURE_KEYS" - - -- measure --output json -f qcow2 -O qcow2 disk.qcow2
tc imageio-convert-n imageio disk.vdi,pre.raw out pre.raw:raw - -- convert -f vdi -O raw -n -T none -t none disk.vdi pre.raw

# ---- Proxmox pve-storage (PVE/Storage/Plugin.pm, PVE/QemuServer.pm qemu_img_convert)
tc pve-create-qcow2 pve - out vm-100-disk-0.qcow2:qcow2 - -- create -o preallocation=metadata -f qcow2 vm-100-disk-0.qcow2 10240K
tc pve-create-raw pve - out vm-100-disk-0.raw:raw - -- create -o preallocation=off -f raw vm-100-disk-0.raw 10240K
tc pve-create-raw-falloc pve - out vm-100-disk-0.raw:raw - -- create -o preallocation=falloc -f raw vm-100-disk-0.raw 10240K
tc pve-create-vmdk pve - out vm-100-disk-0.vmdk:vmdk - -- create -f vmdk vm-100-disk-0.vmdk 10240K
tc pve-linked-clone pve disk.qcow2 out vm-101-disk-0.qcow2:qcow2 - -- create -b disk.qcow2 -F qcow2 -f qcow2 vm-101-disk-0.qcow2
tc pve-info pve disk.qcow2 json=virtual-size:format:actual-size:backing-filename - - -- info --output=json disk.qcow2
tc pve-info-vmdk pve disk.vmdk json=virtual-size:format:backing-filename - - -- info --output=json disk.vmdk
tc pve-resize pve disk.qcow2 out disk.qcow2:qcow2 - -- resize -f qcow2 disk.qcow2 64M
tc pve-import-vdi pve disk.vdi,pre.raw progress pre.raw:raw - -- convert -p -n -f vdi -O raw -t writeback disk.vdi pre.raw
tc pve-import-vmdk pve disk.vmdk,pre.raw progress pre.raw:raw - -- convert -p -n -f vmdk -O raw -t writeback disk.vmdk pre.raw
tc pve-clone-snapshot pve snap.qcow2,pre.raw progress pre.raw:raw - -- convert -p -n -f qcow2 -O raw -l snapshot.name=snap1 snap.qcow2 pre.raw
tc pve-snapshot-list pve snap.qcow2 - - - -- snapshot -l snap.qcow2
tc pve-snapshot-create pve disk.qcow2 out disk.qcow2:qcow2 - -- snapshot -c vzdump disk.qcow2
tc pve-snapshot-raw pve disk.raw "out,errre=Could not create snapshot 'vzdump': -95 (Operation not supported)" - - -- snapshot -c vzdump disk.raw
tc pve-snapshot-apply-vdi pve disk.vdi out,err - - -- snapshot -a vzdump disk.vdi
tc pve-snapshot-delete-vmdk pve disk.vmdk out,err - - -- snapshot -d vzdump disk.vmdk

# ---- Packer (builder/qemu: step_create_disk, step_resize_disk, step_convert_disk)
tc packer-create packer - out output.qcow2:qcow2 - -- create -f qcow2 output.qcow2 40960M
tc packer-create-backing packer disk.qcow2 out output.qcow2:qcow2 - -- create -f qcow2 -b disk.qcow2 -F qcow2 output.qcow2 40960M
tc packer-resize packer disk.qcow2 out disk.qcow2:qcow2 - -- resize -f qcow2 disk.qcow2 40960M
tc packer-convert packer disk.qcow2 out packer-out.qcow2:qcow2 - -- convert -O qcow2 disk.qcow2 packer-out.qcow2
tc packer-convert-compress packer disk.qcow2 out packer-out.qcow2:qcow2 - -- convert -c -O qcow2 disk.qcow2 packer-out.qcow2
tc packer-create-raw-prealloc packer - out output.raw:raw - -- create -f raw -o preallocation=full output.raw 10M

# ---- Vagrant (vagrant-libvirt create_domain/package, vagrant-mutate)
tc vagrant-box-volume vagrant-libvirt disk.qcow2 out box_0.img:qcow2 - -- create -f qcow2 -b $D/disk.qcow2 -F qcow2 box_0.img
tc vagrant-info vagrant-libvirt disk.qcow2 json=virtual-size:format - - -- info --output=json disk.qcow2
tc vagrant-package vagrant-libvirt top.qcow2,base.qcow2 progress top.qcow2:qcow2 - -- rebase -p -b "" top.qcow2
tc vagrant-mutate-vdi vagrant-mutate disk.vdi progress box.img:qcow2 - -- convert -p -f vdi -O qcow2 disk.vdi box.img
tc vagrant-mutate-vmdk vagrant-mutate disk.vmdk progress box.img:qcow2 - -- convert -p -f vmdk -O qcow2 disk.vmdk box.img
tc vagrant-mutate-version vagrant-mutate - out1re='^qemu-img version [0-9]+\.[0-9]+\.[0-9]+' - - -- --version

# ---- lima (pkg/qemu/imgutil, pkg/nativeimgutil)
tc lima-diffdisk lima base.qcow2 out diffdisk:qcow2 - -- create -f qcow2 -F qcow2 -b $D/base.qcow2 diffdisk 64M
tc lima-info lima top.qcow2,base.qcow2 json=format:virtual-size:backing-filename:full-backing-filename:backing-filename-format - - -- info --output=json --force-share top.qcow2
tc lima-to-raw lima disk.qcow2 out basedisk:raw - -- convert -O raw disk.qcow2 basedisk
tc lima-resize lima top.qcow2,base.qcow2 out top.qcow2:qcow2 - -- resize top.qcow2 128M

# ---- cloud-utils (cloud-localds --disk-format)
tc cloud-localds cloud-utils seed.raw out seed.img:qcow2 - -- convert -f raw -O qcow2 seed.raw seed.img
tc cloud-localds-vdi cloud-utils seed.raw out seed.vdi:vdi - -- convert -f raw -O vdi seed.raw seed.vdi

# ---- commands scripts call around them: dd, --image-opts
tc dd-head scripts disk.qcow2 out head.img:raw - -- dd -f qcow2 -O raw bs=1M count=8 if=disk.qcow2 of=head.img
tc dd-skip-vdi scripts disk.raw out tail.vdi:vdi - -- dd -f raw -O vdi bs=64k skip=100 if=disk.raw of=tail.vdi
tc image-opts-convert scripts disk.vdi out out.img:raw - -- convert --image-opts driver=vdi,file.filename=disk.vdi -O raw out.img
tc image-opts-compare scripts disk.raw,disk.qcow2 out - - -- compare --image-opts driver=raw,file.filename=disk.raw driver=qcow2,file.driver=file,file.filename=disk.qcow2

echo "# summary (result, invocation, known gap):"
for s in "${SUMMARY[@]}"; do echo "#   $s"; done
echo "# $NXFAIL expected failures (known gaps), $NXPASS unexpected passes"
finish
