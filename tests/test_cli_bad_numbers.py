"""A mistyped number on an operator command (a negative or zero --timeout, --soak,
--soak-scale, --expect, watch --for) is refused in one line with exit 2 before anything
is sent. Found by a new user: `rollout --timeout -1` ran a real rollout, counted the
first wave silent at once, halted and sent a rollback; `publish-stage --timeout 0` said
"cannot connect to the broker" and printed a paho traceback. Against the field lab (the
shipped mosquitto config, TLS, ACL, an agent with its own login): the device stays at
stage 0 and no rollout state file is written."""
import os

ONE_LINE_CASES = [
    (("publish-stage", "1", "--timeout", "-5"), "argument --timeout: must be a number > 0"),
    (("publish-stage", "1", "--timeout", "0"), "argument --timeout: must be a number > 0"),
    (("publish-stage", "1", "--expect", "-3"), "argument --expect: must be a number >= 1"),
    (("rollback", "0", "--timeout", "nan"), "argument --timeout: must be a number > 0"),
    (("flags", "list", "--timeout", "-1"), "argument --timeout: must be a number > 0"),
    (("flags", "set", "use_genserver_telemetry", "true", "--target", "all", "--timeout", "0"),
     "argument --timeout: must be a number > 0"),
    (("clear-quarantine", "--target", "all", "--timeout", "-1"),
     "argument --timeout: must be a number > 0"),
    # a command that changes devices one by one names them: no default target
    (("clear-quarantine",), "the following arguments are required: --target"),
    (("flags", "set", "use_genserver_telemetry", "true"),
     "the following arguments are required: --target"),
    (("flags", "clear", "use_genserver_telemetry"),
     "the following arguments are required: --target"),
    (("rollout",), "--to-stage N is required"),
    (("publish-stage", "1", "--devices", ""), "argument --devices: must name at least one"),
    (("flags", "list", "--devices", " , "), "argument --devices: must name at least one"),
    (("status", "--timeout", "-1"), "argument --timeout: must be a number > 0"),
    (("watch", "--for", "-1"), "argument --for: must be a number > 0"),
    (("rollout", "--to-stage", "1", "--timeout", "-1"), "argument --timeout: must be a number > 0"),
    (("rollout", "--to-stage", "1", "--soak", "-1"), "argument --soak: must be a number >= 0"),
    (("rollout", "--to-stage", "1", "--soak-scale", "-1"),
     "argument --soak-scale: must be a number > 0"),
    (("rollout", "--to-stage", "1", "--expect", "0"), "argument --expect: must be a number >= 1"),
]


def test_bad_numbers_are_refused_before_anything_is_sent(field_lab, tmp_path):
    lab = field_lab(devices=["gw-1"])
    lab.start_agent("gw-1")
    lab.wait_stage("gw-1", 0)
    state = str(tmp_path / "rollout.store")
    for args, words in ONE_LINE_CASES:
        extra = ("--state", state) if args[0] == "rollout" else ()
        done = lab.cli(*args, *extra)
        err = done.stderr.strip()
        assert done.returncode == 2 and words in err, (args, done.returncode, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (args, err)
        assert not done.stdout.strip(), (args, done.stdout)
    assert not os.path.exists(state) and not os.path.exists(state + ".lock")
    # nothing reached the device: it is still at stage 0, and a good command still works
    assert lab.status_of("gw-1")["stage"] == 0
    done = lab.cli("publish-stage", "1", "--timeout", "20")
    assert done.returncode == 0, done.stdout + done.stderr
    lab.wait_stage("gw-1", 1)


def test_emergency_rollback_reason_out_of_bounds_is_one_plain_line(field_lab):
    # It printed "('malformed', 'reason must be a string of 1..200 characters')": the
    # encoder's exception tuple. Now argparse refuses it before connecting.
    lab = field_lab(devices=["gw-1"])
    lab.start_agent("gw-1")
    lab.wait_stage("gw-1", 0)
    assert lab.cli("publish-stage", "1", "--timeout", "20").returncode == 0
    lab.wait_stage("gw-1", 1)
    for reason in ("", "x" * 201):
        done = lab.cli("emergency-rollback", "--reason", reason)
        err = done.stderr.strip()
        assert done.returncode == 2, (done.returncode, err)
        assert err == ("fleetstage emergency-rollback: argument --reason: must be 1..200 "
                       "characters, not %d (see fleetstage emergency-rollback --help)"
                       % len(reason)), err
        assert not done.stdout.strip(), done.stdout
    assert lab.status_of("gw-1")["stage"] == 1
    done = lab.cli("emergency-rollback", "--reason", "x" * 200)
    assert done.returncode == 0, done.stdout + done.stderr
    lab.wait_stage("gw-1", 0)


def test_rollout_success_100_percent_is_every_device(field_lab, tmp_path):
    # --success 100% (every device of each wave must apply) was refused: "a share lies in
    # [0%, 100%)"; above 100% still is.
    lab = field_lab(devices=["gw-1", "gw-2"])
    for d in ("gw-1", "gw-2"):
        lab.start_agent(d)
        lab.wait_stage(d, 0)
    state = str(tmp_path / "r.store")
    done = lab.cli("rollout", "--to-stage", "1", "--success", "101%", "--state", state)
    err = done.stderr.strip()
    assert done.returncode == 2 and err == ("fleetstage rollout: threshold '101%': a share "
                                            "lies in [0%, 100%]"), err
    assert not os.path.exists(state)
    done = lab.cli("rollout", "--to-stage", "1", "--success", "100%", "--soak", "0.2",
                   "--waves", "50%,100%", "--timeout", "20", "--state", state, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rollout completed" in done.stdout, done.stdout
    for d in ("gw-1", "gw-2"):
        lab.wait_stage(d, 1)
