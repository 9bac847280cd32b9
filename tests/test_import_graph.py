"""The import graph of the project's packages: no cycles, and the shim below the core.

Reads every module of agent/, firmware_shim/, tools/, sim/ and bench/ with ast
(nothing is imported, so a module's import-time side effects cannot hide an
edge) and counts every import, including the deferred ones inside functions:
a cycle hidden behind a deferred import is still a cycle.

Rules:
  - no cycle between modules;
  - no cycle between the packages agent, firmware_shim, tools and sim;
  - firmware_shim (the platform layer) never imports agent (the core).
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("agent", "firmware_shim", "tools", "sim", "bench")
LAYERED = ("agent", "firmware_shim", "tools", "sim")


def project_modules(root=ROOT):
    """{dotted module name: file path} for every .py file of the packages."""
    modules = {}
    for pkg in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, pkg)):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
            rel = os.path.relpath(dirpath, root).replace(os.sep, ".")
            for name in filenames:
                if not name.endswith(".py"):
                    continue
                mod = rel if name == "__init__.py" else rel + "." + name[:-3]
                modules[mod] = os.path.join(dirpath, name)
    return modules


def _resolve(name, modules):
    """The longest project module that `name` (a.b.c) is or lies inside, else None."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in modules:
            return cand
        parts.pop()
    return None


def imports_of(mod, path, modules):
    """The project modules that `mod` imports (anywhere in the file)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_pkg = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(_resolve(alias.name, modules))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = mod.split(".") if is_pkg else mod.split(".")[:-1]
                here = here[:len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            for alias in node.names:
                # `from agent import protocol` imports the module agent.protocol
                found.add(_resolve(base + "." + alias.name, modules) or _resolve(base, modules))
    found.discard(None)
    found.discard(mod)
    return found


def import_graph(root=ROOT):
    modules = project_modules(root)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def strongly_connected(graph):
    """Tarjan's algorithm: the components with more than one node (the cycles)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def package_graph(graph):
    pkgs = {}
    for mod, deps in graph.items():
        top = mod.split(".")[0]
        if top not in LAYERED:
            continue
        for dep in deps:
            other = dep.split(".")[0]
            if other != top and other in LAYERED:
                pkgs.setdefault(top, set()).add(other)
    return pkgs


def violations(graph):
    """Every broken rule, as sorted readable lines."""
    lines = []
    for comp in strongly_connected(graph):
        lines.append("module cycle: " + " <-> ".join(comp))
    for comp in strongly_connected(package_graph(graph)):
        lines.append("package cycle: " + " <-> ".join(comp))
    for mod, deps in sorted(graph.items()):
        if mod.split(".")[0] == "firmware_shim":
            for dep in sorted(deps):
                if dep.split(".")[0] == "agent":
                    lines.append(f"firmware_shim imports agent: {mod} -> {dep}")
    return lines


# Exact match: a new violation fails, and so does a fixed one still listed here.
KNOWN: list = []


def test_no_import_cycles_and_shim_below_core():
    found = violations(import_graph())
    assert found == KNOWN, "\n".join(found)


PLATFORM_CLASSES = ("FileSystem", "FolderFlash", "SystemClock", "PahoLink", "MicroLink")


def platform_objects_built_in_the_core(root=ROOT):
    """(module, class) for every call in agent/ that builds a real platform object."""
    found = []
    for mod, path in sorted(project_modules(root).items()):
        if mod.split(".")[0] != "agent":
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in PLATFORM_CLASSES:
                    found.append((mod, name))
    return found


def test_the_core_builds_no_platform_objects():
    # files, clocks and links are handed in (agent.boot's callers build them)
    assert platform_objects_built_in_the_core() == []


# -- the checker itself finds what it must (a tiny tree of its own) ---------

def _tree(tmp_path, files):
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return import_graph(str(tmp_path))


def test_checker_sees_a_cycle_hidden_in_a_function(tmp_path):
    graph = _tree(tmp_path, {
        "tools/a.py": "from tools.b import x\n",
        "tools/b.py": "def f():\n    from tools import a\n",
    })
    assert violations(graph) == ["module cycle: tools.a <-> tools.b"]


def test_checker_sees_the_shim_importing_the_core_and_a_package_cycle(tmp_path):
    graph = _tree(tmp_path, {
        "agent/core.py": "import firmware_shim.files\n",
        "firmware_shim/files.py": "x = 1\n",
        "firmware_shim/board.py": "from agent import core\n",
    })
    assert violations(graph) == [
        "package cycle: agent <-> firmware_shim",
        "firmware_shim imports agent: firmware_shim.board -> agent.core",
    ]


def test_checker_resolves_relative_imports(tmp_path):
    graph = _tree(tmp_path, {
        "agent/proto/__init__.py": "from ._wire import encode\n",
        "agent/proto/_wire.py": "from . import _keys\n",
        "agent/proto/_keys.py": "from .. import proto\n",
    })
    assert violations(graph) == [
        "module cycle: agent.proto <-> agent.proto._keys <-> agent.proto._wire"]


def test_checker_sees_a_platform_default_in_the_core(tmp_path):
    _tree(tmp_path, {"agent/store.py": "def f(fs=None):\n    return fs or FileSystem()\n"})
    assert platform_objects_built_in_the_core(str(tmp_path)) == [("agent.store", "FileSystem")]


def test_a_clean_tree_has_no_violations(tmp_path):
    graph = _tree(tmp_path, {
        "agent/core.py": "import firmware_shim.files\n",
        "firmware_shim/files.py": "import os\n",
        "tools/cli.py": "from agent import core\nimport sim.fleet\n",
        "sim/fleet.py": "from agent.core import x\n",
    })
    assert graph["tools.cli"] == {"agent.core", "sim.fleet"}
    assert violations(graph) == []


def test_sim_command_is_a_cli_plugin_not_a_tools_import():
    """`fleetstage sim` reaches the CLI through the distribution's entry points, so the
    only edge between the two packages runs sim -> tools (the orchestrator core)."""
    from tools import cli

    plugins = cli.plugin_command_modules()
    assert plugins == ["sim.cli"]
    parser = cli.build_parser()
    assert parser.parse_args(["sim", "--devices", "3"]).devices == 3
    assert not [m for m in cli.COMMAND_MODULES if not m.startswith("tools.")]
