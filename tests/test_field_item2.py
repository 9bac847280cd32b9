"""Item 2 of issue 7 on the field lab: the operator tools do not knock each other off.

On the shipped config every operator connection has its own client id (operator
listener; tools/mosquitto/mosquitto.conf says why), so `watch`, `status`,
`publish-stage` and `emergency-rollback` run at once as processes, each with the
operator login. A publish that meets a dropped link goes out after the reconnect.
"""
import json
import signal
import threading
import time


def _up(lab):
    for d in lab.devices:
        lab.start_agent(d)
    for d in lab.devices:
        lab.wait_status(d, lambda st: st.get("online") and st.get("stage") == 0)


def _finish(proc, timeout=60):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_item2_operator_tools_do_not_knock_each_other_off(field_lab):
    lab = field_lab(devices=["gw-1", "gw-2", "gw-3"], groups={"gw-1": ["a"], "gw-2": ["a"]})
    _up(lab)
    watch = lab.cli_bg("watch", "--for", "120")
    time.sleep(1.5)  # watch is connected and following
    first = [lab.cli_bg("status", "--json"), lab.cli_bg("publish-stage", "1", "--json"),
             lab.cli_bg("status")]
    results = [_finish(p) for p in first]
    assert results[1][0] == 0, results[1]
    for _rc, _out, err in results:
        assert "Traceback" not in err and "cannot connect" not in err, err
    for d in lab.devices:
        lab.wait_status(d, lambda st: st.get("stage") == 1)
    # While watch still runs: emergency rollback and status at the same time.
    second = [lab.cli_bg("emergency-rollback", "--reason", "drill", "--json"),
              lab.cli_bg("status", "--json"), lab.cli_bg("status")]
    results = [_finish(p) for p in second]
    rc, out, err = results[0]
    assert rc == 0, out + err
    assert {a["result"] for a in json.loads(out)["devices"].values()} == {"applied"}
    for rc, _out, err in results[1:]:
        assert "Traceback" not in err and rc in (0, 1), err
    for d in lab.devices:
        lab.wait_status(d, lambda st: st.get("stage") == 0)
    time.sleep(1.0)  # the last events reach watch
    watch.send_signal(signal.SIGINT)  # Ctrl-C: watch stops following and exits
    rc, out, err = _finish(watch)
    assert rc in (0, 1) and "Traceback" not in err, err
    assert "migration.emergency_rollback" in out and "migration.stage_enabled" in out, out
    # No session was taken over: mosquitto logs that when a client id is reused.
    assert "already connected, closing old connection" not in lab.broker_log()


def test_item2_publish_on_a_dropped_link_goes_out_after_the_reconnect(field_lab):
    lab = field_lab(devices=["gw-1"])
    _up(lab)
    assert lab.cli("publish-stage", "1").returncode == 0
    lab.wait_status("gw-1", lambda st: st.get("stage") == 1)
    op = lab.operator_client()
    lab.kill_broker()
    op.loop.run_until(lambda: not op.link.connected, 5)
    assert not op.link.connected
    timer = threading.Timer(1.5, lab.restart_broker)
    timer.start()
    try:  # publish() waits for the reconnect instead of raising "link down"
        outcome = op.emergency_rollback("broker restarted", "all", ["gw-1"], timeout=20)
    finally:
        timer.join()
    assert outcome.desired_id is not None, outcome.to_dict()
    # The command itself, or (if it beat gw-1's resubscription to a broker that lost
    # its sessions in the crash) its retained desired state, was applied.
    lab.wait_status("gw-1", lambda st: st.get("stage") == 0 and st.get("online")
                    and st["extra"]["guard_seq"] >= outcome.seq)
