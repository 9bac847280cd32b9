"""firmware_shim.unix_server finds the fleetstage group in /etc/group, without NSS."""
from firmware_shim.unix_server import local_group_id


def test_local_group_id_reads_the_group_file(tmp_path):
    group = tmp_path / "group"
    group.write_text("root:x:0:\nfleetstage-old:x:998:\nfleetstage:x:997:pi\nbroken:x\n")
    assert local_group_id("fleetstage", str(group)) == 997
    assert local_group_id("nobody-here", str(group)) is None
    assert local_group_id("broken", str(group)) is None
    assert local_group_id("fleetstage", str(tmp_path / "missing")) is None
