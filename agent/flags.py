"""Feature flags: the catalogue, the layers that set them, and the hot-path read.

Owns: the catalogue of known flags (name, default, description) and the
effective value of each flag, computed from four layers in order of strength:
operator override > stage > environment config > catalogue default.
Must never: touch the store or the clock. MigrationControl decides the layers,
commits them, and then hands them here; this module only computes and reads.

`enabled(name)` is called by apps all the time, so the effective values are
precomputed into one plain dict whenever a layer changes, and a read is a
single dict lookup. An unknown name at read time is not an error (an app built
for a newer plan must not crash an older agent): it reads as False and is
counted. An unknown name at set time is an operator mistake: UnknownFlag.
"""
from agent.errors import AgentError

# The runbook's seven flags, in plan order. Defaults are config/config.exs: all off.
CATALOGUE = {
    "use_ets_agent_registry": (
        False, "Stage 1: the agent registry is a supervised service, not hidden global state."),
    "enable_migration_monitoring": (
        False, "Stage 1: health monitoring and migration telemetry are on."),
    "use_logger_error_context": (
        False, "Stage 2: error context travels in log-record metadata, not a global."),
    "use_genserver_telemetry": (
        False, "Stage 3: telemetry goes through a supervised service."),
    "use_genserver_span_management": (
        False, "Stage 3: spans are kept by the span manager service."),
    "use_ets_sampled_events": (
        False, "Stage 3: sampled events are deduplicated by a shared table."),
    "enforce_no_process_dict": (
        False, "Stage 4: any use of a legacy global-state path is a recorded violation."),
}

FLAG_NAMES = (
    "use_ets_agent_registry",
    "enable_migration_monitoring",
    "use_logger_error_context",
    "use_genserver_telemetry",
    "use_genserver_span_management",
    "use_ets_sampled_events",
    "enforce_no_process_dict",
)

SOURCES = ("default", "config", "stage", "override")

# Distinct unknown names we keep counts for; beyond this they share one bucket,
# so an app reading random names cannot grow memory on a small board.
_MAX_UNKNOWN_NAMES = 32
_OTHER_UNKNOWN = "(other)"


class FlagError(AgentError):
    """A flag was set to something that is not allowed."""


class UnknownFlag(FlagError):
    """A name not in the catalogue; `.name` is it (unknown_flag() makes one)."""


def unknown_flag(name):
    exc = UnknownFlag("unknown flag {!r} (known: {})".format(name, ", ".join(FLAG_NAMES)))
    exc.name = name
    return exc


def check_flag_value(name, value):
    if name not in CATALOGUE:
        raise unknown_flag(name)
    if value is not True and value is not False:
        raise FlagError(f"flag {name} must be true or false, not {value!r}")


def check_flag_map(flags, what):
    """Validate a {name: bool} mapping from config, a plan or the store."""
    if not isinstance(flags, dict):
        raise FlagError(f"{what} must be a mapping of flag name to true/false")
    for name, value in flags.items():  # the common case: all good, no sorting
        if (value is not True and value is not False) or name not in CATALOGUE:
            break
    else:
        return
    for name in sorted(flags):  # else the first bad one in name order, as always
        check_flag_value(name, flags[name])


class FeatureFlags:
    def __init__(self, config_flags=None, events=None):
        self._events = events
        self._config = {}
        self._stage = {}
        self._overrides = {}
        self._effective = {}
        self._sources = {}
        self.unknown_reads = {}
        self.unknown_read_total = 0
        if config_flags:
            check_flag_map(config_flags, "config flags")
            self._config = dict(config_flags)
        self._recompute()

    def attach_events(self, events):
        self._events = events

    # -- the hot path -------------------------------------------------------

    def enabled(self, name):
        # One dict lookup on the common path; the except branch runs only for
        # names outside the catalogue.
        try:
            return self._effective[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name, still just unknown
            return self._unknown(name)

    def _unknown(self, name):
        self.unknown_read_total += 1
        key = name if isinstance(name, str) else repr(name)
        if key not in self.unknown_reads and len(self.unknown_reads) >= _MAX_UNKNOWN_NAMES:
            key = _OTHER_UNKNOWN
        self.unknown_reads[key] = self.unknown_reads.get(key, 0) + 1
        return False

    # -- reading ------------------------------------------------------------

    def values(self):
        """{name: bool} for every catalogued flag (a copy)."""
        return dict(self._effective)

    def source(self, name):
        if name not in CATALOGUE:
            raise unknown_flag(name)
        return self._sources[name]

    def list_all(self):
        """{name: {"value", "source", "default", "description"}} for every flag."""
        out = {}
        for name in FLAG_NAMES:
            default, description = CATALOGUE[name]
            out[name] = {
                "value": self._effective[name],
                "source": self._sources[name],
                "default": default,
                "description": description,
            }
        return out

    def overrides(self):
        return dict(self._overrides)

    def stage_flags(self):
        return dict(self._stage)

    # -- layers -------------------------------------------------------------

    def preview(self, stage_flags=None, overrides=None):
        """The effective {name: bool} these layers would give, without applying them.

        MigrationControl commits this to the store before calling `apply`, so
        the store always holds exactly what `enabled()` will return.
        """
        stage = self._stage if stage_flags is None else stage_flags
        over = self._overrides if overrides is None else overrides
        values, _ = _combine(self._config, stage, over)
        return values

    def apply(self, stage_flags=None, overrides=None):
        """Replace the stage and/or override layer; returns the list of changes."""
        if stage_flags is not None:
            check_flag_map(stage_flags, "stage flags")
            self._stage = dict(stage_flags)
        if overrides is not None:
            check_flag_map(overrides, "overrides")
            self._overrides = dict(overrides)
        return self._recompute()

    def set_override(self, name, value):
        check_flag_value(name, value)
        over = dict(self._overrides)
        over[name] = value
        return self.apply(overrides=over)

    def clear_override(self, name):
        if name not in CATALOGUE:
            raise unknown_flag(name)
        over = dict(self._overrides)
        over.pop(name, None)
        return self.apply(overrides=over)

    def _recompute(self):
        values, sources = _combine(self._config, self._stage, self._overrides)
        changes = []
        for name in FLAG_NAMES:
            old = self._effective.get(name)
            new = values[name]
            # Update in place: anyone holding the dict sees the new values.
            self._effective[name] = new
            self._sources[name] = sources[name]
            if old is not None and old != new:
                changes.append({"name": name, "old": old, "new": new, "source": sources[name]})
        if self._events is not None:
            for change in changes:
                self._events.emit("feature_flag.changed", change)
        return changes


def _combine(config, stage, overrides):
    values = {}
    sources = {}
    for name in FLAG_NAMES:
        if name in overrides:
            values[name], sources[name] = overrides[name], "override"
        elif stage.get(name):
            values[name], sources[name] = True, "stage"
        elif name in config:
            values[name], sources[name] = config[name], "config"
        else:
            values[name], sources[name] = CATALOGUE[name][0], "default"
    return values, sources
