"""tools/check_legacy.py: the stage-4 static check for legacy global-state paths (CPython)."""
import json
import os

from tools import check_legacy


def codes(source, strict=False):
    return [(f.line, f.code) for f in check_legacy.check_source(source, "x.py", strict)]


def test_imports_of_the_legacy_module_are_found():
    src = (
        "import agent.services.legacy_state\n"
        "import agent.services.legacy_state as ls\n"
        "from agent.services import legacy_state\n"
        "from agent.services.legacy_state import new_owner\n"
        "from agent.services import registry\n"
        "import agent.services\n"
    )
    assert codes(src) == [(1, "LEG001"), (2, "LEG001"), (3, "LEG001"), (4, "LEG001")]


def test_accessors_and_the_hidden_dict_are_found_however_reached():
    src = (
        "from agent.services.legacy_state import pdict_put as put\n"
        "x = ls.pdict_get(owner, 'k')\n"
        "y = anything.pdict_setdefault\n"
        "pdict_erase(o, 'k')\n"
        "z = ls._PDICT[1]\n"
    )
    # an import from the module is one finding (LEG001), even when it names an accessor
    assert codes(src) == [(1, "LEG001"), (2, "LEG002"), (3, "LEG002"), (4, "LEG002"),
                          (5, "LEG003")]
    assert codes("from elsewhere import pdict_put\n") == [(1, "LEG002")]


def test_mentions_in_strings_and_comments_are_not_hits():
    src = (
        "# we used to call pdict_put here\n"
        "doc = 'pdict_get and _PDICT and agent.services.legacy_state'\n"
        "def pdict_get_wrapper():\n"
        "    return 1\n"
    )
    assert codes(src) == []


def test_pragma_skips_a_line():
    src = "ls.pdict_get(o, 'k')  # legacy-ok: compatibility shim until stage 4 cleanup\n" \
          "ls.pdict_get(o, 'k')  # not pragma'd\n"
    assert codes(src) == [(2, "LEG002")]


def test_global_statements_only_in_strict_mode_and_only_in_functions():
    src = (
        "global top\n"
        "def f():\n"
        "    global counter\n"
        "    counter += 1\n"
        "async def g():\n"
        "    def inner():\n"
        "        global a, b\n"
    )
    assert codes(src) == []
    found = check_legacy.check_source(src, "x.py", strict=True)
    assert [(f.line, f.code) for f in found] == [(3, "LEG004"), (7, "LEG004")]
    assert "a, b" in found[1].message


def test_unparseable_file_is_a_finding():
    assert codes("def broken(:\n") == [(1, "LEG000")]


def _tree(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "clean.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "shim.py").write_text("from agent.services import legacy_state\n")
    (tmp_path / "pkg" / "app.py").write_text("v = legacy_state.pdict_get(1, 'k')\n")
    (tmp_path / "pkg" / "notes.txt").write_text("pdict_put\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "dep.py").write_text("pdict_put(1, 2, 3)\n")
    return str(tmp_path / "pkg")


def test_main_exit_codes_and_allow(tmp_path, capsys):
    root = _tree(tmp_path)
    assert check_legacy.main([root]) == 1
    out = capsys.readouterr().out
    assert "app.py:1:5: LEG002" in out and "shim.py:1:1: LEG001" in out
    assert "2 finding(s) in 2 file(s); 3 file(s) checked" in out
    allow = [root, "--allow", "*/shim.py", "--allow", "*/app.py"]
    assert check_legacy.main(allow) == 0
    assert "0 finding(s)" in capsys.readouterr().out
    assert check_legacy.main([os.path.join(root, "clean.py")]) == 0
    capsys.readouterr()
    assert check_legacy.main([str(tmp_path / "missing")]) == 2


def test_skips_virtualenvs_and_reports_json(tmp_path, capsys):
    _tree(tmp_path)
    assert check_legacy.main([str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["files_checked"] == 3  # .venv/dep.py is not ours to check
    assert sorted(f["code"] for f in report["findings"]) == ["LEG001", "LEG002"]


def test_registers_as_a_cli_subcommand(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    check_legacy.register(parser.add_subparsers(dest="command"))
    root = _tree(tmp_path)
    args = parser.parse_args(["check-legacy", root, "--allow", "*/app.py", "--allow", "*/shim.py"])
    assert args.handler(args) == 0


def test_this_repository_uses_legacy_paths_only_in_the_services_layer():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    findings, checked = check_legacy.check_paths(
        [os.path.join(here, d) for d in ("agent", "sim", "tools", "firmware_shim")])
    assert checked > 10
    outside = [f for f in findings
               if os.sep + os.path.join("agent", "services") + os.sep not in f.path]
    assert outside == []
