"""More than one appliance for one image's content stream (parallel mounting, issue 10).

Under TCG one appliance moves file content out at about 17 MB/s, a core's worth of
emulation. When an image has much to stream and cores are idle, a *helper* appliance
opened read-only on the same disks takes a share of the root's stream (balanced by
bytes, :func:`vmscan.rootstream.partition`), mounted on the same devices as the main
one; the members it brings go to the same consumers, so the result is one result.

When (``--stream-appliances``, :class:`Policy`): ``auto`` starts one helper when the
pool lends a slot it has no image for (:func:`vmscan.pool.borrow_slot`), the machine
has at least :data:`MIN_CORES` cores and the kernel's load average leaves two idle, the
disks hold at least :data:`MIN_SPLIT_BYTES` (allocated bytes on the host, backing files
included) and the file-hash cache knows none of the image's filesystems (else few files
are streamed: a rescan, a clone of a scanned template); the stream then uses it only
when the root's files to stream reach that size too. A number N asks for up to N
appliances whatever the size, the cores and the cache (slots still have to be free).

The helper launches in a thread once the main appliance has listed the filesystems
(:meth:`Helpers.launch`), while it inspects and walks, so its launch costs no wall time
when a core is free. A helper that fails to launch or to mount, or dies, gives its share
back: the main appliance streams it afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vmscan import pool
from vmscan.errors import GuestError, ImageError
from vmscan.model import DiskRef
from vmscan.session import GuestSession

log = logging.getLogger(__name__)

#: Bytes to stream from which a second appliance pays for itself (see the closing note
#: of issue 10 for the measurement): a share of half of it takes a helper about as long
#: as its mount and tar start cost, and its launch overlaps the main one's inspection.
MIN_SPLIT_BYTES = 96 * 1024 * 1024
#: Cores ``auto`` wants: one appliance's stream keeps about one and a half busy (qemu's
#: emulation, and the host's tar parsing, hashing and clamd), so a helper needs two more
#: idle ones to gain. Measured on 2 cores (issue 10's note): the stream phase went from
#: 36.9 to 19.0 s with a core free, but over whole scans the helper's boot and transfer
#: competed with the main appliance for the same cores (0.82 to 1.05 of one appliance's
#: time), so ``auto`` does not split there.
MIN_CORES = 4
#: Most helpers per image (``auto`` uses one; a number asks for more).
MAX_HELPERS = 3
#: How long the stream waits for a helper still launching before its share goes back.
READY_WAIT_S = 120.0


@dataclass(frozen=True)
class Policy:
    """``--stream-appliances``: ``auto`` (0), or the most appliances per image (1: never split)."""

    appliances: int = 0

    @classmethod
    def parse(cls, text: str) -> Policy:
        t = text.strip().lower()
        if t == "auto":
            return cls(0)
        try:
            n = int(t)
        except ValueError:
            raise ValueError(f"--stream-appliances: 'auto' or a number, not {text!r}") from None
        if not 1 <= n <= MAX_HELPERS + 1:
            raise ValueError(f"--stream-appliances: between 1 and {MAX_HELPERS + 1}, not {n}")
        return cls(n)

    @property
    def forced(self) -> bool:
        return self.appliances > 1

    def wanted(self) -> int:
        """Helpers to ask slots for."""
        return 1 if self.appliances == 0 else self.appliances - 1

    def min_bytes(self) -> int:
        return 0 if self.forced else MIN_SPLIT_BYTES


def allocated_bytes(disks: Sequence[DiskRef]) -> int:
    """Bytes the disks' files occupy on the host (0 for a disk read over NBD)."""
    total = 0
    for d in disks:
        if d.nbd_socket or not d.path:
            continue
        for p in (d.path, *d.backing):
            with contextlib.suppress(OSError):
                total += os.stat(p).st_blocks * 512
    return total


def idle_cores() -> bool:
    """At least :data:`MIN_CORES` cores, and the one-minute load leaves two of them idle."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return False
    return cores >= MIN_CORES and load <= cores - 2


class Helper:
    """One helper appliance, launched in a thread; :meth:`on` mounts it on a root."""

    def __init__(self, disks: Sequence[DiskRef], memsize: int | None, accel: str) -> None:
        self.sess = GuestSession(list(disks), memsize, accel)
        self.error: str | None = None
        self._up = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._mounted: tuple[tuple[str, str], ...] = ()
        self._thread = threading.Thread(target=self._launch, name="vmscan-helper", daemon=True)
        self._thread.start()

    def _launch(self) -> None:
        try:
            self.sess.__enter__()
        except ImageError as e:
            self.error = f"helper appliance did not launch: {e}"
        except Exception as e:  # a helper never costs the image
            self.error = f"helper appliance did not launch: {type(e).__name__}: {e}"
        finally:
            self._up.set()
        if self._closed:
            self._close_now()

    def on(self, mounts: Sequence[tuple[str, str]], wait_s: float = READY_WAIT_S) -> Any | None:
        """The helper's handle mounted like the main appliance (*mounts*: mountpoint, device,
        shortest first), or None (not up in time, failed, a mount refused: said in error)."""
        if not self._up.wait(wait_s):
            self.error = self.error or f"helper appliance not up after {wait_s:g} s"
            return None
        with self._lock:
            if self.error or self.sess.h is None:
                return None
            want = tuple(mounts)
            if want == self._mounted:
                return self.sess.h
            try:
                self.sess.h.umount_all()
                for mp_, dev in want:
                    self.sess.h.mount_ro(dev, mp_)
            except GuestError as e:
                self.error = f"helper appliance could not mount {want}: {e}"
                self._mounted = ()
                return None
            self._mounted = want
            return self.sess.h

    def _close_now(self) -> None:
        with self._lock:
            if self.sess.g is not None:
                try:
                    self.sess.__exit__(None, None, None)
                except Exception:  # closing a dead appliance
                    log.debug("helper close", exc_info=True)

    def close(self) -> None:
        self._closed = True
        if self._up.is_set():
            self._close_now()
        # A helper still launching closes itself when its launch returns.


class Helpers:
    """The image's helpers, and the pool slots they hold; a context manager."""

    def __init__(self, disks: Sequence[DiskRef], memsize: int | None, accel: str, policy: Policy):
        self.helpers: list[Helper] = []
        self.policy = policy
        self.borrowed = 0
        self.why_not = ""
        self._args = (list(disks), memsize, accel)
        if policy.appliances == 1:
            self.why_not = "--stream-appliances 1"
            return
        if not policy.forced:
            if allocated_bytes(disks) < MIN_SPLIT_BYTES:
                self.why_not = "the disks hold little"
                return
            if not idle_cores():
                self.why_not = (
                    f"fewer than two idle cores (load average; auto needs {MIN_CORES} or more)"
                )
                return
        for _ in range(policy.wanted()):
            if not pool.borrow_slot():
                break
            self.borrowed += 1
        if not self.borrowed:
            self.why_not = "no free slot in the pool"

    def launch(self, cache_knows: bool) -> None:
        """Start the helpers the slots were borrowed for (*cache_knows*: the file-hash
        cache holds rows of this image's filesystems; ``auto`` then starts none)."""
        if not self.borrowed or self.helpers:
            return
        if cache_knows and not self.policy.forced:
            self.why_not = "the file-hash cache knows these filesystems: little to stream"
            self._give_back()
            return
        disks, memsize, accel = self._args
        self.helpers = [Helper(disks, memsize, accel) for _ in range(self.borrowed)]

    def _give_back(self) -> None:
        for _ in range(self.borrowed):
            pool.return_slot()
        self.borrowed = 0

    def __enter__(self) -> Helpers:
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.helpers:
            h.close()
        self._give_back()

    def errors(self) -> list[str]:
        return [h.error for h in self.helpers if h.error]
