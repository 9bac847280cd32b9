"""The fleet simulator runs real agents; these runs check whole-fleet behaviour."""
import json
import os

import pytest

from sim.broker import topic_matches
from sim.faults import PROFILES, BadCohort, FaultProfile, profile
from sim.fleet import SimSettings, run
from sim.memfs import MemFS
from sim.report import to_json
from tools.cli import main as cli_main


def test_topic_filters():
    assert topic_matches("a/+/c", "a/b/c")
    assert topic_matches("a/#", "a/b/c")
    assert not topic_matches("a/+", "a/b/c")
    assert not topic_matches("a/b/c/d", "a/b/c")


def test_memfs_loses_unsynced_bytes_but_keeps_a_torn_write():
    fs = MemFS()
    f = fs.open_append("/s/log")
    fs.write(f, b"abc")
    fs.fsync(f)
    fs.write(f, b"def")  # never synced: lost at the cut
    fs.power_cut()
    assert fs.read_bytes("/s/log") == b"abc"
    f = fs.open_append("/s/log")
    fs.arm_cut(2)
    with pytest.raises(OSError):
        fs.write(f, b"xyz")
    with pytest.raises(OSError):
        fs.fsync(f)  # no power until the reboot
    fs.power_cut()
    assert fs.read_bytes("/s/log") == b"abcxy"


def test_memfs_keeps_the_synced_bytes_when_a_file_is_rewritten_or_replaced():
    # The durable part of a file that only grew is a length into the file itself;
    # rewriting the file (open_write) or renaming another over it must keep the old
    # synced bytes for a power cut, as flash would.
    fs = MemFS()
    f = fs.open_append("/s/log")
    fs.write(f, b"old")
    fs.fsync(f)
    fs.open_write("/s/log")  # truncated, nothing synced since
    fs.power_cut()
    assert fs.read_bytes("/s/log") == b"old"
    tmp = fs.open_write("/s/tmp")
    fs.write(tmp, b"new")
    fs.rename("/s/tmp", "/s/log")  # not synced: the cut brings the old bytes back
    fs.power_cut()
    assert fs.read_bytes("/s/log") == b"old" and fs.read_bytes("/s/tmp") is None
    tmp = fs.open_write("/s/tmp")
    fs.write(tmp, b"newer")
    fs.fsync(tmp)
    fs.rename("/s/tmp", "/s/log")
    log = fs.open_append("/s/log")
    fs.write(log, b"+lost")
    fs.power_cut()
    assert fs.read_bytes("/s/log") == b"newer"


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError):
        profile("nope")
    assert "default" in PROFILES


def _small(prof, devices=40, soak_ms=300_000, **kw):
    # a gateway serves 0.5 calls/s, so a bad cohort shows ~2 minutes after a stage change
    return SimSettings(devices=devices, seed=3, profile=prof, soak_ms=soak_ms, **kw)


def test_clean_fleet_completes_every_stage():
    result = run(_small(PROFILES["none"], devices=24))
    assert result["outcome"] == "completed", result["reason"]
    assert result["final_stage_counts"] == {"0": 0, "1": 0, "2": 0, "3": 0, "4": 24}
    assert result["halted_at_stage"] is None and result["rollbacks"] == []
    assert result["consistent"]
    assert result["events"]["migration.stage_enabled"] == 24 * 4
    assert [w["decision"] for w in result["waves"]] == ["advance"] * len(result["waves"])


def test_bad_cohort_rolls_itself_back_and_halts_the_rollout():
    prof = FaultProfile(name="t", cohorts=(BadCohort(fraction=0.25, from_stage=3,
                                                     error_rate=0.3),))
    result = run(_small(prof, devices=40))
    assert result["outcome"] == "halted" and result["halted_at_stage"] == 3, result["reason"]
    assert result["rollbacks"] and {r["cohort"] for r in result["rollbacks"]} == {"rev-b"}
    assert all(r["stage"] == 3 and r["reason"] == "health:error_rate"
               for r in result["rollbacks"])
    assert result["events"].get("migration.rollback", 0) >= 1
    # the halt sends every device that reached stage 3 back to stage 2; nothing stays above
    assert result["final_stage_counts"]["3"] == 0 and result["final_stage_counts"]["4"] == 0
    assert result["consistent"]


def test_power_cuts_and_an_outage_leave_every_device_consistent():
    prof = FaultProfile(name="t", power_cut_rate=0.2, broker_outages=((100_000, 200_000),))
    result = run(_small(prof, devices=30, soak_ms=60_000))
    assert result["power_cuts"] > 0
    # the stores said what they recovered, into the report rather than onto the terminal
    assert result["store_log_lines"] > 0 and result["store_log_tail"]
    assert result["consistent"], result["problems"]
    assert "broker down" in [i["event"] for i in result["incidents"]]


def test_default_scenario_halts_at_stage_3_and_names_the_bad_cohort():
    """`fleetstage sim` with no options: 500 devices, the default fault profile."""
    result = run(SimSettings())
    assert result["outcome"] == "halted" and result["halted_at_stage"] == 3, result["reason"]
    halted = result["waves"][-1]
    assert halted["stage"] == 3 and halted["decision"] == "halt"
    assert halted["cohorts"]["blamed"]["cohort"] == "rev-b"
    assert "rev-b" in halted["reason"] and result["blamed"]["cohort"] == "rev-b"
    assert result["rollbacks"] and {r["cohort"] for r in result["rollbacks"]} == {"rev-b"}
    assert all(w["decision"] == "advance" for w in result["waves"][:-1])
    assert result["power_cuts"] > 0 and result["consistent"], result["problems"]
    assert result["final_stage_counts"]["3"] == 0 and result["final_stage_counts"]["4"] == 0


def test_faults_none_completes_stage_4_on_every_device(tmp_path, capsys):
    prefix = str(tmp_path / "r")
    rc = cli_main(["sim", "--devices", "200", "--faults", "none", "--report", prefix])
    out = capsys.readouterr().out
    assert rc == 0 and "outcome: completed" in out
    report = json.loads(open(prefix + ".json").read())
    assert report["outcome"] == "completed"
    assert report["final_stage_counts"] == {"0": 0, "1": 0, "2": 0, "3": 0, "4": 200}
    assert report["mode"] == "virtual" and report["devices"] == 200 and report["seed"] == 7


def test_same_seed_gives_a_byte_identical_report_apart_from_wall_time():
    def once(seed):
        result = run(SimSettings(devices=60, seed=seed, soak_ms=120_000))  # default faults
        assert result["wall_s"] >= 0
        result["wall_s"] = 0
        return to_json(result)

    a, b = once(11), once(11)
    assert a == b
    assert once(12) != a  # and the seed matters


def test_report_contract_keys():
    result = run(_small(PROFILES["default"], devices=30, soak_ms=60_000))
    for key in ("outcome", "halted_at_stage", "final_stage_counts", "rollbacks", "waves",
                "devices", "seed", "mode", "wall_s"):
        assert key in result
    assert result["outcome"] in ("completed", "halted", "paused")
    for w in result["waves"]:
        assert {"stage", "devices", "decision", "reason", "cohorts"} <= set(w)
        assert w["decision"] in ("advance", "halt", "pause")
        assert {"by_reason", "by_group", "by_hw", "blamed"} <= set(w["cohorts"])


def test_cli_refuses_bad_options_in_one_line(capsys, tmp_path):
    for argv in (["sim", "--waves", "50%,10%"], ["sim", "--devices", "0"],
                 # a fleet no machine's memory holds (about 60 TB): refused up front
                 ["sim", "--devices", "1000000000"],
                 ["sim", "--broker", "mqtt://localhost:1"],
                 # checked before the run, not after it as a traceback
                 ["sim", "--report", str(tmp_path / "no-such-dir" / "r")],
                 # the simulated fleet's groups are its hardware revisions
                 ["sim", "--devices", "20", "--waves", "group:canary,100%",
                  "--report", str(tmp_path / "r")]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("fleetstage sim:") and "\n" not in err and "Traceback" not in err
        assert not os.path.exists(str(tmp_path / "r.json"))


def test_consistency_check_catches_flash_that_disagrees_with_memory():
    from sim.fleet import Simulation

    sim = Simulation(_small(PROFILES["none"], devices=3))
    assert sim.check_consistency() == []
    dev = sim.devices[1]
    dev.control.store.commit({"ctl.stage": 3})  # flash says 3, the device still runs 0
    problems = sim.check_consistency()
    assert len(problems) == 1 and problems[0].startswith(dev.device_id)


def test_apps_calls_land_in_the_health_bucket_of_their_own_call_time():
    # The simulator records the calls since a device's last wake in one go, but into
    # the bucket each call was made in: the window then holds what per-call records
    # would, each 30 s bucket exactly its 15 calls (0.5 a second), and no bucket needs
    # the weighted percentiles (more calls than its reservoir of 16 keeps).
    from sim.fleet import Simulation

    sim = Simulation(SimSettings(devices=3, profile=PROFILES["none"]))
    dev = sim.devices[1]
    assert dev.control is not None
    health = dev.control.health
    sim.run_for(95_000)  # a wake at each check (30, 60, 90 s), never on a bucket edge
    dev._record_traffic(dev.control, 95_000)
    src = health._sources["app"]
    live = health._live_slots(src, 95_000)
    counts = sorted((src.epoch[s], src.calls[s]) for s in live)
    # calls at 1, 3, 5, ... s: 15 in each of the buckets [0, 30), [30, 60), [60, 90) s,
    # and the ones at 91, 93, 95 s so far in [90, 120)
    assert counts == [(0, 15), (1, 15), (2, 15), (3, 3)]
    assert max(src.seen) <= src.per
    assert health.snapshot(95_000)["samples"] == 48


def test_fault_draws_are_seeded_by_their_name_and_uniform():
    from sim.faults import Draws

    a, b, c = Draws("7:gw-00001:in"), Draws("7:gw-00001:in"), Draws("7:gw-00002:in")
    xs = [a.random() for _ in range(20000)]
    assert xs == [b.random() for _ in range(20000)]
    assert xs[:5] != [c.random() for _ in range(5)]
    assert 0.0 <= min(xs) and max(xs) < 1.0 and abs(sum(xs) / len(xs) - 0.5) < 0.01
    ints = [a.randint(20, 200) for _ in range(20000)]
    assert min(ints) == 20 and max(ints) == 200


def test_virtual_broker_exact_topics_deliver_once_to_each_subscriber():
    # an exact topic holds its one subscriber, or a set of them from the second on:
    # a reconnect's subscribe again adds nobody twice, and a clean session's
    # disconnect takes its subscriptions away
    import random

    from sim.broker import VirtualBroker, VirtualLink

    broker = VirtualBroker(random.Random(1), (1, 1))
    got: list[tuple[str, str]] = []
    links = []
    for name in ("a", "b", "c"):
        link = VirtualLink(broker, name)
        link.set_callbacks(lambda t, p, r=False, name=name: got.append((name, t)), None, None)
        link.subscribe("f/cmd/all", 1)
        link.subscribe("f/cmd/device/" + name, 1)
        link.connect()
        links.append(link)
    links[0].drop(graceful=True)
    links[0].connect()  # subscribes again: still one delivery to it
    broker.publish("f/cmd/all", b"x", 1, False)
    broker.publish("f/cmd/device/b", b"y", 1, False)
    broker.deliver_until(10)
    assert sorted(got) == [("a", "f/cmd/all"), ("b", "f/cmd/all"), ("b", "f/cmd/device/b"),
                           ("c", "f/cmd/all")]
    got.clear()
    links[1].drop(graceful=True)  # a clean session: its subscriptions go
    broker.publish("f/cmd/all", b"x", 1, False)
    broker.publish("f/cmd/device/b", b"y", 1, False)
    broker.deliver_until(20)
    assert sorted(got) == [("a", "f/cmd/all"), ("c", "f/cmd/all")]
