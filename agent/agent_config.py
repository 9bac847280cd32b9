"""The agent's JSON config: read, validated, and turned into one AgentConfig.

Owns: the list of keys, their defaults and the checks. The Pi (CPython) and a
MicroPython board read the SAME file through this module, so it uses only
`json` and plain Python. It must never open sockets or guess: a bad config
raises ConfigError naming the field and why, and the agent stops at start.

Required: device_id, fleet, broker (mqtt://host[:port] or mqtts://...),
key_file, state_dir, environment. Optional: groups (list), hw (the hardware
revision, a name shown in status and used by rollout cohorts), insecure (false),
tls {ca, cert, key, insecure_skip_hostname_check}, credentials {username,
password or password_file}, control (overrides for agent.config.Config: thresholds,
cooldown_ms, ...), run_dir (/run/fleetstage: flags.json, flags.flagd.json,
api.sock and metrics.sock for the gateway's applications), health {probes,
statsd} (agent.health_config), and tuning knobs (keepalive_s, backoff_min_s,
backoff_max_s, health_interval_ms, status_interval_ms, queue_limit, plan_file,
clean_session), state_partition (a board's raw flash partition for the state,
agent.flash_store; state_dir then holds nothing).
"""
import json

from agent.errors import ConfigError  # one class for every config (re-exported)

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
_MAX_NAME = 64

_TUNING = {
    # key: (default, low, high)
    "keepalive_s": (30, 1, 3600),
    "backoff_min_s": (0.5, 0.01, 60),
    "backoff_max_s": (30.0, 0.01, 3600),
    "health_interval_ms": (30000, 10, 86400000),
    "status_interval_ms": (60000, 10, 86400000),
    "monitor_interval_ms": (30000, 10, 86400000),
    "queue_limit": (256, 1, 100000),
}

_KNOWN = (
    "device_id", "fleet", "groups", "broker", "key_file", "state_dir", "environment",
    "insecure", "tls", "credentials", "plan_file", "clean_session", "control", "hw",
    "state_partition",
    "run_dir", "health",
)
DEFAULT_RUN_DIR = "/run/fleetstage"




def check_name(field, value):
    """A topic-safe name: 1..64 chars of [A-Za-z0-9_.-] (no '/', '+', '#')."""
    if not isinstance(value, str) or not value:
        raise ConfigError(field, "must be a non-empty string")
    if len(value) > _MAX_NAME:
        raise ConfigError(field, f"longer than {_MAX_NAME} characters")
    for ch in value:
        if ch not in _NAME_CHARS:
            raise ConfigError(field, f"character {ch!r} not allowed (A-Z a-z 0-9 _ . -)")
    return value


def parse_broker(field, url):
    """'mqtt://host:port' -> (host, port, tls) without urllib (MicroPython has none)."""
    if not isinstance(url, str):
        raise ConfigError(field, "must be a string like mqtt://host:1883")
    if url.startswith("mqtts://"):
        tls, rest, port = True, url[8:], 8883
    elif url.startswith("mqtt://"):
        tls, rest, port = False, url[7:], 1883
    else:
        raise ConfigError(field, f"must start with mqtt:// or mqtts:// (got {url!r})")
    if rest.endswith("/"):
        rest = rest[:-1]
    if "/" in rest or "?" in rest or "@" in rest:
        raise ConfigError(field, "only host[:port] may follow the scheme (credentials go in "
                                 "'credentials')")
    host = rest
    if rest.startswith("["):  # IPv6 literal: [::1]:1883
        end = rest.find("]")
        if end < 0:
            raise ConfigError(field, "unclosed '[' in IPv6 host")
        host, tail = rest[1:end], rest[end + 1:]
        if tail and not tail.startswith(":"):
            raise ConfigError(field, "junk after IPv6 host")
        rest = tail[1:] if tail else ""
        port_text = rest or None
    elif ":" in rest:
        host, port_text = rest.rsplit(":", 1)
    else:
        port_text = None
    if not host:
        raise ConfigError(field, "has no host")
    if port_text is not None:
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(field, f"port {port_text!r} is not a number") from None
        if not 0 < port < 65536:
            raise ConfigError(field, "port must be 1..65535")
    return host, port, tls


def _string(d, field, required=True):
    value = d.get(field)
    if value is None:
        if required:
            raise ConfigError(field, "is required")
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(field, "must be a non-empty string")
    return value


def _subdict(d, field, keys):
    value = d.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(field, "must be an object with keys " + ", ".join(keys))
    out = {}
    for k in value:
        if k not in keys:
            raise ConfigError(field + "." + str(k), "unknown key (expected one of "
                              + ", ".join(keys) + ")")
        if not isinstance(value[k], str) or not value[k]:
            raise ConfigError(field + "." + k, "must be a non-empty string")
        out[k] = value[k]
    return out


class AgentConfig:
    """The validated config. Attributes mirror the JSON keys (tuning keys included)."""

    def __init__(self, d):
        if not isinstance(d, dict):
            raise ConfigError("(top level)", "must be a JSON object")
        for k in d:
            if k not in _KNOWN and k not in _TUNING:
                raise ConfigError(str(k), "unknown key")
        self.device_id = check_name("device_id", d.get("device_id"))
        self.fleet = check_name("fleet", d.get("fleet"))
        groups = d.get("groups", [])
        if not isinstance(groups, list):
            raise ConfigError("groups", "must be a list of names")
        for i, g in enumerate(groups):
            check_name(f"groups[{i}]", g)
        self.groups = sorted(set(groups))
        self.hw = check_name("hw", d["hw"]) if d.get("hw") is not None else None
        self.broker = _string(d, "broker")
        self.host, self.port, self.tls = parse_broker("broker", self.broker)
        self.key_file = _string(d, "key_file")
        self.state_dir = _string(d, "state_dir")
        self.state_partition = _string(d, "state_partition", required=False)
        self.environment = check_name("environment", d.get("environment"))
        self.control = self._control_config(d)
        self.plan_file = _string(d, "plan_file", required=False)
        self.run_dir = _string(d, "run_dir", required=False) or DEFAULT_RUN_DIR
        self.health = self._health_config(d)
        self.insecure = self._bool(d, "insecure", False)
        self.clean_session = self._bool(d, "clean_session", False)
        tls = self._tls_block(d)
        if tls and not self.tls:
            raise ConfigError("tls", "given, but broker is mqtt:// (use mqtts://)")
        if ("cert" in tls) != ("key" in tls):
            raise ConfigError("tls", "a client certificate needs both 'cert' and 'key'")
        self.tls_ca, self.tls_cert, self.tls_key = tls.get("ca"), tls.get("cert"), tls.get("key")
        creds = _subdict(d, "credentials", ("username", "password", "password_file"))
        if creds and "username" not in creds:
            raise ConfigError("credentials.username", "is required when credentials are given")
        if "password" in creds and "password_file" in creds:
            raise ConfigError("credentials", "give 'password' or 'password_file', not both")
        self.username, self.password = creds.get("username"), creds.get("password")
        # Read by the Pi's agent at start (tools/agent_cmd.py), never by the core.
        self.password_file = creds.get("password_file")
        for name in _TUNING:
            self._number(d, name)
        if self.backoff_min_s > self.backoff_max_s:
            raise ConfigError("backoff_min_s", "must not exceed backoff_max_s")

    def _tls_block(self, d):
        """tls {ca, cert, key, insecure_skip_hostname_check}; the flag is taken out here.

        insecure_skip_hostname_check (default false) is the ONLY switch that
        weakens TLS: the certificate is still verified against the CA, but
        not matched to the broker's host name. It is separate from the
        top-level `insecure` (unsigned commands), so a development fleet
        that accepts unsigned commands still verifies its broker.
        """
        block = d.get("tls")
        flag = "insecure_skip_hostname_check"
        rest = block
        self.tls_skip_hostname_check = False
        if isinstance(block, dict) and flag in block:
            rest = dict(block)
            value = rest.pop(flag)
            if value is not True and value is not False:
                raise ConfigError("tls." + flag, "must be true or false")
            self.tls_skip_hostname_check = value
        tls = _subdict({"tls": rest}, "tls", ("ca", "cert", "key", flag))
        if self.tls_skip_hostname_check and not tls:
            tls = {flag: True}  # only for the mqtt:// check below
        return tls

    def _control_config(self, d):
        """agent.config.Config for MigrationControl: environment + optional "control" overrides."""
        from agent.config import Config

        extra = d.get("control", {})
        if not isinstance(extra, dict):
            raise ConfigError("control", "must be an object (thresholds, cooldown_ms, ...)")
        if "environment" in extra:
            raise ConfigError("control.environment", "set the top-level 'environment' instead")
        data = dict(extra)
        data["environment"] = self.environment
        try:
            return Config.from_dict(data)
        except ConfigError as exc:
            where = "environment" if exc.field == "environment" else "control." + str(exc.field)
            raise ConfigError(where, exc.why) from None

    def _health_config(self, d):
        section = d.get("health")
        if section is None:  # what parse_health(None) gives, without loading its module
            return {"probes": [], "statsd": None}  # (a board's config rarely has probes)
        from agent.health_config import HealthConfigError, parse_health

        try:
            return parse_health(section)
        except HealthConfigError as exc:
            raise ConfigError(exc.field, exc.why) from None

    def _bool(self, d, field, default):
        value = d.get(field, default)
        if value is not True and value is not False:
            raise ConfigError(field, "must be true or false")
        return value

    def _number(self, d, field):
        default, low, high = _TUNING[field]
        value = d.get(field, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(field, "must be a number")
        if not low <= value <= high:
            raise ConfigError(field, f"must be between {low} and {high}")
        setattr(self, field, value)


def parse_config(text):
    """JSON text (str or bytes) -> AgentConfig, or ConfigError."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeError:
            raise ConfigError("(file)", "is not UTF-8") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError("(file)", f"is not valid JSON: {exc}") from None
    return AgentConfig(data)


def load_config(path, fs):
    """Read and validate the config file through a firmware_shim FileSystem."""
    from firmware_shim.files import FileReadError, read_text

    try:
        return parse_config(read_text(fs, path))
    except FileReadError as exc:
        raise ConfigError("(file)", str(exc)) from None
