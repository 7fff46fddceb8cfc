"""vmscan's ClamAV signature files: manifest, verification, local hash lookup, digests."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmscan.sigdir import BUNDLED

log = logging.getLogger(__name__)

#: The signature folder shipped with vmscan (``signatures/clamav`` at the project root).
DEFAULT_SIG_DIR = BUNDLED / "clamav"
MANIFEST_NAME = "MANIFEST.json"
#: Plain-text database formats vmscan ships (and verifies line by line).
TEXT_FORMATS = (".hsb", ".hdb", ".ndb", ".ldb", ".yar", ".yara")
#: Everything clamd may load from a database folder.
DB_SUFFIXES = (
    ".cvd",
    ".cld",
    ".cud",
    ".hdb",
    ".hsb",
    ".hdu",
    ".hsu",
    ".mdb",
    ".msb",
    ".mdu",
    ".msu",
    ".ndb",
    ".ndu",
    ".ldb",
    ".ldu",
    ".idb",
    ".cdb",
    ".cbc",
    ".pdb",
    ".gdb",
    ".wdb",
    ".ftm",
    ".fp",
    ".sfp",
    ".ign",
    ".ign2",
    ".yar",
    ".yara",
    ".crb",
    ".info",
    ".cfg",
    ".pwdb",
)
#: The harmless marker string the tests plant (documented in signatures/clamav/README.md).
TEST_MARKER = b"VMSCAN-TEST-MARKER-7d1c0b5e"
#: ClamAV appends this to the names of signatures that are not in signed databases.
UNOFFICIAL_SUFFIX = ".UNOFFICIAL"

_SIGNAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


@dataclass(frozen=True)
class HashSignature:
    """One entry of a .hsb/.hdb hash list."""

    digest: str  # lower-case hex
    size: int | None  # None: any size ("*")
    name: str


def normalize_name(name: str) -> str:
    """Signature name as vmscan reports it (clamd's ``.UNOFFICIAL`` suffix removed)."""
    name = name.strip()
    if name.endswith(UNOFFICIAL_SUFFIX):
        name = name[: -len(UNOFFICIAL_SUFFIX)]
    return name


def _check_hash_line(line: str) -> str | None:
    parts = line.split(":")
    if len(parts) < 3:
        return "expected HASH:SIZE:NAME[:FLEVEL]"
    digest, size, name = parts[0], parts[1], parts[2]
    if len(digest) not in (32, 40, 64) or not _HEX.match(digest):
        return "hash is not 32, 40 or 64 hex digits"
    if size != "*" and not size.isdigit():
        return "size is not a number or *"
    if size == "*" and (len(parts) < 4 or not parts[3].isdigit() or int(parts[3]) < 73):
        return "size * needs a minimum functionality level of at least 73"
    if not _SIGNAME.match(name):
        return f"bad signature name {name!r}"
    return None


def _check_ndb_line(line: str) -> str | None:
    parts = line.split(":")
    if len(parts) < 4:
        return "expected Name:TargetType:Offset:HexSignature"
    name, target, offset, body = parts[0], parts[1], parts[2], parts[3]
    if not _SIGNAME.match(name):
        return f"bad signature name {name!r}"
    if not target.isdigit():
        return "target type is not a number"
    if not offset:
        return "empty offset"
    if not body or len(re.sub(r"[^0-9a-fA-F]", "", body)) < 4:
        return "body signature is too short"
    return None


def _check_ldb_line(line: str) -> str | None:
    parts = line.split(";")
    if len(parts) < 4:
        return "expected Name;TargetDescription;LogicalExpression;Subsig0[;Subsig1...]"
    if not _SIGNAME.match(parts[0]):
        return f"bad signature name {parts[0]!r}"
    if "Engine:" not in parts[1] and "Target:" not in parts[1]:
        return "target description has no Target/Engine"
    return None


def parse_hash_list(text: str) -> list[HashSignature]:
    """Entries of a .hsb/.hdb text (malformed lines are skipped: verify() reports them)."""
    out: list[HashSignature] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or _check_hash_line(line):
            continue
        digest, size, name = line.split(":")[:3]
        out.append(HashSignature(digest.lower(), None if size == "*" else int(size), name))
    return out


def load_sha256_signatures(*dirs: Path) -> dict[str, list[HashSignature]]:
    """SHA-256 hash signatures of the plain .hsb/.hdb files in *dirs*, by digest.

    Only plain-text lists are read: hash entries inside signed .cvd/.cld archives are
    matched by clamd itself when the file is streamed.
    """
    table: dict[str, list[HashSignature]] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for path in sorted(d.iterdir()):
            if path.suffix not in (".hsb", ".hdb", ".hsu", ".hdu") or not path.is_file():
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for sig in parse_hash_list(text):
                if len(sig.digest) == 64:
                    table.setdefault(sig.digest, []).append(sig)
    return table


def match_hash(
    table: dict[str, list[HashSignature]], sha256: str | None, size: int
) -> HashSignature | None:
    """The first signature matching a file's SHA-256 and size."""
    if not sha256:
        return None
    for sig in table.get(sha256.lower(), ()):
        if sig.size is None or sig.size == size:
            return sig
    return None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def database_digest(db_dir: Path) -> str:
    """Digest of every database file in *db_dir* (name and content), in name order."""
    h = hashlib.sha256()
    for path in sorted(db_dir.iterdir()):
        if path.suffix in DB_SUFFIXES and path.is_file():
            h.update(path.name.encode() + b"\0" + _file_sha256(path).encode() + b"\n")
    return h.hexdigest()


#: Plain hash lists: their SHA-256 entries can be matched against stored file hashes.
HASH_SUFFIXES = (".hsb", ".hdb", ".hsu", ".hdu")


def split_digests(db_dir: Path) -> tuple[str, str]:
    """(content digest, SHA-256 hash-list digest) of the databases in *db_dir*.

    The second covers exactly the entries :func:`load_sha256_signatures` loads, which
    can be re-matched against the manifest's stored SHA-256 without reading a guest; the
    first covers everything else (content signatures, archives, and the hash entries
    that are not SHA-256, which only clamd matches, on the file's bytes).
    """
    content, hashes = hashlib.sha256(), hashlib.sha256()
    if not db_dir.is_dir():
        return "absent", "absent"
    for path in sorted(db_dir.iterdir()):
        if path.suffix not in DB_SUFFIXES + HASH_SUFFIXES or not path.is_file():
            continue
        if path.suffix not in HASH_SUFFIXES:
            content.update(path.name.encode() + b"\0" + _file_sha256(path).encode() + b"\n")
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            sigs = [] if _check_hash_line(line) else parse_hash_list(line)
            target = hashes if sigs and len(sigs[0].digest) == 64 else content
            target.update(path.name.encode() + b"\0" + line.encode() + b"\n")
    return content.hexdigest(), hashes.hexdigest()


def _signature_files(sig_dir: Path) -> list[Path]:
    return sorted(p for p in sig_dir.iterdir() if p.is_file() and p.suffix in DB_SUFFIXES)


def _count_lines(path: Path) -> int:
    text = path.read_text(encoding="utf-8", errors="replace")
    return sum(1 for ln in text.splitlines() if ln.strip() and not ln.startswith("#"))


def build_manifest(sig_dir: Path, version: str) -> dict[str, object]:
    """The MANIFEST.json content for the files in *sig_dir* (all at *version*)."""
    files = []
    for p in _signature_files(sig_dir):
        files.append(
            {
                "name": p.name,
                "version": version,
                "sha256": _file_sha256(p),
                "signatures": _count_lines(p),
            }
        )
    return {"format": 1, "files": files}


def write_manifest(sig_dir: Path, version: str) -> Path:
    """Rewrite MANIFEST.json after a signature file was edited."""
    out = sig_dir / MANIFEST_NAME
    out.write_text(json.dumps(build_manifest(sig_dir, version), indent=2) + "\n")
    return out


_LINE_CHECKS = {
    ".hsb": _check_hash_line,
    ".hdb": _check_hash_line,
    ".ndb": _check_ndb_line,
    ".ldb": _check_ldb_line,
}


def _clamscan_loads(sig_dir: Path) -> str | None:
    """Ask ClamAV itself to load the folder (when clamscan is installed)."""
    clamscan = shutil.which("clamscan")
    if clamscan is None:
        return None
    from vmscan.proc import SubprocessError, run_bounded

    with tempfile.NamedTemporaryFile(prefix="vmscan-empty-") as empty:
        try:
            # Own process group, killed and reaped on expiry, dies with vmscan.
            proc = run_bounded(
                [clamscan, "--no-summary", "-d", str(sig_dir), empty.name], timeout=120
            )
        except SubprocessError as e:
            return f"clamscan could not load the signatures: {e}"
    if proc.returncode not in (0, 1):
        err = proc.stderr.decode("utf-8", "replace").strip()[:500]
        return f"clamscan could not load the signatures: {err}"
    return None


def verify(sig_dir: Path | str = DEFAULT_SIG_DIR, *, use_clamscan: bool = True) -> list[str]:
    """Problems with a signature folder: manifest, checksums, syntax. Empty means OK."""
    sig_dir = Path(sig_dir)
    problems: list[str] = []
    manifest_path = sig_dir / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
        listed = {str(f["name"]): f for f in manifest["files"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{manifest_path}: unreadable manifest: {e}"]
    present = {p.name: p for p in _signature_files(sig_dir)}
    for name in sorted(set(present) - set(listed)):
        problems.append(f"{name}: not listed in {MANIFEST_NAME}")
    for name, entry in sorted(listed.items()):
        path = present.get(name)
        if path is None:
            problems.append(f"{name}: listed in {MANIFEST_NAME} but missing")
            continue
        if not entry.get("version"):
            problems.append(f"{name}: no version in {MANIFEST_NAME}")
        if _file_sha256(path) != entry.get("sha256"):
            problems.append(f"{name}: sha256 differs from {MANIFEST_NAME}")
        check = _LINE_CHECKS.get(path.suffix)
        if check is None:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if line and not line.startswith("#"):
                err = check(line)
                if err:
                    problems.append(f"{name}:{n}: {err}")
    if not problems and use_clamscan:
        err = _clamscan_loads(sig_dir)
        if err:
            problems.append(err)
    return problems
