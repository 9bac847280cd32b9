"""The simulator's report: JSON for machines, one HTML page with plots for people.

The HTML is self-contained (inline SVG, no scripts, no network), so it can be
attached to a change ticket or opened from a CI artifact.
"""
from __future__ import annotations

import html
import json

COLOURS = ["#9e9e9e", "#4caf50", "#2196f3", "#ff9800", "#e91e63", "#9c27b0", "#795548"]


def write_json(result: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
        f.write("\n")


def _stage_plot(timeline: list[dict], width: int = 760, height: int = 260) -> str:
    if not timeline:
        return "<p>no samples</p>"
    stages = len(timeline[0]["stages"])
    total = max(1, max(sum(t["stages"]) for t in timeline))
    t0, t1 = timeline[0]["t_ms"], max(timeline[-1]["t_ms"], timeline[0]["t_ms"] + 1)
    parts = ['<svg width="%d" height="%d" role="img" aria-label="devices per stage">' % (
        width + 100, height + 50)]
    # axes: devices up the left, virtual time along the bottom
    parts.append('<text x="%d" y="12" font-size="11">%d devices</text>' % (width + 4, total))
    parts.append('<text x="%d" y="%d" font-size="11">0</text>' % (width + 4, height))
    parts.append('<text x="0" y="%d" font-size="11">%d s</text>' % (height + 44, t0 // 1000))
    parts.append('<text x="%d" y="%d" font-size="11" text-anchor="end">%d s of virtual time'
                 '</text>' % (width, height + 44, t1 // 1000))
    parts.append('<line x1="0" y1="%d" x2="%d" y2="%d" stroke="#ccc"/>' % (height, width, height))
    parts.append('<line x1="%d" y1="0" x2="%d" y2="%d" stroke="#ccc"/>' % (width, width, height))
    for s in range(stages):
        pts = " ".join(
            "%.1f,%.1f" % ((t["t_ms"] - t0) / (t1 - t0) * width,
                           height - t["stages"][s] / total * height)
            for t in timeline)
        parts.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (
            COLOURS[s % len(COLOURS)], pts))
        parts.append('<text x="%d" y="%d" fill="%s" font-size="12">stage %d</text>' % (
            10 + 80 * s, height + 22, COLOURS[s % len(COLOURS)], s))
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join("<th>%s</th>" % html.escape(c) for c in columns)
    body = "".join(
        "<tr>%s</tr>" % "".join("<td>%s</td>" % html.escape(str(r.get(c, ""))) for c in columns)
        for r in rows)
    return "<table><tr>%s</tr>%s</table>" % (head, body)


def write_html(result: dict, path: str) -> None:
    s = result["settings"]
    summary = [
        ("outcome", result["outcome"]),
        ("devices", s["devices"]), ("fault profile", s["profile"]), ("seed", s["seed"]),
        ("consistent state on every device", result["consistent"]),
        ("final devices per stage", result["final_stages"]),
        ("automatic rollbacks on devices", result["auto_rollbacks"]),
        ("quarantined devices", result["quarantined"]),
        ("power cuts during writes", result["power_cuts"]),
        ("virtual time", "%.0f s" % result["virtual_time_s"]),
        ("wall time", "%.1f s" % result["wall_time_s"]),
    ]
    page = [
        "<!doctype html><meta charset=utf-8><title>fleetstage simulation</title>",
        "<style>body{font:14px sans-serif;margin:2em}td,th{border:1px solid #ccc;"
        "padding:3px 8px}table{border-collapse:collapse;margin:1em 0}</style>",
        "<h1>fleetstage simulation</h1>",
        _table([{"what": k, "value": v} for k, v in summary], ["what", "value"]),
        "<h2>Devices per stage over virtual time</h2>",
        "<p>A dip is a device that lost power and is rebooting.</p>",
        _stage_plot(result["timeline"]),
        "<h2>Waves</h2>",
        _table(result["waves"], ["stage", "wave", "devices", "applied", "rejected",
                                 "rolled_back", "unanswered", "halted", "why"]),
        "<h2>Telemetry events seen by the operator</h2>",
        _table([{"event": k, "count": v} for k, v in sorted(result["events"].items())],
               ["event", "count"]),
        "<h2>Incidents</h2>",
        _table(result["incidents"], ["t_ms", "event"]),
    ]
    with open(path, "w") as f:
        f.write("\n".join(page))
