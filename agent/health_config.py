"""The agent config's "health" section: the probes the agent runs and the statsd names.

Owns: validating the section into plain dicts (the Pi side runs them:
firmware_shim.probes and firmware_shim.app_metrics). Plain Python and json
only, so a board reads the same file. A mistake raises ValueError with the
field's path, e.g. "health.probes[1].url: must start with http://".

    "health": {
      "probes": [
        {"type": "http", "name": "gw-http", "interval_s": 5, "timeout_s": 2,
         "initial_delay_s": 10, "url": "http://127.0.0.1:8080/healthz"},
        {"type": "exec", "name": "check", "command": ["/usr/local/bin/check"]},
        {"type": "systemd", "name": "unit", "unit": "gateway-app.service"},
        {"type": "prometheus", "name": "prom", "url": "http://127.0.0.1:9100/metrics",
         "requests": "http_requests_total", "errors": "http_requests_total{code=\"500\"}",
         "latency": "http_request_duration_seconds"}
      ],
      "statsd": {"listen": "127.0.0.1:8125", "requests": "gw.requests",
                 "errors": "gw.errors", "latency": "gw.latency"}
    }
"""
from firmware_shim.selector import parse_selector as _parse_selector

PROBE_TYPES = {
    # type: (required fields, optional fields)
    "http": (("url",), ()),
    "exec": (("command",), ()),
    "systemd": (("unit",), ()),
    "prometheus": (("url", "requests", "errors"), ("latency",)),
}
COMMON = {
    # field: (default, minimum)
    "interval_s": (10, 0.05),
    "timeout_s": (2, 0.01),
    "initial_delay_s": (0, 0),
}
STATSD_FIELDS = ("listen", "requests", "errors", "latency")
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_PROBES = 3  # + statsd + the apps' pushes: agent.health.MAX_SOURCES (5)
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-"


class HealthConfigError(ValueError):
    def __init__(self, field, why):
        super().__init__(field + ": " + why)
        self.field = field
        self.why = why


def _text(where, value):
    if not isinstance(value, str) or not value:
        raise HealthConfigError(where, "must be a non-empty string")
    return value


def _number(where, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HealthConfigError(where, "must be a number (seconds)")
    if value < minimum:
        raise HealthConfigError(where, "must be >= {}".format(minimum))
    return value


def _name(where, value):
    _text(where, value)
    if len(value) > 48:
        raise HealthConfigError(where, "longer than 48 characters")
    for ch in value:
        if ch not in _NAME_CHARS:
            raise HealthConfigError(where, "character {!r} not allowed (A-Z a-z 0-9 _ . : -)"
                                    .format(ch))
    return value


def _url(where, value):
    _text(where, value)
    if not value.startswith("http://"):
        raise HealthConfigError(where, "must start with http:// (got {!r})".format(value))
    return value


def parse_selector(where, text):
    """A prometheus selector, 'name' or 'name{label="v",other="w"}' -> (name, labels)."""
    try:
        return _parse_selector(_text(where, text))
    except ValueError as exc:
        raise HealthConfigError(where, str(exc)) from None


def _probe(where, item):
    if not isinstance(item, dict):
        raise HealthConfigError(where, "must be an object with type, name, ...")
    kind = item.get("type")
    if kind not in PROBE_TYPES:
        raise HealthConfigError(where + ".type", "must be one of " + ", ".join(
            sorted(PROBE_TYPES)) + " (got {!r})".format(kind))
    required, optional = PROBE_TYPES[kind]
    known = ("type", "name") + tuple(COMMON) + required + optional
    for key in item:
        if key not in known:
            raise HealthConfigError(where + "." + str(key), "unknown field for a {} probe "
                                    "(known: {})".format(kind, ", ".join(known)))
    out = {"type": kind, "name": _name(where + ".name", item.get("name"))}
    for key in COMMON:
        default, minimum = COMMON[key]
        out[key] = _number(where + "." + key, item.get(key, default), minimum)
    for key in required:
        if key not in item:
            raise HealthConfigError(where + "." + key, "is required for a {} probe".format(kind))
    for key in required + optional:
        if key not in item:
            out[key] = None
            continue
        value = item[key]
        if key == "url":
            out[key] = _url(where + ".url", value)
        elif key == "command":
            if not isinstance(value, list) or not value:
                raise HealthConfigError(where + ".command", "must be a non-empty list of strings")
            for i, arg in enumerate(value):
                _text("{}.command[{}]".format(where, i), arg)
            out[key] = list(value)
        elif kind == "prometheus":
            parse_selector(where + "." + key, value)  # a bad one fails at start, not per scrape
            out[key] = value
        else:
            out[key] = _text(where + "." + key, value)
    return out


def parse_listen(where, value):
    """'127.0.0.1:8125' -> (host, port); loopback only (a statsd port is not signed)."""
    _text(where, value)
    if ":" not in value:
        raise HealthConfigError(where, "must be host:port, e.g. 127.0.0.1:8125")
    host, port_text = value.rsplit(":", 1)
    if host not in LOOPBACK:
        raise HealthConfigError(where, "must be a loopback address (127.0.0.1, ::1 or "
                                "localhost): outcomes are not signed")
    try:
        port = int(port_text)
    except ValueError:
        raise HealthConfigError(where, "port {!r} is not a number".format(port_text)) from None
    if not 0 < port < 65536:
        raise HealthConfigError(where, "port must be 1..65535")
    return host.strip("[]"), port


def parse_health(section):
    """The "health" section (or None) -> {"probes": [...], "statsd": {...} or None}."""
    if section is None:
        return {"probes": [], "statsd": None}
    if not isinstance(section, dict):
        raise HealthConfigError("health", "must be an object with probes and/or statsd")
    for key in section:
        if key not in ("probes", "statsd"):
            raise HealthConfigError("health." + str(key), "unknown field (known: probes, statsd)")
    probes = section.get("probes", [])
    if not isinstance(probes, list):
        raise HealthConfigError("health.probes", "must be a list of probes")
    if len(probes) > MAX_PROBES:
        raise HealthConfigError("health.probes", "at most {} probes".format(MAX_PROBES))
    out = []
    names = {}
    for i, item in enumerate(probes):
        probe = _probe("health.probes[{}]".format(i), item)
        if probe["name"] in names:
            raise HealthConfigError("health.probes[{}].name".format(i),
                                    "{!r} is already probes[{}]".format(probe["name"],
                                                                        names[probe["name"]]))
        names[probe["name"]] = i
        out.append(probe)
    statsd = section.get("statsd")
    parsed = None
    if statsd is not None:
        if not isinstance(statsd, dict):
            raise HealthConfigError("health.statsd", "must be an object with " +
                                    ", ".join(STATSD_FIELDS))
        for key in statsd:
            if key not in STATSD_FIELDS:
                raise HealthConfigError("health.statsd." + str(key), "unknown field (known: " +
                                        ", ".join(STATSD_FIELDS) + ")")
        parsed = {"listen": None, "requests": None, "errors": None, "latency": None}
        if "listen" in statsd:
            parsed["listen"] = parse_listen("health.statsd.listen", statsd["listen"])
        for key in ("requests", "errors", "latency"):
            if key in statsd:
                parsed[key] = _text("health.statsd." + key, statsd[key])
        if parsed["requests"] is None and parsed["latency"] is None:
            raise HealthConfigError("health.statsd", "needs 'requests' or 'latency' (the "
                                    "metric names that count calls)")
    return {"probes": out, "statsd": parsed}
