"""Rollout at fleet scale: the simulator's CPU per device, and what a device receives.

    python -m bench rollout            10^3, 10^4 and 10^5 devices
    python -m bench rollout --quick    10^2 and 10^3 devices

CPU per device: the process CPU time (user + system) of one `fleetstage sim`
run of the default scenario (default fault profile, seed 7, waves 2/10/50/100%,
5-minute soak, halts at stage 3 when the bad cohort shows), divided by the
fleet size. Every size runs in its own child process, so each starts cold and
its peak memory is its own. The baseline is the smallest size in the same run:
a ratio near 1.0 at every size is linear growth. The same is measured for the
clean profile (no faults), whose rollout goes through all 4 stages.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from bench.__main__ import figure

TARGET_MS = 5.0


def _one(devices: int, profile: str) -> dict:
    """In a child: run one simulation and report its CPU and peak memory."""
    from sim.faults import profile as get_profile
    from sim.fleet import SimSettings, run

    t0 = time.process_time()
    result = run(SimSettings(devices=devices, profile=get_profile(profile)))
    cpu = time.process_time() - t0
    return {"devices": devices, "profile": profile, "cpu_s": cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "outcome": result["outcome"], "final_stage_counts": result["final_stage_counts"]}


def measure(devices: int, profile: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.bench_rollout", str(devices), profile],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpu_rows(sizes: list[int], profile: str) -> list[dict]:
    rows = []
    base = None
    for n in sizes:
        m = measure(n, profile)
        per_ms = 1000 * m["cpu_s"] / n
        if base is None:
            base = (n, per_ms)
        rows.append(figure(
            "sim CPU/device, %s, %d devices (%s)" % (profile, n, m["outcome"].split(":")[0]),
            per_ms, "ms", "same at %d devices" % base[0], base[1],
            target="<= %.0f ms" % TARGET_MS, met=per_ms <= TARGET_MS))
        rows.append(figure("  peak memory per device, %d devices" % n,
                           1024 * m["peak_rss_mb"] / n, "KiB", "-", None))
    return rows


def run(quick: bool = False) -> list[dict]:
    sizes = [100, 1000] if quick else [1000, 10_000, 100_000]
    rows = cpu_rows(sizes, "default")
    rows += cpu_rows(sizes[:2] if not quick else sizes, "clean")
    return rows


if __name__ == "__main__":
    print(json.dumps(_one(int(sys.argv[1]), sys.argv[2])))
