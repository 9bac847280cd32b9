"""`--plan FILE` that does not exist or is not a plan: every operator command said it with
a traceback (agent.plan.PlanError is no OSError or ValueError). Now one line, exit 2,
nothing sent: on the field lab the device stays at stage 0."""
import os


def test_a_bad_plan_file_is_one_line_and_nothing_is_sent(field_lab, tmp_path):
    lab = field_lab(devices=["gw-1"])
    lab.start_agent("gw-1")
    lab.wait_stage("gw-1", 0)
    bad = tmp_path / "bad.json"
    bad.write_text("{bad")
    missing = str(tmp_path / "missing.json")
    state = str(tmp_path / "r.store")
    for plan, words in ((str(bad), "plan is not valid JSON"), (missing, "does not exist")):
        for args in (("status",), ("publish-stage", "1"), ("flags", "list"),
                     ("rollout", "--to-stage", "1", "--state", state)):
            done = lab.cli(*args, "--plan", plan)
            err = done.stderr.strip()
            assert done.returncode == 2, (args, done.returncode, err)
            assert err.startswith("fleetstage %s: cannot load the plan %s: " % (
                " ".join(args[:2]) if args[0] == "flags" else args[0], plan)), (args, err)
            assert words in err and len(err.splitlines()) == 1, (args, err)
    assert not os.path.exists(state)
    assert lab.status_of("gw-1")["stage"] == 0
