"""The benchmark harness.

    python -m bench            every benchmark
    python -m bench store      one (a module bench/bench_<name>.py)
    python -m bench --json     the same figures as JSON

A benchmark module defines `run(quick=False)` that returns a list of Figure
rows. Every figure names the baseline it was measured against in the same run,
because these machines are noisy: ratios travel, absolute numbers do not.
"""
import argparse
import importlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def available():
    return sorted(
        n[len("bench_"):-3]
        for n in os.listdir(HERE)
        if n.startswith("bench_") and n.endswith(".py")
    )


def _fmt(value, unit):
    if value is None:
        return "-"
    if isinstance(value, float):
        return "%.4g %s" % (value, unit)
    return "%s %s" % (value, unit)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*",
                        help="benchmarks to run (default: all): %s" % ", ".join(available()))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args(argv)
    names = args.names or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        parser.error("unknown benchmark(s): %s" % ", ".join(unknown))
    results = {}
    for name in names:
        mod = importlib.import_module("bench.bench_" + name)
        rows = [dict(r) for r in mod.run(quick=args.quick)]
        results[name] = rows
        if not args.json:
            print("== %s" % name)
            for r in rows:
                ratio = r.get("ratio")
                line = "  %-44s %-16s baseline %-34s %-16s ratio %s" % (
                    r["figure"], _fmt(r["value"], r.get("unit", "")),
                    r.get("baseline", "-"), _fmt(r.get("baseline_value"), r.get("unit", "")),
                    "-" if ratio is None else "%.3f" % ratio,
                )
                if r.get("target"):
                    line += "  (target %s: %s)" % (r["target"], "met" if r.get("met") else "MISSED")
                print(line)
            sys.stdout.flush()
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    return 0


def figure(name, value, unit, baseline, baseline_value, target=None, met=None):
    """One row: `value` measured beside `baseline_value`; ratio = value / baseline_value."""
    ratio = None
    if baseline_value:
        ratio = value / baseline_value
    return {
        "figure": name, "value": value, "unit": unit, "baseline": baseline,
        "baseline_value": baseline_value, "ratio": ratio, "target": target, "met": met,
    }


if __name__ == "__main__":
    sys.exit(main())
