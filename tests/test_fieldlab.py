"""The field lab itself: the shipped broker config with its generated files, agents and
operator tools as processes, each with its own login (tests/fieldlab.py)."""
import json


def test_lab_runs_agents_and_operator_tools_on_the_shipped_config(field_lab):
    lab = field_lab(devices=["gw-1", "gw-2"], groups={"gw-1": ["line-a"]})
    for d in ("gw-1", "gw-2"):
        lab.start_agent(d)
    for d in ("gw-1", "gw-2"):
        lab.wait_status(d, lambda st: st.get("online") and st.get("stage") == 0)
    done = lab.cli("publish-stage", "1", "--target", "group:line-a", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["devices"]["gw-1"]["result"] == "applied" and list(out["devices"]) == ["gw-1"]
    lab.wait_status("gw-1", lambda st: st.get("stage") == 1)
    st = lab.cli("status", "--json")
    summary = json.loads(st.stdout)["summary"]
    assert summary["stages"] == {"0": 1, "1": 1}, st.stdout + st.stderr
