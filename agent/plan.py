"""Migration plans as data: the stages, their flags, risks and monitoring times.

Owns: Plan and Stage, a loaded plan, and the plan hash that commands carry so a
device refuses a command meant for another plan. Validating a plan and the
default plan (the runbook's four stages) are agent.plan_rules'. Must never:
read files itself (a path is read through the `fs` handed in) or change flags
(MigrationControl does that).

Stage n turns on the flags of stages 1..n; stage 0 is "no migration flags".
The hash is the hex SHA-256 of the canonical msgpack of `to_dict()`, so it is
the same on CPython and MicroPython and does not depend on key order.
"""
import hashlib
from binascii import hexlify

from agent.errors import PlanError  # noqa: F401 - re-exported: callers catch it from here
from firmware_shim.codec import canonical_digest

_LAZY_MODULE = "agent.plan_rules"
_LAZY_NAMES = ("RISKS", "CRITERIA", "default_plan")


def __getattr__(name):
    if name in _LAZY_NAMES:
        import agent.plan_rules

        return getattr(agent.plan_rules, name)
    raise AttributeError("module 'agent.plan' has no attribute '%s'" % name)


class Stage:
    def __init__(self, number, name, risk, flags, monitor_minutes, success_criteria, description):
        self.number = number
        self.name = name
        self.risk = risk
        self.flags = flags
        self.monitor_minutes = monitor_minutes
        self.success_criteria = success_criteria
        self.description = description

    @property
    def monitor_ms(self):
        return self.monitor_minutes * 60000

    def to_dict(self):
        return {
            "number": self.number, "name": self.name, "risk": self.risk,
            "flags": list(self.flags), "monitor_minutes": self.monitor_minutes,
            "success_criteria": dict(self.success_criteria), "description": self.description,
        }

    def __repr__(self):
        return f"Stage({self.number}, {self.name!r})"


class Plan:
    def __init__(self, name, stages, description=""):
        self.name = name
        self.stages = stages
        self.description = description
        digest = canonical_digest(self.to_dict(), hashlib.sha256()).digest()
        self.hash = hexlify(digest).decode()

    # -- constructors -------------------------------------------------------

    # The checks, the default plan's data and the tables (RISKS, CRITERIA) live in
    # agent.plan_rules, loaded when a plan is (or a table is asked for: __getattr__
    # below): a board frees it once its agent runs (agent.boot.BOOT_ONLY_MODULES).

    @classmethod
    def default(cls):
        from agent.plan_rules import default_plan

        return cls.from_dict(default_plan())

    @classmethod
    def from_dict(cls, data):
        from agent import plan_rules

        return cls(*plan_rules.from_dict(data, Stage))

    @classmethod
    def from_json(cls, text):
        from agent import plan_rules

        return cls.from_dict(plan_rules.from_json(text))

    @classmethod
    def load(cls, path, fs):
        from agent import plan_rules

        return cls.from_dict(plan_rules.load(path, fs))

    # -- reading ------------------------------------------------------------

    @property
    def max_stage(self):
        return len(self.stages)

    def stage(self, n):
        if type(n) is not int or n < 1 or n > len(self.stages):
            raise PlanError(f"plan {self.name} has stages 1..{len(self.stages)}, not {n!r}")
        return self.stages[n - 1]

    def flags_for_stage(self, n):
        """{flag: True} for every flag that stages 1..n turn on (n = 0: none)."""
        if type(n) is not int or n < 0 or n > len(self.stages):
            raise PlanError(f"plan {self.name} has stages 0..{len(self.stages)}, not {n!r}")
        on = {}
        for stage in self.stages[:n]:
            for flag in stage.flags:
                on[flag] = True
        return on

    def to_dict(self):
        stages = []
        for stage in self.stages:
            stages.append(stage.to_dict())
        return {"name": self.name, "description": self.description, "stages": stages}

    def summary(self):
        return {"name": self.name, "hash": self.hash, "stages": len(self.stages)}
