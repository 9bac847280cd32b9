"""File operations that the flag store needs, behind one object.

The store never calls `open` or `os` itself; it is handed a `FileSystem`, so
tests can hand it a wrapper that cuts power after N bytes or fails with ENOSPC.
Every method may raise OSError; the store turns that into its own errors.

MicroPython differences handled here:
- the unix port and littlefs have no os.fsync: on littlefs `flush()` is the
  commit point (it rewrites the file's last block), so fsync is flush there;
- there is no os.path, so paths are joined with "/";
- errno may lack ENOSPC, so its number (28 on Linux and littlefs) is kept here.
"""
import os

try:
    import errno as _errno

    ENOSPC = getattr(_errno, "ENOSPC", 28)
    ENOENT = getattr(_errno, "ENOENT", 2)
    EEXIST = getattr(_errno, "EEXIST", 17)
except ImportError:  # minimal MicroPython ports have no errno module
    ENOSPC, ENOENT, EEXIST = 28, 2, 17

_fsync = getattr(os, "fsync", None)  # absent on MicroPython


def join(*parts):
    out = ""
    for p in parts:
        if not out:
            out = p
        elif out.endswith("/"):
            out = out + p
        else:
            out = out + "/" + p
    return out


def dirname(path):
    i = path.rfind("/")
    if i < 0:
        return "."
    if i == 0:
        return "/"
    return path[:i]


def oserror_errno(exc):
    """The errno of an OSError on both runtimes (MicroPython puts it in args[0])."""
    code = getattr(exc, "errno", None)
    if code is None and exc.args:
        code = exc.args[0]
    return code


class FileReadError(ValueError):
    """A text file that could not be read: its message says which and why."""


def read_text(fs, path):
    """The UTF-8 text of `path` through `fs`; FileReadError when missing, unreadable or
    not UTF-8 (config, plan and agent-config loaders wrap it in their own error)."""
    try:
        raw = fs.read_bytes(path)
    except OSError as exc:
        raise FileReadError("cannot read %s: %s" % (path, exc)) from None
    if raw is None:
        raise FileReadError("%s does not exist" % path)
    try:
        return raw.decode("utf-8")
    except UnicodeError:
        raise FileReadError("%s is not UTF-8" % path) from None


class FileSystem:
    """The real file system. One instance may serve many stores.

    FileSystem(ROOT) serves a folder as a board's flash: "/x" means ROOT/x, as "x"
    does. The unix port runs a bundle this way (`cd BUNDLE && micropython main.py`):
    the config's absolute paths (/config.json, /device.key, /state) resolve inside the
    bundle, as they do on the board's own flash. (Mounting the folder at "/" with
    VfsPosix would do the same, but its rename of absolute paths fails on the unix
    port, and the store renames.) One class for both: a board holds one.
    """

    root = None  # a subclass that does not call __init__ serves the host's paths

    def __init__(self, root=None):
        self.root = None if root is None else (root.rstrip("/") or "/")

    def path(self, p):
        """Where `p` is on the host (itself without a root)."""
        root = self.root
        if root is None:
            return p
        p = p.lstrip("/")
        while p.startswith("./"):
            p = p[2:]
        if p in ("", "."):
            return root
        return join(root, p)

    def open_append(self, path):
        return open(self.path(path), "ab")

    def open_write(self, path):
        return open(self.path(path), "wb")

    def read_bytes(self, path):
        """The whole file, or None when it does not exist."""
        try:
            with open(self.path(path), "rb") as f:
                return f.read()
        except OSError as exc:
            if oserror_errno(exc) == ENOENT:
                return None
            raise

    def write(self, f, data):
        n = f.write(data)
        if n is not None and n != len(data):
            raise OSError(ENOSPC, "short write")
        return len(data)

    def flush(self, f):
        f.flush()

    def fsync(self, f):
        f.flush()
        if _fsync is not None:
            _fsync(f.fileno())

    def close(self, f):
        f.close()

    def rename(self, src, dst):
        os.rename(self.path(src), self.path(dst))

    def remove(self, path):
        try:
            os.remove(self.path(path))
        except OSError as exc:
            if oserror_errno(exc) != ENOENT:
                raise

    def fsync_dir(self, path):
        """Make a rename or create in `path` durable (a no-op where unsupported)."""
        if _fsync is None:
            return  # MicroPython/littlefs: metadata is committed with the file
        try:
            fd = os.open(self.path(path), os.O_RDONLY)
        except (OSError, AttributeError):
            return
        try:
            _fsync(fd)
        except OSError:
            pass  # some file systems refuse fsync on a directory; nothing more to do
        finally:
            os.close(fd)

    def listdir(self, path):
        return os.listdir(self.path(path))

    def exists(self, path):
        return _exists(self.path(path))

    def size(self, path):
        return os.stat(self.path(path))[6]

    def makedirs(self, path):
        _makedirs(self.path(path))


class FolderFlash(FileSystem):
    """FileSystem(root) under the name it had (a folder served as a board's flash)."""


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _makedirs(path):
    if not path or _exists(path):
        return
    parent = dirname(path)
    if parent not in (".", "/", path):
        _makedirs(parent)
    try:
        os.mkdir(path)
    except OSError as exc:
        if oserror_errno(exc) != EEXIST:
            raise
