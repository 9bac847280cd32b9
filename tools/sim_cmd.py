"""`fleetstage sim`: run a staged rollout on a simulated fleet of real agents.

With no options it runs its embedded defaults: 500 devices in virtual time,
the default fault profile (an 8% hardware cohort that breaks at stage 3, 1%
message loss, power cuts during writes, clock skew), waves of 2/10/50/100%.
It prints a summary and writes a JSON report and an HTML page with plots.
"""
from __future__ import annotations

import argparse
import json
import sys

from sim.faults import PROFILES, profile
from sim.fleet import SimSettings, run
from sim.report import write_html, write_json
from tools.strategy import WavePolicy


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim", help="simulate a staged rollout on a fleet of real agents",
                       description=__doc__)
    p.add_argument("--devices", type=int, default=500, help="fleet size (default 500)")
    p.add_argument("--profile", default="default", choices=sorted(PROFILES),
                   help="fault profile (default: default)")
    p.add_argument("--seed", type=int, default=7, help="random seed; a run is reproducible")
    p.add_argument("--waves", default="0.02,0.1,0.5,1",
                   help="cumulative wave fractions (default 0.02,0.1,0.5,1)")
    p.add_argument("--max-failure", type=float, default=0.05,
                   help="halt when more than this fraction of a wave fails (default 0.05)")
    p.add_argument("--soak", type=float, default=300, help="seconds each wave is watched")
    p.add_argument("--report", default="fleetstage-report",
                   help="report path prefix: writes PREFIX.json and PREFIX.html")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    if args.devices < 1:
        print("fleetstage sim: --devices must be at least 1", file=sys.stderr)
        return 2
    try:
        waves = tuple(float(x) for x in args.waves.split(","))
        policy = WavePolicy(waves=waves, max_failure_ratio=args.max_failure)
    except ValueError as exc:
        print("fleetstage sim: bad --waves/--max-failure: %s" % exc, file=sys.stderr)
        return 2
    settings = SimSettings(devices=args.devices, seed=args.seed, policy=policy,
                           profile=profile(args.profile), soak_ms=int(args.soak * 1000))
    if not args.json:
        print("fleetstage sim: %d devices, profile %s, waves %s, seed %d" % (
            args.devices, args.profile, args.waves, args.seed))
    result = run(settings)
    write_json(result, args.report + ".json")
    write_html(result, args.report + ".html")
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for w in result["waves"]:
            print("  stage %d wave %d: %4d devices  applied %4d  rejected %3d  rolled back %3d"
                  "  unanswered %3d%s" % (
                      w["stage"], w["wave"], w["devices"], w["applied"], w["rejected"],
                      w["rolled_back"], w["unanswered"],
                      ("  HALT: " + w["why"]) if w["halted"] else ""))
        print("outcome: %s" % result["outcome"])
        print("final devices per stage: %s" % result["final_stages"])
        print("automatic rollbacks: %d, quarantined: %d, power cuts: %d (store recovery log"
              " lines: %d, in the report), events: %s" % (
                  result["auto_rollbacks"], result["quarantined"], result["power_cuts"],
                  result["store_log_lines"], result["events"]))
        print("consistent: %s; %.0f s of virtual time in %.1f s" % (
            result["consistent"], result["virtual_time_s"], result["wall_time_s"]))
        print("report: %s.json, %s.html" % (args.report, args.report))
    return 0 if result["consistent"] else 1
