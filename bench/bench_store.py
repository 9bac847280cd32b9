"""The flag store's benchmark: bytes per commit, write amplification, durable commit time.

    python -m bench store [--quick]

Figures (each beside a baseline measured in the same run):
- bytes written per one-flag commit and per stage change (four flags, the
  stage and a history entry), against rewriting the whole state as a JSON file
  (what a naive agent does) and against SQLite's WAL growth per commit;
- write amplification over 10,000 commits with compaction (see
  `write_amplification`), against the JSON rewrite on the same workload;
- the time of a durable commit (returns only once fsynced) against SQLite
  (WAL, synchronous=FULL, one row upsert per commit) and against rewriting a
  JSON file with write+fsync+rename+fsync(dir), all on the same disk in the
  same run, interleaved in rounds so that disk noise hits all three alike.

At flash level (bench/flash_level.py, run under the `micropython` binary):
bytes programmed and blocks erased per one-flag commit and per stage change,
for the file store on littlefs (VfsLfs2 on a RAM NOR chip of 4 KB blocks)
and for agent.flash_store on a raw partition of the same chip, with a wear
estimate in years.

The scratch directory lives under /var/tmp (a real disk here, never tmpfs; the
run prints what `df` says about it).
"""
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

from agent.store import Store
from agent.store_format import COMMIT, encode_record
from bench import flash_level
from bench.__main__ import figure
from firmware_shim import codec
from firmware_shim.files import FileSystem

FLAGS = [
    "use_ets_agent_registry", "enable_migration_monitoring", "use_logger_error_context",
    "use_genserver_telemetry", "use_genserver_span_management", "use_ets_sampled_events",
    "enforce_no_process_dict",
]
HISTORY_SLOTS = 32  # the agent keeps the last N history entries, one key each


class CountingFS(FileSystem):
    """The real file system, counting the bytes handed to write()."""

    def __init__(self, durable=True):
        self.bytes_written = 0
        self.durable = durable

    def write(self, f, data):
        self.bytes_written += len(data)
        return super().write(f, data)

    def fsync(self, f):
        if self.durable:
            super().fsync(f)
        else:
            f.flush()

    def fsync_dir(self, path):
        if self.durable:
            super().fsync_dir(path)


def stage_change(n, at):
    """One stage change as the controller commits it: four flags, the stage, a history entry."""
    stage = 1 + n % 4
    changes = {name: (i + n) % 2 == 0 for i, name in enumerate(FLAGS[3:7])}
    changes["stage"] = stage
    changes["history/%d" % (n % HISTORY_SLOTS)] = {
        "op": "migrate_to_stage", "from": stage - 1, "to": stage, "at": at,
        "cmd": "c-%08x" % (n * 2654435761 & 0xFFFFFFFF), "ok": True,
    }
    return changes


def workload(count, seed=1, flips_only=False):
    """A day in a gateway's life: mostly single flag flips and counters, some stage changes."""
    rng = random.Random(seed)
    flags = {name: False for name in FLAGS}
    out: list[dict[str, object]] = []
    for n in range(count):
        r = rng.random()
        if r < 0.80 or flips_only:
            name = rng.choice(FLAGS)
            flags[name] = not flags[name]
            out.append({name: flags[name]})
        elif r < 0.95:
            out.append({"cmd_seq": n, "restarts/" + rng.choice(["registry", "spans"]): n % 50})
        else:
            out.append(stage_change(n, 1700000000.0 + n * 3.5))
    return out


def write_amplification(tmp, count, flips_only=False):
    """Bytes written to flash / bytes of logical payload, over `count` commits.

    Logical payload: for each commit, the msgpack encoding of the changes the
    caller asked for (key and value bytes plus msgpack framing, no store
    overhead). Bytes written: everything the store handed to write(): its
    record headers and CRCs, the file header, every compaction snapshot and
    the initial file. The JSON baseline writes the whole state per commit.
    """
    fs = CountingFS(durable=False)  # bytes, not time: skip the fsyncs
    name = "wa-flips.db" if flips_only else "wa.db"
    store = Store(os.path.join(tmp, name), fs=fs, logger=lambda msg: None)
    logical = json_bytes = 0
    state = {}
    for changes in workload(count, flips_only=flips_only):
        if store.commit(changes) is not None:
            logical += len(codec.packb(changes))
        state.update(changes)
        json_bytes += len(json.dumps(state, sort_keys=True).encode())
    compactions = store.stats()["compactions"]
    store.close()
    return fs.bytes_written / logical, json_bytes / logical, compactions


def _seeded_state():
    state: dict[str, object] = {name: False for name in FLAGS}
    state.update({"stage": 0, "cmd_seq": 0})
    for n in range(HISTORY_SLOTS):
        state.update({k: v for k, v in stage_change(n, 1700000000.0 + n).items()
                      if k.startswith("history/")})
    return state


def bytes_per_commit(tmp, changes_list):
    """Mean bytes written per commit of each change set on a store that holds a full state."""
    fs = CountingFS(durable=False)
    store = Store(os.path.join(tmp, "bytes.db"), fs=fs, logger=lambda msg: None,
                  compact_min_bytes=1 << 30)  # no compaction inside the measurement
    store.commit(_seeded_state())
    before = fs.bytes_written
    for changes in changes_list:
        store.commit(changes)
    per = (fs.bytes_written - before) / len(changes_list)
    store.close()
    return per


def json_bytes_per_commit(changes_list):
    state = _seeded_state()
    total = 0
    for changes in changes_list:
        state.update(changes)
        total += len(json.dumps(state, sort_keys=True).encode())
    return total / len(changes_list)


class SqliteKV:
    def __init__(self, path):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB)")
        self.wal = path + "-wal"

    def commit(self, changes):
        # one upsert per commit, as the brief fixes; a batch needs BEGIN/COMMIT around it
        for k, v in changes.items():
            self.db.execute("INSERT INTO kv (k, v) VALUES (?, ?) "
                            "ON CONFLICT(k) DO UPDATE SET v = excluded.v", (k, codec.packb(v)))

    def close(self):
        self.db.close()


class JsonFile:
    def __init__(self, path):
        self.path = path
        self.dir = os.path.dirname(path)
        self.state = {}

    def commit(self, changes):
        self.state.update(changes)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def wal_bytes_per_commit(tmp, changes_list):
    db = SqliteKV(os.path.join(tmp, "walsize.sqlite"))
    db.db.execute("PRAGMA wal_autocheckpoint=0")
    db.commit(_seeded_state())
    db.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = os.path.getsize(db.wal)
    for changes in changes_list:
        db.commit(changes)
    per = (os.path.getsize(db.wal) - before) / len(changes_list)
    db.close()
    return per


def durable_commit_times(tmp, commits, rounds):
    """Median seconds per durable one-flag commit for the store, SQLite and JSON."""
    store = Store(os.path.join(tmp, "time.db"), FileSystem(), logger=lambda msg: None)
    sql = SqliteKV(os.path.join(tmp, "time.sqlite"))
    js = JsonFile(os.path.join(tmp, "time.json"))
    for target in (store, sql, js):
        target.commit(_seeded_state())
    samples: dict[str, list[float]] = {"store": [], "sqlite": [], "json": []}
    n = 0
    for _ in range(rounds):
        for name, target in (("store", store), ("sqlite", sql), ("json", js)):
            t0 = time.perf_counter()
            for i in range(commits):
                target.commit({FLAGS[(n + i) % len(FLAGS)]: (n + i) % 3 == 0})
            samples[name].append((time.perf_counter() - t0) / commits)
        n += commits
    store.close()
    sql.close()
    return {k: statistics.median(v) for k, v in samples.items()}


def _df(path):
    try:
        out = subprocess.run(["df", "-hT", path], capture_output=True, text=True, timeout=5)
        return out.stdout.strip().splitlines()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "df unavailable"


def run(quick=False):
    base = "/var/tmp" if os.path.isdir("/var/tmp") else None
    tmp = tempfile.mkdtemp(prefix="fleetstage-bench-", dir=base)
    try:
        # stderr: `python -m bench --json` keeps stdout for the JSON
        print("  scratch dir %s on: %s" % (tmp, _df(tmp)), file=sys.stderr)
        return _run(tmp, quick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(tmp, quick):
    rows = []
    flips = [{FLAGS[i % len(FLAGS)]: i % 2 == 0} for i in range(200)]
    changes = [stage_change(n, 1700001000.0 + n) for n in range(100)]

    one = bytes_per_commit(tmp, flips)
    rows.append(figure("bytes per one-flag commit", one, "B",
                       "JSON rewrite of the whole state", json_bytes_per_commit(flips),
                       target="<= 64 B", met=one <= 64))
    rows.append(figure("bytes per one-flag commit (vs SQLite)", one, "B",
                       "SQLite WAL growth per commit", wal_bytes_per_commit(tmp, flips)))
    stage = bytes_per_commit(tmp, changes)
    rows.append(figure("bytes per stage change", stage, "B",
                       "JSON rewrite of the whole state", json_bytes_per_commit(changes)))

    count = 1000 if quick else 10000
    wa, json_wa, compactions = write_amplification(tmp, count)
    rows.append(figure("write amplification, %d commits (%d compactions)" % (count, compactions),
                       wa, "x", "JSON rewrite, same workload", json_wa,
                       target="<= 2.0", met=wa <= 2.0))

    wa, json_wa, compactions = write_amplification(tmp, count, flips_only=True)
    rows.append(figure("write amplification, one-flag commits only", wa, "x",
                       "JSON rewrite, same workload", json_wa, target="<= 2.0", met=wa <= 2.0))

    commits, rounds = (10, 3) if quick else (60, 5)
    times = durable_commit_times(tmp, commits, rounds)
    ms = times["store"] * 1000
    rows.append(figure("durable commit time", ms, "ms",
                       "SQLite WAL synchronous=FULL upsert", times["sqlite"] * 1000,
                       target="<= SQLite", met=times["store"] <= times["sqlite"]))
    rows.append(figure("durable commit time (vs JSON)", ms, "ms",
                       "JSON write+fsync+rename+fsync dir", times["json"] * 1000))
    rows.extend(flash_rows(quick))
    return rows


def flash_rows(quick):
    """Flash level, under MicroPython: littlefs (file store) against the raw partition."""
    got = flash_level.measure(FLAGS, quick)
    lfs, nvs = got["lfs_flip"], got["nvs_flip"]
    lfs_s, nvs_s = got["lfs_stage"], got["nvs_stage"]
    flips = [{FLAGS[i % 7]: i % 2 == 0} for i in range(7)]
    record = sum(len(encode_record(COMMIT, 1, codec.packb(f))) for f in flips) / len(flips)
    per_erase = 1 / nvs["erases"] if nvs["erases"] else float("inf")
    rate = "%d commits/day, %d cycles" % (flash_level.COMMITS_PER_DAY, flash_level.ENDURANCE)
    lfs_years = flash_level.wear_years(lfs["erases"], flash_level.LFS_BLOCKS)
    nvs_years = flash_level.wear_years(nvs["erases"], flash_level.NVS_BLOCKS)
    return [
        figure("littlefs: bytes programmed per one-flag commit", lfs["programmed"], "B",
               "the commit's record", record),
        figure("littlefs: blocks erased per one-flag commit", lfs["erases"], "",
               "one block per commit", 1.0),
        figure("littlefs: bytes programmed per stage change", lfs_s["programmed"], "B",
               "littlefs one-flag commit", lfs["programmed"]),
        figure("littlefs: blocks erased per stage change", lfs_s["erases"], "",
               "one block per commit", 1.0),
        figure("partition: bytes programmed per one-flag commit", nvs["programmed"], "B",
               "littlefs, same commits", lfs["programmed"], target="<= 64 B",
               met=nvs["programmed"] <= 64),
        figure("partition: one-flag commits per block erased", per_erase, "",
               "littlefs", 1 / lfs["erases"] if lfs["erases"] else None, target=">= 64",
               met=per_erase >= 64),
        figure("partition: bytes programmed per stage change", nvs_s["programmed"], "B",
               "littlefs, same commits", lfs_s["programmed"]),
        figure("partition: blocks erased per stage change", nvs_s["erases"], "",
               "littlefs, same commits", lfs_s["erases"]),
        figure("wear, one-flag commits: partition (%d blocks), years" % flash_level.NVS_BLOCKS,
               nvs_years, "y", "littlefs (%d blocks), %s" % (flash_level.LFS_BLOCKS, rate),
               lfs_years),
    ]
