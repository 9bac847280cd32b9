"""Operator profiles: the connection settings of a fleet, named, in one small file.

    fleetstage profile add plant1 --broker mqtts://broker.plant1:8884 --fleet plant1 \\
        --key ~/fleet.key --username operator --password-file ~/op.pw --ca ~/ca.crt
    fleetstage profile list | show [NAME] | use NAME
    fleetstage status                     (the default profile)
    fleetstage status --profile plant2    (or $FLEETSTAGE_PROFILE=plant2 fleetstage status)

The file ($FLEETSTAGE_PROFILES, default ~/.config/fleetstage/profiles.json,
mode 0600) is {"default": NAME, "profiles": {NAME: {broker, fleet, key,
username, password_file, ca, cert, client_key, plan, inventory, state_dir}}}.
Relative paths in it are relative to the file. An option given on the command
line beats the profile. It holds file NAMES, never a key or a password.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from firmware_shim.mqtt_paho import MqttConfigError, parse_broker_url
from tools.keygen import write_private_file

FIELDS = ("broker", "fleet", "key", "username", "password_file", "ca", "cert", "client_key",
          "plan", "inventory", "state_dir")
PATH_FIELDS = ("key", "password_file", "ca", "cert", "client_key", "plan", "inventory",
               "state_dir")


class ProfileError(Exception):
    pass


def profiles_path() -> str:
    return os.environ.get("FLEETSTAGE_PROFILES") or os.path.join(
        os.path.expanduser("~"), ".config", "fleetstage", "profiles.json")


def load_all(path: str | None = None) -> dict:
    path = path or profiles_path()
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {"default": None, "profiles": {}}
    except OSError as exc:
        raise ProfileError(f"cannot read the profile file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ProfileError(f"the profile file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("profiles", {}), dict):
        raise ProfileError(f"the profile file {path} is not a fleetstage profile file")
    data.setdefault("profiles", {})
    data.setdefault("default", None)
    return data


def save_all(data: dict, path: str | None = None) -> str:
    path = path or profiles_path()
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    write_private_file(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), 0o600)
    return path


def get(name: str | None, path: str | None = None) -> dict:
    """The named profile (None: $FLEETSTAGE_PROFILE, else the default), paths made absolute.
    {} when no name was asked for and there is no default."""
    path = path or profiles_path()
    data = load_all(path)
    asked = name or os.environ.get("FLEETSTAGE_PROFILE")
    chosen = asked or data.get("default")
    if not chosen:
        return {}
    prof = data["profiles"].get(chosen)
    if prof is None:
        known = ", ".join(sorted(data["profiles"])) or "none yet"
        raise ProfileError(f"no profile {chosen!r} in {path} (known: {known}); add one with "
                           "`fleetstage profile add NAME --broker ... --fleet ... --key ...`")
    base = os.path.dirname(os.path.abspath(path))
    out = {}
    for k in FIELDS:
        v = prof.get(k)
        if v is None:
            continue
        if k in PATH_FIELDS:
            v = os.path.join(base, os.path.expanduser(v))
        out[k] = v
    out["name"] = chosen
    return out


def apply(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every connection option left unset on the command line from the profile."""
    prof = get(getattr(args, "profile", None))
    for k in FIELDS:
        if getattr(args, k, None) is None and k in prof:
            setattr(args, k, prof[k])
    args.profile_name = prof.get("name")
    return args


def add_profile_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=argparse.SUPPRESS,
                   help="operator profile (default: $FLEETSTAGE_PROFILE or the default one)")


# ---------------------------------------------------------------- the CLI

def _run(args: argparse.Namespace) -> int:
    try:
        data = load_all()
        if args.action == "add":
            prof = {k: getattr(args, k) for k in FIELDS if getattr(args, k, None) is not None}
            for k in PATH_FIELDS:
                if k in prof:
                    prof[k] = os.path.abspath(os.path.expanduser(prof[k]))
            if "broker" not in prof or "fleet" not in prof or "key" not in prof:
                raise ProfileError("a profile needs --broker, --fleet and --key")
            try:
                parse_broker_url(prof["broker"])
            except MqttConfigError as exc:
                raise ProfileError(f"--broker: {exc}") from None
            if not os.path.isfile(prof["key"]):
                raise ProfileError(f"--key {prof['key']}: no such file (make one with "
                                   "`fleetstage keygen`, or give the fleet key's path)")
            data["profiles"][args.name] = prof
            if args.make_default or not data.get("default"):
                data["default"] = args.name
            print(f"profile {args.name} saved in {save_all(data)}"
                  + (" (default)" if data["default"] == args.name else ""))
        elif args.action == "use":
            if args.name not in data["profiles"]:
                raise ProfileError(f"no profile {args.name!r}")
            data["default"] = args.name
            save_all(data)
            print(f"default profile: {args.name}")
        elif args.action == "list":
            for name in sorted(data["profiles"]):
                mark = "*" if name == data.get("default") else " "
                p = data["profiles"][name]
                print(f"{mark} {name:<16} {p.get('fleet', '?'):<16} {p.get('broker', '?')}")
        else:
            print(json.dumps(get(args.name), indent=2, sort_keys=True))
    except ProfileError as exc:
        print(f"fleetstage profile: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fleetstage profile: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="named operator connection settings (broker, key, login)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = acts.add_parser("add", help="add or replace a profile")
    a.add_argument("name")
    for k in FIELDS:
        a.add_argument("--" + k.replace("_", "-"), dest=k)
    a.add_argument("--default", dest="make_default", action="store_true",
                   help="make it the default profile")
    u = acts.add_parser("use", help="make a profile the default")
    u.add_argument("name")
    acts.add_parser("list", help="list the profiles")
    s = acts.add_parser("show", help="print a profile (default: the default one)")
    s.add_argument("name", nargs="?")
    p.set_defaults(handler=_run)
