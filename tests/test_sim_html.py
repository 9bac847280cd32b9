"""The simulator's HTML report, loaded in a real headless Chromium (Debian's `chromium`,
installed by tools/bootstrap.sh): every plot must lay out and draw its marks."""
import re
import shutil
import subprocess

import pytest

from sim.faults import BadCohort, FaultProfile
from sim.fleet import SimSettings, run
from sim.report import write_html

PLOTS = 6  # devices per stage, wave error rate, wave p95, rollbacks by cohort / by reason,
#            the operator's decisions
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: run `sh tools/bootstrap.sh` as root "
                    "(apt-get install chromium)")
    return path


def _browse(tmp_path, name, *args):
    profile = tmp_path / ("profile-" + name)  # a fresh profile for every run
    cmd = [_chromium(), *FLAGS, "--user-data-dir=%s" % profile, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    prof = FaultProfile(name="t", cohorts=(BadCohort(fraction=0.25, from_stage=3,
                                                     error_rate=0.3),), power_cut_rate=0.02)
    result = run(SimSettings(devices=40, seed=5, profile=prof))
    assert result["outcome"] == "halted" and result["rollbacks"]
    path = tmp_path_factory.mktemp("html") / "report.html"
    write_html(result, str(path))
    return path, result


def test_every_plot_renders_in_headless_chromium(report_page, tmp_path):
    path, result = report_page
    done = _browse(tmp_path, "dom", "--virtual-time-budget=5000", "--dump-dom",
                   path.as_uri())
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    plots = re.findall(r'<svg class="plot"[^>]*>', dom)
    assert len(plots) == PLOTS, plots
    # the page's own check ran after layout: each plot's box has a size and holds its marks
    assert all('data-rendered="ok"' in p for p in plots), plots
    assert "%d/%d plots rendered" % (PLOTS, PLOTS) in dom
    # and what they show is the run's: bars for the judged waves, the bad cohort's rollbacks
    measured = [h for h in result["wave_health"] if h["error_rate"] is not None]
    assert len(measured) >= 4
    for h in measured:
        assert dom.count("<title>s%dw%d: " % (h["stage"], h["wave"])) == 2  # error, p95
    assert "<title>rev-b: %d</title>" % len(result["rollbacks"]) in dom


def test_screenshot_is_saved(report_page, tmp_path):
    path, _result = report_page
    shot = tmp_path / "report.png"
    done = _browse(tmp_path, "shot", "--window-size=1100,2600", "--screenshot=%s" % shot,
                   path.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
