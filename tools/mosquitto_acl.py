"""Generate mosquitto auth files for a fleet: the ACL and the password file.

Owns: the per-device ACL entries that a pattern cannot express (group topics)
and mosquitto's PBKDF2-SHA512 password hashes ($7$, what mosquitto_passwd
writes). Must never print or log a password.

    fleetstage mosquitto-acl --fleet F --devices devices.json --out DIR

devices.json: {"device-id": {"groups": ["g1"], "password": "..."}, ...} plus
an "operator" password given by --operator-password-file. Files are written
mode 0600.
"""
import base64
import hashlib
import json
import os
import sys

from agent.agent_config import ConfigError, check_name

HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED_ACL = os.path.join(HERE, "mosquitto", "acl")
OPERATOR = "operator"


def password_line(username, password, salt=None, iterations=101):
    """One password-file line, in mosquitto_passwd's $7$ (PBKDF2-HMAC-SHA512) format."""
    if ":" in username or not username:
        raise ValueError("username must be non-empty and contain no ':'")
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    salt_b64, digest_b64 = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"{username}:$7${iterations}${salt_b64}${digest_b64}"


def render_acl(fleet, devices):
    """The shipped ACL plus one `user` block per device for its group topics."""
    check_name("fleet", fleet)
    with open(SHIPPED_ACL) as f:
        out = [f.read().rstrip("\n"), "", f"# --- generated: group topics for fleet {fleet} ---"]
    for device_id in sorted(devices):
        check_name("device_id", device_id)
        groups = sorted(set(devices[device_id]))
        if not groups:
            continue
        out.append("user " + device_id)
        for g in groups:
            check_name("groups", g)
            out.append(f"topic read fleetstage/{fleet}/cmd/group/{g}")
            out.append(f"topic read fleetstage/{fleet}/desired/group/{g}")
    return "\n".join(out) + "\n"


def render_passwords(passwords, iterations=101):
    return "".join(password_line(u, passwords[u], iterations=iterations) + "\n"
                   for u in sorted(passwords))


def _write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def write_fleet_auth(out_dir, fleet, devices, operator_password, iterations=101):
    """devices: {id: {"groups": [...], "password": str}} -> (acl_path, passwd_path)."""
    os.makedirs(out_dir, exist_ok=True)
    groups = {d: spec.get("groups", []) for d, spec in devices.items()}
    passwords = {d: spec["password"] for d, spec in devices.items()}
    if OPERATOR in passwords:
        raise ValueError(f"a device may not be called {OPERATOR!r}")
    passwords[OPERATOR] = operator_password
    acl_path = os.path.join(out_dir, "fleetstage.acl")
    pw_path = os.path.join(out_dir, "fleetstage.passwd")
    _write_private(acl_path, render_acl(fleet, groups))
    _write_private(pw_path, render_passwords(passwords, iterations))
    return acl_path, pw_path


def _run(args):
    try:
        with open(args.devices) as f:
            devices = json.load(f)
        with open(args.operator_password_file) as f:
            operator_password = f.read().strip()
        acl, pw = write_fleet_auth(args.out, args.fleet, devices, operator_password)
    except (OSError, ValueError, KeyError, ConfigError) as exc:
        print(f"mosquitto-acl: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {acl} and {pw}")
    return 0


def register(sub):
    p = sub.add_parser("mosquitto-acl", help="generate a mosquitto ACL + password file for a fleet")
    p.add_argument("--fleet", required=True)
    p.add_argument("--devices", required=True, help="JSON: {id: {groups: [...], password: ...}}")
    p.add_argument("--operator-password-file", required=True)
    p.add_argument("--out", required=True, help="directory for fleetstage.acl/.passwd")
    p.set_defaults(handler=_run)
