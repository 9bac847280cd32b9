"""The agent registry (stage 1), in both implementations."""
import corekit
from test_services_kit import make

from agent.services import LEGACY, NEW, RegistryError
from agent.services import registry as registry_mod


def both():
    """A legacy registry (stage 0) and a new one (stage 1)."""
    return [(make(stage=0)[0].registry, LEGACY), (make(stage=1)[0].registry, NEW)]


def test_register_lookup_unregister_in_both_impls():
    for reg, impl in both():
        assert reg.impl_name == impl
        reg.register("b-agent", {"role": "sensor"})
        reg.register("a-agent")
        assert reg.lookup("b-agent") == {"role": "sensor"}
        assert reg.lookup("a-agent") == {}
        assert reg.list_agents() == ["a-agent", "b-agent"]
        assert reg.count() == 2
        assert reg.unregister("a-agent") is True
        assert reg.unregister("a-agent") is False
        assert reg.lookup("a-agent") is None
        assert reg.list_agents() == ["b-agent"]


def test_status_counts_lookups_and_failures():
    for reg, impl in both():
        reg.register("a")
        reg.lookup("a")
        reg.lookup("missing")
        reg.lookup("missing")
        st = reg.status()
        assert st["impl"] == impl
        assert st["count"] == 1
        assert st["lookups"] == 3
        assert st["failures"] == 2
        assert st["registrations"] == 1


def test_duplicate_refused_unless_replace():
    for reg, _impl in both():
        reg.register("a", {"v": 1})
        err = corekit.raises(RegistryError, reg.register, "a", {"v": 2})
        assert "already registered" in str(err)
        assert reg.lookup("a") == {"v": 1}
        reg.register("a", {"v": 2}, replace=True)
        assert reg.lookup("a") == {"v": 2}
        assert reg.count() == 1


def test_bad_input_is_a_named_error():
    for reg, _impl in both():
        corekit.raises(RegistryError, reg.register, "")
        corekit.raises(RegistryError, reg.register, 42)
        corekit.raises(RegistryError, reg.register, None)
        corekit.raises(RegistryError, reg.register, "a", ["not", "a", "dict"])
        assert reg.count() == 0


def test_info_is_copied_on_register():
    for reg, _impl in both():
        info = {"role": "x"}
        reg.register("a", info)
        info["role"] = "changed by caller"
        assert reg.lookup("a") == {"role": "x"}


def test_registry_is_bounded():
    for reg, _impl in both():
        for i in range(registry_mod.MAX_AGENTS):
            reg.register(f"agent-{i}")
        corekit.raises(RegistryError, reg.register, "one-too-many")
        reg.register("agent-0", {"again": True}, replace=True)  # replacing is not growing
        assert reg.count() == registry_mod.MAX_AGENTS
