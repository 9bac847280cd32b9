"""Runs the core test suite (tests/core/test_*.py) under the MicroPython unix port.

    micropython tests/micropython_suite.py [NAME-FILTER]

The unix port has no unittest, pytest, functools, contextlib, tempfile or
os.path, so this is the whole runner: import each module, call each function
whose name starts with test_, print failures with their traceback, and end
with the plain line 'N passed, N failed'. pytest collects the same files on
CPython, so every core test runs on both interpreters.
"""
import gc
import os
import sys

ROOT = "."
if "tests" not in os.listdir(ROOT):
    raise SystemExit("run from the repository root")
sys.path.insert(0, ROOT)
sys.path.insert(0, "tests/core")


def main():
    wanted = sys.argv[1] if len(sys.argv) > 1 else ""
    modules = sorted(
        n[:-3] for n in os.listdir("tests/core") if n.startswith("test_") and n.endswith(".py")
    )
    passed = failed = 0
    failures = []
    for name in modules:
        mod = __import__(name)
        tests = sorted(k for k in dir(mod) if k.startswith("test_"))
        for t in tests:
            fn = getattr(mod, t)
            if not callable(fn):
                continue
            label = name + "::" + t
            if wanted and wanted not in label:
                continue
            gc.collect()  # each test starts on a collected heap (the unix port's is 2 MB)
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - a runner reports every failure
                failed += 1
                failures.append(label)
                print("FAIL", label)
                sys.print_exception(exc)
            else:
                passed += 1
    import corekit

    corekit.cleanup()
    if failures:
        print("failed:", ", ".join(failures))
    print("micropython: %d passed, %d failed" % (passed, failed))
    return 1 if failed or not passed else 0


sys.exit(main())
