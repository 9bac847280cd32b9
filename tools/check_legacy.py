"""`fleetstage check-legacy`: the stage-4 static check for legacy global-state paths.

    fleetstage check-legacy [PATH ...] [--allow GLOB ...] [--strict] [--json]

The runbook's stage 4 ends with `grep -r "Process.put|Process.get" lib/` in
CI. This is that check for this code base, done on the syntax tree instead of
with grep, so a comment or a string that mentions a name is not a hit and an
aliased import still is. It reports:

    LEG001  an import of the legacy global-state module (agent.services.legacy_state)
    LEG002  a use of a legacy accessor: pdict_get / pdict_put / pdict_setdefault /
            pdict_erase (the counterparts of Process.get / Process.put / Process.delete)
    LEG003  a direct use of the hidden dict itself (_PDICT)
    LEG004  (--strict only) a `global` statement: a function writing module-level
            state, the general Python form of the process dictionary
    LEG000  a file that cannot be read or parsed (it could not be checked)

A line carrying the comment `# legacy-ok` is skipped (say why after it).
`--allow GLOB` skips matching paths (fnmatch on the path as given, e.g. the
compatibility layer until it is deleted). Exit status: 0 clean, 1 findings,
2 usage error. Owns: nothing but reading the files it is pointed at; it must
never import or run them.
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import sys
from typing import Iterable, Iterator, NamedTuple, Sequence

LEGACY_MODULE = "agent.services.legacy_state"
LEGACY_ACCESSORS = {
    "pdict_get": "Process.get",
    "pdict_put": "Process.put",
    "pdict_setdefault": "Process.get/put",
    "pdict_erase": "Process.delete",
}
HIDDEN_DICT = "_PDICT"
PRAGMA = "legacy-ok"
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "build", "dist", ".mypy_cache",
             ".ruff_cache", ".pytest_cache", "node_modules"}


class Finding(NamedTuple):
    path: str
    line: int
    col: int
    code: str
    message: str

    def text(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.code} {self.message}"


class _Visitor(ast.NodeVisitor):
    def __init__(self, path: str, strict: bool) -> None:
        self.path = path
        self.strict = strict
        self.found: list[Finding] = []
        self._function_depth = 0

    def _add(self, node: ast.AST, code: str, message: str) -> None:
        line = getattr(node, "lineno", 1)
        col = getattr(node, "col_offset", 0) + 1
        self.found.append(Finding(self.path, line, col, code, message))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == LEGACY_MODULE or alias.name.startswith(LEGACY_MODULE + "."):
                self._add(node, "LEG001", f"import of the legacy global state {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        for alias in node.names:
            full = f"{module}.{alias.name}" if module else alias.name
            if module == LEGACY_MODULE or full == LEGACY_MODULE:
                self._add(node, "LEG001", f"import of the legacy global state {full}")
            elif alias.name in LEGACY_ACCESSORS:
                self._accessor(node, alias.name)

    def visit_Name(self, node: ast.Name) -> None:
        self._check_name(node, node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._check_name(node, node.attr)
        self.generic_visit(node)

    def _check_name(self, node: ast.AST, name: str) -> None:
        if name in LEGACY_ACCESSORS:
            self._accessor(node, name)
        elif name == HIDDEN_DICT:
            self._add(node, "LEG003", f"direct use of the hidden global dict {HIDDEN_DICT}")

    def _accessor(self, node: ast.AST, name: str) -> None:
        self._add(node, "LEG002",
                  f"legacy accessor {name} (the counterpart of {LEGACY_ACCESSORS[name]})")

    def _function(self, node: ast.AST) -> None:
        self._function_depth += 1
        self.generic_visit(node)
        self._function_depth -= 1

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Global(self, node: ast.Global) -> None:
        if self.strict and self._function_depth:
            self._add(node, "LEG004",
                      "function writes module-level state: global " + ", ".join(node.names))


def check_source(source: str, path: str = "<string>", strict: bool = False) -> list[Finding]:
    """The findings in one file's source, sorted by position."""
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None) or 1
        return [Finding(path, line, 1, "LEG000", f"cannot parse: {exc.__class__.__name__}")]
    visitor = _Visitor(path, strict)
    visitor.visit(tree)
    lines = source.splitlines()
    kept = []
    for finding in visitor.found:
        text = lines[finding.line - 1] if 0 < finding.line <= len(lines) else ""
        if "#" in text and PRAGMA in text[text.index("#"):]:
            continue
        kept.append(finding)
    return sorted(set(kept))


def iter_python_files(paths: Iterable[str], allow: Sequence[str] = ()) -> Iterator[str]:
    """Every .py file under the given paths (files are taken as given), minus allowed ones."""
    for root in paths:
        if os.path.isfile(root):
            candidates: Iterable[str] = [root]
        else:
            candidates = _walk(root)
        for path in candidates:
            if not any(fnmatch.fnmatch(path, pattern) for pattern in allow):
                yield path


def _walk(root: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def check_paths(paths: Iterable[str], allow: Sequence[str] = (),
                strict: bool = False) -> tuple[list[Finding], int]:
    """(findings, files checked) for every Python file under `paths`."""
    findings: list[Finding] = []
    checked = 0
    for path in iter_python_files(paths, allow):
        checked += 1
        try:
            with open(path, encoding="utf-8") as handle:
                source = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            findings.append(Finding(path, 1, 1, "LEG000", f"cannot read: {exc}"))
            continue
        findings.extend(check_source(source, path, strict))
    return findings, checked


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", default=["."],
                        help="files or directories to check (default: .)")
    parser.add_argument("--allow", action="append", default=[], metavar="GLOB",
                        help="skip paths matching GLOB (repeatable), e.g. the compatibility layer")
    parser.add_argument("--strict", action="store_true",
                        help="also flag `global` statements inside functions (LEG004)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")


def run(args: argparse.Namespace, out=None) -> int:
    out = out or sys.stdout
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        print("fleetstage check-legacy: no such path: " + ", ".join(missing), file=sys.stderr)
        return 2
    findings, checked = check_paths(args.paths, args.allow, args.strict)
    if args.json:
        rows = [f._asdict() for f in findings]
        json.dump({"findings": rows, "files_checked": checked}, out, indent=2, sort_keys=True)
        out.write("\n")
    else:
        for finding in findings:
            print(finding.text(), file=out)
        files = len({f.path for f in findings})
        print(f"check-legacy: {len(findings)} finding(s) in {files} file(s); "
              f"{checked} file(s) checked", file=out)
    return 1 if findings else 0


def register(subparsers) -> None:
    """Hook for tools.cli: adds `fleetstage check-legacy`."""
    parser = subparsers.add_parser(
        "check-legacy", help="stage-4 static check: find uses of legacy global-state paths",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_arguments(parser)
    parser.set_defaults(handler=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetstage check-legacy",
                                     description="Find uses of legacy global-state paths.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
