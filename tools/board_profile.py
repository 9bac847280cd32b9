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
control's methods as strings; getattr/hasattr take strings). Module constants
count as definitions too: a module-level `NAME = value` whose value runs no code
(literals, names, tuples, lists, dicts and sets of them, operators; no call,
attribute or subscript) is left out when nothing names NAME, with its dict
entry and its value (a tuple or a table nothing reads); one a function rebinds
(`global NAME`) stays. The roots are main.py, every other statement of a module
or class body that is not a def or class, dunder methods and functions (a
package's module-level __getattr__), and the modules whose API is called by code
that is not in the bundle: agent.apps (a gateway application on the board imports it) and
agent.services (the stage-switched code paths the applications run).
Imports of a dropped name are dropped with it; `__all__` goes (a board never
star-imports). A package's `__init__` (agent.protocol, the one door) also loses
the re-exports nothing outside the module that defines them names. Dropped
lines become blank lines, so a traceback's line numbers on the board are the
source's.

Short constants (tools/board_literals.py, first): each use of a module-level name for a
string of at most 10 characters, a small int, True, False or None, in its module or
in one that imports it, becomes the literal (a qstr or an immediate in the bytecode),
so the definition and the imports go by the rule above: a dict slot less in each module
(16 bytes of heap each on a 64-bit port). A name rebound anywhere in a module stays there.

Integer constants: an int expression (`32 * 1024`, `1 << 10`) counts as its value
there, so its uses are the int too (MicroPython's compiler puts a small int in the
bytecode: no global, no qstr for the name). Only values a 32-bit board holds as a small
int (|v| < 2**30) are inlined; the source, and CPython, keep the plain name.

Identifier-like strings: mpy-cross makes a string constant longer than 10
characters a str object (about 40 bytes of heap on a board, its text too from
a .mpy file) unless the same text is already an interned name when the parser
reaches it. A dict key such as "restart_frequency" usually is a name too (an
attribute, an argument) in a module the board loads, so its qstr is in the
heap anyway: each module's docstring line (dropped by mpy-cross in any case)
becomes `if 0: (restart_frequency, ...)`, never run, which interns those names
first, and the constants become qstrs: the same str values, no new qstr.
Only names of modules main.py loads at boot count (a new qstr could open the
next qstr pool, 14 KB).

Exception classes nothing on the board tells apart: `class X(Base): pass` (or a
docstring only) becomes `X = Base` when the board's code and main.py name X only
to call it (`raise X(...)`, `P.X(...)`) or to import it: never in an except
clause, isinstance(), a comparison, as a base or as a value passed on, and no
module kept whole (agent.apps, agent.services) names or imports it. Naming it as a base
does not count (`StoreIOError = StoreError`, then `StoreNeedsReopenError = StoreIOError`;
`ControlError = AgentError` under `class TransitionRefused(ControlError)`). Every handler
then catches exactly what it caught before (one that catches X's base or an
ancestor still does; one for a sibling never did), the message is the same; only
the class's name differs where a log prints it (an error logged as `StoreError:
store full` rather than `StoreFullError: store full`). One class object less each,
about 230 bytes of a board's heap. CPython and the source keep every class.
"""
from __future__ import annotations

import ast
import keyword
import re
from typing import Callable

from tools.board_literals import inline_constants, pool_texts  # noqa: F401 (bundle_cmd)

# modules whose every definition stays: their callers are not in the bundle
KEEP_WHOLE_PREFIXES = ("agent/apps.py", "agent/services/")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


_UNNAMED: set[str] = set()  # shake(): names no string of the source holds (board_literals)


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
                and _IDENT.match(node.value) and node.value not in _UNNAMED:
            out.add(node.value)
        stack.extend(ast.iter_child_nodes(node))
    return out


def _is_all(node: ast.stmt) -> bool:
    return isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)


# what a module-level constant's value may be made of to be dropped: evaluating it
# can have no effect (no call, no subscript, no attribute: nothing that runs code)
_PURE = (ast.Constant, ast.Name, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.BinOp,
         ast.UnaryOp, ast.BoolOp, ast.Compare, ast.operator, ast.unaryop, ast.boolop,
         ast.cmpop, ast.expr_context)


def _constant_name(stmt: ast.stmt) -> str | None:
    """NAME for a module-level `NAME = <value with no effect>` the profile may drop."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
            and isinstance(stmt.targets[0], ast.Name) \
            and not stmt.targets[0].id.startswith("__") \
            and all(isinstance(n, _PURE) for n in ast.walk(stmt.value)):
        return stmt.targets[0].id
    return None


class _Unit:
    """One def, class or module constant the profile may drop; `refs`: what keeping it
    keeps."""

    def __init__(self, rel: str, node: ast.AST, forced: bool, cls: ast.AST | None = None,
                 name: str | None = None) -> None:
        self.rel, self.node, self.forced, self.cls = rel, node, forced, cls
        self.name = name or node.name  # type: ignore[attr-defined]
        if isinstance(node, ast.Assign):
            self.refs = _names([node.value])
        elif isinstance(node, ast.ClassDef):  # its own statements; methods are units
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
    sources, unnamed = inline_constants(sources, KEEP_WHOLE_PREFIXES)  # tools/board_literals.py
    _UNNAMED.clear()
    _UNNAMED.update(unnamed)
    try:
        return _shake(sources, roots)
    finally:
        _UNNAMED.clear()


def _shake(sources: dict[str, str], roots: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    trees = {rel: ast.parse(text) for rel, text in sources.items()}
    live = _names([ast.parse(roots)])
    # a name some function rebinds (`global X`) stays with its module-level value
    rebound = {name for tree in trees.values() for node in ast.walk(tree)
               if isinstance(node, (ast.Global, ast.Nonlocal)) for name in node.names}
    units: list[_Unit] = []
    for rel, tree in trees.items():
        whole = rel.startswith(KEEP_WHOLE_PREFIXES)
        for stmt in tree.body:
            constant = _constant_name(stmt)
            if constant is not None:
                units.append(_Unit(rel, stmt, whole or constant in rebound, name=constant))
            elif isinstance(stmt, _DEFS):
                units.append(_Unit(rel, stmt, whole or stmt.name.startswith("__")))
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
    named = {rel: _names([tree]) for rel, tree in trees.items()}
    root_names = _names([ast.parse(roots)])
    door_users: dict[str, set[str]] = {}  # a package -> what the modules using it name

    def reexport_reached(rel: str, source: str, name: str) -> bool:
        """Can anything reach `name` through package `rel`'s import of it? A module of
        the package itself counts only if it imports the package (agent.protocol's own
        modules import each other directly, never through the door)."""
        if rel not in door_users:
            package, folder = _module_name(rel), rel.rsplit("/", 1)[0] + "/"
            door_users[rel] = set(root_names).union(*(
                names for other, names in named.items() if other != rel and (
                    not other.startswith(folder) or _imports(trees[other], package))))
        return name in door_users[rel] or name in own[rel]

    own = {rel: _names([s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))
                        and not _is_all(s)]) for rel, tree in trees.items()}
    for rel, text in sources.items():
        out[rel] = _rewrite(text, trees[rel], kept, dropped_defs, rel, reexport_reached)
    out, aliased = _alias_exceptions(out, roots)
    out = _intern_strings(out, roots)
    dropped = sorted((u.rel, u.name) for u in units if id(u.node) not in kept)
    return out, dropped


_EXC_BASES = ("Error", "Exception", "Refused")


def _empty_exceptions(tree: ast.Module) -> dict[str, str]:
    """{class: its one base} for each module-level exception class with an empty body."""
    found = {}
    for s in tree.body:
        if isinstance(s, ast.ClassDef) and len(s.bases) == 1 and not s.keywords \
                and not s.decorator_list and isinstance(s.bases[0], ast.Name) \
                and s.bases[0].id.endswith(_EXC_BASES) and all(
                    isinstance(b, ast.Pass) or (isinstance(b, ast.Expr) and isinstance(
                        b.value, ast.Constant) and isinstance(b.value.value, str))
                    for b in s.body):
            found[s.name] = s.bases[0].id
    return found


def _raised_only(trees: dict[str, ast.Module], roots: str, skip: set[int] | None = None
                 ) -> set[str]:
    """Names that the board's code (and main.py) uses only to call (`raise X(...)`, `P.X(..)`)
    or to import: never in an except clause, isinstance(), a comparison, or passed on.
    `skip`: nodes not counted (the bases of the empty exception classes)."""
    other: set[str] = set()
    for tree in list(trees.values()) + [ast.parse(roots)]:
        calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)} | (skip or set())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in calls:
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    continue
                other.add(node.id if isinstance(node, ast.Name) else node.attr)
    return other


def _alias_exceptions(out: dict[str, str], roots: str) -> tuple[dict[str, str], list[str]]:
    """`class X(Base): pass` as `X = Base` where nothing on the board can tell them apart
    (see the module docstring): one class object less each (~230 bytes of a board's heap).
    The modules kept whole (their callers are not in the bundle) keep their classes, and a
    class any of them names stays too."""
    trees = {rel: ast.parse(text) for rel, text in out.items()}
    whole: set[str] = set()
    for rel, tree in trees.items():
        if rel.startswith(KEEP_WHOLE_PREFIXES):  # what they name or import, code outside may
            whole |= _names([tree]) | {a.asname or a.name for n in ast.walk(tree)
                                       if isinstance(n, (ast.Import, ast.ImportFrom))
                                       for a in n.names}
    # naming a class as a base does not tell it apart: an empty class that goes leaves
    # its subclasses its own base, and every handler catches what it caught before
    skip = {id(b) for rel, tree in trees.items() if not rel.startswith(KEEP_WHOLE_PREFIXES)
            for s in ast.walk(tree) if isinstance(s, ast.ClassDef) for b in s.bases}
    told_apart = _raised_only(trees, roots, skip) | whole
    result, aliased = dict(out), []
    for rel, tree in trees.items():
        if rel.startswith(KEEP_WHOLE_PREFIXES):
            continue
        empty = _empty_exceptions(tree)
        lines = out[rel].split("\n")
        for stmt in tree.body:
            if isinstance(stmt, ast.ClassDef) and stmt.name in empty \
                    and stmt.name not in told_apart:
                for i in range(stmt.lineno - 1, stmt.end_lineno or stmt.lineno):
                    lines[i] = ""
                lines[stmt.lineno - 1] = "%s = %s" % (stmt.name, empty[stmt.name])
                aliased.append("%s.%s" % (rel, stmt.name))
        result[rel] = "\n".join(lines)
    return result, aliased


def _first_line(node: ast.AST) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno] + [d.lineno for d in decorators])  # type: ignore[attr-defined]


def _rewrite(text: str, tree: ast.Module, kept: set[int], dropped_defs: set[tuple[str, str]],
             rel: str, reached: Callable[[str, str, str], bool] = lambda *_: True) -> str:
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
        elif isinstance(stmt, ast.Assign) and _constant_name(stmt) is not None \
                and id(stmt) not in kept:
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
            if rel.endswith("__init__.py") and not rel.startswith(KEEP_WHOLE_PREFIXES):
                used = [a for a in left if reached(rel, source, a.asname or a.name)]
                left = used or left[:1]  # one name stays: the import's side effects with it
            if len(left) < len(stmt.names):
                names = ", ".join(a.name + (" as " + a.asname if a.asname else "") for a in left)
                indent = " " * stmt.col_offset
                blank(stmt, "%sfrom %s%s import %s" % (
                    indent, "." * stmt.level, stmt.module, names) if left else None)
    return "\n".join(lines)


def imports_at_load(tree: ast.Module) -> set[str]:
    """The modules a module imports when it loads (not inside functions)."""
    found: set[str] = set()
    nodes = list(tree.body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(node.module + "." + a.name for a in node.names)
        elif isinstance(node, (ast.Try, ast.If)):
            nodes.extend(node.body)
    return found


def _pool_names(tree: ast.Module) -> set[str]:
    """Names whose qstr a module's bytecode carries (not plain local variables)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.keyword) and node.arg:
            out.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.alias):
            out.add(node.asname or node.name)
    for stmt in tree.body:  # module globals
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                out.add(node.id)
    return out


def _intern_strings(out: dict[str, str], roots: str) -> dict[str, str]:
    """Identifier-like long string constants as qstrs (see the module docstring)."""
    trees = {rel: ast.parse(text) for rel, text in out.items()}
    by_module = {_module_name(rel): rel for rel in out}
    loaded: set[str] = set()
    todo = sorted(imports_at_load(ast.parse(roots)))
    while todo:
        mod = todo.pop()
        parts = mod.split(".")
        for i in range(1, len(parts) + 1):  # a module loads its packages first
            name = ".".join(parts[:i])
            if name in by_module and name not in loaded:
                loaded.add(name)
                todo.extend(imports_at_load(trees[by_module[name]]))
    pool: set[str] = set()
    for mod in loaded:
        pool |= _pool_names(trees[by_module[mod]])
    result = dict(out)
    for rel, tree in trees.items():
        doc = tree.body[0] if tree.body else None
        if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                and isinstance(doc.value.value, str) and doc.col_offset == 0):
            continue
        texts = sorted({node.value for node in ast.walk(tree) if node is not doc.value
                        and isinstance(node, ast.Constant) and isinstance(node.value, str)
                        and len(node.value) > 10 and _IDENT.match(node.value)
                        and node.value in pool and not keyword.iskeyword(node.value)})
        lines = out[rel].split("\n")
        last = doc.end_lineno or doc.lineno
        if not texts or lines[last - 1][doc.end_col_offset or 0:].strip():
            continue
        for i in range(doc.lineno - 1, last):
            lines[i] = ""
        lines[doc.lineno - 1] = "if 0:  # interns these names first (board profile)\n    (%s,)" % (
            ", ".join(texts))
        if last > doc.lineno:  # the docstring's second line holds the names: lines stay
            lines[doc.lineno - 1], lines[doc.lineno] = lines[doc.lineno - 1].split("\n")
        else:
            lines[doc.lineno - 1] = "if 0: (%s,)  # interns these names first (board profile)" % (
                ", ".join(texts))
        result[rel] = "\n".join(lines)
    return result


def _imports(tree: ast.Module, package: str) -> bool:
    """Does the module import `package` (by any of the three spellings)?"""
    parent, _, last = package.rpartition(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == package for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (
                node.module == package
                or (node.module == parent and any(a.name == last for a in node.names))):
            return True
    return False
