#!/usr/bin/python3
"""vdiskd smoke test on a private session bus (no root, no polkit).

    /usr/bin/python3 daemon/smoke.py BUILD_DIR

Starts dbus-daemon and BUILD_DIR/daemon/vdiskd --session, drives every Manager,
Disk, Image and Operation method, checks signals, errors and results (with
qemu-img), then SIGTERM. WRAP="valgrind ..." or WRAP="strace -f ..." runs the
daemon under a wrapper. Exit status 0 = all checks passed."""
import os, sys, time, shutil, subprocess, tempfile, signal
import dbus
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

build = sys.argv[1]
VDISKD = os.path.join(build, 'daemon/vdiskd')
IMG = os.path.join(build, 'tools/vdisk-img')
wrapper = os.environ.get('WRAP', '').split()

addr, pid = subprocess.check_output(['dbus-daemon', '--session', '--print-address=1', '--print-pid=1',
                                     '--fork', '--nosyslog'], text=True).split()
tmp = tempfile.mkdtemp(prefix='vdiskd-smoke-')
log = open(os.path.join(tmp, 'vdiskd.log'), 'w')
d = subprocess.Popen(wrapper + [VDISKD, '--session', '--address=' + addr, '--linger-sec=3', '--workers=2'],
                     stderr=log, stdout=log)
DBusGMainLoop(set_as_default=True)
bus = dbus.bus.BusConnection(addr)
for _ in range(200):
    if bus.name_has_owner('org.vdisk.VDisk1'):
        break
    time.sleep(0.05)
else:
    sys.exit('vdiskd did not come up')

N = 'org.vdisk.VDisk1'
ctx = GLib.MainContext.default()
signals = []
def on_signal(*args, **kw):
    signals.append((kw['member'], kw['path'], args))
bus.add_signal_receiver(on_signal, sender_keyword='sender', member_keyword='member', path_keyword='path',
                        bus_name=N)
def pump():
    for _ in range(3):
        time.sleep(0.02)
        while ctx.pending():
            ctx.iteration(False)

def obj(path): return bus.get_object(N, path)
def iface(path, i): return dbus.Interface(obj(path), N + '.' + i)
def props(path, i): return obj(path).GetAll(N + '.' + i, dbus_interface='org.freedesktop.DBus.Properties')
mgr = iface('/org/vdisk/VDisk1', 'Manager')
failures = 0
import atexit
def cleanup():
    if d.poll() is None:
        d.kill()
    subprocess.call(['kill', pid])
    shutil.rmtree(tmp, ignore_errors=True)
atexit.register(cleanup)
def check(cond, what):
    global failures
    print(('ok   ' if cond else 'FAIL ') + what)
    if not cond: failures += 1
def expect_error(fn, name, what):
    try:
        fn()
    except dbus.DBusException as e:
        check(e.get_dbus_name() == name, f'{what}: {e.get_dbus_name()}: {e.get_dbus_message()}')
        return e
    check(False, what + ': no error')
def fd(path, mode='r+b'):
    return dbus.types.UnixFd(open(path, mode))
def newfile(name):
    p = os.path.join(tmp, name)
    open(p, 'wb').close()
    return p
def wait(op):
    state, name, _ = iface(op, 'Operation').Wait({}, timeout=600)
    if name:
        print('     (Wait: %s %s)' % (state, name))
    pump()
    return props(op, 'Operation')

m = props('/org/vdisk/VDisk1', 'Manager')
check(m['Mode'] == 'session' and m['Workers'] == 2 and 'copy' in m['SupportedOperations'], 'manager properties')
check(m['MaxDisksPerUser'] == 256 and m['MaxCallsPerUser'] == 64, 'per-user limits: defaults')
check(any(b[0] == 'VDI' for b in m['Backends']), 'backends: ' + ', '.join(str(b[0]) for b in m['Backends']))

# ProbeFormat
src = os.path.join(tmp, 'src.vdi')
subprocess.check_call([IMG, 'create', '-q', '-f', 'vdi', src, '64M'])
fmt, media, info = mgr.ProbeFormat(fd(src, 'rb'), {})
check(fmt == 'VDI' and media == 'hdd' and info['size'] == 64 << 20 and not info['needs-parent'], f'probe {fmt} {media}')
expect_error(lambda: mgr.ProbeFormat(fd(src, 'rb'), {'bogus': True}), 'org.freedesktop.DBus.Error.InvalidArgs', 'unknown option')
expect_error(lambda: mgr.ProbeFormat(fd(src, 'rb'), {'auth.no_user_interaction': 'x'}), 'org.freedesktop.DBus.Error.InvalidArgs', 'wrong option type')
opath = os.open(src, os.O_PATH)
expect_error(lambda: mgr.ProbeFormat(dbus.types.UnixFd(opath), {}), N + '.Error.BadFileDescriptor', 'O_PATH fd')
expect_error(lambda: mgr.ProbeFormat(dbus.types.UnixFd(os.open(tmp, os.O_RDONLY)), {}), N + '.Error.BadFileDescriptor', 'directory fd')
# the file type is checked on the worker (fstat can block on FUSE): still the call's error
expect_error(lambda: mgr.OpenDisk([(fd(src, 'rb'), 'VDI', {})], {'files': {'dir': dbus.types.UnixFd(os.open(tmp, os.O_RDONLY))}}),
             N + '.Error.BadFileDescriptor', 'directory in files')

# CreateDisk + CreateBase
disk = mgr.CreateDisk({'display-name': 'test disk'})
pump()
check(any(s[0] == 'InterfacesAdded' and s[2][0] == disk for s in signals), 'InterfacesAdded for disk')
D = iface(disk, 'Disk')
base = newfile('base.vdi')
signals.clear()
op = D.CreateBase(fd(base), 'VDI', dbus.UInt64(32 << 20), {'display-name': 'base.vdi', 'comment': 'hello'})
pump()
check(any(s[0] == 'InterfacesAdded' and s[2][0] == op for s in signals), 'InterfacesAdded for operation before reply')
p = wait(op)
check(p['State'] == 'succeeded' and p['Progress'] == 1.0 and len(p['ResultObjects']) == 1, f'create: {p["State"]} {p["ErrorMessage"]}')
comp = [s for s in signals if s[0] == 'Completed' and s[1] == op]
check(len(comp) == 1 and comp[0][2][0] == 'succeeded', 'Completed once')
idx_pc = [i for i, s in enumerate(signals) if s[0] == 'PropertiesChanged' and s[1] == op and 'State' in s[2][1]]
idx_c = [i for i, s in enumerate(signals) if s[0] == 'Completed' and s[1] == op]
check(idx_pc and idx_c and idx_pc[-1] < idx_c[0], 'final PropertiesChanged before Completed')
img0 = p['ResultObjects'][0]
ip = props(img0, 'Image')
check(ip['Format'] == 'VDI' and ip['Comment'] == 'hello' and ip['DisplayName'] == 'base.vdi' and ip['Size'] == 32 << 20, 'image properties')
dp = props(disk, 'Disk')
check(dp['Images'] == [img0] and dp['Size'] == 32 << 20 and not dp['ReadOnly'] and dp['Operation'] == '/', 'disk properties')

# Write / Read / Discard / Flush
data = bytes(range(256)) * 16
D.Write(dbus.UInt64(4096), dbus.ByteArray(data), {})
got = bytes(D.Read(dbus.UInt64(4096), dbus.UInt32(len(data)), {}, byte_arrays=True))
check(got == data, 'write/read roundtrip')
expect_error(lambda: D.Read(dbus.UInt64(32 << 20), dbus.UInt32(1), {}), 'org.freedesktop.DBus.Error.InvalidArgs', 'read beyond end')
expect_error(lambda: D.Read(dbus.UInt64(0), dbus.UInt32((1 << 20) + 1), {}), 'org.freedesktop.DBus.Error.InvalidArgs', 'read > 1 MiB')
D.Flush({})
D.Write(dbus.UInt64(1 << 20), dbus.ByteArray(b'\xaa' * (1 << 20)), {})
D.Discard(dbus.UInt64(1 << 20), dbus.UInt64(1 << 20), {})
got = bytes(D.Read(dbus.UInt64(1 << 20), dbus.UInt32(1 << 20), {}, byte_arrays=True))
check(got == b'\0' * (1 << 20), 'discard reads zeros')

# SetComment / SetUuids
I = iface(img0, 'Image')
I.SetComment('new comment', {})
check(props(img0, 'Image')['Comment'] == 'new comment', 'SetComment')
I.SetUuids({'modification-uuid': ''}, {})
expect_error(lambda: I.SetUuids({'bogus': ''}, {}), 'org.freedesktop.DBus.Error.InvalidArgs', 'SetUuids unknown key')

# CreateDiff + write into the diff
diff = newfile('diff.vdi')
p = wait(D.CreateDiff(fd(diff), 'VDI', {'display-name': 'diff.vdi'}))
check(p['State'] == 'succeeded', f'create-diff: {p["ErrorMessage"]}')
img1 = p['ResultObjects'][0]
check(props(img0, 'Image')['ReadOnly'] and not props(img1, 'Image')['ReadOnly'], 'old top read-only')
check(props(img1, 'Image')['ParentUuid'] == props(img0, 'Image')['Uuid'], 'diff parent uuid')
D.Write(dbus.UInt64(8 << 20), dbus.ByteArray(b'\x55' * 65536), {})

# Copy (flattened) and compare
copy = newfile('copy.vdi')
p = wait(D.Copy(fd(copy), 'VDI', {}))
check(p['State'] == 'succeeded' and p['Progress'] == 1.0, f'copy: {p["ErrorMessage"]}')
raw = os.path.join(tmp, 'copy.raw')
subprocess.check_call(['qemu-img', 'convert', '-f', 'vdi', '-O', 'raw', copy, raw])
rawdata = open(raw, 'rb').read()
check(rawdata[4096:4096 + len(data)] == data and rawdata[8 << 20:(8 << 20) + 65536] == b'\x55' * 65536, 'copy content')
check(subprocess.call(['qemu-img', 'check', '-q', copy]) == 0, 'qemu-img check copy')
# a non-empty destination is refused (checked on the worker: the Operation fails), and left alone
before = open(copy, 'rb').read()
p = wait(D.Copy(fd(copy), 'VDI', {}))
check(p['State'] == 'failed' and p['ErrorName'] == N + '.Error.BadFileDescriptor' and 'not empty' in p['ErrorMessage']
      and open(copy, 'rb').read() == before, f'non-empty destination: {p["State"]} {p["ErrorName"]} {p["ErrorMessage"]}')
expect_error(lambda: D.Copy(fd(newfile('ro.vdi'), 'rb'), 'VDI', {}), N + '.Error.BadFileDescriptor', 'read-only destination')
p = wait(D.Copy(dbus.types.UnixFd(os.open('/dev/null', os.O_RDWR)), 'VDI', {}))
check(p['State'] == 'failed' and p['ErrorName'] == N + '.Error.BadFileDescriptor' and 'regular file' in p['ErrorMessage'],
      f'char-device destination fails the operation: {p["ErrorName"]} {p["ErrorMessage"]}')

# Copy with open
copy2 = newfile('copy2.vdi')
p = wait(D.Copy(fd(copy2), 'VDI', {'open': True, 'display-name': 'copy2'}))
check(p['State'] == 'succeeded' and len(p['ResultObjects']) == 2, f'copy+open: {list(p["ResultObjects"])}')
disk2 = p['ResultObjects'][0]
got = bytes(iface(disk2, 'Disk').Read(dbus.UInt64(8 << 20), dbus.UInt32(65536), {}, byte_arrays=True))
check(got == b'\x55' * 65536, 'copy+open content')
iface(disk2, 'Disk').Close({})
pump()
check(any(s[0] == 'InterfacesRemoved' and s[2][0] == disk2 for s in signals), 'close removes disk')

# Check / Repair / Compact / Resize
p = wait(D.Check(dbus.UInt32(1), {}))
check(p['State'] == 'succeeded' and 'corruptions' in p['Result'], f'check: {dict(p["Result"]) if p["State"] == "succeeded" else p["ErrorMessage"]}')
p = wait(D.Repair(dbus.UInt32(1), {'dry-run': True}))
check(p['State'] == 'succeeded', f'repair dry-run: {p["ErrorMessage"]}')
p = wait(D.Compact(dbus.UInt32(1), {}))
check(p['State'] == 'succeeded', f'compact: {p["ErrorMessage"]}')
p = wait(D.Resize(dbus.UInt64(48 << 20), {}))
check(p['State'] == 'succeeded' and props(disk, 'Disk')['Size'] == 48 << 20, f'resize: {p["ErrorMessage"]}')
expect_error(lambda: D.Resize(dbus.UInt64(16 << 20), {}), 'org.freedesktop.DBus.Error.InvalidArgs', 'shrink without allow-shrink')

# Merge the diff into the base
p = wait(D.Merge(dbus.UInt32(1), dbus.UInt32(0), {}))
check(p['State'] == 'succeeded' and list(p['Result']['removed']) == [img1], f'merge: {p["ErrorMessage"]} {dict(p["Result"])}')
check(props(disk, 'Disk')['Images'] == [img0], 'merge left the base')
got = bytes(D.Read(dbus.UInt64(8 << 20), dbus.UInt32(65536), {}, byte_arrays=True))
check(got == b'\x55' * 65536, 'merged content')
D.Close({})
pump()
expect_error(lambda: D.Flush({}), 'org.freedesktop.DBus.Error.UnknownObject', 'closed disk is gone')
check(subprocess.call(['qemu-img', 'check', '-q', base]) == 0, 'qemu-img check base')

# OpenDisk: a differencing image whose parent comes from `files`
d1 = newfile('d1.vdi')
disk = mgr.CreateDisk({})
D = iface(disk, 'Disk')
D.Open(fd(base), 'VDI', {'display-name': 'base.vdi'})
wait(D.CreateDiff(fd(d1), 'VDI', {}))
D.Write(dbus.UInt64(0), dbus.ByteArray(b'\x77' * 512), {})
D.Close({})
expect_error(lambda: mgr.OpenDisk([(fd(d1), '', {})], {}), N + '.Error.FileNeeded', 'parent missing')
disk = mgr.OpenDisk([(fd(d1), '', {})], {'files': {'base.vdi': fd(base, 'rb'), 'other': fd(copy, 'rb')}})
dp = props(disk, 'Disk')
check(len(dp['Images']) == 2, f'OpenDisk resolved the parent: {list(dp["Images"])}')
D = iface(disk, 'Disk')
got = bytes(D.Read(dbus.UInt64(0), dbus.UInt32(512), {}, byte_arrays=True))
check(got == b'\x77' * 512, 'OpenDisk content')
# ProbeFormat of a differencing image; explicit chains; ChainBroken; top-only close
fmt, media, info = mgr.ProbeFormat(fd(d1, 'rb'), {})
check(fmt == 'VDI' and info['needs-parent'] and info['parent-uuid'] != '' and info['parent-format'] == 'VDI', f'probe diff: {dict(info)}')
rawf = os.path.join(tmp, 'x.img'); open(rawf, 'wb').write(b'\1' * 65536)
fmt, media, info = mgr.ProbeFormat(fd(rawf, 'rb'), {})
check(fmt == 'RAW' and info['guessed-raw'], 'probe raw guessed')
expect_error(lambda: mgr.OpenDisk([(fd(rawf), '', {})], {}), N + '.Error.UnknownFormat', 'raw never guessed for a writable open')
chain = mgr.OpenDisk([(fd(base), 'VDI', {'display-name': 'base'}), (fd(d1), 'VDI', {'display-name': 'd1'})], {})
cp = props(chain, 'Disk')
check(len(cp['Images']) == 2 and props(cp['Images'][0], 'Image')['ReadOnly'] and not cp['ReadOnly'], 'explicit chain')
C = iface(chain, 'Disk')
C.Close({'top-only': True})
cp = props(chain, 'Disk')
check(len(cp['Images']) == 1 and props(cp['Images'][0], 'Image')['Index'] == 0, 'close top-only')
C.Close({})
expect_error(lambda: mgr.OpenDisk([(fd(copy, 'rb'), 'VDI', {}), (fd(d1, 'rb'), 'VDI', {})], {}), N + '.Error.ChainBroken', 'wrong parent')
ro = mgr.OpenDisk([(fd(copy, 'rb'), '', {})], {})
expect_error(lambda: iface(ro, 'Disk').Write(dbus.UInt64(0), dbus.ByteArray(b'x'), {}), N + '.Error.ReadOnly', 'write to read-only disk')
iface(ro, 'Disk').Close({})

# Busy: a big copy, then cancel
big = os.path.join(tmp, 'big.vdi')
bigraw = os.path.join(tmp, 'big.raw')
with open(bigraw, 'wb') as f:
    f.write(os.urandom(64 << 20) * 16)
subprocess.check_call([IMG, 'convert', '-q', '-O', 'vdi', bigraw, big])
os.unlink(bigraw)
bd = mgr.OpenDisk([(fd(big), 'VDI', {})], {})
BD = iface(bd, 'Disk')
out = newfile('big-copy.vdi')
op = BD.Copy(fd(out), 'VDI', {})
expect_error(lambda: BD.Flush({}), N + '.Error.Busy', 'busy while copying')
time.sleep(0.5)
print('state before cancel:', props(op, 'Operation')['State'], props(op, 'Operation')['Progress'])
iface(op, 'Operation').Cancel({})
p = wait(op)
check(p['State'] == 'cancelled' and p['ErrorName'] == N + '.Error.Cancelled' and 'truncated' in p['ErrorMessage'],
      f'cancel copy: {p["State"]} {p["ErrorMessage"]}')
check(os.path.getsize(out) == 0, 'cancelled copy truncated the destination')
expect_error(lambda: iface(op, 'Operation').Cancel({}), N + '.Error.NotCancelable', 'cancel after end')
check(tuple(iface(op, 'Operation').Wait({}))[:2] == ('cancelled', N + '.Error.Cancelled'), 'Wait after cancel')
iface(op, 'Operation').Dismiss({})
expect_error(lambda: props(op, 'Operation'), 'org.freedesktop.DBus.Error.UnknownObject', 'dismissed')
# Result is read while the worker fills in its report (worker-private until the end: TSan-clean)
op = BD.Repair(dbus.UInt32(0), {'dry-run': True})
polls = 0
while props(op, 'Operation')['State'] in ('queued', 'running'):
    polls += 1
p = wait(op)
check(p['State'] == 'succeeded' and 'corruptions' in p['Result'], f'check report published at the end ({polls} polls meanwhile)')

# A client that goes away: its disk is closed
addr2 = addr
c2 = dbus.bus.BusConnection(addr2)
dx = dbus.Interface(c2.get_object(N, '/org/vdisk/VDisk1'), N + '.Manager').CreateDisk({})
c2.close()
time.sleep(0.5)
expect_error(lambda: props(dx, 'Disk'), 'org.freedesktop.DBus.Error.UnknownObject', 'disk of a vanished client closed')

def main_thread_cpu():
    f = open(f'/proc/{d.pid}/task/{d.pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')
# ... while an operation runs on it: closed when it ends, and the loop does not spin meanwhile
c2 = dbus.bus.BusConnection(addr2)
dx = dbus.Interface(c2.get_object(N, '/org/vdisk/VDisk1'), N + '.Manager').OpenDisk([(fd(big, 'rb'), 'VDI', {})], {})
op = dbus.Interface(c2.get_object(N, dx), N + '.Disk').Copy(fd(newfile('gone-copy.vdi')), 'VDI', {})
c2.close()
time.sleep(0.05)
c0, t0 = main_thread_cpu(), time.time()
time.sleep(0.3)
busy = (main_thread_cpu() - c0) / (time.time() - t0)
st = props(op, 'Operation')['State']
if not wrapper:
    check(busy < 0.5, f'no busy loop while the vanished creator\'s operation runs ({busy:.0%} of the main thread, op {st})')
check(wait(op)['State'] == 'succeeded', 'the operation outlives its starter')
time.sleep(0.3)
expect_error(lambda: props(dx, 'Disk'), 'org.freedesktop.DBus.Error.UnknownObject', 'busy disk of a vanished client closed after its operation')
# ... and a Disk made by Copy `open` follows the Copy's starter
c3 = dbus.bus.BusConnection(addr2)
m3 = dbus.Interface(c3.get_object(N, '/org/vdisk/VDisk1'), N + '.Manager')
s3 = m3.OpenDisk([(fd(copy, 'rb'), 'VDI', {})], {})
op = dbus.Interface(c3.get_object(N, s3), N + '.Disk').Copy(fd(newfile('open-copy.vdi')), 'VDI', {'open': True})
p = wait(op)
check(p['State'] == 'succeeded' and len(p['ResultObjects']) == 2, 'copy+open for a client that then leaves')
c3.close()
time.sleep(0.5)
expect_error(lambda: props(p['ResultObjects'][0], 'Disk'), 'org.freedesktop.DBus.Error.UnknownObject', 'copy+open disk closed when its starter left')

# Linger
op = D.Check(dbus.UInt32(1), {})
wait(op)
time.sleep(4)
expect_error(lambda: props(op, 'Operation'), 'org.freedesktop.DBus.Error.UnknownObject', 'operation gone after linger')

# Per-user limits and the worker share: a second vdiskd with small limits and one worker.
def start_limited():
    a2, p2 = subprocess.check_output(['dbus-daemon', '--session', '--print-address=1', '--print-pid=1',
                                      '--fork', '--nosyslog'], text=True).split()
    atexit.register(lambda: subprocess.call(['kill', p2]))
    dd = subprocess.Popen(wrapper + [VDISKD, '--session', '--address=' + a2, '--linger-sec=3', '--workers=1',
                                     '--max-disks-per-user=4', '--max-calls-per-user=2', '--max-fds-per-user=16'],
                          stderr=log, stdout=log)
    atexit.register(lambda: dd.poll() is None and dd.kill())
    bb = dbus.bus.BusConnection(a2)
    for _ in range(200):
        if bb.name_has_owner(N):
            break
        time.sleep(0.05)
    return dd, bb
d2, bus2 = start_limited()
bus2.add_signal_receiver(on_signal, sender_keyword='sender', member_keyword='member', path_keyword='path', bus_name=N)
def obj2(path): return bus2.get_object(N, path)
def props2(path, i): return obj2(path).GetAll(N + '.' + i, dbus_interface='org.freedesktop.DBus.Properties')
m2 = dbus.Interface(obj2('/org/vdisk/VDisk1'), N + '.Manager')
mp = props2('/org/vdisk/VDisk1', 'Manager')
check(mp['MaxDisksPerUser'] == 4 and mp['MaxCallsPerUser'] == 2 and mp['Workers'] == 1, 'per-user limits: properties')
bigd = [m2.OpenDisk([(fd(big, 'rb'), 'VDI', {})], {}) for _ in range(3)]
extra = m2.CreateDisk({})
e = expect_error(lambda: m2.CreateDisk({}), 'org.freedesktop.DBus.Error.LimitsExceeded', 'MaxDisksPerUser')
e = expect_error(lambda: m2.OpenDisk([(fd(src, 'rb'), 'VDI', {})], {}), 'org.freedesktop.DBus.Error.LimitsExceeded', 'MaxDisksPerUser (OpenDisk)')
many = {f'f{i}': fd(src, 'rb') for i in range(13)}
e = expect_error(lambda: m2.OpenDisk([(fd(src, 'rb'), 'VDI', {})], {'files': many}),
                 'org.freedesktop.DBus.Error.LimitsExceeded', 'descriptors per user (3 held + 14)')
check(e is not None and 'descriptors' in e.get_dbus_message(), 'refused for its descriptors')
dbus.Interface(obj2(extra), N + '.Disk').Close({})
# one worker: the first copy runs, the rest of the user's work waits its turn
ops = [dbus.Interface(obj2(x), N + '.Disk').Copy(fd(newfile(f'lim{i}.vdi')), 'VDI', {}) for i, x in enumerate(bigd)]
q = props2(ops[2], 'Operation')
check(q['State'] == 'queued' and q['Cancelable'], f'third copy queued: {q["State"]}')
# a queued create can be cancelled; the destination stays empty
cd = m2.CreateDisk({})
cfile = newfile('queued-create.vdi')
cop = dbus.Interface(obj2(cd), N + '.Disk').CreateBase(fd(cfile), 'VDI', dbus.UInt64(1 << 30), {'variant': 'fixed'})
q = props2(cop, 'Operation')
check(q['State'] == 'queued' and q['Cancelable'], f'queued create is cancelable: {q["State"]} {q["Cancelable"]}')
dbus.Interface(obj2(cop), N + '.Operation').Cancel({})
q = props2(cop, 'Operation')
check(q['State'] == 'cancelled' and os.path.getsize(cfile) == 0, f'queued create cancelled at once: {q["State"]}')
dbus.Interface(obj2(ops[2]), N + '.Operation').Cancel({})
check(props2(ops[2], 'Operation')['State'] == 'cancelled', 'queued copy cancelled at once')
probes = []
def probe_async(tag):
    m2.ProbeFormat(fd(src, 'rb'), {}, reply_handler=lambda *a: probes.append((tag, 'ok', len(signals))),
                   error_handler=lambda e: probes.append((tag, e.get_dbus_name(), len(signals))), timeout=600)
probe_async('p1')
probe_async('p2')
pump()
running = props2(ops[0], 'Operation')['State']
e = expect_error(lambda: m2.ProbeFormat(fd(src, 'rb'), {}), 'org.freedesktop.DBus.Error.LimitsExceeded',
                 f'MaxCallsPerUser (2 calls waiting for the worker, first copy {running})')
for _ in range(3000):
    if len(probes) == 2:
        break
    pump()
done1 = [i for i, sg in enumerate(signals) if sg[0] == 'Completed' and sg[1] == ops[1]]
check(len(probes) == 2 and all(pr[1] == 'ok' for pr in probes) and done1 and all(pr[2] > done1[0] for pr in probes),
      f'the waiting calls ran after the copies queued before them: {probes}')
for x in ops[:2]:
    comp = [sg[2] for sg in signals if sg[0] == 'Completed' and sg[1] == x]
    check(comp and comp[0][0] == 'succeeded', f'copy in the limited daemon: {comp}')
d2.send_signal(signal.SIGTERM)
check(d2.wait(60) == 0, 'limited daemon: clean exit')

target = d.pid
if wrapper:
    kids = open(f'/proc/{d.pid}/task/{d.pid}/children').read().split()
    target = int(kids[0]) if kids else d.pid
os.kill(target, signal.SIGTERM)
rc = d.wait(60)
killed = True
check(rc == 0, f'clean exit {rc}')
log.close()
print(open(os.path.join(tmp, 'vdiskd.log')).read(), end='')
print('FAILURES:', failures)
sys.exit(1 if failures else 0)
