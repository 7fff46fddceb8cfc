"""Lint: ``RuntimeError`` is caught only in vmscan's guest-access modules.

libguestfs raises ``RuntimeError`` both for "no such file" and for "the appliance died";
only the seam (:mod:`vmscan.guestcall` and the modules that use it directly) may tell
them apart. Anywhere else, catching ``RuntimeError`` (``except``, or
``contextlib.suppress``) would risk reading a dead appliance as an absent file.

A catch of a ``RuntimeError`` that does not come from libguestfs (``zipfile`` raises it
for an encrypted member) is allowed with a ``# not-libguestfs: why`` comment on the line.
Usage: ``python scripts/check_runtime_error.py [PACKAGE_DIR]``; exit status 1 on a finding.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

#: The guest-access layer: the only modules that may catch libguestfs' RuntimeError.
ALLOWED = frozenset({"guestcall.py", "session.py", "guestfs_view.py", "guestindex.py", "hive.py"})
MARKER = "# not-libguestfs:"


def _names(node: ast.expr | None) -> list[str]:
    if node is None:
        return []
    if isinstance(node, ast.Tuple):
        return [n for elt in node.elts for n in _names(elt)]
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    return []


def _is_suppress(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == "suppress") or (
        isinstance(f, ast.Name) and f.id == "suppress"
    )


def findings(path: Path) -> list[str]:
    """``file:line: message`` for each forbidden catch in *path*."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    out: list[str] = []

    def flag(node: ast.AST, what: str) -> None:
        first = node.lineno
        last = getattr(node, "end_lineno", None) or first
        # For an except clause only its header (up to the colon) may carry the marker.
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            last = node.type.end_lineno or first
        if any(MARKER in lines[n - 1] for n in range(first, last + 1)):
            return
        out.append(f"{path}:{first}: {what} RuntimeError outside the guest-access layer")

    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.ExceptHandler) and "RuntimeError" in _names(node.type):
            flag(node, "catches")
        elif (
            isinstance(node, ast.Call)
            and _is_suppress(node)
            and any("RuntimeError" in _names(a) for a in node.args)
        ):
            flag(node, "suppresses")
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "vmscan"
    bad: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if path.parent == root and path.name in ALLOWED:
            continue
        bad.extend(findings(path))
    for line in bad:
        print(line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
