"""Version comparison per packaging scheme: Debian (dpkg), RPM (rpmvercmp + EVR), apk."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from debian.debian_support import version_compare as _deb_compare

# ---------------------------------------------------------------------------
# Debian


def compare_deb(a: str, b: str) -> int:
    """dpkg's ordering (python-debian's implementation): -1, 0 or 1."""
    r = _deb_compare(a, b)
    return (r > 0) - (r < 0)


# ---------------------------------------------------------------------------
# RPM


def rpmvercmp(a: str, b: str) -> int:
    """rpm's ``rpmvercmp`` (rpm >= 4.15 semantics: ``~`` sorts first, ``^`` after end)."""
    if a == b:
        return 0
    i, j = 0, 0
    la, lb = len(a), len(b)

    def sep(s: str, k: int, n: int) -> int:
        while k < n and not (s[k].isascii() and s[k].isalnum()) and s[k] not in "~^":
            k += 1
        return k

    while i < la or j < lb:
        i = sep(a, i, la)
        j = sep(b, j, lb)
        ca = a[i] if i < la else ""
        cb = b[j] if j < lb else ""
        # A tilde sorts before everything, even the end of the string.
        if ca == "~" or cb == "~":
            if ca != "~":
                return 1
            if cb != "~":
                return -1
            i += 1
            j += 1
            continue
        # A caret sorts after the end of the string but before anything else.
        if ca == "^" or cb == "^":
            if not ca:
                return -1
            if not cb:
                return 1
            if ca != "^":
                return 1
            if cb != "^":
                return -1
            i += 1
            j += 1
            continue
        if not (ca and cb):
            break
        si, sj = i, j
        if ca.isdigit():
            while i < la and a[i].isascii() and a[i].isdigit():
                i += 1
            while j < lb and b[j].isascii() and b[j].isdigit():
                j += 1
            isnum = True
        else:
            while i < la and a[i].isascii() and a[i].isalpha():
                i += 1
            while j < lb and b[j].isascii() and b[j].isalpha():
                j += 1
            isnum = False
        seg_a, seg_b = a[si:i], b[sj:j]
        if not seg_b:
            # Numeric segments are newer than alpha ones.
            return 1 if isnum else -1
        if isnum:
            seg_a = seg_a.lstrip("0")
            seg_b = seg_b.lstrip("0")
            if len(seg_a) != len(seg_b):
                return 1 if len(seg_a) > len(seg_b) else -1
        if seg_a != seg_b:
            return 1 if seg_a > seg_b else -1
    if i >= la and j >= lb:
        return 0
    return -1 if i >= la else 1


def split_evr(evr: str) -> tuple[int, str, str]:
    """``[epoch:]version[-release]`` into its parts; a missing epoch is 0."""
    epoch = 0
    rest = evr
    head, colon, tail = evr.partition(":")
    if colon and head.isdigit():
        epoch = int(head)
        rest = tail
    version, dash, release = rest.rpartition("-")
    if not dash:
        version, release = rest, ""
    return epoch, version, release


def _rpm_evr(evr: str) -> tuple[int, str, str | None]:
    """(epoch, version, release or None when there is no ``-``), as rpm's rpmverParse."""
    epoch, version, release = split_evr(evr)
    rest = evr.partition(":")[2] if evr.partition(":")[0].isdigit() and ":" in evr else evr
    return epoch, version, release if "-" in rest else None


def compare_rpm(a: str, b: str) -> int:
    """Compare two ``[epoch:]version[-release]`` strings exactly like rpm (``rpm.vercmp``).

    A missing epoch is 0; a missing release sorts before any release, even an empty one
    (rpm 4.18: ``1 < 1-`` and ``1.0 < 1.0-1``).
    """
    ea, va, ra = _rpm_evr(a)
    eb, vb, rb = _rpm_evr(b)
    if ea != eb:
        return 1 if ea > eb else -1
    r = rpmvercmp(va, vb)
    if r:
        return r
    if ra is None or rb is None:
        return 0 if ra is rb else -1 if ra is None else 1
    return rpmvercmp(ra, rb)


# ---------------------------------------------------------------------------
# apk (Alpine): vmscan's own implementation of the version order Alpine documents for
# pkgver (APKBUILD reference) and apk applies: NUMBER{.NUMBER}[letter]{_suffix[NUMBER]}
# [~hash][-rNUMBER]. Pre-release suffixes (alpha < beta < pre < rc) sort before the bare
# version, post-release ones (cvs < svn < git < hg < p) after it.

_APK_RE = re.compile(
    r"(?P<nums>[0-9]+(?:\.[0-9]+)*)"
    r"(?P<letter>[a-z])?"
    r"(?P<suffixes>(?:_(?:alpha|beta|pre|rc|cvs|svn|git|hg|p)[0-9]*)*)"
    r"(?:~(?P<hash>[0-9a-f]+))?"
    r"(?:-r(?P<rev>[0-9]+))?"
)
_APK_SUFFIX_RE = re.compile(r"_([a-z]+)([0-9]*)")
#: Rank of each suffix; below _APK_BARE: a pre-release, above it: a post-release.
_APK_SUFFIX_RANK = {"alpha": 1, "beta": 2, "pre": 3, "rc": 4, "cvs": 6, "svn": 7, "git": 8}
_APK_SUFFIX_RANK |= {"hg": 9, "p": 10}
_APK_BARE = 5
# Kinds of version parts, in the order that decides when two versions differ in kind at
# the same place: the one going on with a kind that comes earlier is the newer
# (1.2.1 > 1.2a > 1.2_p1 > 1.2-r1 > 1.2), except that a pre-release suffix is older.
_K_NUM, _K_LETTER, _K_SUFFIX, _K_SUFFIX_NUM, _K_HASH, _K_REV, _K_END = range(7)

#: apk's comparison results (bit masks), and the operators' masks built from them.
APK_EQUAL, APK_LESS, APK_GREATER, APK_FUZZY, APK_CONFLICT = 1, 2, 4, 8, 16


_Parts = list[tuple[int, int | str]]


def _cmp(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


def _apk_parts(version: str) -> _Parts | None:
    """The parts of a well-formed apk version, None when it is not one."""
    m = _APK_RE.fullmatch(version)
    if m is None:
        return None
    parts: _Parts = [(_K_NUM, n) for n in m.group("nums").split(".")]
    if m.group("letter"):
        parts.append((_K_LETTER, m.group("letter")))
    for name, num in _APK_SUFFIX_RE.findall(m.group("suffixes")):
        parts.append((_K_SUFFIX, _APK_SUFFIX_RANK[name]))
        if num:
            parts.append((_K_SUFFIX_NUM, int(num)))
    if m.group("hash"):
        parts.append((_K_HASH, m.group("hash")))
    if m.group("rev") is not None:
        parts.append((_K_REV, int(m.group("rev"))))
    return parts


def apk_validate(version: str) -> bool:
    """True when *version* is a well-formed apk version."""
    return _apk_parts(version) is not None


def _num_cmp(x: str, y: str, first: bool) -> int:
    # After the first number, a component with a leading zero is compared as text, so
    # 1.01 < 1.1 (Gentoo's rule, which apk follows); otherwise as integers.
    if not first and (x.startswith("0") or y.startswith("0")):
        return _cmp(x, y)
    return _cmp(int(x), int(y))


def _apk_order(
    pa: list[tuple[int, int | str]], pb: list[tuple[int, int | str]], fuzzy: bool
) -> int:
    for i in range(max(len(pa), len(pb))):
        ka, va = pa[i] if i < len(pa) else (_K_END, 0)
        kb, vb = pb[i] if i < len(pb) else (_K_END, 0)
        if ka == kb == _K_END:
            return 0
        if ka == kb:
            r = _num_cmp(str(va), str(vb), i == 0) if ka == _K_NUM else _cmp(va, vb)
            if r:
                return r
            continue
        if kb == _K_END and fuzzy:
            return 0  # "~" : b is a prefix of a
        if ka == _K_SUFFIX and int(va) < _APK_BARE:
            return -1
        if kb == _K_SUFFIX and int(vb) < _APK_BARE:
            return 1
        return 1 if ka < kb else -1
    return 0


def apk_op_mask(op: str) -> int:
    """Result mask of a comparison operator (``<``, ``>=``, ``=``, ``~``), 0 if not one."""
    bits = {"<": APK_LESS, ">": APK_GREATER, "=": APK_EQUAL, "~": APK_FUZZY | APK_EQUAL}
    mask = 0
    for c in op:
        if c not in bits:
            return 0
        mask |= bits[c]
    return mask


def apk_match(a: str, op: int, b: str) -> bool:
    """Does ``a OP b`` hold (*op* from :func:`apk_op_mask`; APK_CONFLICT negates it)?"""
    every = APK_EQUAL | APK_LESS | APK_GREATER
    if (op & every) == every:
        ok = True
    else:
        pa, pb = _apk_parts(a), _apk_parts(b)
        r = (
            _apk_order(pa, pb, bool(op & APK_FUZZY))
            if pa is not None and pb is not None
            else _apk_malformed_order(a, b, fuzzy=bool(op & APK_FUZZY))
        )
        ok = bool({-1: APK_LESS, 0: APK_EQUAL, 1: APK_GREATER}[r] & op)
    return not ok if op & APK_CONFLICT else ok


# Malformed versions (``1.9.5p1``, ``1-r``, ``0..8``) are refused by apk itself, and apk 2
# and 3 order them differently, yet they occur in real Alpine data. vmscan orders them
# field by field, the way the osv-scalibr test vectors (real ``apk version -t`` results
# and their edge cases, checked in tests/test_versions_corpus.py) expect: numbers (a
# missing one is 0), letter, suffixes, revision (``-r`` with no digits is 0); what is
# left over makes a version older than the same one without it; two versions that are
# both unreadable after their numbers are compared as text.
_MF_NUMS = re.compile(r"[0-9]+(?:\.[0-9]+)*\.?")
_MF_LETTER = re.compile(r"[a-z]")
_MF_SUFFIX = re.compile(r"_(alpha|beta|pre|rc|cvs|svn|git|hg|p)([0-9]*)")
_MF_HASH = re.compile(r"~[0-9a-f]+")
_MF_REV = re.compile(r"-r([0-9]*)")


@dataclass(frozen=True)
class _Malformed:
    nums: tuple[str, ...]
    letter: str
    suffixes: tuple[tuple[int, int], ...]
    revision: int
    leftover: bool
    unreadable: bool


def _malformed(v: str) -> _Malformed:
    pos = 0
    m = _MF_NUMS.match(v)
    nums = tuple(n for n in (m.group(0).split(".") if m else []) if n)
    pos = m.end() if m else 0
    letter = ""
    if (lm := _MF_LETTER.match(v, pos)) is not None:
        letter, pos = lm.group(0), lm.end()
    suffixes = []
    while (sm := _MF_SUFFIX.match(v, pos)) is not None:
        suffixes.append((_APK_SUFFIX_RANK[sm.group(1)], int(sm.group(2) or 0)))
        pos = sm.end()
    if (hm := _MF_HASH.match(v, pos)) is not None:
        pos = hm.end()
    revision, unreadable = 0, False
    if pos < len(v):
        rm = _MF_REV.match(v, pos)
        if rm is None:
            unreadable = True
        else:
            revision, pos = int(rm.group(1) or 0), rm.end()
    return _Malformed(nums, letter, tuple(suffixes), revision, pos < len(v), unreadable)


def _apk_malformed_order(a: str, b: str, fuzzy: bool = False) -> int:
    ma, mb = _malformed(a), _malformed(b)
    if ma.unreadable and mb.unreadable:
        return _cmp(a, b)
    bare_b = not (mb.letter or mb.suffixes or mb.revision or mb.leftover)
    if fuzzy and bare_b and ma.nums[: len(mb.nums)] == mb.nums:
        return 0  # "~": b is a leading part of a
    for i in range(max(len(ma.nums), len(mb.nums))):
        x = ma.nums[i] if i < len(ma.nums) else "0"
        y = mb.nums[i] if i < len(mb.nums) else "0"
        r = _num_cmp(x, y, i == 0)
        if r:
            return r
    if ma.letter != mb.letter:
        return -1 if not ma.letter else 1 if not mb.letter else _cmp(ma.letter, mb.letter)
    for i in range(max(len(ma.suffixes), len(mb.suffixes))):
        x2 = ma.suffixes[i] if i < len(ma.suffixes) else (_APK_BARE, 0)
        y2 = mb.suffixes[i] if i < len(mb.suffixes) else (_APK_BARE, 0)
        if x2 != y2:
            return _cmp(x2, y2)
    if ma.revision != mb.revision:
        return _cmp(ma.revision, mb.revision)
    if ma.leftover != mb.leftover:
        return -1 if ma.leftover else 1
    return 0


def compare_apk(a: str, b: str) -> int:
    """apk's version ordering: -1, 0 or 1 (malformed versions: see above)."""
    pa, pb = _apk_parts(a), _apk_parts(b)
    if pa is None or pb is None:
        return _apk_malformed_order(a, b)
    return _apk_order(pa, pb, False)


# ---------------------------------------------------------------------------

#: Comparator per version scheme name.
COMPARATORS: dict[str, Callable[[str, str], int]] = {
    "deb": compare_deb,
    "rpm": compare_rpm,
    "apk": compare_apk,
}


def scheme_for_ecosystem(ecosystem: str) -> str | None:
    """Version scheme of an OSV ecosystem name (``Debian:12`` -> ``deb``), None if unknown."""
    base = ecosystem.split(":", 1)[0].strip().lower()
    if base in ("debian", "ubuntu"):
        return "deb"
    if base in ("alpine", "wolfi", "chainguard"):
        return "apk"
    if base in (
        "red hat",
        "almalinux",
        "rocky linux",
        "suse",
        "opensuse",
        "mariner",
        "azure linux",
        "fedora",
        "openeuler",
        "amazon linux",
        "oracle linux",
        "centos",
    ):
        return "rpm"
    return None


def compare(scheme: str, a: str, b: str) -> int:
    """Compare with the named scheme (``deb``, ``rpm``, ``apk``); KeyError if unknown."""
    return COMPARATORS[scheme](a, b)
