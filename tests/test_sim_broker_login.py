"""`fleetstage sim --transport mqtt --broker URL` pointed at the fleet's own broker (the
shipped config: no anonymous clients). It said "no MQTT broker answers at ... (broker
refused the connection: not authorised (check the user name and password file))": the
broker did answer, and sim has no login options to check. Now one line says what --broker
needs, exit 2."""
import subprocess
import sys

from tests.agentkit import REPO


def test_sim_on_a_broker_without_anonymous_clients_says_what_broker_it_needs(field_lab,
                                                                            tmp_path):
    lab = field_lab(devices=["gw-1"])
    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", "sim", "--devices", "3", "--transport", "mqtt",
         "--broker", lab.device_plain_url, "--report", str(tmp_path / "rep")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    err = [line for line in done.stderr.splitlines() if "Traceback" in line or
           "refused" in line or "answers" in line]
    assert done.returncode == 2, done.stderr
    assert len(err) == 1 and "allow_anonymous true" in err[0], done.stderr
    assert "refused the simulator's anonymous clients (not authorised)" in err[0], err
    assert not (tmp_path / "rep.json").exists()
