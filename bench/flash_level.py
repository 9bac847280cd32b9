"""bench store, flash level: what a commit costs the flash chip itself, under MicroPython.

Run by bench_store (python -m bench store). It runs the `micropython` binary
on a driver that puts firmware_shim.flash.RamFlash (a NOR chip in RAM, 4 KB
blocks, counting bytes programmed and blocks erased) under:
- littlefs: VfsLfs2 on a 64-block (256 KB) chip, the file store
  (agent.store.Store) in /flash/state, as a board runs it today;
- a raw partition: agent.flash_store.FlashStore on an 8-block (32 KB) chip.
Each store is seeded with 40 stage changes, then measured over one-flag
commits and stage changes (the workload of bench_store).

Wear: years until the most worn block of the store's region reaches
ENDURANCE erase cycles at COMMITS_PER_DAY commits, if erases spread evenly
over the region (littlefs levels wear over its blocks; FlashStore goes round
its pages in a ring).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENDURANCE = 100_000  # erase cycles of a typical NOR flash block (W25Q, ESP32 modules)
COMMITS_PER_DAY = 24 * 60  # one commit a minute
LFS_BLOCKS = 64
NVS_BLOCKS = 8

DRIVER = r'''
import json, os, sys
sys.path.insert(0, ".")
from firmware_shim.flash import RamFlash
from firmware_shim.files import FileSystem
from agent.store import Store
from agent.flash_store import FlashStore
FLAGS = FLAG_NAMES
def stage_change(n):
    stage = 1 + n % 4
    ch = {name: (i + n) % 2 == 0 for i, name in enumerate(FLAGS[3:7])}
    ch["stage"] = stage
    ch["history/%d" % (n % 32)] = {"op": "migrate_to_stage", "from": stage - 1, "to": stage,
                                   "at": 1700000000000 + n,
                                   "cmd": "c-%08x" % (n * 2654435761 & 0xFFFFFFFF), "ok": True}
    return ch
def flip(i):
    return {FLAGS[i % 7]: i % 2 == 0}
def measure(store, dev, n, make):
    p, e = dev.programmed, dev.erases
    for i in range(n):
        store.commit(make(i))
    return {"programmed": (dev.programmed - p) / n, "erases": (dev.erases - e) / n}
def seed(store):
    for i in range(40):
        store.commit(stage_change(i))
out = {}
dev = RamFlash(blocks=LFS, block_size=4096)
os.VfsLfs2.mkfs(dev)
os.mount(os.VfsLfs2(dev), "/flash")
fs = FileSystem()
fs.makedirs("/flash/state")
store = Store("/flash/state/flags.db", fs=fs)
seed(store)
out["lfs_flip"] = measure(store, dev, N_FLIP, flip)
out["lfs_stage"] = measure(store, dev, N_STAGE, stage_change)
store.close()
dev = RamFlash(blocks=NVS, block_size=4096)
store = FlashStore(dev)
seed(store)
out["nvs_flip"] = measure(store, dev, 2000, flip)  # enough to fill and reclaim pages
out["nvs_stage"] = measure(store, dev, 800, stage_change)
print(json.dumps(out))
'''


def micropython_binary() -> str:
    found = os.path.join(os.path.dirname(sys.executable), "micropython")
    return found if os.path.exists(found) else (shutil.which("micropython") or found)


def measure(flags: list[str], quick: bool = False) -> dict:
    n_flip, n_stage = (100, 40) if quick else (500, 200)
    code = (DRIVER.replace("FLAG_NAMES", repr(flags)).replace("LFS", str(LFS_BLOCKS))
            .replace("NVS", str(NVS_BLOCKS)).replace("N_FLIP", str(n_flip))
            .replace("N_STAGE", str(n_stage)))
    proc = subprocess.run([micropython_binary(), "-X", "heapsize=8M", "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError("the flash-level driver failed: %s" % (proc.stderr or proc.stdout))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wear_years(erases_per_commit: float, blocks: int) -> float:
    per_block_per_day = erases_per_commit * COMMITS_PER_DAY / blocks
    return ENDURANCE / per_block_per_day / 365.0 if per_block_per_day else float("inf")
