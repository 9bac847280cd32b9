"""`fleetstage status` and `fleetstage watch`: the fleet as its devices report it.

status: reads every device's retained status (each one checked against that
device's key, so a forged or stale-keyed report is counted, never shown as
truth), prints one line per device and a summary: devices per stage, offline,
quarantined, on another plan, stale (an online status older than --stale-after:
a replayed old one, or a stuck device), guard ahead (see FleetView), groups that
differ from the inventory. Exit code 0 when every device is online, fresh, at
one stage and on the expected plan and every report could be read; 1 otherwise
(so scripts can gate on it); 2 for a usage or connection error.
watch: the same, then follows statuses and telemetry events as they arrive.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from agent import protocol as P
from agent.plan import Plan, PlanError
from firmware_shim import codec
from firmware_shim.files import FileSystem
from firmware_shim.mqtt_paho import (
    MQTT_5,
    NOT_AUTHORISED,
    MqttConfig,
    MqttConnectError,
    MqttError,
    MqttLoop,
    PahoLink,
)
from tools.operator_cmd import (
    OperatorError,
    add_connection_options,
    connect_failure,
    number_at_least,
    read_fleet_key,
    read_inventory,
    read_secret,
    resolve_args,
    seq_store,
)
from tools.operator_seq import SeqError

PLAUSIBLE_MS = 1_577_836_800_000  # 2020-01-01: a device clock below this was never set
STALE_AFTER_S = 180.0


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _desired_seq(payload: bytes) -> int | None:
    """The seq inside a retained desired state (unverified: compared, never obeyed)."""
    try:
        outer = codec.unpackb(payload)
        body = codec.unpackb(outer["body"]) if isinstance(outer, dict) else None
    except (codec.CodecError, KeyError, TypeError):
        return None
    return _int(body.get("seq")) if isinstance(body, dict) else None


class FleetView:
    """Verified reports of one fleet, kept by device.

    Every field of a report is used through _int/_num/str: a validly signed
    report with odd types (health: "boom") is shown as "?" and counted in
    odd_reports, never a crash. guard_ahead: devices whose reported guard is
    beyond what this operator would issue next (another operator's clock, or a
    device reporting a poisoned number): shown, never followed.
    """

    def __init__(self, fleet: str, fleet_key: bytes, our_last_seq: int = 0,
                 inventory: dict[str, list[str]] | None = None,
                 stale_after_s: float = STALE_AFTER_S) -> None:
        self.fleet = fleet
        self.fleet_key = fleet_key
        self.our_last_seq = our_last_seq
        self.inventory = inventory
        self.stale_after_s = stale_after_s
        self.status: dict[str, dict] = {}
        self.events: list[tuple[str, str, dict]] = []
        self.bad_reports = 0
        self.odd_reports: set[str] = set()
        self.changed = 0
        self.desired: dict[str, bytes] = {}  # retained desired states, by topic
        self.ledger: dict[str, dict] = {}  # what this operator retained (operator_seq)
        # re-reads this operator's last sequence number: while `watch` runs, this
        # operator's other commands (publish-stage beside it) move it on
        self.read_our_last_seq: Callable[[], int] | None = None

    def desired_replaced(self) -> list[str]:
        """Topics whose retained desired state is not the newest this operator retained
        there: someone replaced it (a captured older one, or cleared it)."""
        out = []
        for topic, ours in sorted(self.ledger.items()):
            payload = self.desired.get(topic)
            seq = None
            if payload:
                seq = _desired_seq(payload)
            if seq is None or seq < ours.get("seq", 0):
                out.append(topic)
        return out

    def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        try:
            _fleet, channel, target, leaf = P.parse_topic(topic)
            device = P.parse_target(target)[1]
        except P.ProtocolError:
            self.bad_reports += 1
            return
        if channel == P.KIND_DESIRED:
            if retain:
                self.desired[topic] = payload
            return
        if not payload:
            return
        if device is None or leaf is None:  # not a device's report topic
            self.bad_reports += 1
            return
        try:
            report = P.decode_report(payload, P.derive_device_key(self.fleet_key, device), leaf,
                                     fleet=self.fleet)
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
            if report.get("online") is False and "at" not in report:
                merged.pop("at", None)  # a will carries no time: the old one no longer holds
            self.status[device] = merged
        elif leaf == "event":
            payload_d = report.get("payload")
            self.events.append((device, str(report.get("name", "?")),
                                payload_d if isinstance(payload_d, dict) else {}))

    # -- reading one status, whatever its types --------------------------------
    def age_s(self, st: dict, now: float | None = None) -> float | None:
        at = _int(st.get("at"))
        if at is None or at < PLAUSIBLE_MS:
            return None
        return max(0.0, (now if now is not None else time.time()) - at / 1000.0)

    def stale(self, st: dict, now: float | None = None) -> bool:
        age = self.age_s(st, now)
        return st.get("online") is True and age is not None and age > self.stale_after_s

    def guard_of(self, st: dict) -> int | None:
        extra = st.get("extra")
        return _int(extra.get("guard_seq")) if isinstance(extra, dict) else None

    def ahead(self, st: dict, now: float | None = None) -> bool:
        guard = self.guard_of(st)
        if guard is not None and guard > self.our_last_seq and self.read_our_last_seq:
            try:
                self.our_last_seq = max(self.our_last_seq, self.read_our_last_seq())
            except (SeqError, OSError):
                pass  # judged against what was read before
        next_floor = max(self.our_last_seq, int((now if now is not None else time.time()) * 1000))
        return guard is not None and guard > next_floor

    def groups_mismatch(self, device: str, st: dict) -> bool:
        if self.inventory is None or device not in self.inventory:
            return False
        groups = st.get("groups")
        return isinstance(groups, list) and sorted(map(str, groups)) != self.inventory[device]

    def _check_types(self, device: str, st: dict) -> None:
        ok = (st.get("stage") is None or _int(st.get("stage")) is not None) and \
            isinstance(st.get("health", {}), dict) and isinstance(st.get("extra", {}), dict) \
            and isinstance(st.get("online", True), bool)
        if not ok:
            self.odd_reports.add(device)

    def summary(self, plan_hash: str, now: float | None = None) -> dict:
        stages: dict[str, int] = {}
        offline, quarantined, other_plan, stale, ahead, mismatch = [], [], [], [], [], []
        for device, st in sorted(self.status.items()):
            self._check_types(device, st)
            key = str(_int(st.get("stage")) if _int(st.get("stage")) is not None else "?")
            stages[key] = stages.get(key, 0) + 1
            if st.get("online") is not True:
                offline.append(device)
            if st.get("quarantined"):
                quarantined.append(device)
            if st.get("plan") not in (None, plan_hash):
                other_plan.append(device)
            if self.stale(st, now):
                stale.append(device)
            if self.ahead(st, now):
                ahead.append(device)
            if self.groups_mismatch(device, st):
                mismatch.append(device)
        missing = sorted(set(self.inventory or ()) - set(self.status))
        replaced = self.desired_replaced()
        return {"devices": len(self.status), "stages": stages, "offline": offline,
                "quarantined": quarantined, "other_plan": other_plan, "stale": stale,
                "guard_ahead": ahead, "groups_mismatch": mismatch, "never_seen": missing,
                "bad_reports": self.bad_reports, "odd_reports": sorted(self.odd_reports),
                "desired_replaced": replaced}

    def line(self, device: str, st: dict, now: float | None = None) -> str:
        health = st.get("health")
        err = _num(health.get("error_rate")) if isinstance(health, dict) else None
        extra_v = st.get("extra")
        extra: dict = extra_v if isinstance(extra_v, dict) else {}
        stage = _int(st.get("stage"))
        age = self.age_s(st, now)
        notes = []
        if st.get("quarantined"):
            notes.append("QUARANTINED")
        if self.stale(st, now):
            notes.append("STALE (status %ds old)" % (age or 0))
        if self.ahead(st, now):
            notes.append("GUARD AHEAD (seq %d > ours %d: not followed)"
                         % (self.guard_of(st) or 0, self.our_last_seq))
        if self.groups_mismatch(device, st):
            notes.append("GROUPS %s != inventory %s" % (st.get("groups"),
                                                        (self.inventory or {})[device]))
        if device in self.odd_reports:
            notes.append("ODD REPORT")
        if st.get("agent_version"):
            notes.append("v" + str(st.get("agent_version"))[:20])
        return "%-20s %-8s stage %-4s %-12s err %-7s age %-6s %s" % (
            device, "online" if st.get("online") is True else "OFFLINE",
            "?" if stage is None else stage, str(extra.get("state", ""))[:12],
            "-" if err is None else "%.2f%%" % (100 * err),
            "-" if age is None else "%ds" % age, " ".join(notes))


def _connect(args: argparse.Namespace, view: FleetView) -> tuple[MqttLoop, PahoLink]:
    config = MqttConfig.from_url(args.broker, client_id="status-" + P.new_command_id(),
                                 username=args.username, password=read_secret(args.password_file),
                                 ca=args.ca, cert=args.cert, key=args.client_key,
                                 insecure=args.tls_insecure, backoff_min=0.2, backoff_max=2.0,
                                 protocol=MQTT_5)
    loop = MqttLoop()
    link = PahoLink(config)
    link.set_callbacks(on_message=view.on_message)
    link.subscribe(P.device_wildcard(view.fleet, "status"))
    link.subscribe("%s/%s/desired/#" % (P.PREFIX, view.fleet))
    if args.command == "watch":
        link.subscribe(P.device_wildcard(view.fleet, "event"))
    loop.add(link)
    link.start()

    def refused() -> bool:
        err = link.last_error
        return isinstance(err, MqttConnectError) and err.refusal and err.rc in NOT_AUTHORISED

    loop.run_until(lambda: link.connected or refused(), args.timeout)
    if not link.connected:
        link.close()
        raise OperatorError(connect_failure(link))
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
    try:
        resolve_args(args)
        key = read_fleet_key(args.key)
        try:
            plan = Plan.load(args.plan, FileSystem()) if args.plan else Plan.default()
        except (OSError, ValueError, PlanError) as exc:
            raise OperatorError("cannot load the plan %s: %s" % (args.plan, exc)) from None
        try:
            our_last = seq_store(args).last()
        except SeqError as exc:
            raise OperatorError(str(exc)) from None
        view = FleetView(args.fleet, key, our_last, read_inventory(args.inventory),
                         args.stale_after)
        view.ledger = seq_store(args).ledger.records()
        view.read_our_last_seq = seq_store(args).last
        loop, link = _connect(args, view)
    except (OperatorError, MqttError) as exc:
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
                print(view.line(device, st))
            print("%d devices; per stage %s; offline %d; quarantined %d; other plan %d; stale %d;"
                  " guard ahead %d; bad reports %d" % (
                      summary["devices"], summary["stages"], len(summary["offline"]),
                      len(summary["quarantined"]), len(summary["other_plan"]),
                      len(summary["stale"]), len(summary["guard_ahead"]),
                      summary["bad_reports"]))
            if not summary["devices"]:
                print("no device of fleet %s has reported: check the fleet name (--fleet)"
                      % args.fleet)
            if summary["never_seen"]:
                print("never seen (in the inventory, no status yet): %s"
                      % ", ".join(summary["never_seen"]))
            for topic in summary["desired_replaced"]:
                print("REPLACED retained desired state on %s: not the one this operator "
                      "retained last (seq %d); %s" % (
                          topic, view.ledger[topic]["seq"],
                          "republished" if args.repair else "run `fleetstage status --repair`"))
            if summary["bad_reports"]:
                print("%d reports could not be verified (forged, garbled, or signed with "
                      "another key: check --key)" % summary["bad_reports"])
        if args.repair:
            _repair(loop, link, view, summary["desired_replaced"])
        sys.stdout.flush()
        if args.command == "watch":
            _follow(loop, view, args.duration)
            # the exit code says how the fleet ended; this operator's other commands
            # (publish-stage beside watch) have moved its ledger on meanwhile
            view.ledger = seq_store(args).ledger.records()
            summary = view.summary(plan.hash)
    finally:
        link.close()
        loop.close()
    uniform = len(summary["stages"]) <= 1
    healthy = not any(summary[k] for k in ("offline", "quarantined", "other_plan", "stale",
                                            "guard_ahead", "groups_mismatch", "never_seen",
                                            "odd_reports", "bad_reports", "desired_replaced"))
    return 0 if (uniform and healthy and summary["devices"]) else 1


def _repair(loop: MqttLoop, link: PahoLink, view: FleetView, topics: list[str]) -> None:
    """Publish this operator's own last desired state again on each replaced topic."""
    import base64
    mids = []
    for topic in topics:
        payload = base64.b64decode(view.ledger[topic]["payload"])
        mids.append(link.publish(topic, payload, qos=1, retain=True, track=True))
    loop.run_until(lambda: all(link.publish_results.get(m) is not None for m in mids), 10.0)


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
                    print(view.line(device, st))
                    last[device] = dict(st)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


def register(sub: argparse._SubParsersAction) -> None:
    for name, text in (("status", "the fleet's stages, health and quarantines, as reported"),
                       ("watch", "status, then follow status changes and telemetry events")):
        p = sub.add_parser(name, help=text, description=__doc__)
        add_connection_options(p)
        p.add_argument("--json", action="store_true")
        p.add_argument("--timeout", type=number_at_least(0, float, " seconds", strict=True),
                       default=10.0, help="seconds to connect/collect")
        p.add_argument("--repair", action="store_true",
                       help="republish this operator's own last desired state where a "
                            "retained one was replaced")
        p.add_argument("--stale-after", type=number_at_least(0, float, " seconds", strict=True),
                       default=STALE_AFTER_S,
                       help="an online status older than this many seconds is STALE "
                            "(default 180: three of the agent's default status intervals)")
        if name == "watch":
            p.add_argument("--for", dest="duration",
                           type=number_at_least(0, float, " seconds", strict=True), default=None,
                           help="stop after this many seconds (default: until Ctrl-C)")
        p.set_defaults(handler=_run)
