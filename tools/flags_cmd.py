"""`fleetstage flags list|set|clear` and `fleetstage clear-quarantine`: the runbook's
remaining operator commands.

    fleetstage flags list  --target T ...        each flag's value and source per device
    fleetstage flags set NAME true|false --target T ...   a signed set_flag (an override)
    fleetstage flags clear NAME --target T ...   a signed clear_flag (back to the stage's)
    fleetstage clear-quarantine --target T ...   a signed clear_quarantine

set, clear and clear-quarantine wait for the acks and print them as publish-stage
does, with its exit codes: 0 all applied, 1 a device rejected, 2 usage or
connection error, 3 a device stayed silent. list reads each device's verified
retained status (the source is what FeatureFlags.list_all() says: default,
config, stage or override); exit 0 when every targeted device reported, 3 when
some did not (they are listed), 2 on usage or connection errors.
"""
from __future__ import annotations

import argparse
import json
import sys

from agent import protocol as P
from agent.flags import FLAG_NAMES
from firmware_shim.mqtt_paho import MqttError
from tools.operator_cmd import (
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    OperatorClient,
    OperatorError,
    _common,
    client_from_args,
    report_outcome,
)
from tools.status_cmd import FleetView


def _devices_arg(args: argparse.Namespace) -> list[str] | None:
    if not args.devices:
        return None
    return [d.strip() for d in args.devices.split(",") if d.strip()]


def _connect(args: argparse.Namespace, view: FleetView | None = None) -> OperatorClient:
    client = client_from_args(args)
    if view is not None:
        chain = client._on_message

        def on_message(topic: str, payload: bytes, retain: bool) -> None:
            chain(topic, payload, retain)
            view.on_message(topic, payload, retain)

        client.link.set_callbacks(on_message=on_message)
    client.connect(min(args.timeout, 10.0))
    return client


def _fail(args: argparse.Namespace, exc: Exception) -> int:
    print(f"fleetstage {args.command}: {exc}", file=sys.stderr)
    return EXIT_USAGE


def _command(args: argparse.Namespace, op: str, op_args: dict) -> int:
    try:
        client = _connect(args)
    except (OperatorError, OSError, MqttError, P.ProtocolError, ValueError) as exc:
        return _fail(args, exc)
    try:
        devices = client.devices_for(args.target, _devices_arg(args), args.expect)
        outcome = client.wait(client.send(op, op_args, args.target, devices), args.timeout)
    except (OperatorError, MqttError, P.ProtocolError) as exc:
        return _fail(args, exc)
    finally:
        client.close()
    return report_outcome(args, outcome)


def _flag_name(name: str) -> str:
    if name not in FLAG_NAMES:
        raise OperatorError(f"unknown flag {name!r}; the plan's flags are: "
                            + ", ".join(FLAG_NAMES))
    return name


def _run_set(args: argparse.Namespace) -> int:
    value = {"true": True, "on": True, "false": False, "off": False}.get(args.value.lower())
    try:
        if value is None:
            raise OperatorError(f"flag value must be true or false, not {args.value!r}")
        name = _flag_name(args.name)
    except OperatorError as exc:
        return _fail(args, exc)
    return _command(args, P.OP_SET_FLAG, {"name": name, "value": value})


def _run_clear(args: argparse.Namespace) -> int:
    try:
        name = _flag_name(args.name)
    except OperatorError as exc:
        return _fail(args, exc)
    return _command(args, P.OP_CLEAR_FLAG, {"name": name})


def _run_clear_quarantine(args: argparse.Namespace) -> int:
    return _command(args, P.OP_CLEAR_QUARANTINE, {})


def flag_table(view: FleetView, devices: list[str]) -> dict:
    """device -> {flag: {"value", "source"}} from verified statuses (None: no status)."""
    out: dict = {}
    for d in devices:
        st = view.status.get(d) or {}
        flags = st.get("flags")
        if not isinstance(flags, dict):
            out[d] = None
            continue
        extra = st.get("extra")
        extra = extra if isinstance(extra, dict) else {}
        sources = extra.get("flag_sources")
        sources = sources if isinstance(sources, dict) else {}
        out[d] = {name: {"value": flags.get(name), "source": sources.get(name, "?")}
                  for name in sorted(flags)}
    return out


def _run_list(args: argparse.Namespace) -> int:
    try:
        client = _connect(args, view := FleetView("", b""))
        view.fleet, view.fleet_key = client.fleet, client.fleet_key
    except (OperatorError, OSError, MqttError, P.ProtocolError, ValueError) as exc:
        return _fail(args, exc)
    try:
        devices = client.devices_for(args.target, _devices_arg(args), args.expect)
        client.loop.run_until(lambda: all(
            isinstance(view.status.get(d, {}).get("flags"), dict) for d in devices),
            args.timeout)
    except (OperatorError, MqttError, P.ProtocolError) as exc:
        return _fail(args, exc)
    finally:
        client.close()
    table = flag_table(view, devices)
    missing = sorted(d for d, row in table.items() if row is None)
    if args.json:
        print(json.dumps({"devices": table, "missing": missing}, indent=2, sort_keys=True))
    else:
        print("  {:<28} {:<32} {:<6} {}".format("DEVICE", "FLAG", "VALUE", "SOURCE"))
        for d in devices:
            row = table[d]
            if row is None:
                print("  {:<28} {:<32} {:<6} {}".format(d, "-", "-", "no status"))
                continue
            for name, cell in row.items():
                print("  {:<28} {:<32} {:<6} {}".format(
                    d, name, "on" if cell["value"] else "off", cell["source"]))
        print(f"{len(devices) - len(missing)}/{len(devices)} devices reported"
              + (f"; no status from {', '.join(missing)}" if missing else ""))
    return EXIT_TIMEOUT if missing else EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    flags = sub.add_parser("flags", help="list, set or clear feature flags on devices",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    fsub = flags.add_subparsers(dest="flags_command", metavar="list|set|clear")
    p = fsub.add_parser("list", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        help="each flag's value and source on each device")
    _common(p)
    p.set_defaults(handler=_run_list, command="flags list")
    p = fsub.add_parser("set", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        help="override a flag on the targeted devices (signed)")
    p.add_argument("name")
    p.add_argument("value", help="true or false")
    _common(p, target_required=True)
    p.set_defaults(handler=_run_set, command="flags set")
    p = fsub.add_parser("clear", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        help="drop a flag's override: back to its stage's value")
    p.add_argument("name")
    _common(p, target_required=True)
    p.set_defaults(handler=_run_clear, command="flags clear")
    flags.set_defaults(handler=lambda a: (flags.print_help(), EXIT_USAGE)[1])
    p = sub.add_parser("clear-quarantine", help="let quarantined devices advance again (signed)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, target_required=True)
    p.set_defaults(handler=_run_clear_quarantine)
