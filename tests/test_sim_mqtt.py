"""`fleetstage sim --transport mqtt`: every simulated device its own MQTT session on a real
broker. The same scenario and seed must give the same wave decisions and the same devices'
own rollbacks as the virtual transport."""
import json

from sim.fleet import SimSettings, run
from sim.mqtt_transport import run_mqtt
from tests.mqttkit import Broker
from tools.cli import main as cli_main


def _decisions(report):
    return [(w["stage"], w["wave"], w["devices"], w["decision"], w["applied"], w["rejected"],
             w["rolled_back"], w["silent"]) for w in report["waves"]]


def _rolled_back(report):
    return sorted((r["device"], r["stage"], r["cohort"]) for r in report["rollbacks"])


def test_mqtt_and_virtual_agree_on_300_devices_of_the_default_scenario(tmp_path):
    """Through mosquitto, at 30x real time (a 5-minute soak is 10 s): about 100 s."""
    settings = SimSettings(devices=300)  # the default scenario: faults, seed 7
    virtual = run(settings)
    broker = Broker(str(tmp_path / "mosq"), persist=False).start()
    try:
        mqtt = run_mqtt(settings, broker.url)
    finally:
        broker.stop()
    assert mqtt["mode"] == "mqtt" and virtual["mode"] == "virtual"
    assert virtual["outcome"] == "halted" and virtual["halted_at_stage"] == 3
    assert _decisions(mqtt) == _decisions(virtual)
    assert _rolled_back(mqtt) == _rolled_back(virtual) and _rolled_back(virtual)
    assert mqtt["final_stage_counts"] == virtual["final_stage_counts"]
    assert mqtt["power_cuts"] == virtual["power_cuts"] > 0  # the same cuts, device by device
    assert mqtt["consistent"], mqtt["problems"]
    assert (mqtt["blamed"] or {}).get("cohort") == "rev-b"


def test_embedded_broker_runs_the_cli_with_no_broker_given(tmp_path, capsys):
    prefix = str(tmp_path / "r")
    rc = cli_main(["sim", "--transport", "mqtt", "--devices", "12", "--faults", "none",
                   "--soak", "30", "--report", prefix])
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads(open(prefix + ".json").read())
    assert report["mode"] == "mqtt" and report["outcome"] == "completed"
    assert report["final_stage_counts"]["4"] == 12


def test_an_unreachable_broker_is_one_line_and_exit_2(capsys):
    from firmware_shim.mqtt_paho import free_port

    rc = cli_main(["sim", "--transport", "mqtt", "--devices", "2",
                   "--broker", "mqtt://127.0.0.1:%d" % free_port()])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("fleetstage sim:") and "\n" not in err
