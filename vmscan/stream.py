"""The one content stream of vmscan: ``tar_out`` of a guest folder, read member by member.

Every bulk transfer of file content out of the appliance goes through :class:`TarStream`
(the manifest's host-side hashing, and :func:`stream_root`, the root's one stream that
the plugins' needs are merged into):
``g.tar_out`` writes into a FIFO from a thread while the caller reads the members on the
host, so a member is hashed, sniffed and handed to clamd while the next one is on its way.

Names are data, never syntax: an exclude pattern is built only by :func:`exclude_pattern`,
which escapes tar's wildcards and refuses names that a line-based exclude list cannot
carry (a newline; the libguestfs daemon writes the list to a file for ``tar -X``, and one
bad pattern makes the whole ``tar_out`` fail) or that the binding cannot pass (not UTF-8).
Such members are not excluded: they travel and are dropped on the host, which costs bytes,
never a file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import select
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, cast

from vmscan.errors import GuestError
from vmscan.model import FileEntry
from vmscan.pathenc import decode_path, encode_path

log = logging.getLogger(__name__)

#: The libguestfs protocol caps one message at 4 MB: the exclude list must stay below.
EXCLUDES_BUDGET = 2_500_000
#: Fewest files wanted by blob requests alone (no consumer, nothing to hash) for which a
#: stream is started: below it they are read one by one.
BLOB_ONLY_MIN = 32
#: What reading a member may raise (a stream cut short, a cancelled transfer).
READ_ERRORS = (OSError, tarfile.TarError, EOFError)


def exclude_pattern(raw: bytes) -> str | None:
    """GNU tar ``-X`` line excluding exactly the member ``./<raw>`` (raw: path without "/").

    The libguestfs daemon writes the excludes to a file for ``tar -X`` (daemon/tar.c);
    exclude patterns are globs there, unanchored but matched against whole names, so
    ``./`` anchors them and ``*``, ``?``, ``[`` and ``\\`` are escaped with a backslash.
    A name with a newline cannot be written in a line-based list, and the libguestfs
    binding only passes UTF-8 strings: None for those (the caller skips them on the host).
    """
    if b"\n" in raw or b"\r" in raw:
        return None
    out = bytearray(b"./")
    for b in raw:
        if b in b"*?[\\":
            out.append(0x5C)
        out.append(b)
    try:
        return bytes(out).decode("utf-8")
    except UnicodeDecodeError:
        return None


def build_excludes(
    all_entries: Iterable[FileEntry], keep: set[str], budget: int = EXCLUDES_BUDGET
) -> list[str]:
    """tar exclude patterns for every file not in *keep* (paths), whole folders when possible.

    Largest files are excluded first when the list would not fit in one libguestfs message;
    the rest are skipped on the host.
    """
    # Folder -> does it hold a kept file somewhere below?
    keep_dirs: set[bytes] = set()
    for p in keep:
        raw = decode_path(p)
        while True:
            raw = raw.rsplit(b"/", 1)[0]
            if not raw or raw in keep_dirs:
                break
            keep_dirs.add(raw)
    cands: dict[bytes, int] = {}
    for e in all_entries:
        if e.path in keep:
            continue
        raw = decode_path(e.path)
        if raw in keep_dirs:
            # A folder entry (a folder the walk cut short) holding kept files: excluding
            # it would keep them out of the stream too.
            continue
        # Climb to the highest folder with nothing kept below it.
        top = raw
        parent = raw.rsplit(b"/", 1)[0]
        while parent and parent not in keep_dirs:
            top = parent
            parent = parent.rsplit(b"/", 1)[0]
        cands[top] = cands.get(top, 0) + max(e.size, 1)
    out: list[str] = []
    used = 0
    for top, _size in sorted(cands.items(), key=lambda kv: (-kv[1], kv[0])):
        pat = exclude_pattern(top.lstrip(b"/"))
        if pat is None:
            continue
        if used + len(pat) + 16 > budget:
            continue
        used += len(pat) + 16
        out.append(pat)
    return sorted(out)


class _Counting:
    """A read-only file wrapper counting the bytes read through it."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.n += len(data)
        TarStream.received += len(data)
        return data


class TarStream:
    """``g.tar_out(directory)`` into a FIFO, read on the host as a stream of members.

    Use :meth:`members` once, then :meth:`close` (``cancel=True`` when the reader stopped
    before the end, so that the appliance stops sending). ``error`` holds what went wrong
    in the transfer (None when it completed); ``bytes_read`` counts the bytes of the
    tar stream that reached the host, and the class attribute ``received`` those of
    every stream of this process (the scanner reports it per image).
    """

    received = 0
    #: ``tar_out`` calls made by this process (the scanner reports them per root).
    calls = 0

    def __init__(self, handle: Any, excludes: list[str], directory: str = "/") -> None:
        self.handle = handle
        self.directory = directory
        self.excludes = [p for p in excludes if "\n" not in p and "\r" not in p]
        self.error: str | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="vmscan-tar-")
        self.fifo = os.path.join(self._tmp.name, "tar.fifo")
        os.mkfifo(self.fifo, 0o600)
        self._reader_done = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="vmscan-tar-out", daemon=True)
        self._fh: IO[bytes] | None = None
        self._counted: _Counting | None = None

    @property
    def bytes_read(self) -> int:
        return self._counted.n if self._counted is not None else 0

    def _produce(self) -> None:
        TarStream.calls += 1
        try:
            self.handle.tar_out(
                self.directory, self.fifo, excludes=self.excludes or None, numericowner=True
            )
        except GuestError as e:
            self.error = str(e)
        finally:
            # Wake a reader that is still waiting in open() (tar_out failed early).
            while not self._reader_done.is_set():
                try:
                    fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        break
                    time.sleep(0.05)
                    continue
                os.close(fd)
                break

    def members(self) -> Iterator[tuple[bytes, tarfile.TarInfo, tarfile.TarFile]]:
        """``(raw path with a leading "/", member, tarfile)`` for each member, in order.

        The raw path is relative to the streamed directory and byte-exact (names that are
        not UTF-8 come back as they are on the guest).
        """
        self._thread.start()
        self._fh = open(self.fifo, "rb", buffering=1024 * 1024)  # noqa: SIM115
        self._counted = _Counting(self._fh)
        try:
            tf = tarfile.open(  # noqa: SIM115 - closed with the FIFO in close()
                fileobj=cast("IO[bytes]", self._counted),
                mode="r|",
                encoding="utf-8",
                errors="surrogateescape",
            )
            for m in tf:
                name = m.name.encode("utf-8", "surrogateescape")
                if name.startswith(b"./"):
                    name = name[2:]
                yield b"/" + name.lstrip(b"/").rstrip(b"/"), m, tf
        except READ_ERRORS as e:
            self.error = self.error or f"reading the tar stream: {e}"

    def close(self, cancel: bool) -> None:
        """End the transfer; *cancel*: the reader wants nothing more from it.

        Never ``user_cancel``: issued while a ``tar_out`` with excludes was ending, it
        made libguestfs 1.48 crash the process (SIGSEGV inside ``tar_out``, 1 in about 20
        tries in ``scripts/stress_stream_cancel.py``). A cancelled stream is drained
        instead while little is left (what nobody wants is excluded, so that is the
        usual case), and otherwise cut by closing the FIFO: libguestfs then stops the
        transfer on the failed write ("file receive cancelled by daemon"), a path that
        did not crash in the same trials.
        """
        if self._fh is not None:
            if not cancel:
                # Drain so that the producer can finish.
                with contextlib.suppress(*READ_ERRORS):
                    while self._counted is not None and self._counted.read(1 << 20):
                        pass
            else:
                self._drain_until_producer_ends()
            self._fh.close()
        self._reader_done.set()
        if self._thread.is_alive():
            self._thread.join(600)
        self._tmp.cleanup()

    def _drain_until_producer_ends(
        self, limit_s: float = 10.0, limit_bytes: int = 64 * 1024 * 1024
    ) -> None:
        """Read (and drop) what is left while it is little: up to *limit_bytes* or
        *limit_s*; the caller then closes the FIFO, which stops a longer transfer."""
        assert self._fh is not None
        fd = self._fh.fileno()
        deadline = time.monotonic() + limit_s
        drained = 0
        while self._thread.is_alive() and time.monotonic() < deadline and drained < limit_bytes:
            ready, _w, _x = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(fd, 1 << 20)
            except OSError:
                return
            if not data:
                return
            drained += len(data)
            TarStream.received += len(data)
            if self._counted is not None:
                self._counted.n += len(data)

    def __enter__(self) -> TarStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(cancel=exc[0] is not None)


# ---------------------------------------------------------------------------
# One stream per root, handed to every consumer that asked


class MemberConsumer(Protocol):
    """Takes members of the root's one content stream (the antivirus scanner, for one).

    The stream asks :meth:`wanted` once before it starts; :meth:`take` gets each wanted
    member's live reader, to read at most *size* bytes from before it returns (the reader
    is gone after); :meth:`done` is called once after the stream ended (*error*: what
    went wrong in the transfer), with the paths it was handed.
    """

    def wanted(self) -> Iterable[str]: ...
    def take(self, entry: FileEntry, size: int, fh: IO[bytes]) -> bool:
        """Consume the member; False when it could not (it is then left to :meth:`done`)."""
        ...

    def active(self) -> bool:
        """False once nothing more can be taken (clamd gone): the stream may end early."""
        ...

    def done(self, error: str | None, taken: set[str]) -> None: ...


@dataclass(frozen=True)
class BlobRequest:
    """Bytes of one file to keep in the root's blob store: at most *limit* (its head);
    *if_streamed*: only when it passes for another reason (never added to the stream)."""

    limit: int
    persist: bool = False
    if_streamed: bool = False


class BlobStore:
    """Contents kept from the stream for the plugins' reads, bounded in total.

    ``(size on the guest, data)`` by manifest path; *data* is the head when the file is
    larger than what was asked for. Past *max_bytes* in all, members are not kept (reads
    of them go to the appliance and are counted as fallbacks).
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.blobs: dict[str, tuple[int, bytes]] = {}
        #: Members not kept because the store was full.
        self.refused = 0

    def put(self, path: str, size: int, data: bytes) -> bool:
        old = self.blobs.get(path)
        if old is not None:
            self.used -= len(old[1])
        if self.used + len(data) > self.max_bytes:
            self.refused += 1
            return False
        self.blobs[path] = (size, data)
        self.used += len(data)
        return True

    def get(self, path: str) -> tuple[int, bytes] | None:
        return self.blobs.get(path)

    def __contains__(self, path: object) -> bool:
        return path in self.blobs


@dataclass
class StreamReport:
    """What one root's stream did (``sections.stream`` of the root)."""

    tar_out_calls: int = 0
    members: int = 0
    files_wanted: int = 0
    files_delivered: int = 0
    bytes_received: int = 0
    hashed_on_host: int = 0
    blobs_kept: int = 0
    blob_bytes: int = 0
    blobs_refused: int = 0
    blob_only_skipped: int = 0
    error: str | None = None
    consumers: dict[str, int] = field(default_factory=dict)
    #: Consumers that raised while taking a member (they were given nothing more).
    consumer_errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tar_out_calls": self.tar_out_calls,
            "members": self.members,
            "files_wanted": self.files_wanted,
            "files_delivered": self.files_delivered,
            "bytes_received": self.bytes_received,
            "hashed_on_host": self.hashed_on_host,
            "blobs_kept": self.blobs_kept,
            "blob_bytes": self.blob_bytes,
            "blobs_refused": self.blobs_refused,
            "blob_only_skipped": self.blob_only_skipped,
            "error": self.error,
            "consumers": dict(sorted(self.consumers.items())),
            "consumer_errors": dict(sorted(self.consumer_errors.items())),
        }


class _Tee:
    """Reader over a member that hashes every byte read and keeps the first *keep*."""

    def __init__(self, fh: IO[bytes], keep: int) -> None:
        self.fh = fh
        self.keep = keep
        self.head = bytearray()
        self.h = hashlib.sha256()
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.h.update(data)
        self.n += len(data)
        room = self.keep - len(self.head)
        if room > 0:
            self.head += data[:room]
        return data


def stream_root(
    handle: Any,
    manifest: list[FileEntry],
    consumers: dict[str, MemberConsumer],
    blob_requests: dict[str, BlobRequest],
    blobs: BlobStore,
    hash_paths: Iterable[str] = (),
    blob_only_min: int = BLOB_ONLY_MIN,
) -> StreamReport:
    """ONE ``tar_out`` of "/" carrying every file a consumer, a blob request or the host
    hashing (*hash_paths*: manifest entries with no SHA-256 yet) asked for.

    Each member is read once: the first consumer that wants it (consumers in order, so
    the antivirus scanner first) gets the live reader; the blob store gets the head it
    asked for (read on after that consumer when it stopped short); every byte passing is
    hashed, so an entry still without a SHA-256 gets the one of its full content.
    No wanted file: no ``tar_out`` at all.
    """
    rep = StreamReport()
    by_path = {e.path: e for e in manifest}
    wants: dict[str, list[str]] = {}
    for name, c in consumers.items():
        n = 0
        for p in c.wanted():
            if p in by_path:
                wants.setdefault(p, []).append(name)
                n += 1
        rep.consumers[name] = n
    hash_set = {p for p in hash_paths if p in by_path}
    blob_only = {p for p, r in blob_requests.items() if p in by_path and not r.if_streamed}
    if not wants and not hash_set and len(blob_only) < blob_only_min:
        # A few small files alone are not worth a tar_out (and its exclude list): their
        # reads go to the appliance, counted as fallbacks. A clone of a scanned disk
        # then streams nothing.
        rep.blob_only_skipped = len(blob_only)
        blob_only = set()
    keep = set(wants) | hash_set | blob_only
    rep.files_wanted = len(keep)
    taken: dict[str, set[str]] = {name: set() for name in consumers}
    if not keep:
        for name, c in consumers.items():
            c.done(None, taken[name])
        return rep
    excludes = build_excludes(manifest, keep)
    calls0 = TarStream.calls
    src = TarStream(handle, excludes)
    delivered: set[str] = set()
    leftover: set[str] | None = None
    finished = False
    try:
        for raw, member, tf in src.members():
            rep.members += 1
            if len(delivered) == len(keep):
                break
            live = {n for n, c in consumers.items() if n not in rep.consumer_errors and c.active()}
            if leftover is None and len(live) < len(consumers):
                # A consumer gave up (clamd gone): from now on only what another still
                # takes keeps the stream going.
                leftover = {
                    p
                    for p in keep - delivered
                    if (p in blob_requests and not blob_requests[p].if_streamed)
                    or p in hash_set
                    or any(n in live for n in wants.get(p, ()))
                }
            if leftover is not None and not leftover:
                break
            path = encode_path(raw)
            entry = by_path.get(path)
            if entry is None or path not in keep or path in delivered or not member.isreg():
                continue
            fh = tf.extractfile(member)
            if fh is None:
                continue
            delivered.add(path)
            if leftover is not None:
                leftover.discard(path)
            req = blob_requests.get(path)
            tee = _Tee(fh, req.limit if req is not None else 0)
            try:
                for name in wants.get(path, ()):
                    c = consumers[name]
                    if name in rep.consumer_errors or not c.active():
                        continue
                    try:
                        took = c.take(entry, member.size, cast("IO[bytes]", tee))
                    except READ_ERRORS:
                        raise
                    except Exception as e:  # one consumer never stops the stream for others
                        log.warning("stream consumer %s failed", name, exc_info=True)
                        rep.consumer_errors[name] = f"{type(e).__name__}: {e}"[:300]
                        continue
                    if took:
                        taken[name].add(path)
                        break
                if req is not None and len(tee.head) < min(req.limit, member.size):
                    tee.read(min(req.limit, member.size) - len(tee.head))
                if entry.sha256 is None and entry.error is None and path in hash_set:
                    while tee.read(1 << 20):
                        pass
            except READ_ERRORS as e:
                if entry.sha256 is None:
                    entry.error = entry.error or f"unreadable: {str(e)[:200]}"
                continue
            if req is not None and blobs.put(path, member.size, bytes(tee.head)):
                rep.blobs_kept += 1
                rep.blob_bytes += len(tee.head)
            if entry.sha256 is None and entry.error is None and tee.n == member.size:
                entry.sha256 = tee.h.hexdigest()
                rep.hashed_on_host += 1
        else:
            finished = True
    finally:
        src.close(cancel=not finished)
        rep.tar_out_calls = TarStream.calls - calls0
        rep.bytes_received = src.bytes_read
        rep.error = src.error
        rep.files_delivered = len(delivered)
        rep.blobs_refused = blobs.refused
        for name, c in consumers.items():
            c.done(src.error if finished else None, taken[name])
    return rep
