"""Flag reads: FeatureFlags.enabled() against a plain dict.get, beside three flag SDKs.

    python -m bench flags

Every figure is ns per call, measured with timeit in this run, and its ratio
to `d.get(name)` measured in the same run. Target: enabled() <= 3x dict.get.
The SDKs (the `bench` extra) are set up fully offline: OpenFeature with its
in-memory provider, LaunchDarkly on a file data source with events off, Unleash
bootstrapped from a dict with fetching, metrics and registration off. One that
can't be imported or started is printed as unavailable, never estimated.
"""
import json
import logging
import os
import shutil
import tempfile
import timeit

from agent.flags import FeatureFlags
from bench.__main__ import figure

FLAG = "use_ets_agent_registry"
UNIT = "ns/call"
BASELINE = "dict.get"


def _loop_ns(stmt, setup_globals, number, repeat):
    """Best of `repeat` timeit runs of `number` executions of stmt, in ns per call.

    Every contender is timed as a statement string, as `python -m timeit`
    would: the loop has no extra lambda call in it, so ratios compare reads.
    """
    timer = timeit.Timer(stmt, globals=setup_globals)
    best = min(timer.repeat(number=number, repeat=repeat))
    return best * 1e9 / number


def _openfeature():
    from openfeature import api
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    api.set_provider(InMemoryProvider({FLAG: InMemoryFlag("on", {"on": True, "off": False})}))
    client = api.get_client()
    if client.get_boolean_value(FLAG, False) is not True:
        raise RuntimeError("in-memory provider did not return the flag")
    return "sdk.get_boolean_value(name, False)", {"sdk": client}, (lambda: None)


def _launchdarkly(workdir):
    import ldclient
    from ldclient import Context
    from ldclient.config import Config
    from ldclient.integrations import Files

    path = os.path.join(workdir, "ld-flags.json")
    with open(path, "w") as f:
        json.dump({"flagValues": {FLAG: True}}, f)
    config = Config("offline-bench-key", update_processor_class=Files.new_data_source(paths=[path]),
                    send_events=False, diagnostic_opt_out=True)
    client = ldclient.LDClient(config=config, start_wait=5)
    context = Context.builder("gateway-1").build()
    if not client.is_initialized() or client.variation(FLAG, context, False) is not True:
        client.close()
        raise RuntimeError("file data source did not initialise")
    return "sdk.variation(name, context, False)", {"sdk": client, "context": context}, client.close


def _unleash(workdir):
    from UnleashClient import UnleashClient
    from UnleashClient.cache import FileCache

    cache = FileCache("fleetstage-bench", directory=workdir)
    cache.bootstrap_from_dict({"version": 1, "features": [
        {"name": FLAG, "enabled": True, "strategies": [{"name": "default", "parameters": {}}]}]})
    client = UnleashClient(url="http://127.0.0.1:9", app_name="fleetstage-bench", cache=cache,
                           disable_metrics=True, disable_registration=True)
    client.initialize_client(fetch_toggles=False)
    if client.is_enabled(FLAG) is not True:
        client.destroy()
        raise RuntimeError("bootstrapped toggles not visible")
    return "sdk.is_enabled(name)", {"sdk": client}, client.destroy


def run(quick=False):
    fast_n, slow_n, repeat = (200000, 1000, 3) if quick else (1000000, 5000, 5)
    flags = FeatureFlags()
    flags.apply(stage_flags={FLAG: True})
    plain = flags.values()
    env = {"d": plain, "flags": flags, "name": FLAG, "unknown": "use_quantum_registry"}
    base = _loop_ns("d.get(name)", env, fast_n, repeat)
    ours = _loop_ns("flags.enabled(name)", env, fast_n, repeat)
    unknown = _loop_ns("flags.enabled(unknown)", env, fast_n // 4, repeat)
    rows = [
        figure("dict.get (baseline)", base, UNIT, BASELINE, base),
        figure("FeatureFlags.enabled()", ours, UNIT, BASELINE, base,
               target="<= 3x", met=ours <= 3 * base),
        figure("FeatureFlags.enabled() unknown name", unknown, UNIT, BASELINE, base),
    ]
    logging.disable(logging.CRITICAL)  # the SDKs log their offline mode loudly
    workdir = tempfile.mkdtemp(prefix="fleetstage-bench-flags-")
    try:
        for name, make in (
            ("OpenFeature in-memory get_boolean_value()", lambda: _openfeature()),
            ("LaunchDarkly file source variation()", lambda: _launchdarkly(workdir)),
            ("Unleash bootstrapped is_enabled()", lambda: _unleash(workdir)),
        ):
            try:
                stmt, extra, close = make()
            except Exception as exc:  # noqa: BLE001 - report any SDK failure as unavailable
                rows.append(figure(f"{name}: unavailable ({type(exc).__name__}: {exc})",
                                   None, UNIT, BASELINE, None))
                continue
            sdk_env = dict(env)
            sdk_env.update(extra)
            try:
                value = _loop_ns(stmt, sdk_env, slow_n, repeat)
            finally:
                close()
            rows.append(figure(name, value, UNIT, BASELINE, base))
    finally:
        logging.disable(logging.NOTSET)
        shutil.rmtree(workdir, ignore_errors=True)
    return rows
