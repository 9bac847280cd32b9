"""Item 6 of issue 7 on the field lab: a publish that cannot work is detected and does
not replace the retained desired state.

Three ways a publish cannot work: signed with another fleet's key (the devices' acks
do not verify under it), sent with a device's broker login (the ACL drops it; the
operator speaks MQTT 5, so the PUBACK says "Not authorized"), and a target that
matches no device the operator has seen. Each exits non-zero with one line, and the
emergency rollback retained before stays the one devices converge to.
"""
import json

from agent import protocol as P


def _retained_desired(lab):
    got = {}
    link = lab.operator_link(on_message=lambda t, p, r: got.__setitem__(t, p) if r else None)
    link.subscribe("fleetstage/%s/desired/#" % lab.fleet)
    lab.loop.run_until(lambda: False, 1.0)  # retained messages arrive at once
    link.close()
    out = {}
    for topic, payload in got.items():
        if payload:
            st = P.decode_desired(payload, None, "gw-1", insecure=True)
            out[topic.split("/desired/")[1]] = (st.stage, st.emergency, st.seq)
    return out


def _up(lab):
    for d in lab.devices:
        lab.start_agent(d)
    for d in lab.devices:
        lab.wait_status(d, lambda st: st.get("online") and st.get("stage") == 0)
    done = lab.cli("emergency-rollback", "--reason", "baseline", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    before = _retained_desired(lab)
    assert before["all"][:2] == (0, True)
    return before


def test_item6_publish_with_another_fleets_key_is_detected_and_retains_nothing(field_lab, tmp_path):
    lab = field_lab(devices=["gw-1", "gw-2"])
    before = _up(lab)
    other = tmp_path / "other.key"
    other.write_bytes(P.format_key_file(P.new_fleet_key(), "fleet"))
    done = lab.cli("publish-stage", "1", "--key", str(other), "--timeout", "10")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "do not verify with this fleet key" in done.stdout, done.stdout
    assert "2 unverified" in done.stdout and "Traceback" not in done.stderr
    assert _retained_desired(lab) == before
    for d in lab.devices:
        assert lab.status_of(d)["stage"] == 0


def test_item6_publish_the_broker_drops_is_detected(field_lab, tmp_path):
    lab = field_lab(devices=["gw-1", "gw-2"])
    before = _up(lab)
    login = lab.device_login("gw-2")
    pw = tmp_path / "gw-2.pw"
    pw.write_text(login.password)
    # A device login on the device listener: the ACL drops its command.
    done = lab.cli("publish-stage", "1", "--broker", lab.device_url, "--username", "gw-2",
                   "--password-file", str(pw), "--timeout", "10")
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "refused the publish" in err, err
    assert "Not authorized" in err and "operator login" in err, err
    # ... and on the operator listener a device login is not authorised at all.
    done = lab.cli("publish-stage", "1", "--username", "gw-2", "--password-file", str(pw))
    assert done.returncode == 2 and "not authorised" in done.stderr, done.stderr
    assert _retained_desired(lab) == before
    # The tool above took gw-2's client id on the device listener; the agent, still
    # running, comes back by itself (a second agent would find its state dir locked).
    assert lab.agents["gw-2"].alive()
    lab.wait_status("gw-2", lambda st: st.get("online") and st.get("stage") == 0)


def test_item6_target_that_matches_no_known_device_retains_nothing(field_lab):
    lab = field_lab(devices=["gw-1", "gw-2"], groups={"gw-1": ["a"]})
    before = _up(lab)
    done = lab.cli("publish-stage", "1", "--target", "group:nope", "--timeout", "3")
    assert done.returncode == 2 and "no devices known for target group:nope" in done.stderr
    done = lab.cli("publish-stage", "1", "--devices", "ghost-1,ghost-2", "--timeout", "3",
                   "--json")
    assert done.returncode == 3, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["desired_id"] is None and "no targeted device is known" in out["desired_note"]
    done = lab.cli("status", "--fleet", "wrong-fleet")
    assert done.returncode == 1 and "check the fleet name" in done.stdout, done.stdout
    assert _retained_desired(lab) == before


def test_item6_unknown_device_target_is_refused_at_once_with_exit_2(field_lab):
    """README, Security: a target no device of the fleet has reported from exits 2 and
    retains nothing. `--target device:ID` used to wait out the whole timeout and exit 3.
    With the inventory (profile "lab") an id it does not list is refused before anything
    is sent; without one (profile "lab-discovery") an id with no retained status is.
    --timeout 600 with the process given 60 s: waiting out the timeout fails the test."""
    lab = field_lab(devices=["gw-1", "gw-2"])
    before = _up(lab)
    for profile, says in (("lab", "device gw-9999 is not in the fleet inventory"),
                          ("lab-discovery", "no device gw-9999 has reported in fleet")):
        for cmd in (("publish-stage", "1"), ("emergency-rollback", "--reason", "typo"),
                    ("rollback", "0")):
            done = lab.cli(*cmd, "--profile", profile, "--target", "device:gw-9999",
                           "--timeout", "600", timeout=60)
            err = done.stderr.strip()
            assert done.returncode == 2, (profile, cmd, done.stdout, err)
            assert len(err.splitlines()) == 1 and says in err and "Traceback" not in err, err
            assert done.stdout == "", done.stdout  # no ack table: nothing was sent
    assert _retained_desired(lab) == before
    # The way out the discovery message names: --devices sends to an id nobody has
    # seen (a device not booted yet); it stays silent (exit 3) and nothing is retained.
    done = lab.cli("publish-stage", "1", "--profile", "lab-discovery", "--target",
                   "device:gw-9999", "--devices", "gw-9999", "--timeout", "2", "--json")
    assert done.returncode == 3, done.stdout + done.stderr
    assert json.loads(done.stdout)["desired_id"] is None
    assert _retained_desired(lab) == before
    # A device that has reported is targeted in either mode as before.
    for profile, stage in (("lab", "1"), ("lab-discovery", "2")):
        done = lab.cli("publish-stage", stage, "--profile", profile, "--target",
                       "device:gw-2", "--timeout", "20", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["devices"]["gw-2"]["result"] == "applied"
    assert lab.wait_stage("gw-2", 2)["stage"] == 2 and lab.status_of("gw-1")["stage"] == 0
