"""The fleet inventory (devices.json) and the device passwords kept next to the broker's
files, read the same way by `fleetstage broker-setup` and `fleetstage mosquitto-acl`.

Owns: validating devices.json ({"gw-0042": {"groups": ["line-a"], "password": "..."}}:
an object of objects, ids the agent's config accepts) and OUT/device-passwords/<id>, the
source of truth for a password broker-setup generated: a re-run reads it back, so only
a new device gets a new one. Must never print or log a password.
"""
from __future__ import annotations

import json
import os
import secrets

from agent.agent_config import ConfigError, check_name
from tools.keygen import write_private_file


class SetupError(Exception):
    """A setup mistake of the user's: one line saying what to do."""


def load_inventory(path: str) -> dict[str, dict]:
    """devices.json -> {id: {"groups": [...], "password": str or None}}; SetupError if bad."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise SetupError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise SetupError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise SetupError(f"{path}: expected {{\"device-id\": {{\"groups\": [...]}}, ...}}")
    for device, spec in data.items():
        try:
            check_name("device id", device)
        except ConfigError as exc:
            raise SetupError(f"{path}: device id {device!r}: {exc.why}") from None
        if not isinstance(spec, dict):
            raise SetupError(f"{path}: entry {device!r} must be an object")
        groups = spec.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise SetupError(f"{path}: {device}.groups must be a list of names")
        pw = spec.get("password")
        if pw is not None and (not isinstance(pw, str) or not pw):
            raise SetupError(f"{path}: {device}.password must be a non-empty string")
    return data


PASSWORDS_DIR = "device-passwords"


def device_passwords(devices: dict[str, dict], out_dir: str) -> tuple[dict[str, str], list[str]]:
    """Each device's broker password and the password files written.

    devices.json's "password" when given; else OUT/device-passwords/<id> from an earlier
    run (read back: a re-run must not lock out a device that has its password already);
    else a new random one, written there (mode 0600, never over an existing file)."""
    pw_dir = os.path.join(out_dir, PASSWORDS_DIR)
    passwords, written = {}, []
    for d, spec in devices.items():
        if spec.get("password"):
            passwords[d] = spec["password"]
            continue
        path = os.path.join(pw_dir, d)
        try:
            with open(path) as f:
                kept = f.read().strip()
        except FileNotFoundError:
            kept = None
        except OSError as exc:
            raise SetupError(f"cannot read {path}: {exc.strerror}") from None
        if kept == "":
            raise SetupError(f"{path} is empty: delete it to give {d} a new password")
        if kept is not None:
            passwords[d] = kept
            continue
        passwords[d] = secrets.token_urlsafe(18)
        os.makedirs(pw_dir, mode=0o700, exist_ok=True)
        write_private_file(path, (passwords[d] + "\n").encode(), 0o600, replace=False)
        written.append(path)
    return passwords, written
