"""Test helpers shared by the core suite on CPython (pytest) and MicroPython.

Nothing here may need more than the MicroPython unix port offers: no
tempfile, contextlib, functools or os.path.
"""
import os

_counter = [0]


def _rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        try:
            os.remove(path)
        except OSError:
            pass
        return
    for n in names:
        _rmtree(path + "/" + n)
    try:
        os.rmdir(path)
    except OSError:
        pass


_ROOT = "/tmp/fleetstage-tests"
_RUN = _ROOT + "/run-" + "".join("%02x" % b for b in os.urandom(6))  # this process's


def cleanup():
    """Remove every directory tmpdir() made in this process (runners call it at the end)."""
    _rmtree(_RUN)


def tmpdir(tag="t"):
    """A fresh empty directory under /tmp, unique to this process and call."""
    base = _RUN
    for d in (_ROOT, base):
        try:
            os.mkdir(d)
        except OSError:
            pass
    _counter[0] += 1
    seed = os.urandom(4)
    name = "%s/%s-%d-%s" % (base, tag, _counter[0], "".join("%02x" % b for b in seed))
    _rmtree(name)
    os.mkdir(name)
    return name


def raises(exc_type, fn, *args, **kwargs):
    """Call fn and return the exception it raised; fail if it raised nothing or another type."""
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        return exc
    raise AssertionError("%s did not raise %s" % (getattr(fn, "__name__", fn), exc_type.__name__))


class closing:
    """with corekit.closing(store_or_control) as s: ... closes it even when the test fails.

    (contextlib.closing, which the MicroPython unix port does not have.)
    """

    def __init__(self, thing):
        self.thing = thing

    def __enter__(self):
        return self.thing

    def __exit__(self, *exc):
        self.thing.close()
        return False
