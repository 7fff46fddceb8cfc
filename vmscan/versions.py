"""Version comparison per packaging scheme: Debian (dpkg), RPM (rpmvercmp + EVR), apk."""

from __future__ import annotations

from collections.abc import Callable

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


def compare_rpm(a: str, b: str) -> int:
    """Compare two RPM ``[epoch:]version[-release]`` strings like ``rpm -q`` ordering."""
    ea, va, ra = split_evr(a)
    eb, vb, rb = split_evr(b)
    if ea != eb:
        return 1 if ea > eb else -1
    r = rpmvercmp(va, vb)
    if r:
        return r
    # A release missing on one side (e.g. an advisory naming only a version) matches any.
    if not ra or not rb:
        return 0
    return rpmvercmp(ra, rb)


# ---------------------------------------------------------------------------
# apk (apk-tools version.c)

_T_INVALID, _T_DIGIT_OR_ZERO, _T_DIGIT, _T_LETTER, _T_SUFFIX, _T_SUFFIX_NO = -1, 0, 1, 2, 3, 4
_T_REVISION_NO, _T_END = 5, 6
_PRE_SUFFIXES = ("alpha", "beta", "pre", "rc")
_POST_SUFFIXES = ("cvs", "svn", "git", "hg", "p")


class _ApkTok:
    """Tokenizer state over one apk version string."""

    def __init__(self, s: str) -> None:
        self.s = s
        self.pos = 0
        self.type = _T_DIGIT

    def _left(self) -> int:
        return len(self.s) - self.pos

    def _next_token(self) -> None:
        n = _T_INVALID
        s, p = self.s, self.pos
        if self._left() == 0:
            n = _T_END
        elif self.type in (_T_DIGIT, _T_DIGIT_OR_ZERO) and s[p].islower():
            n = _T_LETTER
        elif self.type == _T_LETTER and s[p].isdigit():
            n = _T_DIGIT
        elif self.type == _T_SUFFIX and s[p].isdigit():
            n = _T_SUFFIX_NO
        else:
            c = s[p]
            if c == ".":
                n = _T_DIGIT_OR_ZERO
            elif c == "_":
                n = _T_SUFFIX
            elif c == "-" and self._left() > 1 and s[p + 1] == "r":
                n = _T_REVISION_NO
                self.pos += 1
            self.pos += 1
        if n < self.type and not (
            (n == _T_DIGIT_OR_ZERO and self.type == _T_DIGIT)
            or (n == _T_SUFFIX and self.type == _T_SUFFIX_NO)
            or (n == _T_DIGIT and self.type == _T_LETTER)
        ):
            n = _T_INVALID
        self.type = n

    def get(self) -> int:
        s = self.s
        if self._left() <= 0:
            self.type = _T_END
            return 0
        v, i, nt = 0, 0, _T_INVALID
        p = self.pos
        t = self.type
        if t == _T_DIGIT_OR_ZERO and s[p] == "0":
            # Leading zeros: compare like a decimal fraction (1.01 < 1.1).
            while p + i < len(s) and s[p + i] == "0":
                i += 1
            v = -i
            # apk-tools continues with a digit token here even when none follows, which
            # makes "1.0_rc1" newer than "1.0"; only do so when digits follow.
            if p + i < len(s) and s[p + i].isdigit():
                nt = _T_DIGIT
        elif t in (_T_DIGIT_OR_ZERO, _T_DIGIT, _T_SUFFIX_NO, _T_REVISION_NO):
            while p + i < len(s) and s[p + i].isascii() and s[p + i].isdigit():
                v = v * 10 + int(s[p + i])
                i += 1
        elif t == _T_LETTER:
            v = ord(s[p])
            i = 1
        elif t == _T_SUFFIX:
            rest = s[p:]
            for k, suf in enumerate(_PRE_SUFFIXES):
                if rest.startswith(suf):
                    v, i = k - len(_PRE_SUFFIXES), len(suf)
                    break
            else:
                for k, suf in enumerate(_POST_SUFFIXES):
                    if rest.startswith(suf):
                        v, i = k, len(suf)
                        break
                else:
                    self.type = _T_INVALID
                    return -1
        else:
            self.type = _T_INVALID
            return -1
        self.pos += i
        if self._left() == 0:
            self.type = _T_END
        elif nt != _T_INVALID:
            self.type = nt
        else:
            self._next_token()
        return v


def compare_apk(a: str, b: str) -> int:
    """apk-tools' version ordering: -1, 0 or 1."""
    ta, tb = _ApkTok(a), _ApkTok(b)
    av = bv = 0
    while ta.type == tb.type and ta.type not in (_T_END, _T_INVALID) and av == bv:
        av = ta.get()
        bv = tb.get()
    if av != bv:
        return -1 if av < bv else 1
    if ta.type == tb.type:
        return 0
    # The longer version is newer unless what follows is a pre-release suffix.
    if ta.type == _T_SUFFIX:
        probe = _ApkTok(a)
        probe.pos, probe.type = ta.pos, ta.type
        if probe.get() < 0:
            return -1
    if tb.type == _T_SUFFIX:
        probe = _ApkTok(b)
        probe.pos, probe.type = tb.pos, tb.type
        if probe.get() < 0:
            return 1
    if ta.type > tb.type:
        return -1
    if tb.type > ta.type:
        return 1
    return 0


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
