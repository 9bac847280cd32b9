"""`fleetstage local ...`: the runbook's console path on the gateway itself, no broker.

    fleetstage local status --config PATH [--json]
    fleetstage local emergency-rollback --reason TEXT --config PATH [--json] [--timeout S]

Owns: the state-directory lock (fcntl.flock on <state_dir>/agent.lock), the
agent's local console (a unix socket <state_dir>/agent.sock speaking one JSON
line each way), and the fallback that opens the store directly when no agent
runs. Must never: touch the store while another process holds the lock. The
running agent holds it for its whole life, so "talk to the agent" and "act on
the store" can never happen at once.
"""
import argparse
import errno
import fcntl
import json
import os
import socket
import sys
from typing import Callable

from agent import protocol as P
from agent.control import STORE_FILE
from firmware_shim.unix_server import StreamServer

LOCK_FILE = "agent.lock"
SOCKET_FILE = "agent.sock"
MAX_REQUEST = 64 * 1024


class LocalError(Exception):
    """The console path could not do what was asked (exit code 1)."""


class StateDirLocked(LocalError):
    pass


class NoAgentState(LocalError):
    """The config's state_dir holds no store: a wrong config, refused (exit code 2)."""


class AgentUnresponsive(LocalError):
    """The agent holds the state directory but its console does not answer (hung)."""


STOP_HINT = "stop it (systemctl stop fleetstage-agent{kill}) and rerun: with no agent " \
            "running this command acts on the store directly"


def lock_holder_pid(state_dir, name=LOCK_FILE):
    """The PID the lock holder wrote into agent.lock, if it is a live process; else None."""
    try:
        with open(os.path.join(state_dir, name), "rb") as f:
            pid = int(f.read(32).split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:  # alive, owned by another user
        pass
    return pid


def stop_hint(state_dir):
    pid = lock_holder_pid(state_dir)
    held = f"the agent (PID {pid})" if pid else "the agent"
    return held, STOP_HINT.format(kill=f", or kill {pid}" if pid else "")


class StateDirLock:
    """An exclusive, non-blocking flock on <state_dir>/agent.lock (released on close/exit).

    `name`: another lock file in that folder (the run_dir's is run.lock)."""

    def __init__(self, state_dir, name=LOCK_FILE):
        os.makedirs(state_dir, exist_ok=True)
        self.path = os.path.join(state_dir, name)
        self._fd = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateDirLocked(
                    f"{self.path} is held by another process (is the agent running?)") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, b"%d\n" % os.getpid())
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


class _ConsoleLine:
    """One console connection: a JSON line in, a JSON line out, then close."""

    def __init__(self, handler: Callable[[dict], dict]) -> None:
        self.handler = handler
        self.buf = bytearray()
        self.out = bytearray()
        self.done = False
        self.busy = False

    def feed(self, data: bytes) -> None:
        self.buf += data
        if b"\n" in self.buf or len(self.buf) >= MAX_REQUEST:
            self._answer()

    def eof(self) -> None:
        if not self.done:
            self._answer()

    def tick(self, now: float) -> None:
        pass

    def _answer(self) -> None:
        line = bytes(self.buf).split(b"\n", 1)[0]
        try:
            request = json.loads(line.decode("utf-8"))
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
            reply = self.handler(request)
        except Exception as exc:
            reply = {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"}
        self.out += json.dumps(reply, sort_keys=True, default=str).encode() + b"\n"
        self.done = True


class ConsoleServer:
    """The agent's side of the local console: non-blocking, polled from the agent's loop.

    `handler(request_dict) -> reply_dict`. A bad request gets {"ok": false,
    "error": ...}; nothing a local client sends can stop the agent, and a
    client that trickles its request or never reads the answer cannot delay
    it (firmware_shim.unix_server never waits on a client).
    """

    def __init__(self, state_dir, handler, idle_timeout_s=10.0):
        self.path = os.path.join(state_dir, SOCKET_FILE)
        self.handler = handler
        self._server = StreamServer(self.path, lambda: _ConsoleLine(handler), mode=0o600,
                                    idle_timeout_s=idle_timeout_s)

    def fileno(self):
        return self._server.fileno()

    def poll(self):
        self._server.poll()

    def close(self):
        self._server.close()


def console_request(state_dir, request, timeout=10.0):
    """Send one request to a running agent; None when no agent listens.

    Raises AgentUnresponsive when the agent does not answer within `timeout`
    (the runbook's hung-agent case): it still holds the lock, so the store
    must not be touched; the message says which process to stop.
    """
    path = os.path.join(state_dir, SOCKET_FILE)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        return None
    except TimeoutError:
        s.close()
        raise _unresponsive(state_dir, path, timeout) from None
    try:
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise _unresponsive(state_dir, path, timeout) from None
    finally:
        s.close()
    if not data:
        raise LocalError("the agent closed the console without answering")
    return json.loads(data.decode("utf-8"))


def _unresponsive(state_dir, path, timeout):
    held, hint = stop_hint(state_dir)
    return AgentUnresponsive(f"{held} holds {os.path.join(state_dir, LOCK_FILE)} but did not "
                             f"answer on its console {path} within {timeout:g} s (hung?); {hint}")


def handle_local_request(control, request):
    """What the direct path does with a request, given an open MigrationControl."""
    from agent.boot import console_reply

    return console_reply(request, control)


def _store_log(msg):
    print(msg, file=sys.stderr)


def _direct(cfg, request):
    """No agent answers: take the lock and act on the store ourselves."""
    from agent import boot
    from firmware_shim.files import FileSystem
    from firmware_shim.machine import SystemClock

    if not cfg.state_partition and not os.path.exists(os.path.join(cfg.state_dir, STORE_FILE)):
        # an empty store made here would answer for a device whose agent keeps its
        # state elsewhere: a wrong state_dir must not look like a rollback that worked
        raise NoAgentState(f"no agent state in {cfg.state_dir} (no {STORE_FILE}): the agent "
                           "has never run with this config; check state_dir in --config. "
                           "Nothing changed")
    lock = StateDirLock(cfg.state_dir)
    try:
        lock.acquire()
    except StateDirLocked:
        sock = os.path.join(cfg.state_dir, SOCKET_FILE)
        held, hint = stop_hint(cfg.state_dir)
        raise AgentUnresponsive(f"{held} holds {lock.path} but its console {sock} does not "
                                f"answer; {hint}") from None
    try:
        control = boot.open_control(cfg, FileSystem(), SystemClock(), _store_log)
        try:
            return handle_local_request(control, request)
        finally:
            control.close()
    finally:
        lock.release()


def run_local(cfg, request, timeout=10.0):
    """Returns (reply, via) where via is "agent" or "store"."""
    reply = console_request(cfg.state_dir, request, timeout)
    if reply is not None:
        return reply, "agent"
    return _direct(cfg, request), "store"


def _print_status(status, via):
    print("device stage {}  state {}  (via {})".format(status.get("current_stage"),
                                                  status.get("state"), via))
    health = status.get("system_health") or {}
    if health.get("verdict"):
        line = "health {}".format(health["verdict"])
        if health.get("verdict_reason"):
            line += ": " + health["verdict_reason"]
        print(line)
    for v in health.get("violations") or ():
        print("  violation: " + v["message"])
    last = status.get("last_auto_rollback")
    if last:
        for v in last["violations"]:
            print("last automatic rollback {}->{}: {} {} {:.4g} > limit {:.4g}".format(
                last["from"], last["to"], v["source"], v["metric"], v["value"], v["limit"]))
    flags = status.get("flags") or {}
    for name in sorted(flags):
        print("  {:<32} {}".format(name, "on" if flags[name] else "off"))


# the stored reason is "local: " + this, and a reason goes out in the device's emergency
# event: it must fit the protocol's limit as the operator's does
REASON_MAX = P.MAX_REASON_LEN - len("local: ")


def _console_reason(text):
    if not 1 <= len(text) <= REASON_MAX:
        raise argparse.ArgumentTypeError("must be 1..%d characters, not %d"
                                         % (REASON_MAX, len(text)))
    return text


def _run(args):
    from agent.agent_config import ConfigError, load_config
    from firmware_shim.files import FileSystem

    try:
        cfg = load_config(args.config, FileSystem())
    except ConfigError as exc:
        print(f"fleetstage local: {exc}", file=sys.stderr)
        return 2
    if args.local_command == "status":
        request = {"op": "status"}
    else:
        request = {"op": "emergency_rollback", "reason": args.reason}
    try:
        reply, via = run_local(cfg, request, args.timeout)
    except NoAgentState as exc:
        print(f"fleetstage local: {exc}", file=sys.stderr)
        return 2
    except (LocalError, OSError, ValueError) as exc:
        print(f"fleetstage local: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the store or control refused: say what, do not trace
        print(f"fleetstage local: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        reply["via"] = via
        print(json.dumps(reply, indent=2, sort_keys=True, default=str))
    elif reply.get("ok"):
        if request["op"] == "emergency_rollback":
            print(f"emergency rollback applied (via {via})")
        _print_status(reply["status"], via)
        if reply["status"].get("console_hold"):
            print("console hold: on (retained desired states are ignored until the next "
                  "operator command, which the device obeys)")
    else:
        print("fleetstage local: {}".format(reply.get("error")), file=sys.stderr)
    return 0 if reply.get("ok") else 1


def register(sub):
    p = sub.add_parser("local", help="console path on the gateway: works with no broker")
    lsub = p.add_subparsers(dest="local_command", metavar="ACTION")
    lsub.required = True
    st = lsub.add_parser("status", help="stage, state and flags of this device")
    er = lsub.add_parser("emergency-rollback", help="go straight to stage 0 on this device")
    er.add_argument("--reason", required=True, type=_console_reason,
                    help="why (1..%d characters; stored as 'local: REASON')" % REASON_MAX)
    for q in (st, er):
        q.add_argument("--config", required=True, help="the agent's JSON config")
        q.add_argument("--json", action="store_true")
        q.add_argument("--timeout", type=float, default=10.0,
                       help="seconds to wait for a running agent's answer (default 10)")
        q.set_defaults(handler=_run)
