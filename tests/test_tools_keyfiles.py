"""Key files are private from their first byte: `fleetstage keygen` and
`fleetstage install` never let the key sit in a file other users can read,
not even between the write and a later chmod; --force still replaces."""
import argparse
import os
import stat

import pytest

from agent import protocol as P
from tools import install_cmd, keygen


@pytest.fixture
def open_umask():
    old = os.umask(0)  # the worst case: nothing narrows the mode of a plain open()
    yield
    os.umask(old)


@pytest.fixture
def modes_at_fsync(monkeypatch):
    """The mode of every regular file at the moment its bytes are made durable."""
    seen = []
    real_fsync = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_size:
            seen.append(stat.S_IMODE(st.st_mode))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_keygen_new_file_is_0600_while_written(tmp_path, open_umask, modes_at_fsync):
    out = tmp_path / "fleet.key"
    keygen.write_key_file(str(out), P.format_key_file(P.new_fleet_key(), "fleet"))
    assert modes_at_fsync == [0o600]
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert P.parse_key_file(out.read_bytes()).kind == "fleet"


def test_keygen_force_replaces_a_world_readable_file_without_exposing_the_key(
        tmp_path, open_umask, modes_at_fsync):
    out = tmp_path / "fleet.key"
    out.write_bytes(b"old")
    os.chmod(out, 0o644)
    new = P.format_key_file(P.new_fleet_key(), "fleet")
    with pytest.raises(keygen.KeygenError):
        keygen.write_key_file(str(out), new)
    assert out.read_bytes() == b"old"
    del modes_at_fsync[:]
    keygen.write_key_file(str(out), new, force=True)
    assert modes_at_fsync == [0o600]
    assert out.read_bytes() == new
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.key"]  # no temp left


def test_install_writes_the_key_0600_from_the_start(tmp_path, open_umask, modes_at_fsync):
    key = tmp_path / "gw7.key"
    data = P.format_key_file(P.derive_device_key(P.new_fleet_key(), "gw7"), "device", "gw7")
    key.write_bytes(data)
    root = tmp_path / "root"
    args = argparse.Namespace(
        device_id="gw7", fleet="plant1", broker="mqtt://broker.local:1883", key=str(key),
        group=None, environment="prod", username=None, password=None, password_file=None,
        ca=None, user="root", exe="/opt/fs/bin/fleetstage", root=str(root), enable=False)
    assert install_cmd._run(args) == 0
    # config 0600, key 0600, unit 0644: each mode held while the bytes were written
    assert modes_at_fsync == [0o600, 0o600, 0o644]
    key_path = root / "etc/fleetstage/device.key"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert key_path.read_bytes() == data
    # a second install replaces the key (and leaves no temp files behind)
    assert install_cmd._run(args) == 0
    assert sorted(os.listdir(root / "etc/fleetstage")) == ["agent.json", "device.key"]
