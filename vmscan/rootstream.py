"""The root's one content stream, handed to every consumer that asked (issue 10).

:func:`stream_root` merges what the plugins declared (consumers taking whole files, such
as the antivirus scanner; blob requests kept for the plugins' reads; files to hash on
the host) into one :class:`vmscan.stream.TarStream` of "/", each member read once. With
helper appliances (:mod:`vmscan.split`) the files are cut into shares of about equal
bytes (:func:`partition`), each read by its own appliance in its own thread, while the
calling thread alone delivers the members, so the consumers never see two threads.
"""

from __future__ import annotations

import hashlib
import io
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, cast

from vmscan.model import FileEntry
from vmscan.pathenc import decode_path, encode_path
from vmscan.stream import READ_ERRORS, TarStream, build_excludes

log = logging.getLogger(__name__)

#: Fewest files wanted by blob requests alone (no consumer, nothing to hash) for which a
#: stream is started: below it they are read one by one.
BLOB_ONLY_MIN = 32


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
    #: With helper appliances: each appliance's share, and the files given back to the
    #: main one (a helper that was not there or failed).
    shares: list[dict[str, Any]] = field(default_factory=list)
    given_back: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "appliances": max(1, len(self.shares)),
            "shares": self.shares,
            "given_back": self.given_back,
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


def partition(sizes: dict[str, int], n: int) -> list[set[str]]:
    """*n* shares of the paths in path order, cut where the bytes reach k/n of the total
    (a file goes to the share its middle byte falls in).

    Contiguous ranges keep each share's exclude list short (whole folders fall outside
    it), where dealing files out one by one would exclude file by file.
    """
    if n <= 1:
        return [set(sizes)]
    total = sum(max(v, 1) for v in sizes.values())
    shares: list[set[str]] = [set() for _ in range(n)]
    acc = 0
    for path in sorted(sizes, key=decode_path):
        size = max(sizes[path], 1)
        # The share where the file's middle byte falls.
        k = min(n - 1, (2 * acc + size) * n // (2 * total))
        shares[k].add(path)
        acc += size
    return shares


#: With more than one appliance, each appliance's member is read whole (up to this size)
#: by its reader thread and queued for the calling thread, which alone calls the
#: consumers (clamd's client, the verdict cache's SQLite connection, the blob store): so
#: one appliance's transfer does not wait for another's consumers. A larger member is
#: handed over live, its reader waiting until it has been consumed.
PREREAD_MAX = 8 * 1024 * 1024
#: Members waiting in that queue at most.
QUEUE_DEPTH = 4


@dataclass
class _Run:
    """What the shares of one root's stream share; changed only by the delivering thread."""

    by_path: dict[str, FileEntry]
    consumers: dict[str, MemberConsumer]
    wants: dict[str, list[str]]
    blob_requests: dict[str, BlobRequest]
    blobs: BlobStore
    hash_set: set[str]
    rep: StreamReport
    delivered: set[str] = field(default_factory=set)
    taken: dict[str, set[str]] = field(default_factory=dict)
    #: Consumers still taking, as last seen by the delivering thread (readers read it).
    live_names: set[str] = field(default_factory=set)
    #: Set by the delivering thread when it stops early: the readers end.
    stop: bool = False
    #: Entries that are not regular files (folders, symlinks), to exclude as well.
    others: tuple[str, ...] = ()

    def still_wanted(self, path: str, live: set[str]) -> bool:
        req = self.blob_requests.get(path)
        return (
            (req is not None and not req.if_streamed)
            or path in self.hash_set
            or any(n in live for n in self.wants.get(path, ()))
        )

    def live(self) -> set[str]:
        return {
            n for n, c in self.consumers.items() if n not in self.rep.consumer_errors and c.active()
        }

    def deliver(self, path: str, entry: FileEntry, size: int, fh: IO[bytes]) -> None:
        """Hand one member to its consumers, its blob request and the host hashing."""
        rep = self.rep
        req = self.blob_requests.get(path)
        tee = _Tee(fh, req.limit if req is not None else 0)
        try:
            for name in self.wants.get(path, ()):
                c = self.consumers[name]
                if name in rep.consumer_errors or not c.active():
                    continue
                try:
                    took = c.take(entry, size, cast("IO[bytes]", tee))
                except READ_ERRORS:
                    raise
                except Exception as e:  # one consumer never stops the stream for others
                    log.warning("stream consumer %s failed", name, exc_info=True)
                    rep.consumer_errors[name] = f"{type(e).__name__}: {e}"[:300]
                    continue
                if took:
                    self.taken[name].add(path)
                    break
            if req is not None and len(tee.head) < min(req.limit, size):
                tee.read(min(req.limit, size) - len(tee.head))
            if entry.sha256 is None and entry.error is None and path in self.hash_set:
                while tee.read(1 << 20):
                    pass
        except READ_ERRORS as e:
            if entry.sha256 is None:
                entry.error = entry.error or f"unreadable: {str(e)[:200]}"
            return
        if req is not None and self.blobs.put(path, size, bytes(tee.head)):
            rep.blobs_kept += 1
            rep.blob_bytes += len(tee.head)
        if entry.sha256 is None and entry.error is None and tee.n == size:
            entry.sha256 = tee.h.hexdigest()
            rep.hashed_on_host += 1


@dataclass
class _Share:
    """One appliance's part of the stream (``sections.stream.shares``)."""

    appliance: int
    files: int
    bytes: int
    delivered: int = 0
    seconds: float = 0.0
    finished: bool = False
    error: str | None = None
    mine: set[str] = field(default_factory=set)
    members: int = 0
    received: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "appliance": self.appliance,
            "files": self.files,
            "bytes": self.bytes,
            "delivered": self.delivered,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


Emit = Callable[[str, FileEntry, int, IO[bytes]], None]


def _stream_share(
    handle: Any, keep: set[str], manifest: list[FileEntry], run: _Run, share: _Share, emit: Emit
) -> None:
    """One ``tar_out`` bringing the files of *keep*, each member handed to *emit*.

    Runs in the calling thread (*emit* delivers at once) or in a reader thread of its own
    (*emit* queues for the calling thread, :func:`_queued`); what it reads of *run* are
    snapshots the calling thread publishes (``run.live_names``, ``run.stop``).
    """
    t0 = time.monotonic()
    src = TarStream(handle, build_excludes(manifest, keep, others=run.others))
    mine = share.mine
    n_consumers = len(run.consumers)
    leftover: set[str] | None = None
    try:
        for raw, member, tf in src.members():
            share.members += 1
            if len(mine) == len(keep) or run.stop:
                break
            if leftover is None and len(run.live_names) < n_consumers:
                # A consumer gave up (clamd gone): from now on only what another still
                # takes keeps the stream going.
                leftover = {p for p in keep - mine if run.still_wanted(p, run.live_names)}
            if leftover is not None and not leftover:
                break
            path = encode_path(raw)
            entry = run.by_path.get(path)
            if entry is None or path not in keep or path in mine or not member.isreg():
                continue
            fh = tf.extractfile(member)
            if fh is None:
                continue
            mine.add(path)
            if leftover is not None:
                leftover.discard(path)
            emit(path, entry, member.size, fh)
        else:
            share.finished = True
    finally:
        src.close(cancel=not share.finished)
        share.received = src.bytes_read
        share.error = src.error
        share.delivered = len(mine)
        share.seconds = time.monotonic() - t0


def _queued(
    handles: list[Callable[[], Any | None]],
    parts: list[set[str]],
    shares: list[_Share],
    manifest: list[FileEntry],
    run: _Run,
) -> None:
    """Every share read by its own thread, every member delivered in this thread."""
    q: queue.Queue[tuple[Any, ...]] = queue.Queue(QUEUE_DEPTH)

    def reader(i: int) -> None:
        share = shares[i]

        def emit(path: str, entry: FileEntry, size: int, fh: IO[bytes]) -> None:
            if size <= PREREAD_MAX:
                try:
                    data = fh.read(size)
                except READ_ERRORS as e:
                    q.put(("unreadable", entry, f"unreadable: {str(e)[:200]}"))
                    return
                q.put(("member", path, entry, size, io.BytesIO(data), None))
                return
            consumed = threading.Event()
            q.put(("member", path, entry, size, fh, consumed))
            consumed.wait()

        try:
            h = handles[i]()
            if h is None:
                share.error = "helper appliance not available"
                return
            _stream_share(h, parts[i], manifest, run, share, emit)
        except Exception as e:  # a reader never leaves the others waiting
            log.warning("stream share %d failed", i, exc_info=True)
            share.error = share.error or f"{type(e).__name__}: {e}"[:300]
        finally:
            q.put(("end", i))

    threads = [
        threading.Thread(target=reader, args=(i,), name=f"vmscan-share-{i}", daemon=True)
        for i in range(len(parts))
    ]
    for t in threads:
        t.start()
    ends = 0
    try:
        while ends < len(threads):
            item = q.get()
            if item[0] == "end":
                ends += 1
            elif item[0] == "unreadable":
                entry = item[1]
                if entry.sha256 is None:
                    entry.error = entry.error or item[2]
            else:
                _kind, path, entry, size, fh, consumed = item
                try:
                    run.delivered.add(path)
                    run.deliver(path, entry, size, fh)
                    run.live_names = run.live()
                finally:
                    if consumed is not None:
                        consumed.set()
    finally:
        run.stop = ends < len(threads)
        while ends < len(threads):  # (an error here: let the readers end)
            item = q.get()
            if item[0] == "end":
                ends += 1
            elif item[0] == "member" and item[5] is not None:
                item[5].set()
        for t in threads:
            t.join()


def stream_root(
    handle: Any,
    manifest: list[FileEntry],
    consumers: dict[str, MemberConsumer],
    blob_requests: dict[str, BlobRequest],
    blobs: BlobStore,
    hash_paths: Iterable[str] = (),
    blob_only_min: int = BLOB_ONLY_MIN,
    helpers: Sequence[Callable[[], Any | None]] = (),
    split_min_bytes: int = 0,
    others: Iterable[str] = (),
) -> StreamReport:
    """ONE ``tar_out`` of "/" carrying every file a consumer, a blob request or the host
    hashing (*hash_paths*: manifest entries with no SHA-256 yet) asked for.

    Each member is read once: the first consumer that wants it (consumers in order, so
    the antivirus scanner first) gets the live reader; the blob store gets the head it
    asked for (read on after that consumer when it stopped short); every byte passing is
    hashed, so an entry still without a SHA-256 gets the one of its full content.
    No wanted file: no ``tar_out`` at all.

    *helpers*: getters of more appliances mounted like *handle* (:mod:`vmscan.split`).
    When the files to stream reach *split_min_bytes*, each appliance streams a share of
    them, balanced by bytes, at the same time; a helper that is not there or fails gives
    back what it did not bring, and *handle* streams it afterwards.
    *others*: the root's entries that are not regular files (excluded when nothing
    wanted lies below them).
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
    run = _Run(by_path, consumers, wants, blob_requests, blobs, hash_set, rep)
    run.taken = {name: set() for name in consumers}
    run.others = tuple(others)
    if not keep:
        for name, c in consumers.items():
            c.done(None, run.taken[name])
        return rep
    run.live_names = run.live()
    calls0 = TarStream.calls
    sizes = {p: by_path[p].size for p in keep}
    n = 1 + len(helpers) if helpers and sum(sizes.values()) >= split_min_bytes else 1
    parts = partition(sizes, n)
    shares = [_Share(i, len(k), sum(sizes[p] for p in k)) for i, k in enumerate(parts)]
    main = shares[0]

    def direct(path: str, entry: FileEntry, size: int, fh: IO[bytes]) -> None:
        run.delivered.add(path)
        run.deliver(path, entry, size, fh)
        run.live_names = run.live()

    try:
        if n == 1:
            _stream_share(handle, parts[0], manifest, run, main, direct)
        else:
            _queued([lambda: handle, *helpers], parts, shares, manifest, run)
            # What a helper did not bring (not up, failed, died): the main appliance.
            back = {p for s in shares[1:] for p in parts[s.appliance] - s.mine}
            back = {p for p in back if run.still_wanted(p, run.live_names)}
            if back:
                again = _Share(0, len(back), sum(sizes[p] for p in back))
                _stream_share(handle, back, manifest, run, again, direct)
                main.error = main.error or again.error
                main.finished = main.finished and again.finished
                main.received += again.received
                main.members += again.members
                rep.given_back = len(back)
    finally:
        rep.tar_out_calls = TarStream.calls - calls0
        rep.bytes_received = sum(s.received for s in shares)
        rep.members = sum(s.members for s in shares)
        rep.error = main.error
        rep.files_delivered = len(run.delivered)
        rep.blobs_refused = blobs.refused
        if n > 1:
            rep.shares = [s.to_dict() for s in shares]
        finished = main.finished
        for name, c in consumers.items():
            c.done(main.error if finished else None, run.taken[name])
    return rep
