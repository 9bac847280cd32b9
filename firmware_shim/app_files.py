"""Writes <run_dir>/flags.json and flags.flagd.json for the gateway's applications (Pi).

Owns: the run directory (created 0750 if missing, group `fleetstage` when that
group exists) and replacing both files atomically: write a temp file in the
same directory, fsync it, rename it over the old one, fsync the directory.
A reader sees the old snapshot or the new one, never half of one. Mode 0640.
The contents come from agent.app_flags (handed in by tools.app_side);
`sync()` runs every loop tick and writes only when the revision moved (and
once at start): flags.flagd.json first, then flags.json.
"""
from __future__ import annotations

import json
import os
from typing import Callable

from firmware_shim.unix_server import share_with_group

SNAPSHOT_FILE = "flags.json"
FLAGD_FILE = "flags.flagd.json"


def ensure_run_dir(run_dir: str) -> str:
    if not os.path.isdir(run_dir):
        os.makedirs(run_dir, mode=0o750, exist_ok=True)
        share_with_group(run_dir, 0o750)
    return run_dir


def write_atomically(path: str, data: bytes, mode: int = 0o640) -> None:
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        share_with_group(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class AppFiles:
    """current() -> the flags.json document (with "revision" and "flags");
    flagd(flags) -> flagd's document. Both come from agent.app_flags (the caller
    hands them in: firmware_shim does not import the core)."""

    def __init__(self, run_dir: str, current: Callable[[], dict],
                 flagd: Callable[[dict], dict], log: Callable[[str], None] | None = None) -> None:
        self.run_dir = ensure_run_dir(run_dir)
        self.current = current
        self.flagd = flagd
        self.log = log or (lambda msg: None)
        self.written: int | None = None
        self.errors = 0

    def sync(self) -> bool:
        """Write both files if the revision moved since the last write; True when written."""
        doc = self.current()
        if doc["revision"] == self.written:
            return False
        try:
            # flagd's file first: once flags.json shows revision r, both files hold r
            write_atomically(os.path.join(self.run_dir, FLAGD_FILE),
                             json.dumps(self.flagd(doc["flags"]), sort_keys=True,
                                        indent=1).encode() + b"\n")
            write_atomically(os.path.join(self.run_dir, SNAPSHOT_FILE),
                             json.dumps(doc, sort_keys=True).encode() + b"\n")
        except OSError as exc:
            self.errors += 1
            if self.errors in (1, 10, 100) or self.errors % 1000 == 0:
                self.log(f"cannot write {self.run_dir}/{SNAPSHOT_FILE}: {exc}")
            return False
        self.written = doc["revision"]
        return True
