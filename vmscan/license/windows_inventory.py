"""Windows inventory: OS edition, and installed programs cross-checked with executables on disk.

The Windows cataloger lists the Uninstall entries of the registry; this module reads the
version resources of the ``.exe`` files under Program Files (and the install locations
the entries name) so that software with no Uninstall entry is still found
(``found_by="windows/pe"``) and an entry whose install location is gone is flagged stale.
"""

from __future__ import annotations

import fnmatch
import logging
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from packageurl import PackageURL

from vmscan.errors import GuestReadError
from vmscan.guestfs_view import GuestFS
from vmscan.model import FileEntry, OSInfo, Package
from vmscan.pathenc import decode_path

log = logging.getLogger(__name__)

FOUND_BY = "windows/pe"
#: Largest executable read for its version resource.
MAX_EXE_SIZE = 64 * 1024 * 1024
#: Executables read per root at most (a note says when more were skipped).
MAX_EXES = 1000
#: Program folders searched besides the install locations of the Uninstall entries.
INSTALL_ROOTS = ("/Program Files", "/Program Files (x86)")
#: Per-user installs (e.g. VS Code user setup).
USER_ROOT_PATTERN = "/users/*/appdata/local/programs"
#: Executables that describe an installer or the OS, not a product.
_SKIP_FILES = ("unins*.exe", "uninst*.exe", "setup.exe", "update.exe")
_VENDOR_WORDS = {
    "microsoft",
    "windows",
    "oracle",
    "vmware",
    "google",
    "adobe",
    "intel",
    "nvidia",
    "mozilla",
    "apple",
    "java",
    "python",
    "the",
    "visual",
}
_SKIP_PRODUCTS = ("*windows*operating system*", "microsoft windows*")


def _get(extra: dict[str, Any], *keys: str) -> str:
    for k in keys:
        v = extra.get(k)
        if v not in (None, ""):
            return str(v).strip()
    return ""


def os_edition(os_info: OSInfo) -> dict[str, Any]:
    """ProductName, EditionID and installation type (Server / Server Core / Client)."""
    extra = os_info.extra or {}
    product = _get(extra, "ProductName", "product_name") or os_info.product_name
    edition = _get(extra, "EditionID", "edition_id", "edition")
    itype = _get(extra, "InstallationType", "installation_type")
    if not itype and os_info.type == "windows":
        itype = "Server" if "server" in product.lower() else ("Client" if product else "")
    build = _get(extra, "CurrentBuild", "CurrentBuildNumber", "current_build", "build")
    return {
        "type": os_info.type,
        "distro": os_info.distro,
        "product_name": product,
        "edition_id": edition,
        "installation_type": itype,
        "version": f"{os_info.major_version}.{os_info.minor_version}",
        "build": build,
    }


def windows_path(location: str) -> str | None:
    """``C:\\Program Files\\Foo\\`` → ``/Program Files/Foo`` (system drive only); None else."""
    loc = location.strip().strip('"').replace("\\", "/")
    if not loc:
        return None
    m = re.match(r"^([A-Za-z]):(/.*)?$", loc)
    if m:
        if m.group(1).upper() != "C":
            return None  # another volume: not mounted at this root
        loc = m.group(2) or "/"
    if not loc.startswith("/"):
        return None
    norm = posixpath.normpath(loc)
    return "/" if norm in (".", "/") else norm.rstrip("/")


def clean_version(*candidates: str | None) -> str:
    """First dotted number in the version strings ("Release 0.73" → "0.73")."""
    for c in candidates:
        if not c:
            continue
        m = re.search(r"\d+(?:[.,]\d+)+", c)
        if m:
            return m.group(0).replace(",", ".")
    for c in candidates:
        if c and c.strip():
            return c.strip()[:64]
    return ""


def _text(value: str | None) -> str:
    """Version-resource text made safe: lone UTF-16 surrogates (mis-encoded resources) become
    U+FFFD, control characters are dropped; JSON and CSV writers need valid text."""
    if not value:
        return ""
    text = re.sub(r"[\ud800-\udfff]", "\ufffd", value)
    # pefile writes undecodable UTF-16 as a backslash escape ("\\ud800"): the same thing.
    text = re.sub(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}", "\ufffd", text)
    return re.sub(r"[\x00-\x1f\x7f]", "", text).strip()[:256]


def _norm_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.lower())


@dataclass
class PEProduct:
    """One product seen in an install folder: the executables that carry its resource."""

    name: str
    version: str
    publisher: str
    install_dir: str
    raw_version: str = ""
    paths: list[str] = field(default_factory=list)
    machine: str = ""
    signed: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class WindowsInventory:
    """What the cross-check found."""

    products: list[PEProduct] = field(default_factory=list)
    new_packages: list[Package] = field(default_factory=list)
    verified: int = 0
    stale: list[Package] = field(default_factory=list)
    exes_seen: int = 0
    exes_read: int = 0
    exes_without_version: int = 0
    notes: list[str] = field(default_factory=list)


def _is_uninstall_entry(pkg: Package) -> bool:
    # The Windows cataloger ("os/windows") lists the registry's Uninstall entries.
    return "windows" in pkg.found_by.lower() and pkg.found_by != FOUND_BY


def _install_dir(path: str, roots: list[str]) -> str | None:
    low = path.lower()
    best: str | None = None
    for root in roots:
        rl = root.lower().rstrip("/")
        if low.startswith(rl + "/"):
            rest = path[len(rl) + 1 :]
            first = rest.split("/", 1)[0]
            cand = path[: len(rl)] + "/" + first if "/" in rest else path[: len(rl)]
            if best is None or len(cand) > len(best):
                best = cand
    return best


def candidate_exes(manifest: list[FileEntry], extra_roots: list[str]) -> list[tuple[str, int, str]]:
    """(guest path, size, install dir) of the ``.exe`` files under the program folders."""
    roots = [*INSTALL_ROOTS, *extra_roots]
    out: list[tuple[str, int, str]] = []
    for fe in manifest:
        path = fe.path
        if not path.lower().endswith(".exe") or fe.error:
            continue
        base = posixpath.basename(path).lower()
        if any(fnmatch.fnmatchcase(base, p) for p in _SKIP_FILES):
            continue
        d = _install_dir(path, roots)
        if d is None:
            m = re.match(r"(?i)^(/users/[^/]+/appdata/local/programs/[^/]+)/", path)
            if m is None:
                continue
            d = m.group(1)
        out.append((path, fe.size, d))
    out.sort(key=lambda t: t[0])
    return out


def scan_executables(
    fs: GuestFS,
    manifest: list[FileEntry],
    extra_roots: list[str],
    max_exes: int = MAX_EXES,
) -> tuple[list[PEProduct], dict[str, int], list[str]]:
    """Version resources of the candidate executables, grouped per install folder."""
    from vmscan.pe import pe_info

    notes: list[str] = []
    counts = {"seen": 0, "read": 0, "without_version": 0}
    cands = candidate_exes(manifest, extra_roots)
    counts["seen"] = len(cands)
    if len(cands) > max_exes:
        notes.append(f"{len(cands)} executables under program folders: only {max_exes} read")
        cands = cands[:max_exes]
    products: dict[tuple[str, str, str], PEProduct] = {}
    for path, size, install_dir in cands:
        if size > MAX_EXE_SIZE:
            notes.append(f"{path}: {size} bytes, over {MAX_EXE_SIZE}: not read")
            continue
        try:
            data = fs.read_bytes(
                decode_path(path).decode("utf-8", "surrogateescape"), limit=MAX_EXE_SIZE
            )
        except GuestReadError as e:
            notes.append(f"{path}: {e}")
            continue
        counts["read"] += 1
        try:
            info = pe_info(data)
        except Exception as e:  # a hostile PE must not stop the inventory
            notes.append(f"{path}: PE parse failed ({type(e).__name__})")
            continue
        if info is None:
            notes.append(f"{path}: not a readable PE")
            continue
        name = _text(info.product_name or info.file_description)
        if not name.replace("\ufffd", "").strip():
            counts["without_version"] += 1
            continue
        raw_version = _text(info.product_version)
        publisher = _text(info.company_name)
        mis_encoded = any("\ufffd" in v for v in (name, raw_version, publisher))
        if mis_encoded:
            notes.append(f"{path}: version resource has mis-encoded text")
        if any(fnmatch.fnmatchcase(name.lower(), p) for p in _SKIP_PRODUCTS):
            continue
        version = clean_version(raw_version, info.fixed_file_version, _text(info.file_version))
        key = (install_dir.lower(), _norm_name(name), version)
        prod = products.get(key)
        if prod is None:
            prod = PEProduct(
                name=name,
                version=version,
                publisher=publisher,
                install_dir=install_dir,
                raw_version=raw_version,
                machine=info.machine,
                signed=info.signed,
            )
            products[key] = prod
        if mis_encoded and len(prod.notes) < 3:
            prod.notes.append(f"{path}: version resource has mis-encoded text (shown as \ufffd)")
        prod.paths.append(path)
    return list(products.values()), counts, notes


def _matches(prod: PEProduct, pkg: Package, loc: str | None) -> bool:
    if loc and loc != "/":
        ll = loc.lower().rstrip("/")
        if prod.install_dir.lower() == ll or any(
            p.lower().startswith(ll + "/") for p in prod.paths
        ):
            return True
    a, b = _norm_name(prod.name), _norm_name(pkg.name)
    if len(a) >= 4 and len(b) >= 4 and (a in b or b in a):
        return True
    # "PuTTY suite" vs "PuTTY release 0.73 (64-bit)": the first word of the product.
    first = _norm_name(prod.name.split()[0]) if prod.name.split() else ""
    return len(first) >= 4 and first not in _VENDOR_WORDS and b.startswith(first)


def cross_check(
    fs: GuestFS,
    packages: list[Package],
    manifest: list[FileEntry],
    max_exes: int = MAX_EXES,
) -> WindowsInventory:
    """Read executables, match them with Uninstall entries; new packages and stale entries."""
    inv = WindowsInventory()
    entries = [p for p in packages if _is_uninstall_entry(p)]
    locs: dict[int, str | None] = {}
    extra_roots: list[str] = []
    for p in entries:
        raw = _get(p.extra, "install_location", "InstallLocation", "installlocation")
        loc = windows_path(raw) if raw else None
        locs[id(p)] = loc
        if (
            loc
            and loc != "/"
            and not any(loc.lower().startswith(r.lower() + "/") for r in INSTALL_ROOTS)
        ):
            extra_roots.append(posixpath.dirname(loc) or "/")
        if raw and loc is None:
            inv.notes.append(f"{p.name}: install location {raw!r} is not on the system drive")
        if loc and loc != "/" and not fs.is_dir(loc):
            p.extra["stale"] = True
            inv.stale.append(p)
    products, counts, notes = scan_executables(fs, manifest, sorted(set(extra_roots)), max_exes)
    inv.products = products
    inv.exes_seen, inv.exes_read = counts["seen"], counts["read"]
    inv.exes_without_version = counts["without_version"]
    inv.notes.extend(notes)
    seen_new: set[tuple[str, str]] = set()
    for prod in products:
        matched = [p for p in entries if _matches(prod, p, locs.get(id(p)))]
        if matched:
            for p in matched:
                checks = p.extra.setdefault("pe_verified", [])
                if isinstance(checks, list) and len(checks) < 5:
                    checks.append(
                        {"path": prod.paths[0], "product": prod.name, "version": prod.version}
                    )
                if (
                    prod.version
                    and p.version
                    and not (
                        p.version.startswith(prod.version) or prod.version.startswith(p.version)
                    )
                ):
                    p.extra["pe_version_differs"] = prod.version
            inv.verified += 1
            continue
        key = (_norm_name(prod.name), prod.version)
        if key in seen_new:
            continue
        seen_new.add(key)
        inv.new_packages.append(_package_of(prod))
    return inv


def _package_of(prod: PEProduct) -> Package:
    try:
        purl = PackageURL(type="generic", name=prod.name, version=prod.version or None).to_string()
    except ValueError:
        purl = ""
    return Package(
        name=prod.name,
        version=prod.version,
        arch=prod.machine,
        found_by=FOUND_BY,
        purl=purl,
        extra={
            "publisher": prod.publisher,
            "install_location": prod.install_dir,
            "product_version": prod.raw_version,
            "files": prod.paths[:10],
            "signed": prod.signed,
            "uninstall_entry": False,
            "notes": list(prod.notes),
        },
    )
