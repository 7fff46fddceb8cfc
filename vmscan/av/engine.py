"""Scans one guest root: hash-first, verdict cache, then file content streamed to clamd.

Bulk content leaves the appliance in one ``tar_out`` of "/" written into a FIFO and read
member by member on the host (never one libguestfs round trip per file); files that need
no streaming (cached, hash hits, too large, out of scope, duplicates of other content)
are excluded from the tar. Each member goes to clamd over INSTREAM while the next one is
being read; several streams are in flight at once.

``--av-scope`` works on magic bytes, so it needs the first bytes of each file. The heads
come from the same tar stream: on a first scan every file that needs a verdict flows
through tar, is sniffed on the host and only in-scope ones are sent to clamd. The kinds
are kept per SHA-256 in the state database (``av_filekinds``), so the next scan excludes
out-of-scope files inside the appliance. Files too large for clamd are sniffed with one
``pread`` each (few) so that they are reported out of scope rather than not scanned.

Past 600 lines on purpose: :class:`RootScanner` is one pipeline over one stream (hash
matches, the verdict cache, the exclude list, the tar members, the clamd streams in
flight and what each file's outcome is); its parts share the per-root state and split
apart they would pass it all back and forth. The stream itself is :mod:`vmscan.stream`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import sqlite3
import tarfile
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from vmscan.av.archive_limits import exceeds_limits
from vmscan.av.cache import VerdictCache
from vmscan.av.clamd_client import (
    CHUNK,
    ClamdClient,
    ClamdConnectionError,
    ScanReply,
    StreamRefused,
    Verdict,
)
from vmscan.av.clamd_manager import ClamdLimits
from vmscan.av.magic import HEAD_SIZE, classify, in_scope
from vmscan.av.paths import decode_path
from vmscan.av.signatures import HashSignature, match_hash, normalize_name
from vmscan.errors import GuestError, GuestReadError
from vmscan.guestfs_view import GuestFS
from vmscan.model import FileEntry
from vmscan.pe import MAX_PE_SIZE, PEInfo, is_pe, pe_info
from vmscan.rootstream import BlobStore, stream_root

log = logging.getLogger(__name__)

#: Members up to this size are read whole into memory and scanned from a worker thread;
#: larger ones are streamed piece by piece while they are read.
BUFFER_MAX = 16 * 1024 * 1024
#: After the tar pass, at most this many missing files are fetched one by one.
FALLBACK_MAX = 500
KIND_PE = "pe"
#: Smallest file that can hold a PE header (DOS header + PE signature + COFF header).
PE_MIN_SIZE = 97
#: Files read one by one for PE facts only (not streamed: hash hits, too large for clamd).
PE_EXTRA_MAX = 200


class Reason:
    """``not_scanned`` reasons."""

    TOO_LARGE = "too_large"
    UNREADABLE = "unreadable"
    SCAN_ERROR = "scan_error"


@dataclass
class Outcome:
    """What became of one content (one SHA-256); shared by every path holding it."""

    verdict: str  # "clean" | "found" | "not_scanned" | "out_of_scope"
    signature: str = ""
    reason: str = ""
    source: str = ""  # "hash" | "cache" | "clamd"
    detail: str = ""


@dataclass
class RootAvResult:
    """Per-root result of the antivirus scan (the check turns it into findings/sections)."""

    outcomes: dict[str, tuple[FileEntry, Outcome]] = field(default_factory=dict)
    files_total: int = 0
    files_scanned: int = 0
    files_from_cache: int = 0
    files_hash_matched: int = 0
    files_out_of_scope: int = 0
    files_streamed: int = 0
    bytes_streamed: int = 0
    stream_seconds: float = 0.0
    bytes_read: int = 0
    clamd_restarts: int = 0
    clamd_died: bool = False
    method: str = ""
    notes: list[str] = field(default_factory=list)
    pe: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Pending:
    """A content that must be streamed: its representative entry and all its entries.

    ``sha256`` is empty for a file the manifest has not hashed yet: the stream hashes it
    on the host (and fills the manifest entry) before it is looked up and scanned.
    """

    sha256: str
    entry: FileEntry
    entries: list[FileEntry]

    @property
    def key(self) -> str:
        return self.sha256 or "path:" + self.entry.path


class ClamdLink:
    """clamd calls with a bounded wait for a restart (managed) or none (external).

    The process that owns a managed clamd restarts it when it dies; a scanner here only
    waits (at most ``restart_wait`` seconds) for it to answer again. Nothing is started
    from here: a worker never runs a program.
    """

    def __init__(
        self,
        client: ClamdClient,
        managed: bool,
        max_restarts: int = 3,
        restart_wait: float = 120.0,
    ) -> None:
        self.client = client
        self.managed = managed
        self.max_restarts = max_restarts
        self.restart_wait = restart_wait
        self.restarts = 0
        self.died = False
        self.dead = False
        self._lock = threading.Lock()

    def _wait_back(self) -> bool:
        deadline = time.monotonic() + self.restart_wait
        while time.monotonic() < deadline:
            if self.client.ping():
                return True
            time.sleep(0.25)
        return False

    def recover(self) -> bool:
        """After a failed conversation: True when clamd answers (again) and a retry makes sense."""
        with self._lock:
            if self.dead:
                return False
            if self.client.ping():
                return True
            self.died = True
            if self.managed and self.restarts < self.max_restarts and self._wait_back():
                self.restarts += 1
                return True
            self.dead = True
            return False

    def scan(self, data: bytes) -> tuple[ScanReply, int]:
        """Scan one buffer; ClamdConnectionError when clamd stays unreachable."""
        for attempt in range(2):
            if self.dead:
                raise ClamdConnectionError("clamd is unavailable")
            try:
                stream = self.client.open_stream()
                stream.write(data)
                return stream.finish(), stream.bytes_sent
            except StreamRefused:
                # clamd still answering means it refused the size (StreamMaxLength), its
                # reply lost in the reset; else it died.
                if self.client.ping():
                    return ScanReply(Verdict.TOO_LARGE, raw="stream refused by clamd"), 0
                if attempt == 1 or not self.recover():
                    raise
            except ClamdConnectionError:
                if attempt == 1 or not self.recover():
                    raise
        raise ClamdConnectionError("unreachable")  # pragma: no cover


def severity_of(signature: str) -> str:
    """critical for malware, high for potentially unwanted programs and heuristics."""
    s = signature
    if s.startswith(("PUA.", "Heuristics.")) or ".PUA." in s or s.startswith("Clamav.PUA"):
        return "high"
    return "critical"


#: What one guest read may raise: a name the libguestfs binding cannot pass (not UTF-8)
#: raises UnicodeEncodeError, a ValueError; one bad file never stops the scan.
_READ_ERRORS = (GuestReadError, ValueError, GuestError, OSError)


def _read(fs: GuestFS, path: str, limit: int) -> bytes:
    try:
        return fs.read_bytes(path, limit)
    except ValueError as e:  # a name the binding cannot pass (UnicodeEncodeError)
        raise GuestReadError(f"{path}: {e}") from e


def _head(fs: GuestFS, path: str, size: int) -> bytes:
    try:
        return fs.read_head(path, size)
    except ValueError as e:
        raise GuestReadError(f"{path}: {e}") from e


class RootScanner:
    """Scans the manifest of one root (see module docstring)."""

    def __init__(
        self,
        link: ClamdLink,
        *,
        engine: str,
        hash_table: dict[str, list[HashSignature]],
        limits: ClamdLimits,
        scope: frozenset[str] | None = None,
        cache: VerdictCache | None = None,
        streams: int = 4,
        collect_pe: bool = True,
    ) -> None:
        self.link = link
        self.engine = engine
        self.hash_table = hash_table
        self.limits = limits
        self.largest = limits.largest_file
        self.scope = scope
        self.cache = cache
        self.streams = max(1, streams)
        self.collect_pe = collect_pe
        self._lock = threading.Lock()
        # Cache rows are written by the planning thread at the end (one sqlite connection
        # per thread would be needed otherwise), in short transactions.
        self._verdict_rows: list[tuple[str, str, str]] = []
        self._kind_rows: list[tuple[str, frozenset[str]]] = []
        self._pe_rows: list[tuple[str, dict[str, Any]]] = []
        self._retry: list[_Pending] = []
        self._sniffed: set[str] = set()
        self._pe_known: set[str] = set()
        #: Outcome per content hashed in the stream: a duplicate is not scanned twice.
        self._known: dict[str, Outcome] = {}

    # ---- planning ------------------------------------------------------------------------

    def scan(self, fs: GuestFS, handle: Any, manifest: list[FileEntry]) -> RootAvResult:
        """Plan, stream (one ``tar_out`` with a handle, else one read per file), finish."""
        self.plan(fs, manifest)
        if handle is not None:
            stream_root(handle, manifest, {"antivirus": self}, {}, BlobStore())
        return self.finish(fs)

    def plan(self, fs: GuestFS, manifest: list[FileEntry]) -> None:
        """Decide, before the stream, which contents need it (the rest have a verdict)."""
        self._fs = fs
        self._manifest = manifest
        res = self._res = RootAvResult(files_total=len(manifest))
        by_sha: dict[str, list[FileEntry]] = {}
        unhashed: list[_Pending] = []
        for e in manifest:
            if e.sha256 is None and e.error is None:
                # Not hashed yet: the one content stream hashes it on the host.
                unhashed.append(_Pending("", e, [e]))
                continue
            if e.sha256 is None:
                res.outcomes[e.path] = (
                    e,
                    Outcome(
                        "not_scanned",
                        reason=Reason.UNREADABLE,
                        detail=e.error or "could not be read",
                    ),
                )
                continue
            by_sha.setdefault(e.sha256.lower(), []).append(e)
        cached = self.cache.lookup(by_sha) if self.cache else {}
        kinds_known = self.cache.kinds(by_sha) if self.cache else {}
        pending: dict[str, _Pending] = {}
        for sha, entries in by_sha.items():
            first = entries[0]
            sig = match_hash(self.hash_table, sha, first.size)
            if sig is not None:
                self._set(res, entries, Outcome("found", normalize_name(sig.name), source="hash"))
                res.files_hash_matched += len(entries)
                continue
            cv = cached.get(sha)
            if cv is not None:
                if cv.verdict == Reason.TOO_LARGE:
                    outcome = Outcome(
                        "not_scanned", reason=Reason.TOO_LARGE, detail=cv.signature, source="cache"
                    )
                else:
                    outcome = Outcome(cv.verdict, cv.signature, source="cache")
                self._set(res, entries, outcome)
                res.files_from_cache += len(entries)
                continue
            kinds = kinds_known.get(sha)
            if kinds is not None and not in_scope(kinds, self.scope):
                self._set(res, entries, Outcome("out_of_scope"))
                res.files_out_of_scope += len(entries)
                continue
            if first.size > self.largest:
                if kinds is None and self.scope is not None:
                    kinds = self._sniff_one(fs, sha, first)
                if kinds is not None and not in_scope(kinds, self.scope):
                    self._set(res, entries, Outcome("out_of_scope"))
                    res.files_out_of_scope += len(entries)
                    continue
                self._set(
                    res,
                    entries,
                    Outcome(
                        "not_scanned",
                        reason=Reason.TOO_LARGE,
                        detail=f"{first.size} bytes is over clamd's {self.largest} byte limit",
                    ),
                )
                continue
            pending[sha] = _Pending(sha, first, entries)
        self._pe_known = self._pe_from_cache(res, by_sha, kinds_known)
        self._by_sha, self._kinds_known = by_sha, kinds_known
        self._todo = {p.key: p for p in [*pending.values(), *unhashed]}
        self._by_path = {p.entry.path: p for p in self._todo.values()}
        self._taken: set[str] = set()
        self._streamed = False
        self._ended = False

    # ---- the stream's consumer (vmscan.rootstream.MemberConsumer) -----------------------------

    def wanted(self) -> list[str]:
        """Paths of the contents to stream: one file per content."""
        if self._todo:
            self._streamed = True
            self._res.method = "tar_out"
            self._t0 = time.monotonic()
            self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="vmscan-clamd")
            self._slots = threading.BoundedSemaphore(self.streams * 2)
            self._futures: list[Future[None]] = []
        return list(self._by_path)

    def active(self) -> bool:
        return not self.link.dead and len(self._taken) < len(self._todo)

    def take(self, entry: FileEntry, size: int, fh: IO[bytes]) -> bool:
        p = self._by_path.get(entry.path)
        if p is None or p.key in self._taken or self.link.dead:
            return False
        self._taken.add(p.key)
        self._feed(self._res, p, size, fh, self._pool, self._slots, self._futures)
        return True

    def done(self, error: str | None, taken: set[str]) -> None:
        """The stream ended: wait for clamd's answers, then read what it did not bring."""
        if self._ended or not self._streamed:
            return
        self._ended = True
        try:
            for f in self._futures:
                f.result()
        finally:
            self._pool.shutdown(wait=True)
        res = self._res
        if error:
            res.notes.append(f"tar_out: {error}")
        missing = [p for k, p in self._todo.items() if k not in self._taken] + self._retry
        self._retry = []
        if missing:
            self._scan_each(self._fs, missing, self._todo, res)
        res.stream_seconds = time.monotonic() - self._t0

    def finish(self, fs: GuestFS) -> RootAvResult:
        """After the stream: contents not delivered read one by one, PE facts, the cache."""
        res = self._res
        if self._todo and not self._streamed:
            # No stream ran (a host folder): one read per file.
            t0 = time.monotonic()
            res.method = "read_bytes"
            self._scan_each(fs, list(self._todo.values()), self._todo, res)
            res.stream_seconds = time.monotonic() - t0
        elif self._streamed and not self._ended:
            self.done("the stream did not end", set())
        if self.collect_pe:
            self._pe_extra(fs, res, self._by_sha, self._kinds_known, self._pe_known)
        # Safety net: a file with no verdict is never silently taken for clean.
        for e in self._manifest:
            if e.path not in res.outcomes:
                res.outcomes[e.path] = (
                    e,
                    Outcome(
                        "not_scanned", reason=Reason.SCAN_ERROR, detail="no verdict was obtained"
                    ),
                )
        self._flush_cache(res)
        res.clamd_restarts = self.link.restarts
        res.clamd_died = self.link.died
        return res

    def _sniff_one(self, fs: GuestFS, sha: str, entry: FileEntry) -> frozenset[str] | None:
        """Kinds of a file that will not be streamed (too large), from its head: with a
        narrowed scope it is either out of scope or really not scanned. One read each;
        such files are few."""
        path = decode_path(entry.path).decode("utf-8", "surrogateescape")
        try:
            head = _head(fs, path, HEAD_SIZE)
        except _READ_ERRORS:
            return None
        kinds = classify(head) | ({KIND_PE} if is_pe(head) else frozenset())
        self._kind_rows.append((sha, kinds))
        return kinds

    def _flush_cache(self, res: RootAvResult) -> None:
        if self.cache is None:
            return
        try:
            self.cache.store(self._verdict_rows)
            self.cache.store_kinds(self._kind_rows)
            self.cache.store_pe_infos(self._pe_rows)
        except sqlite3.Error as e:
            res.notes.append(f"verdict cache not updated: {e}")
        self._verdict_rows, self._kind_rows, self._pe_rows = [], [], []

    def _set(self, res: RootAvResult, entries: list[FileEntry], outcome: Outcome) -> None:
        with self._lock:
            for e in entries:
                res.outcomes[e.path] = (e, outcome)

    # ---- PE facts ------------------------------------------------------------------------

    def _pe_from_cache(
        self,
        res: RootAvResult,
        by_sha: dict[str, list[FileEntry]],
        kinds_known: dict[str, frozenset[str]],
    ) -> set[str]:
        """PE facts of contents that will not be streamed this time (cached from before)."""
        if not self.collect_pe or self.cache is None:
            return set()
        shas = [s for s, k in kinds_known.items() if KIND_PE in k and s in by_sha]
        infos = self.cache.pe_infos(shas)
        for sha, info in infos.items():
            self._add_pe(res, by_sha[sha], sha, info)
        return set(infos)

    def _pe_extra(
        self,
        fs: GuestFS,
        res: RootAvResult,
        by_sha: dict[str, list[FileEntry]],
        kinds_known: dict[str, frozenset[str]],
        pe_known: set[str],
    ) -> None:
        """PE facts of contents not sniffed in the stream (hash hits, too large for clamd)."""
        todo = [
            sha
            for sha, entries in by_sha.items()
            if sha not in self._sniffed
            and sha not in pe_known
            and PE_MIN_SIZE <= entries[0].size <= MAX_PE_SIZE
            and (sha not in kinds_known or KIND_PE in kinds_known[sha])
        ]
        for sha in todo[:PE_EXTRA_MAX]:
            entries = by_sha[sha]
            path = decode_path(entries[0].path).decode("utf-8", "surrogateescape")
            try:
                head = _head(fs, path, HEAD_SIZE)
                kinds = classify(head) | ({KIND_PE} if is_pe(head) else set())
                self._kind_rows.append((sha, frozenset(kinds)))
                if KIND_PE not in kinds:
                    continue
                data = _read(fs, path, MAX_PE_SIZE)
            except _READ_ERRORS as e:
                # Unknown whether it is a PE at all: not worth a note in the report.
                log.debug("%s: head not read for PE facts: %s", entries[0].path, e)
                continue
            self._pe_seen(res, _Pending(sha, entries[0], entries), data)
        if len(todo) > PE_EXTRA_MAX:
            res.notes.append(f"{len(todo) - PE_EXTRA_MAX} files not checked for PE facts")

    def _add_pe(
        self,
        res: RootAvResult,
        entries: list[FileEntry],
        sha: str,
        info: dict[str, Any] | None,
        note: str = "",
    ) -> None:
        with self._lock:
            for e in entries:
                row: dict[str, Any] = {"path": e.path, "sha256": sha}
                if info is None:
                    row["note"] = note or "pefile could not parse it"
                else:
                    row.update(info)
                res.pe.append(row)

    def _pe_seen(self, res: RootAvResult, p: _Pending, data: bytes) -> None:
        info = pe_info(data)
        d = info.to_dict() if isinstance(info, PEInfo) else None
        self._add_pe(res, p.entries, p.sha256, d)
        if d is not None:
            with self._lock:
                self._pe_rows.append((p.sha256, d))

    # ---- content sources -------------------------------------------------------------------

    def _scan_each(
        self, fs: GuestFS, items: list[_Pending], pending: dict[str, _Pending], res: RootAvResult
    ) -> None:
        """One read per file: HostDirFS, and files the tar stream did not deliver."""
        pool = ThreadPoolExecutor(self.streams, thread_name_prefix="vmscan-clamd")
        slots = threading.BoundedSemaphore(self.streams * 2)
        futures: list[Future[None]] = []
        try:
            for n, p in enumerate(items):
                if self.link.dead:
                    self._set(
                        res,
                        p.entries,
                        Outcome(
                            "not_scanned", reason=Reason.SCAN_ERROR, detail="clamd is unavailable"
                        ),
                    )
                    continue
                if n >= FALLBACK_MAX and res.method == "tar_out":
                    self._set(
                        res,
                        p.entries,
                        Outcome(
                            "not_scanned",
                            reason=Reason.UNREADABLE,
                            detail="not delivered by tar_out",
                        ),
                    )
                    continue
                path = decode_path(p.entry.path).decode("utf-8", "surrogateescape")
                try:
                    data = _read(fs, path, self.largest)
                except _READ_ERRORS as e:
                    self._set(
                        res,
                        p.entries,
                        Outcome("not_scanned", reason=Reason.UNREADABLE, detail=str(e)[:300]),
                    )
                    continue
                self._feed(res, p, len(data), io.BytesIO(data), pool, slots, futures)
        finally:
            for f in futures:
                f.result()
            pool.shutdown(wait=True)

    # ---- streaming ---------------------------------------------------------------------------

    def _feed(
        self,
        res: RootAvResult,
        p: _Pending,
        size: int,
        fh: IO[bytes],
        pool: ThreadPoolExecutor,
        slots: threading.BoundedSemaphore,
        futures: list[Future[None]],
    ) -> None:
        """Read one content and get it scanned (buffered in a worker, or streamed here)."""
        if not p.sha256:
            self._feed_unhashed(res, p, size, fh, pool, slots, futures)
            return
        try:
            head = fh.read(min(HEAD_SIZE, size)) if size else b""
        except (OSError, tarfile.TarError) as e:
            self._set(
                res,
                p.entries,
                Outcome("not_scanned", reason=Reason.UNREADABLE, detail=str(e)[:300]),
            )
            return
        self._sniffed.add(p.sha256)
        kinds = classify(head)
        if is_pe(head):
            kinds = kinds | {KIND_PE}
        with self._lock:
            self._kind_rows.append((p.sha256, kinds))
        if not in_scope(kinds, self.scope):
            self._set(res, p.entries, Outcome("out_of_scope"))
            with self._lock:
                res.files_out_of_scope += len(p.entries)
            return
        want_pe = (
            self.collect_pe
            and KIND_PE in kinds
            and size <= MAX_PE_SIZE
            and p.sha256 not in self._pe_known
        )
        archive = "archives" in kinds
        if size <= BUFFER_MAX:
            try:
                data = head + fh.read(size - len(head))
            except (OSError, tarfile.TarError) as e:
                self._set(
                    res,
                    p.entries,
                    Outcome("not_scanned", reason=Reason.UNREADABLE, detail=str(e)[:300]),
                )
                return
            with self._lock:
                res.bytes_read += len(data)
            slots.acquire()

            def job() -> None:
                try:
                    self._scan_buffer(res, p, data, archive)
                    if want_pe:
                        self._pe_seen(res, p, data)
                finally:
                    slots.release()

            futures.append(pool.submit(job))
            return
        self._scan_large(res, p, size, head, fh, want_pe, archive)

    def _feed_unhashed(
        self,
        res: RootAvResult,
        p: _Pending,
        size: int,
        fh: IO[bytes],
        pool: ThreadPoolExecutor,
        slots: threading.BoundedSemaphore,
        futures: list[Future[None]],
    ) -> None:
        """A file the manifest has not hashed: hash it here, then treat it like the others.

        Small ones are read whole, hashed, and looked up (hash signatures, a content
        already seen in this stream, the verdict cache) before clamd sees them; large ones
        are hashed while they stream to clamd; ones too large for clamd are only hashed.
        """
        if size <= BUFFER_MAX:
            try:
                data = fh.read(size) if size else b""
            except (OSError, tarfile.TarError) as e:
                self._unreadable(res, p, e)
                return
            self._hashed(p, hashlib.sha256(data).hexdigest())
            if self._resolved(res, p):
                return
            self._feed(res, p, len(data), io.BytesIO(data), pool, slots, futures)
            return
        if size > self.largest:
            h = hashlib.sha256()
            try:
                while chunk := fh.read(CHUNK * 4):
                    h.update(chunk)
            except (OSError, tarfile.TarError) as e:
                self._unreadable(res, p, e)
                return
            self._hashed(p, h.hexdigest())
            if not self._resolved(res, p):
                self._set(
                    res,
                    p.entries,
                    Outcome(
                        "not_scanned",
                        reason=Reason.TOO_LARGE,
                        detail=f"{size} bytes is over clamd's {self.largest} byte limit",
                    ),
                )
            return
        try:
            head = fh.read(min(HEAD_SIZE, size))
        except (OSError, tarfile.TarError) as e:
            self._unreadable(res, p, e)
            return
        kinds = classify(head) | ({KIND_PE} if is_pe(head) else frozenset())
        want_pe = self.collect_pe and KIND_PE in kinds and size <= MAX_PE_SIZE
        # Scope is decided after hashing (the hash must be known for the manifest): the
        # content is read either way.
        self._scan_large(res, p, size, head, fh, want_pe, "archives" in kinds, kinds)

    def _hashed(self, p: _Pending, sha: str) -> None:
        """The stream has hashed *p*: the manifest entry gets its SHA-256."""
        p.sha256 = sha
        for e in p.entries:
            e.sha256 = sha

    def _unreadable(self, res: RootAvResult, p: _Pending, e: BaseException) -> None:
        detail = str(e)[:300]
        for entry in p.entries:
            entry.error = entry.error or f"unreadable: {detail}"
        self._set(res, p.entries, Outcome("not_scanned", reason=Reason.UNREADABLE, detail=detail))

    def _resolved(self, res: RootAvResult, p: _Pending) -> bool:
        """A content just hashed that needs no scan: a hash signature, seen, or cached."""
        sig = match_hash(self.hash_table, p.sha256, p.entry.size)
        if sig is not None:
            self._set(res, p.entries, Outcome("found", normalize_name(sig.name), source="hash"))
            with self._lock:
                res.files_hash_matched += len(p.entries)
            return True
        with self._lock:
            seen = self._known.get(p.sha256)
        if seen is not None:
            self._set(res, p.entries, seen)
            if seen.verdict != "not_scanned":
                with self._lock:
                    res.files_scanned += len(p.entries)
            return True
        cv = self.cache.lookup([p.sha256]).get(p.sha256) if self.cache else None
        if cv is None:
            return False
        if cv.verdict == Reason.TOO_LARGE:
            outcome = Outcome(
                "not_scanned", reason=Reason.TOO_LARGE, detail=cv.signature, source="cache"
            )
        else:
            outcome = Outcome(cv.verdict, cv.signature, source="cache")
        self._set(res, p.entries, outcome)
        with self._lock:
            res.files_from_cache += len(p.entries)
        return True

    def _verify_sha(self, res: RootAvResult, p: _Pending, got: str) -> None:
        if not p.sha256:
            return
        if got != p.sha256:
            res.notes.append(
                f"{p.entry.path}: content streamed has SHA-256 {got}, manifest says {p.sha256}"
            )

    def _archive_guard(self, reply: ScanReply, archive: bool, fh: IO[bytes]) -> ScanReply:
        """clamd said OK for an archive: make sure it did not skip part of it."""
        if reply.verdict is not Verdict.CLEAN or not archive:
            return reply
        why = exceeds_limits(fh, self.limits)
        if why is None:
            return reply
        return ScanReply(Verdict.TOO_LARGE, f"Heuristics.Limits.Exceeded.{why}", reply.raw)

    def _scan_buffer(self, res: RootAvResult, p: _Pending, data: bytes, archive: bool) -> None:
        self._verify_sha(res, p, hashlib.sha256(data).hexdigest())
        try:
            reply, sent = self.link.scan(data)
        except ClamdConnectionError as e:
            self._set(
                res,
                p.entries,
                Outcome("not_scanned", reason=Reason.SCAN_ERROR, detail=str(e)[:300]),
            )
            return
        self._record(res, p, self._archive_guard(reply, archive, io.BytesIO(data)), sent)

    def _scan_large(
        self,
        res: RootAvResult,
        p: _Pending,
        size: int,
        head: bytes,
        fh: IO[bytes],
        want_pe: bool,
        archive: bool,
        kinds: frozenset[str] | None = None,
    ) -> None:
        """Stream a big member while reading it; the read cannot be repeated, so a clamd
        failure mid-stream leaves it not scanned (after a recovery for the next files).

        *kinds* is given for a file not hashed before (see :meth:`_feed_unhashed`): its
        hash is known only at the end, and then decides like :meth:`_resolved`.
        """
        h = hashlib.sha256(head)
        keep = want_pe or archive
        spool: IO[bytes] | None = tempfile.TemporaryFile() if keep else None  # noqa: SIM115
        try:
            try:
                stream = self.link.client.open_stream()
            except ClamdConnectionError as e:
                if self.link.recover():
                    stream = self.link.client.open_stream()
                else:
                    raise e
            piece = head
            read = len(head)
            while True:
                if piece:
                    stream.write(piece)
                    if spool is not None:
                        spool.write(piece)
                if read >= size:
                    break
                piece = fh.read(min(CHUNK * 4, size - read))
                if not piece:
                    break
                h.update(piece)
                read += len(piece)
            reply = stream.finish()
            with self._lock:
                res.bytes_read += read
            if kinds is not None:
                if read < size:
                    raise OSError(f"stream ended after {read} of {size} bytes")
                self._hashed(p, h.hexdigest())
                with self._lock:
                    self._kind_rows.append((p.sha256, kinds))
                    self._sniffed.add(p.sha256)
                if match_hash(self.hash_table, p.sha256, size) is not None or not in_scope(
                    kinds, self.scope
                ):
                    with self._lock:
                        res.files_streamed += 1
                        res.bytes_streamed += stream.bytes_sent
                    if self._resolved(res, p):
                        return
                    self._set(res, p.entries, Outcome("out_of_scope"))
                    with self._lock:
                        res.files_out_of_scope += len(p.entries)
                    return
            self._verify_sha(res, p, h.hexdigest())
            if spool is not None:
                reply = self._archive_guard(reply, archive, spool)
            self._record(res, p, reply, stream.bytes_sent)
            if spool is not None and want_pe:
                spool.seek(0)
                self._pe_seen(res, p, spool.read(MAX_PE_SIZE + 1))
        except ClamdConnectionError as e:
            if self.link.recover():
                # The tar member cannot be read twice: fetch it again after the tar pass.
                with self._lock:
                    self._retry.append(p)
            else:
                self._set(
                    res,
                    p.entries,
                    Outcome("not_scanned", reason=Reason.SCAN_ERROR, detail=str(e)[:300]),
                )
        except (OSError, tarfile.TarError) as e:
            self._set(
                res,
                p.entries,
                Outcome("not_scanned", reason=Reason.UNREADABLE, detail=str(e)[:300]),
            )
        finally:
            if spool is not None:
                spool.close()

    def _record(self, res: RootAvResult, p: _Pending, reply: ScanReply, sent: int) -> None:
        with self._lock:
            res.files_streamed += 1
            res.bytes_streamed += sent
        if reply.verdict is Verdict.CLEAN:
            outcome = Outcome("clean", source="clamd")
        elif reply.verdict is Verdict.FOUND:
            outcome = Outcome("found", normalize_name(reply.signature), source="clamd")
        elif reply.verdict is Verdict.TOO_LARGE:
            outcome = Outcome(
                "not_scanned", reason=Reason.TOO_LARGE, detail=reply.signature or reply.raw
            )
        else:
            outcome = Outcome("not_scanned", reason=Reason.SCAN_ERROR, detail=reply.raw[:300])
        self._set(res, p.entries, outcome)
        if outcome.verdict != "not_scanned":
            with self._lock:
                self._known[p.sha256] = outcome
                res.files_scanned += len(p.entries)
                self._verdict_rows.append((p.sha256, outcome.verdict, outcome.signature))
        elif outcome.reason == Reason.TOO_LARGE:
            with self._lock:
                self._verdict_rows.append((p.sha256, Reason.TOO_LARGE, outcome.detail))
