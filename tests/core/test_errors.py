"""agent.errors on both interpreters: one root, one ConfigError, errors that say how to answer."""
import corekit

from agent import agent_config, config, errors, flags, plan, store, transitions
from agent import protocol as P
from agent.services import base as services_base


def test_every_core_error_has_one_root():
    for cls in (config.ConfigError, plan.PlanError, flags.FlagError, flags.UnknownFlag,
                transitions.ControlError, transitions.TransitionRefused, transitions.NotReady,
                transitions.Quarantined, store.StoreError, store.StoreIOError,
                store.StoreNeedsReopenError, services_base.ServicesError,
                services_base.RegistryError):
        assert issubclass(cls, errors.AgentError), cls
    assert agent_config.ConfigError is config.ConfigError is errors.ConfigError


def test_one_config_error_names_its_field_both_ways():
    exc = errors.ConfigError("thresholds.min_samples", "must be >= 1")
    assert exc.field == "thresholds.min_samples" and exc.why == exc.reason == "must be >= 1"
    assert str(exc) == "config field 'thresholds.min_samples': must be >= 1"


def test_each_error_says_how_a_refused_command_is_answered():
    refused = transitions.TransitionRefused("COOLDOWN", "MigrateRequested", "cooling down")
    assert (refused.refusal, refused.refusal_detail()) == (P.NOT_READY, ["cooling down"])
    not_ready = transitions.not_ready("AT_STAGE", "MigrateRequested", ["a", "b"])
    assert isinstance(not_ready, transitions.NotReady) and str(not_ready).endswith("a; b")
    assert (not_ready.refusal, not_ready.refusal_detail()) == (P.NOT_READY, ["a", "b"])
    exc = corekit.raises(transitions.Quarantined, transitions.next_state, "QUARANTINED",
                         "MigrateRequested")
    assert (exc.refusal, exc.refusal_detail()) == (P.IN_QUARANTINE, exc.reason)
    full = store.StoreFullError("no space")
    assert (full.refusal, full.refusal_detail()) == (P.NOT_READY, ["storage error: no space"])
    bad_flag = flags.unknown_flag("nope")
    assert bad_flag.refusal == P.MALFORMED and "nope" in bad_flag.refusal_detail()
    assert transitions.ControlError("x").refusal_detail() == "x"
