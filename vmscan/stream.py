"""The one content stream of vmscan: ``tar_out`` of a guest folder, read member by member.

Every bulk transfer of file content out of the appliance goes through :class:`TarStream`
(the manifest's host-side hashing, and :func:`vmscan.rootstream.stream_root`, the root's
one stream that the plugins' needs are merged into):
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
import itertools
import logging
import os
import select
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, cast

from vmscan.errors import GuestError
from vmscan.model import FileEntry
from vmscan.pathenc import decode_path

log = logging.getLogger(__name__)

#: The libguestfs protocol caps one message at 4 MB: the exclude list must stay below.
EXCLUDES_BUDGET = 2_500_000
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
    all_entries: Iterable[FileEntry],
    keep: set[str],
    budget: int = EXCLUDES_BUDGET,
    others: Iterable[str] = (),
) -> list[str]:
    """tar exclude patterns for every file not in *keep* (paths), whole folders when possible.

    *others*: paths of entries that are not regular files (folders, symlinks, devices, from
    the root's index), excluded too unless a kept file lies below: each would cost a tar
    header (512 bytes) on the way, which on a rescan of a few changed files is most of
    the stream. Largest files are excluded first when the list would not fit in one
    libguestfs message; the rest are skipped on the host.
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
    sized = ((e.path, e.size) for e in all_entries)
    for path, size in itertools.chain(sized, ((p, 0) for p in others)):
        if path in keep or path == "/":
            continue
        raw = decode_path(path)
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
        cands[top] = cands.get(top, 0) + max(size, 1)
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
        TarStream.count(len(data))
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
    #: Streams of several appliances run in threads: the counters are shared.
    _counters = threading.Lock()

    @classmethod
    def count(cls, received: int = 0, calls: int = 0) -> None:
        with cls._counters:
            cls.received += received
            cls.calls += calls

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
        TarStream.count(calls=1)
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
            TarStream.count(len(data))
            if self._counted is not None:
                self._counted.n += len(data)

    def __enter__(self) -> TarStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(cancel=exc[0] is not None)
