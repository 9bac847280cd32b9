"""`fleetstage install`: set a Raspberry Pi OS gateway up to run the agent under systemd.

It writes three things under --root (default /, so an image can be staged in
a folder): the agent's JSON config in /etc/fleetstage/agent.json, the device
key beside it (mode 0600), and /etc/systemd/system/fleetstage-agent.service.
The config is validated before anything is written. With --enable (and root
/) it reloads systemd and starts the unit. The unit restarts the agent when
it exits, and the agent's own store counts those restarts, so a crash loop
rolls the device back by itself.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

from agent.agent_config import ConfigError, parse_config
from tools.keygen import write_private_file

UNIT = """[Unit]
Description=fleetstage agent (staged feature-flag migrations)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart={exe} agent --config {config}
Restart=always
RestartSec=2
User={user}
StateDirectory=fleetstage
StateDirectoryMode=0700
ConfigurationDirectory=fleetstage
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths={state_dir}
RuntimeDirectory=fleetstage
RuntimeDirectoryMode=0750
RuntimeDirectoryPreserve=yes

[Install]
WantedBy=multi-user.target
"""


def render_unit(exe: str, config: str, state_dir: str, user: str) -> str:
    return UNIT.format(exe=exe, config=config, state_dir=state_dir, user=user)


def _write(path: str, data: str | bytes, mode: int) -> None:
    """Atomic write with `mode` from creation on (the key is 0600, never briefly wider)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_private_file(path, data.encode() if isinstance(data, str) else data, mode)


def _run(args: argparse.Namespace) -> int:
    root = os.path.abspath(args.root)
    conf_rel = "/etc/fleetstage/agent.json"
    key_rel = "/etc/fleetstage/device.key"
    state_rel = "/var/lib/fleetstage"
    config = {
        "device_id": args.device_id, "fleet": args.fleet, "groups": args.group or [],
        "broker": args.broker, "key_file": key_rel, "state_dir": state_rel,
        "environment": args.environment,
    }
    if args.username:
        config["credentials"] = {"username": args.username}
        if args.password:
            config["credentials"]["password"] = args.password
    if args.ca:
        config["tls"] = {"ca": args.ca}
    try:
        parse_config(json.dumps(config))
    except ConfigError as exc:
        print("fleetstage install: %s" % exc, file=sys.stderr)
        return 2
    try:
        with open(args.key, "rb") as f:
            key = f.read()
    except OSError as exc:
        print("fleetstage install: cannot read --key: %s" % exc, file=sys.stderr)
        return 2
    exe = args.exe or shutil.which("fleetstage") or os.path.join(
        os.path.dirname(sys.executable), "fleetstage")
    unit_rel = "/etc/systemd/system/fleetstage-agent.service"
    _write(root + conf_rel, json.dumps(config, indent=2, sort_keys=True) + "\n", 0o640)
    _write(root + key_rel, key, 0o600)
    _write(root + unit_rel, render_unit(exe, conf_rel, state_rel, args.user), 0o644)
    os.makedirs(root + state_rel, mode=0o700, exist_ok=True)
    for rel in (conf_rel, key_rel, unit_rel):
        print("wrote %s%s" % (root.rstrip("/"), rel))
    if args.enable:
        if root != "/":
            print("fleetstage install: --enable needs --root /", file=sys.stderr)
            return 2
        for cmd in (["systemctl", "daemon-reload"],
                    ["systemctl", "enable", "--now", "fleetstage-agent"]):
            if subprocess.run(cmd).returncode:
                print("fleetstage install: %s failed" % " ".join(cmd), file=sys.stderr)
                return 1
    else:
        print("start it with: systemctl daemon-reload && systemctl enable --now fleetstage-agent")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("install", help="install the agent as a systemd service (Raspberry Pi OS)",
                       description=__doc__)
    p.add_argument("--device-id", required=True)
    p.add_argument("--fleet", required=True)
    p.add_argument("--broker", required=True, help="mqtt://host:1883 or mqtts://host:8883")
    p.add_argument("--key", required=True, help="this device's key file (fleetstage keygen)")
    p.add_argument("--group", action="append", help="a group this device belongs to (repeat)")
    p.add_argument("--environment", default="prod", help="prod, staging or dev (default prod)")
    p.add_argument("--username", help="broker user name (the ACL expects the device id)")
    p.add_argument("--password", help="broker password")
    p.add_argument("--ca", help="CA file for mqtts://")
    p.add_argument("--user", default="root", help="the service's user (default root)")
    p.add_argument("--exe", help="path of the fleetstage command (default: this one)")
    p.add_argument("--root", default="/", help="write under this folder instead of /")
    p.add_argument("--enable", action="store_true", help="systemctl enable --now the unit")
    p.set_defaults(handler=_run)
