"""The orchestrator core on its own: decisions out for acks, statuses, events and time in.

A tiny in-test fleet answers each Send the way real agents do (ack applied or
rejected, status at the new stage, an automatic rollback event when its
cohort breaks); the end-to-end tests over mosquitto are in test_rollout_cmd.py.
"""
import itertools

from tools import waves as W
from tools.orchestrator import (
    Finished,
    Notice,
    Orchestrator,
    Retain,
    RolloutSpec,
    Send,
    Wait,
)
from tools.waves import DeviceInfo


class Fleet:
    """Devices that obey: stage per device, plus rules for who fails and how."""

    def __init__(self, n=40, bad_hw=None, bad_from_stage=3, silent=(), reject=()):
        self.stage = {"gw-%02d" % i: 0 for i in range(n)}
        self.hw = {d: ("rev-b" if bad_hw and i < bad_hw else "rev-a")
                   for i, d in enumerate(self.stage)}
        self.bad_from = bad_from_stage
        self.silent, self.reject = set(silent), set(reject)
        self.seq = itertools.count(1000)
        self.log = []           # (key, op, args, devices) of every publish

    def infos(self, groups=None):
        return {d: DeviceInfo(groups=tuple((groups or {}).get(d, ())), hw=self.hw[d],
                              online=True, stage=s) for d, s in self.stage.items()}

    def drive(self, orch, now=0.0, limit=10_000, stop_on=None):
        """Run the orchestrator to its end; return (finished, notices)."""
        notices = []
        for _ in range(limit):
            for d in orch.step(now):
                if isinstance(d, Finished):
                    return d, notices
                if isinstance(d, Notice):
                    notices.append(d)
                elif isinstance(d, Wait):
                    now = max(now + 0.5, min(d.until, now + 5))
                elif isinstance(d, (Send, Retain)):
                    cid = d.command_id or "c%d" % next(self.seq)
                    seq = d.seq or next(self.seq)
                    orch.sent(d.key, cid, seq, 0, now)
                    self.log.append((d.key, getattr(d, "op", "desired"), getattr(d, "args", {}),
                                     list(d.devices)))
                    if isinstance(d, Send):
                        self.answer(orch, d, cid, seq, now)
                    if stop_on and stop_on(d):
                        return None, notices
        raise AssertionError("the orchestrator never finished")

    def answer(self, orch, send, cid, seq, now):
        for dev in send.devices:
            if dev in self.silent:
                continue
            if dev in self.reject:
                orch.on_ack(dev, {"id": cid, "result": "rejected", "reason": "not_ready"}, now)
                continue
            self.stage[dev] = send.args["stage"]
            orch.on_ack(dev, {"id": cid, "result": "applied", "seq": seq}, now)
            orch.on_status(dev, {"stage": self.stage[dev], "online": True}, now)
            if self.hw[dev] == "rev-b" and self.stage[dev] >= self.bad_from:
                self.stage[dev] -= 1
                orch.on_event(dev, "migration.rollback", {
                    "automatic": True, "from": self.stage[dev] + 1, "to": self.stage[dev],
                    "violations": [{"metric": "error_rate"}]}, now)
                orch.on_status(dev, {"stage": self.stage[dev], "online": True}, now)


def spec(**kw):
    base = dict(to_stage=4, waves=W.parse_waves("10%,50%,100%"), ack_timeout_s=10,
                soak_s={1: 30, 2: 30, 3: 30, 4: 30})
    base.update(kw)
    return RolloutSpec(**base)


def test_a_healthy_fleet_completes_every_wave_of_every_stage():
    fleet = Fleet(40)
    orch = Orchestrator(spec(), fleet.infos())
    done, notices = fleet.drive(orch)
    assert done.outcome == "completed"
    assert set(fleet.stage.values()) == {4}
    assert [(r.stage, r.wave, r.decision) for r in orch.results] == [
        (s, w, "advance") for s in range(1, 5) for w in range(1, 4)]
    migrates = [x for x in fleet.log if x[1] == "migrate"]
    assert len(migrates) == 12 and sum(len(x[3]) for x in migrates) == 4 * 40


def test_a_bad_hardware_cohort_halts_at_stage_3_names_it_and_rolls_back():
    fleet = Fleet(40, bad_hw=5)
    orch = Orchestrator(spec(waves=W.parse_waves("25%,100%")), fleet.infos())
    done, notices = fleet.drive(orch)
    assert done.outcome == "halted"
    halted = orch.results[-1]
    assert halted.stage == 3 and halted.decision == "halt"
    assert done.blamed["cohort"] == "rev-b" and done.blamed["dimension"] == "hw"
    assert done.blamed["failed"] == done.blamed["devices"]
    assert "rev-b:" in halted.why and "others: 0 of" in halted.why
    assert halted.cohorts["by_reason"] == {"health:error_rate": halted.failed}
    assert set(fleet.stage.values()) == {2}
    assert fleet.log[-2][1] == "rollback" and fleet.log[-1][2] == {}  # then the retained state


def test_silent_devices_fail_the_wave_after_the_per_device_timeout():
    fleet = Fleet(20, silent={"gw-03", "gw-07", "gw-11"})
    orch = Orchestrator(spec(waves=W.parse_waves("100%"), error=W.parse_threshold("2")),
                        fleet.infos())
    done, _ = fleet.drive(orch)
    assert done.outcome == "halted"
    r = orch.results[0]
    assert (r.stage, r.silent, r.failed) == (1, 3, 3) and r.reasons == {"silent": 3}


def test_two_silent_devices_within_a_count_threshold_of_two_pass():
    fleet = Fleet(20, silent={"gw-03", "gw-07"})
    orch = Orchestrator(spec(waves=W.parse_waves("100%"), error=W.parse_threshold("2"),
                             success=0.8, to_stage=1), fleet.infos())
    done, _ = fleet.drive(orch)
    assert done.outcome == "completed" and orch.results[0].silent == 2


def test_on_failure_pause_then_resume_continues_with_the_next_wave():
    fleet = Fleet(20, reject={"gw-01"})
    waves = W.parse_waves("10%,100%")
    s = spec(waves=waves, on_failure="pause", to_stage=1, error=W.parse_threshold("0"))
    orch = Orchestrator(s, fleet.infos())
    first = W.plan_waves(waves, fleet.infos())[0]
    fleet.reject = set(first[:1])
    done, _ = fleet.drive(orch)
    assert done.outcome == "paused" and orch.results[-1].decision == "pause"
    saved = orch.state()
    again = Orchestrator(s, fleet.infos(), state=saved)
    again.resume_paused()
    fleet.reject = set()
    done, _ = fleet.drive(again)
    assert done.outcome == "completed"
    # the device the paused wave failed was left where it was: the completion says so
    assert done.reason.endswith("left behind by the paused wave: %s" % first[0]), done.reason
    sent_devices = [d for x in fleet.log if x[1] == "migrate" for d in x[3]]
    assert len(sent_devices) == len(set(sent_devices)) == 20  # no wave sent twice


def test_an_emergency_rollback_event_preempts_and_nothing_is_raised_after_it():
    fleet = Fleet(20)
    orch = Orchestrator(spec(), fleet.infos())
    fleet.drive(orch, stop_on=lambda d: isinstance(d, Send) and d.args.get("stage") == 2)
    before = len(fleet.log)
    orch.on_event("gw-05", "migration.emergency_rollback", {"reason": "pager"}, 100.0)
    done, notices = fleet.drive(orch, now=100.0)
    assert done.outcome == "preempted" and "emergency rollback" in done.reason
    assert len(fleet.log) == before  # not one more publish
    assert all(r.decision == "advance" for r in orch.results)  # not counted as a failed wave


def test_a_newer_foreign_command_preempts_an_older_one_does_not():
    fleet = Fleet(10)
    orch = Orchestrator(spec(), fleet.infos())
    fleet.drive(orch, stop_on=lambda d: isinstance(d, Send))
    first_seq = min(c["seq"] for c in orch.state()["commands"].values())
    orch.on_command("old", first_seq - 1, "migrate", ["gw-01"], 1.0)
    orch.on_ack("gw-01", {"id": "old", "result": "applied", "seq": first_seq - 1}, 1.0)
    assert orch.outcome is None
    orch.on_ack("gw-01", {"id": "theirs", "result": "applied", "seq": first_seq + 50}, 1.0)
    assert orch.outcome == "preempted"


def test_rejections_count_even_when_the_status_shows_the_stage():
    """Item 4: judged on this rollout's own acks, not on the stage a status shows."""
    fleet = Fleet(10)
    orch2 = Orchestrator(spec(waves=W.parse_waves("100%"), to_stage=1), fleet.infos())
    orch2.sent(orch2.step(0)[-1].key, "mine", 5, 0, 0.0)
    for d in fleet.stage:
        orch2.on_ack(d, {"id": "mine", "result": "rejected", "reason": "replayed"}, 1.0)
        orch2.on_status(d, {"stage": 1, "online": True, "extra": {"guard_seq": 5}}, 1.0)
    decisions = orch2.step(1.0)
    assert orch2.results[0].rejected == 10 and orch2.results[0].reasons == {"replayed": 10}
    assert any(isinstance(d, Send) and d.op == "rollback" for d in decisions)


def test_a_restart_mid_wave_resends_the_same_command_never_a_new_one():
    fleet = Fleet(20)
    s = spec(to_stage=2)
    orch = Orchestrator(s, fleet.infos())
    fleet.drive(orch, stop_on=lambda d: isinstance(d, Send) and d.key == "s2w1")
    saved = orch.state()
    resumed = Orchestrator(s, fleet.infos(), state=saved)
    first = [d for d in resumed.step(50.0) if isinstance(d, Send)]
    assert first and first[0].command_id == saved["commands"]["s2w1"]["id"]
    assert first[0].seq == saved["commands"]["s2w1"]["seq"]


def test_a_state_for_another_target_or_fleet_is_refused_with_the_reason():
    fleet = Fleet(10)
    orch = Orchestrator(spec(), fleet.infos())
    saved = orch.state()
    assert Orchestrator.mismatch(spec(), fleet.infos(), saved) is None
    assert "not --to-stage 3" in Orchestrator.mismatch(spec(to_stage=3), fleet.infos(), saved)
    fewer = dict(list(fleet.infos().items())[:8])
    assert "fleet changed" in Orchestrator.mismatch(spec(), fewer, saved)


def test_waves_mix_groups_and_percentages_and_cover_every_device_once():
    fleet = Fleet(40)
    groups = {"gw-00": ["canary"], "gw-01": ["canary"], "gw-02": ["canary"]}
    specs = W.parse_waves("group:canary,10%,50%,100%")
    plan = W.plan_waves(specs, fleet.infos(groups))
    assert plan[0] == ["gw-00", "gw-01", "gw-02"]
    assert [len(w) for w in plan] == [3, 1, 16, 20]
    assert sorted(d for w in plan for d in w) == sorted(fleet.stage)


def test_a_group_wave_no_device_is_in_is_refused_before_anything_is_sent():
    # a typo in the canary's name would make wave 1 empty and wave 2 the whole fleet
    import pytest
    fleet = Fleet(10)
    with pytest.raises(W.WaveError, match="no device is in group 'canry'"):
        Orchestrator(spec(waves=W.parse_waves("group:canry,100%")), fleet.infos(
            {"gw-00": ["canary"]}))
    assert fleet.log == []
    Orchestrator(spec(waves=W.parse_waves("group:canary,100%")), fleet.infos(
        {"gw-00": ["canary"]}))  # the group exists: accepted


def test_bad_wave_lists_and_thresholds_say_what_is_wrong():
    import pytest
    for text, words in (("10%,5%,100%", "must grow"), ("10%,50%", "last wave must be 100%"),
                        ("ten", "neither"), ("group:", "group:NAME")):
        with pytest.raises(W.WaveError, match=words):
            W.parse_waves(text)
    assert W.parse_threshold("3") == W.Threshold(3.0, True)
    assert W.parse_threshold("5%") == W.Threshold(0.05)
    with pytest.raises(W.WaveError):
        W.parse_threshold("150%")


def test_the_help_of_rollout_flags_and_clear_quarantine_documents_exit_codes(capsys):
    import pytest

    from tools.cli import main
    for argv, words in ((["rollout", "--help"], "5  preempted"),
                        (["flags", "set", "--help"], "exit codes"),
                        (["flags", "list", "--help"], "--target"),
                        (["clear-quarantine", "--help"], "exit codes"),
                        (["sim", "--help"], "--waves")):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert words in out, (argv, out[-400:])
