"""Licences of a dpkg package from its ``/usr/share/doc/<package>/copyright`` file.

Machine-readable (DEP-5) files are parsed with python-debian's ``debian.copyright``
(a lenient paragraph reader takes over when its header is broken); free-text files are
read for references to ``/usr/share/common-licenses/...`` and for the distinctive wording
of well-known licences. Only what the file states is reported: an undetermined licence is
an empty list ("unknown"), never a guess.
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from debian.copyright import Copyright
from debian.copyright import Error as CopyrightError

from vmscan.completeness import info
from vmscan.errors import GuestReadError, TooLargeError
from vmscan.guestfs_view import GuestFS, Stat
from vmscan.license.spdx_map import LicenseMap, default_map
from vmscan.model import FileEntry

log = logging.getLogger(__name__)
# python-debian warns on every old Format URL ("Fixing Format URL"): hundreds of lines per
# scan that say nothing about the guest. Its errors still show.
logging.getLogger("debian.copyright").setLevel(logging.ERROR)

#: Copyright files are a few KiB; a few (boost, llvm) reach a few MiB. Past this
#: limit only the head is read (and that is said in a note).
COPYRIGHT_LIMIT = 4 * 1024 * 1024
#: Larger DEP-5 files are read with the lenient paragraph reader (python-debian is slow).
STRICT_PARSE_LIMIT = 512 * 1024
#: Symlink hops followed for a doc dir or copyright file (Debian chains are 1-2 deep).
MAX_LINK_HOPS = 8

DOC_ROOT = "/usr/share/doc"


@dataclass(frozen=True)
class CopyrightLicense:
    """What one copyright file says about licences."""

    #: SPDX expressions, the licence of ``Files: *`` (or the first one found) first.
    licenses: tuple[str, ...]
    #: "dep5", "dep5-lenient", "text" or "none".
    method: str
    #: The licence names as written in the file (DEP-5 short names), same order.
    names: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def decode(data: bytes) -> tuple[str, list[str]]:
    """UTF-8 when valid, otherwise Latin-1 (it decodes any byte), with a note."""
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        return data.decode("latin-1"), ["copyright file is not UTF-8: read as Latin-1"]


def is_dep5(text: str) -> bool:
    """True when the first field is DEP-5's ``Format:`` (or its draft ``Format-Specification:``)."""
    for line in text.splitlines()[:5]:
        if line.strip():
            return bool(re.match(r"(?i)^format(-specification)?\s*:", line))
    return False


def _debian_only(files: list[str]) -> bool:
    # Packaging files (debian/*) are not shipped in the binary package.
    return bool(files) and all(f.startswith("debian/") or f == "debian" for f in files)


def _lenient_paragraphs(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs without any validation (for files python-debian refuses)."""
    paras: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if cur:
                paras.append(cur)
            cur, last = {}, ""
            continue
        if line[0] in " \t":
            if last:
                cur[last] += "\n" + line.strip()
            continue
        m = re.match(r"^([!-9;-~][!-9;-~]*)\s*:\s?(.*)$", line)
        if m:
            last = m.group(1).lower()
            cur[last] = m.group(2).strip()
    if cur:
        paras.append(cur)
    return paras


def _dep5_entries(text: str) -> tuple[list[tuple[list[str], str, str]], str, list[str]]:
    """(files, synopsis, full text) for each Files paragraph; the method; notes."""
    notes: list[str] = []
    if len(text) > STRICT_PARSE_LIMIT:
        # python-debian's round-trip parser needs seconds for boost's 2 MB file; the
        # lenient reader gives the same Files/License pairs (tested on the corpus).
        notes.append(f"copyright file over {STRICT_PARSE_LIMIT} bytes: read with the fast reader")
        return _lenient_entries(text, notes)
    try:
        cr = Copyright(text.splitlines(keepends=True), strict=False)
        entries: list[tuple[list[str], str, str]] = []
        for fp in cr.all_files_paragraphs():
            try:
                lic: Any = fp.license
            except (CopyrightError, ValueError, KeyError):
                continue
            if lic is None:
                continue
            entries.append((list(fp.files), str(lic.synopsis or ""), str(lic.text or "")))
        if not entries:
            hl: Any = cr.header.license
            if hl is not None:
                entries.append((["*"], str(hl.synopsis or ""), str(hl.text or "")))
        return entries, "dep5", notes
    except Exception as e:  # python-debian raises many types on broken input
        notes.append(f"DEP-5 parse failed ({type(e).__name__}: {str(e)[:120]}): read leniently")
    return _lenient_entries(text, notes)


def _lenient_entries(
    text: str, notes: list[str]
) -> tuple[list[tuple[list[str], str, str]], str, list[str]]:
    entries: list[tuple[list[str], str, str]] = []
    for para in _lenient_paragraphs(text):
        if "license" not in para:
            continue
        files = para.get("files", "*" if "format" in para else "")
        if not files:
            continue  # a stand-alone License paragraph
        first, _, rest = para["license"].partition("\n")
        entries.append((files.split(), first.strip(), rest))
    return entries, "dep5-lenient", notes


def parse_dep5(text: str, lmap: LicenseMap | None = None) -> CopyrightLicense:
    """Licences of the Files paragraphs of a DEP-5 file (``debian/*`` ones left out)."""
    lmap = lmap or default_map()
    entries, method, notes = _dep5_entries(text)
    found: list[tuple[bool, str, str]] = []  # (is_star, expression, name)
    packaging: list[tuple[bool, str, str]] = []
    for files, synopsis, body in entries:
        norm = lmap.normalize(synopsis) if synopsis else None
        if norm is None:
            # No usable short name: the licence may still be stated in the text itself.
            text_lics = match_text(synopsis + "\n" + body, lmap)
            if not text_lics:
                if synopsis or body.strip():
                    notes.append(f"licence of Files: {' '.join(files)[:60]} not recognised")
                continue
            pairs = [(e, synopsis[:60] or "(text)") for e in text_lics]
        else:
            notes.extend(norm.notes)
            pairs = [(norm.expression, synopsis)]
        target = packaging if _debian_only(files) else found
        for expr, name in pairs:
            target.append(("*" in files, expr, name))
    if not found:
        # Only packaging paragraphs: they are the package's only stated licence.
        found = packaging
    found.sort(key=lambda t: not t[0])  # stable: Files: * first
    exprs = list(dict.fromkeys(e for _, e, _ in found))
    names = list(dict.fromkeys(n for _, _, n in found))
    return CopyrightLicense(
        tuple(exprs), method if exprs else "none", tuple(names), tuple(dict.fromkeys(notes))
    )


# -- free text -----------------------------------------------------------------------

_COMMON = re.compile(r"/usr/share/common-licenses/([A-Za-z][A-Za-z0-9.+_-]*[A-Za-z0-9+])")
_LATER = re.compile(
    r"(any\s+later\s+version|or\s+later|or\s+\(at\s+your\s+option\)\s+any\s+later"
    r"|or\s+any\s+later|\bv?\d(\.\d)?\+)",
    re.IGNORECASE,
)
_GNU_NAMED = re.compile(
    r"GNU\s+(?:(?P<kind>Affero\s+General|Lesser\s+General|Library\s+General|General)\s+Public"
    r"|(?P<fdl>Free\s+Documentation))\s+Licen[cs]e",
    re.IGNORECASE,
)
_NEXT_LICENCE = re.compile(r"(Public|Documentation)\s+Licen[cs]e|\.\s", re.IGNORECASE)
_POINTER = re.compile(r"can\s+be\s+found|common-licenses|(full|complete)\s+text", re.I)
_VERSION = re.compile(r"\bversion\s+(\d(?:\.\d)?)\b|\bv(\d(?:\.\d)?)\b", re.IGNORECASE)

# Distinctive wording → SPDX id. Each is a phrase only the licence itself contains.
_PHRASES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"Apache\s+License,?\s+V(?:ersion|\.)?\s*2(?:\.0)?\b", re.I), "Apache-2.0"),
    (re.compile(r"Apache\s+License,?\s+Version\s+1\.1", re.I), "Apache-1.1"),
    (re.compile(r"Mozilla\s+Public\s+License,?\s+v(?:ersion|\.)?\s*2\.0", re.I), "MPL-2.0"),
    (re.compile(r"Mozilla\s+Public\s+License,?\s+v(?:ersion|\.)?\s*1\.1", re.I), "MPL-1.1"),
    (re.compile(r"Boost\s+Software\s+License\s*-?\s*Version\s+1\.0", re.I), "BSL-1.0"),
    (
        re.compile(
            r"Permission\s+is\s+hereby\s+granted,\s+free\s+of\s+charge,\s+to\s+any\s+"
            r"person\s+obtaining\s+a\s+copy",
            re.I,
        ),
        "MIT",
    ),
    (
        re.compile(
            r"Permission\s+to\s+use,\s+copy,\s+modify,\s+and/or\s+distribute\s+this\s+"
            r"software\s+for\s+any\s+purpose\s+with\s+or\s+without\s+fee",
            re.I,
        ),
        "ISC",
    ),
    (
        re.compile(
            r"provided\s+'?as-is'?,\s+without\s+any\s+express\s+or\s+implied\s+warranty"
            r".{0,800}?must\s+be\s+plainly\s+marked",
            re.I | re.S,
        ),
        "Zlib",
    ),
    (re.compile(r"Artistic\s+License\s+2\.0", re.I), "Artistic-2.0"),
    (re.compile(r"Creative\s+Commons\s+(?:CC0|Zero)", re.I), "CC0-1.0"),
    (re.compile(r"OpenLDAP\s+Public\s+License.{0,40}?Version\s+2\.8", re.I | re.S), "OLDAP-2.8"),
    (re.compile(r"PYTHON\s+SOFTWARE\s+FOUNDATION\s+LICENSE\s+VERSION\s+2", re.I), "PSF-2.0"),
    (re.compile(r"The\s+FreeType\s+Project\s+LICENSE", re.I), "FTL"),
    (
        re.compile(
            r"Permission\s+to\s+use,\s+copy,\s+modify,\s+distribute,\s+and\s+sell\s+this\s+"
            r"software\s+and\s+its\s+documentation\s+for\s+any\s+purpose\s+is\s+hereby\s+"
            r"granted\s+without\s+fee(?!.{0,1500}?the\s+name\s+of\s+The\s+Open\s+Group)",
            re.I | re.S,
        ),
        "HPND-sell-variant",
    ),
    (
        re.compile(
            r"Permission\s+to\s+use,\s+copy,\s+modify,\s+distribute,\s+and\s+sell\s+this\s+"
            r"software\s+and\s+its\s+documentation\s+for\s+any\s+purpose\s+is\s+hereby\s+"
            r"granted\s+without\s+fee(?=.{0,1500}?the\s+name\s+of\s+The\s+Open\s+Group)",
            re.I | re.S,
        ),
        "MIT-open-group",
    ),
    (re.compile(r"of\s+the\s+Info-ZIP\s+license", re.I), "Info-ZIP"),
    (
        re.compile(
            r"authors\s+hereby\s+grant\s+permission\s+to\s+use,\s+copy,\s+modify,\s+"
            r"distribute,\s+and\s+license\s+this\s+software",
            re.I,
        ),
        "TCL",
    ),
    (
        re.compile(r"\bis\s+(?:placed\s+|released\s+)?in(?:to)?\s+the\s+public\s+domain", re.I),
        "LicenseRef-public-domain",
    ),
]
_BSD = re.compile(r"Redistribution\s+and\s+use\s+in\s+source\s+and\s+binary\s+forms", re.I)

_COMMON_NAMES: dict[str, str] = {
    "apache-2.0": "Apache-2.0",
    "artistic": "Artistic-1.0-Perl",
    "bsd": "BSD-3-Clause",  # Debian's common-licenses/BSD is the Regents' 3-clause text
    "cc0-1.0": "CC0-1.0",
    "mpl-1.1": "MPL-1.1",
    "mpl-2.0": "MPL-2.0",
}


def _gnu_from(fam: str, ver: str | None, later: bool, lmap: LicenseMap) -> str | None:
    name = fam + (f"-{ver}" if ver else "") + ("+" if later and ver else "")
    spdx, _ = lmap.name_to_spdx(name)
    return spdx


def _uncomment(text: str) -> str:
    # Licence texts pasted from sources keep their comment markers (" * ", "# ").
    return re.sub(r"(?m)^[ \t]*(?:[*#;]+|//)[ \t]?", "", text)


_INLINE = re.compile(
    r"(?<![\w/-])(?P<fam>AGPL|LGPL|GPL|GFDL)\s*-?\s*(?:version\s*|v\.?\s*)?"
    r"(?P<ver>[1-3](?:\.[0-3])?)(?![\d.]\d)(?P<plus>\+|\s+or\s+(?:any\s+)?later)?",
    re.IGNORECASE,
)
_FAMILIES = {
    "affero": "agpl",
    "lesser": "lgpl",
    "library": "lgpl",
    "general": "gpl",
    "free": "gfdl",
}


def _family_version(spdx: str) -> str:
    # "GPL-2.0-or-later" and "GPL-2.0-only" are the same licence text, the same pointer.
    return re.sub(r"-(only|or-later)$", "", spdx.split(" ")[0])


def _gnu_hits(text: str, lmap: LicenseMap) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(statements, pointers) of GNU licences: a statement names a version ("GPLv2+",
    "GNU General Public License ... version 3 ... any later version"); a pointer is a
    ``/usr/share/common-licenses/GPL-2`` reference, weaker (it says where, not which)."""
    strong: list[tuple[int, str]] = []
    weak: list[tuple[int, str]] = []
    for m in _INLINE.finditer(text):
        spdx = _gnu_from(m["fam"].lower(), m["ver"], bool(m["plus"]), lmap)
        if spdx:
            strong.append((m.start(), spdx))
    for m in _GNU_NAMED.finditer(text):
        fam = "gfdl" if m.group("fdl") else _FAMILIES[m.group("kind").lower().split()[0]]
        after = text[m.end() : m.end() + 250]
        cut = _NEXT_LICENCE.search(after)
        if cut is not None:
            after = after[: cut.start()]
        before = text[max(0, m.start() - 120) : m.start()]
        pointer = bool(_POINTER.search(before[-80:] + after))
        va = _VERSION.search(after)
        vb = list(_VERSION.finditer(before))
        if va is not None:
            ver = va.group(1) or va.group(2)
            later = bool(_LATER.search(text[m.end() : m.end() + va.end() + 120]))
        elif vb:
            ver = vb[-1].group(1) or vb[-1].group(2)
            later = bool(_LATER.search(text[m.start() - 120 + vb[-1].start() : m.end() + 120]))
        else:
            continue  # "see the GNU General Public License for more details": no version
        spdx = _gnu_from(fam, ver, later, lmap)
        if spdx:
            (weak if pointer else strong).append((m.start(), spdx))
    for m in _COMMON.finditer(text):
        low = m.group(1).rstrip(".").lower()
        if low in _COMMON_NAMES:
            weak.append((m.start(), _COMMON_NAMES[low]))
            continue
        g = re.match(r"^(gpl|lgpl|gfdl|agpl)(?:-(\d(?:\.\d)?))?$", low)
        if g is None or g.group(2) is None:
            continue  # unversioned pointer: the statement (if any) was found above
        win = text[max(0, m.start() - 600) : m.end() + 200]
        spdx = _gnu_from(g.group(1), g.group(2), bool(_LATER.search(win)), lmap)
        if spdx:
            weak.append((m.start(), spdx))
    return strong, weak


def match_text(text: str, lmap: LicenseMap | None = None) -> list[str]:
    """SPDX ids stated by a free-text licence notice, in the order they appear."""
    lmap = lmap or default_map()
    text = _uncomment(text)
    strong, weak = _gnu_hits(text, lmap)
    stated = {_family_version(s) for _, s in strong}
    hits = strong + [(p, s) for p, s in weak if _family_version(s) not in stated]
    for rx, spdx in _PHRASES:
        m2 = rx.search(text)
        if m2:
            hits.append((m2.start(), spdx))
    mb = _BSD.search(text)
    if mb:
        tail = text[mb.start() : mb.start() + 2500]
        if re.search(r"advertising\s+materials", tail, re.I):
            kind = "BSD-4-Clause"
        elif re.search(
            r"(Neither\s+the\s+name|may\s+not\s+be\s+used\s+to\s+endorse|name\s+of"
            r"\s+the\s+author\s+may\s+not)",
            tail,
            re.I,
        ):
            kind = "BSD-3-Clause"
        else:
            kind = "BSD-2-Clause"
        hits.append((mb.start(), kind))
    hits.sort(key=lambda h: h[0])
    return list(dict.fromkeys(s for _, s in hits))


def parse_copyright(data: bytes, lmap: LicenseMap | None = None) -> CopyrightLicense:
    """Licences stated by one copyright file (DEP-5 or free text); never raises."""
    text, notes = decode(data)
    text = text.replace("\r\n", "\n").replace("\x00", "")
    if is_dep5(text):
        res = parse_dep5(text, lmap)
        if not res.licenses:
            # A DEP-5 header on a file whose paragraphs say nothing usable: try the prose.
            found = match_text(text, lmap)
            if found:
                return CopyrightLicense(
                    tuple(found),
                    "text",
                    (),
                    (*notes, *res.notes, "DEP-5 gave nothing: read as text"),
                )
        return CopyrightLicense(res.licenses, res.method, res.names, (*notes, *res.notes))
    found = match_text(text, lmap)
    if not found:
        notes.append("no licence stated in a recognisable form")
    return CopyrightLicense(tuple(found), "text" if found else "none", (), tuple(notes))


# -- guest access --------------------------------------------------------------------


def is_copyright_file(fe: FileEntry) -> bool:
    """A dpkg copyright file (``/usr/share/doc/<package>/copyright``, at any depth below)."""
    return fe.path.startswith(DOC_ROOT + "/") and posixpath.basename(fe.path) == "copyright"


def resolve_in_guest(
    fs: GuestFS,
    path: str,
    hops: int = MAX_LINK_HOPS,
    memo: dict[str, Stat | None] | None = None,
) -> str | None:
    """Follow symlinks of every component of *path* inside the guest, bounded.

    *memo* caches ``lstat`` of the folders on the way (``/usr/share/doc`` is walked once
    per package otherwise: each call is a round trip to the appliance)."""
    parts = [p for p in path.split("/") if p]
    cur = "/"
    budget = hops
    while parts:
        part = parts.pop(0)
        if part in (".", ""):
            continue
        if part == "..":
            cur = posixpath.dirname(cur) or "/"
            continue
        cand = posixpath.join(cur, part)
        # The last component (the file itself) is never cached: it is read right after.
        if memo is not None and parts and cand in memo:
            st = memo[cand]
        else:
            st = fs.lstat(cand)
            if memo is not None and parts and len(memo) < 4096:
                memo[cand] = st
        if st is None:
            return None
        if st.is_link:
            budget -= 1
            if budget < 0:
                return None
            target = fs.readlink(cand)
            if not target:
                return None
            base = "/" if target.startswith("/") else cur
            parts = [p for p in target.split("/") if p] + parts
            cur = base
            continue
        cur = cand
    return cur


def read_package_copyright(
    fs: GuestFS,
    package: str,
    lmap: LicenseMap | None = None,
    limit: int = COPYRIGHT_LIMIT,
    memo: dict[str, Stat | None] | None = None,
) -> tuple[CopyrightLicense, str]:
    """(licences, path read) for one dpkg package; path "" when there is no file.

    Notes on how a file was read are :class:`~vmscan.completeness.Info`; a file that is
    there but could not be read is a plain note (a gap: the licence check is partial).
    """
    if not package or "/" in package or package in (".", ".."):
        return CopyrightLicense((), "none", (), (info("bad package name"),)), ""
    wanted = f"{DOC_ROOT}/{package}/copyright"
    path = resolve_in_guest(fs, wanted, memo=memo)
    if path is None:
        return CopyrightLicense((), "none", (), (info(f"no {wanted}"),)), ""
    notes: list[str] = []
    try:
        data = fs.read_bytes(path, limit)
    except TooLargeError:
        try:
            data = fs.read_head(path, limit)
        except GuestReadError as e:
            return CopyrightLicense((), "none", (), (f"{wanted}: {e}",)), path
        # Cut at the last paragraph break so no field is half read.
        cut = data.rfind(b"\n\n")
        data = data[: cut if cut > 0 else len(data)]
        notes.append(f"{wanted} is over {limit} bytes: only its head was read")
    except GuestReadError as e:
        return CopyrightLicense((), "none", (), (f"{wanted}: {e}",)), path
    res = parse_copyright(data, lmap)
    readings = tuple(info(n) for n in (*notes, *res.notes))
    return CopyrightLicense(res.licenses, res.method, res.names, readings), path
