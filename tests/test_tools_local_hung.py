"""The runbook's unresponsive-agent case on the console path.

A process holds the state-directory lock (as the agent does) but never
answers on its console: `fleetstage local emergency-rollback` must not touch
the store, must exit non-zero, and must say which PID to stop and how. Once
that process is gone, the same command acts on the store directly.
"""
import json
import subprocess
import sys
import textwrap

import pytest

from agent import protocol as P
from agent.agent_config import load_config
from firmware_shim.files import FileSystem
from tests.agentkit import REPO, AgentProcess
from tools.agent_cmd import open_control

HUNG = textwrap.dedent("""
    import fcntl, os, socket, sys, time
    state_dir, listen = sys.argv[1], sys.argv[2] == "listen"
    fd = os.open(os.path.join(state_dir, "agent.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\\n" % os.getpid())
    if listen:  # a console that accepts connections into its backlog and never answers
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(os.path.join(state_dir, "agent.sock"))
        s.listen(4)
    print("ready", flush=True)
    time.sleep(600)
""")


class _NoBroker:
    url = "mqtt://127.0.0.1:9"


@pytest.fixture
def gateway(tmp_path):
    agent = AgentProcess(str(tmp_path), _NoBroker(), "plant", P.new_fleet_key(), "gw1")
    cfg = load_config(agent.config_path, FileSystem())
    control = open_control(cfg)
    control.migrate_to_stage(1)
    control.close()
    return agent, cfg


def _stage(cfg):
    control = open_control(cfg)
    try:
        return control.stage
    finally:
        control.close()


def _hang(cfg, mode):
    proc = subprocess.Popen([sys.executable, "-c", HUNG, cfg.state_dir, mode],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _rollback(agent):
    return subprocess.run([sys.executable, "-m", "tools.cli", "local", "emergency-rollback",
                           "--reason", "agent hung", "--config", agent.config_path, "--json",
                           "--timeout", "0.5"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mode", ["listen", "no-socket"])
def test_hung_agent_names_its_pid_then_store_path_after_it_is_stopped(gateway, mode):
    agent, cfg = gateway
    hung = _hang(cfg, mode)
    try:
        r = _rollback(agent)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert f"PID {hung.pid}" in r.stderr and f"kill {hung.pid}" in r.stderr, r.stderr
        assert "systemctl stop fleetstage-agent" in r.stderr and "rerun" in r.stderr
        assert "Traceback" not in r.stderr
        assert hung.poll() is None  # nobody stopped it for us
    finally:
        hung.kill()
        hung.wait(10)
    assert _stage(cfg) == 1  # the store was not touched while the lock was held
    r = _rollback(agent)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["via"] == "store" and out["status"]["current_stage"] == 0
    assert _stage(cfg) == 0
