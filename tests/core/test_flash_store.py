"""agent.flash_store on firmware_shim.flash.RamFlash (a NOR chip in RAM).

Runs on CPython and MicroPython (no pytest imports). The power-loss proof
cuts the power at every program and every erase of a scenario that fills
and reclaims pages several times, then boots the store again from the chip.
"""
from agent.flash_store import FlashStore
from agent.store import StoreValueError
from firmware_shim.flash import PowerCut, RamFlash

FLAGS = ["use_ets_agent_registry", "enable_migration_monitoring", "use_logger_error_context",
         "use_genserver_telemetry", "use_genserver_span_management", "use_ets_sampled_events",
         "enforce_no_process_dict"]


def scenario(n=140):
    """Flag flips, stage changes (several keys and a history entry), a delete now and then."""
    out = []
    for i in range(n):
        if i % 7 == 3:
            stage = i % 5
            out.append({"stage": stage, "seq": 1000 + i, FLAGS[i % 7]: i % 2 == 0,
                        "history/%d" % (i % 6): {"op": "migrate", "to": stage, "at": i * 977}})
        elif i % 11 == 5:
            out.append({"history/%d" % (i % 6): None})
        else:
            out.append({FLAGS[i % 7]: i % 3 != 0})
    return out


def _apply(state, changes):
    for k, v in changes.items():
        if v is None:
            state.pop(k, None)
        else:
            state[k] = v


def _state(store):
    return dict(store.items())


def test_commits_survive_a_reboot_and_noops_write_nothing():
    flash = RamFlash(blocks=4, block_size=1024)
    store = FlashStore(flash)
    assert store.commit({"stage": 1, "a": True}) == 1
    programmed = flash.programmed
    assert store.commit({"stage": 1}) is None and flash.programmed == programmed
    store.commit({"a": None, "b": [1, 2]})
    again = FlashStore(flash)
    assert _state(again) == {"stage": 1, "b": [1, 2]}
    assert again.commit({"c": 1}) > store.seq  # numbers never go back


def test_a_one_flag_commit_programs_48_bytes_and_erases_once_per_page():
    flash = RamFlash(blocks=8, block_size=4096)
    store = FlashStore(flash)
    for name in FLAGS:
        store.commit({name: False})
    store.commit({"stage": 0, "history/0": {"op": "migrate", "to": 0, "at": 0}})
    before_p, before_e = flash.programmed, flash.erases
    n = 2000
    for i in range(n):
        store.commit({FLAGS[i % 7]: i % 2 == 0})
    per_commit = (flash.programmed - before_p) / n
    assert per_commit <= 64, per_commit
    assert (flash.erases - before_e) * 64 <= n, flash.erases - before_e
    assert _state(FlashStore(flash)) == _state(store)


def test_a_commit_larger_than_a_page_is_refused_and_changes_nothing():
    flash = RamFlash(blocks=3, block_size=512)
    store = FlashStore(flash)
    store.commit({"a": 1})
    try:
        store.commit({"big": "x" * 600})
    except StoreValueError:
        pass
    else:
        raise AssertionError("a record larger than a page was taken")
    assert _state(FlashStore(flash)) == {"a": 1}


def _run(flash, commits, cut=None, last=False):
    """Commit until done or the power goes; -> (acknowledged state, state in flight, cut?)."""
    acked = {}
    if cut is not None:
        flash.cut_at(cut, last)
    try:
        store = FlashStore(flash)
        for changes in commits:
            inflight = dict(acked)
            _apply(inflight, changes)
            store.commit(changes)
            acked = inflight
    except PowerCut:
        flash.uncut()
        return acked, inflight, True
    flash.uncut()
    return acked, acked, False


def test_a_power_cut_at_every_program_and_erase_leaves_a_consistent_store():
    commits = scenario()
    probe = RamFlash(blocks=4, block_size=512)
    _run(probe, commits)
    total = probe.ops
    assert probe.erases >= 6  # the scenario fills and reclaims pages, again and again
    for cut in range(1, 2 * total + 1):
        last = cut > total  # the second round lands each cut operation's second half
        flash = RamFlash(blocks=4, block_size=512)
        acked, inflight, was_cut = _run(flash, commits, (cut - 1) % total + 1, last)
        assert was_cut, cut
        store = FlashStore(flash)  # the reboot
        got = _state(store)
        assert got == acked or got == inflight, (cut, got, acked, inflight)
        # and the store goes on: more commits, another reboot, still whole
        for changes in commits[:25]:
            _apply(got, changes)
            store.commit(changes)
        assert _state(FlashStore(flash)) == got, cut


def test_a_power_cut_during_recovery_is_survived_too():
    commits = scenario()
    probe = RamFlash(blocks=4, block_size=512)
    _run(probe, commits)
    for cut in range(1, probe.ops + 1, 3):
        flash = RamFlash(blocks=4, block_size=512)
        acked, inflight, _ = _run(flash, commits, cut)
        # the reboot itself may erase (a page left dead by the cut): cut that too
        for second in (1, 2):
            flash.cut_at(second)
            try:
                FlashStore(flash)
            except PowerCut:
                pass
            flash.uncut()
        got = _state(FlashStore(flash))
        assert got == acked or got == inflight, (cut, got)


def test_a_board_whose_config_names_a_partition_keeps_its_state_there():
    """agent.boot with the board's platform: state_partition -> FlashStore on that device."""
    import json

    from corekit import tmpdir
    from test_runtime import DEV, FLEET_KEY
    from test_runtime_device import LoopLink, StandInBoard

    from agent import boot
    from agent import protocol as P
    from agent.flash_store import FlashStore as Flash
    from firmware_shim.files import FileSystem, join
    from firmware_shim.machine import ManualClock

    flash = RamFlash(blocks=8, block_size=4096)

    class PartitionBoard(StandInBoard):
        def open_partition(self, name):
            assert name == "fleetstage"
            return flash

    d = tmpdir("partition")
    with open(join(d, "device.key"), "wb") as f:
        f.write(P.format_key_file(P.derive_device_key(FLEET_KEY, DEV), "device", DEV))
    config = join(d, "config.json")
    with open(config, "w") as f:
        f.write(json.dumps({"device_id": DEV, "fleet": "fl", "broker": "mqtt://127.0.0.1:1",
                            "key_file": join(d, "device.key"), "state_dir": join(d, "state"),
                            "state_partition": "fleetstage", "environment": "dev"}))
    for boot_number in (1, 2):
        clock = ManualClock()
        agent = boot.build(config, PartitionBoard(LoopLink(clock), clock))
        assert isinstance(agent.control.store, Flash)
        if boot_number == 1:
            agent.control.migrate_to_stage(1)
        else:
            assert agent.control.stage == 1 and agent.control.flags.enabled(
                "use_ets_agent_registry")
        agent.close()
    assert flash.programmed > 0 and not FileSystem().exists(join(d, "state"))


def test_a_file_partition_keeps_the_state_across_reopen():
    """FileFlash: the unix port's stand-in for a board's partition (file:PATH:BYTES)."""
    from corekit import tmpdir

    from firmware_shim.files import join
    from firmware_shim.flash import board_partition

    path = join(tmpdir("filepart"), "state.part")
    store = FlashStore(board_partition("file:%s:%d" % (path, 4 * 4096)))
    for i in range(300):  # fills and reclaims its pages
        store.commit({FLAGS[i % 7]: i % 3 == 0, "n": i})
    again = FlashStore(board_partition("file:%s:%d" % (path, 4 * 4096)))
    assert _state(again) == _state(store) and again.get("n") == 299
    for bad in ("file:%s" % path, "file::4096", "file:%s:many" % path):
        try:
            board_partition(bad)
        except OSError:
            continue
        raise AssertionError("accepted " + bad)


def test_the_store_on_a_chip_that_programs_whole_pages():
    """rp2's flash programs 256-byte pages: AlignedPrograms widens each program to them."""
    from firmware_shim.flash import AlignedPrograms

    class PageChip(RamFlash):
        def writeblocks(self, block, buf, offset=None):
            if offset is not None and (offset % 256 or len(buf) % 256):
                raise AssertionError("unaligned program at %d (%d bytes)" % (offset, len(buf)))
            RamFlash.writeblocks(self, block, buf, offset)

    chip = PageChip(blocks=4, block_size=4096)
    store = FlashStore(AlignedPrograms(chip, 256))
    for i in range(400):  # fills and reclaims pages
        store.commit({FLAGS[i % 7]: i % 3 == 0, "n": i})
    assert _state(FlashStore(AlignedPrograms(chip, 256))) == _state(store)
    commits = scenario()
    for cut in range(1, 120, 7):  # a cut page program still leaves a consistent store
        chip = PageChip(blocks=4, block_size=512)
        acked, inflight, _ = _run(AlignedChip(chip), commits, cut)
        got = _state(FlashStore(AlignedPrograms(chip, 256)))
        assert got == acked or got == inflight, cut


class AlignedChip:
    """AlignedPrograms over a RamFlash that still answers cut_at/uncut (for _run)."""

    def __init__(self, chip):
        from firmware_shim.flash import AlignedPrograms

        self.chip = chip
        self.dev = AlignedPrograms(chip, 256)
        self.readblocks, self.writeblocks, self.ioctl = (
            self.dev.readblocks, self.dev.writeblocks, self.dev.ioctl)

    def cut_at(self, n, last=False):
        self.chip.cut_at(n, last)

    def uncut(self):
        self.chip.uncut()
