"""Alpine secdb JSON (``secdb.alpinelinux.org/vX.Y/main.json``): fixes per origin package.

``packages[].pkg.secfixes`` maps the first fixed version to the ids it fixes. A version
of ``"0"`` means the branch was never affected (nothing is stored). One string may hold
several ids of one issue separated by spaces (``"CVE-2018-7540 XSA-252"``): it is split,
the first CVE becomes the advisory id and the others its aliases.
"""

from __future__ import annotations

import re
from typing import Any

from vmscan.advisories.model import Advisory, Affected, FeedKind, ParseResult, bounded

_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._:-]{1,60}$")
MAX_PACKAGES, MAX_FIXES = 100_000, 5_000


def looks_like_secdb(data: Any) -> bool:
    """True when *data* has secdb's shape (``distroversion`` and a ``packages`` list)."""
    return isinstance(data, dict) and "distroversion" in data and "packages" in data


def parse(data: Any, feed: str) -> ParseResult:
    """Advisories (one per package and issue) from one secdb document."""
    res = ParseResult()
    if not looks_like_secdb(data):
        res.rejected.append("document: no distroversion/packages")
        return res
    branch = str(data.get("distroversion", "")).strip()
    if not re.match(r"^v?\d+\.\d+$|^edge$", branch):
        res.rejected.append(bounded(f"distroversion {branch!r} is not vX.Y", 200))
        return res
    ecosystem = f"Alpine:{branch if branch.startswith('v') or branch == 'edge' else 'v' + branch}"
    repo = str(data.get("reponame") or "").strip()
    # Where the fixed package is published ("v3.18/main"): the patch check compares it with
    # the guest's /etc/apk/repositories.
    extra = {"repository": f"{ecosystem.split(':', 1)[1]}/{repo}"[:80]} if repo else {}
    packages = data.get("packages")
    if not isinstance(packages, list):
        res.rejected.append("packages: not a list")
        return res
    for entry in packages[:MAX_PACKAGES]:
        pkg = entry.get("pkg") if isinstance(entry, dict) else None
        name = pkg.get("name") if isinstance(pkg, dict) else None
        fixes = pkg.get("secfixes") if isinstance(pkg, dict) else None
        if not isinstance(name, str) or not isinstance(fixes, dict):
            res.rejected.append(bounded(f"package entry {str(entry)[:80]}: no name/secfixes", 200))
            continue
        for version, ids in list(fixes.items())[:MAX_FIXES]:
            if not isinstance(ids, list):
                res.rejected.append(bounded(f"{name} {version}: ids are not a list", 200))
                continue
            if str(version) == "0":
                continue  # never affected on this branch
            for raw in ids:
                parts = [p for p in str(raw).split() if p]
                if not parts or not all(_ID_RE.match(p) for p in parts):
                    res.rejected.append(bounded(f"{name} {version}: bad id {str(raw)[:60]!r}", 200))
                    continue
                cves = [p for p in parts if p.startswith("CVE-")]
                main = cves[0] if cves else parts[0]
                res.advisories.append(
                    Advisory(
                        id=main,
                        feed=feed,
                        kind=FeedKind.ALPINE_SECDB,
                        aliases=tuple(p for p in parts if p != main),
                        references=(f"https://security.alpinelinux.org/vuln/{main}",),
                        affected=(
                            Affected(
                                ecosystem=ecosystem,
                                name=name,
                                ranges=((("introduced", "0"), ("fixed", str(version))),),
                                name_kind="source",
                                extra=extra,
                            ),
                        ),
                    )
                )
    return res
