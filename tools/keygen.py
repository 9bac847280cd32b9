"""`fleetstage keygen`: the fleet key, and device keys derived from it.

    fleetstage keygen --out fleet.key                       a new 32-byte fleet key
    fleetstage keygen --device gw-17 --fleet-key fleet.key --out gw-17.key

Owns: writing key files (mode 0600, never over an existing file without
--force). The key format and the derivation are agent.protocol's. Must never
print a key.
"""
import os
import sys

from agent import protocol as P
from agent.agent_config import ConfigError, check_name


class KeygenError(Exception):
    pass


def write_private_file(path, data, mode=0o600, replace=True):
    """Write `path` atomically with `mode` from the first byte on.

    The bytes go to a fresh temp name made with O_CREAT|O_EXCL and `mode`, so
    no other user can open it even for a moment (the umask only narrows the
    mode, and fchmod sets it exactly), then it is renamed over `path`. With
    replace=False an existing `path` is never touched: os.link refuses it
    atomically. Raises FileExistsError in that case.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, ".{}.{}.{}.tmp".format(
        os.path.basename(path), os.getpid(), os.urandom(4).hex()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # FileExistsError when path exists: nothing replaced
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory):
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def write_key_file(path, data, force=False):
    """Create `path` with mode 0600; refuse to replace it unless force."""
    try:
        write_private_file(path, data, 0o600, replace=force)
    except FileExistsError:
        raise KeygenError(f"{path} exists; use --force to replace it") from None


def read_key_file(path):
    with open(path, "rb") as f:
        return P.parse_key_file(f.read())


def _run(args):
    try:
        if args.device:
            try:  # the id the agent's config and broker-setup accept, nothing else
                check_name("device_id", args.device)
            except ConfigError as exc:
                raise KeygenError(f"--device {args.device!r}: {exc.why} (use the device_id "
                                  "of the agent's config)") from None
            if not args.fleet_key:
                raise KeygenError("--device needs --fleet-key FILE")
            info = read_key_file(args.fleet_key)
            if info.kind == "device":
                raise KeygenError(f"{args.fleet_key} is a device key, not the fleet key")
            data = P.format_key_file(P.derive_device_key(info.key, args.device), "device",
                                     args.device)
        else:
            data = P.format_key_file(P.new_fleet_key(), "fleet")
        write_key_file(args.out, data, args.force)
    except (KeygenError, P.ProtocolError) as exc:
        print(f"fleetstage keygen: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the named file, not a temp file's name
        name = args.fleet_key if args.device and not os.path.exists(args.fleet_key) \
            else args.out
        print(f"fleetstage keygen: {name}: {exc.strerror} (check the path and that its "
              "folder exists)", file=sys.stderr)
        return 2
    what = f"device key for {args.device}" if args.device else "fleet key"
    print(f"wrote {what} to {args.out} (mode 0600)")
    return 0


def register(sub):
    p = sub.add_parser("keygen", help="write a fleet key, or derive a device key from it")
    p.add_argument("--out", required=True, help="file to write (mode 0600)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.add_argument("--device", help="derive the key of this device id")
    p.add_argument("--fleet-key", help="the fleet key file (with --device)")
    p.set_defaults(handler=_run)
