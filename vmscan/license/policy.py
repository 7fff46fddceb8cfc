"""Licence policy: SPDX ids → categories, AND/OR combination, and the commercial watch list.

A policy is the ``[license]`` table of a TOML file (``vmscan.toml``, or a file given with
``--policy``); the documented default is ``signatures/licenses/default-policy.toml``.
Categories, strictest first by default: forbidden, restricted, unknown, reciprocal,
notice, permissive. ``A AND B`` takes the stricter category of A and B (both apply);
``A OR B`` the more lenient (the user may choose). ``X WITH exception`` is categorised as
its full text when listed, otherwise as X.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from license_expression import AND, OR, ExpressionError, LicenseSymbol, LicenseWithExceptionSymbol

from vmscan.errors import UsageError
from vmscan.license.spdx_map import licensing
from vmscan.model import Severity
from vmscan.sigdir import BUNDLED

log = logging.getLogger(__name__)

DEFAULT_POLICY = BUNDLED / "licenses" / "default-policy.toml"

CATEGORIES = ("forbidden", "restricted", "unknown", "reciprocal", "notice", "permissive")

_DEFAULT_SEVERITY: dict[str, Severity] = {
    "forbidden": Severity.HIGH,
    "restricted": Severity.MEDIUM,
    "unknown": Severity.LOW,
    "reciprocal": Severity.INFO,
    "notice": Severity.INFO,
    "permissive": Severity.INFO,
}


@dataclass(frozen=True)
class WatchRule:
    """A commercial product to count: by OS edition or by package name."""

    id: str
    product: str
    #: "os" (the operating system itself) or "package".
    kind: str = "package"
    #: Case-insensitive shell patterns over the OS product name or the package name.
    names: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    #: Case-insensitive shell patterns over manifest paths (products with no package).
    paths: tuple[str, ...] = ()
    #: Regex with a group ``edition`` over the package name (or OS product name).
    edition_regex: str = ""


@dataclass(frozen=True)
class Decision:
    """Category of one package's licences and the rule that decided it."""

    category: str
    rule: str
    licence: str


@dataclass
class Policy:
    """Parsed ``[license]`` table."""

    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    order: tuple[str, ...] = CATEGORIES
    report: tuple[str, ...] = ("forbidden", "restricted", "unknown")
    severity: dict[str, Severity] = field(default_factory=lambda: dict(_DEFAULT_SEVERITY))
    watch: tuple[WatchRule, ...] = ()
    source: str = ""
    #: Windows programs state no licence: their "unknown" is reported only when asked.
    report_windows_programs: bool = False

    # -- loading ------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, table: dict[str, Any], source: str = "") -> Policy:
        """Build from the ``[license]`` table (raises UsageError on a malformed one)."""
        try:
            cats_raw = dict(table.get("categories", {}))
            cats = {str(k): tuple(str(x) for x in v) for k, v in cats_raw.items()}
            bad = [k for k in cats if k not in CATEGORIES]
            if bad:
                raise UsageError(f"{source}: unknown licence categories {bad}")
            order = tuple(str(x) for x in table.get("order", CATEGORIES))
            if sorted(order) != sorted(CATEGORIES):
                raise UsageError(f"{source}: license.order must list each of {CATEGORIES}")
            report = tuple(str(x) for x in table.get("report", cls.report))
            sev = dict(_DEFAULT_SEVERITY)
            # A severity that is none (a typo) is refused here, not in every scanned root.
            sev.update(
                {str(k): Severity(str(v)) for k, v in dict(table.get("severity", {})).items()}
            )
            watch = tuple(
                WatchRule(
                    id=str(w["id"]),
                    product=str(w.get("product", w["id"])),
                    kind=str(w.get("kind", "package")),
                    names=tuple(str(x) for x in w.get("names", ())),
                    exclude=tuple(str(x) for x in w.get("exclude", ())),
                    paths=tuple(str(x) for x in w.get("paths", ())),
                    edition_regex=str(w.get("edition_regex", "")),
                )
                for w in table.get("watch", ())
            )
            for w in watch:
                if w.edition_regex:
                    re.compile(w.edition_regex)
        except (KeyError, TypeError, ValueError, re.error) as e:
            raise UsageError(f"{source}: malformed [license] policy: {e}") from e
        windows = bool(table.get("report_windows_programs", False))
        return cls(cats, order, report, sev, watch, source, windows)

    @classmethod
    def load(cls, path: Path | None = None) -> Policy:
        """Read a TOML file; its ``[license]`` table, or the whole file when it has none."""
        path = path or DEFAULT_POLICY
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UsageError(f"cannot read licence policy {path}: {e}") from e
        table = doc.get("license", doc)
        return cls.from_mapping(dict(table), str(path))

    # -- categories ---------------------------------------------------------------

    def _rank(self, category: str) -> int:
        # Lower rank = stricter.
        return self.order.index(category)

    def category_of_id(self, key: str) -> tuple[str, str]:
        """(category, rule) of one licence id or ``X WITH Y``; unknown when unlisted."""
        low = " ".join(key.lower().split())
        base = low.split(" with ")[0].strip()
        if base != low:
            # A pattern written with its exception wins over one for the bare licence.
            for cat in self.order:
                for pat in self.categories.get(cat, ()):
                    if " with " in pat.lower() and fnmatch.fnmatchcase(low, pat.lower()):
                        return cat, f"{cat}:{pat}"
        for cat in self.order:
            for pat in self.categories.get(cat, ()):
                if " with " not in pat.lower() and fnmatch.fnmatchcase(base, pat.lower()):
                    return cat, f"{cat}:{pat}"
        return "unknown", "unlisted"

    def _eval(self, node: Any) -> tuple[str, str, str]:
        if isinstance(node, LicenseWithExceptionSymbol):
            key = f"{node.license_symbol.key} WITH {node.exception_symbol.key}"
            cat, rule = self.category_of_id(key)
            return cat, rule, key
        if isinstance(node, LicenseSymbol):
            cat, rule = self.category_of_id(str(node.key))
            return cat, rule, str(node.key)
        if isinstance(node, (AND, OR)):
            parts = [self._eval(a) for a in node.args]
            pick = min if isinstance(node, AND) else max
            return pick(parts, key=lambda p: self._rank(p[0]))
        return "unknown", "unparsed", str(node)

    def classify(self, expression: str) -> Decision:
        """Category of an SPDX expression (AND: strictest; OR: most lenient)."""
        if not expression.strip():
            return Decision("unknown", "no-licence", "")
        try:
            parsed = licensing().parse(expression, validate=False)
        except ExpressionError:
            return Decision("unknown", "unparsed", expression)
        if parsed is None:
            return Decision("unknown", "no-licence", "")
        cat, rule, lic = self._eval(parsed)
        return Decision(cat, rule, lic)

    def classify_all(self, expressions: list[str]) -> Decision:
        """A package's licences all apply (different files): the strictest decides."""
        if not expressions:
            return Decision("unknown", "no-licence", "")
        decisions = [self.classify(e) for e in expressions]
        return min(decisions, key=lambda d: self._rank(d.category))


def load_policy(options: dict[str, Any]) -> Policy:
    """The policy for a run: ``options["license_policy"]`` (path or a parsed ``[license]``
    table from vmscan.toml), else the default file."""
    value = options.get("license_policy")
    if isinstance(value, dict):
        return Policy.from_mapping(value, "vmscan.toml [license]")
    if value:
        return Policy.load(Path(str(value)))
    return Policy.load()


def _match_any(name: str, patterns: tuple[str, ...]) -> bool:
    low = name.lower()
    return any(fnmatch.fnmatchcase(low, p.lower()) for p in patterns)


def edition_of(rule: WatchRule, name: str) -> str:
    """Edition named by *name* through the rule's regex; "" when it says nothing."""
    if not rule.edition_regex:
        return ""
    m = re.search(rule.edition_regex, name)
    if m is None:
        return ""
    try:
        return (m.group("edition") or "").strip()
    except IndexError:
        return m.group(0).strip()


def watch_matches_package(rule: WatchRule, name: str) -> bool:
    """True when a package name is one of the rule's products (and not excluded)."""
    return (
        rule.kind == "package"
        and bool(rule.names)
        and _match_any(name, rule.names)
        and not _match_any(name, rule.exclude)
    )


def watch_matches_path(rule: WatchRule, path: str) -> bool:
    """True when a manifest path is one of the rule's marker files."""
    return bool(rule.paths) and _match_any(path, rule.paths)


def watch_matches_os(rule: WatchRule, product_name: str) -> bool:
    """True when an OS product name is the rule's product."""
    return rule.kind == "os" and _match_any(product_name, rule.names)
