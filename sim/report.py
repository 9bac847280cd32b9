"""The simulator's report: JSON for machines, one HTML page with plots for people.

The JSON report is a contract for tools and tests. Its top-level keys:
    outcome             completed | halted | paused (| preempted: another operator won)
    halted_at_stage     the stage whose wave halted, else null
    final_stage_counts  {"0": devices at stage 0, ..., "4": ...} after the run
    rollbacks           every automatic rollback a device made: device, stage (the one
                        it left), reason ("health:error_rate", ...), cohort (its hardware)
    waves               each wave's result from the orchestrator core: stage, wave,
                        devices, decision (advance | halt | pause), reason, cohorts
                        (by reason, group and hardware, with "blamed" when one stands out)
    devices, seed, mode (virtual | mqtt), wall_s
and beyond those: settings, the operator's decisions over time, devices per
stage over time, each wave's measured health, consistency, faults seen,
events, broker counters. Apart from wall_s, the same settings and seed give
byte-identical reports in virtual mode (tests/test_sim.py checks it).

The HTML is self-contained (inline SVG, no network), so it can be attached
to a change ticket or opened from a CI artifact.
"""
from __future__ import annotations

import html
import json
from typing import Any

COLOURS = ["#9e9e9e", "#4caf50", "#2196f3", "#ff9800", "#e91e63", "#9c27b0", "#795548"]


def _rollbacks(sim: Any) -> list[dict]:
    out = []
    for dev, control in sim.booted_devices():
        for e in control.history.entries():
            if e.get("op") != "auto_rollback":
                continue
            metrics = sorted({v.get("metric", "?") for v in e.get("violations") or ()
                              if isinstance(v, dict)})
            out.append({"device": dev.device_id, "stage": e["from"],
                        "reason": "health:" + "+".join(metrics) if metrics else "health",
                        "cohort": dev.hw})
    return sorted(out, key=lambda r: (r["stage"], r["device"]))


def build(sim: Any, finished: Any, problems: list[str], wall_s: float,
          mode: str = "virtual") -> dict:
    """The report of one run, as a dict (see the module docstring for the contract)."""
    settings = sim.settings
    orch = sim.operator.orch
    final = [0] * (sim.stages + 1)
    quarantined = auto_rollbacks = stores_recovered = 0
    for _dev, control in sim.booted_devices():
        st = control.status()
        final[st["current_stage"]] += 1
        quarantined += st["quarantine"] is not None
        auto_rollbacks += sum(st["auto_rollbacks"].values())
        stores_recovered += bool(control.store.stats().get("recovered"))
    waves = [r.to_dict() for r in orch.results]
    halted = finished.outcome in ("halted", "paused")
    samples = [t for t in sim.timeline if "stages" in t]
    return {
        "outcome": finished.outcome,
        "reason": finished.reason,
        "halted_at_stage": waves[-1]["stage"] if halted and waves else None,
        "blamed": finished.blamed,
        "final_stage_counts": {str(i): n for i, n in enumerate(final)},
        "rollbacks": _rollbacks(sim),
        "waves": waves,
        "devices": settings.devices,
        "seed": settings.seed,
        "mode": mode,
        "wall_s": round(wall_s, 2),
        "settings": {"profile": settings.profile.name, "waves": settings.waves,
                     "soak_s": settings.soak_ms / 1000,
                     "error_threshold": settings.error_threshold,
                     "success": settings.success, "on_failure": settings.on_failure,
                     "ack_timeout_s": orch.spec.ack_timeout_s,
                     "device_max_error_rate": sim.device_thresholds["max_error_rate"],
                     "device_max_latency_ratio": sim.device_thresholds["max_latency_ratio"]},
        "decisions": [{"t_s": d.t_ms / 1000, "kind": d.kind, "text": d.text}
                      for d in sim.operator.timeline],
        "wave_health": sim.wave_health,
        "baseline_latency_p95": sim.baseline_p95,
        "consistent": not problems,
        "problems": problems[:50],
        "virtual_time_s": sim.clock.now_ms / 1000,
        "final_stages": final,
        "cohorts": {c.name: sum(1 for d in sim.devices if d.cohort is c)
                    for c in settings.profile.cohorts},
        "auto_rollbacks": auto_rollbacks,
        "quarantined": quarantined,
        "power_cuts": sim.counters["power_cuts"],
        "stores_recovered_after_cut": stores_recovered,
        "store_log_lines": sim.counters["store_log_lines"],
        "store_log_tail": sim.store_log_tail,
        "events": dict(sorted(sim.operator.events.items())),
        "acks_received": sim.operator.acks,
        "broker": dict(sim.broker.counters),
        "bad_reports": sim.operator.bad_reports,
        "timeline": samples[:: max(1, len(samples) // 400)],
        "incidents": [t for t in sim.timeline if "event" in t],
    }


def write_json(result: dict, path: str) -> None:
    with open(path, "w") as f:
        f.write(to_json(result))


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2, sort_keys=True) + "\n"


# ----------------------------------------------------------------- the page

W_PLOT, H_PLOT = 760, 220


def _svg(label: str, body: list[str], width: int = W_PLOT + 120, height: int = H_PLOT + 60,
         marks: int = 0) -> str:
    return ('<svg class="plot" data-marks="%d" width="%d" height="%d" role="img" '
            'aria-label="%s">%s</svg>' % (marks, width, height, html.escape(label),
                                          "".join(body)))


def _text(x: float, y: float, s: str, size: int = 11, anchor: str = "start",
          fill: str = "#333") -> str:
    return '<text x="%.1f" y="%.1f" font-size="%d" text-anchor="%s" fill="%s">%s</text>' % (
        x, y, size, anchor, fill, html.escape(s))


def _stage_plot(timeline: list[dict], decisions: list[dict]) -> str:
    if not timeline:
        return "<p>no samples</p>"
    stages = len(timeline[0]["stages"])
    total = max(1, max(sum(t["stages"]) for t in timeline))
    t0, t1 = timeline[0]["t_ms"], max(timeline[-1]["t_ms"], timeline[0]["t_ms"] + 1)
    x0 = 50
    parts = [_text(0, 12, "%d" % total), _text(0, H_PLOT, "0"),
             _text(x0, H_PLOT + 44, "%d s" % (t0 // 1000)),
             _text(x0 + W_PLOT, H_PLOT + 44, "%d s of virtual time" % (t1 // 1000), anchor="end"),
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#ccc"/>' % (
                 x0, H_PLOT, x0 + W_PLOT, H_PLOT),
             '<line x1="%d" y1="0" x2="%d" y2="%d" stroke="#ccc"/>' % (x0, x0, H_PLOT)]
    for d in decisions:  # the operator's halts as dashed lines
        if d["kind"] == "halt":
            x = x0 + (d["t_s"] * 1000 - t0) / (t1 - t0) * W_PLOT
            parts.append('<line x1="%.1f" y1="0" x2="%.1f" y2="%d" stroke="#e91e63" '
                         'stroke-dasharray="4 3"/>' % (x, x, H_PLOT))
            parts.append(_text(x + 3, 12, "halt", fill="#e91e63"))
    for s in range(stages):
        pts = " ".join(
            "%.1f,%.1f" % (x0 + (t["t_ms"] - t0) / (t1 - t0) * W_PLOT,
                           H_PLOT - t["stages"][s] / total * H_PLOT)
            for t in timeline)
        colour = COLOURS[s % len(COLOURS)]
        parts.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (
            colour, pts))
        parts.append(_text(x0 + 10 + 80 * s, H_PLOT + 22, "stage %d" % s, 12, fill=colour))
    return _svg("devices per stage over time", parts, marks=stages)


def _bars(label: str, items: list[tuple[str, float | None]], unit: str,
          limit: float | None = None, limit_label: str = "", colour: str = "#2196f3",
          fmt: str = "%.3g") -> str:
    """A bar per item, with an optional threshold line."""
    if not items:
        return "<p>none</p>"
    values = [v for _k, v in items if v is not None]
    top = max(values + ([limit] if limit is not None else []) + [1e-9]) * 1.15
    x0, n = 50, len(items)
    step = W_PLOT / n
    bar = max(2.0, min(40.0, step * 0.7))
    parts = [_text(0, 12, (fmt % top) + unit), _text(0, H_PLOT, "0"),
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#ccc"/>' % (
                 x0, H_PLOT, x0 + W_PLOT, H_PLOT)]
    marks = 0
    for i, (name, v) in enumerate(items):
        x = x0 + i * step + (step - bar) / 2
        if v is not None:
            h = v / top * H_PLOT
            parts.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s">'
                         '<title>%s: %s%s</title></rect>' % (
                             x, H_PLOT - h, bar, max(h, 0.5), colour, html.escape(name),
                             fmt % v, unit))
            marks += 1
        if n <= 24 or i % max(1, n // 24) == 0:
            parts.append(_text(x + bar / 2, H_PLOT + 16, name, 10, "middle"))
    if limit is not None:
        y = H_PLOT - limit / top * H_PLOT
        parts.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e91e63" '
                     'stroke-width="2" stroke-dasharray="6 3"/>' % (x0, y, x0 + W_PLOT, y))
        parts.append(_text(x0 + W_PLOT + 4, y + 4, limit_label, fill="#e91e63"))
    return _svg(label, parts, marks=marks)


def _decision_plot(decisions: list[dict], t_end_s: float) -> str:
    """The operator's decisions on a time line: a wave start, its verdict, a halt."""
    if not decisions:
        return "<p>none</p>"
    x0 = 50
    span = max(t_end_s, max(d["t_s"] for d in decisions), 1.0)
    rows = {"wave": 40, "result": 80, "halt": 120, "rollback": 120, "offline": 160,
            "finished": 160, "broker": 160, "preempted": 120, "resume": 80}
    colour = {"wave": "#2196f3", "result": "#4caf50", "halt": "#e91e63",
              "rollback": "#e91e63", "finished": "#333"}
    parts = ['<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#ccc"/>' % (
        x0, 180, x0 + W_PLOT, 180), _text(x0, 198, "0 s"),
        _text(x0 + W_PLOT, 198, "%.0f s" % span, anchor="end")]
    for name, y in (("wave starts", 40), ("verdicts", 80), ("halts", 120), ("end", 160)):
        parts.append(_text(0, y + 4, name, 10))
    for d in decisions:
        x = x0 + d["t_s"] / span * W_PLOT
        y = rows.get(d["kind"], 160)
        c = colour.get(d["kind"], "#9e9e9e")
        if d["kind"] == "result" and "advance" not in d.get("decision", "advance"):
            c = "#e91e63"
        parts.append('<circle cx="%.1f" cy="%d" r="5" fill="%s"><title>%.0f s: %s</title>'
                     '</circle>' % (x, y, c, d["t_s"], html.escape(d["text"])))
    return _svg("the operator's decisions over time", parts, height=210,
                marks=len(decisions))


def _table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join("<th>%s</th>" % html.escape(c) for c in columns)
    body = "".join(
        "<tr>%s</tr>" % "".join("<td>%s</td>" % html.escape(str(r.get(c, ""))) for c in columns)
        for r in rows)
    return "<table><tr>%s</tr>%s</table>" % (head, body)


def _count(rows: list[dict], key: str) -> list[tuple[str, float | None]]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[key]] = counts.get(r[key], 0) + 1
    return [(k, float(v)) for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


# After the page is laid out, each plot checks that it drew something: its box has a
# size and it holds as many marks as it says. The result goes on the plot (data-rendered)
# and in the title, so a headless browser's DOM dump shows it.
_CHECK = """<script>
window.addEventListener('load', function () {
  var plots = document.querySelectorAll('svg.plot'), ok = 0;
  plots.forEach(function (svg) {
    var box = svg.getBBox(), want = +svg.dataset.marks;
    var drawn = svg.querySelectorAll('polyline,rect,circle').length;
    var good = box.width > 0 && box.height > 0 && drawn >= want;
    svg.setAttribute('data-rendered', good ? 'ok' : 'empty');
    if (good) ok++;
  });
  document.title = 'fleetstage simulation: ' + ok + '/' + plots.length + ' plots rendered';
});
</script>"""


def write_html(result: dict, path: str) -> None:
    with open(path, "w") as f:
        f.write(to_html(result))


def to_html(result: dict) -> str:
    s = result["settings"]
    blamed = result.get("blamed")
    summary = [
        ("outcome", result["outcome"] + (" at stage %d" % result["halted_at_stage"]
                                         if result["halted_at_stage"] else "")),
        ("why", result.get("reason", "")),
        ("blamed cohort", blamed["text"] if blamed else "none"),
        ("devices", result["devices"]), ("fault profile", s["profile"]),
        ("seed", result["seed"]), ("transport", result["mode"]),
        ("consistent state on every device", result["consistent"]),
        ("final devices per stage", ", ".join(
            "%s: %d" % kv for kv in result["final_stage_counts"].items())),
        ("automatic rollbacks on devices", len(result["rollbacks"])),
        ("quarantined devices", result["quarantined"]),
        ("power cuts during writes", result["power_cuts"]),
        ("virtual time", "%.0f s" % result["virtual_time_s"]),
        ("wall time", "%.1f s" % result["wall_s"]),
    ]
    health = result.get("wave_health") or []
    names = ["s%dw%d" % (h["stage"], h["wave"]) for h in health]
    base = result.get("baseline_latency_p95")
    ratio = s.get("device_max_latency_ratio")
    lat_limit = base * ratio if base is not None and ratio else None
    err_limit = s.get("device_max_error_rate")
    page = [
        "<!doctype html><meta charset=utf-8><title>fleetstage simulation</title>",
        "<style>body{font:14px sans-serif;margin:2em;max-width:70em}td,th{border:1px solid "
        "#ccc;padding:3px 8px}table{border-collapse:collapse;margin:1em 0}h2{margin-top:1.6em}"
        "</style>",
        "<h1>fleetstage simulation</h1>",
        _table([{"what": k, "value": v} for k, v in summary], ["what", "value"]),
        "<h2>Devices per stage over virtual time</h2>",
        "<p>A dip is a device that lost power and is rebooting; a dashed line is a halt.</p>",
        _stage_plot(result["timeline"], result.get("decisions") or []),
        "<h2>Error rate of each wave</h2>",
        "<p>What the wave's devices measured when the operator judged it, against the "
        "agents' rollback threshold.</p>",
        _bars("error rate of each wave", [(n, None if h["error_rate"] is None else
                                           100 * h["error_rate"]) for n, h in zip(names, health)],
              "%", None if err_limit is None else 100 * err_limit,
              "limit %.0f%%" % (100 * (err_limit or 0)), "#ff9800"),
        "<h2>p95 latency of each wave</h2>",
        "<p>Against %s.</p>" % ("%.3gx the fleet's p95 before the rollout" % ratio
                                if lat_limit else "no baseline"),
        _bars("p95 latency of each wave", [(n, h["latency_p95"]) for n, h in zip(names, health)],
              " ms", lat_limit, "limit %.3g ms" % (lat_limit or 0), "#2196f3"),
        "<h2>Automatic rollbacks by cohort</h2>",
        _bars("rollbacks by cohort", _count(result["rollbacks"], "cohort"), "", None, "",
              "#e91e63", "%.0f"),
        "<h2>Automatic rollbacks by reason</h2>",
        _bars("rollbacks by reason", _count(result["rollbacks"], "reason"), "", None, "",
              "#9c27b0", "%.0f"),
        "<h2>The operator's decisions</h2>",
        _decision_plot(result.get("decisions") or [], result["virtual_time_s"]),
        _table(result.get("decisions") or [], ["t_s", "kind", "text"]),
        "<h2>Waves</h2>",
        _table(result["waves"], ["stage", "wave", "label", "devices", "applied", "rejected",
                                 "rolled_back", "silent", "decision", "reason"]),
        "<h2>Telemetry events seen by the operator</h2>",
        _table([{"event": k, "count": v} for k, v in sorted(result["events"].items())],
               ["event", "count"]),
        "<h2>Incidents</h2>",
        _table(result["incidents"], ["t_ms", "event"]),
        _CHECK,
    ]
    return "\n".join(page)
