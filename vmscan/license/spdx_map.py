"""Licence names found in the wild (Debian, rpm, apk, PE) → SPDX identifiers and expressions.

The mapping table lives in ``signatures/licenses/spdx-names.json``; SPDX ids and their
aliases, and the GNU family spellings (``GPL-2+``, ``LGPLv2.1+``, ``gpl3``...), are
recognised without a table entry. A stated licence that SPDX does not list is kept as
``LicenseRef-<name>``: it is what the file says, it is never replaced by a guess.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from license_expression import ExpressionError, Licensing, get_spdx_licensing

from vmscan.sigdir import BUNDLED

log = logging.getLogger(__name__)

#: Default location of the mapping table (repository layout).
DEFAULT_TABLE = BUNDLED / "licenses" / "spdx-names.json"

#: A licence name longer than this (in words) is prose, not a name.
_MAX_NAME_WORDS = 6
#: An unrecognised name of this many words or more is prose too.
_PROSE_WORDS = 3

_GNU = re.compile(
    r"^(?P<fam>agpl|lgpl|gpl|gfdl|fdl)"
    r"(?P<niv1>-niv)?"
    r"[\s_-]?(?:v|version\s*)?(?P<ver>\d+(?:\.\d+)?)?"
    r"(?P<plus>\+|\s*or\s+(?:any\s+)?later(?:\s+version)?|-or-later|\(?\s*or\s+later\s*\)?)?"
    r"(?P<only>-only)?"
    r"(?P<niv2>-no-invariants?(?:-only|-or-later)?)?$"
)

_GNU_VERSIONS: dict[str, dict[str, str]] = {
    "gpl": {"1": "1.0", "1.0": "1.0", "2": "2.0", "2.0": "2.0", "3": "3.0", "3.0": "3.0"},
    "lgpl": {"2": "2.0", "2.0": "2.0", "2.1": "2.1", "3": "3.0", "3.0": "3.0"},
    "agpl": {"1": "1.0", "1.0": "1.0", "3": "3.0", "3.0": "3.0"},
    "gfdl": {"1.1": "1.1", "1.2": "1.2", "1.3": "1.3"},
}
# No version stated: every one of these licences lets the recipient choose any version
# ever published (GPL-2 section 9, LGPL-2.1 section 13, GFDL section 10).
_GNU_UNVERSIONED = {
    "gpl": "GPL-1.0-or-later",
    "lgpl": "LGPL-2.0-or-later",
    "gfdl": "GFDL-1.1-or-later",
}

_OPERATORS = {
    "and": "AND",
    "or": "OR",
    "&": "AND",
    "|": "OR",
    "and/or": "OR",
    "&&": "AND",
    "||": "OR",
}


@dataclass(frozen=True)
class Normalized:
    """An SPDX expression made from a licence statement, with what could not be mapped."""

    expression: str
    #: Names stated but not listed by SPDX, kept as LicenseRef-<name>.
    unlisted: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@functools.lru_cache(maxsize=1)
def licensing() -> Licensing:
    """The SPDX licensing database of ``license-expression`` (built once)."""
    return get_spdx_licensing()


@functools.lru_cache(maxsize=1)
def _spdx_index() -> dict[str, str]:
    """Lower-cased SPDX id or alias → canonical id (licences and exceptions)."""
    index: dict[str, str] = {}
    for key, sym in licensing().known_symbols.items():
        if key.startswith("LicenseRef-"):
            continue  # scancode's own keys are not SPDX-listed
        index[key.lower()] = key
        for alias in getattr(sym, "aliases", ()) or ():
            if not alias.startswith("LicenseRef-"):
                index.setdefault(alias.lower(), key)
    return index


def is_listed(key: str) -> bool:
    """True for an identifier on the SPDX licence list (not a LicenseRef-)."""
    return key.lower() in _spdx_index() and not key.startswith("LicenseRef-")


def license_keys(expression: str) -> list[str]:
    """The licence identifiers of an expression (exceptions left out), in order."""
    try:
        keys = list(licensing().license_keys(expression))
    except ExpressionError:
        return []
    known = licensing().known_symbols
    return [k for k in keys if not (k in known and known[k].is_exception)]


def licence_ref(name: str) -> str:
    """``LicenseRef-<name>`` with the characters SPDX allows (letters, digits, ``.``, ``-``)."""
    clean = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-.")
    return "LicenseRef-" + (clean[:64] or "unnamed")


class LicenseMap:
    """Names → SPDX, from the mapping table plus the SPDX list and GNU spellings."""

    def __init__(self, names: dict[str, str], exceptions: dict[str, dict[str, str]]) -> None:
        self.names = {self._key(k): v for k, v in names.items()}
        self.exceptions = {self._key(k): v for k, v in exceptions.items()}
        # Copyright files repeat the same few names thousands of times (boost: 5900).
        self._cache: dict[str, Normalized | None] = {}

    @staticmethod
    def _key(name: str) -> str:
        return " ".join(name.lower().split())

    @classmethod
    def load(cls, path: Path | None = None) -> LicenseMap:
        """Read the mapping table (JSON with ``names`` and ``exceptions``)."""
        raw: Any = json.loads((path or DEFAULT_TABLE).read_text(encoding="utf-8"))
        names = {str(k): str(v) for k, v in dict(raw.get("names", {})).items()}
        exc = {
            str(k): {str(a): str(b) for a, b in dict(v).items()}
            for k, v in dict(raw.get("exceptions", {})).items()
        }
        return cls(names, exc)

    # -- single names ---------------------------------------------------------------

    def _gnu(self, key: str) -> str | None:
        m = _GNU.match(key.replace(" license", "").replace("version ", "v"))
        if m is None:
            return None
        fam = "gfdl" if m["fam"] == "fdl" else m["fam"]
        niv = bool(m["niv1"] or m["niv2"])
        later = bool(m["plus"]) or bool(m["niv2"] and m["niv2"].endswith("-or-later"))
        if m["ver"] is None:
            if m["plus"] and fam == "gpl":
                return "GPL-1.0-or-later"  # Fedora's "GPL+"
            if niv:
                return None
            return _GNU_UNVERSIONED.get(fam)
        ver = _GNU_VERSIONS.get(fam, {}).get(m["ver"])
        if ver is None:
            return None
        base = f"{fam.upper()}-{ver}"
        if niv:
            if fam != "gfdl":
                return None
            base += "-no-invariants"
        return base + ("-or-later" if later else "-only")

    def _exception(self, text: str, base: str) -> tuple[str | None, str | None]:
        """SPDX exception id for the words after ``with``; (None, note) when unlisted."""
        key = self._key(text)
        key = re.sub(r"[\s-]*(exceptions?|note)$", "", key).strip()
        key = key.replace(" ", "-")
        listed = _spdx_index().get(key) or _spdx_index().get(key + "-exception")
        if listed is not None and licensing().known_symbols[listed].is_exception:
            return listed, None
        table = self.exceptions.get(key)
        if table:
            major = ""
            m = re.search(r"-(\d)", base)
            if m and m.group(1) in table:
                major = m.group(1)
            exc = table.get(major) or table.get("")
            if exc:
                return exc, None
        return None, f"licence exception {text!r} is not SPDX-listed: dropped (stricter reading)"

    def name_to_spdx(self, name: str) -> tuple[str | None, list[str]]:
        """One licence name (maybe ``X with Y exception``) → (SPDX expression, notes).

        None when the name is not recognised (the caller keeps it as a LicenseRef-).
        """
        notes: list[str] = []
        key = self._key(name.strip(" \t'\"`.,;:"))
        if not key:
            return None, notes
        if key in self.names:
            return self.names[key], notes
        exception: str | None = None
        base_key = key
        m = re.match(r"^(.*?)(?:\s+with\s+|-with-|~)(.+)$", key)
        if m:
            base_key, exception = m.group(1).strip(), m.group(2).strip()
        base = self.names.get(base_key) or _spdx_index().get(base_key) or self._gnu(base_key)
        if base is None:
            return None, notes
        if exception is None:
            return base, notes
        if " " in base:  # an expression from the table: no exception on top of it
            notes.append(f"exception {exception!r} on {base_key!r} dropped")
            return base, notes
        exc, note = self._exception(exception, base)
        if note:
            notes.append(note)
        return (f"{base} WITH {exc}" if exc else base), notes

    # -- expressions ----------------------------------------------------------------

    def normalize(self, text: str) -> Normalized | None:
        """A licence statement (``GPL-2+ or Artistic, and MIT``; ``GPLv2+ and BSD``;
        ``MIT OR Apache-2.0``) → SPDX expression. None when it is prose or unparseable."""
        flat = " ".join(text.split())
        if not flat:
            return None
        if flat in self._cache:
            return self._cache[flat]
        if len(self._cache) > 20000:
            self._cache.clear()
        result = self._normalize(flat)
        self._cache[flat] = result
        return result

    def _normalize(self, flat: str) -> Normalized | None:
        whole = self.names.get(self._key(flat.strip(" .;")))
        if whole is not None:
            return Normalized(whole)
        if len(flat.split()) > 3 * _MAX_NAME_WORDS:
            return None
        groups = self._comma_groups(flat)
        parts: list[str] = []
        unlisted: list[str] = []
        notes: list[str] = []
        for op, group in groups:
            rendered = self._render_group(group, unlisted, notes)
            if rendered is None:
                return None
            if parts:
                parts.append(op)
            parts.append(f"({rendered})" if len(groups) > 1 else rendered)
        expr = " ".join(parts)
        try:
            parsed = licensing().parse(expr, validate=False)
        except ExpressionError as e:
            log.debug("unparseable licence %r: %s", flat, e)
            return None
        if parsed is None:
            return None
        return Normalized(str(parsed.render()), tuple(dict.fromkeys(unlisted)), tuple(notes))

    @staticmethod
    def _comma_groups(flat: str) -> list[tuple[str, str]]:
        """Split at top-level commas: ``A or B, and C`` is ``(A or B) and C`` (DEP-5)."""
        groups: list[tuple[str, str]] = []
        depth = 0
        cur: list[str] = []
        for ch in flat:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth = max(0, depth - 1)
            if ch == "," and depth == 0:
                groups.append(("AND", "".join(cur)))
                cur = []
                continue
            cur.append(ch)
        groups.append(("AND", "".join(cur)))
        out: list[tuple[str, str]] = []
        for _, g in groups:
            g = g.strip()
            op = "AND"
            m = re.match(r"^(and/or|and|or)\s+(.*)$", g, re.IGNORECASE)
            if m:
                op = _OPERATORS[m.group(1).lower()]
                g = m.group(2)
            if g:
                out.append((op, g))
        return out

    def _render_group(self, group: str, unlisted: list[str], notes: list[str]) -> str | None:
        tokens = re.findall(r"\(|\)|[^\s()]+", group)
        out: list[str] = []
        operand: list[str] = []

        def flush() -> bool:
            if not operand:
                return True
            name = " ".join(operand)
            operand.clear()
            if len(name.split()) > _MAX_NAME_WORDS:
                return False
            spdx, n = self.name_to_spdx(name)
            notes.extend(n)
            if spdx is None and len(name.split()) >= _PROSE_WORDS:
                return False  # a sentence of licence text, not a name
            if spdx is None:
                spdx = licence_ref(name)
                unlisted.append(name)
            out.append(f"({spdx})" if " AND " in spdx or " OR " in spdx else spdx)
            return True

        i = 0
        while i < len(tokens):
            tok = tokens[i]
            low = tok.lower()
            nxt = tokens[i + 1].lower() if i + 1 < len(tokens) else ""
            if low == "or" and nxt in ("later", "any", "newer") and operand:
                # "GPLv2 or later": part of the name, not an operator
                operand.append(tok)
            elif low in _OPERATORS and (operand or (out and out[-1] == ")")):
                if not flush():
                    return None
                out.append(_OPERATORS[low])
            elif tok in "()":
                if not flush():
                    return None
                out.append(tok)
            else:
                operand.append(tok)
            i += 1
        if not flush():
            return None
        return " ".join(out) if out else None


@functools.lru_cache(maxsize=4)
def default_map(path: str | None = None) -> LicenseMap:
    """The mapping table, loaded once per path."""
    return LicenseMap.load(Path(path) if path else None)
