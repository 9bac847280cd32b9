"""`fleetstage status` and `fleetstage watch`: the fleet as its devices report it.

status: reads every device's retained status (each one checked against that
device's key, so a forged or stale-keyed report is counted, never shown as
truth), prints one line per device and a summary: devices per stage, offline,
quarantined, on another plan. Exit code 0 when every device is online, at one
stage and on the expected plan; 1 otherwise (so scripts can gate on it).
watch: the same, then follows statuses and telemetry events as they arrive.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from agent import protocol as P
from agent.plan import Plan
from firmware_shim.files import FileSystem
from firmware_shim.mqtt_paho import MqttConfig, MqttError, MqttLoop, PahoLink


class FleetView:
    """Verified reports of one fleet, kept by device."""

    def __init__(self, fleet: str, fleet_key: bytes) -> None:
        self.fleet = fleet
        self.fleet_key = fleet_key
        self.status: dict[str, dict] = {}
        self.events: list[tuple[str, str, dict]] = []
        self.bad_reports = 0
        self.changed = 0

    def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        try:
            _fleet, _channel, target, leaf = P.parse_topic(topic)
            device = P.parse_target(target)[1]
        except P.ProtocolError:
            self.bad_reports += 1
            return
        if not payload:
            return
        try:
            report = P.decode_report(payload, P.derive_device_key(self.fleet_key, device), leaf)
        except P.ProtocolError:
            self.bad_reports += 1
            return
        if report.get("device") != device:
            self.bad_reports += 1
            return
        self.changed += 1
        if leaf == "status":
            merged = dict(self.status.get(device, {}))
            merged.update(report)
            self.status[device] = merged
        elif leaf == "event":
            self.events.append((device, report.get("name", "?"), report.get("payload") or {}))

    def summary(self, plan_hash: str) -> dict:
        stages: dict[str, int] = {}
        offline, quarantined, other_plan = [], [], []
        for device, st in sorted(self.status.items()):
            key = str(st.get("stage"))
            stages[key] = stages.get(key, 0) + 1
            if st.get("online") is False:
                offline.append(device)
            if st.get("quarantined"):
                quarantined.append(device)
            if st.get("plan") not in (None, plan_hash):
                other_plan.append(device)
        return {"devices": len(self.status), "stages": stages, "offline": offline,
                "quarantined": quarantined, "other_plan": other_plan,
                "bad_reports": self.bad_reports}


def _line(device: str, st: dict) -> str:
    health = st.get("health") or {}
    err = health.get("error_rate")
    return "%-20s %-8s stage %-4s %-12s err %-7s %s%s" % (
        device, "online" if st.get("online", True) else "OFFLINE", st.get("stage", "?"),
        (st.get("extra") or {}).get("state", ""),
        "-" if err is None else "%.2f%%" % (100 * err),
        "QUARANTINED " if st.get("quarantined") else "",
        "v" + str(st.get("agent_version")) if st.get("agent_version") else "")


def _connect(args: argparse.Namespace, view: FleetView) -> tuple[MqttLoop, PahoLink]:
    password = None
    if args.password_file:
        with open(args.password_file) as f:
            password = f.read().strip()
    config = MqttConfig.from_url(args.broker, client_id="status-" + P.new_command_id(),
                                 username=args.username, password=password, ca=args.ca,
                                 backoff_min=0.2, backoff_max=2.0)
    loop = MqttLoop()
    link = PahoLink(config)
    link.set_callbacks(on_message=view.on_message)
    link.subscribe(P.device_wildcard(view.fleet, "status"))
    if args.command == "watch":
        link.subscribe(P.device_wildcard(view.fleet, "event"))
    loop.add(link)
    link.start()
    if not loop.run_until(lambda: link.connected, args.timeout):
        raise MqttError("cannot connect to %s: %s" % (args.broker, link.last_error))
    return loop, link


def _collect(loop: MqttLoop, view: FleetView, quiet_s: float, timeout: float) -> None:
    """Retained statuses arrive right after subscribing: wait until they stop coming."""
    deadline = time.monotonic() + timeout
    seen, last = -1, time.monotonic()
    while time.monotonic() < deadline:
        loop.run_once(0.05)
        if view.changed != seen:
            seen, last = view.changed, time.monotonic()
        elif time.monotonic() - last >= quiet_s:
            break


def _run(args: argparse.Namespace) -> int:
    fleet = args.fleet or os.environ.get("FLEETSTAGE_FLEET")
    if not fleet:
        print("fleetstage %s: --fleet is required (or FLEETSTAGE_FLEET)" % args.command,
              file=sys.stderr)
        return 2
    try:
        with open(args.key, "rb") as f:
            info = P.parse_key_file(f.read())
        if info.kind == "device":
            raise P.KeyFileError("%s is a device key; reports are checked with the fleet key"
                                 % args.key)
        plan = Plan.load(args.plan, FileSystem()) if args.plan else Plan.default()
        view = FleetView(fleet, info.key)
        loop, link = _connect(args, view)
    except (OSError, P.ProtocolError, MqttError, ValueError) as exc:
        print("fleetstage %s: %s" % (args.command, exc), file=sys.stderr)
        return 2
    try:
        _collect(loop, view, 0.5, args.timeout)
        summary = view.summary(plan.hash)
        if args.json:
            print(json.dumps({"summary": summary, "devices": view.status}, indent=2,
                             sort_keys=True, default=repr))
        else:
            for device, st in sorted(view.status.items()):
                print(_line(device, st))
            print("%d devices; per stage %s; offline %d; quarantined %d; other plan %d;"
                  " bad reports %d" % (summary["devices"], summary["stages"],
                                       len(summary["offline"]), len(summary["quarantined"]),
                                       len(summary["other_plan"]), summary["bad_reports"]))
        if args.command == "watch":
            _follow(loop, view, args.duration)
    finally:
        link.close()
        loop.close()
    uniform = len(summary["stages"]) <= 1
    healthy = not (summary["offline"] or summary["quarantined"] or summary["other_plan"])
    return 0 if (uniform and healthy and summary["devices"]) else 1


def _follow(loop: MqttLoop, view: FleetView, duration: float | None) -> None:
    shown_events = len(view.events)
    last = {d: dict(st) for d, st in view.status.items()}
    end = None if duration is None else time.monotonic() + duration
    try:
        while end is None or time.monotonic() < end:
            loop.run_once(0.1)
            for device, name, payload in view.events[shown_events:]:
                print("%s event %-28s %s" % (device, name, json.dumps(payload, default=repr,
                                                                     sort_keys=True)[:120]))
            shown_events = len(view.events)
            for device, st in view.status.items():
                before = last.get(device, {})
                if (before.get("stage"), before.get("online")) != (st.get("stage"),
                                                                   st.get("online")):
                    print(_line(device, st))
                    last[device] = dict(st)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


def register(sub: argparse._SubParsersAction) -> None:
    for name, text in (("status", "the fleet's stages, health and quarantines, as reported"),
                       ("watch", "status, then follow status changes and telemetry events")):
        p = sub.add_parser(name, help=text, description=__doc__)
        p.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
        p.add_argument("--key", required=True, help="the fleet key file (checks every report)")
        p.add_argument("--fleet", help="fleet name (default: $FLEETSTAGE_FLEET)")
        p.add_argument("--plan", help="plan file (default: the built-in runbook plan)")
        p.add_argument("--json", action="store_true")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds to connect/collect")
        p.add_argument("--username")
        p.add_argument("--password-file")
        p.add_argument("--ca")
        if name == "watch":
            p.add_argument("--for", dest="duration", type=float, default=None,
                           help="stop after this many seconds (default: until Ctrl-C)")
        p.set_defaults(handler=_run)
