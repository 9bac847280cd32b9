"""`fleetstage broker-setup`: everything mosquitto needs for one fleet, in one command.

    sudo fleetstage broker-setup --fleet plant1 --devices devices.json \\
        --operator-password-file op.pw [--tls --hostname broker.plant1] \\
        [--out /etc/mosquitto/fleetstage] [--conf-dir /etc/mosquitto/conf.d]

devices.json: {"gw-0042": {"groups": ["line-a"], "password": "..."}, ...}; a
device without "password" gets a random one, written to
OUT/device-passwords/<id> (mode 0600, root) to copy onto that device. That file
stays the source of truth: a re-run (after adding a device) reads it back, so
only new devices get a new password and no device is locked out.

Writes into OUT: fleetstage.acl, devices.passwd (device logins only) and
operators.passwd (the operator login only), and with --tls ca.crt, ca.key
(root only, never readable by the broker), server.crt and server.key made
with openssl (EC P-256; the CA and the server certificate are kept when they
exist already, so re-running only refreshes the ACL and passwords). Into
CONF_DIR: fleetstage.conf (tools/mosquitto/mosquitto.conf with its paths
pointing at OUT) and, with --tls, fleetstage_tls.conf (tools/mosquitto/tls.conf; the
name sorts after fleetstage.conf, and mosquitto reads an include_dir in that order: the
TLS listeners need per_listener_settings from fleetstage.conf first).
Ownership: run as root, the files the broker reads belong to the `mosquitto`
user, mode 0600 (mosquitto 2 drops to that user before it reads them; 2.0.16+
warns about any other owner). Run as another user, everything is that user's.
Must never: print or log a password or a private key.
"""
from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

from agent.agent_config import ConfigError
from tools.fleet_inventory import SetupError, device_passwords, load_inventory
from tools.keygen import write_private_file
from tools.mosquitto_acl import OPERATOR, render_acl, render_passwords

HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED_CONF = os.path.join(HERE, "mosquitto", "mosquitto.conf")
SHIPPED_TLS_CONF = os.path.join(HERE, "mosquitto", "tls.conf")
SHIPPED_DIR = "/etc/mosquitto/fleetstage"
BROKER_USER = "mosquitto"
TLS_CONF_NAME = "fleetstage_tls.conf"


def _broker_owner(user: str) -> tuple[int, int] | None:
    """(uid, gid) the broker's files get: the broker's user when we are root, else None."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise SetupError(f"user {user!r} does not exist: install mosquitto first "
                         "(apt-get install mosquitto) or pass --broker-user") from None
    return pw.pw_uid, pw.pw_gid


def _write(path: str, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    write_private_file(path, data, mode)
    if owner is not None:
        os.chown(path, *owner)


def render_conf(template_path: str, out_dir: str) -> str:
    """A shipped config with its file paths pointing at out_dir (nothing else changes)."""
    with open(template_path) as f:
        return f.read().replace(SHIPPED_DIR, out_dir.rstrip("/"))


def _openssl(cwd: str, *args: str) -> None:
    if not shutil.which("openssl"):
        raise SetupError("openssl is needed for --tls (apt-get install openssl)")
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise SetupError(f"openssl {args[0]}: {last}")


def _san(hostnames: list[str]) -> str:
    parts = []
    for h in hostnames:
        is_ip = h.replace(".", "").isdigit() or ":" in h
        parts.append(("IP:" if is_ip else "DNS:") + h)
    return ",".join(parts)


def make_pki(out_dir: str, hostnames: list[str], owner: tuple[int, int] | None,
             days: int = 825) -> list[str]:
    """CA (kept if present) and a server certificate naming `hostnames` (kept if present)."""
    written = []
    ca_key, ca_crt = os.path.join(out_dir, "ca.key"), os.path.join(out_dir, "ca.crt")
    srv_key, srv_crt = os.path.join(out_dir, "server.key"), os.path.join(out_dir, "server.crt")
    with tempfile.TemporaryDirectory(prefix="fleetstage-pki-") as work:
        os.chmod(work, 0o700)
        if not (os.path.exists(ca_key) and os.path.exists(ca_crt)):
            _openssl(work, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                     "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out",
                     "ca.crt", "-days", str(days * 4), "-subj", "/CN=fleetstage broker CA")
            with open(os.path.join(work, "ca.key"), "rb") as f:
                _write(ca_key, f.read(), 0o600, None)  # root only: the broker never needs it
            with open(os.path.join(work, "ca.crt"), "rb") as f:
                _write(ca_crt, f.read(), 0o644, owner)
            written += [ca_key, ca_crt]
        if not (os.path.exists(srv_key) and os.path.exists(srv_crt)):
            ext = os.path.join(work, "ext.cnf")
            with open(ext, "w") as f:
                f.write(f"subjectAltName={_san(hostnames)}\nbasicConstraints=CA:FALSE\n"
                        "keyUsage=digitalSignature,keyEncipherment\n"
                        "extendedKeyUsage=serverAuth\n")
            _openssl(work, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                     "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
                     "/CN=" + hostnames[0])
            _openssl(work, "x509", "-req", "-in", "server.csr", "-CA", ca_crt, "-CAkey", ca_key,
                     "-CAserial", os.path.join(work, "ca.srl"), "-CAcreateserial",
                     "-out", "server.crt", "-days", str(days), "-extfile", ext)
            with open(os.path.join(work, "server.key"), "rb") as f:
                _write(srv_key, f.read(), 0o600, owner)
            with open(os.path.join(work, "server.crt"), "rb") as f:
                _write(srv_crt, f.read(), 0o644, owner)
            written += [srv_key, srv_crt]
    # Kept files get the ownership the broker needs too (they may come from elsewhere).
    for path, mode, who in ((ca_key, 0o600, None), (ca_crt, 0o644, owner),
                            (srv_key, 0o600, owner), (srv_crt, 0o644, owner)):
        os.chmod(path, mode)
        if who is not None:
            os.chown(path, *who)
    return written


def setup(fleet: str, devices: dict[str, dict], operator_password: str, out_dir: str,
          conf_dir: str | None, tls: bool = False, hostnames: list[str] | None = None,
          operator: str = OPERATOR, broker_user: str = BROKER_USER,
          iterations: int = 101) -> list[str]:
    """Write every file (see the module docstring); returns the paths written."""
    owner = _broker_owner(broker_user)
    os.makedirs(out_dir, mode=0o750, exist_ok=True)
    if owner is not None:
        os.chown(out_dir, 0, owner[1])
        os.chmod(out_dir, 0o750)
    if tls and not hostnames:
        raise SetupError("--tls needs --hostname (the name or address devices use)")
    groups = {d: spec.get("groups", []) for d, spec in devices.items()}
    if operator in devices:
        raise SetupError(f"a device may not be called {operator!r}")
    passwords, written = device_passwords(devices, out_dir)
    acl_path = os.path.join(out_dir, "fleetstage.acl")
    _write(acl_path, render_acl(fleet, groups, operator).encode(), 0o600, owner)
    dev_pw = os.path.join(out_dir, "devices.passwd")
    _write(dev_pw, render_passwords(passwords, iterations).encode(), 0o600, owner)
    op_pw = os.path.join(out_dir, "operators.passwd")
    _write(op_pw, render_passwords({operator: operator_password}, iterations).encode(), 0o600,
           owner)
    written += [acl_path, dev_pw, op_pw]
    if tls:
        written += make_pki(out_dir, list(hostnames or []), owner)
    if conf_dir:
        os.makedirs(conf_dir, exist_ok=True)
        conf = os.path.join(conf_dir, "fleetstage.conf")
        write_private_file(conf, render_conf(SHIPPED_CONF, out_dir).encode(), 0o644)
        written.append(conf)
        tls_conf = os.path.join(conf_dir, TLS_CONF_NAME)
        legacy = os.path.join(conf_dir, "fleetstage-tls.conf")  # read BEFORE fleetstage.conf
        if os.path.exists(legacy):
            os.unlink(legacy)
        if tls:
            write_private_file(tls_conf, render_conf(SHIPPED_TLS_CONF, out_dir).encode(), 0o644)
            written.append(tls_conf)
    return written


def _run(args: argparse.Namespace) -> int:
    try:
        devices = load_inventory(args.devices)
        try:
            with open(args.operator_password_file) as f:
                operator_password = f.read().strip()
        except OSError as exc:
            raise SetupError(f"cannot read --operator-password-file {args.operator_password_file}:"
                             f" {exc.strerror}") from None
        if not operator_password:
            raise SetupError(f"{args.operator_password_file} is empty")
        written = setup(args.fleet, devices, operator_password, args.out, args.conf_dir,
                        tls=args.tls, hostnames=args.hostname, operator=args.operator_user,
                        broker_user=args.broker_user)
    except (SetupError, ConfigError, ValueError) as exc:
        print(f"fleetstage broker-setup: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fleetstage broker-setup: {exc.filename or ''}: {exc.strerror} "
              "(run it with sudo to write under /etc)", file=sys.stderr)
        return 2
    for path in written:
        print("wrote " + path)
    print("restart the broker: systemctl restart mosquitto")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker-setup", help="password files, ACL, (TLS) CA and certificates and "
                       "the mosquitto config for a fleet", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fleet", required=True)
    p.add_argument("--devices", required=True,
                   help="fleet inventory JSON: {id: {groups: [...], password: ...}}")
    p.add_argument("--operator-password-file", required=True)
    p.add_argument("--out", default=SHIPPED_DIR, help=f"where the files go (default {SHIPPED_DIR})")
    p.add_argument("--conf-dir", default="/etc/mosquitto/conf.d",
                   help="where fleetstage.conf goes (default /etc/mosquitto/conf.d)")
    p.add_argument("--tls", action="store_true", help="also a CA, a server certificate and "
                   "the TLS listeners (8883 devices, 8884 operators)")
    p.add_argument("--hostname", action="append",
                   help="a name or address the broker's certificate names (repeat)")
    p.add_argument("--operator-user", default=OPERATOR)
    p.add_argument("--broker-user", default=BROKER_USER,
                   help="the user mosquitto runs as (default mosquitto)")
    p.set_defaults(handler=_run)
