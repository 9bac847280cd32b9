"""bench board's BOARD_MICROPYTHON: the run uses the micropython binary it names (a 32-bit
unix port built by tools/build_micropython32.sh, for instance) and reports that binary's
word size. Proved with the real pip unix port behind a wrapper that logs each call (CPython)."""
import os
import stat
import sys

from bench import bench_board

PIP_PORT = os.path.join(os.path.dirname(sys.executable), "micropython")


def test_board_micropython_names_the_binary_the_bench_runs(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    wrapper = tmp_path / "micropython-wrapped"
    wrapper.write_text('#!/bin/sh\necho run >> "%s"\nexec "%s" "$@"\n' % (calls, PIP_PORT))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("BOARD_MICROPYTHON", str(wrapper))
    assert bench_board.micropython_binary() == str(wrapper)
    assert bench_board.binary_word_bits() == 64  # the pip port is x86-64
    assert bench_board.bare_heap() > 0
    assert calls.read_text().split() == ["run", "run"]  # both through the named binary


def test_without_board_micropython_the_bench_runs_the_venvs_port(monkeypatch):
    monkeypatch.delenv("BOARD_MICROPYTHON", raising=False)
    assert bench_board.micropython_binary() == PIP_PORT
