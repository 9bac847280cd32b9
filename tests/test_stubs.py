"""The core's .pyi stubs say what the code says: the same public names, the same parameters.

A stub that drifts from its module would let mypy pass callers the module refuses
(or the reverse), so each stub beside a module in agent/ is held to it here.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TYPE_ONLY = {"Json", "KeyCache", "Log", "Platform"}  # aliases and protocols of the stubs


def _type_only(path):
    """The stub's TypedDict classes: result shapes for mypy, plain dicts on the device."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {n.name for n in tree.body if isinstance(n, ast.ClassDef)
            and any(getattr(b, "id", "") == "TypedDict" for b in n.bases)}


def _stubbed():
    for dirpath, _dirs, files in os.walk(os.path.join(ROOT, "agent")):
        for name in files:
            if name.endswith(".pyi"):
                yield os.path.join(dirpath, name[:-1]), os.path.join(dirpath, name)


def _public(path, follow_imports=False):
    """{name: parameter names or None} for the top level and classes of a module."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out = {}

    def args(fn):
        a = fn.args
        return [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]

    constants = {t.id: ast.literal_eval(node.value) for node in tree.body
                 if isinstance(node, ast.Assign) for t in node.targets
                 if isinstance(t, ast.Name) and t.id in ("_LAZY_MODULE", "_LAZY_NAMES")}
    imported = {}  # name -> the agent module's path it comes from
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agent"):
            for alias in node.names:
                imported[alias.asname or alias.name] = os.path.join(
                    ROOT, *node.module.split(".")) + ".py"
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            out[node.name] = args(node)
        elif isinstance(node, ast.ClassDef):
            out[node.name] = None
            for base in node.bases:  # a stub lists what its class inherits from agent/ code
                name = getattr(base, "id", "")
                if name in imported and os.path.exists(imported[name]):
                    for key, value in _public(imported[name]).items():
                        if key.startswith(name + "."):
                            out[node.name + key[len(name):]] = value
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef) and (sub.name == "__init__"
                                                         or not sub.name.startswith("_")):
                    out[node.name + "." + sub.name] = args(sub)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and not t.id.startswith("_") and t.id != "__all__":
                    out[t.id] = None
        elif follow_imports and isinstance(node, ast.ImportFrom) and node.module:
            _follow(node.module, [alias.name for alias in node.names], out)
    if "_LAZY_MODULE" in constants:  # the names its module __getattr__ loads
        _follow(constants["_LAZY_MODULE"], constants["_LAZY_NAMES"], out)
    return out


def _follow(module, names, out):
    """What a package door takes from its module `module`: `names`, with their members."""
    sub = os.path.join(ROOT, *module.split(".")) + ".py"
    if os.path.exists(sub):
        theirs = _public(sub)
        for name in names:
            for key, value in theirs.items():
                if key == name or key.startswith(name + "."):
                    out[key] = value


def test_every_stub_matches_its_module():
    pairs = list(_stubbed())
    assert len(pairs) >= 4, pairs
    stubbed = {os.path.relpath(s, ROOT) for s, _ in pairs}
    core = ("control", "store", "runtime", "health", "config", "agent_config", "plan", "flags",
            "apps", "app_flags", "health_config", "flash_store", "boot", "errors", "desired",
            "transitions")
    assert {"agent/%s.py" % m for m in core} | {"agent/protocol/__init__.py"} <= stubbed, stubbed
    for source, stub in pairs:
        code = _public(source, follow_imports=source.endswith("__init__.py"))
        if source.endswith("__init__.py"):  # a package door: what __all__ lets out
            with open(source, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            exported = next(n for n in tree.body if isinstance(n, ast.Assign)
                            and getattr(n.targets[0], "id", "") == "__all__")
            names = {e.value for e in exported.value.elts}
            code = {k: v for k, v in code.items() if k.split(".")[0] in names}
        skip = TYPE_ONLY | _type_only(stub)
        typed = {k: v for k, v in _public(stub).items() if k.split(".")[0] not in skip}
        assert sorted(typed) == sorted(code), (stub, sorted(set(typed) ^ set(code)))
        for name, params in code.items():
            assert typed[name] == params, (stub, name, typed[name], params)
