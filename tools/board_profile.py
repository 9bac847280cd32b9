"""The board profile: the definitions a board never reaches, left out of its bundle.

A board runs main.py and nothing else: no operator side (encode_command,
seal, decode_report, select_devices, key generation), no console, no text
tables, no test clocks. Every module keeps its source for CPython and for the
core suite; only the copy `fleetstage bundle` compiles loses the functions,
methods and classes that nothing on the board can name. Each one is a
function object, its bytecode and its qstrs in a board's heap.

Reachability is by name, and conservative: a definition stays when its name
appears anywhere in the board's kept code, as a name, an attribute, a keyword
argument or an identifier-like string constant (CONTROL_OPS names the
control's methods as strings; getattr/hasattr take strings). The roots are
main.py, every statement of a module or class body that is not a def or class,
dunder methods, and the modules whose API is called by code that is not in
the bundle: agent.apps (a gateway application on the board imports it) and
agent.services (the stage-switched code paths the applications run).
Imports of a dropped name are dropped with it; `__all__` goes (a board never
star-imports). Dropped lines become blank lines, so a traceback's line numbers
on the board are the source's.
"""
from __future__ import annotations

import ast
import re

# modules whose every definition stays: their callers are not in the bundle
KEEP_WHOLE_PREFIXES = ("agent/apps.py", "agent/services/")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _names(nodes: list[ast.AST]) -> set[str]:
    """Every name a piece of code can reach others by (see the module docstring)."""
    out: set[str] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            out.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and _IDENT.match(node.value):
            out.add(node.value)
        stack.extend(ast.iter_child_nodes(node))
    return out


def _is_all(node: ast.stmt) -> bool:
    return isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)


class _Unit:
    """One def or class the profile may drop; `refs`: what keeping it keeps."""

    def __init__(self, rel: str, node: ast.AST, forced: bool, cls: ast.AST | None = None) -> None:
        self.rel, self.node, self.forced, self.cls = rel, node, forced, cls
        self.name = node.name  # type: ignore[attr-defined]
        if isinstance(node, ast.ClassDef):  # its own statements; methods are units
            self.refs = _names(node.bases + node.keywords + node.decorator_list + [
                s for s in node.body if not isinstance(s, _DEFS)])
        else:
            self.refs = _names([node])


def _module_name(rel: str) -> str:
    mod = rel[:-3].replace("/", ".")
    return mod[:-len(".__init__")] if mod.endswith(".__init__") else mod


def shake(sources: dict[str, str], roots: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """{rel path: source} -> ({rel path: board source}, [(rel path, dropped name)]).

    roots: the code the board starts from (main.py's text).
    """
    trees = {rel: ast.parse(text) for rel, text in sources.items()}
    live = _names([ast.parse(roots)])
    units: list[_Unit] = []
    for rel, tree in trees.items():
        whole = rel.startswith(KEEP_WHOLE_PREFIXES)
        for stmt in tree.body:
            if isinstance(stmt, _DEFS):
                units.append(_Unit(rel, stmt, whole))
                if isinstance(stmt, ast.ClassDef):
                    units.extend(_Unit(rel, m, whole or m.name.startswith("__"), stmt)
                                 for m in stmt.body if isinstance(m, _DEFS))
            elif not isinstance(stmt, (ast.Import, ast.ImportFrom)) and not _is_all(stmt):
                live |= _names([stmt])
    kept: set[int] = set()
    grew = True
    while grew:
        grew = False
        for unit in units:
            if id(unit.node) in kept or (unit.cls is not None and id(unit.cls) not in kept):
                continue  # a method counts only once its class is kept
            if unit.forced or unit.name in live:
                kept.add(id(unit.node))
                live |= unit.refs
                grew = True
    dropped_defs = {(_module_name(u.rel), u.name) for u in units
                    if id(u.node) not in kept and u.node in trees[u.rel].body}
    out = {}
    for rel, text in sources.items():
        out[rel] = _rewrite(text, trees[rel], kept, dropped_defs, rel)
    dropped = sorted((u.rel, u.name) for u in units if id(u.node) not in kept)
    return out, dropped


def _first_line(node: ast.AST) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno] + [d.lineno for d in decorators])  # type: ignore[attr-defined]


def _rewrite(text: str, tree: ast.Module, kept: set[int], dropped_defs: set[tuple[str, str]],
             rel: str) -> str:
    lines = text.split("\n")
    package = _module_name(rel) if rel.endswith("__init__.py") else _module_name(rel).rpartition(
        ".")[0]

    def blank(node: ast.AST, replacement: str | None = None) -> None:
        first, last = _first_line(node), node.end_lineno  # type: ignore[attr-defined]
        for i in range(first - 1, last):
            lines[i] = ""
        if replacement is not None:
            lines[first - 1] = replacement

    for stmt in tree.body:
        if isinstance(stmt, _DEFS) and id(stmt) not in kept:
            blank(stmt)
        elif isinstance(stmt, ast.ClassDef):
            methods = [m for m in stmt.body if isinstance(m, _DEFS)]
            gone = [m for m in methods if id(m) not in kept]
            for m in gone:
                blank(m)
            if gone and len(gone) == len(stmt.body):  # nothing left: the body needs a pass
                indent = " " * gone[0].col_offset
                lines[_first_line(gone[0]) - 1] = indent + "pass"
        elif _is_all(stmt):
            blank(stmt)
        elif isinstance(stmt, ast.ImportFrom) and stmt.module:
            source = stmt.module
            if stmt.level:
                source = ".".join(package.split(".")[:len(package.split(".")) - stmt.level + 1]
                                  + [stmt.module])
            left = [a for a in stmt.names if (source, a.name) not in dropped_defs]
            if len(left) < len(stmt.names):
                names = ", ".join(a.name + (" as " + a.asname if a.asname else "") for a in left)
                indent = " " * stmt.col_offset
                blank(stmt, "%sfrom %s%s import %s" % (
                    indent, "." * stmt.level, stmt.module, names) if left else None)
    return "\n".join(lines)
