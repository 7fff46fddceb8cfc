"""The advisory index: every feed compiled once into one SQLite file, opened read-only.

Feeds live as folders under the advisories folder (``<dir>/<feed>/``, written by
``vmscan signatures import``; a folder of OSV records with no ``FEED.json`` is a bundled
OSV feed). :func:`ensure_index` compiles them into ``<dir>/index.sqlite`` (or, when that
folder is not writable, a per-user cache file) at import time or on first use when a feed
changed: only changed feeds are re-read, under a file lock, into a temporary copy that
replaces the index atomically. Scans open it with :func:`open_index` (``mode=ro``): no
worker re-reads, re-validates or re-hashes a feed. The index's :attr:`Index.digest`
(over every feed's content digest) is what the nightly job keys "advisories changed" on.

The module is past 600 lines on purpose: the table layout (DDL), compiling feeds into it
and the read-only view over it change together, so they are kept in one place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmscan.advisories import alpine_secdb, csaf, debian_tracker, osv
from vmscan.advisories.model import (
    Advisory,
    AdvisoryError,
    Affected,
    FeedKind,
    ParseResult,
    Rating,
)

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite"
FEED_META = "FEED.json"
MANIFEST = "MANIFEST.json"
#: Bump when the tables change: an index of another version is rebuilt from the feeds.
INDEX_SCHEMA = "5"
#: Data file of each non-OSV feed kind inside its folder.
DATA_FILE = {
    FeedKind.DEBIAN_TRACKER: "tracker.json",
    FeedKind.ALPINE_SECDB: "secdb.json",
    FeedKind.WINDOWS_BUILDS: "builds.json",
    FeedKind.WINDOWS_CVES: "cves.json",
    FeedKind.WESNG: "wesng.json",
    FeedKind.CSAF: "csaf.json",
}
#: A stored tracker/secdb/table file larger than this is refused (the real tracker: ~80 MB).
DATA_LIMIT = 1024 * 1024 * 1024
_SKIP = {INDEX_NAME, MANIFEST, ".lock", f"{INDEX_NAME}-journal"}

_DDL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE feeds (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, source TEXT NOT NULL, digest TEXT NOT NULL,
    date TEXT NOT NULL, imported_at TEXT NOT NULL, records INTEGER NOT NULL,
    rejected INTEGER NOT NULL, ecosystems TEXT NOT NULL, notes TEXT NOT NULL);
CREATE TABLE advisories (
    id INTEGER PRIMARY KEY, feed TEXT NOT NULL, kind TEXT NOT NULL, record_id TEXT NOT NULL,
    summary TEXT NOT NULL, aliases TEXT NOT NULL, published TEXT NOT NULL,
    modified TEXT NOT NULL, withdrawn TEXT NOT NULL, refs TEXT NOT NULL, rating TEXT NOT NULL);
CREATE TABLE affected (
    adv INTEGER NOT NULL, feed TEXT NOT NULL, eco_base TEXT NOT NULL, ecosystem TEXT NOT NULL,
    name TEXT NOT NULL, name_kind TEXT NOT NULL, ranges TEXT NOT NULL, versions TEXT NOT NULL,
    status TEXT NOT NULL, rating TEXT NOT NULL, extra TEXT NOT NULL);
CREATE INDEX affected_by_name ON affected (eco_base, name);
CREATE TABLE win_builds (
    feed TEXT NOT NULL, build INTEGER NOT NULL, name TEXT NOT NULL, also TEXT NOT NULL,
    ubr INTEGER NOT NULL, kb TEXT NOT NULL, date TEXT NOT NULL, source TEXT NOT NULL,
    edition TEXT NOT NULL);
CREATE TABLE win_cves (
    feed TEXT NOT NULL, cve TEXT NOT NULL, kb TEXT NOT NULL, product_id TEXT NOT NULL,
    product TEXT NOT NULL, fixed_build TEXT NOT NULL, build INTEGER, fixed_ubr INTEGER,
    severity TEXT NOT NULL, score REAL, rating_source TEXT NOT NULL);
CREATE INDEX win_cves_by_build ON win_cves (build);
CREATE TABLE win_kb_cves (
    feed TEXT NOT NULL, cve TEXT NOT NULL, kb TEXT NOT NULL, product TEXT NOT NULL,
    build INTEGER NOT NULL, edition TEXT NOT NULL, arch TEXT NOT NULL, date TEXT NOT NULL,
    severity TEXT NOT NULL, impact TEXT NOT NULL);
CREATE INDEX win_kb_cves_by_build ON win_kb_cves (build);
CREATE TABLE win_supersedes (
    feed TEXT NOT NULL, build INTEGER NOT NULL, edition TEXT NOT NULL, arch TEXT NOT NULL,
    kb TEXT NOT NULL, supersedes TEXT NOT NULL);
CREATE INDEX win_supersedes_by_build ON win_supersedes (build);
"""


# ---------------------------------------------------------------------------
# Where things are


def index_path(adv_dir: Path) -> Path:
    """``<adv_dir>/index.sqlite``, or a per-user cache file when *adv_dir* is read-only."""
    adv_dir = Path(adv_dir)
    if adv_dir.is_dir() and os.access(adv_dir, os.W_OK):
        return adv_dir / INDEX_NAME
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vmscan"
    tag = hashlib.sha256(str(adv_dir.resolve()).encode()).hexdigest()[:16]
    return cache / f"advisories-{tag}.sqlite"


def feed_dirs(adv_dir: Path) -> list[Path]:
    """The feed folders under *adv_dir* (hidden ones are imports in progress)."""
    if not Path(adv_dir).is_dir():
        return []
    return sorted(p for p in Path(adv_dir).iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name not in _SKIP:
                yield Path(dirpath) / name


def source_stamp(adv_dir: Path) -> str:
    """Cheap change detector over the feed folders: names, sizes and mtimes."""
    h = hashlib.sha256(INDEX_SCHEMA.encode())
    for feed in feed_dirs(adv_dir):
        for p in _files(feed):
            with contextlib.suppress(OSError):
                st = p.stat()
                h.update(f"{p.relative_to(adv_dir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def content_digest(feed_dir: Path) -> str:
    """sha256 over the relative paths and contents of a feed's data files (not FEED.json)."""
    h = hashlib.sha256()
    for p in _files(feed_dir):
        if p.name == FEED_META:
            continue
        h.update(p.relative_to(feed_dir).as_posix().encode() + b"\0")
        fh = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                fh.update(chunk)
        h.update(fh.digest())
    return h.hexdigest()


def read_meta(feed_dir: Path) -> dict[str, Any]:
    """A feed's FEED.json (``{}`` when absent or broken: a bundled OSV folder)."""
    try:
        data = json.loads((feed_dir / FEED_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------
# Reading a stored feed


def load_feed(feed_dir: Path) -> tuple[dict[str, Any], ParseResult]:
    """(FEED.json facts, parsed content) of one stored feed.

    A feed whose content digest still equals the one recorded at import is not validated
    again; any other (a bundled folder, a hand-edited one) is validated record by record.
    """
    meta = read_meta(feed_dir)
    kind = FeedKind(meta.get("kind", FeedKind.OSV))
    digest = content_digest(feed_dir)
    trusted = bool(meta.get("validated")) and meta.get("digest") == digest
    name = feed_dir.name
    res = ParseResult()
    if kind == FeedKind.OSV:
        for p in _files(feed_dir):
            if p.name == FEED_META or not p.name.endswith(".json"):
                continue
            rel = p.relative_to(feed_dir).as_posix()
            try:
                if p.stat().st_size > osv.RECORD_LIMIT:
                    res.rejected.append(f"{rel}: larger than {osv.RECORD_LIMIT} bytes")
                    continue
                rec = json.loads(p.read_bytes())
            except (OSError, ValueError) as e:
                res.rejected.append(f"{rel}: not JSON: {str(e)[:100]}")
                continue
            problems = [] if trusted else osv.validate_record(rec)
            if problems:
                res.rejected.append(f"{rel}: {'; '.join(problems)}")
                continue
            adv = osv.parse_record(rec, name)
            res.advisories.append(adv)
            res.date = max(res.date, adv.modified[:10])
    else:
        path = feed_dir / DATA_FILE[kind]
        try:
            if path.stat().st_size > DATA_LIMIT:
                raise AdvisoryError(f"{path}: larger than {DATA_LIMIT} bytes")
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as e:
            raise AdvisoryError(f"{path}: cannot be read: {str(e)[:200]}") from e
        if kind == FeedKind.DEBIAN_TRACKER:
            res = debian_tracker.parse(data, name)
        elif kind == FeedKind.ALPINE_SECDB:
            res = alpine_secdb.parse(data, name)
        elif kind == FeedKind.CSAF:
            res = csaf.parse(data, name)
        elif kind == FeedKind.WESNG:
            res.data = data if isinstance(data, dict) else {}
            res.date = str(res.data.get("date", ""))
        else:
            rows = data.get("rows") if isinstance(data, dict) else None
            res.rows = [r for r in rows or [] if isinstance(r, dict)]
            res.date = str(data.get("date", "")) if isinstance(data, dict) else ""
    meta.setdefault("kind", str(kind))
    meta["digest"] = digest
    if meta.get("date"):
        res.date = str(meta["date"])
    return meta, res


# ---------------------------------------------------------------------------
# Compiling


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path.with_name(path.name + ".lock")), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _meta(con: sqlite3.Connection, key: str) -> str:
    row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return str(row[0]) if row else ""


def _is_fresh(path: Path, stamp: str) -> bool:
    if not path.is_file():
        return False
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return _meta(con, "schema") == INDEX_SCHEMA and _meta(con, "stamp") == stamp
        finally:
            con.close()
    except sqlite3.Error:
        return False


def _rating(r: Rating) -> str:
    return json.dumps([r.severity, r.score, r.source])


def _insert(con: sqlite3.Connection, name: str, meta: dict[str, Any], res: ParseResult) -> None:
    kind = str(meta.get("kind", FeedKind.OSV))
    ecosystems: set[str] = set()
    for adv in res.advisories:
        cur = con.execute(
            "INSERT INTO advisories (feed, kind, record_id, summary, aliases, published,"
            " modified, withdrawn, refs, rating) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                name,
                adv.kind,
                adv.id,
                adv.summary,
                json.dumps(adv.aliases),
                adv.published,
                adv.modified,
                adv.withdrawn,
                json.dumps(adv.references),
                _rating(adv.rating),
            ),
        )
        rows = []
        for a in adv.affected:
            base, _, rest = a.ecosystem.partition(":")
            ecosystems.add(f"{base}:{rest}" if rest else base)
            rows.append(
                (
                    cur.lastrowid,
                    name,
                    a.ecosystem.split(":", 1)[0].strip().lower(),
                    a.ecosystem,
                    a.name,
                    a.name_kind,
                    json.dumps(a.ranges),
                    json.dumps(a.versions),
                    a.status,
                    _rating(a.rating),
                    json.dumps(a.extra, sort_keys=True),
                )
            )
        con.executemany("INSERT INTO affected VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    if kind == FeedKind.WINDOWS_BUILDS:
        con.executemany(
            "INSERT INTO win_builds VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (
                    name,
                    int(r["build"]),
                    str(r.get("name", "")),
                    json.dumps(r.get("also") or []),
                    int(r["ubr"]),
                    str(r.get("kb", "")),
                    str(r.get("date", "")),
                    str(r.get("source", "")),
                    str(r.get("edition", "")),
                )
                for r in res.rows
                if isinstance(r.get("build"), int) and isinstance(r.get("ubr"), int)
            ],
        )
        ecosystems |= {f"Windows:{r['build']}" for r in res.rows if isinstance(r.get("build"), int)}
    if kind == FeedKind.WINDOWS_CVES:
        con.executemany(
            "INSERT INTO win_cves VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    name,
                    str(r.get("cve", "")),
                    str(r.get("kb", "")),
                    str(r.get("product_id", "")),
                    str(r.get("product", "")),
                    str(r.get("fixed_build", "")),
                    r.get("build"),
                    r.get("fixed_ubr"),
                    str(r.get("severity", "unknown")),
                    r.get("score"),
                    str(r.get("rating_source", "")),
                )
                for r in res.rows
            ],
        )
        ecosystems |= {f"Windows:{r['build']}" for r in res.rows if isinstance(r.get("build"), int)}
    if kind == FeedKind.WESNG:
        ecosystems |= _insert_wesng(con, name, res.data)
    records = len(res.advisories) if res.advisories else len(res.rows)
    if kind == FeedKind.WESNG:
        records = len(res.data.get("rows") or [])
    con.execute(
        "INSERT INTO feeds VALUES (?,?,?,?,?,?,?,?,?,?)",
        (
            name,
            kind,
            str(meta.get("source", "bundled folder")),
            str(meta["digest"]),
            res.date,
            str(meta.get("imported_at", "")),
            records,
            len(res.rejected) + int(meta.get("rejected", 0) or 0),
            json.dumps(sorted(ecosystems)[:5000]),
            json.dumps(res.rejected[:5]),
        ),
    )


def _insert_wesng(con: sqlite3.Connection, name: str, data: dict[str, Any]) -> set[str]:
    """WES-NG rows and supersedence, with each product's build, edition and architecture."""
    products: dict[str, tuple[int, str, str]] = {}
    for pname, p in (data.get("products") or {}).items():
        if isinstance(p, dict) and isinstance(p.get("build"), int):
            products[str(pname)] = (p["build"], str(p.get("edition", "")), str(p.get("arch", "")))
    rows = []
    for r in data.get("rows") or []:
        if not isinstance(r, list) or len(r) != 6 or str(r[2]) not in products:
            continue
        build, edition, arch = products[str(r[2])]
        cve, kb, prod, date, sev, impact = (str(x) for x in r)
        rows.append((name, cve, f"KB{kb}", prod, build, edition, arch, date, sev, impact))
    con.executemany("INSERT INTO win_kb_cves VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    sup = []
    for r in data.get("supersedes") or []:
        if isinstance(r, list) and len(r) == 3 and str(r[0]) in products:
            build, edition, arch = products[str(r[0])]
            sup.append((name, build, edition, arch, f"KB{r[1]}", f"KB{r[2]}"))
    con.executemany("INSERT INTO win_supersedes VALUES (?,?,?,?,?,?)", sup)
    return {f"Windows:{b}" for b, _e, _a in products.values()}


def _delete_feed(con: sqlite3.Connection, name: str) -> None:
    for table in (
        "affected",
        "advisories",
        "win_builds",
        "win_cves",
        "win_kb_cves",
        "win_supersedes",
        "feeds",
    ):
        key = "name" if table == "feeds" else "feed"
        con.execute(f"DELETE FROM {table} WHERE {key} = ?", (name,))


def ensure_index(adv_dir: Path) -> Path:
    """The index of *adv_dir*, compiled first when it is missing or a feed changed.

    Returns its path. Feeds whose content digest is unchanged keep their rows; a feed that
    cannot be read at all is left out with its error in the ``feeds`` table's notes.
    """
    adv_dir = Path(adv_dir)
    path = index_path(adv_dir)
    stamp = source_stamp(adv_dir)
    if _is_fresh(path, stamp):
        return path
    with _locked(path):
        if _is_fresh(path, stamp):
            return path
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            reuse = False
            if path.is_file():
                shutil.copyfile(path, tmp)
                try:
                    con = sqlite3.connect(tmp)
                    reuse = _meta(con, "schema") == INDEX_SCHEMA
                except sqlite3.Error:
                    reuse = False
                if not reuse:
                    con.close()
                    tmp.write_bytes(b"")
            if not reuse:
                con = sqlite3.connect(tmp)
                con.executescript(_DDL)
            _compile(con, adv_dir)
            h = hashlib.sha256(INDEX_SCHEMA.encode())
            for name, digest in con.execute("SELECT name, digest FROM feeds ORDER BY name"):
                h.update(f"{name}\0{digest}\n".encode())
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (INDEX_SCHEMA,))
            con.execute("INSERT OR REPLACE INTO meta VALUES ('stamp', ?)", (stamp,))
            con.execute("INSERT OR REPLACE INTO meta VALUES ('digest', ?)", (h.hexdigest(),))
            con.execute("INSERT OR REPLACE INTO meta VALUES ('source', ?)", (str(adv_dir),))
            con.commit()
            con.close()
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return path


def _compile(con: sqlite3.Connection, adv_dir: Path) -> None:
    have = dict(con.execute("SELECT name, digest FROM feeds").fetchall())
    present = set()
    for feed in feed_dirs(adv_dir):
        present.add(feed.name)
        digest = content_digest(feed)
        if have.get(feed.name) == digest:
            continue
        _delete_feed(con, feed.name)
        try:
            meta, res = load_feed(feed)
        except (AdvisoryError, ValueError) as e:
            log.warning("advisory feed %s not usable: %s", feed.name, e)
            con.execute(
                "INSERT INTO feeds VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    feed.name,
                    "broken",
                    str(feed),
                    digest,
                    "",
                    "",
                    0,
                    0,
                    "[]",
                    json.dumps([str(e)[:300]]),
                ),
            )
            continue
        _insert(con, feed.name, meta, res)
        for msg in res.rejected[:5]:
            log.warning("feed %s: rejected %s", feed.name, msg)
    for gone in set(have) - present:
        _delete_feed(con, gone)


# ---------------------------------------------------------------------------
# Reading the index


@dataclass(frozen=True)
class FeedInfo:
    """One feed as the index knows it (what ``vmscan signatures status`` shows)."""

    name: str
    kind: str
    source: str
    digest: str
    date: str
    imported_at: str
    records: int
    rejected: int
    ecosystems: tuple[str, ...]
    notes: tuple[str, ...]


def _rating_of(text: str) -> Rating:
    sev, score, source = json.loads(text)
    return Rating(str(sev), score if score is None else float(score), str(source))


class Index:
    """A read-only view of a compiled index (one SQLite connection, ``mode=ro``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            self.digest = _meta(self._con, "digest")
        except sqlite3.Error as e:
            raise AdvisoryError(f"advisory index {self.path} cannot be opened: {e}") from e
        self._cache: dict[tuple[str, str], list[tuple[Advisory, Affected]]] = {}

    def close(self) -> None:
        """Close the connection."""
        self._con.close()

    def feeds(self) -> list[FeedInfo]:
        """Every feed, by name."""
        out = []
        for row in self._con.execute("SELECT * FROM feeds ORDER BY name"):
            out.append(
                FeedInfo(
                    name=row[0],
                    kind=row[1],
                    source=row[2],
                    digest=row[3],
                    date=row[4],
                    imported_at=row[5],
                    records=int(row[6]),
                    rejected=int(row[7]),
                    ecosystems=tuple(json.loads(row[8])),
                    notes=tuple(json.loads(row[9])),
                )
            )
        return out

    def affected(self, eco_base: str, name: str) -> list[tuple[Advisory, Affected]]:
        """Every (advisory, affected entry) naming package *name* in ecosystem *eco_base*."""
        key = (eco_base.lower(), name)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out = []
        for row in self._con.execute(
            "SELECT a.record_id, a.feed, a.kind, a.summary, a.aliases, a.published,"
            " a.modified, a.withdrawn, a.refs, a.rating, f.ecosystem, f.name, f.name_kind,"
            " f.ranges, f.versions, f.status, f.rating, f.extra"
            " FROM affected f JOIN advisories a ON a.id = f.adv"
            " WHERE f.eco_base = ? AND f.name = ?",
            key,
        ):
            aff = Affected(
                ecosystem=row[10],
                name=row[11],
                name_kind=row[12],
                ranges=tuple(tuple(tuple(ev) for ev in rng) for rng in json.loads(row[13])),
                versions=tuple(json.loads(row[14])),
                status=row[15],
                rating=_rating_of(row[16]),
                extra=json.loads(row[17]),
            )
            adv = Advisory(
                id=row[0],
                feed=row[1],
                kind=row[2],
                summary=row[3],
                aliases=tuple(json.loads(row[4])),
                published=row[5],
                modified=row[6],
                withdrawn=row[7],
                references=tuple(json.loads(row[8])),
                rating=_rating_of(row[9]),
            )
            out.append((adv, aff))
        self._cache[key] = out
        return out

    def windows_builds(self) -> list[dict[str, Any]]:
        """Rows of every imported build table."""
        cols = ("feed", "build", "name", "also", "ubr", "kb", "date", "source", "edition")
        out = []
        for row in self._con.execute("SELECT * FROM win_builds"):
            d = dict(zip(cols, row, strict=True))
            d["also"] = json.loads(d["also"])
            out.append(d)
        return out

    def windows_cves(self, build: int) -> list[dict[str, Any]]:
        """Per-CVE rows whose fixed build is on *build*."""
        cols = (
            "feed",
            "cve",
            "kb",
            "product_id",
            "product",
            "fixed_build",
            "build",
            "fixed_ubr",
            "severity",
            "score",
            "rating_source",
        )
        return [
            dict(zip(cols, row, strict=True))
            for row in self._con.execute("SELECT * FROM win_cves WHERE build = ?", (build,))
        ]

    def windows_kb_cves(self, build: int) -> list[dict[str, Any]]:
        """WES-NG rows (CVE -> KB) for OS products of *build*."""
        cols = ("feed", "cve", "kb", "product", "build", "edition", "arch", "date", "severity")
        return [
            dict(zip(cols, row, strict=True))
            for row in self._con.execute(
                "SELECT feed, cve, kb, product, build, edition, arch, date, severity"
                " FROM win_kb_cves WHERE build = ?",
                (build,),
            )
        ]

    def windows_supersedes(self, build: int, edition: str, arch: str) -> dict[str, set[str]]:
        """KB -> the KBs it supersedes, for one product of *build*."""
        out: dict[str, set[str]] = {}
        for kb, old in self._con.execute(
            "SELECT kb, supersedes FROM win_supersedes WHERE build = ? AND edition = ?"
            " AND (arch = '' OR arch = ?)",
            (build, edition, arch),
        ):
            out.setdefault(str(kb), set()).add(str(old))
        return out

    def windows_cves_without_build(self) -> int:
        """How many per-CVE rows name no fixed build (they cannot be matched by UBR)."""
        row = self._con.execute("SELECT count(*) FROM win_cves WHERE build IS NULL").fetchone()
        return int(row[0])


def open_index(path: Path) -> Index:
    """Open a compiled index read-only."""
    if not Path(path).is_file():
        raise AdvisoryError(f"advisory index {path} does not exist")
    return Index(Path(path))
