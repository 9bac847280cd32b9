"""`fleetstage sim`: rehearse a staged rollout on a simulated fleet of real agents.

With no options it runs its embedded defaults: 500 devices in virtual time,
the default fault profile (an 8% hardware cohort, rev-b, that breaks at
stage 3; 1% message loss; power cuts during writes; clock skew), waves of
2/10/50/100%, 5 minutes of monitoring per wave. The rollout is decided by
the orchestrator core `fleetstage rollout` runs (tools/orchestrator.py), so
the simulator rehearses exactly what operators run. It prints a summary and
writes a JSON report and an HTML page with plots.

--transport mqtt runs the same scenario over a real MQTT broker: every
simulated device holds its own session (client id, last will,
subscriptions); with no --broker an embedded broker starts in this process.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from sim.faults import PROFILES, profile
from sim.fleet import SimSettings, run
from sim.report import write_html, write_json
from tools import waves as W


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim", help="simulate a staged rollout on a fleet of real agents",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=500, help="fleet size (default 500)")
    p.add_argument("--faults", dest="faults", default="default",
                   choices=sorted(PROFILES),
                   help="fault profile (default: default; none: no faults at all)")
    p.add_argument("--seed", type=int, default=7, help="random seed; a run is reproducible")
    p.add_argument("--waves", default=W.DEFAULT_WAVES,
                   help="waves as for `fleetstage rollout` (default %(default)s)")
    p.add_argument("--error-threshold", default="5%",
                   help="a wave fails when more than this share (5%%) or count (3) of its "
                        "devices fail (default 5%%)")
    p.add_argument("--on-failure", choices=("rollback", "pause"), default="rollback",
                   help="what a failed wave does (default rollback)")
    p.add_argument("--soak", type=float, default=300,
                   help="seconds of monitoring per wave (default 300)")
    p.add_argument("--transport", choices=("virtual", "mqtt"), default="virtual",
                   help="virtual (default): a virtual broker in virtual time, fast; mqtt: "
                        "every device its own session on a real broker")
    p.add_argument("--broker", default=None,
                   help="with --transport mqtt: mqtt://HOST:PORT of a running broker "
                        "(default: an embedded broker in this process)")
    p.add_argument("--report", default="fleetstage-report",
                   help="report path prefix: writes PREFIX.json and PREFIX.html")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.set_defaults(handler=main)


def _fail(msg: str) -> int:
    print("fleetstage sim: %s" % msg, file=sys.stderr)
    return 2


# Peak resident memory a simulated device costs (README, bench rollout: 39-81 KiB from
# 10^5 to 10^3 devices, virtual transport): a fleet that cannot fit is refused up front
# rather than left to swap or be killed.
BYTES_PER_DEVICE = 60 * 1024


def _memory_available() -> int | None:
    """MemAvailable from /proc/meminfo (bytes), or None where there is none."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def main(args: argparse.Namespace) -> int:
    if args.devices < 1:
        return _fail("--devices must be at least 1")
    if args.soak < 0:
        return _fail("--soak must be 0 or more seconds")
    need, have = args.devices * BYTES_PER_DEVICE, _memory_available()
    if have is not None and need > have:
        return _fail("--devices %d needs about %.1f GB of memory (some %d KiB a simulated "
                     "device); this machine has %.1f GB available: give at most %d devices"
                     % (args.devices, need / 1e9, BYTES_PER_DEVICE // 1024, have / 1e9,
                        have // BYTES_PER_DEVICE))
    try:
        W.parse_waves(args.waves)
        W.parse_threshold(args.error_threshold)
    except W.WaveError as exc:
        return _fail(str(exc))
    if args.broker is not None and args.transport != "mqtt":
        return _fail("--broker needs --transport mqtt")
    folder = os.path.dirname(os.path.abspath(args.report))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        return _fail("--report %s: folder %s does not exist or is not writable; give a "
                     "writable PREFIX" % (args.report, folder))
    settings = SimSettings(devices=args.devices, seed=args.seed, waves=args.waves,
                           error_threshold=args.error_threshold, on_failure=args.on_failure,
                           profile=profile(args.faults), soak_ms=int(args.soak * 1000))
    if not args.json:
        print("fleetstage sim: %d devices, faults %s, waves %s, seed %d, %s transport" % (
            args.devices, args.faults, args.waves, args.seed, args.transport))
    if args.transport == "mqtt":
        from sim.mqtt_transport import EMBEDDED_MAX_DEVICES, MqttSetupError, run_mqtt
        if args.broker is None and args.devices > EMBEDDED_MAX_DEVICES:
            print("fleetstage sim: note: the embedded broker (amqtt) routes each message past "
                  "every subscription and keeps no sessions for anonymous clients; above %d "
                  "devices give --broker mqtt://HOST:PORT (mosquitto)" % EMBEDDED_MAX_DEVICES,
                  file=sys.stderr)
        try:
            result = run_mqtt(settings, args.broker)
        except MqttSetupError as exc:
            return _fail(str(exc))
        except W.WaveError as exc:
            return _fail(str(exc))
    else:
        try:
            result = run(settings)
        except W.WaveError as exc:  # e.g. group:NAME that no simulated device is in
            return _fail(str(exc))
    write_json(result, args.report + ".json")
    write_html(result, args.report + ".html")
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        _summary(result, args.report)
    return 0 if result["consistent"] else 1


def _summary(result: dict, prefix: str) -> None:
    for w in result["waves"]:
        print("  stage %d wave %d: %5d devices  applied %5d  rejected %3d  rolled back %3d"
              "  silent %3d  %s%s" % (
                  w["stage"], w["wave"], w["devices"], w["applied"], w["rejected"],
                  w["rolled_back"], w["silent"], w["decision"].upper(),
                  (": " + w["reason"]) if w["reason"] else ""))
    print("outcome: %s%s" % (result["outcome"], (" at stage %d" % result["halted_at_stage"])
                             if result["halted_at_stage"] else ""))
    if result.get("blamed"):
        print("blamed cohort: %s" % result["blamed"]["text"])
    print("final devices per stage: %s" % ", ".join(
        "%s: %d" % kv for kv in result["final_stage_counts"].items()))
    print("automatic rollbacks on devices: %d (by cohort: %s), quarantined: %d, power cuts: %d"
          " (store recovery log lines: %d, in the report)" % (
              len(result["rollbacks"]), _by_cohort(result["rollbacks"]), result["quarantined"],
              result["power_cuts"], result["store_log_lines"]))
    print("consistent: %s; %.0f s of virtual time in %.1f s" % (
        result["consistent"], result["virtual_time_s"], result["wall_s"]))
    print("report: %s.json, %s.html" % (prefix, prefix))


def _by_cohort(rollbacks: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in rollbacks:
        counts[r["cohort"]] = counts.get(r["cohort"], 0) + 1
    return ", ".join("%s %d" % kv for kv in sorted(counts.items())) or "none"
