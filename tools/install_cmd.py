"""`fleetstage install`: set a Raspberry Pi OS gateway up to run the agent under systemd.

It writes under --root (default /, so an image can be staged in a folder): the
agent's JSON config in /etc/fleetstage/agent.json, the device key beside it,
the broker password (from --password-file, never argv) in
/etc/fleetstage/broker.password, the broker's CA (from --ca) in
/etc/fleetstage/ca.crt (the unit hides /home and /tmp from the agent), all
mode 0600 and owned by the dedicated `fleetstage` system user (created on a
real install), the state dir /var/lib/fleetstage (0700, same owner), and the hardened unit
/etc/systemd/system/fleetstage-agent.service. The config and the key are
checked before anything is written: the fleet key or another device's key is
refused. With --enable (and root
/) it reloads systemd and starts the unit. The unit restarts the agent when
it exits, and the agent's own store counts those restarts, so a crash loop
rolls the device back by itself.
"""
from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys

from agent import protocol as P
from agent.agent_config import ConfigError, parse_config
from tools.keygen import write_private_file

UNIT = """[Unit]
Description=fleetstage agent (staged feature-flag migrations)
Wants=network-online.target
After=network-online.target

[Service]
# The agent says READY=1 once its store is open and pings the watchdog from its loop
# (tools/sd_notify.py): a loop that stops turning is restarted, and the agent's own
# store counts the restarts (a crash loop rolls the device back by itself).
Type=notify
NotifyAccess=main
WatchdogSec={watchdog_s}
ExecStart={exe} agent --config {config}
Restart=always
RestartSec=2
User={user}
Group={user}
StateDirectory=fleetstage
StateDirectoryMode=0700
ConfigurationDirectory=fleetstage
ConfigurationDirectoryMode=0700
UMask=0077
ReadWritePaths={state_dir}
# Hardening: `systemd-analyze security --offline=yes` scores this unit 1.2 (OK).
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
RuntimeDirectory=fleetstage
RuntimeDirectoryMode=0750
RuntimeDirectoryPreserve=yes
PrivateDevices=yes
PrivateUsers=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
DevicePolicy=closed
KeyringMode=private

[Install]
WantedBy=multi-user.target
"""
SERVICE_USER = "fleetstage"
CONF_REL = "/etc/fleetstage/agent.json"
KEY_REL = "/etc/fleetstage/device.key"
PASSWORD_REL = "/etc/fleetstage/broker.password"
CA_REL = "/etc/fleetstage/ca.crt"
STATE_REL = "/var/lib/fleetstage"
UNIT_REL = "/etc/systemd/system/fleetstage-agent.service"


class InstallError(Exception):
    pass


def render_unit(exe: str, config: str, state_dir: str, user: str, watchdog_s: int = 60) -> str:
    return UNIT.format(exe=exe, config=config, state_dir=state_dir, user=user,
                       watchdog_s=watchdog_s)


def check_device_key(data: bytes, device_id: str, path: str) -> None:
    """Only THIS device's key: never the fleet key (a fleet-wide forger on one gateway),
    never another device's."""
    try:
        info = P.parse_key_file(data)
    except P.ProtocolError as exc:
        raise InstallError(f"--key {path} is not a fleetstage key file: {exc}") from None
    if info.kind == "fleet":
        raise InstallError(f"--key {path} is the FLEET key: a gateway holds only its own "
                           f"device key (fleetstage keygen --device {device_id} --fleet-key "
                           f"FLEET.key --out {device_id}.key)")
    if info.kind != "device":
        raise InstallError(f"--key {path} is a bare key that names no device: give it this "
                           f"device's key file (fleetstage keygen --device {device_id} "
                           f"--fleet-key FLEET.key --out {device_id}.key)")
    if info.device_id != device_id:
        raise InstallError(f"--key {path} is the key of device {info.device_id!r}, not of "
                           f"{device_id!r}: give it {device_id}'s own key (fleetstage keygen "
                           f"--device {device_id} --fleet-key FLEET.key --out {device_id}.key)")


def service_user(name: str, create: bool) -> tuple[int, int] | None:
    """(uid, gid) of the service user; created as a system user when `create` (a real
    install as root). None when it does not exist and cannot be made (a staged --root)."""
    try:
        pw = pwd.getpwnam(name)
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        pass
    if not create:
        return None
    done = subprocess.run(["useradd", "--system", "--user-group", "--home-dir", STATE_REL,
                           "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                          capture_output=True, text=True)
    if done.returncode:
        raise InstallError(f"cannot create the user {name}: {done.stderr.strip()}")
    pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def _write(path: str, data: str | bytes, mode: int, owner: tuple[int, int] | None) -> None:
    """Atomic write with `mode` from creation on (the key is 0600, never briefly wider)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_private_file(path, data.encode() if isinstance(data, str) else data, mode)
    if owner is not None:
        os.chown(path, *owner)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InstallError(f"cannot read {what} {path}: {exc.strerror}") from None


def _install(args: argparse.Namespace) -> list[str]:
    if args.password is not None:
        raise InstallError("--password would show in `ps`: put the password in a file "
                           "(mode 0600) and pass --password-file FILE")
    root = os.path.abspath(args.root)
    config: dict = {
        "device_id": args.device_id, "fleet": args.fleet, "groups": args.group or [],
        "broker": args.broker, "key_file": KEY_REL, "state_dir": STATE_REL,
        "environment": args.environment,
    }
    password = None
    if args.password_file:
        password = _read(args.password_file, "--password-file").decode().strip()
        if not password:
            raise InstallError(f"--password-file {args.password_file} is empty")
    if args.username or password:
        config["credentials"] = {"username": args.username or args.device_id}
        if password:
            config["credentials"]["password_file"] = PASSWORD_REL
    ca = None
    if args.ca:
        # copied beside the key: the unit's ProtectHome and PrivateTmp hide /home and /tmp
        # from the agent, and a relative path would be resolved from the unit's cwd, /
        ca = _read(args.ca, "--ca")
        if b"-----BEGIN CERTIFICATE-----" not in ca:
            raise InstallError(f"--ca {args.ca} holds no PEM certificate (BEGIN CERTIFICATE)")
        config["tls"] = {"ca": CA_REL}
    try:
        parse_config(json.dumps(config))
    except ConfigError as exc:
        raise InstallError(str(exc)) from None
    key = _read(args.key, "--key")
    check_device_key(key, args.device_id, args.key)
    exe = args.exe or shutil.which("fleetstage") or os.path.join(
        os.path.dirname(sys.executable), "fleetstage")
    owner = service_user(args.user, create=(root == "/" and os.geteuid() == 0))
    if owner is None and os.geteuid() == 0 and root == "/":
        raise InstallError(f"the user {args.user} does not exist")
    written = []
    _write(root + CONF_REL, json.dumps(config, indent=2, sort_keys=True) + "\n", 0o600, owner)
    _write(root + KEY_REL, key, 0o600, owner)
    written += [CONF_REL, KEY_REL]
    if password:
        _write(root + PASSWORD_REL, password + "\n", 0o600, owner)
        written.append(PASSWORD_REL)
    if ca is not None:
        _write(root + CA_REL, ca, 0o600, owner)
        written.append(CA_REL)
    _write(root + UNIT_REL, render_unit(exe, CONF_REL, STATE_REL, args.user), 0o644, None)
    written.append(UNIT_REL)
    for d in (os.path.dirname(CONF_REL), STATE_REL):
        os.makedirs(root + d, mode=0o700, exist_ok=True)
        os.chmod(root + d, 0o700)
        if owner is not None:
            os.chown(root + d, *owner)
    return [root.rstrip("/") + rel for rel in written]


def _run(args: argparse.Namespace) -> int:
    if args.enable and os.path.abspath(args.root) != "/":
        print("fleetstage install: --enable needs --root / (drop --enable to write under "
              f"{args.root})", file=sys.stderr)
        return 2
    try:
        written = _install(args)
    except InstallError as exc:
        print("fleetstage install: %s" % exc, file=sys.stderr)
        return 2
    except OSError as exc:
        hint = "check the path" if os.geteuid() == 0 else "run it with sudo"
        print("fleetstage install: %s: %s (%s)" % (exc.filename, exc.strerror, hint),
              file=sys.stderr)
        return 2
    for path in written:
        print("wrote " + path)
    if service_user(args.user, create=False) is None:  # staged for an image: no such user here
        print("note: this machine has no user %s, so the files are owned by uid %d. On the "
              "image, create the system user (useradd --system --user-group %s) and run: "
              "chown -R %s:%s %s %s (the unit runs as %s and must read them)" % (
                  args.user, os.geteuid(), args.user, args.user, args.user,
                  os.path.dirname(CONF_REL), STATE_REL, args.user))
    if args.enable:
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
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device-id", required=True)
    p.add_argument("--fleet", required=True)
    p.add_argument("--broker", required=True, help="mqtt://host:1883 or mqtts://host:8883")
    p.add_argument("--key", required=True, help="this device's key file (fleetstage keygen "
                   "--device ID); the fleet key or another device's key is refused")
    p.add_argument("--group", action="append", help="a group this device belongs to (repeat)")
    p.add_argument("--environment", default="prod", help="prod, staging or dev (default prod)")
    p.add_argument("--username", help="broker user name (default: the device id, as the "
                   "broker-setup ACL expects)")
    p.add_argument("--password-file", help="file holding the broker password (copied to "
                   f"{PASSWORD_REL}, mode 0600)")
    p.add_argument("--password", help=argparse.SUPPRESS)  # refused: it would show in ps
    p.add_argument("--ca", help="CA file for mqtts:// (copied to %s)" % CA_REL)
    p.add_argument("--user", default=SERVICE_USER,
                   help="the service's own user (default fleetstage; created if missing)")
    p.add_argument("--exe", help="path of the fleetstage command (default: this one)")
    p.add_argument("--root", default="/", help="write under this folder instead of /")
    p.add_argument("--enable", action="store_true", help="systemctl enable --now the unit")
    p.set_defaults(handler=_run)
