"""The board profile's literals: short constants inlined, long strings pooled.

Constants (inline_constants, run by tools/board_profile.py's shake): a name for a short
constant becomes the constant.

A module-level `OP_MIGRATE = "migrate"` costs a board a slot in its module's dict, and
one more in the dict of every module that imports it (`from agent.protocol._wire import
OP_MIGRATE`): 16 bytes of heap each on a 64-bit port, more as a dict grows by steps.
The constant itself costs nothing: a string of 10 characters or fewer is a qstr that the
bytecode names, a small int is a bytecode immediate. So in the board's copy each use of
such a name (`OP_MIGRATE`, or `P.OP_MIGRATE` through a module alias) becomes the literal,
and the board profile (tools/board_profile.py) then leaves out the definitions and the
imports nothing names any more. CPython and the source keep the names.

What is inlined: a module-level `NAME = <str of at most 10 characters | small int, or an
int expression of literals (`32 * 1024`) | True | False | None>` bound nowhere else in its
module, and the names other modules import it under (`from M import NAME [as ALIAS]`,
re-exports followed). A use is replaced only in a
module that binds the name nowhere else (no argument, local, loop or `global` of that
name anywhere in it), outside f-strings, and never in the modules kept whole
(agent.apps, agent.services: code outside the bundle calls them). Line numbers stay.

Long strings (pool_texts, run on each module when the bundle is compiled): see below.
"""
from __future__ import annotations

import ast
import re
from typing import Iterator

SMALL_INT = 2 ** 30  # a 32-bit port's small int: needs no heap object, const() of it either
SHORT_STR = 10  # mpy-cross keeps a string of 10 characters or fewer as a qstr
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _module_name(rel: str) -> str:
    mod = rel[:-3].replace("/", ".")
    return mod[:-len(".__init__")] if mod.endswith(".__init__") else mod


_FOLDABLE = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
             ast.Mult: lambda a, b: a * b, ast.FloorDiv: lambda a, b: a // b,
             ast.Pow: lambda a, b: a ** b, ast.LShift: lambda a, b: a << b,
             ast.BitOr: lambda a, b: a | b, ast.BitAnd: lambda a, b: a & b}


def int_value(node: ast.AST) -> int | None:
    """The value of an integer constant expression (literals, + - * // ** << | &)."""
    if isinstance(node, ast.Constant):
        return node.value if type(node.value) is int else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = int_value(node.operand)
        return None if inner is None else -inner
    if isinstance(node, ast.BinOp) and type(node.op) in _FOLDABLE:
        left, right = int_value(node.left), int_value(node.right)
        if left is None or right is None or (isinstance(node.op, ast.Pow) and right > 64):
            return None
        return _FOLDABLE[type(node.op)](left, right)
    return None


def _literal(node: ast.AST) -> tuple[bool, object]:
    if not isinstance(node, ast.Constant):
        folded = int_value(node)  # 256 * 1024: the int it is
        if folded is not None and -SMALL_INT < folded < SMALL_INT:
            return True, folded
        return False, None
    v = node.value
    if v is None or v is True or v is False:
        return True, v
    if type(v) is int and -SMALL_INT < v < SMALL_INT:
        return True, v
    if type(v) is str and len(v) <= SHORT_STR and v.isascii() and v.isprintable():
        return True, v
    return False, None


def _bound(tree: ast.Module) -> dict[str, int]:
    """How many times each name is bound anywhere in a module (any scope)."""
    counts: dict[str, int] = {}

    def add(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1

    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            add(node.id)
        elif isinstance(node, ast.arg):
            add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            add(node.name)
        elif isinstance(node, ast.alias):
            add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in node.names:
                add(name)
                add(name)  # never inlined
        elif isinstance(node, ast.ExceptHandler) and node.name:
            add(node.name)
        elif isinstance(node, ast.MatchAs) and node.name:
            add(node.name)
    return counts


def constant_table(trees: dict[str, ast.Module]) -> dict[str, dict[str, object]]:
    """{module: {name: value}} for every inlinable constant (see the module docstring)."""
    mods = {_module_name(rel): tree for rel, tree in trees.items()}
    bound = {mod: _bound(tree) for mod, tree in mods.items()}
    table: dict[str, dict[str, object]] = {mod: {} for mod in mods}
    for mod, tree in mods.items():
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                    and isinstance(stmt.targets[0], ast.Name):
                name = stmt.targets[0].id
                ok, value = _literal(stmt.value)
                if ok and bound[mod].get(name) == 1 and not name.startswith("__"):
                    table[mod][name] = value
    grew = True
    while grew:  # names imported from a module with the constant (re-exports too)
        grew = False
        for mod, tree in mods.items():
            for stmt in tree.body:
                if not (isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level
                        and stmt.module in table):
                    continue
                for a in stmt.names:
                    alias = a.asname or a.name
                    if a.name in table[stmt.module] and alias not in table[mod] \
                            and bound[mod].get(alias) == 1:
                        table[mod][alias] = table[stmt.module][a.name]
                        grew = True
    return table


def _module_aliases(tree: ast.Module, mods: set[str], bound: dict[str, int]) -> dict[str, str]:
    """{local name: bundle module} for the module-level imports of whole modules."""
    out = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
            for a in stmt.names:
                full = stmt.module + "." + a.name
                if full in mods and bound.get(a.asname or a.name) == 1:
                    out[a.asname or a.name] = full
        elif isinstance(stmt, ast.Import):
            for a in stmt.names:
                if a.asname and a.name in mods and bound.get(a.asname) == 1:
                    out[a.asname] = a.name
    return out


def inline_constants(sources: dict[str, str], keep_whole: tuple[str, ...]
                     ) -> tuple[dict[str, str], set[str]]:
    """({rel: board source with the constants' uses inlined}, {names no string names}).

    The second: the names inlined whose text no string constant of the original sources
    holds but their own definitions' (`IDLE = "IDLE"`), so nothing can reach them by
    getattr(); the literals the inlining wrote must not keep them (tools/board_profile.py
    counts an identifier-like string as a name)."""
    trees = {rel: ast.parse(text) for rel, text in sources.items()}
    table = constant_table(trees)
    mods = set(table)
    out = dict(sources)
    inlined: set[str] = set()
    for rel, tree in trees.items():
        if rel.startswith(keep_whole):
            continue
        mod = _module_name(rel)
        bound = _bound(tree)
        aliases = _module_aliases(tree, mods, bound)
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):  # positions inside f-strings: not trusted
                skip.update(id(n) for n in ast.walk(node))
        edits: list[tuple[int, int, int, str]] = []  # (line, start col, end col, literal)
        for node in ast.walk(tree):
            if id(node) in skip or not isinstance(node, (ast.Name, ast.Attribute)) \
                    or node.lineno != node.end_lineno:
                continue
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) \
                    and node.id in table[mod]:
                value, name = table[mod][node.id], node.id
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) \
                    and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr in table[aliases[node.value.id]]:
                value, name = table[aliases[node.value.id]][node.attr], node.attr
            else:
                continue
            edits.append((node.lineno - 1, node.col_offset, node.end_col_offset or 0,
                          repr(value)))
            inlined.add(name)
        if not edits:
            continue
        lines = [line.encode() for line in sources[rel].split("\n")]  # offsets: UTF-8 bytes
        for i, a, b, literal in sorted(edits, reverse=True):
            lines[i] = lines[i][:a] + ("(%s)" % literal).encode() + lines[i][b:]
        text = "\n".join(line.decode() for line in lines)
        out[rel] = text if rel.endswith("__init__.py") else _drop_unused_imports(
            text, table[mod])
    texts: set[str] = set()
    for tree in trees.values():
        own = set()
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                    and isinstance(stmt.targets[0], ast.Name) \
                    and isinstance(stmt.value, ast.Constant) \
                    and stmt.value.value == stmt.targets[0].id:
                own.add(id(stmt.value))
        texts.update(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                     and isinstance(n.value, str) and id(n) not in own)
    return out, inlined - texts


def _drop_unused_imports(text: str, constants: dict[str, object]) -> str:
    """The module-level imports of constants the module no longer names (all inlined)."""
    tree = ast.parse(text)
    named = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            named.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            named.add(node.value)  # getattr(module, "NAME") may name it
    lines = text.split("\n")
    for stmt in tree.body:
        if not (isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level):
            continue
        left = [a for a in stmt.names if (a.asname or a.name) not in constants
                or (a.asname or a.name) in named]
        if len(left) == len(stmt.names):
            continue
        for i in range(stmt.lineno - 1, stmt.end_lineno or stmt.lineno):
            lines[i] = ""
        if left:
            names = ", ".join(ast.unparse(a) for a in left)
            lines[stmt.lineno - 1] = "%sfrom %s import %s" % (" " * stmt.col_offset,
                                                              stmt.module, names)
    return "\n".join(lines)


# --- long strings in one constant per module (applied when the bundle is compiled) ---
POOL_MIN = 11  # mpy-cross keeps a string of 10 characters or fewer as a qstr
_MARK = "__board_texts__"  # stands for the module's pool in the rewritten text


class _Texts:
    """The long strings a module's functions use, each found once in the pool."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.at: dict[str, tuple[int, int]] = {}
        self.size = 0

    def span(self, text: str) -> tuple[int, int]:
        if text not in self.at:
            self.at[text] = (self.size, self.size + len(text))
            self.parts.append(text)
            self.size += len(text)
        return self.at[text]


def _format_text(node: ast.JoinedStr) -> tuple[str, list[ast.expr]] | None:
    """An f-string as str.format's text and arguments (what MicroPython's compiler makes
    of it), or None for one this cannot spell (a format spec with fields of its own)."""
    text, args = [], []
    for part in node.values:
        if isinstance(part, ast.Constant) and isinstance(part.value, str):
            text.append(part.value.replace("{", "{{").replace("}", "}}"))
        elif isinstance(part, ast.FormattedValue):
            field = "{"
            if part.conversion != -1:
                field += "!" + chr(part.conversion)
            if part.format_spec is not None:
                spec = part.format_spec
                if not (isinstance(spec, ast.JoinedStr) and all(
                        isinstance(v, ast.Constant) for v in spec.values)):
                    return None
                field += ":" + "".join(v.value for v in spec.values)  # type: ignore[attr-defined]
            text.append(field + "}")
            args.append(part.value)
        else:
            return None
    return "".join(text), args


def pool_texts(text: str) -> str:
    """Each long string constant (and f-string) that a function body uses becomes a slice
    of one string constant of its module, `POOL[a:b]` (f-strings `POOL[a:b].format(..)`).

    mpy-cross makes every string of more than 10 characters a str object of its own
    (about 40 bytes of a board's heap each from ROMFS, its text too from a .mpy file);
    the module's pool is one such object, and a slice is made only when the function
    runs, then collected. Strings a module or class body evaluates at load (tables,
    defaults, decorators) stay: a slice of them would be resident. Identifier-like ones
    are qstrs already (see _intern_strings); docstrings are dropped by mpy-cross. Each
    replacement keeps its lines (newlines inside the parentheses), so line numbers in
    a board's tracebacks stay the source's.
    """
    tree = ast.parse(text)
    spots: list[tuple[ast.expr, str]] = []  # (node, its replacement with the _MARK)
    texts = _Texts()
    seen: set[int] = set()

    def visit_body(stmts: list[ast.AST]) -> None:
        for stmt in stmts:
            for node in _walk_no_defaults(stmt):
                if id(node) in seen:
                    continue
                if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                    seen.add(id(node.value))  # a docstring, or a bare constant: not compiled
                elif isinstance(node, ast.JoinedStr):
                    seen.update(id(sub) for sub in ast.walk(node))
                    made = _format_text(node)
                    if made is None or len(made[0]) < POOL_MIN:
                        continue
                    a, b = texts.span(made[0])
                    args = ", ".join("(%s)" % ast.unparse(arg) for arg in made[1])
                    spots.append((node, "%s[%d:%d].format(%s)" % (_MARK, a, b, args)))
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and len(node.value) >= POOL_MIN and not _IDENT.match(node.value):
                    a, b = texts.span(node.value)
                    spots.append((node, "%s[%d:%d]" % (_MARK, a, b)))

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            visit_body(list(node.body))
        elif isinstance(node, ast.Lambda):
            visit_body([node.body])
    if not spots:
        return text
    pool = repr("".join(texts.parts))
    lines = [line.encode() for line in text.split("\n")]  # ast offsets are UTF-8 bytes
    done: list[tuple[tuple[int, int], tuple[int, int]]] = []
    for node, new in sorted(spots, key=lambda s: (s[0].lineno, s[0].col_offset), reverse=True):
        first, last = node.lineno - 1, node.end_lineno - 1  # type: ignore[operator]
        start, end = node.col_offset, node.end_col_offset or 0
        span = ((first, start), (last, end))
        if any(span[0] < d[1] and d[0] < span[1] for d in done):
            continue  # overlaps one already replaced: left as it is
        done.append(span)
        head, tail = lines[first][:start], lines[last][end:]  # type: ignore[index]
        replaced = ("(" + new.replace(_MARK, pool) + ")").encode()
        if first == last:
            lines[first] = head + replaced + tail
        else:
            lines[first] = head + replaced[:-1]
            for i in range(first + 1, last):
                lines[i] = b""
            lines[last] = b")" + tail
    return "\n".join(line.decode() for line in lines)


def _walk_no_defaults(stmt: ast.AST) -> Iterator[ast.AST]:
    """ast.walk of a function's statement, without what runs when a nested def or lambda is
    made (defaults, decorators: evaluated once, so resident) or the nested bodies
    themselves (visited as functions of their own)."""
    stack: list[ast.AST] = [stmt]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        stack.extend(ast.iter_child_nodes(node))
