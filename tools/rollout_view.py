"""What the operator sees while `fleetstage rollout` runs.

RichView (a terminal): a live panel redrawn a few times a second from
Orchestrator.progress(): the wave's progress bar (acks arriving, then the soak
counting down), its live health (samples, error rate, p95 latency, the worst
latency against its baseline), and the failing devices with their reasons; the
orchestrator's notices scroll above it; a summary table of every wave at the end.
PlainView (not a TTY, or --json on stdout): the notices as lines, a progress
line every 30 s, the same summary as text.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from tools.waves import WaveResult

SUMMARY_COLUMNS = ("stage", "wave", "devices", "applied", "rejected", "rolled back", "silent",
                   "decision")


def summary_rows(results: list[WaveResult]) -> list[list[str]]:
    return [[str(r.stage), "%d %s" % (r.wave, r.label), str(r.devices), str(r.applied),
             str(r.rejected), str(r.rolled_back), str(r.silent), r.decision] for r in results]


def _pct(x: float | None) -> str:
    return "-" if x is None else "%.1f%%" % (100 * x)


def _ms(x: float | None) -> str:
    return "-" if x is None else "%.0f ms" % x


def health_line(p: dict) -> str:
    impact = p.get("performance_impact")
    vs = "-" if impact is None else "%+.0f%% vs baseline" % (100 * impact)
    return "samples %d  error rate %s  p95 %s  latency %s" % (
        p.get("samples") or 0, _pct(p.get("error_rate")), _ms(p.get("latency_p95")), vs)


class PlainView:
    def __init__(self, out: TextIO = sys.stdout, every_s: float = 30.0) -> None:
        self.out = out
        self.every_s = every_s
        self._next = time.monotonic() + every_s

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def update(self, p: dict) -> None:
        if time.monotonic() < self._next or p.get("phase") in (None, "done"):
            return
        self._next = time.monotonic() + self.every_s
        left = p.get("soak_left_s")
        where = ("soak %.0f s left" % left) if left is not None else "%d/%d acked" % (
            p.get("acked", 0), p.get("devices", 0))
        self.say("  stage %s wave %s: %s; %s" % (p.get("stage"), p.get("wave"), where,
                                                 health_line(p)))

    def summary(self, results: list[WaveResult]) -> None:
        if not results:
            return
        rows = [list(SUMMARY_COLUMNS)] + summary_rows(results)
        widths = [max(len(r[i]) for r in rows) for i in range(len(SUMMARY_COLUMNS))]
        for row in rows:
            self.say("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)))


class RichView:
    """The live panel (rich). Use as a context manager around the run."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=4, transient=True)
        self._last: dict = {}

    def __enter__(self) -> RichView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def update(self, p: dict) -> None:
        if p.get("phase") in (None, "done"):
            return
        self._last = p
        self.live.update(self._render(p))

    def _render(self, p: dict):
        from rich.console import Group
        from rich.panel import Panel
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        devices = max(1, int(p.get("devices") or 0))
        if p.get("soak_left_s") is not None:
            total = max(1e-9, float(p.get("soak_s") or 0.0))
            done = total - float(p["soak_left_s"])
            label = "soak: %.0f s left of %.0f s" % (p["soak_left_s"], total)
            bar = ProgressBar(total=total, completed=max(0.0, done), width=40)
        else:
            label = "acks: %d of %d" % (p.get("acked", 0), p.get("devices", 0))
            bar = ProgressBar(total=devices, completed=int(p.get("acked") or 0), width=40)
        head = Text("stage %s wave %s/%s (%s), %s devices: %s" % (
            p.get("stage"), p.get("wave"), p.get("waves"), p.get("label"), p.get("devices"),
            p.get("phase")), style="bold")
        row = Table.grid()  # a bar ends no line of its own: give it a row
        row.add_row(bar)
        parts: list = [head, Text(label), row, Text(health_line(p))]
        failing = p.get("failing") or {}
        if failing:
            table = Table("device", "reason", title="failing (%d)" % len(failing),
                          title_justify="left")
            for device, reason in sorted(failing.items())[:10]:
                table.add_row(device, reason)
            parts.append(table)
        return Panel(Group(*parts), title="fleetstage rollout", width=min(
            self.console.width, 90))

    def summary(self, results: list[WaveResult]) -> None:
        from rich.table import Table

        if not results:
            return
        table = Table(*SUMMARY_COLUMNS, title="waves")
        for row in summary_rows(results):
            style = "red" if row[-1] != "advance" else None
            table.add_row(*row, style=style)
        self.console.print(table)


def make_view(json_mode: bool, out: TextIO = sys.stdout) -> PlainView | RichView:
    """RichView on a terminal; PlainView otherwise (or when stdout carries --json)."""
    if not json_mode and out.isatty():
        try:
            return RichView()
        except ImportError:  # rich is a dependency; a broken install still gets lines
            pass
    return PlainView(sys.stderr if json_mode else out)
