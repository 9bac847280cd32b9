"""An in-memory file system with the same interface as firmware_shim.files.FileSystem.

The virtual-time simulator runs thousands of real agent cores in one process;
giving each a real directory would make the run measure the host's disk, not
the fleet. MemFS keeps every file as a bytearray and models durability the way
flash does: bytes written but not yet fsynced are lost at a power cut.
"""
from __future__ import annotations

from firmware_shim.files import ENOENT


class _Handle:
    __slots__ = ("path", "closed")

    def __init__(self, path: str) -> None:
        self.path = path
        self.closed = False


class MemFS:
    """Files are {path: bytearray}; `durable` holds what survived the last fsync.

    A durable entry is a length while the file has only grown since its fsync (the
    store appends and fsyncs at every commit): the first that many bytes of the file
    itself, not a second copy (at 10^5 devices the copies were ~270 MB). A write
    that could change those bytes (open_write, rename over it) first makes it a copy.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytearray] = {}
        self.durable: dict[str, bytes | int] = {}
        self.dirs: set[str] = {"/"}
        self.bytes_written = 0
        self.cut_after: int | None = None  # armed power cut: bytes the next writes may still add
        self.dead = False

    def _alive(self) -> None:
        if self.dead:
            raise OSError(5, "no power")

    # the FileSystem interface -------------------------------------------
    def open_append(self, path: str) -> _Handle:
        self.files.setdefault(path, bytearray())
        return _Handle(path)

    def open_write(self, path: str) -> _Handle:
        self._own_copy(path)
        self.files[path] = bytearray()
        return _Handle(path)

    def _own_copy(self, path: str) -> None:
        """Before the file's bytes are replaced: its durable part as its own bytes."""
        kept = self.durable.get(path)
        if isinstance(kept, int):
            self.durable[path] = bytes(self.files[path][:kept])

    def _durable_bytes(self, path: str) -> bytes:
        kept = self.durable[path]
        return bytes(self.files[path][:kept]) if isinstance(kept, int) else kept

    def read_bytes(self, path: str) -> bytes | None:
        data = self.files.get(path)
        return None if data is None else bytes(data)

    def write(self, f: _Handle, data: bytes) -> int:
        self._alive()
        if self.cut_after is not None and len(data) > self.cut_after:
            self.files[f.path].extend(data[:self.cut_after])  # the torn write
            self.bytes_written += self.cut_after
            self.cut_after = None
            self.dead = True
            # worst case for the store: the torn bytes did reach flash
            self.durable[f.path] = len(self.files[f.path])
            raise OSError(5, "power cut during write")
        if self.cut_after is not None:
            self.cut_after -= len(data)
        self.files[f.path].extend(data)
        self.bytes_written += len(data)
        return len(data)

    def flush(self, f: _Handle) -> None:
        pass

    def fsync(self, f: _Handle) -> None:
        self._alive()
        self.durable[f.path] = len(self.files[f.path])

    def close(self, f: _Handle) -> None:
        f.closed = True

    def rename(self, src: str, dst: str) -> None:
        self._alive()
        if src not in self.files:
            raise OSError(ENOENT, src)
        self._own_copy(dst)
        self.files[dst] = self.files.pop(src)
        if src in self.durable:
            self.durable[dst] = self.durable.pop(src)

    def remove(self, path: str) -> None:
        self.files.pop(path, None)
        self.durable.pop(path, None)

    def fsync_dir(self, path: str) -> None:
        pass

    def listdir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):].split("/", 1)[0] for p in self.files if p.startswith(prefix)}
        names |= {d[len(prefix):].split("/", 1)[0] for d in self.dirs if d.startswith(prefix)}
        names.discard("")
        return sorted(names)

    def exists(self, path: str) -> bool:
        return path in self.files or path in self.dirs

    def size(self, path: str) -> int:
        if path not in self.files:
            raise OSError(ENOENT, path)
        return len(self.files[path])

    def makedirs(self, path: str) -> None:
        while path and path not in ("/", "."):
            self.dirs.add(path)
            path = path.rsplit("/", 1)[0]

    # simulation ------------------------------------------------------------
    def arm_cut(self, after_bytes: int) -> None:
        """Cut the power once `after_bytes` more bytes have been written."""
        self.cut_after = after_bytes

    def power_cut(self) -> None:
        """Lose everything that was not fsynced, as flash would; power comes back."""
        self.files = {p: bytearray(self._durable_bytes(p)) for p in self.durable}
        self.cut_after = None
        self.dead = False
