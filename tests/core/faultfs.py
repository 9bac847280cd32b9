"""FaultFS: a file system wrapper that cuts power and fails on cue, for tests.

It wraps firmware_shim.files.FileSystem (same methods, so a Store or anything
else handed an `fs` takes it unchanged) and runs on CPython and MicroPython.
It never changes what reaches the real files except as a fault dictates.

    fs = FaultFS()
    store = Store(path, fs=fs)
    fs.cut_after(10)              # power dies once 10 more bytes are written:
    store.commit({...})           #   the write crossing it is torn at byte 10 and
                                  #   raises PowerCut; every later op raises too
    fs.reboot(pad=PAD_FF)         # power back: the torn write's missing bytes read
    store = Store(path, fs=fs)    #   as 0xFF (PAD_NONE/PAD_ZERO/PAD_FF/PAD_RANDOM)

Faults (each armed once; reboot() clears them all):
- cut_after(nbytes): power dies once `nbytes` more bytes are written.
- cut_at_op(n): power dies instead of the n-th next operation of any kind
  (1 = the very next one); `trace` lists the operations, so a test can run
  once to learn the steps and then cut between each pair of them.
- cut_before(op, nth=1, keep=0): power dies instead of the nth next call of
  `op`; for "write", the first `keep` bytes of that write still land (torn).
- fail(op, code=ENOSPC, nth=1, times=1, partial=0): the nth next call of `op`
  ("write", "fsync", "flush", "rename", "open_write", ...) raises
  OSError(code) and power stays on; a failing write first writes `partial`
  bytes.

lose_unsynced=True also models a disk cache: at reboot each file written
through this wrapper keeps only the bytes it had at its last fsync (a file
opened for writing starts with none). Renames and removes are durable at once.
Call settle() after writing files behind the wrapper's back.

Counters: writes, bytes_written, op_counts (op -> calls), trace (list of
(op, path)), powered (False after a cut), cuts (how many cuts happened).
"""
from firmware_shim.files import ENOSPC, FileSystem

PAD_NONE = "none"
PAD_ZERO = "zero"
PAD_FF = "ff"
PAD_RANDOM = "random"
PADS = (PAD_NONE, PAD_ZERO, PAD_FF, PAD_RANDOM)
EIO = 5


class PowerCut(Exception):
    """Power went out: this operation and every later one until reboot() did not happen."""


class _Handle:
    def __init__(self, raw, path, epoch):
        self.raw = raw
        self.path = path
        self.epoch = epoch


class FaultFS:
    def __init__(self, base=None, seed=1, lose_unsynced=False):
        self.base = base if base is not None else FileSystem()
        self.lose_unsynced = lose_unsynced
        self._rand = (seed * 2654435761 + 12345) & 0xFFFFFFFF or 1
        self.writes = 0
        self.bytes_written = 0
        self.op_counts = {}
        self.trace = []
        self.cuts = 0
        self.powered = True
        self._epoch = 0
        self._open = []
        self._synced = {}  # path -> durable length (lose_unsynced only)
        self._torn = None  # (path, missing bytes) of the write the cut tore
        self._clear_faults()

    # ------------------------------------------------------------ arming faults

    def _clear_faults(self):
        self._cut_at_bytes = None
        self._cut_at_op = None
        self._cut_op = None  # [op, countdown]
        self._fails = {}  # op -> [countdown, times, code, partial]

    def cut_after(self, nbytes):
        self._cut_at_bytes = self.bytes_written + nbytes
        if nbytes <= 0:
            self._power_off()

    def cut_at_op(self, n):
        self._cut_at_op = n

    def cut_before(self, op, nth=1, keep=0):
        self._cut_op = [op, nth, keep]

    def fail(self, op, code=ENOSPC, nth=1, times=1, partial=0):
        self._fails[op] = [nth, times, code, partial]

    def clear_faults(self):
        self._clear_faults()

    def settle(self):
        """Count everything now in the files as durable (e.g. after a test wrote a file itself)."""
        self._synced = {}

    # ------------------------------------------------------------ power

    def _power_off(self):
        if not self.powered:
            return
        self.powered = False
        self.cuts += 1
        for h in self._open:
            try:
                self.base.flush(h.raw)  # what was written before the cut is on the media
            except OSError:
                pass

    def reboot(self, pad=PAD_NONE):
        """Power back on: forget open handles, drop unsynced data, pad the torn write."""
        if pad not in PADS:
            raise ValueError("pad must be one of " + ", ".join(PADS))
        for h in self._open:
            try:
                self.base.close(h.raw)
            except OSError:
                pass
        self._open = []
        self._epoch += 1
        if self.lose_unsynced:
            for path in sorted(self._synced):
                self._truncate(path, self._synced[path])
        if self._torn is not None and pad != PAD_NONE:
            path, missing = self._torn
            if self.base.exists(path):
                f = self.base.open_append(path)
                self.base.write(f, self._pad_bytes(pad, missing))
                self.base.close(f)
        self._torn = None
        self._synced = {}
        self._clear_faults()
        self.powered = True
        return self

    def _truncate(self, path, length):
        data = self.base.read_bytes(path)
        if data is None or len(data) <= length:
            return
        f = self.base.open_write(path)
        self.base.write(f, data[:length])
        self.base.close(f)

    def _pad_bytes(self, pad, n):
        if pad == PAD_ZERO:
            return b"\x00" * n
        if pad == PAD_FF:
            return b"\xff" * n
        out = bytearray(n)
        for i in range(n):
            # xorshift32: the same garbage on CPython and MicroPython for a seed
            x = self._rand
            x ^= (x << 13) & 0xFFFFFFFF
            x ^= x >> 17
            x ^= (x << 5) & 0xFFFFFFFF
            self._rand = x
            out[i] = x & 0xFF
        return bytes(out)

    # ------------------------------------------------------------ the gate every op passes

    def _enter(self, op, path=None, handle=None, data=None):
        if not self.powered:
            raise PowerCut(op)
        if handle is not None and handle.epoch != self._epoch:
            raise PowerCut(op + " on a handle from before the reboot")
        if self._cut_at_op is not None:
            self._cut_at_op -= 1
            if self._cut_at_op <= 0:
                self._power_off()
                raise PowerCut(op)
        if self._cut_op is not None and self._cut_op[0] == op:
            self._cut_op[1] -= 1
            if self._cut_op[1] <= 0:
                if data is not None:
                    keep = min(self._cut_op[2], len(data))
                    self._write_through(handle, data[:keep])
                    self._torn = (handle.path, len(data) - keep)
                self._power_off()
                raise PowerCut(op)
        self.op_counts[op] = self.op_counts.get(op, 0) + 1
        self.trace.append((op, path if handle is None else handle.path))
        spec = self._fails.get(op)
        if spec is not None and spec[1] > 0:
            spec[0] -= 1
            if spec[0] <= 0:
                spec[1] -= 1
                return spec
        return None

    def _raise_injected(self, spec):
        raise OSError(spec[2], "injected fault")

    # ------------------------------------------------------------ FileSystem methods

    def open_append(self, path):
        spec = self._enter("open_append", path)
        if spec is not None:
            self._raise_injected(spec)
        if self.lose_unsynced and path not in self._synced:
            self._synced[path] = self.base.size(path) if self.base.exists(path) else 0
        h = _Handle(self.base.open_append(path), path, self._epoch)
        self._open.append(h)
        return h

    def open_write(self, path):
        spec = self._enter("open_write", path)
        if spec is not None:
            self._raise_injected(spec)
        h = _Handle(self.base.open_write(path), path, self._epoch)
        self._open.append(h)
        if self.lose_unsynced:
            self._synced[path] = 0
        return h

    def write(self, f, data):
        spec = self._enter("write", handle=f, data=data)
        if spec is not None:
            self._write_through(f, data[:spec[3]])
            self._raise_injected(spec)
        limit = self._cut_at_bytes
        if limit is not None and self.bytes_written + len(data) > limit:
            keep = limit - self.bytes_written
            self._write_through(f, data[:keep])
            self._torn = (f.path, len(data) - keep)
            self._power_off()
            raise PowerCut("write")
        self._write_through(f, data)
        if limit is not None and self.bytes_written >= limit:
            self._power_off()  # this write made it; the next operation finds the power off
        return len(data)

    def _write_through(self, f, data):
        if not data:
            return
        self.base.write(f.raw, data)
        self.writes += 1
        self.bytes_written += len(data)

    def flush(self, f):
        spec = self._enter("flush", handle=f)
        if spec is not None:
            self._raise_injected(spec)
        self.base.flush(f.raw)

    def fsync(self, f):
        spec = self._enter("fsync", handle=f)
        if spec is not None:
            self.base.flush(f.raw)  # the data may reach the media even though fsync failed
            self._raise_injected(spec)
        self.base.fsync(f.raw)
        if self.lose_unsynced and f.path in self._synced:
            self._synced[f.path] = self.base.size(f.path)

    def close(self, f):
        spec = self._enter("close", handle=f)
        if f in self._open:
            self._open.remove(f)
        self.base.close(f.raw)
        if spec is not None:
            self._raise_injected(spec)

    def rename(self, src, dst):
        spec = self._enter("rename", src)
        if spec is not None:
            self._raise_injected(spec)
        self.base.rename(src, dst)
        if src in self._synced:
            self._synced[dst] = self._synced.pop(src)
        elif dst in self._synced:
            del self._synced[dst]

    def remove(self, path):
        spec = self._enter("remove", path)
        if spec is not None:
            self._raise_injected(spec)
        self.base.remove(path)
        self._synced.pop(path, None)

    def fsync_dir(self, path):
        spec = self._enter("fsync_dir", path)
        if spec is not None:
            self._raise_injected(spec)
        self.base.fsync_dir(path)

    def read_bytes(self, path):
        spec = self._enter("read_bytes", path)
        if spec is not None:
            self._raise_injected(spec)
        return self.base.read_bytes(path)

    def listdir(self, path):
        self._enter("listdir", path)
        return self.base.listdir(path)

    def exists(self, path):
        self._enter("exists", path)
        return self.base.exists(path)

    def size(self, path):
        self._enter("size", path)
        return self.base.size(path)

    def makedirs(self, path):
        self._enter("makedirs", path)
        self.base.makedirs(path)

    def __getattr__(self, name):
        # Any other method of the wrapped file system passes through, behind the power switch.
        attr = getattr(self.base, name)
        if not callable(attr):
            return attr

        def call(*args):
            self._enter(name, args[0] if args and isinstance(args[0], str) else None)
            return attr(*args)

        return call
