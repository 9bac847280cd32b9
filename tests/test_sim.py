"""The fleet simulator runs real agents; these runs check whole-fleet behaviour."""
import json

import pytest

from sim.broker import topic_matches
from sim.faults import PROFILES, BadCohort, FaultProfile, profile
from sim.fleet import SimSettings, run
from sim.memfs import MemFS
from tools.cli import main as cli_main
from tools.strategy import WavePolicy, WaveResult, judge_wave


def test_wave_split_covers_every_device_once_and_is_stable():
    ids = ["gw-%03d" % i for i in range(137)]
    policy = WavePolicy()
    waves = policy.split(ids)
    flat = [d for w in waves for d in w]
    assert sorted(flat) == ids
    assert len(flat) == len(set(flat))
    assert [len(w) for w in waves] == [3, 11, 54, 69]  # cumulative 2%, 10%, 50%, 100% of 137
    assert policy.split(list(reversed(ids))) == waves  # order of input does not matter


def test_wave_policy_rejects_bad_waves():
    for waves in ((0.5, 0.4, 1.0), (0.1, 0.9), (0.0, 1.0)):
        with pytest.raises(ValueError):
            WavePolicy(waves=waves)


def test_judge_wave_halts_on_failures_and_missing_acks():
    policy = WavePolicy(max_failure_ratio=0.05, min_ack_ratio=0.9)
    ok = judge_wave(policy, WaveResult(stage=1, wave=1, devices=100, applied=96, rolled_back=4))
    assert not ok.halted
    bad = judge_wave(policy, WaveResult(stage=1, wave=1, devices=100, applied=94, rolled_back=6))
    assert bad.halted and "failed" in bad.why
    silent = judge_wave(policy, WaveResult(stage=1, wave=1, devices=10, applied=8, unanswered=2))
    assert silent.halted and "acknowledged" in silent.why


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


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError):
        profile("nope")
    assert "default" in PROFILES


def _small(prof, devices=40, soak_ms=300_000):
    # a gateway serves 0.5 calls/s, so its 100-sample verdict needs ~200 s at a stage
    return SimSettings(devices=devices, seed=3, profile=prof, soak_ms=soak_ms)


def test_clean_fleet_completes_every_stage():
    result = run(_small(PROFILES["clean"], devices=24))
    assert result["outcome"].startswith("completed"), result["outcome"]
    assert result["final_stages"] == [0, 0, 0, 0, 24]
    assert result["consistent"]
    assert result["auto_rollbacks"] == 0
    assert result["events"]["migration.stage_enabled"] == 24 * 4


def test_bad_cohort_rolls_itself_back_and_halts_the_rollout():
    prof = FaultProfile(name="t", cohorts=(BadCohort(fraction=0.25, from_stage=3,
                                                     error_rate=0.3),))
    result = run(_small(prof, devices=40))
    assert result["outcome"].startswith("halted at stage 3"), result["outcome"]
    assert result["auto_rollbacks"] >= 1
    assert result["events"].get("migration.rollback", 0) >= 1
    # the halt sends every wave that reached stage 3 back to stage 2; nothing stays above
    assert result["final_stages"][3] == 0 and result["final_stages"][4] == 0
    assert result["consistent"]


def test_power_cuts_and_an_outage_leave_every_device_consistent():
    prof = FaultProfile(name="t", power_cut_rate=0.2, broker_outages=((100_000, 200_000),))
    result = run(_small(prof, devices=30))
    assert result["power_cuts"] > 0
    # the stores said what they recovered, into the report rather than onto the terminal
    assert result["store_log_lines"] > 0 and result["store_log_tail"]
    assert result["consistent"], result["problems"]
    assert "broker down" in [i["event"] for i in result["incidents"]]


def test_cli_writes_json_and_html_reports(tmp_path, capsys):
    prefix = str(tmp_path / "r")
    rc = cli_main(["sim", "--devices", "12", "--profile", "clean", "--soak", "30",
                   "--report", prefix])
    out = capsys.readouterr().out
    assert rc == 0
    assert "outcome: completed" in out
    report = json.loads(open(prefix + ".json").read())
    assert report["final_stages"][-1] == 12
    assert "<svg" in open(prefix + ".html").read()


def test_consistency_check_catches_flash_that_disagrees_with_memory():
    from sim.fleet import Simulation

    sim = Simulation(_small(PROFILES["clean"], devices=3))
    assert sim.check_consistency() == []
    dev = sim.devices[1]
    dev.control.store.commit({"ctl.stage": 3})  # flash says 3, the device still runs 0
    problems = sim.check_consistency()
    assert len(problems) == 1 and problems[0].startswith(dev.device_id)
