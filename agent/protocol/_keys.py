"""Keys: the fleet key, per-device keys derived from it, and key files.

Owns: key derivation (K_d = HMAC-SHA256(fleet_key, "fleetstage-device:" + id))
and the key-file format. Must never: read or write files (bytes in, bytes out).
Private: use agent.protocol.
"""
from agent.protocol._addressing import validate_id
from agent.protocol._wire import _HEX, KEY_BYTES, BadId, LocalProtocolError, _hexstr
from firmware_shim.crypto import hmac_sha256, random_bytes


class KeyFileError(LocalProtocolError):
    """A key or key file that is not one (here, not in _wire: only the start-up reads a
    key file, and a board frees this module once its agent runs)."""


# ------------------------------------------------------------------------ keys

def new_fleet_key():
    return random_bytes(KEY_BYTES)


def derive_device_key(fleet_key, device_id):
    _check_key(fleet_key, "fleet key")
    return hmac_sha256(bytes(fleet_key), b"fleetstage-device:" + validate_id(device_id).encode())


def _check_key(key, what):
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise KeyFileError(f"{what} must be {KEY_BYTES} bytes")


class KeyInfo:
    """A parsed key file. kind: "fleet", "device" (device_id set) or "raw" (bare bytes/hex)."""

    def __init__(self, kind, key, device_id=None):
        self.kind = kind
        self.key = key
        self.device_id = device_id

    def __repr__(self):  # never print the key itself
        return f"KeyInfo({self.kind}, {self.device_id})"


def format_key_file(key, kind="fleet", device_id=None):
    """Text the CLI writes (mode 0600): 'fleetstage-key v1 fleet HEX' or '... device ID HEX'."""
    _check_key(key, "key")
    if kind == "fleet":
        return (f"fleetstage-key v1 fleet {_hexstr(key)}\n").encode()
    if kind == "device":
        return (f"fleetstage-key v1 device {validate_id(device_id)} {_hexstr(key)}\n").encode()
    raise KeyFileError("key kind must be fleet or device")


def _parse_hex_key(text):
    text = text.lower()
    if len(text) != 2 * KEY_BYTES or any(c not in _HEX for c in text):
        raise KeyFileError(f"key must be {2 * KEY_BYTES} hex characters")
    return bytes.fromhex(text)


def parse_key_file(data):
    """Bytes of a key file -> KeyInfo. Accepts our format, 64 hex chars, or 32 raw bytes."""
    if not isinstance(data, (bytes, bytearray)):
        raise KeyFileError("key file content must be bytes")
    data = bytes(data)
    if len(data) == KEY_BYTES and not data.startswith(b"fleetstage-key"):
        try:
            return KeyInfo("raw", _parse_hex_key(data.decode()))
        except (KeyFileError, UnicodeError, ValueError):
            return KeyInfo("raw", data)
    try:
        text = data.decode().strip()
    except (UnicodeError, ValueError):
        raise KeyFileError(f"key file is neither text nor {KEY_BYTES} raw bytes") from None
    words = text.split()
    if len(words) == 1:
        return KeyInfo("raw", _parse_hex_key(words[0]))
    if len(words) < 4 or words[0] != "fleetstage-key" or words[1] != "v1":
        raise KeyFileError("key file does not start with 'fleetstage-key v1'")
    if words[2] == "fleet" and len(words) == 4:
        return KeyInfo("fleet", _parse_hex_key(words[3]))
    if words[2] == "device" and len(words) == 5:
        try:
            device_id = validate_id(words[3])
        except BadId as exc:
            raise KeyFileError(str(exc)) from None
        return KeyInfo("device", _parse_hex_key(words[4]), device_id)
    raise KeyFileError("key file kind must be 'fleet HEX' or 'device ID HEX'")


def agent_key(info, device_id):
    """The device key an agent verifies with, and a warning to log (or None)."""
    if info.kind == "device":
        if info.device_id != device_id:
            raise KeyFileError(f"key file is for device {info.device_id!r}, not {device_id!r}")
        return info.key, None
    if info.kind == "fleet":
        return derive_device_key(info.key, device_id), (
            "the key file holds the FLEET key: anyone who reads this device can forge "
            "commands for every device; give it a device key (keygen --device)")
    return info.key, None  # raw: taken to be this device's key
