"""The operator's view of a rollout: the rich panel on a terminal, lines otherwise."""
import io
import os
import pty
import select
import subprocess

import pytest
from rich.console import Console

from tests.agentkit import REPO
from tests.orchkit import LabWorld, rollout_args
from tools.rollout_view import PlainView, RichView, health_line
from tools.waves import WaveResult

PROGRESS = {"stage": 3, "wave": 2, "waves": 3, "label": "50%", "phase": "soak", "devices": 40,
            "acked": 40, "soak_left_s": 90.0, "soak_s": 240.0, "samples": 4000,
            "error_rate": 0.125, "latency_p95": 42.0, "performance_impact": 0.31,
            "failing": {"gw-b1": "health:error_rate", "gw-b2": "silent"}}


def _rendered(view, thing):
    out = io.StringIO()
    Console(file=out, force_terminal=True, width=100, color_system=None).print(thing)
    return out.getvalue()


def test_the_panel_shows_the_soak_countdown_health_and_failing_devices():
    view = RichView()
    text = _rendered(view, view._render(PROGRESS))
    assert "stage 3 wave 2/3 (50%), 40 devices: soak" in text
    assert "soak: 90 s left of 240 s" in text
    assert "samples 4000  error rate 12.5%  p95 42 ms  latency +31% vs baseline" in text
    assert "gw-b1" in text and "health:error_rate" in text and "failing (2)" in text
    acks = _rendered(view, view._render(dict(PROGRESS, phase="acks", soak_left_s=None,
                                             acked=12, failing={})))
    assert "acks: 12 of 40" in acks and "failing" not in acks


def test_plain_view_prints_notices_progress_and_a_summary():
    out = io.StringIO()
    view = PlainView(out, every_s=0)
    view.say("stage 1 wave 1 (2%): 1 devices")
    view.update(PROGRESS)
    view.summary([WaveResult(stage=1, wave=1, label="2%", devices=1, applied=1),
                  WaveResult(stage=3, wave=2, label="50%", devices=40, applied=35,
                             rolled_back=5, decision="halt")])
    text = out.getvalue()
    assert "stage 1 wave 1 (2%)" in text and "soak 90 s left" in text
    assert health_line(PROGRESS) in text
    lines = text.splitlines()
    assert lines[-3].split() == ["stage", "wave", "devices", "applied", "rejected", "rolled",
                                 "back", "silent", "decision"]
    assert lines[-1].split() == ["3", "2", "50%", "40", "35", "0", "5", "0", "halt"]


@pytest.fixture
def world(field_lab):
    """The field lab: shipped broker config, ACL, passwords, TLS, agents with own logins."""
    return LabWorld(field_lab(devices=["gw1", "gw2"]))


def test_on_a_terminal_the_rollout_draws_the_live_panel_and_the_summary_table(world, tmp_path):
    for d in ("gw1", "gw2"):
        world.agent(d).start()
    world.observer.wait_for(lambda: len({r["device"] for r in world.observer.of("status")}) == 2)
    master, slave = pty.openpty()
    env = dict(world.env(), COLUMNS="120", LINES="40", TERM="xterm")
    proc = subprocess.Popen(rollout_args(world, str(tmp_path / "r.store"), "--expect", "2",
                                         "--soak", "1", "--waves", "50%,100%", "--to-stage", "1"),
                            cwd=REPO, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL,
                            env=env)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(30)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, text
    assert "fleetstage rollout" in text and ("soak:" in text or "acks:" in text), text
    assert "stage 1 wave 1 (50%)" in text and "rollout completed" in text
    assert "decision" in text and "advance" in text  # the summary table
